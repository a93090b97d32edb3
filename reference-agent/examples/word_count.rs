//! Scenario 2: map/reduce word count. Each of N agents holds one shard of a corpus; one
//! `all` call fans out `/text/wordcount` to every agent and a reduce step adds the counts.
//!
//! Run: `cargo run -p vertebra-reference-agent --example word_count`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use vertebra_reference_agent::local::LocalBus;
use vertebra_reference_agent::node::Call;
use vertebra_reference_agent::protocol::{Args, Value};
use vertebra_reference_agent::requester::{call_all, Reducer};

pub const CORPUS: &str = "the quick brown fox jumps over the lazy dog \
    the dog barks and the fox runs \
    a quick brown dog and a lazy fox \
    over and over the fox and the dog";

/// Word counts as a struct of i4.
fn count(text: &str) -> Args {
    let mut m: BTreeMap<&str, i32> = BTreeMap::new();
    for w in text.split_whitespace() {
        *m.entry(w).or_default() += 1;
    }
    m.into_iter()
        .map(|(k, v)| (k.to_string(), Value::I4(v)))
        .collect()
}

/// The reduce step: add up the per-shard counts.
pub fn reducer() -> Reducer {
    Arc::new(|ok| {
        let mut total: BTreeMap<String, i32> = BTreeMap::new();
        for (_, a) in ok {
            if let Some(counts) = a.get_struct("counts") {
                for (w, v) in counts.iter() {
                    if let Value::I4(n) = v {
                        *total.entry(w.to_string()).or_default() += n;
                    }
                }
            }
        }
        Value::Struct(total.into_iter().map(|(k, v)| (k, Value::I4(v))).collect())
    })
}

pub async fn run(n: usize) -> Result<(BTreeMap<String, i32>, usize), String> {
    let bus = LocalBus::start(vertebra_reference_agent::policy::allow_all()).await?;
    let words: Vec<&str> = CORPUS.split_whitespace().collect();
    let per = words.len().div_ceil(n.max(1));
    let mut agents = vec![];
    for (k, shard) in words.chunks(per).enumerate() {
        let shard = shard.join(" ");
        let a = bus
            .agent(&format!("mapper{k}"))?
            .handle("/text/wordcount", move |_call: Call| {
                let shard = shard.clone();
                async move { Ok(Args::new().with("counts", Value::Struct(count(&shard)))) }
            })
            .start();
        a.wait_online(Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        agents.push(a);
    }
    let req = bus.requester("reducer").await?;
    for a in &agents {
        let j = a.node().jid().ok_or("offline")?;
        if !bus
            .wait_listed(&req, "/text/wordcount", &j, Duration::from_secs(10))
            .await
        {
            return Err(format!("{j} not listed"));
        }
    }
    let g = call_all(
        &req,
        &bus.djid(),
        "/text/wordcount",
        Args::new(),
        Duration::from_secs(10),
        Some(reducer()),
    )
    .await
    .map_err(|e| e.to_string())?;
    if let Some((j, e)) = g.failures().next() {
        return Err(format!("{j} failed: {e}"));
    }
    let Some(Value::Struct(total)) = g.reduced else {
        return Err("no reduced value".into());
    };
    let map = total
        .iter()
        .filter_map(|(k, v)| {
            if let Value::I4(n) = v {
                Some((k.to_string(), *n))
            } else {
                None
            }
        })
        .collect();
    Ok((map, g.outcomes.len()))
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), String> {
    let (counts, agents) = run(4).await?;
    println!("word counts reduced over {agents} agents:");
    for (w, n) in counts {
        println!("  {w:<6} {n}");
    }
    Ok(())
}
