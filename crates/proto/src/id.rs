//! Identities: Ed25519 keys and the ids derived from them.
//!
//! A [`NodeId`] names a daemon, an [`AgentId`] names an agent. Both are Ed25519 public
//! keys. Their text form is a one-letter kind prefix (`N` or `A`, as NATS nkeys do)
//! followed by the 32 key bytes in unpadded RFC 4648 base32: 53 characters, safe in
//! subjects, file names and URLs. [`NodeId::short`] gives a 9-character form for logs.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of the text form of an id: prefix + 52 base32 characters.
pub const ID_TEXT_LEN: usize = 53;

/// Why a text or byte string is not a valid id or signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The text has the wrong length.
    #[error("id must be {expected} characters, got {got}")]
    Length {
        /// Expected length.
        expected: usize,
        /// Length found.
        got: usize,
    },
    /// The prefix letter names another kind of id.
    #[error("id must start with '{expected}', got '{got}'")]
    Prefix {
        /// Expected prefix.
        expected: char,
        /// Prefix found.
        got: char,
    },
    /// The body is not base32.
    #[error("id is not valid base32")]
    Encoding,
    /// The bytes are not an Ed25519 public key.
    #[error("id is not a valid Ed25519 public key")]
    NotAKey,
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// Which kind of identity a key stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A daemon (`N…`).
    Node,
    /// An agent (`A…`).
    Agent,
}

impl KeyKind {
    fn prefix(self) -> char {
        match self {
            KeyKind::Node => 'N',
            KeyKind::Agent => 'A',
        }
    }
}

fn encode(kind: KeyKind, bytes: &[u8; 32]) -> String {
    let mut s = String::with_capacity(ID_TEXT_LEN);
    s.push(kind.prefix());
    s.push_str(&BASE32_NOPAD.encode(bytes));
    s
}

fn decode(kind: KeyKind, text: &str) -> Result<[u8; 32], IdError> {
    if text.len() != ID_TEXT_LEN {
        return Err(IdError::Length {
            expected: ID_TEXT_LEN,
            got: text.len(),
        });
    }
    let first = text.chars().next().unwrap_or('?');
    if first != kind.prefix() {
        return Err(IdError::Prefix {
            expected: kind.prefix(),
            got: first,
        });
    }
    let body = text.get(1..).ok_or(IdError::Encoding)?;
    let raw = BASE32_NOPAD
        .decode(body.to_ascii_uppercase().as_bytes())
        .map_err(|_| IdError::Encoding)?;
    let bytes: [u8; 32] = raw.try_into().map_err(|_| IdError::Encoding)?;
    check_key(&bytes)?;
    Ok(bytes)
}

/// Keys this thread already found valid, so an id seen on every message (the sender
/// and recipient of each envelope) is not decompressed again: checking a point costs
/// an Ed25519 field exponentiation, several microseconds, on every decode.
const KNOWN_KEYS_MAX: usize = 1024;

thread_local! {
    static KNOWN_KEYS: std::cell::RefCell<std::collections::HashSet<[u8; 32]>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// Checks that `bytes` are a valid Ed25519 public key (remembering the answer when yes;
/// the set is cleared when full, so it stays bounded).
fn check_key(bytes: &[u8; 32]) -> Result<(), IdError> {
    if KNOWN_KEYS.with(|k| k.borrow().contains(bytes)) {
        return Ok(());
    }
    VerifyingKey::from_bytes(bytes).map_err(|_| IdError::NotAKey)?;
    KNOWN_KEYS.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() >= KNOWN_KEYS_MAX {
            k.clear();
        }
        k.insert(*bytes);
    });
    Ok(())
}

macro_rules! key_id {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The kind of key this id names.
            pub const KIND: KeyKind = $kind;

            /// Wraps raw public-key bytes, checking they are a valid Ed25519 point.
            pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdError> {
                check_key(&bytes)?;
                Ok(Self(bytes))
            }

            /// The raw public-key bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// A 9-character prefix of the text form, for logs and tables.
            pub fn short(&self) -> String {
                let mut s = self.to_string();
                s.truncate(9);
                s
            }

            /// Checks that `signature` over `message` was made by this id's key.
            pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), IdError> {
                let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdError::NotAKey)?;
                let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
                key.verify(message, &sig).map_err(|_| IdError::BadSignature)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&encode(Self::KIND, &self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                decode(Self::KIND, s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_string())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    let b = <[u8; 32]>::deserialize(d)?;
                    Self::from_bytes(b).map_err(serde::de::Error::custom)
                }
            }
        }
    };
}

