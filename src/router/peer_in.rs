//! Messages from the routers of other daemons ([`Router::handle_peer`]).
//!
//! As the responder's daemon: `Open` starts a task for a local agent (errors go back as
//! a `failed` final answer), `Continue` and `Cancel` reach that agent. As the
//! requester's daemon: `Update`, `Chunk`, `Final` and `Cancel` from the task's
//! responder node become the same pushes and reply a local responder would cause.
//! Messages from a node that is not the task's other side, or that break the task
//! lifecycle, are dropped (logged at debug); an envelope id seen before is ignored.

use agentmesh_proto::peer::{RequestPayload, RequesterFrame, RespondPayload, ResponderFrame};
use agentmesh_proto::{Envelope, ErrorCode, ErrorObject, Json, NodeId, PrimitiveType, TaskState};
use serde_json::json;
use tracing::debug;

use super::envelopes::{self, TaskAddr};
use super::task_end::{Ending, Sides};
use super::task_ops::RequestPush;
use super::tasks::{Endpoint, Task};
use super::{Now, Output, PeerMsg, Router};

impl Router {
    /// Handles one message from daemon `from`.
    pub fn handle_peer(&mut self, now: Now, from: NodeId, msg: PeerMsg) -> Vec<Output> {
        if let (PeerMsg::Responder(_), Some(task_id)) = (&msg, msg.task_id()) {
            if self
                .mesh
                .unconfirmed
                .get(task_id)
                .is_some_and(|(n, _)| *n == from)
            {
                self.open_confirmed(task_id);
            }
        }
        match msg {
            PeerMsg::Requester(RequesterFrame::Open(e)) => {
                self.requests_total += 1;
                self.peer_open(now, from, e)
            }
            PeerMsg::Requester(RequesterFrame::Continue(e)) => self.peer_continue(now, from, e),
            PeerMsg::Cancel { task_id } => self.peer_cancel(now, from, &task_id),
            PeerMsg::Responder(ResponderFrame::Update(e)) => self.peer_update(now, from, e),
            PeerMsg::Responder(ResponderFrame::Chunk {
                task_id,
                seq,
                chunk,
                last,
            }) => self.peer_chunk(now, from, &task_id, seq, chunk, last),
            PeerMsg::Responder(ResponderFrame::Final(e)) => self.peer_final(now, from, e),
            PeerMsg::Event(agentmesh_proto::peer::OnewayFrame::Event(e)) => {
                self.peer_event(from, e)
            }
            PeerMsg::Event(agentmesh_proto::peer::OnewayFrame::MailReady { task_id }) => {
                self.peer_mail_ready(from, &task_id)
            }
        }
        std::mem::take(&mut self.out)
    }

    fn peer_open(&mut self, now: Now, from: NodeId, mut e: Envelope) {
        let Some(task_id) = e.task_id.clone() else {
            debug!(envelope = %e.id, "open without task_id dropped");
            return;
        };
        if let super::tasks::Lookup::Finished(state) = self.tasks.lookup(&task_id) {
            // It came again (e.g. stored while our answer was lost with the session):
            // its answer is gone, so say how it ended rather than leave it waiting.
            let err = ErrorObject::new(
                ErrorCode::AgentUnavailable,
                format!(
                    "this request reached node {} before and ended there ({}); its answer \
                     was lost",
                    self.node_id.short(),
                    json!(state).as_str().unwrap_or("ended")
                ),
            );
            self.answer_failed(now, from, &e, &task_id, err);
            return;
        }
        if !self.mesh.requests_seen.first_time(&e.id) || self.tasks.known(&task_id) {
            debug!(task = %task_id, "duplicate open ignored");
            return;
        }
        if let Err(err) = self.open_task(now, from, &mut e, &task_id) {
            self.answer_failed(now, from, &e, &task_id, err);
        }
    }

    /// Answers request `e` from `from` with a `failed` final state.
    fn answer_failed(
        &mut self,
        now: Now,
        from: NodeId,
        e: &Envelope,
        task_id: &str,
        err: ErrorObject,
    ) {
        let addr = TaskAddr {
            from: e.to.unwrap_or(e.from),
            to: e.from,
            task_id,
            context_id: e.context_id.as_deref(),
        };
        let reply = envelopes::respond(now, &addr, TaskState::Failed, None, None, Some(err));
        self.peer(from, PeerMsg::Responder(ResponderFrame::Final(reply)));
    }

    /// Creates the local side of a task another daemon opened.
    fn open_task(
        &mut self,
        now: Now,
        from: NodeId,
        e: &mut Envelope,
        task_id: &str,
    ) -> Result<(), ErrorObject> {
        let p: RequestPayload = envelopes::take_payload(e, PrimitiveType::Request)?;
        let Some(to) = e.to else {
            return Err(ErrorObject::new(
                ErrorCode::InvalidEnvelope,
                "request envelope without 'to'",
            ));
        };
        self.agents.check_target(&to, &p.skill)?;
        let config = p.config.unwrap_or_default();
        let timeout = self.timeout_of(config.timeout_ms)?;
        let responder_conn = match self.agents.get_mut(&to) {
            Some(agent) => {
                agent.active_tasks += 1;
                agent.conn
            }
            None => return Err(ErrorObject::new(ErrorCode::AgentUnavailable, "agent gone")),
        };
        let push = RequestPush {
            task_id,
            from: e.from,
            to,
            skill: &p.skill,
            input: p.input,
            stream: config.stream.unwrap_or(false),
            context_id: e.context_id.as_deref(),
            from_node: Some(from),
        }
        .into_json();
        self.tasks.insert(Task {
            id: task_id.to_string(),
            requester: e.from,
            requester_end: Endpoint::Remote(from),
            request_id: serde_json::Value::Null,
            responder: to,
            responder_end: Endpoint::Local(responder_conn),
            skill: p.skill,
            state: TaskState::Submitted,
            deadline: now.mono + timeout,
            next_seq: 0,
            context_id: e.context_id.clone(),
        });
        self.send(responder_conn, push);
        Ok(())
    }

