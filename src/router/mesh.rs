//! The router's view of the rest of the mesh, as the network driver reports it: which
//! topic patterns other daemons' subscribers hold, which daemons became unreachable,
//! the source of the network status shown by `status` and the `path` events pushed to watchers; and
//! what this daemon announces about its own subscribers.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use agentmesh_proto::peer::RecentIds;
use agentmesh_proto::{ErrorCode, ErrorObject, NodeId, Subject, SubjectPattern};
use serde_json::{json, Map, Value};

use super::directory::Directory;
use super::lookups::PendingLookups;
use super::mail::HeldMail;
use super::task_end::{Ending, Sides};
use super::tasks::Endpoint;
use super::{Announce, Now, Output, Router};

/// How many envelope ids from peers are remembered for de-duplication (per kind).
const RECENT_IDS: usize = 10_000;

/// Builds the network's status object on demand (see [`Router::set_net_source`]). It
/// runs under the router's lock, so it only reads counters and short-held mutexes that
/// are never held while calling into the router: no IO, no waiting.
#[derive(Clone)]
pub struct NetSource(pub Arc<dyn Fn() -> Value + Send + Sync>);

impl std::fmt::Debug for NetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetSource(..)")
    }
}

/// Mesh-mode state of the router.
#[derive(Debug)]
pub(super) struct MeshState {
    /// Remote agents learned from lookups.
    pub(super) directory: Directory,
    /// Lookups waiting for the rendezvous.
    pub(super) lookups: PendingLookups,
    /// Ids of `Open`/`Continue` envelopes handled (a retry never runs a task twice).
    pub(super) requests_seen: RecentIds,
    /// Ids of event envelopes delivered.
    pub(super) events_seen: RecentIds,
    /// Other daemons' subscription patterns (the rendezvous's index).
    pub(super) remote_subs: Vec<(NodeId, Vec<SubjectPattern>)>,
    /// The pattern set last announced.
    pub(super) announced_patterns: Vec<String>,
    /// Round-robin cursors of capability requests over remote agents.
    pub(super) remote_cursors: HashMap<String, usize>,
    /// Where `status` reads the network's view from (set by the network driver).
    pub(super) net: Option<NetSource>,
    /// Requests sent to another daemon and not yet answered: task id → (node, `Open`).
    pub(super) unconfirmed: HashMap<String, (NodeId, agentmesh_proto::Envelope)>,
    /// Requests stored at the relay for an unreachable node: task id → (node, `Open`).
    pub(super) parked: HashMap<String, (NodeId, agentmesh_proto::Envelope)>,
    /// Stored requests that arrived before their agent registered here.
    pub(super) held: Vec<HeldMail>,
}

impl Default for MeshState {
    fn default() -> Self {
        MeshState {
            directory: Directory::default(),
            lookups: PendingLookups::default(),
            requests_seen: RecentIds::new(RECENT_IDS),
            events_seen: RecentIds::new(RECENT_IDS),
            remote_subs: Vec::new(),
            announced_patterns: Vec::new(),
            remote_cursors: HashMap::new(),
            net: None,
            unconfirmed: HashMap::new(),
            parked: HashMap::new(),
            held: Vec::new(),
        }
    }
}

impl Router {
    /// Replaces what other daemons subscribe to (the rendezvous's subscription index:
    /// node → patterns). This daemon's own entry and unparsable patterns are ignored.
    pub fn set_remote_subscriptions(&mut self, entries: Vec<(NodeId, Vec<String>)>) {
        let me = self.node_id;
        self.mesh.remote_subs = entries
            .into_iter()
            .filter(|(node, _)| *node != me)
            .map(|(node, pats)| (node, pats.iter().filter_map(|p| p.parse().ok()).collect()))
            .filter(|(_, pats): &(NodeId, Vec<SubjectPattern>)| !pats.is_empty())
            .collect();
    }

