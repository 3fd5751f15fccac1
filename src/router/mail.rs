//! Store-and-forward of requests for agents whose daemon cannot be reached.
//!
//! Requester's side: the `Open` of a task sent to another daemon is kept until that
//! daemon first answers. When the daemon turns out unreachable before
//! ([`Router::peer_unreachable`]: it could not be dialed, or the session died), the
//! task is *parked* instead of failed: it stays `submitted`, its
//! requester gets a `task_stored` push, and [`Output::Store`] asks the driver to seal the
//! envelope to the responder's node key and leave it at the relay. The driver reports
//! with [`Router::store_done`]; a refusal ends the task `failed` (`AGENT_UNAVAILABLE`).
//! When the responder's daemon later sends [`OnewayFrame::MailReady`], the same `Open`
//! goes out again (same envelope id, so it can never run twice) and the task runs as
//! any other. The request's own timeout still applies.
//!
//! Responder's side: a stored request the relay delivers ([`Router::mail`]) is *held*
//! until its agent is registered here (a daemon that comes back online gets its mail
//! before its agents reconnect), then `MailReady` tells the requester's daemon to send
//! it. Held mail is bounded in count and time.

use std::time::Duration;

use agentmesh_proto::peer::{OnewayFrame, RequestPayload, RequesterFrame, StoredFrame};
use agentmesh_proto::{AgentId, Envelope, ErrorCode, ErrorObject, NodeId, PrimitiveType};
use serde_json::json;
use tracing::debug;

use super::envelopes;
use super::tasks::{Endpoint, Lookup};
use super::{Now, Output, PeerMsg, Router};

/// Stored requests held for agents not (yet) registered here, at most.
pub(super) const MAX_HELD: usize = 1024;
/// Longest a stored request is held for its agent (its own timeout may be shorter).
pub(super) const MAX_HOLD: Duration = Duration::from_secs(600);

/// A stored request that reached this daemon before its agent did.
#[derive(Debug, Clone)]
pub(super) struct HeldMail {
    /// The agent it is for.
    agent: AgentId,
    /// The requester's daemon, to tell when the agent is here.
    from: NodeId,
    /// The task.
    task_id: String,
    /// When to give up.
    until: std::time::Instant,
}

impl Router {
    /// Remembers the `Open` of a task sent to `node` until the first answer comes back
    /// ([`Router::open_confirmed`]): if `node` turns out unreachable first, the request
    /// is stored instead of failed.
    pub(super) fn remember_open(&mut self, node: NodeId, open: &Envelope) {
        if let Some(task_id) = &open.task_id {
            self.mesh
                .unconfirmed
                .insert(task_id.clone(), (node, open.clone()));
        }
    }

    /// The responder's daemon answered something for `task_id`: it has the request.
    pub(super) fn open_confirmed(&mut self, task_id: &str) {
        self.mesh.unconfirmed.remove(task_id);
    }

    /// Forgets what store-and-forward kept for a task that ended.
    pub(super) fn forget_stored(&mut self, task_id: &str) {
        self.mesh.unconfirmed.remove(task_id);
        self.mesh.parked.remove(task_id);
    }

    /// `node` is unreachable and task `task_id` had no answer from it yet: parks the
    /// task and asks for its request to be stored (see the module doc). False when the
    /// task is not such a task (it then fails as usual).
    pub(super) fn park_unanswered(&mut self, node: NodeId, task_id: &str) -> bool {
        let waiting = matches!(
            self.tasks.lookup(task_id),
            Lookup::Live(t) if t.responder_end == Endpoint::Remote(node)
                && t.state == agentmesh_proto::TaskState::Submitted
        );
        if self.mesh.parked.contains_key(task_id) {
            return waiting;
        }
        let open = match self.mesh.unconfirmed.remove(task_id) {
            Some((n, open)) if waiting && n == node => open,
            _ => return false,
        };
        if let Some(s) = self.task_sides(task_id) {
            if let Some(conn) = s.requester_end.conn() {
                self.send(
                    conn,
                    json!({"event": "task_stored", "task_id": task_id, "node": node,
                           "message": format!(
                               "the responder's node {} is unreachable; the request waits \
                                for it at the relay until the request's timeout",
                               node.short())}),
                );
            }
        }
        debug!(task = %task_id, peer = %node.short(), "request parked for store-and-forward");
        let frame = StoredFrame::Request(open.clone());
        self.mesh.parked.insert(task_id.to_string(), (node, open));
        self.out.push(Output::Store {
            node,
            task_id: task_id.to_string(),
            frame: Box::new(frame),
        });
        true
    }

