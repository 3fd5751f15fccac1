//! Daemon ↔ daemon messages on the QUIC connection between two peers (ALPN
//! `agentmesh-peer/2`), and what daemons leave for each other at the relay.
//!
//! Streams, each message one frame of [`crate::frame`]:
//! - **A request opens its own bidirectional stream.** The requester's daemon writes
//!   [`RequesterFrame::Open`] (an envelope of type `request` whose payload is a
//!   [`RequestPayload`]) and later, if asked, [`RequesterFrame::Continue`] (type
//!   `request`, same `task_id`). The responder's daemon answers on the same stream with
//!   [`ResponderFrame::Update`] (type `respond`, non-terminal state),
//!   [`ResponderFrame::Chunk`] (streamed output) and finally [`ResponderFrame::Final`]
//!   (type `respond`, terminal state), then finishes the stream. Cancel is a stream reset
//!   with [`STREAM_CANCELED`] in either direction.
//! - **An event rides a unidirectional stream**: [`OnewayFrame::Event`] (type `emit`, an
//!   [`EventPayload`]).
//! - **Store-and-forward**: a request whose responder's daemon cannot be reached is
//!   sealed to that daemon's node key ([`crate::sealed`]) as a [`StoredFrame`] and left at
//!   the relay. When the relay delivers it and the agent is registered there, that daemon
//!   sends [`OnewayFrame::MailReady`] to the requester's daemon, which sends the same
//!   `Open` again on a stream of its own; the task then runs as any other.
//!
//! Every envelope has an id; a receiver drops ids it has seen ([`RecentIds`]), so a retry
//! after a path change never runs a task twice.
//!
//! Peer frames carry version [`PEER_FRAME_VERSION`] ([`encode_frame`], [`decode_frame`]):
//! envelopes and chunks in the binary forms of [`crate::binary`], never as JSON text.
//! A frame of another version (version 1 carried each envelope as JSON text) is refused
//! with [`FrameError::Version`]. [`StoredFrame`] is not a stream frame: it keeps the
//! envelope's default binary form (JSON text), so mail already at a relay stays readable.

use std::collections::{HashSet, VecDeque};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::frame::{self, FrameError};
use crate::json::Json;
use crate::task::TaskState;
use crate::topic::Subject;

/// QUIC application error code of a stream reset that cancels a task.
pub const STREAM_CANCELED: u32 = 0x0a11;
/// QUIC application error code of a stream reset by a daemon shutting down.
pub const STREAM_SHUTDOWN: u32 = 0x0a12;

/// Version byte of peer frames: 2 = binary envelope body ([`crate::binary`]).
pub const PEER_FRAME_VERSION: u8 = 2;

/// Encodes a peer frame (version [`PEER_FRAME_VERSION`]), refusing frames over `max`.
pub fn encode_frame<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    frame::encode_version(msg, max, PEER_FRAME_VERSION)
}

/// Decodes a peer frame from the start of `buf`, as [`frame::decode`] does; a frame of
/// another version is [`FrameError::Version`].
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    frame::decode_version(buf, max, PEER_FRAME_VERSION)
}

/// Requester → responder, on a request's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RequesterFrame {
    /// The request (first frame).
    Open(#[serde(with = "crate::binary::envelope")] Envelope),
    /// The answer to `input_required` / `auth_required`.
    Continue(#[serde(with = "crate::binary::envelope")] Envelope),
}

/// Responder → requester, on a request's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResponderFrame {
    /// A non-terminal state change (`respond` envelope).
    Update(#[serde(with = "crate::binary::envelope")] Envelope),
    /// A streamed chunk of output.
    Chunk {
        /// Task the chunk belongs to.
        task_id: String,
        /// Position, from 0.
        seq: u64,
        /// The chunk.
        #[serde(with = "crate::binary::json")]
        chunk: Json,
        /// Whether it is the last chunk.
        last: bool,
    },
    /// The terminal state (`respond` envelope); the stream ends after it.
    Final(#[serde(with = "crate::binary::envelope")] Envelope),
}

/// On a unidirectional stream.
// Events are the common frame; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OnewayFrame {
    /// A published event (`emit` envelope).
    Event(#[serde(with = "crate::binary::envelope")] Envelope),
    /// A stored request for `task_id` reached its responder's daemon and the agent is
    /// there: send its `Open` again (responder's daemon → requester's daemon).
    MailReady {
        /// The task of the stored request.
        task_id: String,
    },
}

/// What a daemon seals to another daemon's node key and leaves at the relay when that
/// daemon cannot be reached (store-and-forward).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoredFrame {
    /// A request (`request` envelope, as in [`RequesterFrame::Open`]) for an agent there.
    Request(Envelope),
}

/// Payload of a `request` envelope (AgentMesh v0.1.0 `RequestPayload`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RequestPayload {
    /// Skill to run.
    pub skill: String,
    /// Skill input.
    #[serde(default)]
    pub input: Json,
    /// Caller's options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RequestConfig>,
}

crate::json_in_binary!(RequestPayload);

