//! Scenario 3: a legacy command-line service (`wc`) put on the bus by a ten-line agent.
//!
//! Run: `cargo run -p vertebra-reference-agent --example legacy_command`
//! (The `vertebra-agent --exec /op=command` option does the same without writing code.)

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use vertebra_reference_agent::agent::AgentBuilder;
use vertebra_reference_agent::local::LocalBus;
use vertebra_reference_agent::node::{Call, HandlerError};
use vertebra_reference_agent::protocol::{Args, Value};
use vertebra_reference_agent::requester::call_single;

/// The ten-line agent: `/legacy/wc` pipes `text` through `wc -w -l` and returns its output.
pub fn wc_agent(b: AgentBuilder) -> AgentBuilder {
    b.handle("/legacy/wc", |call: Call| async move {
        let text = call.string("text")?.to_string();
        let mut child = tokio::process::Command::new("wc")
            .args(["-l", "-w"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|_| HandlerError::new("wc is not available"))?;
        child
            .stdin
            .take()
            .ok_or_else(|| HandlerError::new("no stdin"))?
            .write_all(text.as_bytes())
            .await
            .map_err(|_| HandlerError::new("write failed"))?;
        let out = child
            .wait_with_output()
            .await
            .map_err(|_| HandlerError::new("wc failed"))?;
        let nums: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        Ok(Args::new()
            .with("lines", Value::I4(*nums.first().unwrap_or(&0)))
            .with("words", Value::I4(*nums.get(1).unwrap_or(&0))))
    })
}

pub async fn run(text: &str) -> Result<(i32, i32), String> {
    let bus = LocalBus::start(vertebra_reference_agent::policy::allow_all()).await?;
    let agent = wc_agent(bus.agent("legacy")?).start();
    agent
        .wait_online(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let req = bus.requester("user").await?;
    let j = agent.node().jid().ok_or("offline")?;
    if !bus
        .wait_listed(&req, "/legacy/wc", &j, Duration::from_secs(10))
        .await
    {
        return Err("agent not listed".into());
    }
    let (_, chunks) = call_single(
        &req,
        &bus.djid(),
        "/legacy/wc",
        Args::new().with("text", Value::String(text.into())),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| e.to_string())?;
    let r = chunks.last().ok_or("no result")?;
    Ok((
        r.get_i4("lines").unwrap_or(-1),
        r.get_i4("words").unwrap_or(-1),
    ))
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), String> {
    let text = "a legacy tool\non the bus\nthrough ten lines\n";
    let (lines, words) = run(text).await?;
    println!("wc over the bus: {lines} lines, {words} words");
    Ok(())
}
