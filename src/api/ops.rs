//! The local API's client → daemon operations: parsing one JSON line into an [`Op`],
//! with the error a client gets for each kind of bad input.
//!
//! A line is `{"op": NAME, "id": ID, ...args}`. `id` is any JSON value and is echoed in
//! the reply. Malformed JSON, a non-object, a missing or unknown `op` give
//! `INVALID_ENVELOPE`; missing or ill-typed arguments give `INPUT_INVALID`.

use agentmesh_proto::{AgentId, DiscoverQuery, ErrorCode, ErrorObject, Json, TaskState};
use serde::Deserialize;
use serde_json::Value;

/// Every operation name the daemon understands, for error messages and `--help`.
pub const OP_NAMES: &[&str] = &[
    "hello",
    "register",
    "deregister",
    "discover",
    "request",
    "respond",
    "stream",
    "continue",
    "cancel",
    "emit",
    "subscribe",
    "unsubscribe",
    "status",
    "ping",
];

/// One parsed client operation.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Who is this daemon.
    Hello {},
    /// Register an agent owned by this connection.
    Register {
        /// The manifest; `id` may be omitted (the daemon supplies the agent key).
        manifest: Value,
        /// Name under which the daemon keeps this agent's key, so the agent id stays
        /// the same across restarts. Without it the key is ephemeral.
        #[serde(default)]
        key_name: Option<String>,
    },
    /// Take an agent offline.
    Deregister {
        /// The agent.
        agent_id: AgentId,
    },
    /// Search registered agents.
    Discover {
        /// Filters; all must match.
        #[serde(default)]
        query: DiscoverQuery,
    },
    /// Ask an agent (or any agent with a capability) to run a skill.
    Request(RequestArgs),
    /// Move a task (responder side).
    Respond(RespondArgs),
    /// Send a chunk of a streamed result (responder side).
    Stream {
        /// The task.
        task_id: String,
        /// The chunk (any JSON).
        chunk: Json,
        /// Whether this is the last chunk.
        #[serde(default, rename = "final")]
        is_final: bool,
    },
    /// Answer `input_required` / `auth_required` (requester side).
    Continue {
        /// The task.
        task_id: String,
        /// The input asked for.
        input: Json,
    },
    /// Cancel a task (either side).
    Cancel {
        /// The task.
        task_id: String,
    },
    /// Publish an event.
    Emit {
        /// Publishing agent (owned by this connection).
        from: AgentId,
        /// Subject, e.g. `mesh.event.user.login`.
        topic: String,
        /// Event data.
        #[serde(default)]
        data: Json,
    },
    /// Subscribe an agent to a subject pattern.
    Subscribe {
        /// Subscribing agent (owned by this connection).
        agent_id: AgentId,
        /// Pattern with `*` and `>` wildcards.
        pattern: String,
    },
    /// Drop a subscription.
    Unsubscribe {
        /// The subscription.
        subscription_id: String,
    },
    /// Node id, agents, tasks, peers, the network's view.
    Status {
        /// Also push `{"event": "path", …}` to this connection whenever a path to a
        /// peer changes.
        #[serde(default)]
        watch: bool,
    },
    /// Measure round trips to the daemon hosting an agent (or to a node) over its QUIC
    /// session.
    Ping {
        /// An agent id (`A…`, local directory) or a node id (`N…`).
        target: String,
        /// How many round trips (default 4, at most 100).
        #[serde(default)]
        count: Option<u32>,
        /// Pause between round trips in milliseconds (default 1000, at least 10).
        #[serde(default)]
        interval_ms: Option<u64>,
    },
}

/// Arguments of `request`.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestArgs {
    /// Requesting agent (owned by this connection).
    pub from: AgentId,
    /// Target agent; exclusive with `capability`.
    #[serde(default)]
    pub to: Option<AgentId>,
    /// Any agent offering this capability; exclusive with `to`.
    #[serde(default)]
    pub capability: Option<String>,
    /// Skill to run.
    pub skill: String,
    /// Skill input.
    #[serde(default)]
    pub input: Json,
    /// Groups related tasks.
    #[serde(default)]
    pub context_id: Option<String>,
    /// Give up after this long (the task is canceled with `TRANSPORT_TIMEOUT`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Whether the requester wants `stream` pushes.
    #[serde(default)]
    pub stream: bool,
}

/// Arguments of `respond`.
#[derive(Debug, Clone, Deserialize)]
pub struct RespondArgs {
    /// The task.
    pub task_id: String,
    /// The new state.
    pub state: TaskState,
    /// Result data.
    #[serde(default)]
    pub output: Option<Json>,
    /// Human-readable status.
    #[serde(default)]
    pub message: Option<String>,
    /// Structured error (for `failed`).
    #[serde(default)]
    pub error: Option<PartialError>,
}

