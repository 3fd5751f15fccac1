//! Two routers in mesh mode (daemons A and B) wired by a pump that stands in for the
//! network driver and the rendezvous: `Output::Peer` goes into the other router's
//! `handle_peer`, `Output::Lookup` is answered from a fake directory built from both
//! routers' `Output::Announce`s (the real rendezvous has its own tests), and
//! `Output::Send` lands in per-connection inboxes.

mod discovery;
mod mail;
mod ping;
mod tasks;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agentmesh_proto::rendezvous::AgentRecord;
use agentmesh_proto::{AgentId, ErrorObject, NodeId, SecretKey};
use indexmap::IndexMap;
use serde_json::{json, Value};

use super::*;
use crate::api::ops::parse_line;

/// Which daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum R {
    A,
    B,
}

/// One message written to a connection: (daemon, connection, message).
pub(super) type Msg = (R, u64, Value);

pub(super) struct Mesh {
    pub(super) a: Router,
    pub(super) b: Router,
    pub(super) now: Now,
    /// The fake rendezvous's registry, fed by `Announce`.
    pub(super) registry: IndexMap<AgentId, AgentRecord>,
    /// The fake rendezvous's subscription index, fed by `Announce::Patterns`.
    pub(super) patterns: BTreeMap<NodeId, Vec<String>>,
    /// Every peer message that crossed: (from, to, message).
    pub(super) wire: Vec<(NodeId, NodeId, PeerMsg)>,
    /// Keep peer messages here instead of delivering them.
    pub(super) hold: bool,
    pub(super) held: Vec<(NodeId, NodeId, PeerMsg)>,
    /// Answer lookups with this error (the rendezvous is unreachable).
    pub(super) lookup_error: Option<ErrorObject>,
    /// Leave lookups unanswered.
    pub(super) mute_rendezvous: bool,
    /// How many lookups were asked.
    pub(super) lookups: usize,
    /// `Output::Store`s (from, for node, task id, frame); the test answers them.
    pub(super) stores: Vec<(R, NodeId, String, agentmesh_proto::peer::StoredFrame)>,
    inbox: Vec<Msg>,
}

fn router(seed: u8) -> Router {
    let config = RouterConfig {
        mesh: true,
        ..RouterConfig::default()
    };
    let node = SecretKey::from_bytes(&[seed; 32]).node_id();
    Router::new(node, config, Box::new(MemoryKeyStore::default()))
}

impl Mesh {
    pub(super) fn new() -> Self {
        Mesh {
            a: router(1),
            b: router(2),
            now: Now {
                mono: Instant::now(),
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            },
            registry: IndexMap::new(),
            patterns: BTreeMap::new(),
            wire: Vec::new(),
            hold: false,
            held: Vec::new(),
            lookup_error: None,
            mute_rendezvous: false,
            lookups: 0,
            stores: Vec::new(),
            inbox: Vec::new(),
        }
    }

    pub(super) fn node(&self, r: R) -> NodeId {
        self.router(r).node_id()
    }

    pub(super) fn router(&self, r: R) -> &Router {
        match r {
            R::A => &self.a,
            R::B => &self.b,
        }
    }

    fn router_mut(&mut self, r: R) -> &mut Router {
        match r {
            R::A => &mut self.a,
            R::B => &mut self.b,
        }
    }

    fn of_node(&self, node: NodeId) -> Option<R> {
        [R::A, R::B].into_iter().find(|r| self.node(*r) == node)
    }

