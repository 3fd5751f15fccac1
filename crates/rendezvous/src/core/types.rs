//! The core's public data types: configuration, session ids, outputs and the records it
//! asks the driver to persist.

use std::net::SocketAddr;
use std::time::Duration;

use agentmesh_proto::rendezvous::{RvErrorCode, ServerMsg};
use agentmesh_proto::{AgentId, Manifest, NodeId};

use crate::ratelimit::Rate;

/// Identifies one transport session; chosen by the driver, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Per-node rate limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// `Register` requests.
    pub register: Rate,
    /// `Discover` requests.
    pub discover: Rate,
    /// `Introduce` requests.
    pub introduce: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            register: Rate::new(10.0, 50.0),
            discover: Rate::new(50.0, 100.0),
            introduce: Rate::new(10.0, 30.0),
        }
    }
}

/// Timing and limits of the core.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreConfig {
    /// Heartbeat interval announced to daemons.
    pub heartbeat: Duration,
    /// An agent without a heartbeat for this long is dropped.
    pub agent_ttl: Duration,
    /// A session that has not authenticated within this time is closed.
    pub auth_timeout: Duration,
    /// Slack added to the slower side's RTT before an introduction's start time.
    pub intro_margin: Duration,
    /// How long an introduction stays valid after its start time.
    pub intro_validity: Duration,
    /// Per-node rate limits.
    pub limits: Limits,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            heartbeat: Duration::from_secs(30),
            agent_ttl: Duration::from_secs(45),
            auth_timeout: Duration::from_secs(10),
            intro_margin: Duration::from_millis(100),
            intro_validity: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }
}

/// A tenant (mesh) the core accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// Tenant name, as sent in `Hello`.
    pub name: String,
    /// The token nodes must present to join.
    pub join_token: String,
    /// Nodes refused in this tenant.
    pub revoked: Vec<NodeId>,
}

/// Why the core wants a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Authentication failed (the error was sent first).
    AuthFailed(RvErrorCode),
    /// No authentication within the timeout.
    AuthTimeout,
    /// The same node authenticated on a newer session.
    Superseded,
    /// The stream can no longer be framed.
    Unframeable,
}

/// A frame that could not be turned into a [`ClientMsg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFault {
    /// The frame is well delimited but its body does not decode; the stream goes on.
    Malformed,
    /// The frame is larger than allowed; `skipped` says whether the driver could skip it.
    TooLarge {
        /// Announced length.
        len: usize,
        /// Whether the stream could continue after it.
        skipped: bool,
    },
    /// Framing is lost (bad version, zero length): the session must close.
    Corrupt,
}

/// A node's record, as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// Tenant.
    pub tenant: String,
    /// The node.
    pub node: NodeId,
    /// Last observed reflexive address.
    pub observed: Option<SocketAddr>,
    /// Reported candidates.
    pub candidates: Vec<SocketAddr>,
    /// Home relay.
    pub home_relay: Option<String>,
    /// Last seen, Unix milliseconds.
    pub last_seen_unix_ms: u64,
}

/// An agent's record, as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    /// Tenant.
    pub tenant: String,
    /// Hosting node.
    pub node: NodeId,
    /// The verified manifest (with current availability).
    pub manifest: Manifest,
    /// Last heartbeat, Unix milliseconds.
    pub last_seen_unix_ms: u64,
}

/// A change for the store.
// Outputs are consumed at once; boxing would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Insert or replace a node.
    Node(NodeRow),
    /// Insert or replace an agent.
    Agent(AgentRow),
    /// Delete an agent.
    DeleteAgent {
        /// Tenant.
        tenant: String,
        /// The agent.
        agent: AgentId,
    },
}

/// What the driver must do.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `msg` on session `conn`.
    Send {
        /// Session.
        conn: ConnId,
        /// Message.
        msg: ServerMsg,
    },
    /// Close session `conn` (after sending what was queued).
    Close {
        /// Session.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// Persist a change.
    Persist(StoreOp),
}
