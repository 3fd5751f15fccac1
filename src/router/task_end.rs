//! How each side of a task hears what happens to it, wherever that side is: a local
//! connection gets the local-API push or reply, a remote daemon gets the [`PeerMsg`]
//! that makes its router push the same thing. And how tasks end: the final reply,
//! deadlines, and the daemon's own endings (responder gone, requester gone).

use agentmesh_proto::peer::{RequesterFrame, ResponderFrame};
use agentmesh_proto::{AgentId, ErrorCode, ErrorObject, Json, TaskState};
use serde_json::{json, Map, Value};

use super::envelopes::{self, TaskAddr};
use super::tasks::{Endpoint, Lookup, Task};
use super::{ConnId, Now, Output, PeerMsg, Router};

/// How a task ends.
pub(super) struct Ending {
    pub(super) state: TaskState,
    pub(super) output: Option<Json>,
    pub(super) message: Option<String>,
    pub(super) error: Option<ErrorObject>,
    /// The remote requester already knows (it canceled, or it is unreachable): send it
    /// no final answer.
    pub(super) quiet: bool,
}

impl Ending {
    pub(super) fn with_error(state: TaskState, error: ErrorObject) -> Self {
        Ending {
            state,
            output: None,
            message: None,
            error: Some(error),
            quiet: false,
        }
    }

    pub(super) fn with_message(state: TaskState, message: impl Into<String>) -> Self {
        Ending {
            state,
            output: None,
            message: Some(message.into()),
            error: None,
            quiet: false,
        }
    }
}

/// The parts of a task needed to address either side.
pub(super) struct Sides {
    pub(super) task_id: String,
    pub(super) requester: AgentId,
    pub(super) responder: AgentId,
    pub(super) requester_end: Endpoint,
    pub(super) responder_end: Endpoint,
    pub(super) context_id: Option<String>,
    pub(super) skill: String,
}

impl Sides {
    pub(super) fn of(t: &Task) -> Self {
        Sides {
            task_id: t.id.clone(),
            requester: t.requester,
            responder: t.responder,
            requester_end: t.requester_end,
            responder_end: t.responder_end,
            context_id: t.context_id.clone(),
            skill: t.skill.clone(),
        }
    }

    /// Addressing of an envelope from the responder to the requester.
    fn upstream(&self) -> TaskAddr<'_> {
        TaskAddr {
            from: self.responder,
            to: self.requester,
            task_id: &self.task_id,
            context_id: self.context_id.as_deref(),
        }
    }

    /// Addressing of an envelope from the requester to the responder.
    fn downstream(&self) -> TaskAddr<'_> {
        TaskAddr {
            from: self.requester,
            to: self.responder,
            task_id: &self.task_id,
            context_id: self.context_id.as_deref(),
        }
    }
}

impl Router {
    pub(super) fn peer(&mut self, node: agentmesh_proto::NodeId, msg: PeerMsg) {
        self.out.push(Output::Peer {
            node,
            msg: Box::new(msg),
        });
    }

    /// The requester hears of a non-terminal state change.
    pub(super) fn tell_requester_state(
        &mut self,
        now: Now,
        s: &Sides,
        state: TaskState,
        message: Option<String>,
        output: Option<Json>,
    ) {
        match s.requester_end {
            Endpoint::Local(conn) => {
                let mut update = Map::new();
                update.insert("event".into(), json!("task_update"));
                update.insert("task_id".into(), json!(s.task_id));
                update.insert("state".into(), json!(state));
                if let Some(m) = &message {
                    update.insert("message".into(), json!(m));
                }
                if let Some(o) = output {
                    // Moved, not copied: `json!` would serialise a copy of a large output.
                    update.insert("output".into(), o.0);
                }
                self.send(conn, Value::Object(update));
            }
            Endpoint::Remote(node) => {
                let e = envelopes::respond(now, &s.upstream(), state, message, output, None);
                self.peer(node, PeerMsg::Responder(ResponderFrame::Update(e)));
            }
        }
    }

    /// The requester receives a streamed chunk.
    pub(super) fn tell_requester_chunk(&mut self, s: &Sides, seq: u64, chunk: Json, last: bool) {
        match s.requester_end {
            Endpoint::Local(conn) => {
                let mut push = json!({"event": "stream", "task_id": s.task_id, "seq": seq,
                                      "final": last});
                push["chunk"] = chunk.0;
                self.send(conn, push);
            }
            Endpoint::Remote(node) => {
                let task_id = s.task_id.clone();
                let msg = ResponderFrame::Chunk {
                    task_id,
                    seq,
                    chunk,
                    last,
                };
                self.peer(node, PeerMsg::Responder(msg));
            }
        }
    }