/// Options of a request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RequestConfig {
    /// Caller's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Whether the caller wants streamed chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
}

crate::json_in_binary!(RequestConfig);

/// Payload of a `respond` envelope (AgentMesh v0.1.0 `RespondPayload`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RespondPayload {
    /// The new state.
    pub status: TaskState,
    /// Human-readable status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Result data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Json>,
}

crate::json_in_binary!(RespondPayload);

/// Payload of an `emit` envelope: the reference's `domain`/`event_type` when the subject
/// has the shape `mesh.event.{domain}.{event_type}`, plus the full subject (agentmesh
/// subjects may have any shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct EventPayload {
    /// The subject published on.
    pub topic: Subject,
    /// Reference `domain`, from the subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Reference `event_type`, from the subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Event data.
    #[serde(default)]
    pub data: Json,
}

crate::json_in_binary!(EventPayload);

impl EventPayload {
    /// An event on `topic`, filling `domain`/`event_type` for `mesh.event.*.*` subjects.
    pub fn new(topic: Subject, data: Json) -> Self {
        let tokens: Vec<&str> = topic.as_str().split('.').collect();
        let (domain, event_type) = match tokens.as_slice() {
            ["mesh", "event", d, e] => (Some((*d).to_string()), Some((*e).to_string())),
            _ => (None, None),
        };
        EventPayload {
            topic,
            domain,
            event_type,
            data,
        }
    }
}

/// A bounded memory of envelope ids already handled, oldest forgotten first.
#[derive(Debug)]
pub struct RecentIds {
    seen: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    /// Remembers up to `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        RecentIds {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether `id` is new; it is remembered either way.
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::{decode_frame as decode, encode_frame as encode};
    use crate::envelope::{PrimitiveType, TraceContext};
    use crate::frame::DEFAULT_MAX_FRAME;
    use crate::id::SecretKey;
    use proptest::prelude::*;

    fn envelope(id: &str, kind: PrimitiveType, payload: serde_json::Value) -> Envelope {
        let from = SecretKey::from_bytes(&[1; 32]).agent_id();
        let mut e = Envelope::new(
            id,
            kind,
            "2026-11-21T00:00:00Z",
            from,
            TraceContext::default(),
        );
        e.payload = Some(Json(payload));
        e
    }

    #[test]
    fn payloads_read_the_reference_shapes() {
        let req: RequestPayload = serde_json::from_value(serde_json::json!({
            "skill": "translate", "input": {"text": "Hello"}, "config": {"timeout_ms": 30000}
        }))
        .unwrap();
        assert_eq!(req.config.unwrap().timeout_ms, Some(30000));
        let resp: RespondPayload = serde_json::from_value(serde_json::json!({
            "status": "completed", "output": {"text": "Bonjour"}
        }))
        .unwrap();
        assert_eq!(resp.status, TaskState::Completed);
        let ev = EventPayload::new("mesh.event.user.login".parse().unwrap(), Json::null());
        assert_eq!(
            (ev.domain.as_deref(), ev.event_type.as_deref()),
            (Some("user"), Some("login"))
        );
        let other = EventPayload::new("jobs.done".parse().unwrap(), Json::null());
        assert_eq!(other.domain, None);
    }

    #[test]
    fn recent_ids_drop_duplicates_and_forget_the_oldest() {
        let mut r = RecentIds::new(2);
        assert!(r.first_time("a"));
        assert!(!r.first_time("a"));
        assert!(r.first_time("b"));
        assert!(r.first_time("c")); // forgets "a"
        assert!(r.first_time("a"));
        assert!(!r.first_time("c"));
        assert_eq!(r.len(), 2);
    }

    fn full_envelope() -> Envelope {
        let mut e = envelope(
            "m-1",
            PrimitiveType::Respond,
            serde_json::json!({"status": "completed", "output": {"text": "a\"b\\c\n", "n": [1, -2, 2.5, null, true]}}),
        );
        e.to = Some(SecretKey::from_bytes(&[2; 32]).agent_id());
        e.task_id = Some("t-1".into());
        e.in_reply_to = Some("m-0".into());
        e.context_id = Some("c-1".into());
        e.trace.trace_id = "tr".into();
        e.trace.span_id = "sp".into();
        e.trace.parent_span_id = Some("pa".into());
        e.artifacts = vec![crate::envelope::Artifact {
            id: "a1".into(),
            name: "out".into(),
            media_type: "text/plain".into(),
            parts: vec![Json(serde_json::json!({"text": "x"}))],
            created_at: None,
            meta: Some(Json(serde_json::json!({"k": 1}))),
        }];
        e.error = Some(crate::ErrorObject::new(
            crate::ErrorCode::InternalError,
            "x",
        ));
        e.meta = Some(Json(serde_json::json!({"m": "v"})));
        e
    }

