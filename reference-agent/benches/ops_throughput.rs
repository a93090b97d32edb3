//! End-to-end operations per second (op → ack → data → final, fast path) on the embedded
//! server, as a ratio to raw IQ round trips (XEP-0199 ping) on the same two connections at the
//! same concurrency. Also reports the 4-round-trip form (separate ack and data).
//!
//! `cargo bench -p vertebra-reference-agent --bench ops_throughput`
//!
//! `BENCH_DUMP_WIRE=1` also prints, after the warm-up, every stanza the server sees for one
//! fast-path op and one ping (the fast path is 4 stanzas: op, op result, final, its result).
//! `BENCH_PROFILE=ping|fast|stream|ideal|ideal-ping` runs only that phase (`BENCH_N` calls,
//! default 100 000), for a profiler; e.g. under `valgrind --tool=callgrind` the instruction
//! counts of a `fast` and a `ping` run with the same `BENCH_N` give the instructions per op and
//! per ping, which, unlike the rates, do not depend on what else runs on the machine.
//!
//! The `ideal` phase is the ceiling of the ratio: the same four fast-path stanzas (op, op result
//! with `ack="true"`, final with the values, its result) between two bare connections of the
//! connection layer (`Conn`, no node, no machines) on the same server at the same concurrency.
//! The responder answers each op IQ with a prebuilt op result and a prebuilt final; the
//! requester answers the final and counts the op done. `ideal-ping` pings over those same two
//! connections.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc::UnboundedReceiver;
use vertebra_reference_agent::conn::{Conn, ConnectOptions, Incoming};
use vertebra_reference_agent::local::LocalBus;
use vertebra_reference_agent::node::{Call, CallOptions, Node};
use vertebra_reference_agent::protocol::stanza::{Final, Op, OpResult};
use vertebra_reference_agent::protocol::{Args, RequestToken, Resource, Token, Value};
use vertebra_reference_agent::tokio_xmpp::parsers::iq::Iq;
use vertebra_reference_agent::tokio_xmpp::parsers::jid::Jid;
use vertebra_reference_agent::tokio_xmpp::parsers::minidom::Element;

const CONCURRENCY: usize = 32;

/// CPU time (user + system) of the whole process so far, in seconds, from `/proc/self/stat`
/// (None where that file does not exist). Reported per call next to the rates: a rate can drop
/// because of CPU spent or because of time spent idle waiting.
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Runs `f`, returning its rate and the CPU microseconds per call (if known).
async fn measured<F: std::future::Future<Output = f64>>(n: usize, f: F) -> (f64, Option<f64>) {
    let c0 = cpu_seconds();
    let rate = f.await;
    let cpu = c0.zip(cpu_seconds()).map(|(a, b)| (b - a) * 1e6 / n as f64);
    (rate, cpu)
}

fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "?".into(), |v| format!("{v:.0}"))
}

