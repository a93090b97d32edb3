//! Least-loaded pick (discover with limit 1) among n advertised agents, n = 1 000 … 100 000,
//! with load updates interleaved. Prints p50/p99/max per n.
//!
//! `cargo bench -p vertebra-reference-agent --bench pick`

use std::time::{Duration, Instant};

use vertebra_reference_agent::protocol::{Resource, ResourceScope};
use vertebra_reference_agent::table::Table;

fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn main() {
    let op = Resource::parse("/image/resize").unwrap();
    let ops = [op.clone()];
    let mut scope = ResourceScope::new();
    scope.push(Some("cluster"), Resource::parse("/cluster/rd00").unwrap());
    let now = Instant::now();
    println!("{:>8} {:>10} {:>10} {:>10}", "agents", "p50", "p99", "max");
    for n in [1_000usize, 10_000, 100_000] {
        let mut t = Table::new();
        let mut s = 0x9e3779b97f4a7c15u64;
        for i in 0..n {
            let j = format!("agent{i:06}@bench.example/agent");
            t.advertise(&j, &ops, &scope, 3600, now);
            t.report(&j, (rng(&mut s) % 10_000) as f64 / 10_000.0, Duration::from_secs(1), now);
        }
        let mut lat = Vec::with_capacity(20_000);
        for k in 0..20_000 {
            // one load report between picks (the table changes under the picks)
            let i = (rng(&mut s) as usize) % n;
            let j = format!("agent{i:06}@bench.example/agent");
            t.report(&j, (rng(&mut s) % 10_000) as f64 / 10_000.0, Duration::from_secs(1), now);
            let t0 = Instant::now();
            let r = t.discover("web@bench.example/app", &op, &ResourceScope::new(), Some(1), now);
            lat.push(t0.elapsed());
            assert_eq!(r.len(), 1, "pick {k}");
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
        println!("{:>8} {:>10.2?} {:>10.2?} {:>10.2?}", n, p(0.5), p(0.99), lat[lat.len() - 1]);
    }
}
