//! Scenario 1 (Nanite's announcement): a farm of image-processing backends with different
//! loads. A web app's requests go to the least-loaded backend; after that backend is killed,
//! no request goes to it.
//!
//! Run: `cargo run -p vertebra-reference-agent --example image_farm`

use std::time::Duration;

use vertebra_reference_agent::local::LocalBus;
use vertebra_reference_agent::node::{Call, Node};
use vertebra_reference_agent::protocol::{Args, Value};
use vertebra_reference_agent::requester::call_single;
use vertebra_reference_agent::tokio_xmpp::parsers::jid::Jid;

/// What happened: which backend served each request, before and after the kill.
#[derive(Debug)]
pub struct FarmReport {
    pub backends: Vec<(String, f64)>,
    pub before_kill: Vec<String>,
    pub killed: String,
    pub after_kill: Vec<String>,
}

/// A "resize" that a real backend would do with an image library: here it derives the
/// thumbnail's name and size from the request.
async fn resize(
    call: Call,
    backend: String,
) -> Result<Args, vertebra_reference_agent::node::HandlerError> {
    let image = call.string("image")?.to_string();
    let width = call.i4("width")?;
    Ok(Args::new()
        .with(
            "thumbnail",
            Value::String(format!("{image}@{width}w.png").into()),
        )
        .with("backend", Value::String(backend.into())))
}

pub async fn run(requests: usize) -> Result<FarmReport, String> {
    let bus = LocalBus::start(vertebra_reference_agent::policy::allow_all()).await?;
    let loads = [("render1", 0.30), ("render2", 0.10), ("render3", 0.60)];
    let mut agents = vec![];
    for (name, _) in loads {
        let backend = name.to_string();
        let a = bus
            .agent(name)?
            .load_interval(Duration::from_millis(200))
            .handle("/image/resize", move |call: Call| {
                resize(call, backend.clone())
            })
            .start();
        a.wait_online(Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        agents.push(a);
    }
    // different loads (a real backend would report its queue length)
    for (a, (_, l)) in agents.iter().zip(loads) {
        a.node().set_load(Some(l));
    }
    let web = bus.requester("webapp").await?;
    for a in &agents {
        let j = a.node().jid().ok_or("agent offline")?;
        if !bus
            .wait_listed(&web, "/image/resize", &j, Duration::from_secs(10))
            .await
        {
            return Err(format!("{j} not listed"));
        }
    }
    // wait until the dispatcher has every load (the least loaded must be first)
    wait_order(&web, &bus.djid(), "render2").await?;
    let mut before = vec![];
    for i in 0..requests {
        before.push(serve(&web, &bus.djid(), i).await?);
    }
    // kill the least-loaded backend (no goodbye: the process vanishes)
    let victim = agents[1].node().jid().ok_or("offline")?;
    agents[1].node().conn().stop_reconnecting();
    bus.server.disconnect(&victim).map_err(|e| e.to_string())?;
    let mut after = vec![];
    for i in 0..requests {
        after.push(serve(&web, &bus.djid(), i).await?);
    }
    Ok(FarmReport {
        backends: loads.iter().map(|(n, l)| (n.to_string(), *l)).collect(),
        before_kill: before,
        killed: "render2".into(),
        after_kill: after,
    })
}

async fn wait_order(web: &Node, d: &Jid, first: &str) -> Result<(), String> {
    for _ in 0..500 {
        let l = vertebra_reference_agent::requester::discover(
            web,
            d,
            "/image/resize",
            &Default::default(),
            None,
            Duration::from_secs(2),
        )
        .await
        .map_err(|e| e.to_string())?;
        if l.len() == 3 && l[0].0.to_string().starts_with(first) && l.iter().all(|(_, x)| *x > 0.0)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("loads never reached the dispatcher".into())
}

async fn serve(web: &Node, d: &Jid, i: usize) -> Result<String, String> {
    let args = Args::new()
        .with("image", Value::String(format!("upload-{i}.jpg").into()))
        .with("width", Value::I4(128));
    let (_, chunks) = call_single(web, d, "/image/resize", args, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let last = chunks.last().ok_or("no result")?;
    Ok(last.get_str("backend").unwrap_or("?").to_string())
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), String> {
    let r = run(5).await?;
    println!("backends and loads: {:?}", r.backends);
    println!("requests went to:   {:?}", r.before_kill);
    println!("killed {}", r.killed);
    println!("then they went to:  {:?}", r.after_kill);
    Ok(())
}
