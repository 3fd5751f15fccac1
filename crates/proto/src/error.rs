//! Error codes of the agent protocol and the structured error object that carries them.
//!
//! Codes are the strings of the AgentMesh protocol v0.1.0 (`SKILL_NOT_FOUND`, …), each
//! with its retryable default. Peers that send numeric codes are understood too: every
//! code has a stable number (see [`ErrorCode::number`]); unknown strings are kept as
//! [`ErrorCode::Other`] so a newer peer's code is never lost.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::json::Json;

macro_rules! codes {
    ($( $variant:ident = $text:literal, $num:literal, $retry:literal, $doc:literal; )*) => {
        /// An error code of the agent protocol.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( #[doc = $doc] $variant, )*
            /// A code this version does not know, kept verbatim.
            Other(String),
        }

        impl ErrorCode {
            /// Every known code, in table order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The protocol's string for this code.
            pub fn as_str(&self) -> &str {
                match self {
                    $( ErrorCode::$variant => $text, )*
                    ErrorCode::Other(s) => s,
                }
            }

            /// Whether a caller may retry by default (the protocol's table).
            pub fn retryable(&self) -> bool {
                match self {
                    $( ErrorCode::$variant => $retry, )*
                    ErrorCode::Other(_) => false,
                }
            }

            /// The stable numeric form of this code (`None` for unknown codes).
            pub fn number(&self) -> Option<u16> {
                match self {
                    $( ErrorCode::$variant => Some($num), )*
                    ErrorCode::Other(_) => None,
                }
            }

            /// The code with this number, if any.
            pub fn from_number(n: u64) -> Option<ErrorCode> {
                match n {
                    $( $num => Some(ErrorCode::$variant), )*
                    _ => None,
                }
            }

            /// Parses a protocol string; unknown strings become [`ErrorCode::Other`].
            pub fn from_code_str(s: &str) -> ErrorCode {
                match s {
                    $( $text => ErrorCode::$variant, )*
                    other => match other.parse::<u64>().ok().and_then(ErrorCode::from_number) {
                        Some(code) => code,
                        None => ErrorCode::Other(other.to_string()),
                    },
                }
            }
        }
    };
}