    /// The live task `task_id` if its side `which` is on node `from`.
    fn task_from(&mut self, from: NodeId, task_id: &str, requester: bool) -> Option<&mut Task> {
        let there = Endpoint::Remote(from);
        match self.tasks.lookup(task_id) {
            super::tasks::Lookup::Live(t)
                if (requester && t.requester_end == there)
                    || (!requester && t.responder_end == there) =>
            {
                Some(t)
            }
            _ => {
                debug!(task = %task_id, "peer message for a task that is not shared with that node");
                None
            }
        }
    }

    fn peer_continue(&mut self, now: Now, from: NodeId, e: Envelope) {
        if !self.mesh.requests_seen.first_time(&e.id) {
            return;
        }
        let Some(task_id) = e.task_id.clone() else {
            return;
        };
        let input = match &e.payload {
            Some(Json(serde_json::Value::Object(p))) => {
                Json(p.get("input").cloned().unwrap_or_default())
            }
            _ => Json::null(),
        };
        let Some(task) = self.task_from(from, &task_id, true) else {
            return;
        };
        if !matches!(
            task.state,
            TaskState::InputRequired | TaskState::AuthRequired
        ) {
            debug!(task = %task_id, state = %task.state, "continue in a state that asks for none");
            return;
        }
        task.state = TaskState::Working;
        let s = Sides::of(task);
        self.tell_responder_continue(now, &s, input);
    }

    fn peer_cancel(&mut self, now: Now, from: NodeId, task_id: &str) {
        if let Some(task) = self.task_from(from, task_id, true) {
            let s = Sides::of(task);
            self.tell_responder_cancel(&s, "canceled by the requester");
            let mut end = Ending::with_message(TaskState::Canceled, "canceled by the requester");
            end.quiet = true;
            self.finish(now, task_id, end);
        } else if self.task_from(from, task_id, false).is_some() {
            let end = Ending::with_message(TaskState::Canceled, "canceled by the responder");
            self.finish(now, task_id, end);
        }
    }

    fn peer_update(&mut self, now: Now, from: NodeId, mut e: Envelope) {
        let Some(task_id) = e.task_id.clone() else {
            return;
        };
        let p: RespondPayload = match envelopes::take_payload(&mut e, PrimitiveType::Respond) {
            Ok(p) => p,
            Err(err) => {
                debug!(task = %task_id, error = %err.message, "bad update dropped");
                return;
            }
        };
        let Some(task) = self.task_from(from, &task_id, false) else {
            return;
        };
        if p.status.is_terminal() || task.state.transition(p.status).is_err() {
            debug!(task = %task_id, from = %task.state, to = %p.status, "illegal update dropped");
            return;
        }
        task.state = p.status;
        let s = Sides::of(task);
        self.tell_requester_state(now, &s, p.status, p.message, p.output);
    }

    fn peer_chunk(
        &mut self,
        now: Now,
        from: NodeId,
        task_id: &str,
        seq: u64,
        chunk: Json,
        last: bool,
    ) {
        let Some(task) = self.task_from(from, task_id, false) else {
            return;
        };
        let started = task.state == TaskState::Submitted;
        if started {
            task.state = TaskState::Working;
        }
        if task.state != TaskState::Working {
            debug!(task = %task_id, state = %task.state, "chunk outside working dropped");
            return;
        }
        task.next_seq = seq.saturating_add(1);
        let s = Sides::of(task);
        if started {
            self.tell_requester_state(now, &s, TaskState::Working, None, None);
        }
        self.tell_requester_chunk(&s, seq, chunk, last);
    }

    fn peer_final(&mut self, now: Now, from: NodeId, mut e: Envelope) {
        let Some(task_id) = e.task_id.clone() else {
            return;
        };
        let p: RespondPayload = match envelopes::take_payload(&mut e, PrimitiveType::Respond) {
            Ok(p) => p,
            Err(err) => {
                debug!(task = %task_id, error = %err.message, "bad final dropped");
                return;
            }
        };
        let Some(task) = self.task_from(from, &task_id, false) else {
            return;
        };
        let state = task.state;
        let legal = p.status.is_terminal()
            && (state.can_transition(p.status)
                || (state == TaskState::Submitted && p.status == TaskState::Completed)
                || (p.status == TaskState::Failed && state.can_abort_to_failed()));
        if !legal {
            debug!(task = %task_id, from = %state, to = %p.status, "illegal final dropped");
            return;
        }
        let s = Sides::of(task);
        if state == TaskState::Submitted && p.status == TaskState::Completed {
            self.tell_requester_state(now, &s, TaskState::Working, None, None);
        }
        if e.error.as_ref().is_some_and(|x| {
            matches!(
                x.code,
                ErrorCode::AgentUnavailable | ErrorCode::SkillNotFound
            )
        }) {
            self.mesh.directory.forget(&s.responder);
        }
        let mut error = e.error;
        if p.status == TaskState::Failed && error.is_none() {
            error = Some(ErrorObject::new(
                ErrorCode::InternalError,
                "the responder's daemon reported failure without an error",
            ));
        }
        let end = Ending {
            state: p.status,
            output: p.output,
            message: p.message,
            error,
            quiet: false,
        };
        self.finish(now, &task_id, end);
    }
}
