//! Starting a service on loopback with short timers, and connecting test daemons.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agentmesh_proto::manifest::Skill;
use agentmesh_proto::{Manifest, SecretKey};
use agentmesh_rendezvous::client::{Client, Join, Target};
use agentmesh_rendezvous::config::Config;
use agentmesh_rendezvous::server::{self, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Heartbeat and TTL used by the tests (ms).
pub(crate) const HEARTBEAT_MS: u64 = 200;
pub(crate) const TTL_MS: u64 = 600;

/// Configuration text for a service keeping its files in `dir`.
pub(crate) fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
tcp_listen = "127.0.0.1:0"
stun_alt = "127.0.0.1:0"
admin = "127.0.0.1:0"
key_file = "{dir}/rv.key"
database = "{dir}/rv.sqlite"
heartbeat_ms = {HEARTBEAT_MS}
agent_ttl_ms = {TTL_MS}
{extra}
[[tenant]]
name = "acme"
join_token = "acme-token"

[[tenant]]
name = "other"
join_token = "other-token"
"#,
        dir = dir.display()
    )
}

/// Starts a service in `dir` (its key persists there too).
pub(crate) async fn start(dir: &Path, extra: &str) -> Running {
    let cfg = Config::parse(&config_text(dir, extra)).unwrap();
    let key = agentmesh_proto::keyfile::load_or_create(&cfg.key_file).unwrap();
    server::start(cfg, key).await.unwrap()
}

pub(crate) fn quic_target(rv: &Running) -> Target {
    Target {
        addr: rv.udp_addr,
        server: rv.id,
    }
}

pub(crate) fn tcp_target(rv: &Running) -> Target {
    Target {
        addr: rv.tcp_addr.unwrap(),
        server: rv.id,
    }
}

pub(crate) fn join(tenant: &str) -> Join {
    Join {
        tenant: tenant.into(),
        token: format!("{tenant}-token"),
        candidates: vec!["192.168.7.2:4100".parse().unwrap()],
        home_relay: Some("relay.test:443".into()),
    }
}

pub(crate) fn endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

pub(crate) fn key(seed: u8) -> SecretKey {
    SecretKey::from_bytes(&[seed; 32])
}

/// A daemon connected over QUIC from its own endpoint.
pub(crate) async fn daemon(rv: &Running, seed: u8, tenant: &str) -> (quinn::Endpoint, Client) {
    let ep = endpoint();
    let c = Client::connect_quic(&ep, &quic_target(rv), &key(seed), &join(tenant))
        .await
        .unwrap();
    (ep, c)
}

/// A signed manifest for agent `seed`.
pub(crate) fn manifest(seed: u8, caps: &[&str]) -> Manifest {
    let k = SecretKey::from_bytes(&[seed.wrapping_add(128); 32]);
    let mut m = Manifest::new(k.agent_id(), format!("agent-{seed}"));
    m.capabilities = caps.iter().map(|c| c.to_string()).collect();
    m.skills = vec![Skill {
        id: "work".into(),
        tags: vec!["t".into()],
        ..Skill::default()
    }];
    m.sign(&k, "2026-11-21T00:00:00Z");
    m
}

/// GET `path` from the admin port; returns the body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

/// Polls `f` every 50 ms until it is true, for at most `max`.
pub(crate) async fn eventually<F, Fut>(max: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + max;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
