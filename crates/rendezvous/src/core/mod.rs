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
mod types;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_proto::rendezvous::{ClientMsg, NatMapping, RvError, RvErrorCode, ServerMsg};
use agentmesh_proto::{AgentId, NodeId, SecretKey};
use indexmap::IndexMap;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::index::Index;
use crate::metrics::{Gauges, Metrics};
use crate::ratelimit::Bucket;

pub use types::{
    AgentRow, CloseReason, ConnId, CoreConfig, FrameFault, Limits, NodeRow, Output, StoreOp,
    TenantConfig,
};

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
    /// How its NAT maps, once the live session said so (`UpdateMapping`); `None`: the
    /// session never did (an older daemon: plain `Introduction`s only).
    mapping: Option<NatMapping>,
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
        | ClientMsg::UpdateMapping { req, .. }
        | ClientMsg::Ping { req } => Some(*req),
    }
}

#[cfg(test)]
mod tests;