codes! {
    TransportTimeout = "TRANSPORT_TIMEOUT", 1001, true, "Request timed out waiting for a reply.";
    TransportNoResponders = "TRANSPORT_NO_RESPONDERS", 1002, false, "Nobody is listening.";
    TransportPermissionDenied = "TRANSPORT_PERMISSION_DENIED", 1003, false, "The transport denies this operation.";
    InvalidEnvelope = "INVALID_ENVELOPE", 2001, false, "Message could not be decoded.";
    InvalidVersion = "INVALID_VERSION", 2002, false, "Protocol version not supported.";
    IdentityMismatch = "IDENTITY_MISMATCH", 2003, false, "Sender does not match the authenticated identity.";
    InvalidManifest = "INVALID_MANIFEST", 2004, false, "Manifest missing required fields.";
    InvalidQuery = "INVALID_QUERY", 2005, false, "Discovery query fails validation.";
    TaskNotFound = "TASK_NOT_FOUND", 3001, false, "No task with this id exists.";
    TaskInvalidTransition = "TASK_INVALID_TRANSITION", 3002, false, "Illegal task state change.";
    TaskNotCancelable = "TASK_NOT_CANCELABLE", 3003, false, "Task is already in a terminal state.";
    TaskExpired = "TASK_EXPIRED", 3004, false, "Task TTL has elapsed.";
    AgentUnavailable = "AGENT_UNAVAILABLE", 4001, true, "Agent is offline or unreachable.";
    AgentOverloaded = "AGENT_OVERLOADED", 4002, true, "Agent is too busy to accept work.";
    SkillNotFound = "SKILL_NOT_FOUND", 4003, false, "Agent does not have the requested skill.";
    InputInvalid = "INPUT_INVALID", 4004, false, "Input does not match the skill's schema.";
    ContentTypeNotSupported = "CONTENT_TYPE_NOT_SUPPORTED", 4005, false, "Requested output modes are not supported.";
    Unauthorized = "UNAUTHORIZED", 4006, false, "Agent lacks permission for this operation.";
    CostLimitExceeded = "COST_LIMIT_EXCEEDED", 4007, false, "Request would exceed the cost budget.";
    InternalError = "INTERNAL_ERROR", 5001, true, "Something went wrong inside the agent.";
    DependencyFailed = "DEPENDENCY_FAILED", 5002, true, "A downstream dependency failed.";
    ContextTooLarge = "CONTEXT_TOO_LARGE", 5003, false, "Input exceeds context size limits.";
    RateLimited = "RATE_LIMITED", 5004, true, "Too many requests.";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ErrorCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an error code string or number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ErrorCode, E> {
                Ok(ErrorCode::from_code_str(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ErrorCode, E> {
                ErrorCode::from_number(v)
                    .ok_or_else(|| E::custom(format!("unknown numeric error code {v}")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ErrorCode, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("negative error code"))
                    .and_then(|n| self.visit_u64(n))
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            d.deserialize_str(V)
        }
    }
}

/// A structured error, as carried in envelopes and local-API replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ErrorObject {
    /// The code, e.g. `SKILL_NOT_FOUND`.
    pub code: ErrorCode,
    /// Human-readable description.
    pub message: String,
    /// Whether the caller may retry.
    pub retryable: bool,
    /// Suggested wait before a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Extra structured context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Json>,
}

crate::json_in_binary!(ErrorObject);

impl ErrorObject {
    /// An error with the code's default retryable flag.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retryable = code.retryable();
        Self {
            code,
            message: message.into(),
            retryable,
            retry_after_ms: None,
            details: None,
        }
    }
}

impl fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorObject {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_as_string_and_number() {
        assert_eq!(ErrorCode::ALL.len(), 23);
        for code in ErrorCode::ALL {
            assert_eq!(&ErrorCode::from_code_str(code.as_str()), code);
            let n = code.number().unwrap();
            assert_eq!(ErrorCode::from_number(n.into()).as_ref(), Some(code));
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(&serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert_eq!(
                &serde_json::from_str::<ErrorCode>(&n.to_string()).unwrap(),
                code
            );
            let bin = crate::frame::to_bytes(code).unwrap();
            assert_eq!(&crate::frame::from_bytes::<ErrorCode>(&bin).unwrap(), code);
        }
    }

    #[test]
    fn retryable_matches_the_reference_table() {
        assert!(ErrorCode::TransportTimeout.retryable());
        assert!(ErrorCode::AgentUnavailable.retryable());
        assert!(ErrorCode::RateLimited.retryable());
        assert!(!ErrorCode::SkillNotFound.retryable());
        assert!(!ErrorCode::TaskInvalidTransition.retryable());
    }

    #[test]
    fn unknown_codes_are_kept() {
        let c: ErrorCode = serde_json::from_str("\"SOMETHING_NEW\"").unwrap();
        assert_eq!(c, ErrorCode::Other("SOMETHING_NEW".into()));
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"SOMETHING_NEW\"");
        assert!(serde_json::from_str::<ErrorCode>("99999").is_err());
        assert_eq!(ErrorCode::from_code_str("4003"), ErrorCode::SkillNotFound);
    }

    #[test]
    fn error_object_crosses_bincode() {
        let mut e = ErrorObject::new(ErrorCode::RateLimited, "slow down");
        e.retry_after_ms = Some(250);
        let bin = crate::frame::to_bytes(&e).unwrap();
        assert_eq!(crate::frame::from_bytes::<ErrorObject>(&bin).unwrap(), e);
    }

    #[test]
    fn error_object_json_shape() {
        let e = ErrorObject::new(ErrorCode::SkillNotFound, "no skill 'x'");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": "SKILL_NOT_FOUND", "message": "no skill 'x'", "retryable": false})
        );
    }
}
