//! STARTTLS against a real Prosody that *requires* encryption on c2s: a dispatcher, an agent and
//! a requester log in over STARTTLS trusting a throwaway CA made at test time (openssl CLI) and
//! make an echo call end to end. Negative cases: a plaintext client, a client trusting another
//! CA, and STARTTLS against a server that offers none each end with `ConnError::Tls` well within
//! the login deadline (tokio-xmpp-style silent retrying would show up as a timeout instead).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vertebra_embedded_server::prosody::{in_ci, prosody_tls_or_fail, TlsFiles};
use vertebra_embedded_server::testing::{ServerKind, TestServer};
use vertebra_reference_agent::agent::AgentBuilder;
use vertebra_reference_agent::conn::{ConnError, ConnectOptions, Tls};
use vertebra_reference_agent::dispatcher::{Dispatcher, DispatcherConfig};
use vertebra_reference_agent::node::{wait_advertised, Node, NodeConfig};
use vertebra_reference_agent::protocol::payloads::test_ops;
use vertebra_reference_agent::protocol::{Args, Value};
use vertebra_reference_agent::requester::call_single;
use vertebra_reference_agent::tokio_xmpp::parsers::jid::{FullJid, Jid};

const ONLINE: Duration = Duration::from_secs(15);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` (files `<name>.crt`/`.key`) in `dir`; returns the certificate path.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(crt)
}

/// A leaf certificate for `localhost` signed by CA `ca`.
fn make_leaf(dir: &Path, ca: &str) -> TlsFiles {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "localhost.key",
            "-out",
            "localhost.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "localhost.csr",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "localhost.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    TlsFiles {
        certificate: dir.join("localhost.crt"),
        key: dir.join("localhost.key"),
    }
}

fn have_openssl() -> bool {
    let ok = Command::new("openssl").arg("version").output().is_ok();
    if !ok {
        assert!(!in_ci(), "openssl CLI missing under CI");
        eprintln!("SKIPPED (not CI): no openssl CLI to make test certificates");
    }
    ok
}

fn opts(addr: &str, jid: &FullJid, pw: &str, tls: &Tls) -> ConnectOptions {
    ConnectOptions::new(addr, Jid::from(jid.clone()), pw).with_tls(tls.clone())
}

/// Login must fail with `ConnError::Tls` quickly (well before ONLINE); returns the detail.
async fn expect_tls_failure(o: ConnectOptions) -> String {
    let started = Instant::now();
    let mut cfg = NodeConfig::new(o);
    cfg.serve = false;
    let n = Node::start(cfg);
    let r = n.wait_online(ONLINE).await;
    let waited = started.elapsed();
    n.shutdown().await;
    match r {
        Err(ConnError::Tls { detail, .. }) => {
            assert!(waited < ONLINE / 2, "TLS failure took {waited:?}");
            detail
        }
        other => panic!("expected ConnError::Tls, got {other:?} after {waited:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_on_prosody_end_to_end() {
    let _ = env_logger::builder().is_test(true).try_init();
    if !have_openssl() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let ca = make_ca(certs.path(), "test-ca");
    let other_ca = make_ca(certs.path(), "other-ca");
    let leaf = make_leaf(certs.path(), "test-ca");
    let accounts = [("dispatcher", "dpw"), ("a1", "pw"), ("req", "pw")];
    let Some(server) = prosody_tls_or_fail("localhost", &accounts, &leaf)
        .await
        .expect("prosody with TLS starts")
    else {
        return;
    };
    let addr = server.addr().to_string();
    let tls = Tls::starttls(Some(&ca)).expect("CA loads");
    let djid: FullJid = "dispatcher@localhost/dispatcher".parse().unwrap();
    let mut dcfg = DispatcherConfig::new(opts(&addr, &djid, "dpw", &tls));
    dcfg.policy = vertebra_reference_agent::policy::allow_all();
    let dispatcher = Dispatcher::start(dcfg).unwrap();
    dispatcher
        .wait_online(ONLINE)
        .await
        .unwrap_or_else(|e| panic!("dispatcher over STARTTLS: {e}\n{}", server.logs()));

    let ajid: FullJid = "a1@localhost/agent".parse().unwrap();
    let mut b = AgentBuilder::new(addr.clone(), ajid.clone(), "pw")
        .dispatcher(djid.clone())
        .test_profile(true);
    b.config_mut().connect.tls = tls.clone();
    let agent = b.start();
    agent
        .wait_online(ONLINE)
        .await
        .expect("agent over STARTTLS");

    let rjid: FullJid = "req@localhost/cli".parse().unwrap();
    let mut rcfg = NodeConfig::new(opts(&addr, &rjid, "pw", &tls));
    rcfg.serve = false;
    let req = Node::start(rcfg);
    req.wait_online(ONLINE)
        .await
        .expect("requester over STARTTLS");
    let dj = Jid::from(djid.clone());
    assert!(
        wait_advertised(&req, &dj, test_ops::ECHO, &ajid, Duration::from_secs(10)).await,
        "agent never listed"
    );
    let args = Args::new().with("s", Value::String("over tls".into()));
    let (who, chunks) = call_single(
        &req,
        &dj,
        test_ops::ECHO,
        args.clone(),
        Duration::from_secs(10),
    )
    .await
    .expect("echo over STARTTLS");
    assert_eq!(who.to_string(), ajid.to_string());
    assert_eq!(chunks, vec![args]);

    // The server requires encryption, so a plaintext login is refused: proof that the
    // successful sessions above really ran over TLS.
    let plain: FullJid = "req@localhost/plain".parse().unwrap();
    let d = expect_tls_failure(opts(&addr, &plain, "pw", &Tls::Plain)).await;
    assert!(d.contains("requires TLS"), "{d}");

    // Trusting another CA: a certificate error, not a hang.
    let wrong = Tls::starttls(Some(&other_ca)).unwrap();
    let d = expect_tls_failure(opts(&addr, &plain, "pw", &wrong)).await;
    assert!(d.to_lowercase().contains("certificate"), "{d}");

    agent.shutdown().await;
    req.shutdown().await;
    dispatcher.shutdown().await;
}

/// STARTTLS against a server that offers none (the embedded server is plaintext only): a typed
/// error at once, no silent retry and no fallback to plaintext.
#[tokio::test]
async fn starttls_without_server_support_fails_fast() {
    if !have_openssl() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let ca = make_ca(certs.path(), "test-ca");
    let server = TestServer::start_or_skip(ServerKind::Embedded, "localhost")
        .await
        .unwrap()
        .expect("embedded server always available");
    server.add_account("u", "pw").await.unwrap();
    let jid: FullJid = "u@localhost/r".parse().unwrap();
    let tls = Tls::starttls(Some(&ca)).unwrap();
    let d = expect_tls_failure(opts(&server.addr().to_string(), &jid, "pw", &tls)).await;
    assert!(d.contains("does not offer"), "{d}");
}
