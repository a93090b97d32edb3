//! End-to-end operations per second (op → ack → data → final, fast path) on the embedded
//! server, as a ratio to raw IQ round trips (XEP-0199 ping) on the same two connections at the
//! same concurrency. Also reports the 4-round-trip form (separate ack and data).
//!
//! `cargo bench -p vertebra-reference-agent --bench ops_throughput`
//!
//! `BENCH_DUMP_WIRE=1` also prints, after the warm-up, every stanza the server sees for one
//! fast-path op and one ping (the fast path is 4 stanzas: op, op result, final, its result).

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use vertebra_reference_agent::local::LocalBus;
use vertebra_reference_agent::node::{Call, CallOptions, Node};
use vertebra_reference_agent::protocol::{Args, Value};
use vertebra_reference_agent::tokio_xmpp::parsers::jid::Jid;
use vertebra_reference_agent::tokio_xmpp::parsers::minidom::Element;

const CONCURRENCY: usize = 32;

async fn pings(req: &Node, to: &Jid, n: usize) -> f64 {
    let t0 = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut done = 0;
    let mut sent = 0;
    while done < n {
        while sent < n && inflight.len() < CONCURRENCY {
            let el = Element::builder("ping", "urn:xmpp:ping").build();
            let c = req.conn().clone();
            let to = to.clone();
            inflight.push(async move { c.iq(to, false, el, Duration::from_secs(10)).await });
            sent += 1;
        }
        inflight.next().await.unwrap().expect("ping");
        done += 1;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

async fn ops(req: &Node, to: &Jid, op: &str, n: usize) -> f64 {
    let t0 = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut done = 0;
    let mut sent = 0;
    while done < n {
        while sent < n && inflight.len() < CONCURRENCY {
            let r = req.clone();
            let to = to.clone();
            let op = op.to_string();
            inflight.push(async move {
                r.call_collect(
                    to,
                    &op,
                    Args::new().with("x", Value::I4(1)),
                    CallOptions::default(),
                )
                .await
            });
            sent += 1;
        }
        let chunks = inflight.next().await.unwrap().expect("op");
        assert_eq!(chunks.len(), 1);
        done += 1;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// The embedded server's wire trace costs about a fifth of the CPU of this in-process bus; it
/// is off unless `BENCH_SERVER_TRACE=1` (both settings are reported in docs/status.md).
fn server_config() -> vertebra_embedded_server::ServerConfig {
    let mut c = vertebra_embedded_server::ServerConfig::new("localhost");
    c.trace = std::env::var("BENCH_SERVER_TRACE").is_ok_and(|v| v == "1");
    println!(
        "embedded server wire trace: {}",
        if c.trace { "on" } else { "off" }
    );
    c
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = LocalBus::start_with(
            server_config(),
            vertebra_reference_agent::policy::allow_all(),
        )
        .await
        .unwrap();
        let agent = bus
            .agent("bench")
            .unwrap()
            .handle("/bench/echo", |c: Call| async move { Ok(c.args) })
            .handle("/bench/stream", |c: Call| async move {
                c.send(c.args.clone()).await?;
                Ok(Args::new())
            })
            .start();
        agent.wait_online(Duration::from_secs(10)).await.unwrap();
        let req = bus.requester("req").await.unwrap();
        let to = Jid::from(agent.node().jid().unwrap());
        assert!(
            bus.wait_listed(
                &req,
                "/bench/echo",
                &agent.node().jid().unwrap(),
                Duration::from_secs(10)
            )
            .await
        );
        // warm-up (fills the authorization cache, so the fast path applies)
        ops(&req, &to, "/bench/echo", 200).await;
        pings(&req, &to, 200).await;
        if std::env::var("BENCH_DUMP_WIRE").is_ok_and(|v| v == "1") {
            // What one op and one ping put on the wire (after warm-up).
            let trace = bus.server.trace();
            trace.set_enabled(true);
            trace.clear();
            ops(&req, &to, "/bench/echo", 1).await;
            pings(&req, &to, 1).await;
            for e in trace.drain() {
                println!("{:?} {}", e.direction, e.xml);
            }
            trace.set_enabled(false);
        }
        let n = 20_000;
        let iq = pings(&req, &to, n).await;
        let fast = ops(&req, &to, "/bench/echo", n).await;
        let slow = ops(&req, &to, "/bench/stream", n / 2).await;
        let iq2 = pings(&req, &to, n).await;
        let iq = (iq + iq2) / 2.0;
        println!("concurrency {CONCURRENCY}, {n} calls each");
        println!("raw IQ round trips: {iq:>9.0} /s");
        println!(
            "ops (fast path, op+final with values): {fast:>9.0} /s  ratio {:.2} (target >= 0.35)",
            fast / iq
        );
        println!(
            "ops (op, ack, data, final; 4 round trips): {slow:>9.0} /s  ratio {:.2}",
            slow / iq
        );
    });
}
