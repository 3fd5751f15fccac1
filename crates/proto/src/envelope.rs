//! The envelope that wraps every agent message on the mesh (AgentMesh v0.1.0 fields:
//! `v id type ts from to task_id in_reply_to context_id trace payload artifacts error meta`).
//!
//! Ids and timestamps are given by the caller (this crate reads no clock and no RNG).

use serde::{Deserialize, Serialize};

use crate::error::ErrorObject;
use crate::id::AgentId;
use crate::json::Json;

/// Which primitive an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrimitiveType {
    /// Announce an agent.
    Register,
    /// Search the registry.
    Discover,
    /// Ask an agent to do something (also: answer `input_required`).
    Request,
    /// Move a task to a new state.
    Respond,
    /// Publish an event.
    Emit,
    /// A chunk of a streamed result (agentmesh extension of `mesh.task.{id}.stream`).
    Stream,
    /// Cancel a task (agentmesh extension; the reference cancels by state change).
    Cancel,
}

/// Distributed-tracing context.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct TraceContext {
    /// Trace id, shared by every span of one operation.
    pub trace_id: String,
    /// This span.
    pub span_id: String,
    /// The span that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
}

crate::json_in_binary!(TraceContext);

/// A deliverable attached to a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Artifact {
    /// Artifact id.
    pub id: String,
    /// Name.
    pub name: String,
    /// MIME type.
    pub media_type: String,
    /// Text, data or reference parts.
    pub parts: Vec<Json>,
    /// Creation time (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Json>,
}

crate::json_in_binary!(Artifact);

/// One agent message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Envelope {
    /// Protocol version, e.g. `0.1.0`.
    pub v: String,
    /// Unique message id (UUID v7 when made by agentmesh).
    pub id: String,
    /// Which primitive this is.
    #[serde(rename = "type")]
    pub kind: PrimitiveType,
    /// Creation time (ISO 8601, UTC).
    pub ts: String,
    /// Sender (verified by the transport).
    pub from: AgentId,
    /// Recipient; absent for events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<AgentId>,
    /// Task this message belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Id of the message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    /// Groups related tasks into a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    /// Tracing context (always present).
    #[serde(default)]
    pub trace: TraceContext,
    /// Primitive-specific content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Json>,
    /// Deliverables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// Structured error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject>,
    /// Anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Json>,
}

crate::json_in_binary!(Envelope);

impl Envelope {
    /// A new envelope with the required fields; optional ones empty.
    pub fn new(
        id: impl Into<String>,
        kind: PrimitiveType,
        ts: impl Into<String>,
        from: AgentId,
        trace: TraceContext,
    ) -> Self {
        Envelope {
            v: crate::PROTOCOL_VERSION.into(),
            id: id.into(),
            kind,
            ts: ts.into(),
            from,
            to: None,
            task_id: None,
            in_reply_to: None,
            context_id: None,
            trace,
            payload: None,
            artifacts: Vec::new(),
            error: None,
            meta: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SecretKey;
    use proptest::prelude::*;

    #[test]
    fn reads_the_reference_request_example() {
        let from = SecretKey::from_bytes(&[1; 32]).agent_id();
        let to = SecretKey::from_bytes(&[2; 32]).agent_id();
        let json = serde_json::json!({
            "v": "0.1.0", "id": "msg-003", "type": "request", "ts": "2026-02-12T10:02:00Z",
            "from": from.to_string(), "to": to.to_string(),
            "trace": {"trace_id": "tr-003", "span_id": "sp-003"},
            "payload": {"skill": "translate", "input": {"text": "Hello"}, "config": {"timeout_ms": 30000}}
        });
        let e: Envelope = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(e.kind, PrimitiveType::Request);
        assert_eq!(e.to, Some(to));
        assert_eq!(serde_json::to_value(&e).unwrap(), json);
    }

    proptest! {
        #[test]
        fn round_trips(seed in any::<u8>(), id in "[a-z0-9-]{1,20}", task in proptest::option::of("[a-z0-9-]{1,20}"), text in ".{0,30}") {
            let from = SecretKey::from_bytes(&[seed; 32]).agent_id();
            let mut e = Envelope::new(id, PrimitiveType::Respond, "2026-11-21T00:00:00Z", from,
                TraceContext { trace_id: "t".into(), span_id: "s".into(), parent_span_id: None });
            e.task_id = task;
            e.payload = Some(Json(serde_json::json!({"status": "completed", "output": text})));
            e.error = Some(ErrorObject::new(crate::ErrorCode::InternalError, "x"));
            let json = serde_json::to_string(&e).unwrap();
            prop_assert_eq!(&serde_json::from_str::<Envelope>(&json).unwrap(), &e);
            let bin = crate::frame::to_bytes(&e).unwrap();
            prop_assert_eq!(crate::frame::from_bytes::<Envelope>(&bin).unwrap(), e);
        }
    }
}
