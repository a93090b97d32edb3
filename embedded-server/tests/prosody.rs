//! The real-Prosody helper: typed error for a missing binary, the CI skip rule, start,
//! accounts, stop on drop.

use std::path::Path;
use std::time::Duration;

use vertebra_embedded_server::{
    prosody::{prosody_or_fail, skip_unless_ci, Prosody},
    testing::{RawClient, ServerKind, TestServer},
    Error,
};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn missing_binary_is_a_typed_error() {
    let r = Prosody::start_with(
        Path::new("/nonexistent/prosody"),
        Path::new("/nonexistent/prosodyctl"),
        "localhost",
        &[],
    )
    .await;
    assert!(matches!(r, Err(Error::ProsodyNotInstalled(_))), "{r:?}");
}

#[test]
fn missing_prosody_fails_under_ci_and_skips_only_outside() {
    let missing = || Err::<(), _>(Error::ProsodyNotInstalled("test".into()));
    assert!(matches!(
        skip_unless_ci(missing(), true),
        Err(Error::ProsodyNotInstalled(_))
    ));
    assert!(matches!(skip_unless_ci(missing(), false), Ok(None)));
    assert!(matches!(skip_unless_ci(Ok(7), true), Ok(Some(7))));
    // other failures are never skipped
    let broken = || Err::<(), _>(Error::Prosody("crashed".into()));
    assert!(matches!(
        skip_unless_ci(broken(), false),
        Err(Error::Prosody(_))
    ));
}

#[tokio::test]
async fn starts_registers_accounts_and_stops_on_drop() {
    let Some(p) = prosody_or_fail("localhost", &[("alice", "alicepw")])
        .await
        .expect("prosody starts")
    else {
        return;
    };
    let addr = p.addr();
    assert!(addr.ip().is_loopback());
    assert_eq!(p.domain(), "localhost");
    assert!(p.dir().join("prosody.cfg.lua").is_file());
    let a = RawClient::connect(addr, "alice@localhost", "alicepw", Some("a"), T)
        .await
        .expect("configured account logs in");
    p.add_account("late", "latepw").await.unwrap();
    let l = RawClient::connect(addr, "late@localhost", "latepw", Some("l"), T)
        .await
        .expect("account added while running logs in");
    assert!(
        RawClient::connect(addr, "alice@localhost", "wrong", None, T)
            .await
            .is_err()
    );
    drop((a, l));
    drop(p);
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "prosody still listening after drop"
    );
}

#[tokio::test]
async fn test_server_abstraction_on_both_kinds() {
    for kind in [ServerKind::Embedded, ServerKind::Prosody] {
        let Some(s) = TestServer::start_or_skip(kind, "localhost").await.unwrap() else {
            continue;
        };
        assert_eq!(s.kind(), kind);
        assert_eq!(s.domain(), "localhost");
        s.add_account("zed", "zedpw").await.unwrap();
        let c = RawClient::connect(s.addr(), "zed@localhost", "zedpw", Some("z"), T)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(c.jid().to_string(), "zed@localhost/z");
        assert_eq!(s.embedded().is_some(), kind == ServerKind::Embedded);
    }
}
