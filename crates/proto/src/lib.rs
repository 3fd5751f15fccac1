//! Wire types shared by every agentmesh component: identities and keys, the agent
//! envelope, manifests and discovery queries, task states, error codes, topic patterns
//! and the binary frame codec. Nothing here opens a socket or reads a clock; the only
//! filesystem access is [`keyfile`], which stores node and agent keys.

pub mod binary;
pub mod discover;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod id;
pub mod json;
pub mod json_text;
pub mod keyfile;
pub mod manifest;
pub mod peer;
pub mod relay;
pub mod rendezvous;
pub mod sealed;
pub mod task;
pub mod topic;

pub use discover::DiscoverQuery;
pub use envelope::{Envelope, PrimitiveType, TraceContext};
pub use error::{ErrorCode, ErrorObject};
pub use id::{AgentId, IdError, KeyKind, NodeId, SecretKey, Signature};
pub use json::Json;
pub use manifest::{Availability, Manifest, Skill};
pub use task::{TaskState, TransitionError};
pub use topic::{Subject, SubjectPattern, TopicError};

/// Version of the agent protocol whose meaning agentmesh follows.
pub const PROTOCOL_VERSION: &str = "0.1.0";
