//! Sealed messages for store-and-forward: Noise one-way `X` pattern to a node's static key.
//!
//! A daemon seals a message to an offline peer's node id; the relay stores the result and
//! cannot read it (it holds no key that could). The X25519 static keys are the Ed25519
//! node keys converted (secret: `to_scalar_bytes()`, public: `to_montgomery()`), so no
//! extra key has to be published. The pattern (`Noise_X_25519_ChaChaPoly_BLAKE2s`, prologue
//! `agentmesh-sealed/1`) also authenticates the sender's static key; the sender's node id
//! travels inside the encrypted payload and must match it.
//!
//! Layout: `version: u8 (1)`, then chunks `len: u16 BE | noise message`. The first chunk is
//! the handshake message, whose payload is `sender: [u8; 32] | total_len: u64 BE | data`;
//! further chunks are Noise transport messages carrying the rest of the data, so messages
//! of any size are sealed and reordering, removal or truncation of chunks is detected.

use ed25519_dalek::VerifyingKey;

use crate::id::{NodeId, SecretKey};

const PATTERN: &str = "Noise_X_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE: &[u8] = b"agentmesh-sealed/1";
/// Format version (first byte of a sealed message).
pub const SEALED_VERSION: u8 = 1;
const MAX_NOISE: usize = 65535;
const TAG: usize = 16;
/// Handshake overhead: ephemeral key, encrypted static key, payload tag.
const HANDSHAKE_OVERHEAD: usize = 32 + 32 + TAG + TAG;
const HEADER: usize = 32 + 8;
const FIRST_CHUNK: usize = MAX_NOISE - HANDSHAKE_OVERHEAD - HEADER;
const NEXT_CHUNK: usize = MAX_NOISE - TAG;

/// Why a message could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The sealed bytes end too early or have bytes left over.
    #[error("sealed message is malformed (truncated or trailing bytes)")]
    Malformed,
    /// Unknown format version.
    #[error("sealed message version {got} is not supported")]
    Version {
        /// Version found.
        got: u8,
    },
    /// Noise failed: not sealed to this key, or tampered with.
    #[error("sealed message does not decrypt: {0}")]
    Noise(#[source] snow::Error),
    /// The sender id inside does not match the key that sealed it.
    #[error("sealed message claims a sender that did not seal it")]
    SenderMismatch,
    /// The length announced inside does not match the data.
    #[error("sealed message announces {announced} bytes but holds {got}")]
    Length {
        /// Announced length.
        announced: u64,
        /// Bytes found.
        got: u64,
    },
}

fn params() -> Result<snow::params::NoiseParams, SealError> {
    PATTERN
        .parse()
        .map_err(|e: snow::Error| SealError::Noise(e))
}

fn x25519_public(node: &NodeId) -> Result<[u8; 32], SealError> {
    let key = VerifyingKey::from_bytes(node.as_bytes()).map_err(|_| SealError::SenderMismatch)?;
    Ok(key.to_montgomery().to_bytes())
}

fn push_chunk(out: &mut Vec<u8>, chunk: &[u8]) {
    // Chunks are at most MAX_NOISE (u16::MAX) bytes by construction.
    let len = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(chunk);
}

/// Seals `plaintext` from `sender` so that only `recipient` can open it.
pub fn seal(sender: &SecretKey, recipient: NodeId, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let secret = sender.signing_key().to_scalar_bytes();
    let remote = x25519_public(&recipient)?;
    let mut hs = snow::Builder::new(params()?)
        .local_private_key(&secret)
        .and_then(|b| b.remote_public_key(&remote))
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(|b| b.build_initiator())
        .map_err(SealError::Noise)?;
    let (first, rest) = plaintext.split_at(plaintext.len().min(FIRST_CHUNK));
    let mut payload = Vec::with_capacity(HEADER + first.len());
    payload.extend_from_slice(sender.node_id().as_bytes());
    payload.extend_from_slice(&(plaintext.len() as u64).to_be_bytes());
    payload.extend_from_slice(first);
    let mut buf = vec![0u8; MAX_NOISE];
    let mut out = Vec::with_capacity(plaintext.len() + 128);
    out.push(SEALED_VERSION);
    let n = hs
        .write_message(&payload, &mut buf)
        .map_err(SealError::Noise)?;
    push_chunk(&mut out, &buf[..n]);
    let mut transport = hs.into_transport_mode().map_err(SealError::Noise)?;
    for chunk in rest.chunks(NEXT_CHUNK) {
        let n = transport
            .write_message(chunk, &mut buf)
            .map_err(SealError::Noise)?;
        push_chunk(&mut out, &buf[..n]);
    }
    Ok(out)
}

