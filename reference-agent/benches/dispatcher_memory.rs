//! Dispatcher table memory per tracked agent at 100 000 agents (each with one advertised
//! operation, one keyed resource and a load report), measured with a counting allocator.
//!
//! `cargo bench -p vertebra-reference-agent --bench dispatcher_memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use vertebra_reference_agent::protocol::dispatch::Directory;
use vertebra_reference_agent::protocol::payloads::AdvertiseRequest;
use vertebra_reference_agent::protocol::{Load, Resource, ResourceScope};
use vertebra_reference_agent::tokio_xmpp::parsers::jid::Jid;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let n = 100_000usize;
    let ops = [Resource::parse("/image/resize").unwrap()];
    let now = 0u64;
    let jids: Vec<Jid> = (0..n)
        .map(|i| format!("agent{i:06}@bench.example/agent").parse().unwrap())
        .collect();
    let scopes: Vec<ResourceScope> = (0..n)
        .map(|i| {
            let mut s = ResourceScope::new();
            s.push(
                Some("cluster"),
                Resource::parse(&format!("/cluster/rd{:02}", i % 100)).unwrap(),
            );
            s
        })
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut t = Directory::new("bench.example");
    for i in 0..n {
        let adv = AdvertiseRequest {
            operations: ops.to_vec(),
            resources: scopes[i].clone(),
            ttl: 3600,
            advertiser: None,
        };
        t.advertise(&jids[i], &adv, now).unwrap();
        let l = Load {
            value: (i % 1000) as f64 / 1000.0,
            inflight: Some(0),
            capacity: Some(8),
            interval: Some(1000),
        };
        t.report_load(&jids[i], &l, now);
    }
    let after = LIVE.load(Ordering::Relaxed);
    let per = (after - before) as f64 / n as f64;
    println!(
        "agents: {n}, table bytes: {}, per agent: {per:.0} B (target <= 1024 B)",
        after - before
    );
    assert_eq!(t.len(), n);
}
