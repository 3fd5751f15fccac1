//! The daemon's routing core: agents, tasks and subscriptions, as a state machine.
//!
//! Sans-IO: the local API driver feeds it parsed operations, closed connections and
//! timer expiries, each with the current time ([`Now`]); it returns [`Output`]s (JSON
//! messages addressed to connections) and tells when it next wants
//! [`Router::handle_timeout`] ([`Router::poll_timeout`]). It never touches a socket
//! or a clock, so tests drive it directly.
//!
//! With [`RouterConfig::mesh`] it also routes across hosts, still without IO: it emits
//! [`Output::Peer`] messages for other daemons' routers, [`Output::Lookup`] questions
//! and [`Output::Announce`] news for the rendezvous, and the network driver feeds back
//! [`Router::handle_peer`], [`Router::lookup_done`], [`Router::peer_unreachable`],
//! [`Router::set_remote_subscriptions`], [`Router::set_net_source`] and
//! [`Router::path_changed`].

mod agents;
mod directory;
mod envelopes;
mod events;
mod keys;
mod lookups;
mod mail;
mod mesh;
mod peer_in;
mod ping;
mod registry_ops;
mod remote;
mod subscriptions;
mod task_end;
mod task_ops;
mod tasks;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use agentmesh_proto::{AgentId, ErrorObject, NodeId};
use indexmap::IndexSet;
use serde_json::{json, Value};

pub use agents::{AgentTable, LocalAgent};
pub use keys::{FileKeyStore, KeyStore, KeyStoreError, MemoryKeyStore};
pub use mesh::NetSource;
pub use ping::PingJob;
pub use remote::{Announce, Lookup, PeerMsg};
pub use subscriptions::{Subscription, Subscriptions};
pub use tasks::{Endpoint, Task, TaskTable};

use crate::api::ops::Op;

/// Identifies one local-API connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// The current time, as the driver reads it: monotonic for deadlines, wall-clock for
/// timestamps and UUID v7 ids.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Wall-clock time.
    pub wall: SystemTime,
}

impl Now {
    /// Reads both clocks (drivers only; the router never calls this).
    pub fn read() -> Self {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Something the driver must do.
// `Lookup` (a whole `DiscoverQuery`) is the largest variant; boxing it would change the
// network driver's matching for ~30 bytes per output, and lookups are rare next to sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write one JSON line to a connection.
    Send {
        /// Destination.
        conn: ConnId,
        /// The message.
        msg: Value,
    },
    /// Deliver a message to the router of another daemon.
    Peer {
        /// The daemon.
        node: NodeId,
        /// The message.
        msg: Box<PeerMsg>,
    },
    /// Ask the rendezvous; answer with `Router::lookup_done`.
    Lookup(Box<Lookup>),
    /// Tell the rendezvous.
    Announce(Announce),
    /// Measure round trips to a daemon; answer with `Router::ping_done`.
    Ping(Box<PingJob>),
    /// Seal `frame` to daemon `node`'s key and leave it at the relay (store-and-forward);
    /// answer with `Router::store_done(task_id, …)`.
    Store {
        /// The daemon it is for.
        node: NodeId,
        /// The task it belongs to.
        task_id: String,
        /// What to seal.
        frame: Box<agentmesh_proto::peer::StoredFrame>,
    },
}

/// Tunables of the router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Timeout of a request that gives none.
    pub default_timeout: Duration,
    /// Longest timeout a request may ask for.
    pub max_timeout: Duration,
    /// Unfinished requests one connection may have (beyond: `RATE_LIMITED`).
    pub max_pending_per_conn: usize,
    /// Agents one connection may register.
    pub max_agents_per_conn: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions_per_conn: usize,
    /// Route across hosts (peers and the rendezvous); `false` keeps every agent,
    /// task and event on this host.
    pub mesh: bool,
    /// How long a rendezvous lookup may take before the waiting operation fails with
    /// `DEPENDENCY_FAILED`.
    pub lookup_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            default_timeout: Duration::from_secs(300),
            max_timeout: Duration::from_secs(24 * 3600),
            max_pending_per_conn: 10_000,
            max_agents_per_conn: 256,
            max_subscriptions_per_conn: 1024,
            mesh: false,
            lookup_timeout: Duration::from_secs(10),
        }
    }
}

/// What one connection owns.
#[derive(Debug, Default)]
struct ConnState {
    agents: IndexSet<AgentId>,
    subscriptions: IndexSet<String>,
    pending_requests: usize,
    /// Asked `status` with `watch`: receives `path` events.
    watch_paths: bool,
}

/// The routing core.
#[derive(Debug)]
pub struct Router {
    node_id: NodeId,
    config: RouterConfig,
    keys: Box<dyn KeyStore>,
    agents: AgentTable,
    tasks: TaskTable,
    subs: Subscriptions,
    conns: HashMap<ConnId, ConnState>,
    mesh: mesh::MeshState,
    /// Requests received (local and from peers), for metrics.
    requests_total: u64,
    out: Vec<Output>,
}

/// The router's counts, for the metrics page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouterStats {
    /// Local agents registered.
    pub agents: u64,
    /// Tasks not yet finished.
    pub tasks_in_flight: u64,
    /// Requests received from local agents and from peers.
    pub requests_total: u64,
    /// Local API connections.
    pub connections: u64,
    /// Subscriptions.
    pub subscriptions: u64,
    /// Remote agents learned from lookups.
    pub remote_agents_known: u64,
}

