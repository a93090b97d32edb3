//! Runs the Python port's own test suite (`ports/python/tests`, pytest) as part of
//! `cargo test --workspace`: the shared spec examples and schema, the lifecycle unit tests, and
//! an end-to-end run of `python -m vertebra_agent` through a real Prosody.
//!
//! The virtual environment `ports/python/.venv` is created by `.ci/run`. Under `CI=true` a
//! missing environment is a failure; elsewhere the test says so on stderr and returns.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(600);

/// The tests of this file start servers and agent processes and measure time; they run one at
/// a time so that they do not disturb each other's timing on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the conformance crate lives in the workspace root")
        .to_path_buf()
}

#[test]
fn python_port_pytest_suite_passes() {
    let _serial = SERIAL.blocking_lock();
    let root = repo_root();
    let python = root.join("ports/python/.venv/bin/python");
    if !python.exists() {
        let msg = "ports/python/.venv is missing: run `python3 -m venv ports/python/.venv && \
                   ports/python/.venv/bin/pip install -r ports/python/requirements.txt` \
                   (.ci/run does this)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED python_port_pytest_suite_passes: {msg}");
        return;
    }
    let mut child = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "ports/python/tests",
        ])
        .current_dir(&root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pytest");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for pytest") {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    println!("{out}");
    eprintln!("{err}");
    let status = status.unwrap_or_else(|| panic!("pytest did not finish within {DEADLINE:?}"));
    assert!(status.success(), "pytest failed ({status}); output above");
    assert!(out.contains(" passed"), "pytest ran no tests; output above");
}

// ---------------------------------------------------------------------------------------------
// Interop through the Rust dispatcher: the Rust requester calls the Python agent (spawned as
// `python -m vertebra_agent` with the spawn-contract variables) and the Python requester CLI
// calls the Rust reference agent, on both server kinds.

mod interop {
    use super::repo_root;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use vertebra_embedded_server::testing::{ServerKind, TestServer};
    use vertebra_reference_agent::agent::AgentBuilder;
    use vertebra_reference_agent::conn::ConnectOptions;
    use vertebra_reference_agent::dispatcher::{Dispatcher, DispatcherConfig};
    use vertebra_reference_agent::node::{wait_advertised, Node, NodeConfig};
    use vertebra_reference_agent::policy::allow_all;
    use vertebra_reference_agent::protocol::payloads::test_ops;
    use vertebra_reference_agent::protocol::{Args, Value};
    use vertebra_reference_agent::requester::{call_all, call_direct};
    use vertebra_reference_agent::tokio_xmpp::parsers::jid::{FullJid, Jid};

    const ONLINE: Duration = Duration::from_secs(15);

    /// Kills the agent if the test fails before the orderly SIGTERM.
    struct AgentProcess(Child);

    impl Drop for AgentProcess {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    fn python() -> Option<std::path::PathBuf> {
        let p = repo_root().join("ports/python/.venv/bin/python");
        if p.exists() {
            return Some(p);
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("ports/python/.venv is missing (CI=true)");
        }
        eprintln!("SKIPPED python interop: ports/python/.venv is missing");
        None
    }

