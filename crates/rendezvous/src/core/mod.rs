//! The sans-IO rendezvous core: sessions, tenants, registry, discovery, subscriptions and
//! introductions as one deterministic state machine.
//!
//! The driver owns the sockets and the clock. It calls, in any order:
//! - [`Server::connect`] when a transport session opens (with the observed address and,
//!   when TLS authenticated the client, its node id), [`Server::disconnect`] when it ends;
//! - [`Server::handle_msg`] for each decoded frame, [`Server::handle_fault`] for each
//!   frame that could not be decoded;
//! - [`Server::handle_timeout`] once [`Server::poll_timeout`] has passed;
//! - [`Server::observe_rtt`] when the transport measures a better RTT.
//!
//! Every call returns [`Output`]s: messages to send, sessions to close and records to
//! persist, in order. Nothing inside reads a clock or touches a socket; randomness comes
//! from a seeded generator.

mod intro;
mod registry;
mod session;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_proto::rendezvous::{ClientMsg, RvError, RvErrorCode, ServerMsg};
use agentmesh_proto::{AgentId, Manifest, NodeId, SecretKey};
use indexmap::IndexMap;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::index::Index;
use crate::metrics::{Gauges, Metrics};
use crate::ratelimit::{Bucket, Rate};

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

/// Maps `Instant`s to Unix milliseconds from one reference pair given by the driver.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    base: Instant,
    base_unix_ms: u64,
}

impl WallClock {
    fn unix_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.base).as_millis() as u64;
        self.base_unix_ms.saturating_add(since)
    }
}

/// A node known to a tenant.
#[derive(Debug)]
struct NodeState {
    observed: Option<SocketAddr>,
    candidates: Vec<SocketAddr>,
    home_relay: Option<String>,
    last_seen_unix_ms: u64,
    /// The live session, if online.
    conn: Option<ConnId>,
    /// Smoothed RTT of the live session.
    rtt: Duration,
    buckets: [Bucket; 3],
}

/// One tenant's state.
#[derive(Debug)]
struct Tenant {
    token: String,
    revoked: HashSet<NodeId>,
    index: Index,
    deadlines: HashMap<AgentId, Instant>,
    nodes: IndexMap<NodeId, NodeState>,
    subs: IndexMap<NodeId, Vec<String>>,
}

/// Where a session is in its handshake.
#[derive(Debug, Clone)]
enum Phase {
    Fresh,
    Challenged {
        node: NodeId,
        tenant: usize,
        nonce: [u8; 32],
        sent: Instant,
    },
    Authed {
        node: NodeId,
        tenant: usize,
    },
}

#[derive(Debug)]
struct Session {
    phase: Phase,
    observed: SocketAddr,
    tls_node: Option<NodeId>,
}

/// The rendezvous state machine. See the module docs for the calling contract.
#[derive(Debug)]
pub struct Server {
    cfg: CoreConfig,
    key: SecretKey,
    clock: WallClock,
    rng: StdRng,
    tenants: IndexMap<String, Tenant>,
    sessions: HashMap<ConnId, Session>,
    /// Agent expiry queue: (deadline, tenant index, agent).
    expiry: BTreeSet<(Instant, usize, AgentId)>,
    /// Unauthenticated sessions' deadlines.
    auth_deadlines: BTreeSet<(Instant, ConnId)>,
    metrics: Metrics,
}

impl Server {
    /// A core signing with `key`, whose clock reads `unix_ms` at `now`, drawing nonces
    /// from a generator seeded with `seed`.
    pub fn new(cfg: CoreConfig, key: SecretKey, now: Instant, unix_ms: u64, seed: u64) -> Self {
        Server {
            cfg,
            key,
            clock: WallClock {
                base: now,
                base_unix_ms: unix_ms,
            },
            rng: StdRng::seed_from_u64(seed),
            tenants: IndexMap::new(),
            sessions: HashMap::new(),
            expiry: BTreeSet::new(),
            auth_deadlines: BTreeSet::new(),
            metrics: Metrics::default(),
        }
    }

    /// Adds or updates a tenant (token and revocations).
    pub fn add_tenant(&mut self, t: TenantConfig) {
        let revoked: HashSet<NodeId> = t.revoked.into_iter().collect();
        if let Some(existing) = self.tenants.get_mut(&t.name) {
            existing.token = t.join_token;
            existing.revoked = revoked;
            return;
        }
        self.tenants.insert(
            t.name,
            Tenant {
                token: t.join_token,
                revoked,
                index: Index::default(),
                deadlines: HashMap::new(),
                nodes: IndexMap::new(),
                subs: IndexMap::new(),
            },
        );
    }

    /// The rendezvous's node id (daemons pin it).
    pub fn id(&self) -> NodeId {
        self.key.node_id()
    }

