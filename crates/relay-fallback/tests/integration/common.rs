//! Starting relays and clients on loopback.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_proto::SecretKey;
use agentmesh_relay::client::{ClientEvent, RelayClient};
use agentmesh_relay::server::BoxStore;
use agentmesh_relay::{Config, Limits, MemStore, RelayHandle, SqliteStore, StartOptions, Tap};

pub(crate) fn key(seed: u8) -> SecretKey {
    SecretKey::from_bytes(&[seed; 32])
}

pub(crate) fn loopback_config(limits: Limits) -> Config {
    Config {
        udp_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls_listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        limits,
        ..Config::default()
    }
}

pub(crate) async fn start_relay(
    limits: Limits,
    store: Option<&Path>,
    tap: Option<Tap>,
) -> RelayHandle {
    let cfg = loopback_config(limits);
    let store: BoxStore = match store {
        Some(p) => Box::new(SqliteStore::open(p).unwrap()),
        None => Box::new(MemStore::default()),
    };
    agentmesh_relay::start(&cfg, key(250), store, StartOptions { tap })
        .await
        .unwrap()
}

/// A tap that records every byte the relay reads and writes.
pub(crate) fn capture() -> (Tap, Arc<Mutex<Vec<Vec<u8>>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let tap: Tap = Arc::new(move |_, bytes: &[u8]| l.lock().unwrap().push(bytes.to_vec()));
    (tap, log)
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Via {
    Udp,
    Tls,
}

pub(crate) async fn client(relay: &RelayHandle, via: Via, seed: u8) -> RelayClient {
    match via {
        Via::Udp => {
            RelayClient::connect_udp(relay.udp_addr.unwrap(), key(seed), Some(relay.relay_id)).await
        }
        Via::Tls => {
            RelayClient::connect_tls(relay.tls_addr.unwrap(), key(seed), Some(relay.relay_id)).await
        }
    }
    .unwrap()
}

/// The next `Recv` (skipping other events), within `d`.
pub(crate) async fn next_recv(
    c: &mut RelayClient,
    d: Duration,
) -> Option<(agentmesh_proto::NodeId, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_timeout(left).await.unwrap()? {
            ClientEvent::Recv { from, payload } => return Some((from, payload)),
            _ => continue,
        }
    }
}

/// Runs a test body with an overall time bound.
pub(crate) async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took too long");
}