fn next_chunk<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], SealError> {
    let (len, rest) = input.split_first_chunk::<2>().ok_or(SealError::Malformed)?;
    let len = u16::from_be_bytes(*len) as usize;
    let chunk = rest.get(..len).ok_or(SealError::Malformed)?;
    *input = &rest[len..];
    Ok(chunk)
}

/// Opens a message sealed to `recipient`; returns the authenticated sender and the plaintext.
pub fn open(recipient: &SecretKey, sealed: &[u8]) -> Result<(NodeId, Vec<u8>), SealError> {
    let (&version, mut input) = sealed.split_first().ok_or(SealError::Malformed)?;
    if version != SEALED_VERSION {
        return Err(SealError::Version { got: version });
    }
    let secret = recipient.signing_key().to_scalar_bytes();
    let mut hs = snow::Builder::new(params()?)
        .local_private_key(&secret)
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(|b| b.build_responder())
        .map_err(SealError::Noise)?;
    let mut buf = vec![0u8; MAX_NOISE];
    let n = hs
        .read_message(next_chunk(&mut input)?, &mut buf)
        .map_err(SealError::Noise)?;
    let payload = &buf[..n];
    let (sender, rest) = payload
        .split_first_chunk::<32>()
        .ok_or(SealError::Malformed)?;
    let sender = NodeId::from_bytes(*sender).map_err(|_| SealError::SenderMismatch)?;
    if hs.get_remote_static() != Some(&x25519_public(&sender)?[..]) {
        return Err(SealError::SenderMismatch);
    }
    let (total, first) = rest.split_first_chunk::<8>().ok_or(SealError::Malformed)?;
    let total = u64::from_be_bytes(*total);
    let mut plaintext = first.to_vec();
    let mut transport = hs.into_transport_mode().map_err(SealError::Noise)?;
    while !input.is_empty() && (plaintext.len() as u64) < total {
        let n = transport
            .read_message(next_chunk(&mut input)?, &mut buf)
            .map_err(SealError::Noise)?;
        plaintext.extend_from_slice(&buf[..n]);
    }
    if !input.is_empty() {
        return Err(SealError::Malformed);
    }
    if plaintext.len() as u64 != total {
        return Err(SealError::Length {
            announced: total,
            got: plaintext.len() as u64,
        });
    }
    Ok((sender, plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn large_messages_span_chunks_and_truncation_is_detected() {
        let (a, b) = (key(1), key(2));
        let msg: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let sealed = seal(&a, b.node_id(), &msg).unwrap();
        let (from, back) = open(&b, &sealed).unwrap();
        assert_eq!((from, back), (a.node_id(), msg));
        // Drop the last chunk: still well-formed chunks, but short.
        let last = sealed.len() - (200_000 - FIRST_CHUNK - NEXT_CHUNK * 2) - TAG - 2;
        assert!(matches!(
            open(&b, &sealed[..last]),
            Err(SealError::Length { .. })
        ));
        assert!(open(&b, &sealed[..sealed.len() - 1]).is_err());
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext() {
        let marker = b"PLAINTEXT-MARKER-0123456789";
        let sealed = seal(&key(1), key(2).node_id(), marker).unwrap();
        assert!(!sealed.windows(marker.len()).any(|w| w == marker));
    }

    #[test]
    fn forged_sender_is_refused() {
        // Mallory seals with her key; the payload names her, so the id check passes only
        // for her id: open() must report Mallory, never Alice.
        let (alice, bob, mallory) = (key(1), key(2), key(3));
        let sealed = seal(&mallory, bob.node_id(), b"hi").unwrap();
        let (from, _) = open(&bob, &sealed).unwrap();
        assert_ne!(from, alice.node_id());
        assert_eq!(from, mallory.node_id());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn round_trip(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(),
                      msg in prop::collection::vec(any::<u8>(), 0..2000)) {
            let (a, b) = (SecretKey::from_bytes(&a), SecretKey::from_bytes(&b));
            let sealed = seal(&a, b.node_id(), &msg).unwrap();
            let (from, back) = open(&b, &sealed).unwrap();
            prop_assert_eq!(from, a.node_id());
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn tampering_is_detected(msg in prop::collection::vec(any::<u8>(), 0..300),
                                 pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let (a, b) = (key(1), key(2));
            let mut sealed = seal(&a, b.node_id(), &msg).unwrap();
            let i = pos.index(sealed.len());
            sealed[i] ^= flip;
            prop_assert!(open(&b, &sealed).is_err());
        }

        #[test]
        fn wrong_recipient_fails(msg in prop::collection::vec(any::<u8>(), 0..300), c in 3u8..=255) {
            let sealed = seal(&key(1), key(2).node_id(), &msg).unwrap();
            prop_assert!(open(&key(c), &sealed).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = open(&key(2), &bytes);
        }
    }
}