    /// Counters so far.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Current sizes.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            sessions: self.sessions.len(),
            nodes_online: self
                .tenants
                .values()
                .map(|t| t.nodes.values().filter(|n| n.conn.is_some()).count())
                .sum(),
            agents: self.tenants.values().map(|t| t.index.len()).sum(),
            tenants: self.tenants.len(),
        }
    }

    /// Unix milliseconds at `now` on the core's clock.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        self.clock.unix_ms(now)
    }

    /// A transport session opened.
    pub fn connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        observed: SocketAddr,
        tls_node: Option<NodeId>,
    ) {
        self.sessions.insert(
            conn,
            Session {
                phase: Phase::Fresh,
                observed,
                tls_node,
            },
        );
        self.auth_deadlines
            .insert((now + self.cfg.auth_timeout, conn));
    }

    /// A transport session ended. Its node goes offline; its agents stay until their
    /// heartbeats run out.
    pub fn disconnect(&mut self, now: Instant, conn: ConnId) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(s) = self.sessions.remove(&conn) else {
            return out;
        };
        self.auth_deadlines.retain(|(_, c)| *c != conn);
        if let Phase::Authed { node, tenant } = s.phase {
            self.node_offline(now, tenant, node, conn, &mut out);
        }
        out
    }

    /// A better RTT estimate for the session (e.g. from QUIC).
    pub fn observe_rtt(&mut self, conn: ConnId, rtt: Duration) {
        let Some(Phase::Authed { node, tenant }) = self.sessions.get(&conn).map(|s| &s.phase)
        else {
            return;
        };
        let (node, tenant) = (*node, *tenant);
        if let Some(n) = self
            .tenants
            .get_index_mut(tenant)
            .and_then(|(_, t)| t.nodes.get_mut(&node))
        {
            n.rtt = rtt;
        }
    }

    /// Handles one decoded frame from `conn`.
    pub fn handle_msg(&mut self, now: Instant, conn: ConnId, msg: ClientMsg) -> Vec<Output> {
        self.metrics.frames += 1;
        let mut out = Vec::new();
        let Some(phase) = self.sessions.get(&conn).map(|s| s.phase.clone()) else {
            return out;
        };
        match (phase, msg) {
            (
                Phase::Fresh,
                ClientMsg::Hello {
                    version,
                    node,
                    tenant,
                },
            ) => self.on_hello(now, conn, version, node, &tenant, &mut out),
            (
                Phase::Challenged {
                    node,
                    tenant,
                    nonce,
                    sent,
                },
                ClientMsg::Auth {
                    nonce: answered,
                    join_token,
                    signature,
                    candidates,
                    home_relay,
                },
            ) => {
                let pending = session::Pending {
                    node,
                    tenant,
                    nonce,
                    sent,
                };
                let answer = session::Answer {
                    nonce: answered,
                    join_token,
                    signature,
                    candidates,
                    home_relay,
                };
                self.on_auth(now, conn, pending, answer, &mut out)
            }
            (Phase::Authed { node, tenant }, msg) => {
                self.on_request(now, conn, node, tenant, msg, &mut out)
            }
            (_, msg) => {
                let err = RvError::new(RvErrorCode::NotAuthenticated, "authenticate first");
                self.reject(conn, request_id(&msg), err, &mut out);
            }
        }
        out
    }

    /// Handles a frame that could not be decoded.
    pub fn handle_fault(&mut self, _now: Instant, conn: ConnId, fault: FrameFault) -> Vec<Output> {
        self.metrics.frames += 1;
        let mut out = Vec::new();
        let (code, close) = match fault {
            FrameFault::Malformed => (RvErrorCode::MalformedFrame, false),
            FrameFault::TooLarge { skipped, .. } => (RvErrorCode::FrameTooLarge, !skipped),
            FrameFault::Corrupt => (RvErrorCode::MalformedFrame, true),
        };
        let message = match fault {
            FrameFault::TooLarge { len, .. } => format!("frame of {len} bytes is too large"),
            _ => "frame does not decode".to_string(),
        };
        self.reject(conn, None, RvError::new(code, message), &mut out);
        if close {
            out.push(Output::Close {
                conn,
                reason: CloseReason::Unframeable,
            });
        }
        out
    }

    /// The next moment [`Server::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let a = self.expiry.first().map(|(t, _, _)| *t);
        let b = self.auth_deadlines.first().map(|(t, _)| *t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires agents and unauthenticated sessions whose time has come.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(&(t, conn)) = self.auth_deadlines.first() {
            if t > now {
                break;
            }
            self.auth_deadlines.pop_first();
            out.push(Output::Close {
                conn,
                reason: CloseReason::AuthTimeout,
            });
        }
        self.expire_agents(now, &mut out);
        out
    }

    /// Sends an error for request `req` on `conn` and counts it.
    fn reject(&mut self, conn: ConnId, req: Option<u64>, error: RvError, out: &mut Vec<Output>) {
        self.metrics.reject(error.code);
        out.push(Output::Send {
            conn,
            msg: ServerMsg::Error { req, error },
        });
    }
}

/// The request number of a message, if it has one.
fn request_id(msg: &ClientMsg) -> Option<u64> {
    match msg {
        ClientMsg::Hello { .. } | ClientMsg::Auth { .. } => None,
        ClientMsg::Register { req, .. }
        | ClientMsg::Unregister { req, .. }
        | ClientMsg::Heartbeat { req, .. }
        | ClientMsg::UpdateCandidates { req, .. }
        | ClientMsg::Discover { req, .. }
        | ClientMsg::Subscribe { req, .. }
        | ClientMsg::Introduce { req, .. }
        | ClientMsg::Ping { req } => Some(*req),
    }
}

#[cfg(test)]
mod tests;