    /// The responder learns that the task is canceled.
    pub(super) fn tell_responder_cancel(&mut self, s: &Sides, reason: &str) {
        match s.responder_end {
            Endpoint::Local(conn) => self.send(
                conn,
                json!({"event": "cancel", "task_id": s.task_id, "reason": reason}),
            ),
            Endpoint::Remote(node) => {
                let task_id = s.task_id.clone();
                self.peer(node, PeerMsg::Cancel { task_id });
            }
        }
    }

    /// The responder receives the input it asked for.
    pub(super) fn tell_responder_continue(&mut self, now: Now, s: &Sides, input: Json) {
        match s.responder_end {
            Endpoint::Local(conn) => {
                let mut push = json!({"event": "continue", "task_id": s.task_id});
                push["input"] = input.0;
                self.send(conn, push);
            }
            Endpoint::Remote(node) => {
                let e = envelopes::request(now, &s.downstream(), &s.skill, input, None);
                self.peer(node, PeerMsg::Requester(RequesterFrame::Continue(e)));
            }
        }
    }

    /// A request's deadline passed: the task is canceled with `TRANSPORT_TIMEOUT`.
    pub(super) fn time_out(&mut self, now: Now, task_id: &str) {
        let Lookup::Live(task) = self.tasks.lookup(task_id) else {
            return;
        };
        let s = Sides::of(task);
        self.tell_responder_cancel(&s, "the request timed out");
        let err = ErrorObject::new(
            ErrorCode::TransportTimeout,
            "no final response before the request's timeout",
        );
        self.finish(now, task_id, Ending::with_error(TaskState::Canceled, err));
    }

    /// The daemon fails a task on its own (its responder is gone).
    pub(super) fn abort_failed(&mut self, now: Now, task_id: &str, error: ErrorObject) {
        if let Lookup::Live(task) = self.tasks.lookup(task_id) {
            if task.state.can_abort_to_failed() {
                self.finish(now, task_id, Ending::with_error(TaskState::Failed, error));
            }
        }
    }

    /// The requester is gone: tell the responder and end the task.
    pub(super) fn cancel_by_daemon(&mut self, now: Now, task_id: &str, why: &str) {
        let Lookup::Live(task) = self.tasks.lookup(task_id) else {
            return;
        };
        let s = Sides::of(task);
        self.tell_responder_cancel(&s, why);
        self.finish(now, task_id, Ending::with_message(TaskState::Canceled, why));
    }

    /// Cancels every request a connection is still waiting on.
    pub(super) fn cancel_requests_of(&mut self, now: Now, conn: ConnId) {
        let mine = Endpoint::Local(conn);
        for task_id in self.tasks.ids_where(|t| t.requester_end == mine) {
            self.cancel_by_daemon(now, &task_id, "the requesting connection closed");
        }
    }

    /// Ends a task and sends the requester its final answer.
    pub(super) fn finish(&mut self, now: Now, task_id: &str, end: Ending) {
        let Some(task) = self.tasks.finish(task_id, end.state) else {
            return;
        };
        if self.config.mesh {
            self.forget_stored(task_id);
        }
        if task.responder_end.conn().is_some() {
            if let Some(agent) = self.agents.get_mut(&task.responder) {
                agent.active_tasks = agent.active_tasks.saturating_sub(1);
            }
        }
        match task.requester_end {
            Endpoint::Local(conn) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.pending_requests = c.pending_requests.saturating_sub(1);
                }
                let ok = final_reply(&task.id, end);
                self.reply_ok(conn, task.request_id, ok);
            }
            Endpoint::Remote(node) if !end.quiet => {
                let s = Sides::of(&task);
                let e = envelopes::respond(
                    now,
                    &s.upstream(),
                    end.state,
                    end.message,
                    end.output,
                    end.error,
                );
                self.peer(node, PeerMsg::Responder(ResponderFrame::Final(e)));
            }
            Endpoint::Remote(_) => {}
        }
    }
}

/// The `ok` of a request's final reply.
fn final_reply(task_id: &str, end: Ending) -> Value {
    let mut ok = Map::new();
    ok.insert("task_id".into(), json!(task_id));
    ok.insert("state".into(), json!(end.state));
    if let Some(o) = end.output {
        ok.insert("output".into(), o.0);
    }
    if let Some(m) = end.message {
        ok.insert("message".into(), json!(m));
    }
    if let Some(e) = end.error {
        ok.insert("error".into(), json!(e));
    }
    Value::Object(ok)
}