    /// The driver's answer to [`Output::Store`] for `task_id`: `Err` (the relay refused
    /// it, or there is no relay) ends the parked task `failed` with `AGENT_UNAVAILABLE`.
    pub fn store_done(
        &mut self,
        now: Now,
        task_id: &str,
        result: Result<(), ErrorObject>,
    ) -> Vec<Output> {
        if let Err(error) = result {
            if let Some((node, _)) = self.mesh.parked.remove(task_id) {
                let mut err = ErrorObject::new(
                    ErrorCode::AgentUnavailable,
                    format!(
                        "the responder's node {} is unreachable and the request could not \
                         be stored: {}",
                        node.short(),
                        error.message
                    ),
                );
                err.details = Some(agentmesh_proto::Json(json!(error)));
                self.abort_failed(now, task_id, err);
            }
        }
        std::mem::take(&mut self.out)
    }

    /// A stored message from daemon `from` that the relay delivered (already opened and
    /// checked to come from `from`).
    pub fn mail(&mut self, now: Now, from: NodeId, frame: StoredFrame) -> Vec<Output> {
        match frame {
            StoredFrame::Request(e) => self.mail_request(now, from, e),
        }
        std::mem::take(&mut self.out)
    }

    fn mail_request(&mut self, now: Now, from: NodeId, e: Envelope) {
        let (Some(task_id), Some(agent)) = (e.task_id.clone(), e.to) else {
            debug!(envelope = %e.id, "stored request without task_id or to dropped");
            return;
        };
        let timeout = match envelopes::payload::<RequestPayload>(&e, PrimitiveType::Request) {
            Ok(p) => p
                .config
                .and_then(|c| c.timeout_ms)
                .map_or(MAX_HOLD, Duration::from_millis)
                .min(MAX_HOLD),
            Err(error) => {
                debug!(envelope = %e.id, %error, "stored request does not read");
                return;
            }
        };
        if self.agents.get(&agent).is_some() {
            self.mail_ready(from, task_id);
            return;
        }
        self.expire_held(now);
        if self.mesh.held.len() >= MAX_HELD {
            debug!(task = %task_id, "held mail full: the oldest stored request is dropped");
            self.mesh.held.remove(0);
        }
        debug!(task = %task_id, agent = %agent.short(), "stored request held for its agent");
        self.mesh.held.push(HeldMail {
            agent,
            from,
            task_id,
            until: now.mono + timeout,
        });
    }

    /// Agent `agent` registered: the stored requests held for it may be sent now.
    pub(super) fn release_held_for(&mut self, now: Now, agent: AgentId) {
        self.expire_held(now);
        let (ready, keep): (Vec<HeldMail>, Vec<HeldMail>) = std::mem::take(&mut self.mesh.held)
            .into_iter()
            .partition(|h| h.agent == agent);
        self.mesh.held = keep;
        for h in ready {
            self.mail_ready(h.from, h.task_id);
        }
    }

    fn mail_ready(&mut self, from: NodeId, task_id: String) {
        self.peer(from, PeerMsg::Event(OnewayFrame::MailReady { task_id }));
    }

    fn expire_held(&mut self, now: Now) {
        self.mesh.held.retain(|h| h.until > now.mono);
    }

    /// The responder's daemon `from` has the agent of parked task `task_id`: its `Open`
    /// goes out again. Unknown, finished or foreign tasks are ignored.
    pub(super) fn peer_mail_ready(&mut self, from: NodeId, task_id: &str) {
        if self
            .mesh
            .parked
            .get(task_id)
            .is_none_or(|(n, _)| *n != from)
        {
            debug!(task = %task_id, "mail-ready for no parked task ignored");
            return;
        }
        let Some((node, open)) = self.mesh.parked.remove(task_id) else {
            return;
        };
        debug!(task = %task_id, peer = %node.short(), "stored request's agent is back: sending it");
        self.peer(node, PeerMsg::Requester(RequesterFrame::Open(open)));
    }
}
