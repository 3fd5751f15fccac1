//! The STUN responder, checked with independent clients: the `stunclient` crate
//! (RFC 5389) and Debian's `stun` program (RFC 3489, no magic cookie), on the QUIC port
//! while a QUIC session is live on it, and on the second address.

use std::process::Command;
use std::time::Duration;

use stunclient::StunClient;

use crate::harness::*;

async fn mapped(server: std::net::SocketAddr) -> (std::net::SocketAddr, std::net::SocketAddr) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = sock.local_addr().unwrap();
    let mut c = StunClient::new(server);
    c.set_timeout(Duration::from_secs(3));
    (c.query_external_address_async(&sock).await.unwrap(), local)
}

#[tokio::test]
async fn rfc5389_clients_get_their_address_on_both_observers() {
    let dir = tempfile::tempdir().unwrap();
    let rv = start(dir.path(), "").await;
    let (_ep, a) = daemon(&rv, 1, "acme").await;
    let (got, local) = mapped(rv.udp_addr).await;
    assert_eq!(got, local);
    let (got, local) = mapped(rv.stun_alt_addr.unwrap()).await;
    assert_eq!(got, local);
    a.ping()
        .await
        .expect("QUIC on the shared socket still works");
    assert!(rv.metrics_text().contains("rv_stun_answered_total 2"));
    rv.shutdown().await;
}

#[tokio::test]
async fn debian_stun_client_rfc3489() {
    if Command::new("stun").arg("--help").output().is_err() {
        eprintln!("SKIPPED: Debian `stun` client not installed (apt-get install stun-client)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rv = start(dir.path(), "").await;
    let (_ep, a) = daemon(&rv, 1, "acme").await;
    let addr = rv.udp_addr;
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["10", "stun", &addr.to_string(), "1", "-v"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("MappedAddress = 127.0.0.1:"),
        "stun output:\n{text}"
    );
    a.ping().await.unwrap();
    rv.shutdown().await;
}
