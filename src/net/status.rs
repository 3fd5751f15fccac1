//! The network's part of `status`, as JSON: node addresses and NAT class, the relay
//! link, the rendezvous session, socket counters, and per peer the path, tier, RTT and
//! bytes (merging the path finder's view with the QUIC sessions').

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::mesh_socket::MeshHandle;
use super::paths::Paths;
use super::peers::Sessions;
use super::reflexive::SelfView;
use super::relay_link::{RelayLinkStatus, RelayTransport};
use super::rendezvous_link::RendezvousLink;

/// Everything the status is read from.
#[derive(Clone)]
pub struct Sources {
    /// Own addresses.
    pub view: Arc<Mutex<SelfView>>,
    /// Path finder.
    pub paths: Arc<Paths>,
    /// QUIC sessions.
    pub sessions: Arc<Sessions>,
    /// Relay link status, when there is a relay.
    pub relay: Option<watch::Receiver<RelayLinkStatus>>,
    /// Rendezvous session, when there is a rendezvous.
    pub rendezvous: Option<Arc<RendezvousLink>>,
    /// Socket counters.
    pub mesh: MeshHandle,
}

impl Sources {
    /// The status object.
    pub fn build(&self) -> Value {
        let view = self.view.lock().map(|v| v.clone()).unwrap_or_default();
        let stats = self.mesh.stats();
        json!({
            "nat": view.nat,
            "local_addr": view.local.map(|a| a.to_string()),
            "public_addrs": view.mappings.iter().map(|m| m.1.to_string()).collect::<Vec<_>>(),
            "upnp": view.upnp.map(|a| a.to_string()),
            "candidates": view.candidates.iter().map(|c| c.0.to_string()).collect::<Vec<_>>(),
            "relay": self.relay.as_ref().map(|r| relay_json(&r.borrow())),
            "rendezvous": self.rendezvous.as_ref().map(|r| json!({
                "connected": r.connected(),
                "observed": r.observed().map(|a| a.to_string()),
            })),
            "socket": {
                "direct_packets_sent": stats.direct_sent.load(Ordering::Relaxed),
                "relay_packets_sent": stats.relay_sent.load(Ordering::Relaxed),
                "relay_packets_received": stats.relay_received.load(Ordering::Relaxed),
                "door_packets_sent": stats.door_sent.load(Ordering::Relaxed),
                "door_packets_received": stats.door_received.load(Ordering::Relaxed),
                "doors_open": self.mesh.doors_open(),
                "dropped": stats.dropped.load(Ordering::Relaxed),
            },
            "peers": self.peers(),
        })
    }

    fn peers(&self) -> Vec<Value> {
        let mut peers: BTreeMap<String, Value> = BTreeMap::new();
        for p in self.paths.info() {
            let (path, addr) = p.path.describe();
            peers.insert(
                p.node.to_string(),
                json!({
                    "node": p.node,
                    "path": path,
                    "tier": p.tier.name(),
                    "addr": addr,
                    "probe_rtt_ms": p.rtt.map(|d| d.as_secs_f64() * 1e3),
                    "punch_attempts": p.punch_attempts,
                    "punch_successes": p.punch_successes,
                    "session": false,
                }),
            );
        }
        for s in self.sessions.info() {
            let entry = peers
                .entry(s.node.to_string())
                .or_insert_with(|| json!({"node": s.node, "path": "relay", "tier": "relay-udp"}));
            if let Value::Object(o) = entry {
                o.insert("session".into(), json!(true));
                o.insert("rtt_ms".into(), json!(s.rtt.as_secs_f64() * 1e3));
                o.insert("bytes_sent".into(), json!(s.bytes_sent));
                o.insert("bytes_received".into(), json!(s.bytes_received));
            }
        }
        peers.into_values().collect()
    }
}

fn relay_json(s: &RelayLinkStatus) -> Value {
    json!({
        "connected": s.connected,
        "transport": s.transport.map(|t| match t {
            RelayTransport::Udp => "udp",
            RelayTransport::Tls => "tls",
        }),
        "addr": s.relay.to_string(),
        "packets_sent": s.sent,
        "packets_received": s.received,
        "dropped": s.dropped,
    })
}