/// `n` pings from `conn` to `to`, at most [`CONCURRENCY`] in flight.
async fn pings(conn: &Conn, to: &Jid, n: usize) -> f64 {
    let t0 = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut done = 0;
    let mut sent = 0;
    while done < n {
        while sent < n && inflight.len() < CONCURRENCY {
            let el = Element::builder("ping", "urn:xmpp:ping").build();
            let c = conn.clone();
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

/// Two bare connections for the `ideal` phase: a requester and a responder that answers every
/// IQ set with a prebuilt op result and a prebuilt final.
struct Ideal {
    req: Conn,
    incoming: UnboundedReceiver<Incoming>,
    /// The responder's full JID.
    to: Jid,
    /// The op payload (a real op's shape and size, built once).
    op: Element,
}

async fn ideal_conn(bus: &LocalBus, user: &str) -> (Conn, UnboundedReceiver<Incoming>, Jid) {
    let pw = format!("{user}-pw");
    bus.server.add_account(user, &pw).unwrap();
    let jid = Jid::from(bus.jid(user, "ideal"));
    let (conn, incoming) = Conn::connect(ConnectOptions::new(bus.addr.clone(), jid, pw));
    let bound = conn.wait_online(Duration::from_secs(10)).await.unwrap();
    (conn, incoming, Jid::from(bound))
}

impl Ideal {
    async fn start(bus: &LocalBus) -> Ideal {
        let args = Args::new().with("x", Value::I4(1));
        let t = RequestToken::Single(Token::generate().unwrap());
        let res = Resource::parse("/bench/echo").unwrap();
        let op = Op::new(t.clone(), &res, 30_000)
            .with_args(args.clone())
            .to_element();
        let token = t.rotate_fresh().unwrap();
        let op_result = OpResult {
            token: token.clone(),
            ack: true,
        }
        .to_element();
        let fin = Final {
            token,
            count: Some(1),
            args,
        }
        .to_element();
        let (resp, mut resp_in, to) = ideal_conn(bus, "ideal-resp").await;
        let (req, incoming, _) = ideal_conn(bus, "ideal-req").await;
        tokio::spawn(async move {
            while let Some(inc) = resp_in.recv().await {
                // Results of our finals (and anything else) need no work.
                if let Incoming::Iq {
                    from,
                    id,
                    set: true,
                    ..
                } = inc
                {
                    resp.reply_result(from.clone(), id, Some(op_result.clone()));
                    let _ = resp.send(Iq::Set {
                        from: None,
                        to: Some(from),
                        id: resp.new_id(),
                        payload: fin.clone(),
                    });
                }
            }
        });
        Ideal {
            req,
            incoming,
            to,
            op,
        }
    }

    /// `n` fast-path exchanges, at most [`CONCURRENCY`] in flight; an op is done when its final
    /// arrives (and is answered).
    async fn ops(&mut self, n: usize) -> f64 {
        let t0 = Instant::now();
        let (mut sent, mut done) = (0, 0);
        while done < n {
            while sent < n && sent - done < CONCURRENCY {
                let _ = self.req.send(Iq::Set {
                    from: None,
                    to: Some(self.to.clone()),
                    id: self.req.new_id(),
                    payload: self.op.clone(),
                });
                sent += 1;
            }
            // The op results (and the session's own events) need no work.
            if let Incoming::Iq { from, id, .. } =
                self.incoming.recv().await.expect("ideal requester")
            {
                self.req.reply_result(from, id, None);
                done += 1;
            }
        }
        n as f64 / t0.elapsed().as_secs_f64()
    }

    async fn pings(&self, n: usize) -> f64 {
        pings(&self.req, &self.to, n).await
    }
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
        let mut ideal = Ideal::start(&bus).await;
        // warm-up (fills the authorization cache, so the fast path applies)
        ops(&req, &to, "/bench/echo", 200).await;
        pings(req.conn(), &to, 200).await;
        ideal.ops(200).await;
        ideal.pings(200).await;
        if std::env::var("BENCH_DUMP_WIRE").is_ok_and(|v| v == "1") {
            // What one op and one ping put on the wire (after warm-up).
            let trace = bus.server.trace();
            trace.set_enabled(true);
            trace.clear();
            ops(&req, &to, "/bench/echo", 1).await;
            pings(req.conn(), &to, 1).await;
            ideal.ops(1).await;
            for e in trace.drain() {
                println!("{:?} {}", e.direction, e.xml);
            }
            trace.set_enabled(false);
        }
        let n = 20_000;
        if let Ok(phase) = std::env::var("BENCH_PROFILE") {
            // Only one phase, for a profiler: `ping`, `fast`, `stream`, `ideal` or
            // `ideal-ping`; BENCH_N calls.
            let n = std::env::var("BENCH_N")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(5 * n);
            let (rate, cpu) = match phase.as_str() {
                "ping" => measured(n, pings(req.conn(), &to, n)).await,
                "stream" => measured(n, ops(&req, &to, "/bench/stream", n)).await,
                "ideal" => measured(n, ideal.ops(n)).await,
                "ideal-ping" => measured(n, ideal.pings(n)).await,
                _ => measured(n, ops(&req, &to, "/bench/echo", n)).await,
            };
            println!("{phase}: {rate:.0} /s  CPU {} us", us(cpu));
            return;
        }
        let (iq, iq_cpu) = measured(n, pings(req.conn(), &to, n)).await;
        let (fast, fast_cpu) = measured(n, ops(&req, &to, "/bench/echo", n)).await;
        let (slow, slow_cpu) = measured(n / 2, ops(&req, &to, "/bench/stream", n / 2)).await;
        let (ideal_ops, ideal_cpu) = measured(n, ideal.ops(n)).await;
        let (ideal_iq, ideal_iq_cpu) = measured(n, ideal.pings(n)).await;
        let (iq2, iq2_cpu) = measured(n, pings(req.conn(), &to, n)).await;
        let iq = (iq + iq2) / 2.0;
        let iq_cpu = iq_cpu.zip(iq2_cpu).map(|(a, b)| (a + b) / 2.0);
        println!("concurrency {CONCURRENCY}, {n} calls each; CPU = process CPU time per call");
        println!("raw IQ round trips: {iq:>9.0} /s  CPU {:>4} us", us(iq_cpu));
        println!(
            "ops (fast path, op+final with values): {fast:>9.0} /s  CPU {:>4} us  ratio {:.2} (target >= 0.35)",
            us(fast_cpu),
            fast / iq
        );
        println!(
            "ops (op, ack, data, final; 4 round trips): {slow:>9.0} /s  CPU {:>4} us  ratio {:.2}",
            us(slow_cpu),
            slow / iq
        );
        println!(
            "ideal fast path (bare connections, prebuilt stanzas, no node): {ideal_ops:>9.0} /s  \
             CPU {:>4} us  ratio {:.2}; vs pings on those connections ({ideal_iq:.0} /s, CPU {} us) {:.2}",
            us(ideal_cpu),
            ideal_ops / iq,
            us(ideal_iq_cpu),
            ideal_ops / ideal_iq
        );
    });
}