    async fn scenario(kind: ServerKind) {
        let _serial = super::SERIAL.lock().await;
        let Some(python) = python() else { return };
        let Some(server) = TestServer::start_or_skip(kind, "localhost")
            .await
            .expect("server starts")
        else {
            return;
        };
        let addr = server.addr().to_string();
        let domain = server.domain().to_string();
        for (user, pw) in [
            ("dispatcher", "dpw"),
            ("py", "pypw"),
            ("req", "reqpw"),
            ("rs", "rspw"),
            ("pyreq", "pyreqpw"),
        ] {
            server.add_account(user, pw).await.expect("account");
        }
        let djid: FullJid = format!("dispatcher@{domain}/dispatcher").parse().unwrap();
        let mut cfg = DispatcherConfig::new(ConnectOptions::new(
            addr.clone(),
            Jid::from(djid.clone()),
            "dpw",
        ));
        cfg.policy = allow_all();
        let dispatcher = Dispatcher::start(cfg).expect("dispatcher");
        dispatcher
            .wait_online(ONLINE)
            .await
            .expect("dispatcher online");

        let rs_jid: FullJid = format!("rs@{domain}/agent").parse().unwrap();
        let rust_agent = AgentBuilder::new(addr.clone(), rs_jid.clone(), "rspw")
            .dispatcher(djid.clone())
            .load_interval(Duration::from_millis(200))
            .test_profile(true)
            .start();
        rust_agent
            .wait_online(ONLINE)
            .await
            .expect("Rust agent online");

        let py_jid: FullJid = format!("py@{domain}/agent").parse().unwrap();
        let mut agent = AgentProcess(
            Command::new(&python)
                .args(["-m", "vertebra_agent"])
                .current_dir(repo_root().join("ports/python"))
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("VERTEBRA_SERVER", &addr)
                .env("VERTEBRA_JID", py_jid.to_string())
                .env("VERTEBRA_PASSWORD", "pypw")
                .env("VERTEBRA_DISPATCHER", djid.to_string())
                .env("VERTEBRA_TEST_PROFILE", "1")
                .env("VERTEBRA_LOAD_INTERVAL_MS", "200")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn the Python agent"),
        );

        let mut rcfg = NodeConfig::new(ConnectOptions::new(
            addr.clone(),
            Jid::from(format!("req@{domain}/cli").parse::<FullJid>().unwrap()),
            "reqpw",
        ));
        rcfg.serve = false;
        rcfg.iq_timeout = Duration::from_secs(5);
        let req = Node::start(rcfg);
        req.wait_online(ONLINE).await.expect("requester online");
        let d = Jid::from(djid.clone());
        for j in [&py_jid, &rs_jid] {
            assert!(
                wait_advertised(&req, &d, test_ops::ECHO, j, Duration::from_secs(20)).await,
                "{j} never got listed by the Rust dispatcher"
            );
        }

        // all: the Rust requester fans out through the Rust dispatcher to both agents
        let args = Args::new()
            .with("x", Value::I4(-7))
            .with("d", Value::Double(0.25))
            .with("s", Value::String("  spaced  ".into()))
            .with("b", Value::Boolean(true))
            .with("bytes", Value::Base64(vec![0, 1, 255]))
            .with("l", Value::List(vec![Value::Nil, Value::I4(1)]));
        let g = call_all(
            &req,
            &d,
            test_ops::ECHO,
            args.clone(),
            Duration::from_secs(10),
            None,
        )
        .await
        .expect("fan-out");
        assert_eq!(g.outcomes.len(), 2);
        for o in &g.outcomes {
            assert_eq!(
                o.result.as_ref().expect("echo"),
                &vec![args.clone()],
                "{}",
                o.jid
            );
        }
        assert!(g.outcomes.iter().any(|o| o.jid == py_jid.clone()));

        // the Python requester (CLI) fans out through the Rust dispatcher to both agents
        let out = Command::new(&python)
            .args([
                "-m",
                "vertebra_agent.call",
                "/vertebra/test/echo",
                "x=i4:5",
                "s=string: a b ",
                "--all",
                "--json",
            ])
            .current_dir(repo_root().join("ports/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("VERTEBRA_SERVER", &addr)
            .env("VERTEBRA_JID", format!("pyreq@{domain}/cli"))
            .env("VERTEBRA_PASSWORD", "pyreqpw")
            .env("VERTEBRA_DISPATCHER", djid.to_string())
            .output()
            .expect("run the Python requester");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "python requester failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON output");
        let outcomes = v["outcomes"].as_array().expect("outcomes");
        assert_eq!(outcomes.len(), 2, "{stdout}");
        let want = serde_json::json!([{"x": {"i4": 5}, "s": {"string": " a b "}}]);
        for o in outcomes {
            assert_eq!(o["status"], "final", "{stdout}");
            assert_eq!(o["chunks"], want, "{stdout}");
        }
        let jids: Vec<&str> = outcomes.iter().filter_map(|o| o["jid"].as_str()).collect();
        assert!(jids.contains(&rs_jid.to_string().as_str()), "{stdout}");

        // direct: streaming in order
        let chunks = call_direct(
            &req,
            Jid::from(py_jid.clone()),
            test_ops::STREAM,
            Args::new()
                .with("count", Value::I4(25))
                .with("size", Value::I4(10)),
            Duration::from_secs(10),
        )
        .await
        .expect("stream from the Python agent");
        let idx: Vec<i32> = chunks.iter().map(|c| c.get_i4("index").unwrap()).collect();
        assert_eq!(idx, (0..25).collect::<Vec<_>>());

        // failures travel with their conditions
        let e = call_direct(
            &req,
            Jid::from(py_jid.clone()),
            "/no/such/op",
            Args::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(e.condition, "no-handler");
        let e = call_direct(
            &req,
            Jid::from(py_jid.clone()),
            test_ops::SLEEP,
            Args::new().with("ms", Value::I4(10_000)),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert_eq!(e.condition, "deadline-expired");

        // SIGTERM: exit status 0 within 5 s
        let pid = agent.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = agent.0.try_wait().expect("wait") {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "agent ignored SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "agent exited with {status}");
        req.shutdown().await;
        rust_agent.node().shutdown().await;
        dispatcher.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn python_and_rust_interop_via_rust_dispatcher_embedded() {
        scenario(ServerKind::Embedded).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn python_and_rust_interop_via_rust_dispatcher_prosody() {
        scenario(ServerKind::Prosody).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The conformance harness against the Python agent.

mod harness {
    use super::repo_root;
    use std::io::{BufRead, BufReader};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use vertebra_embedded_server::testing::{ServerKind, TestServer};

    fn harness_bin() -> PathBuf {
        option_env!("CARGO_BIN_EXE_vertebra-conformance")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/debug/vertebra-conformance"))
    }

    fn launcher() -> Option<PathBuf> {
        if repo_root().join("ports/python/.venv/bin/python").exists() {
            return Some(repo_root().join("ports/python/bin/vertebra-agent"));
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("ports/python/.venv is missing (CI=true)");
        }
        eprintln!("SKIPPED harness run: ports/python/.venv is missing");
        None
    }

    struct Killed(Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    fn run_harness(args: &[&str]) -> (bool, String) {
        let out_dir =
            std::env::temp_dir().join(format!("vertebra-py-harness-{}", std::process::id()));
        let out = Command::new(harness_bin())
            .arg("run")
            .arg("--out")
            .arg(&out_dir)
            .args(args)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .output()
            .expect("run vertebra-conformance");
        let _ = std::fs::remove_dir_all(&out_dir);
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Server mode through a real Prosody: the agent is started first (readiness = its
    /// "online" log line), then the harness plays the dispatcher; its requester and stranger are
    /// separate accounts. Every MUST must pass except the cases baselined in
    /// ports/python/conformance-baseline-prosody.json.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn harness_passes_the_python_agent_through_prosody() {
        let _serial = super::SERIAL.lock().await;
        let Some(agent_cmd) = launcher() else { return };
        let Some(server) = TestServer::start_or_skip(ServerKind::Prosody, "localhost")
            .await
            .expect("server starts")
        else {
            return;
        };
        let addr = server.addr().to_string();
        server.add_account("dispatcher", "dpw").await.unwrap();
        server.add_account("agent", "apw").await.unwrap();
        // Separate accounts for the harness's requester and stranger: the agent's load
        // presence to the dispatcher's bare JID must not reach them [VAP-LOAD-007].
        server.add_account("requester", "rpw").await.unwrap();
        server.add_account("stranger", "spw").await.unwrap();
        let mut child = Killed(
            Command::new(agent_cmd)
                .arg("-v")
                .env("VERTEBRA_SERVER", &addr)
                .env("VERTEBRA_JID", "agent@localhost/agent")
                .env("VERTEBRA_PASSWORD", "apw")
                .env("VERTEBRA_DISPATCHER", "dispatcher@localhost/dispatcher")
                .env("VERTEBRA_TEST_PROFILE", "1")
                .env("VERTEBRA_LOAD_INTERVAL_MS", "200")
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the Python agent"),
        );
        // readiness: the agent's "online as" line (bounded by the agent's own 10 s login limit)
        let stderr = child.0.stderr.take().expect("stderr");
        let online = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stderr).lines();
            let ok = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.contains("online as"));
            // keep draining so the agent never blocks on a full pipe
            std::thread::spawn(move || lines.for_each(drop));
            ok
        });
        let online = tokio::time::timeout(Duration::from_secs(30), online)
            .await
            .expect("agent came online in time")
            .expect("reader");
        assert!(online, "the Python agent exited before logging in");
        let baseline = repo_root().join("ports/python/conformance-baseline-prosody.json");
        let (ok, text) = tokio::task::spawn_blocking(move || {
            std::env::set_var("VERTEBRA_HARNESS_PASSWORD", "dpw");
            run_harness(&[
                "--server",
                &addr,
                "--jid",
                "dispatcher@localhost/dispatcher",
                "--agent",
                "agent@localhost/agent",
                "--requester-jid",
                "requester@localhost/harness",
                "--requester-password",
                "rpw",
                "--stranger-jid",
                "stranger@localhost/harness",
                "--stranger-password",
                "spw",
                "--load-interval-ms",
                "200",
                "--baseline",
                baseline.to_str().expect("utf-8 path"),
            ])
        })
        .await
        .expect("harness thread");
        println!("{text}");
        assert!(
            ok,
            "the harness found MUST failures in the Python agent, or a stale entry in \
             ports/python/conformance-baseline-prosody.json (a case listed there now passes: \
             remove it) — output above"
        );
    }

    /// Spawn mode on the embedded server: the harness starts `ports/python/bin/vertebra-agent`
    /// with the spawn-contract variables and plays the dispatcher; every MUST must pass.
    #[test]
    fn harness_passes_the_python_agent_spawned_on_the_embedded_server() {
        let _serial = super::SERIAL.blocking_lock();
        let Some(agent_cmd) = launcher() else { return };
        let cmd = agent_cmd.to_str().expect("utf-8 path").to_string();
        let (ok, text) = run_harness(&["--", &cmd]);
        println!("{text}");
        assert!(
            ok,
            "the harness found MUST failures in the Python agent (output above)"
        );
    }
}
