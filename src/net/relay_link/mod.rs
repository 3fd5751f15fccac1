//! The daemon's relay link: carries the QUIC packets of relayed peers through the blind
//! relay (`agentmesh_relay`), under the [`MeshSocket`](super::mesh_socket::MeshSocket).
//!
//! - [`RelayLinkState`] (`state.rs`): the sans-IO protocol state. It says hello over UDP
//!   (on the daemon's one socket, so the relay sees the same NAT mapping as everything
//!   else), pings every [`RelayLinkConfig::ping_interval`], falls back to TCP/TLS when UDP
//!   gets no `Welcome` within [`RelayLinkConfig::tls_after`] or stops answering pings,
//!   retries UDP every [`RelayLinkConfig::udp_retry`] while on TLS, reconnects with a
//!   bounded exponential backoff after `Restarting`, a refusal or a lost connection, and
//!   queues (bounded, oldest dropped) packets handed to it while not connected.
//! - [`RelayLinkSender`] + [`RelayLinkDriver`] (`driver.rs`, `tls.rs`): the thin tokio
//!   driver. Created together by [`relay_link`] *before* the `MeshSocket` (which needs the
//!   sender), then started with [`RelayLinkDriver::spawn`] once the socket's
//!   [`MeshHandle`](super::mesh_socket::MeshHandle) exists:
//!
//! ```text
//! let (sender, driver) = relay_link(config, node_key);
//! let (socket, mesh, diverted) = MeshSocket::new(udp, routes, Arc::new(sender));
//! // the network driver forwards diverted Kind::Relay datagrams as (src, bytes):
//! let (relay_tx, relay_rx) = mpsc::channel(1024);
//! let link = driver.spawn(mesh, relay_rx);
//! link.status(); // RelayLinkStatus { connected, transport, sent, received, dropped, .. }
//! ```
//!
//! Store-and-forward: [`RelayStorer::store`] leaves a sealed message at the relay (sent
//! again until the relay acknowledges it, see `state/stores.rs`); mail the relay delivers
//! is acked and handed out by [`RelayLinkHandle::take_mail`].

mod driver;
mod events;
mod state;
#[cfg(test)]
mod tests;
mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use agentmesh_proto::NodeId;

pub use driver::{
    relay_link, Mail, RelayLinkDriver, RelayLinkHandle, RelayLinkPoke, RelayLinkSender, RelayStorer,
};
pub use events::{DisconnectReason, LinkCounters, LinkEvent, LinkTransmit, TlsConnId};
pub use state::{RelayLinkState, STORE_ATTEMPTS, STORE_RETRY};

use super::peer_path::Tier;

/// Which transport carries the link to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayTransport {
    /// Datagrams on the daemon's UDP socket.
    Udp,
    /// A TCP connection with TLS (for networks that block UDP).
    Tls,
}

impl RelayTransport {
    /// The path tier a peer relayed over this transport is on.
    pub fn tier(self) -> Tier {
        match self {
            RelayTransport::Udp => Tier::RelayUdp,
            RelayTransport::Tls => Tier::RelayTcp,
        }
    }
}

/// How the link reaches the relay, and its timing.
#[derive(Debug, Clone)]
pub struct RelayLinkConfig {
    /// The relay's node id: its challenge (UDP and TLS) and its TLS certificate must match.
    pub relay_node: NodeId,
    /// The relay's UDP address.
    pub udp_addr: SocketAddr,
    /// The relay's TCP/TLS address; `None` = UDP only (no fallback).
    pub tls_addr: Option<SocketAddr>,
    /// Without a `Welcome` over UDP this long after the first hello, switch to TLS
    /// (default 2 s).
    pub tls_after: Duration,
    /// UDP hellos are repeated this often until the relay's challenge arrives
    /// (default 500 ms).
    pub hello_retry: Duration,
    /// A TLS connection that is not authenticated this long after it was asked for is
    /// given up (default 10 s).
    pub tls_timeout: Duration,
    /// Ping interval on an established link (default
    /// [`agentmesh_relay::client::PING_INTERVAL`], 15 s: below common NAT timeouts and the
    /// relay's 60 s idle timeout).
    pub ping_interval: Duration,
    /// A ping unanswered this long is a miss; the next ping follows at once (default 5 s).
    pub pong_timeout: Duration,
    /// Consecutive misses after which the link is declared dead (default 2).
    pub ping_misses: u32,
    /// While on TLS, try UDP again this often (default 60 s).
    pub udp_retry: Duration,
    /// First reconnect delay; doubles on each failure (default 500 ms).
    pub backoff_min: Duration,
    /// Largest reconnect delay (default 30 s).
    pub backoff_max: Duration,
    /// Packets kept while not connected; beyond it the oldest is dropped (default 256).
    pub queue: usize,
}

impl RelayLinkConfig {
    /// The defaults above for the relay `relay_node` at `udp_addr` / `tls_addr`.
    pub fn new(relay_node: NodeId, udp_addr: SocketAddr, tls_addr: Option<SocketAddr>) -> Self {
        RelayLinkConfig {
            relay_node,
            udp_addr,
            tls_addr,
            tls_after: Duration::from_secs(2),
            hello_retry: Duration::from_millis(500),
            tls_timeout: Duration::from_secs(10),
            ping_interval: agentmesh_relay::client::PING_INTERVAL,
            pong_timeout: Duration::from_secs(5),
            ping_misses: 2,
            udp_retry: Duration::from_secs(60),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            queue: 256,
        }
    }
}

/// What the link is doing, for status output and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLinkStatus {
    /// Authenticated with the relay right now.
    pub connected: bool,
    /// The transport in use when connected.
    pub transport: Option<RelayTransport>,
    /// The relay's address on that transport (its UDP address when not connected).
    pub relay: SocketAddr,
    /// Packets handed to the relay.
    pub sent: u64,
    /// Packets received through the relay.
    pub received: u64,
    /// Packets dropped (full queues, oversize, link not connected for too long).
    pub dropped: u64,
    /// `PeerGone` answers (the destination was not connected to the relay).
    pub peer_gone: u64,
    /// Times the link became connected (first connect included).
    pub connects: u64,
}