    /// Runs `step` on router `r` and pumps everything that follows; returns the
    /// messages written to connections meanwhile.
    pub(super) fn step(
        &mut self,
        r: R,
        step: impl FnOnce(&mut Router, Now) -> Vec<Output>,
    ) -> Vec<Msg> {
        let now = self.now;
        let outs = step(self.router_mut(r), now);
        let mut queue: VecDeque<(R, Output)> = outs.into_iter().map(|o| (r, o)).collect();
        let mut budget = 10_000;
        while let Some((r, out)) = queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "the pump does not settle");
            for next in self.carry(r, out) {
                queue.push_back(next);
            }
        }
        std::mem::take(&mut self.inbox)
    }

    /// Carries one output of router `r`; returns what that caused.
    fn carry(&mut self, r: R, out: Output) -> Vec<(R, Output)> {
        let now = self.now;
        let me = self.node(r);
        match out {
            Output::Send { conn, msg } => {
                self.inbox.push((r, conn.0, msg));
                vec![]
            }
            Output::Peer { node, msg } => {
                self.wire.push((me, node, (*msg).clone()));
                if self.hold {
                    self.held.push((me, node, *msg));
                    return vec![];
                }
                let Some(target) = self.of_node(node) else {
                    return vec![];
                };
                let outs = self.router_mut(target).handle_peer(now, me, *msg);
                outs.into_iter().map(|o| (target, o)).collect()
            }
            Output::Lookup(l) => {
                self.lookups += 1;
                if self.mute_rendezvous {
                    return vec![];
                }
                let answer = match &self.lookup_error {
                    Some(e) => Err(e.clone()),
                    None => Ok(self
                        .registry
                        .values()
                        .filter(|rec| l.query.matches(&rec.manifest))
                        .take(l.query.effective_limit())
                        .cloned()
                        .collect()),
                };
                let outs = self.router_mut(r).lookup_done(now, l.token, answer);
                outs.into_iter().map(|o| (r, o)).collect()
            }
            Output::Announce(a) => {
                self.announce(me, a);
                vec![]
            }
            Output::Store {
                node,
                task_id,
                frame,
            } => {
                self.stores.push((r, node, task_id, *frame));
                vec![]
            }
            Output::Ping(job) => {
                let ms = u64::try_from(job.interval.as_millis()).unwrap_or(u64::MAX);
                let ok =
                    serde_json::json!({"node": job.node, "count": job.count, "interval_ms": ms});
                let outs = self.router_mut(r).ping_done(job.conn, job.id, Ok(ok));
                outs.into_iter().map(|o| (r, o)).collect()
            }
        }
    }

    fn announce(&mut self, node: NodeId, a: Announce) {
        match a {
            Announce::Register(m) => {
                assert!(m.verify().is_ok(), "announced manifests are signed");
                let rec = AgentRecord {
                    node,
                    manifest: Arc::new(*m),
                };
                self.registry.insert(rec.manifest.id, rec);
            }
            Announce::Unregister(id) => {
                self.registry.shift_remove(&id);
            }
            Announce::Patterns(p) => {
                self.patterns.insert(node, p);
                let entries: Vec<(NodeId, Vec<String>)> =
                    self.patterns.iter().map(|(n, p)| (*n, p.clone())).collect();
                self.a.set_remote_subscriptions(entries.clone());
                self.b.set_remote_subscriptions(entries);
            }
        }
    }

    /// Delivers held peer messages (optionally twice) and pumps.
    pub(super) fn release(&mut self, times: usize) -> Vec<Msg> {
        let held = std::mem::take(&mut self.held);
        self.hold = false;
        let mut got = Vec::new();
        for (from, to, msg) in held {
            let Some(target) = self.of_node(to) else {
                continue;
            };
            for _ in 0..times {
                let m = msg.clone();
                got.extend(self.step(target, |rt, now| rt.handle_peer(now, from, m)));
            }
        }
        got
    }

    /// Sends one line from connection `conn` of daemon `r`.
    pub(super) fn line(&mut self, r: R, conn: u64, line: Value) -> Vec<Msg> {
        let bytes = line.to_string();
        self.step(r, |rt, now| match parse_line(bytes.as_bytes()) {
            Ok((id, op)) => rt.handle_op(now, ConnId(conn), id, op),
            Err(bad) => rt.handle_bad_line(ConnId(conn), bad.id, bad.error),
        })
    }

    /// Sends a line and returns its reply.
    pub(super) fn call(&mut self, r: R, conn: u64, line: Value) -> Value {
        let id = line["id"].clone();
        let outs = self.line(r, conn, line);
        reply(&outs, r, conn, &id).cloned().unwrap_or(Value::Null)
    }

    pub(super) fn register(
        &mut self,
        r: R,
        conn: u64,
        name: &str,
        caps: &[&str],
        skills: &[&str],
    ) -> String {
        let skills: Vec<Value> = skills.iter().map(|s| json!({"id": s, "name": s})).collect();
        let key: String = format!("{r:?}-{name}")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let reply = self.call(
            r,
            conn,
            // Both routers' key stores count from 1: named keys keep ids distinct.
            json!({"op": "register", "id": "reg", "key_name": key,
                   "manifest": {"name": name, "capabilities": caps, "skills": skills}}),
        );
        let id = reply["ok"]["agent_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!id.is_empty(), "register failed: {reply}");
        id
    }

    pub(super) fn advance(&mut self, d: Duration) -> Vec<Msg> {
        self.now.mono += d;
        self.now.wall += d;
        let mut got = self.step(R::A, |rt, now| rt.handle_timeout(now));
        got.extend(self.step(R::B, |rt, now| rt.handle_timeout(now)));
        got
    }

    pub(super) fn close(&mut self, r: R, conn: u64) -> Vec<Msg> {
        self.step(r, |rt, now| rt.connection_closed(now, ConnId(conn)))
    }
}

/// The push `name` written to (r, conn).
pub(super) fn event<'a>(outs: &'a [Msg], r: R, conn: u64, name: &str) -> Option<&'a Value> {
    outs.iter()
        .find(|(d, c, m)| *d == r && *c == conn && m["event"] == name)
        .map(|(_, _, m)| m)
}

/// The reply with `id` written to (r, conn).
pub(super) fn reply<'a>(outs: &'a [Msg], r: R, conn: u64, id: &Value) -> Option<&'a Value> {
    outs.iter()
        .find(|(d, c, m)| *d == r && *c == conn && m["id"] == *id && m.get("event").is_none())
        .map(|(_, _, m)| m)
}

/// How the task of request `id` on (r, conn) ended, from its final reply: (state,
/// error code, error message); nulls and "" where absent.
pub(super) fn task_end(outs: &[Msg], r: R, conn: u64, id: u64) -> (Value, Value, String) {
    let ok = reply(outs, r, conn, &json!(id))
        .map(|m| m["ok"].clone())
        .unwrap_or_default();
    let message = ok["error"]["message"].as_str().unwrap_or("").to_string();
    (ok["state"].clone(), ok["error"]["code"].clone(), message)
}

pub(super) fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("")
}