    #[test]
    fn every_envelope_field_crosses_a_frame() {
        let e = full_envelope();
        for f in [ResponderFrame::Update(e.clone()), ResponderFrame::Final(e)] {
            let b = encode(&f, DEFAULT_MAX_FRAME).unwrap();
            assert_eq!(
                decode::<ResponderFrame>(&b, DEFAULT_MAX_FRAME)
                    .unwrap()
                    .unwrap(),
                (f, b.len())
            );
        }
        let mut bare = envelope("m-2", PrimitiveType::Request, serde_json::json!(null));
        bare.payload = None;
        let f = RequesterFrame::Continue(bare);
        let b = encode(&f, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(
            decode::<RequesterFrame>(&b, DEFAULT_MAX_FRAME)
                .unwrap()
                .unwrap()
                .0,
            f
        );
    }

    #[test]
    fn the_payload_is_not_json_text_in_a_frame() {
        let text = "say \"hi\"\n".repeat(1000);
        let f = RequesterFrame::Open(envelope(
            "m-3",
            PrimitiveType::Request,
            serde_json::json!({"skill": "echo", "input": text}),
        ));
        let b = encode(&f, DEFAULT_MAX_FRAME).unwrap();
        // The input's bytes appear as they are (JSON text would escape the quotes).
        assert!(b.windows(text.len()).any(|w| w == text.as_bytes()));
        assert_eq!(b[4], PEER_FRAME_VERSION);
    }

    #[test]
    fn version_1_frames_are_refused_by_version() {
        let f = RequesterFrame::Open(envelope(
            "m-4",
            PrimitiveType::Request,
            serde_json::json!({"skill": "echo"}),
        ));
        let old = crate::frame::encode(&f, DEFAULT_MAX_FRAME).unwrap();
        let err = decode::<RequesterFrame>(&old, DEFAULT_MAX_FRAME).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Version {
                    got: 1,
                    supported: PEER_FRAME_VERSION
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("frame version 1 is not supported"));
        // And a version-2 frame is not a version-1 message.
        let new = encode(&f, DEFAULT_MAX_FRAME).unwrap();
        assert!(crate::frame::decode::<RequesterFrame>(&new, DEFAULT_MAX_FRAME).is_err());
    }

    #[test]
    fn stored_frames_keep_their_form() {
        // Mail at the relay was sealed by older builds: StoredFrame is unchanged.
        let e = full_envelope();
        let stored = StoredFrame::Request(e.clone());
        let b = crate::frame::to_bytes(&stored).unwrap();
        let old_form = crate::frame::to_bytes(&(0u32, serde_json::to_string(&e).unwrap())).unwrap();
        assert_eq!(b, old_form);
    }

    proptest! {
        #[test]
        fn frames_round_trip(id in "[a-z0-9-]{1,24}", seq in any::<u64>(), text in ".{0,40}", last in any::<bool>()) {
            let open = RequesterFrame::Open(envelope(&id, PrimitiveType::Request,
                serde_json::json!({"skill": "echo", "input": text})));
            let f = encode(&open, DEFAULT_MAX_FRAME).unwrap();
            prop_assert_eq!(decode::<RequesterFrame>(&f, DEFAULT_MAX_FRAME).unwrap().unwrap().0, open);
            let chunk = ResponderFrame::Chunk { task_id: id.clone(), seq, chunk: Json(serde_json::json!(text)), last };
            let f = encode(&chunk, DEFAULT_MAX_FRAME).unwrap();
            prop_assert_eq!(decode::<ResponderFrame>(&f, DEFAULT_MAX_FRAME).unwrap().unwrap().0, chunk);
            let ev = OnewayFrame::Event(envelope(&id, PrimitiveType::Emit, serde_json::json!({"topic": "a.b", "data": text})));
            let f = encode(&ev, DEFAULT_MAX_FRAME).unwrap();
            prop_assert_eq!(decode::<OnewayFrame>(&f, DEFAULT_MAX_FRAME).unwrap().unwrap().0, ev);
            let ready = OnewayFrame::MailReady { task_id: id.clone() };
            let f = encode(&ready, DEFAULT_MAX_FRAME).unwrap();
            prop_assert_eq!(decode::<OnewayFrame>(&f, DEFAULT_MAX_FRAME).unwrap().unwrap().0, ready);
            let stored = StoredFrame::Request(envelope(&id, PrimitiveType::Request,
                serde_json::json!({"skill": "echo", "input": text})));
            let b = crate::frame::to_bytes(&stored).unwrap();
            prop_assert_eq!(crate::frame::from_bytes::<StoredFrame>(&b).unwrap(), stored);
            let p = RequestPayload { skill: id, input: Json(serde_json::json!(text)), config: Some(RequestConfig { timeout_ms: Some(seq), stream: Some(last) }) };
            let b = crate::frame::to_bytes(&p).unwrap();
            prop_assert_eq!(crate::frame::from_bytes::<RequestPayload>(&b).unwrap(), p);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<RequesterFrame>(&bytes, DEFAULT_MAX_FRAME);
            let _ = decode::<ResponderFrame>(&bytes, DEFAULT_MAX_FRAME);
            let _ = decode::<OnewayFrame>(&bytes, DEFAULT_MAX_FRAME);
            let _ = crate::frame::from_bytes::<StoredFrame>(&bytes);
        }
    }
}
