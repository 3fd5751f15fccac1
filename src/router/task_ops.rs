//! Router operations on tasks: `request`, `respond`, `stream`, `continue`, `cancel`,
//! deadlines, and the daemon's own endings (responder gone, requester gone).

use std::time::Duration;

use agentmesh_proto::{ErrorCode, ErrorObject, Json, TaskState};
use serde_json::{json, Map, Value};

use super::tasks::{Lookup, Task};
use super::{uuid_v7, ConnId, Now, Router};
use crate::api::ops::{RequestArgs, RespondArgs};

/// Which side of a task an operation must come from.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Requester,
    Responder,
    Either,
}

/// How a task ends.
struct Ending {
    state: TaskState,
    output: Option<Json>,
    message: Option<String>,
    error: Option<ErrorObject>,
}

impl Ending {
    fn with_error(state: TaskState, error: ErrorObject) -> Self {
        Ending {
            state,
            output: None,
            message: None,
            error: Some(error),
        }
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
        let responder = match (args.to, args.capability.as_deref()) {
            (Some(to), None) => {
                self.agents.check_target(&to, &args.skill)?;
                to
            }
            (None, Some(cap)) => self.agents.pick(cap, &args.skill)?,
            _ => {
                return Err(ErrorObject::new(
                    ErrorCode::InputInvalid,
                    "request needs exactly one of 'to' (an agent id) or 'capability'",
                ))
            }
        };
        let responder_conn = match self.agents.get_mut(&responder) {
            Some(agent) => {
                agent.active_tasks += 1;
                agent.conn
            }
            None => return Err(ErrorObject::new(ErrorCode::AgentUnavailable, "agent gone")),
        };
        let task_id = uuid_v7(now.wall);
        let mut push = Map::new();
        push.insert("event".into(), json!("request"));
        push.insert("task_id".into(), json!(task_id));
        push.insert("from".into(), json!(args.from));
        push.insert("to".into(), json!(responder));
        push.insert("skill".into(), json!(args.skill));
        push.insert("input".into(), json!(args.input));
        push.insert("stream".into(), json!(args.stream));
        if let Some(ctx) = &args.context_id {
            push.insert("context_id".into(), json!(ctx));
        }
        self.tasks.insert(Task {
            id: task_id.clone(),
            requester: args.from,
            requester_conn: conn,
            request_id: request_id.clone(),
            responder,
            responder_conn,
            skill: args.skill,
            state: TaskState::Submitted,
            deadline: now.mono + timeout,
            next_seq: 0,
            context_id: args.context_id,
        });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.pending_requests += 1;
        }
        self.send(
            conn,
            json!({"event": "task_update", "task_id": task_id, "state": "submitted",
                   "request_id": request_id, "to": responder}),
        );
        self.send(responder_conn, Value::Object(push));
        Ok(None)
    }

    fn timeout_of(&self, timeout_ms: Option<u64>) -> Result<Duration, ErrorObject> {
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
            task.state = TaskState::Working;
            let update = json!({"event": "task_update", "task_id": task.id, "state": "working"});
            let requester_conn = task.requester_conn;
            self.send(requester_conn, update);
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
            self.finish(
                &args.task_id,
                Ending {
                    state: target,
                    output: args.output,
                    message: args.message,
                    error,
                },
            );
        } else {
            task.state = target;
            let mut update = Map::new();
            update.insert("event".into(), json!("task_update"));
            update.insert("task_id".into(), json!(task.id));
            update.insert("state".into(), json!(target));
            if let Some(m) = &args.message {
                update.insert("message".into(), json!(m));
            }
            if let Some(o) = &args.output {
                update.insert("output".into(), json!(o));
            }
            let requester_conn = task.requester_conn;
            self.send(requester_conn, Value::Object(update));
        }
        Ok(Some(json!({"task_id": args.task_id, "state": target})))
    }

    pub(super) fn stream(
        &mut self,
        conn: ConnId,
        task_id: &str,
        chunk: Json,
        is_final: bool,
    ) -> Result<Option<Value>, ErrorObject> {
        let task = self.live_task(conn, task_id, Side::Responder, TaskState::Working)?;
        let mut pushes = Vec::new();
        if task.state == TaskState::Submitted {
            task.state = TaskState::Working;
            pushes.push(json!({"event": "task_update", "task_id": task_id, "state": "working"}));
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
        pushes.push(json!({"event": "stream", "task_id": task_id, "seq": seq,
                           "chunk": chunk, "final": is_final}));
        let requester_conn = task.requester_conn;
        for p in pushes {
            self.send(requester_conn, p);
        }
        Ok(Some(json!({"task_id": task_id, "seq": seq})))
    }

    pub(super) fn continue_task(
        &mut self,
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
        let (responder_conn, requester_conn) = (task.responder_conn, task.requester_conn);
        self.send(
            responder_conn,
            json!({"event": "continue", "task_id": task_id, "input": input}),
        );
        self.send(
            requester_conn,
            json!({"event": "task_update", "task_id": task_id, "state": "working"}),
        );
        Ok(Some(json!({"task_id": task_id, "state": "working"})))
    }

    pub(super) fn cancel(
        &mut self,
        conn: ConnId,
        task_id: &str,
    ) -> Result<Option<Value>, ErrorObject> {
        let task = self.live_task(conn, task_id, Side::Either, TaskState::Canceled)?;
        let by_requester = task.requester_conn == conn;
        let responder_conn = task.responder_conn;
        if by_requester {
            self.send(
                responder_conn,
                json!({"event": "cancel", "task_id": task_id, "reason": "canceled by the requester"}),
            );
        }
        let who = if by_requester {
            "requester"
        } else {
            "responder"
        };
        self.finish(
            task_id,
            Ending {
                state: TaskState::Canceled,
                output: None,
                message: Some(format!("canceled by the {who}")),
                error: None,
            },
        );
        Ok(Some(json!({"task_id": task_id, "state": "canceled"})))
    }

    /// A request's deadline passed: the task is canceled with `TRANSPORT_TIMEOUT`.
    pub(super) fn time_out(&mut self, task_id: &str) {
        let Lookup::Live(task) = self.tasks.lookup(task_id) else {
            return;
        };
        let responder_conn = task.responder_conn;
        self.send(
            responder_conn,
            json!({"event": "cancel", "task_id": task_id, "reason": "the request timed out"}),
        );
        let err = ErrorObject::new(
            ErrorCode::TransportTimeout,
            "no final response before the request's timeout",
        );
        self.finish(task_id, Ending::with_error(TaskState::Canceled, err));
    }

    /// The daemon fails a task on its own (its responder is gone).
    pub(super) fn abort_failed(&mut self, task_id: &str, error: ErrorObject) {
        if let Lookup::Live(task) = self.tasks.lookup(task_id) {
            if task.state.can_abort_to_failed() {
                self.finish(task_id, Ending::with_error(TaskState::Failed, error));
            }
        }
    }

    /// The requester is gone: tell the responder and end the task.
    pub(super) fn cancel_by_daemon(&mut self, task_id: &str, why: &str) {
        let Lookup::Live(task) = self.tasks.lookup(task_id) else {
            return;
        };
        let responder_conn = task.responder_conn;
        self.send(
            responder_conn,
            json!({"event": "cancel", "task_id": task_id, "reason": why}),
        );
        self.finish(
            task_id,
            Ending {
                state: TaskState::Canceled,
                output: None,
                message: Some(why.to_string()),
                error: None,
            },
        );
    }

    /// Cancels every request a connection is still waiting on.
    pub(super) fn cancel_requests_of(&mut self, conn: ConnId) {
        for task_id in self.tasks.ids_where(|t| t.requester_conn == conn) {
            self.cancel_by_daemon(&task_id, "the requesting connection closed");
        }
    }

    /// Ends a task and sends the requester its final reply.
    fn finish(&mut self, task_id: &str, end: Ending) {
        let Some(task) = self.tasks.finish(task_id, end.state) else {
            return;
        };
        if let Some(agent) = self.agents.get_mut(&task.responder) {
            agent.active_tasks = agent.active_tasks.saturating_sub(1);
        }
        if let Some(c) = self.conns.get_mut(&task.requester_conn) {
            c.pending_requests = c.pending_requests.saturating_sub(1);
        }
        let mut ok = Map::new();
        ok.insert("task_id".into(), json!(task.id));
        ok.insert("state".into(), json!(end.state));
        if let Some(o) = end.output {
            ok.insert("output".into(), json!(o));
        }
        if let Some(m) = end.message {
            ok.insert("message".into(), json!(m));
        }
        if let Some(e) = end.error {
            ok.insert("error".into(), json!(e));
        }
        self.reply_ok(task.requester_conn, task.request_id, Value::Object(ok));
    }

    /// The live task `task_id`, checking that `conn` is on the allowed side.
    fn live_task(
        &mut self,
        conn: ConnId,
        task_id: &str,
        side: Side,
        wanted: TaskState,
    ) -> Result<&mut Task, ErrorObject> {
        match self.tasks.lookup(task_id) {
            Lookup::Live(task) => {
                let allowed = match side {
                    Side::Requester => task.requester_conn == conn,
                    Side::Responder => task.responder_conn == conn,
                    Side::Either => task.requester_conn == conn || task.responder_conn == conn,
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
