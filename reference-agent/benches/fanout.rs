//! One op fanned out to 1 000 agents on the embedded server and gathered (`all`).
//!
//! `cargo bench -p vertebra-reference-agent --bench fanout`

use std::time::{Duration, Instant};

use vertebra_reference_agent::local::LocalBus;
use vertebra_reference_agent::node::Call;
use vertebra_reference_agent::protocol::{Args, ResourceScope, Value};
use vertebra_reference_agent::requester::{call_all, discover};

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
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();
    let n: usize = std::env::var("FANOUT_AGENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = LocalBus::start_with(server_config(), vertebra_reference_agent::policy::allow_all()).await.unwrap();
        let t0 = Instant::now();
        let mut agents = Vec::with_capacity(n);
        for i in 0..n {
            let a = bus
                .agent(&format!("worker{i:04}"))
                .unwrap()
                .advertise_ttl(3600)
                .handle("/bench/fan", |c: Call| async move { Ok(Args::new().with("one", c.args.get("x").cloned().unwrap_or(Value::I4(1)))) })
                .start();
            agents.push(a);
        }
        for a in &agents {
            a.wait_online(Duration::from_secs(120)).await.unwrap();
        }
        println!("{n} agents online after {:.1?}", t0.elapsed());
        let req = bus.requester("req").await.unwrap();
        loop {
            let l = discover(&req, &bus.djid(), "/bench/fan", &ResourceScope::new(), None, Duration::from_secs(10)).await.unwrap();
            if l.len() == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("{n} agents online and advertised in {:.1?}", t0.elapsed());
        for round in 0..3 {
            let t = Instant::now();
            let g = call_all(&req, &bus.djid(), "/bench/fan", Args::new().with("x", Value::I4(1)), Duration::from_secs(30), None)
                .await
                .unwrap();
            let el = t.elapsed();
            let ok = g.outcomes.iter().filter(|o| o.result.is_ok()).count();
            println!("round {round}: fan-out to {} agents gathered in {el:.1?} ({ok} ok) (target <= 1 s)", g.outcomes.len());
        }
    });
}