impl Router {
    /// A router for the daemon `node_id`, taking agent keys from `keys`.
    pub fn new(node_id: NodeId, config: RouterConfig, keys: Box<dyn KeyStore>) -> Self {
        Router {
            node_id,
            config,
            keys,
            agents: AgentTable::default(),
            tasks: TaskTable::default(),
            subs: Subscriptions::default(),
            conns: HashMap::new(),
            mesh: mesh::MeshState::default(),
            requests_total: 0,
            out: Vec::new(),
        }
    }

    /// The daemon's node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The router's counts now.
    pub fn stats(&self) -> RouterStats {
        let n = |v: usize| v as u64;
        RouterStats {
            agents: n(self.agents.len()),
            tasks_in_flight: n(self.tasks.live_count()),
            requests_total: self.requests_total,
            connections: n(self.conns.len()),
            subscriptions: n(self.subs.len()),
            remote_agents_known: n(self.mesh.directory.len()),
        }
    }

    /// Handles one parsed operation from connection `conn`.
    pub fn handle_op(&mut self, now: Now, conn: ConnId, id: Value, op: Op) -> Vec<Output> {
        self.conns.entry(conn).or_default();
        let result = match op {
            Op::Hello {} => Ok(self.hello()),
            Op::Register { manifest, key_name } => {
                self.register(now, conn, manifest, key_name.as_deref())
            }
            Op::Deregister { agent_id } => self.deregister(now, conn, agent_id),
            Op::Discover { query } => self.discover(now, conn, &id, query),
            Op::Request(args) => {
                self.requests_total += 1;
                self.request(now, conn, id.clone(), args)
            }
            Op::Respond(args) => self.respond(now, conn, args),
            Op::Stream {
                task_id,
                chunk,
                is_final,
            } => self.stream(now, conn, &task_id, chunk, is_final),
            Op::Continue { task_id, input } => self.continue_task(now, conn, &task_id, input),
            Op::Cancel { task_id } => self.cancel(now, conn, &task_id),
            Op::Emit { from, topic, data } => self.emit(now, conn, from, &topic, data),
            Op::Subscribe { agent_id, pattern } => self.subscribe(conn, agent_id, &pattern),
            Op::Unsubscribe { subscription_id } => self.unsubscribe(conn, &subscription_id),
            Op::Status { watch } => Ok(self.status(conn, watch)),
            Op::Ping {
                target,
                count,
                interval_ms,
            } => self.ping(now, conn, id.clone(), &target, count, interval_ms),
        };
        match result {
            Ok(Some(ok)) => self.reply_ok(conn, id, ok),
            Ok(None) => {} // the reply comes later (request)
            Err(e) => self.reply_err(conn, id, e),
        }
        std::mem::take(&mut self.out)
    }

    /// Replies to a line that did not parse.
    pub fn handle_bad_line(&mut self, conn: ConnId, id: Value, error: ErrorObject) -> Vec<Output> {
        self.reply_err(conn, id, error);
        std::mem::take(&mut self.out)
    }

    /// A connection closed: its agents go offline, their unfinished tasks fail with
    /// `AGENT_UNAVAILABLE`, its own requests are canceled, its subscriptions end.
    pub fn connection_closed(&mut self, now: Now, conn: ConnId) -> Vec<Output> {
        if let Some(state) = self.conns.remove(&conn) {
            for agent in state.agents {
                self.remove_agent(now, agent, "its connection closed");
            }
            for sub in state.subscriptions {
                self.subs.remove(&sub);
            }
            self.sync_patterns();
        }
        self.mesh.lookups.drop_conn(conn);
        self.cancel_requests_of(now, conn);
        std::mem::take(&mut self.out)
    }

    /// When [`Router::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (
            self.tasks.next_deadline(),
            self.mesh.lookups.next_deadline(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires requests whose deadline has passed (`TRANSPORT_TIMEOUT`) and lookups
    /// the rendezvous did not answer in time.
    pub fn handle_timeout(&mut self, now: Now) -> Vec<Output> {
        for task_id in self.tasks.expired(now.mono) {
            self.time_out(now, &task_id);
        }
        self.expire_lookups(now);
        std::mem::take(&mut self.out)
    }

    fn hello(&self) -> Option<Value> {
        Some(json!({
            "node_id": self.node_id,
            "version": env!("CARGO_PKG_VERSION"),
            "protocol_version": agentmesh_proto::PROTOCOL_VERSION,
        }))
    }

    fn reply_ok(&mut self, conn: ConnId, id: Value, ok: Value) {
        self.send(conn, json!({"id": id, "ok": ok}));
    }

    fn reply_err(&mut self, conn: ConnId, id: Value, error: ErrorObject) {
        self.send(conn, json!({"id": id, "error": error}));
    }

    fn send(&mut self, conn: ConnId, msg: Value) {
        self.out.push(Output::Send { conn, msg });
    }

    /// Checks that `agent` is registered by `conn`.
    fn owned(&self, conn: ConnId, agent: &AgentId) -> Result<(), ErrorObject> {
        use agentmesh_proto::ErrorCode;
        match self.agents.get(agent) {
            Some(a) if a.conn == conn => Ok(()),
            Some(_) => Err(ErrorObject::new(
                ErrorCode::IdentityMismatch,
                format!(
                    "agent {} belongs to another connection; act only for agents you registered",
                    agent.short()
                ),
            )),
            None => Err(ErrorObject::new(
                ErrorCode::AgentUnavailable,
                format!(
                    "agent {} is not registered; call register first",
                    agent.short()
                ),
            )),
        }
    }
}

/// RFC 3339 text of a wall-clock time.
fn iso8601(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// A UUID v7 string for a wall-clock time.
fn uuid_v7(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    // The random bits from the thread's CSPRNG: `Uuid::new_v7` asks the kernel
    // (a `getrandom` syscall per id, four per request/response).
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_mesh;