    /// The other daemons with a subscriber for `subject`.
    pub(super) fn remote_nodes_for(&self, subject: &Subject) -> Vec<NodeId> {
        self.mesh
            .remote_subs
            .iter()
            .filter(|(_, pats)| pats.iter().any(|p| p.matches(subject)))
            .map(|(node, _)| *node)
            .collect()
    }

    /// Announces the local subscription patterns if the set changed (mesh mode).
    pub(super) fn sync_patterns(&mut self) {
        if !self.config.mesh {
            return;
        }
        let now: BTreeSet<String> = self
            .subs
            .iter()
            .map(|(_, s)| s.pattern.as_str().to_string())
            .collect();
        let now: Vec<String> = now.into_iter().collect();
        if now != self.mesh.announced_patterns {
            self.mesh.announced_patterns = now.clone();
            self.out.push(Output::Announce(Announce::Patterns(now)));
        }
    }

    /// Sets where the network driver's view (NAT class, public addresses, per-peer
    /// path, tier, RTT, bytes) is read from; every `status` calls it, so it is always
    /// current. `status` shows it as `net`, and `net.peers` as `peers`.
    pub fn set_net_source(&mut self, source: NetSource) {
        self.mesh.net = Some(source);
    }

    /// The network's view now (`null` without a network driver).
    pub(super) fn net_status(&self) -> Value {
        self.mesh.net.as_ref().map_or(Value::Null, |s| (s.0)())
    }

    /// A path to a peer changed: every connection that asked `status` with `watch`
    /// receives `{"event": "path", ...info}`.
    pub fn path_changed(&mut self, info: Value) -> Vec<Output> {
        let mut msg = Map::new();
        msg.insert("event".into(), json!("path"));
        match info {
            Value::Object(fields) => {
                for (k, v) in fields {
                    if k != "event" {
                        msg.insert(k, v);
                    }
                }
            }
            other => {
                msg.insert("info".into(), other);
            }
        }
        let msg = Value::Object(msg);
        let mut watchers: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| c.watch_paths)
            .map(|(id, _)| *id)
            .collect();
        watchers.sort();
        for conn in watchers {
            self.send(conn, msg.clone());
        }
        std::mem::take(&mut self.out)
    }

    /// Daemon `node` cannot be reached: every live task with a side there ends, except
    /// requests it never answered, which are parked and stored at the relay
    /// (store-and-forward, `mail.rs`). A local
    /// requester gets its final reply, `failed` with `AGENT_UNAVAILABLE` (the driver's
    /// `error` in `details`); a local responder gets a `cancel` push. What was learned
    /// about the node's agents is forgotten, so the next request looks them up again.
    pub fn peer_unreachable(&mut self, now: Now, node: NodeId, error: ErrorObject) -> Vec<Output> {
        let there = Endpoint::Remote(node);
        self.mesh.directory.forget_node(node);
        for task_id in self.tasks.ids_where(|t| t.responder_end == there) {
            if self.park_unanswered(node, &task_id) {
                continue;
            }
            let mut err = ErrorObject::new(
                ErrorCode::AgentUnavailable,
                format!(
                    "the responder's node {} is unreachable: {}",
                    node.short(),
                    error.message
                ),
            );
            err.details = Some(agentmesh_proto::Json(json!(error)));
            self.abort_failed(now, &task_id, err);
        }
        for task_id in self.tasks.ids_where(|t| t.requester_end == there) {
            let Some(s) = self.task_sides(&task_id) else {
                continue;
            };
            let why = format!("the requester's node {} is unreachable", node.short());
            self.tell_responder_cancel(&s, &why);
            let mut end = Ending::with_message(agentmesh_proto::TaskState::Canceled, why);
            end.quiet = true;
            self.finish(now, &task_id, end);
        }
        std::mem::take(&mut self.out)
    }

    /// Both sides of a live task.
    pub(super) fn task_sides(&mut self, task_id: &str) -> Option<Sides> {
        match self.tasks.lookup(task_id) {
            super::tasks::Lookup::Live(t) => Some(Sides::of(t)),
            _ => None,
        }
    }
}
