//! Delta debugging (ddmin) over a step sequence: the shortest subsequence for which `test`
//! still reports the same failure, within a trial budget.

use super::tracefile::Step;
use std::future::Future;

/// Minimize `steps` with `test` (true = still fails). At most `max_trials` calls of `test`.
/// Returns the smallest failing sequence found and the number of trials used.
pub async fn ddmin<F, Fut>(steps: Vec<Step>, max_trials: usize, mut test: F) -> (Vec<Step>, usize)
where
    F: FnMut(Vec<Step>) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut cur = steps;
    let mut trials = 0usize;
    let mut n = 2usize;
    'outer: while cur.len() >= 2 && trials < max_trials {
        let chunk = cur.len().div_ceil(n);
        let parts: Vec<Vec<Step>> = cur.chunks(chunk).map(|c| c.to_vec()).collect();
        // A single part that still fails.
        for p in &parts {
            if trials >= max_trials {
                break 'outer;
            }
            trials += 1;
            if test(p.clone()).await {
                cur = p.clone();
                n = 2;
                continue 'outer;
            }
        }
        // A complement that still fails.
        if parts.len() > 2 {
            for i in 0..parts.len() {
                if trials >= max_trials {
                    break 'outer;
                }
                let comp: Vec<Step> = parts
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .flat_map(|(_, p)| p.iter().cloned())
                    .collect();
                trials += 1;
                if test(comp.clone()).await {
                    cur = comp;
                    n = (n - 1).max(2);
                    continue 'outer;
                }
            }
        }
        if n >= cur.len() {
            break;
        }
        n = (n * 2).min(cur.len());
    }
    // One-by-one removal pass (1-minimality) while trials remain.
    let mut i = 0;
    while i < cur.len() && cur.len() > 1 && trials < max_trials {
        let mut c = cur.clone();
        c.remove(i);
        trials += 1;
        if test(c.clone()).await {
            cur = c;
        } else {
            i += 1;
        }
    }
    (cur, trials)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(k: u32) -> Step {
        Step {
            key: k,
            via: "requester".into(),
            kind: "iq".into(),
            iq_type: None,
            id: None,
            from: None,
            xml: None,
            burst: false,
            to: None,
            raw: None,
            max: None,
            note: String::new(),
        }
    }

    #[test]
    fn finds_the_two_culprits() {
        let steps: Vec<Step> = (0..40).map(s).collect();
        let fut = ddmin(steps, 500, |c: Vec<Step>| async move {
            c.iter().any(|x| x.key == 7) && c.iter().any(|x| x.key == 31)
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (min, trials) = rt.block_on(fut);
        assert_eq!(min.iter().map(|x| x.key).collect::<Vec<_>>(), vec![7, 31]);
        assert!(trials < 200, "{trials}");
    }
}
