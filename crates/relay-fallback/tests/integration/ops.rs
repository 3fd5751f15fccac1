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
