//! What the relay link's state machine outputs: transmits (UDP datagrams, TLS connection
//! requests and frames), events for the daemon, the reasons a link ended, and counters.

use std::net::SocketAddr;
use std::time::Duration;

use agentmesh_proto::relay::RefuseReason;
use agentmesh_proto::NodeId;

use super::RelayTransport;

/// Identifies one TLS connection attempt, so that frames and closes of an old connection
/// never touch a newer one.
pub type TlsConnId = u64;

/// Something to send or do on a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkTransmit {
    /// A datagram for the relay, on the daemon's UDP socket.
    Udp {
        /// The relay's UDP address.
        dst: SocketAddr,
        /// The datagram (relay magic + one frame).
        bytes: Vec<u8>,
    },
    /// Open a TCP/TLS connection to the relay (pinning `relay`, ALPN relay), then report
    /// it with `handle_tls_open` or `handle_tls_closed`.
    OpenTls {
        /// Its id.
        conn: TlsConnId,
        /// The relay's TLS address.
        addr: SocketAddr,
        /// The relay's node id, to pin.
        relay: NodeId,
    },
    /// Bytes (one frame) to write on connection `conn`.
    Tls {
        /// The connection.
        conn: TlsConnId,
        /// One frame.
        bytes: Vec<u8>,
    },
    /// Close connection `conn` (no longer used).
    CloseTls {
        /// The connection.
        conn: TlsConnId,
    },
}

/// Why an established link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Pings went unanswered.
    Silent,
    /// The TLS connection closed.
    Closed,
    /// The relay is restarting.
    Restarting {
        /// The delay it suggested.
        after: Duration,
    },
    /// The relay refused or ended the session.
    Refused(RefuseReason),
}

/// Something the daemon must know or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Authenticated with the relay on `transport` (also sent when moving between them).
    Connected {
        /// The transport now in use.
        transport: RelayTransport,
    },
    /// A QUIC packet from a peer, for `MeshHandle::deliver_relayed`.
    Received {
        /// The authenticated sender.
        from: NodeId,
        /// The packet.
        packet: Vec<u8>,
    },
    /// The established link on `transport` ended; the link reconnects by itself.
    Disconnected {
        /// The transport that was in use.
        transport: RelayTransport,
        /// Why.
        reason: DisconnectReason,
    },
    /// A packet's destination is not connected to the relay.
    PeerGone(NodeId),
    /// A stored (sealed) message for us; already acknowledged to the relay.
    Mail {
        /// Who stored it.
        from: NodeId,
        /// The sealed bytes.
        sealed: Vec<u8>,
    },
    /// The end of store `id` (from `RelayLinkState::store`): the relay's answer, or
    /// `None` when it never answered.
    Stored {
        /// The store's id.
        id: u64,
        /// What the relay said.
        outcome: Option<agentmesh_proto::relay::StoreOutcome>,
    },
}

/// Traffic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Packets handed to the relay.
    pub sent: u64,
    /// Packets received through the relay.
    pub received: u64,
    /// Packets dropped (queue full while disconnected, or not encodable).
    pub dropped: u64,
    /// `PeerGone` answers.
    pub peer_gone: u64,
    /// Times the link became connected.
    pub connects: u64,
    /// Datagrams or frames from the relay that did not decode or were not acceptable.
    pub malformed: u64,
}
