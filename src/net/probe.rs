//! Hole-punch probes: small messages sealed with Noise (`X` pattern, see
//! `agentmesh_proto::sealed`) to the peer's node key, so only the peer can read them and
//! it knows they come from us: a stranger cannot steer a path by forging probes.
//!
//! Datagram: [`PROBE_MAGIC`](super::demux::PROBE_MAGIC) then the sealed bincode
//! [`ProbeBody`].

use std::net::SocketAddr;

use agentmesh_proto::frame::{self, FrameError};
use agentmesh_proto::sealed::{self, SealError};
use agentmesh_proto::{NodeId, SecretKey};
use serde::{Deserialize, Serialize};

use super::demux::PROBE_MAGIC;

/// Largest probe datagram accepted.
pub const MAX_PROBE: usize = 512;

/// Ping or pong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeKind {
    /// "Can you hear me?" Answered with a pong to the address it came from.
    Ping,
    /// The answer, echoing the ping's nonce.
    Pong,
}

/// What a probe says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeBody {
    /// Ping or pong.
    pub kind: ProbeKind,
    /// The introduction (punch session) this probe belongs to.
    pub session: u64,
    /// Fresh per ping; a pong echoes its ping's nonce.
    pub nonce: u64,
    /// For pongs: the address the ping came from, as the responder saw it.
    pub observed: Option<SocketAddr>,
}

/// Why a probe datagram was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Not a probe datagram, or too large.
    #[error("not a probe datagram ({len} bytes)")]
    NotAProbe {
        /// Datagram length.
        len: usize,
    },
    /// Not sealed to us, tampered with, or malformed.
    #[error("probe does not open: {0}")]
    Seal(#[from] SealError),
    /// The body does not decode.
    #[error("probe body does not decode: {0}")]
    Body(#[from] FrameError),
}

/// Seals a probe for `peer`.
pub fn encode(me: &SecretKey, peer: NodeId, body: &ProbeBody) -> Result<Vec<u8>, ProbeError> {
    let plain = frame::to_bytes(body)?;
    let sealed = sealed::seal(me, peer, &plain)?;
    let mut out = Vec::with_capacity(PROBE_MAGIC.len() + sealed.len());
    out.extend_from_slice(&PROBE_MAGIC);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a probe addressed to us; returns the sender's node id and the body.
pub fn decode(me: &SecretKey, datagram: &[u8]) -> Result<(NodeId, ProbeBody), ProbeError> {
    let not_probe = || ProbeError::NotAProbe {
        len: datagram.len(),
    };
    if datagram.len() > MAX_PROBE {
        return Err(not_probe());
    }
    let sealed = datagram
        .strip_prefix(&PROBE_MAGIC[..])
        .ok_or_else(not_probe)?;
    let (sender, plain) = sealed::open(me, sealed)?;
    Ok((sender, frame::from_bytes(&plain)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32])
    }

    #[test]
    fn round_trip_and_authentication() {
        let body = ProbeBody {
            kind: ProbeKind::Pong,
            session: 7,
            nonce: 99,
            observed: Some("203.0.113.5:4242".parse().unwrap()),
        };
        let d = encode(&key(1), key(2).node_id(), &body).unwrap();
        assert!(d.len() <= MAX_PROBE, "{} bytes", d.len());
        let (from, got) = decode(&key(2), &d).unwrap();
        assert_eq!((from, got), (key(1).node_id(), body));
        assert!(
            decode(&key(3), &d).is_err(),
            "only the addressee can open it"
        );
        let mut tampered = d.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(decode(&key(2), &tampered).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&key(2), &bytes);
            let mut p = PROBE_MAGIC.to_vec();
            p.extend_from_slice(&bytes);
            let _ = decode(&key(2), &p);
        }
    }
}