key_id!(
    /// The id of a daemon: its Ed25519 node public key.
    NodeId,
    KeyKind::Node
);
key_id!(
    /// The id of an agent: its Ed25519 agent public key.
    AgentId,
    KeyKind::Agent
);

/// An Ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", BASE32_NOPAD.encode(&self.0[..6]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&BASE32_NOPAD.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Vec<u8> = if d.is_human_readable() {
            let s = String::deserialize(d)?;
            BASE32_NOPAD
                .decode(s.as_bytes())
                .map_err(serde::de::Error::custom)?
        } else {
            serde_bytes_vec(d)?
        };
        let arr: [u8; 64] = raw
            .try_into()
            .map_err(|_| serde::de::Error::custom("signature must be 64 bytes"))?;
        Ok(Signature(arr))
    }
}

fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(64);
            while let Some(b) = a.next_element::<u8>()? {
                if out.len() >= 64 {
                    return Err(serde::de::Error::custom("signature too long"));
                }
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_bytes(V)
}

/// An Ed25519 secret key: a node's or an agent's.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// Generates a key from the given random source.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(SigningKey::generate(rng))
    }

    /// Generates a key from the operating system's random source.
    pub fn generate_os() -> Self {
        Self::generate(&mut rand_core::OsRng)
    }

    /// Rebuilds a key from its 32 secret bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(bytes))
    }

    /// The 32 secret bytes (handle with care).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public key bytes.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// This key as a node id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.public_bytes())
    }

    /// This key as an agent id.
    pub fn agent_id(&self) -> AgentId {
        AgentId(self.public_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }

    /// The underlying dalek key, for crates that build certificates or Noise keys from it.
    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn text_form_has_prefix_and_length() {
        let k = key(7);
        let n = k.node_id().to_string();
        let a = k.agent_id().to_string();
        assert_eq!(n.len(), ID_TEXT_LEN);
        assert!(n.starts_with('N'));
        assert!(a.starts_with('A'));
        assert_eq!(n[1..], a[1..]);
        assert_eq!(k.node_id().short().len(), 9);
    }

    #[test]
    fn wrong_kind_is_refused() {
        let a = key(1).agent_id().to_string();
        assert_eq!(
            a.parse::<NodeId>(),
            Err(IdError::Prefix {
                expected: 'N',
                got: 'A'
            })
        );
    }

    #[test]
    fn sign_and_verify() {
        let k = key(3);
        let sig = k.sign(b"hello");
        assert!(k.node_id().verify(b"hello", &sig).is_ok());
        assert_eq!(
            k.node_id().verify(b"hellO", &sig),
            Err(IdError::BadSignature)
        );
        assert!(key(4).node_id().verify(b"hello", &sig).is_err());
    }

    #[test]
    fn serde_json_and_bincode_round_trip() {
        let id = key(9).agent_id();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<AgentId>(&json).unwrap(), id);
        let bin = crate::frame::to_bytes(&id).unwrap();
        assert_eq!(crate::frame::from_bytes::<AgentId>(&bin).unwrap(), id);
        let sig = key(9).sign(b"x");
        let bin = crate::frame::to_bytes(&sig).unwrap();
        assert_eq!(crate::frame::from_bytes::<Signature>(&bin).unwrap(), sig);
        let json = serde_json::to_string(&sig).unwrap();
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), sig);
    }

    #[test]
    fn the_known_keys_cache_never_admits_an_invalid_key() {
        let mut invalid = 0;
        for b in 0..=255u8 {
            let bytes = [b; 32];
            let valid = VerifyingKey::from_bytes(&bytes).is_ok();
            invalid += usize::from(!valid);
            for _ in 0..2 {
                assert_eq!(AgentId::from_bytes(bytes).is_ok(), valid, "byte {b}");
                let text = encode(KeyKind::Node, &bytes);
                assert_eq!(text.parse::<NodeId>().is_ok(), valid, "byte {b}");
            }
        }
        assert!(invalid > 0, "the test needs some invalid points");
    }

    proptest! {
        #[test]
        fn any_key_round_trips(seed in any::<[u8; 32]>()) {
            let k = SecretKey::from_bytes(&seed);
            let n = k.node_id();
            prop_assert_eq!(n.to_string().parse::<NodeId>().unwrap(), n);
            let a = k.agent_id();
            prop_assert_eq!(a.to_string().parse::<AgentId>().unwrap(), a);
        }

        #[test]
        fn parsing_garbage_never_panics(s in ".{0,80}") {
            let _ = s.parse::<NodeId>();
            let _ = s.parse::<AgentId>();
        }
    }
}