/// An error object as an agent may write it: only `code` is required.
#[derive(Debug, Clone, Deserialize)]
pub struct PartialError {
    /// Error code (string or number).
    pub code: ErrorCode,
    /// Description.
    #[serde(default)]
    pub message: String,
    /// Overrides the code's default.
    #[serde(default)]
    pub retryable: Option<bool>,
    /// Suggested wait.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// Extra context.
    #[serde(default)]
    pub details: Option<Json>,
}

impl PartialError {
    /// The full error object, filling defaults from the code.
    pub fn complete(self) -> ErrorObject {
        let mut e = ErrorObject::new(self.code, self.message);
        if let Some(r) = self.retryable {
            e.retryable = r;
        }
        e.retry_after_ms = self.retry_after_ms;
        e.details = self.details;
        e
    }
}

/// A line that could not be turned into an [`Op`], with the id to echo if one was read.
#[derive(Debug, Clone)]
pub struct BadLine {
    /// The request id, when the line was an object with an `id`.
    pub id: Value,
    /// The error to reply with.
    pub error: ErrorObject,
}

/// A valid line as the fast path reads it: `id` beside the operation's own fields, in
/// one pass over the line with no intermediate `Value` of the whole line.
#[derive(Deserialize)]
struct ValidLine {
    #[serde(default)]
    id: Value,
    #[serde(flatten)]
    op: Op,
}

/// Parses one line (without its newline). A valid line is read in one pass
/// ([`ValidLine`]); any other is read again by [`parse_line_checked`], which says
/// precisely what is wrong with it.
pub fn parse_line(line: &[u8]) -> Result<(Value, Op), Box<BadLine>> {
    match serde_json::from_slice::<ValidLine>(line) {
        Ok(l) => Ok((l.id, l.op)),
        Err(_) => parse_line_checked(line),
    }
}

