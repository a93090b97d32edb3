//! IQ round trips per second between two loopback XMPP clients built on tokio-xmpp (its XML
//! stream layer and SASL login, via [`RawClient`]), with up to 64 IQs in flight, on the
//! embedded server and on a real Prosody.
//!
//! Run (release): `cargo bench -p vertebra-embedded-server --bench iq_roundtrip`
//! Environment: `BENCH_SECS` (default 5) per measurement, `BENCH_INFLIGHT` (default 64),
//! `BENCH_ONLY=embedded|prosody`. Prosody is skipped with a notice when not installed.
//!
//! Why not `tokio_xmpp::Client`: with many IQs in flight it stalls. Its internal queues hold
//! 16 events, so a task that reads an event and then awaits `send_stanza` on the same client
//! deadlocks once the queues fill; and `Client::split()`'s receiver returns `Pending` without
//! registering a waker when the sender holds the lock, so the receiver can sleep forever.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_xmpp::{minidom::Element, parsers::iq::Iq, Stanza};
use vertebra_embedded_server::{
    prosody::Prosody, testing::RawClient, EmbeddedServer, ServerConfig,
};

const T: Duration = Duration::from_secs(15);

async fn run(addr: SocketAddr, domain: &str, secs: u64, inflight: usize) -> (u64, f64) {
    let mut alice = RawClient::connect(
        addr,
        &format!("alice@{domain}"),
        "alicepw",
        Some("bench"),
        T,
    )
    .await
    .expect("alice online");
    let mut bob = RawClient::connect(addr, &format!("bob@{domain}"), "bobpw", Some("bench"), T)
        .await
        .expect("bob online");
    let bob_jid = bob.jid().clone();
    let responder = tokio::spawn(async move {
        loop {
            let batch = match bob.recv_batch(256, Duration::from_secs(3600)).await {
                Ok(b) if !b.is_empty() => b,
                _ => return,
            };
            let replies: Vec<Stanza> = batch
                .into_iter()
                .filter_map(|s| match s {
                    Stanza::Iq(Iq::Get {
                        from: Some(from),
                        id,
                        ..
                    }) => Some(
                        Iq::Result {
                            from: None,
                            to: Some(from),
                            id,
                            payload: None,
                        }
                        .into(),
                    ),
                    _ => None,
                })
                .collect();
            if bob.send_stanzas(&replies).await.is_err() {
                return;
            }
        }
    });
    let payload: Element = "<bench xmlns='urn:vertebra:bench'/>".parse().unwrap();
    let mut next_id = 0u64;
    let mut outstanding: HashSet<String> = HashSet::new();
    let mut make = |n: usize, outstanding: &mut HashSet<String>| -> Vec<Stanza> {
        (0..n)
            .map(|_| {
                next_id += 1;
                let id = format!("b{next_id}");
                outstanding.insert(id.clone());
                Iq::Get {
                    from: None,
                    to: Some(bob_jid.clone().into()),
                    id,
                    payload: payload.clone(),
                }
                .into()
            })
            .collect()
    };
    let mut done = 0u64;
    let mut start = Instant::now();
    let warmup = 500;
    let mut end = None;
    let first = make(inflight, &mut outstanding);
    alice.send_stanzas(&first).await.unwrap();
    loop {
        let batch = alice.recv_batch(256, T).await.expect("responses in time");
        assert!(!batch.is_empty(), "stream ended");
        let mut completed = 0;
        for s in batch {
            if let Stanza::Iq(Iq::Result { id, .. }) = s {
                assert!(outstanding.remove(&id), "unexpected result {id}");
                completed += 1;
            } else {
                panic!("unexpected stanza {s:?}");
            }
        }
        done += completed as u64;
        if end.is_none() && done >= warmup {
            done = 0;
            start = Instant::now();
            end = Some(start + Duration::from_secs(secs));
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        let more = make(completed, &mut outstanding);
        alice.send_stanzas(&more).await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    responder.abort();
    (done, done as f64 / elapsed)
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let inflight: usize = std::env::var("BENCH_INFLIGHT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "IQ round trips between 2 loopback clients (tokio-xmpp XML streams), \
             {inflight} in flight, {secs} s each"
        );
        if only != "prosody" {
            for trace in [true, false] {
                let cfg = ServerConfig {
                    trace,
                    ..ServerConfig::default()
                        .with_account("alice", "alicepw")
                        .with_account("bob", "bobpw")
                };
                let server = EmbeddedServer::start(cfg).await.unwrap();
                let (n, rate) = run(server.addr(), server.domain(), secs, inflight).await;
                println!(
                    "embedded (trace {}): {n:>8} round trips, {rate:>9.0}/s",
                    if trace { "on " } else { "off" }
                );
                server.shutdown().await;
            }
        }
        if only == "embedded" {
            return;
        }
        match Prosody::start("localhost", &[("alice", "alicepw"), ("bob", "bobpw")]).await {
            Ok(p) => {
                let (n, rate) = run(p.addr(), p.domain(), secs, inflight).await;
                println!("prosody           : {n:>8} round trips, {rate:>9.0}/s");
            }
            Err(e) => println!("prosody: skipped ({e})"),
        }
    });
}
