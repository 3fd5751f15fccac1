//! The envelopes this router puts in [`PeerMsg`]s and reads out of them: building a
//! `request` (open / continue), a `respond` (update / final) and an `emit`, and reading
//! their payloads back, refusing what does not fit (never unwrapping peer data).

use agentmesh_proto::peer::{EventPayload, RequestConfig, RequestPayload, RespondPayload};
use agentmesh_proto::{
    AgentId, Envelope, ErrorCode, ErrorObject, Json, PrimitiveType, Subject, TaskState,
    TraceContext,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{iso8601, uuid_v7, Now};

/// Who a task envelope is from and to, and which task it belongs to.
pub(super) struct TaskAddr<'a> {
    pub(super) from: AgentId,
    pub(super) to: AgentId,
    pub(super) task_id: &'a str,
    pub(super) context_id: Option<&'a str>,
}

/// A new envelope of `kind` made now, with a fresh UUID v7 id.
fn base(now: Now, kind: PrimitiveType, from: AgentId) -> Envelope {
    let id = uuid_v7(now.wall);
    let trace = TraceContext {
        trace_id: id.clone(),
        span_id: id.clone(),
        parent_span_id: None,
    };
    Envelope::new(id, kind, iso8601(now.wall), from, trace)
}

fn task_envelope(now: Now, kind: PrimitiveType, addr: &TaskAddr<'_>) -> Envelope {
    let mut e = base(now, kind, addr.from);
    e.to = Some(addr.to);
    e.task_id = Some(addr.task_id.to_string());
    e.context_id = addr.context_id.map(str::to_string);
    e
}

/// `p` as a JSON payload, with `big` (the input, output or data, left empty in `p`)
/// moved in under `key`: serialising it as part of `p` would copy it.
fn payload_of<T: Serialize>(p: &T, key: &str, big: Option<Json>) -> Option<Json> {
    let mut v = serde_json::to_value(p).ok()?;
    if let (serde_json::Value::Object(m), Some(Json(big))) = (&mut v, big) {
        m.insert(key.to_string(), big);
    }
    Some(Json(v))
}

/// The `request` envelope that opens a task on the responder's daemon (or continues it:
/// then `skill` is the task's skill and `input` the answer asked for).
pub(super) fn request(
    now: Now,
    addr: &TaskAddr<'_>,
    skill: &str,
    input: Json,
    config: Option<RequestConfig>,
) -> Envelope {
    let mut e = task_envelope(now, PrimitiveType::Request, addr);
    let p = RequestPayload {
        skill: skill.to_string(),
        input: Json::null(),
        config,
    };
    e.payload = payload_of(&p, "input", Some(input));
    e
}

/// A `respond` envelope (an update, or the final answer when `status` is terminal).
pub(super) fn respond(
    now: Now,
    addr: &TaskAddr<'_>,
    status: TaskState,
    message: Option<String>,
    output: Option<Json>,
    error: Option<ErrorObject>,
) -> Envelope {
    let mut e = task_envelope(now, PrimitiveType::Respond, addr);
    let p = RespondPayload {
        status,
        message,
        output: None,
    };
    e.payload = payload_of(&p, "output", output);
    e.error = error;
    e
}

/// An `emit` envelope for `topic`.
pub(super) fn event(now: Now, from: AgentId, topic: Subject, data: Json) -> Envelope {
    let mut e = base(now, PrimitiveType::Emit, from);
    let p = EventPayload::new(topic, Json::null());
    e.payload = payload_of(&p, "data", Some(data));
    e
}

/// Reads an envelope's payload as `T`, checking its type first.
pub(super) fn payload<T: DeserializeOwned>(
    e: &Envelope,
    kind: PrimitiveType,
) -> Result<T, ErrorObject> {
    let Some(Json(value)) = &e.payload else {
        return Err(no_payload(e));
    };
    check_kind(e, kind)?;
    T::deserialize(value).map_err(|err| bad_payload(e, &err))
}

/// Like [`payload`], but moves the payload out of `e` instead of copying it (a large
/// input is then never duplicated).
pub(super) fn take_payload<T: DeserializeOwned>(
    e: &mut Envelope,
    kind: PrimitiveType,
) -> Result<T, ErrorObject> {
    check_kind(e, kind)?;
    let Some(Json(value)) = e.payload.take() else {
        return Err(no_payload(e));
    };
    serde_json::from_value(value).map_err(|err| bad_payload(e, &err))
}

fn check_kind(e: &Envelope, kind: PrimitiveType) -> Result<(), ErrorObject> {
    if e.kind == kind {
        return Ok(());
    }
    Err(ErrorObject::new(
        ErrorCode::InvalidEnvelope,
        format!("envelope {} has type {:?}, expected {kind:?}", e.id, e.kind),
    ))
}

fn no_payload(e: &Envelope) -> ErrorObject {
    ErrorObject::new(
        ErrorCode::InvalidEnvelope,
        format!("envelope {} has no payload", e.id),
    )
}

fn bad_payload(e: &Envelope, err: &serde_json::Error) -> ErrorObject {
    ErrorObject::new(
        ErrorCode::InvalidEnvelope,
        format!("envelope {} payload: {err}", e.id),
    )
}