/// Parses one line through a `Value` first, so that a bad line's error names its `id`,
/// its `op` and what is wrong.
fn parse_line_checked(line: &[u8]) -> Result<(Value, Op), Box<BadLine>> {
    let invalid = |id: Value, msg: String| {
        Box::new(BadLine {
            id,
            error: ErrorObject::new(ErrorCode::InvalidEnvelope, msg),
        })
    };
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| invalid(Value::Null, format!("line is not valid JSON: {e}")))?;
    let Value::Object(mut map) = value else {
        return Err(invalid(
            Value::Null,
            "each line must be a JSON object like {\"op\": \"hello\", \"id\": 1}".into(),
        ));
    };
    let id = map.remove("id").unwrap_or(Value::Null);
    let op_name = match map.get("op") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid(id, "\"op\" must be a string".into())),
        None => return Err(invalid(id, "missing \"op\"".into())),
    };
    if !OP_NAMES.contains(&op_name.as_str()) {
        return Err(invalid(
            id,
            format!("unknown op '{op_name}'; known ops: {}", OP_NAMES.join(", ")),
        ));
    }
    match serde_json::from_value::<Op>(Value::Object(map)) {
        Ok(op) => Ok((id, op)),
        Err(e) => Err(Box::new(BadLine {
            id,
            error: ErrorObject::new(ErrorCode::InputInvalid, format!("{op_name}: {e}")),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(line: &str) -> (Value, ErrorCode) {
        let bad = parse_line(line.as_bytes()).unwrap_err();
        (bad.id, bad.error.code)
    }

    #[test]
    fn parses_ops_and_keeps_the_id() {
        let (id, op) = parse_line(br#"{"op":"hello","id":7}"#).unwrap();
        assert_eq!(id, Value::from(7));
        assert!(matches!(op, Op::Hello {}));
        let (_, op) =
            parse_line(br#"{"op":"discover","id":"a","query":{"capabilities":["x"]}}"#).unwrap();
        assert!(matches!(op, Op::Discover { query } if query.capabilities == ["x"]));
        let (_, op) =
            parse_line(br#"{"op":"stream","id":1,"task_id":"t","chunk":"c","final":true}"#)
                .unwrap();
        assert!(matches!(op, Op::Stream { is_final: true, .. }));
        let (_, op) = parse_line(br#"{"op":"status","id":1,"watch":true}"#).unwrap();
        assert!(matches!(op, Op::Status { watch: true }));
        let (_, op) = parse_line(br#"{"op":"status","id":1}"#).unwrap();
        assert!(matches!(op, Op::Status { watch: false }));
        let (_, op) = parse_line(br#"{"op":"ping","id":1,"target":"Nx","count":2}"#).unwrap();
        assert!(matches!(
            op,
            Op::Ping {
                count: Some(2),
                interval_ms: None,
                ..
            }
        ));
    }

    #[test]
    fn bad_lines_get_the_right_code() {
        assert_eq!(code("{nope"), (Value::Null, ErrorCode::InvalidEnvelope));
        assert_eq!(code("[1,2]"), (Value::Null, ErrorCode::InvalidEnvelope));
        assert_eq!(
            code(r#"{"id":3}"#),
            (Value::from(3), ErrorCode::InvalidEnvelope)
        );
        assert_eq!(
            code(r#"{"id":3,"op":"fly"}"#),
            (Value::from(3), ErrorCode::InvalidEnvelope)
        );
        assert_eq!(
            code(r#"{"id":4,"op":"request","skill":"x"}"#),
            (Value::from(4), ErrorCode::InputInvalid)
        );
        assert_eq!(
            code(r#"{"id":5,"op":"cancel","task_id":5}"#),
            (Value::from(5), ErrorCode::InputInvalid)
        );
        assert_eq!(
            code(r#"{"id":6,"op":"respond","task_id":"t","state":"done"}"#),
            (Value::from(6), ErrorCode::InputInvalid)
        );
    }

    #[test]
    fn numeric_error_codes_are_read() {
        let (_, op) =
            parse_line(br#"{"op":"respond","task_id":"t","state":"failed","error":{"code":4003}}"#)
                .unwrap();
        let Op::Respond(args) = op else { panic!() };
        let e = args.error.unwrap().complete();
        assert_eq!(e.code, ErrorCode::SkillNotFound);
        assert!(!e.retryable);
    }

    /// Lines of every op, with and without optional fields, in any key order.
    fn sample_lines() -> Vec<Value> {
        let agent = agentmesh_proto::SecretKey::from_bytes(&[7; 32]).agent_id();
        vec![
            serde_json::json!({"op": "hello", "id": 1}),
            serde_json::json!({"id": "x", "op": "register", "manifest": {"name": "a"}}),
            serde_json::json!({"op": "request", "id": 3, "from": agent, "to": agent,
                               "skill": "echo", "input": {"text": "hi", "n": [1, 2.5, -3]},
                               "timeout_ms": 500, "stream": true, "context_id": "c"}),
            serde_json::json!({"op": "request", "from": agent, "capability": "c", "skill": "s"}),
            serde_json::json!({"op": "respond", "id": 4, "task_id": "t", "state": "completed",
                               "output": "x".repeat(300)}),
            serde_json::json!({"op": "stream", "id": null, "task_id": "t", "chunk": 1, "final": true}),
            serde_json::json!({"op": "emit", "id": 6, "from": agent, "topic": "a.b", "data": null}),
            serde_json::json!({"op": "subscribe", "id": 7, "agent_id": agent, "pattern": "a.>"}),
            serde_json::json!({"op": "status", "id": 8}),
        ]
    }

    #[test]
    fn the_fast_path_reads_lines_as_the_checked_path_does() {
        for line in sample_lines() {
            let bytes = line.to_string().into_bytes();
            let fast = serde_json::from_slice::<ValidLine>(&bytes).map(|l| (l.id, l.op));
            let checked = parse_line_checked(&bytes);
            match (fast, checked) {
                (Ok(f), Ok(c)) => assert_eq!(format!("{f:?}"), format!("{c:?}"), "{line}"),
                (f, c) => panic!("{line}: fast {f:?}, checked {c:?}"),
            }
        }
    }

    proptest! {
        /// Whatever the fast path accepts, the checked path reads the same way.
        #[test]
        fn fast_and_checked_paths_agree(op in prop::sample::select(OP_NAMES), field in "[a-z_]{1,12}",
                                        val in prop_oneof![Just(Value::Null), any::<u64>().prop_map(Value::from),
                                                           ".{0,12}".prop_map(Value::from)],
                                        id in prop_oneof![Just(Value::Null), any::<i64>().prop_map(Value::from)]) {
            let line = serde_json::json!({"op": op, "id": id, field: val}).to_string();
            if let Ok(fast) = serde_json::from_slice::<ValidLine>(line.as_bytes()) {
                let checked = parse_line_checked(line.as_bytes());
                prop_assert!(checked.is_ok(), "{} accepted only by the fast path", line);
                if let Ok(c) = checked {
                    prop_assert_eq!(format!("{:?}", (fast.id, fast.op)), format!("{:?}", c));
                }
            }
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_line(&bytes);
        }

        #[test]
        fn json_garbage_never_panics(op in prop::sample::select(OP_NAMES), field in "[a-z_]{1,10}", val in ".{0,10}") {
            let line = serde_json::json!({"op": op, "id": 1, field: val}).to_string();
            let _ = parse_line(line.as_bytes());
        }
    }
}
