//! Router operations on tasks from the local API: `request` (to a local agent, or via
//! [`super::lookups`] to a remote one), `respond`, `stream`, `continue`, `cancel`.
//! Each side of a task may be local or on another daemon; [`super::task_end`] carries
//! the news to it.

use std::time::{Duration, Instant};

use agentmesh_proto::{AgentId, ErrorCode, ErrorObject, Json, NodeId, TaskState};
use serde_json::{json, Map, Value};

use super::task_end::{Ending, Sides};
use super::tasks::{Endpoint, Lookup, Task};
use super::{uuid_v7, ConnId, Now, Router};
use crate::api::ops::{RequestArgs, RespondArgs};

/// Which side of a task an operation must come from.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Requester,
    Responder,
    Either,
}

/// A local `request` on its way to becoming a task.
#[derive(Debug, Clone)]
pub(super) struct RequestJob {
    pub(super) conn: ConnId,
    pub(super) request_id: Value,
    pub(super) args: RequestArgs,
    /// When the requester gives up (counted from the `request` line).
    pub(super) deadline: Instant,
}

/// What the responder's connection is told about a new task.
pub(super) struct RequestPush<'a> {
    pub(super) task_id: &'a str,
    pub(super) from: AgentId,
    pub(super) to: AgentId,
    pub(super) skill: &'a str,
    pub(super) input: Json,
    pub(super) stream: bool,
    pub(super) context_id: Option<&'a str>,
    /// The requester's daemon, when it is not this one.
    pub(super) from_node: Option<NodeId>,
}

impl RequestPush<'_> {
    pub(super) fn into_json(self) -> Value {
        let mut push = Map::new();
        push.insert("event".into(), json!("request"));
        push.insert("task_id".into(), json!(self.task_id));
        push.insert("from".into(), json!(self.from));
        push.insert("to".into(), json!(self.to));
        push.insert("skill".into(), json!(self.skill));
        push.insert("input".into(), self.input.0);
        push.insert("stream".into(), json!(self.stream));
        if let Some(ctx) = self.context_id {
            push.insert("context_id".into(), json!(ctx));
        }
        if let Some(node) = self.from_node {
            push.insert("from_node".into(), json!(node));
        }
        Value::Object(push)
    }
}

impl Router {
    pub(super) fn request(
        &mut self,
        now: Now,
        conn: ConnId,
        request_id: Value,
        args: RequestArgs,
    ) -> Result<Option<Value>, ErrorObject> {
        self.owned(conn, &args.from)?;
        let pending = self.conns.get(&conn).map_or(0, |c| c.pending_requests);
        if pending >= self.config.max_pending_per_conn {
            return Err(ErrorObject::new(
                ErrorCode::RateLimited,
                format!(
                    "this connection already waits on {pending} requests (limit {})",
                    self.config.max_pending_per_conn
                ),
            ));
        }
        let timeout = self.timeout_of(args.timeout_ms)?;
        let (to, capability) = (args.to, args.capability.clone());
        let job = RequestJob {
            conn,
            request_id,
            deadline: now.mono + timeout,
            args,
        };
        match (to, capability) {
            (Some(to), None) if self.agents.get(&to).is_some() || !self.config.mesh => {
                self.agents.check_target(&to, &job.args.skill)?;
                self.start_local(now, job, to)
            }
            (Some(to), None) => self.request_remote_agent(now, job, to),
            (None, Some(cap)) => match self.agents.pick(&cap, &job.args.skill) {
                Ok(id) => self.start_local(now, job, id),
                Err(e) if self.config.mesh => self.request_remote_capability(now, job, &cap, e),
                Err(e) => Err(e),
            },
            _ => Err(ErrorObject::new(
                ErrorCode::InputInvalid,
                "request needs exactly one of 'to' (an agent id) or 'capability'",
            )),
        }
    }

