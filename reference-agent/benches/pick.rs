//! Least-loaded pick (discover with limit 1) among n advertised agents, n = 1 000 … 100 000,
//! with load updates interleaved. Prints p50/p99/max per n.
//!
//! `cargo bench -p vertebra-reference-agent --bench pick`

use std::time::Instant;

use vertebra_reference_agent::protocol::dispatch::Directory;
use vertebra_reference_agent::protocol::payloads::AdvertiseRequest;
use vertebra_reference_agent::protocol::{Load, Resource, ResourceScope};
use vertebra_reference_agent::tokio_xmpp::parsers::jid::Jid;

fn load(v: f64) -> Load {
    Load {
        value: v,
        inflight: Some(0),
        capacity: Some(8),
        interval: Some(1000),
    }
}

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
    let now = 0u64;
    println!("{:>8} {:>10} {:>10} {:>10}", "agents", "p50", "p99", "max");
    for n in [1_000usize, 10_000, 100_000] {
        let mut t = Directory::new("bench.example");
        let mut s = 0x9e3779b97f4a7c15u64;
        let adv = AdvertiseRequest {
            operations: ops.to_vec(),
            resources: scope.clone(),
            ttl: 3600,
            advertiser: None,
        };
        let jids: Vec<Jid> = (0..n)
            .map(|i| format!("agent{i:06}@bench.example/agent").parse().unwrap())
            .collect();
        for j in &jids {
            t.advertise(j, &adv, now).unwrap();
            t.report_load(j, &load((rng(&mut s) % 10_000) as f64 / 10_000.0), now);
        }
        let mut lat = Vec::with_capacity(20_000);
        for k in 0..20_000 {
            // one load report between picks (the table changes under the picks)
            let i = (rng(&mut s) as usize) % n;
            t.report_load(
                &jids[i],
                &load((rng(&mut s) % 10_000) as f64 / 10_000.0),
                now,
            );
            let t0 = Instant::now();
            let r = t.pick("bench.example", &op, &ResourceScope::new(), 1, |j| {
                j != "web@bench.example/app"
            });
            lat.push(t0.elapsed());
            assert_eq!(r.len(), 1, "pick {k}");
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
        println!(
            "{:>8} {:>10.2?} {:>10.2?} {:>10.2?}",
            n,
            p(0.5),
            p(0.99),
            lat[lat.len() - 1]
        );
    }
}
