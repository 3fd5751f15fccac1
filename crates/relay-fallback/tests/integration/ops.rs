//! Operations: admin endpoints and graceful drain.

use std::time::{Duration, Instant};

use agentmesh_relay::client::{ClientError, ClientEvent};
use agentmesh_relay::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn metrics_and_status() {
    bounded(async {
        let relay = start_relay(Limits::default(), None, None).await;
        let _a = client(&relay, Via::Udp, 1).await;
        let _b = client(&relay, Via::Tls, 2).await;
        let admin = relay.admin_addr.unwrap();
        let m = get(admin, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("agentmesh_relay_clients_udp 1"), "{m}");
        assert!(m.contains("agentmesh_relay_clients_tls 1"), "{m}");
        assert!(m.contains("agentmesh_relay_auth_ok_total 2"), "{m}");
        let s = get(admin, "/status").await;
        let body = s.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["relay_id"], relay.relay_id.to_string());
        assert!(get(admin, "/nope").await.starts_with("HTTP/1.1 404"));
    })
    .await;
}

#[tokio::test]
async fn drain_tells_clients_and_waits_for_them() {
    bounded(async {
        let relay = start_relay(Limits::default(), None, None).await;
        let mut u = client(&relay, Via::Udp, 1).await;
        let mut t = client(&relay, Via::Tls, 2).await;
        let udp_addr = relay.udp_addr.unwrap();
        let started = Instant::now();
        let drain = tokio::spawn(relay.drain(Duration::from_secs(10)));
        let ev = u.recv_timeout(Duration::from_secs(5)).await.unwrap();
        assert!(matches!(ev, Some(ClientEvent::Restarting { .. })), "{ev:?}");
        let ev = t.recv_timeout(Duration::from_secs(5)).await.unwrap();
        assert!(matches!(ev, Some(ClientEvent::Restarting { .. })), "{ev:?}");
        // Newcomers are refused while draining.
        let r = agentmesh_relay::client::RelayClient::connect_udp(udp_addr, key(3), None).await;
        assert!(matches!(r, Err(ClientError::Refused(_))), "{r:?}");
        drop(t); // the TLS client leaves, as told
        drain.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "drain waited for nothing"
        );
    })
    .await;
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn binary_has_help() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentmesh-relay"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
}

#[tokio::test]
async fn binary_drains_on_sigterm() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (udp, tls, admin) = (free_port(), free_port(), free_port());
        let cfg = dir.path().join("relay.toml");
        std::fs::write(
            &cfg,
            format!(
                "key_file = {:?}\nstore_path = {:?}\nudp_listen = \"127.0.0.1:{udp}\"\n\
                 tls_listen = \"127.0.0.1:{tls}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
                 drain_timeout_secs = 5\n",
                dir.path().join("relay.key"),
                dir.path().join("mail.db"),
            ),
        )
        .unwrap();
        let bin = env!("CARGO_BIN_EXE_agentmesh-relay");
        let child = Child(
            std::process::Command::new(bin)
                .arg("--config")
                .arg(&cfg)
                .spawn()
                .unwrap(),
        );
        let tls_addr: std::net::SocketAddr = ([127, 0, 0, 1], tls).into();
        let mut c = None;
        for _ in 0..100 {
            if let Ok(x) =
                agentmesh_relay::client::RelayClient::connect_tls(tls_addr, key(1), None).await
            {
                c = Some(x);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut c = c.expect("relay binary did not come up");
        assert!(get(([127, 0, 0, 1], admin).into(), "/status")
            .await
            .contains("relay_id"));
        let term = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.0.id().to_string())
            .status()
            .unwrap();
        assert!(term.success());
        let ev = c.recv_timeout(Duration::from_secs(5)).await.unwrap();
        assert!(matches!(ev, Some(ClientEvent::Restarting { .. })), "{ev:?}");
        drop(c);
        let mut child = child;
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "relay did not exit after drain"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "drain did not notice the client left"
        );
    })
    .await;
}