    /// Starts a task whose responder is a local agent.
    pub(super) fn start_local(
        &mut self,
        now: Now,
        mut job: RequestJob,
        responder: AgentId,
    ) -> Result<Option<Value>, ErrorObject> {
        let responder_conn = match self.agents.get_mut(&responder) {
            Some(agent) => {
                agent.active_tasks += 1;
                agent.conn
            }
            None => return Err(ErrorObject::new(ErrorCode::AgentUnavailable, "agent gone")),
        };
        let task_id = uuid_v7(now.wall);
        let push = RequestPush {
            task_id: &task_id,
            from: job.args.from,
            to: responder,
            skill: &job.args.skill,
            // The task keeps no copy of the input: it moves into the push.
            input: std::mem::take(&mut job.args.input),
            stream: job.args.stream,
            context_id: job.args.context_id.as_deref(),
            from_node: None,
        }
        .into_json();
        self.track_request(&task_id, job, responder, Endpoint::Local(responder_conn));
        self.send(responder_conn, push);
        Ok(None)
    }

    /// Records a task this connection requested and tells it the task id.
    pub(super) fn track_request(
        &mut self,
        task_id: &str,
        job: RequestJob,
        responder: AgentId,
        responder_end: Endpoint,
    ) {
        let conn = job.conn;
        self.tasks.insert(Task {
            id: task_id.to_string(),
            requester: job.args.from,
            requester_end: Endpoint::Local(conn),
            request_id: job.request_id.clone(),
            responder,
            responder_end,
            skill: job.args.skill,
            state: TaskState::Submitted,
            deadline: job.deadline,
            next_seq: 0,
            context_id: job.args.context_id,
        });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.pending_requests += 1;
        }
        self.send(
            conn,
            json!({"event": "task_update", "task_id": task_id, "state": "submitted",
                   "request_id": job.request_id, "to": responder}),
        );
    }

    pub(super) fn timeout_of(&self, timeout_ms: Option<u64>) -> Result<Duration, ErrorObject> {
        let t = timeout_ms.map_or(self.config.default_timeout, Duration::from_millis);
        if t.is_zero() || t > self.config.max_timeout {
            return Err(ErrorObject::new(
                ErrorCode::InputInvalid,
                format!(
                    "timeout_ms must be between 1 and {}",
                    self.config.max_timeout.as_millis()
                ),
            ));
        }
        Ok(t)
    }

    pub(super) fn respond(
        &mut self,
        now: Now,
        conn: ConnId,
        args: RespondArgs,
    ) -> Result<Option<Value>, ErrorObject> {
        let target = args.state;
        let task = self.live_task(conn, &args.task_id, Side::Responder, target)?;
        let from = task.state;
        if from == TaskState::Submitted
            && target != TaskState::Working
            && target != TaskState::Canceled
        {
            // An agent may answer at once; the task passes through `working` on the way.
            // A requester on another daemon is not sent that step: its daemon tells its
            // agent `working` itself when a `completed` final arrives for a submitted task
            // (`peer_final`), which saves a peer frame per request.
            task.state = TaskState::Working;
            let remote_completion =
                target == TaskState::Completed && matches!(task.requester_end, Endpoint::Remote(_));
            if !remote_completion {
                let s = Sides::of(task);
                self.tell_requester_state(now, &s, TaskState::Working, None, None);
            }
        }
        let task = self.live_task(conn, &args.task_id, Side::Responder, target)?;
        task.state
            .transition(target)
            .map_err(|e| ErrorObject::new(ErrorCode::TaskInvalidTransition, e.to_string()))?;
        if target.is_terminal() {
            let mut error = args.error.map(|e| e.complete());
            if target == TaskState::Failed && error.is_none() {
                error = Some(ErrorObject::new(
                    ErrorCode::InternalError,
                    args.message
                        .clone()
                        .unwrap_or_else(|| "the agent reported failure".into()),
                ));
            }
            let end = Ending {
                state: target,
                output: args.output,
                message: args.message,
                error,
                quiet: false,
            };
            self.finish(now, &args.task_id, end);
        } else {
            task.state = target;
            let s = Sides::of(task);
            self.tell_requester_state(now, &s, target, args.message, args.output);
        }
        Ok(Some(json!({"task_id": args.task_id, "state": target})))
    }

    pub(super) fn stream(
        &mut self,
        now: Now,
        conn: ConnId,
        task_id: &str,
        chunk: Json,
        is_final: bool,
    ) -> Result<Option<Value>, ErrorObject> {
        let task = self.live_task(conn, task_id, Side::Responder, TaskState::Working)?;
        let started = task.state == TaskState::Submitted;
        if started {
            task.state = TaskState::Working;
        }
        if task.state != TaskState::Working {
            return Err(ErrorObject::new(
                ErrorCode::TaskInvalidTransition,
                format!(
                    "stream chunks are sent while a task is working; it is {}",
                    task.state
                ),
            ));
        }
        let seq = task.next_seq;
        task.next_seq += 1;
        let s = Sides::of(task);
        if started {
            self.tell_requester_state(now, &s, TaskState::Working, None, None);
        }
        self.tell_requester_chunk(&s, seq, chunk, is_final);
        Ok(Some(json!({"task_id": task_id, "seq": seq})))
    }

    pub(super) fn continue_task(
        &mut self,
        now: Now,
        conn: ConnId,
        task_id: &str,
        input: Json,
    ) -> Result<Option<Value>, ErrorObject> {
        let task = self.live_task(conn, task_id, Side::Requester, TaskState::Working)?;
        if !matches!(
            task.state,
            TaskState::InputRequired | TaskState::AuthRequired
        ) {
            return Err(ErrorObject::new(
                ErrorCode::TaskInvalidTransition,
                format!(
                    "continue answers input_required or auth_required; the task is {}",
                    task.state
                ),
            ));
        }
        task.state = TaskState::Working;
        let s = Sides::of(task);
        self.tell_responder_continue(now, &s, input);
        self.send(
            conn,
            json!({"event": "task_update", "task_id": task_id, "state": "working"}),
        );
        Ok(Some(json!({"task_id": task_id, "state": "working"})))
    }

    pub(super) fn cancel(
        &mut self,
        now: Now,
        conn: ConnId,
        task_id: &str,
    ) -> Result<Option<Value>, ErrorObject> {
        let task = self.live_task(conn, task_id, Side::Either, TaskState::Canceled)?;
        let s = Sides::of(task);
        let by_requester = s.requester_end == Endpoint::Local(conn);
        if by_requester {
            self.tell_responder_cancel(&s, "canceled by the requester");
        }
        let who = if by_requester {
            "requester"
        } else {
            "responder"
        };
        let end = Ending::with_message(TaskState::Canceled, format!("canceled by the {who}"));
        self.finish(now, task_id, end);
        Ok(Some(json!({"task_id": task_id, "state": "canceled"})))
    }

    /// The live task `task_id`, checking that `conn` is on the allowed side.
    fn live_task(
        &mut self,
        conn: ConnId,
        task_id: &str,
        side: Side,
        wanted: TaskState,
    ) -> Result<&mut Task, ErrorObject> {
        let me = Endpoint::Local(conn);
        match self.tasks.lookup(task_id) {
            Lookup::Live(task) => {
                let allowed = match side {
                    Side::Requester => task.requester_end == me,
                    Side::Responder => task.responder_end == me,
                    Side::Either => task.requester_end == me || task.responder_end == me,
                };
                if allowed {
                    Ok(task)
                } else {
                    Err(ErrorObject::new(
                        ErrorCode::Unauthorized,
                        format!("task {task_id} is not yours to change from this connection"),
                    ))
                }
            }
            Lookup::Finished(state) if wanted == TaskState::Canceled => Err(ErrorObject::new(
                ErrorCode::TaskNotCancelable,
                format!("task {task_id} already ended: {state}"),
            )),
            Lookup::Finished(state) => Err(ErrorObject::new(
                ErrorCode::TaskInvalidTransition,
                format!(
                    "illegal task transition {state} -> {wanted}: task {task_id} already ended"
                ),
            )),
            Lookup::Unknown => Err(ErrorObject::new(
                ErrorCode::TaskNotFound,
                format!("no task with id {task_id}"),
            )),
        }
    }
}
