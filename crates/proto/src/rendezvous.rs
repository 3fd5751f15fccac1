//! Rendezvous wire messages: node sessions, registry, discovery, subscriptions index, introductions.
//!
//! A daemon holds one session with the rendezvous (a QUIC bidirectional stream, or TCP/TLS
//! when UDP is blocked). Both directions carry frames of [`crate::frame`]: the daemon sends
//! [`ClientMsg`], the rendezvous answers with [`ServerMsg`]. Requests carry a `req` number
//! chosen by the client; the answer (`Ok`, `Error`, `Discovered`, `Heartbeat…`) repeats it.
//!
//! Session start: `Hello` → `Challenge` → `Auth` (signature over [`auth_transcript`]) →
//! `Welcome`. Introductions are signed by the rendezvous key over
//! [`Introduction::signed_bytes`], so a daemon that pins the rendezvous id cannot be steered
//! by anyone else.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::discover::DiscoverQuery;
use crate::id::{AgentId, NodeId, SecretKey, Signature};
use crate::manifest::{Availability, Manifest};

/// Version of the rendezvous session protocol carried in `Hello`.
pub const RV_PROTOCOL_VERSION: u16 = 1;
/// Domain separator of the authentication transcript.
pub const AUTH_CONTEXT: &[u8] = b"agentmesh-rv/1 auth";
/// Domain separator of introduction signatures.
pub const INTRO_CONTEXT: &[u8] = b"agentmesh-rv/1 intro";
/// Most candidate addresses a node may report.
pub const MAX_CANDIDATES: usize = 16;
/// Most subscription patterns per node.
pub const MAX_PATTERNS: usize = 256;
/// Most manifests or agent ids in one batch (register, heartbeat, unregister).
pub const MAX_BATCH: usize = 1024;

/// A message from a daemon to the rendezvous.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Opens a session: who I claim to be and which tenant (mesh) I join.
    Hello {
        /// Session protocol version ([`RV_PROTOCOL_VERSION`]).
        version: u16,
        /// The daemon's node id.
        node: NodeId,
        /// Tenant name.
        tenant: String,
    },
    /// Answers the challenge.
    Auth {
        /// The nonce of the challenge being answered.
        nonce: [u8; 32],
        /// The tenant's join token.
        join_token: String,
        /// Node-key signature over [`auth_transcript`].
        signature: Signature,
        /// Candidate addresses the daemon found (local, UPnP, other STUN servers).
        candidates: Vec<SocketAddr>,
        /// The relay the daemon is reachable through, if any.
        home_relay: Option<String>,
    },
    /// Registers or replaces agents (upsert by agent id). Each manifest must be signed.
    Register {
        /// Request number.
        req: u64,
        /// Signed manifests.
        manifests: Vec<Manifest>,
    },
    /// Removes agents of this node.
    Unregister {
        /// Request number.
        req: u64,
        /// Agents to remove.
        agents: Vec<AgentId>,
    },
    /// Batched liveness for this node's agents (every 30 s by default).
    Heartbeat {
        /// Request number.
        req: u64,
        /// Each agent with its current availability.
        agents: Vec<(AgentId, Availability)>,
    },
    /// Replaces the node's candidate addresses and home relay.
    UpdateCandidates {
        /// Request number.
        req: u64,
        /// Candidate addresses.
        candidates: Vec<SocketAddr>,
        /// Home relay.
        home_relay: Option<String>,
    },
    /// Searches the tenant's live agents.
    Discover {
        /// Request number.
        req: u64,
        /// The query.
        query: DiscoverQuery,
    },
    /// Replaces the topic patterns this node wants events for.
    Subscribe {
        /// Request number.
        req: u64,
        /// NATS-style patterns (`mesh.event.>`).
        patterns: Vec<String>,
    },
    /// Asks the rendezvous to introduce this node to `target`.
    Introduce {
        /// Request number.
        req: u64,
        /// The node to reach.
        target: NodeId,
    },
    /// Liveness and RTT probe; answered by `Pong`.
    Ping {
        /// Request number.
        req: u64,
    },
    /// Tells how this node's NAT maps (its own STUN round); answered by `Ok`. A node
    /// that sent it gets its introductions as [`ServerMsg::MappedIntroduction`] (with
    /// the peer's mapping), so each side can choose its many-port role. Added after
    /// version 1: an older rendezvous answers `MalformedFrame` and the session goes on.
    UpdateMapping {
        /// Request number.
        req: u64,
        /// How the node's NAT maps.
        mapping: NatMapping,
    },
}

/// How a node's NAT maps its UDP socket, as the node's own STUN round shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum NatMapping {
    /// No NAT, or not known (too few STUN answers).
    #[default]
    NoneOrUnknown,
    /// One public port for every destination.
    EndpointIndependent,
    /// A new port per destination, in sequence.
    Sequential,
    /// A new random port per destination.
    Random,
}

/// A message from the rendezvous to a daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Proves freshness: the daemon signs this nonce.
    Challenge {
        /// Single-use random nonce.
        nonce: [u8; 32],
        /// The rendezvous's own node id (bound into the transcript).
        server: NodeId,
    },
    /// Session established.
    Welcome {
        /// The authenticated node.
        node: NodeId,
        /// The address the rendezvous sees the daemon at (its reflexive mapping).
        observed: SocketAddr,
        /// How often the daemon should heartbeat, in milliseconds.
        heartbeat_ms: u64,
        /// After how long without a heartbeat an agent goes offline, in milliseconds.
        agent_ttl_ms: u64,
    },
    /// A request succeeded.
    Ok {
        /// Request number.
        req: u64,
    },
    /// A request (or the frame carrying it) was refused.
    Error {
        /// Request number, when the request could be read.
        req: Option<u64>,
        /// Why.
        error: RvError,
    },
    /// Heartbeat processed; agents the rendezvous does not know must be registered again.
    HeartbeatAck {
        /// Request number.
        req: u64,
        /// Agents unknown to the rendezvous (e.g. expired): register them again.
        unknown: Vec<AgentId>,
    },
    /// Discovery results.
    Discovered {
        /// Request number.
        req: u64,
        /// Matching agents, each with the node that hosts it.
        agents: Vec<AgentRecord>,
    },
    /// The tenant's subscription index changed (full snapshot).
    Subscriptions {
        /// Each live node with its patterns.
        entries: Vec<(NodeId, Vec<String>)>,
    },
    /// An introduction: punch towards the peer at the given moment.
    Introduction(SignedIntroduction),
    /// Answers `Ping`.
    Pong {
        /// Request number.
        req: u64,
    },
    /// An introduction with the peer's NAT mapping, sent instead of `Introduction` to
    /// nodes that declared their own mapping (`UpdateMapping`, so they read this
    /// variant). The mapping rides on the authenticated session but outside the
    /// signature: it only chooses the many-port role of the punch.
    MappedIntroduction {
        /// The introduction.
        intro: SignedIntroduction,
        /// How the peer's NAT maps (`NoneOrUnknown` if the peer never said).
        peer_mapping: NatMapping,
    },
}

/// An agent as discovery returns it: its signed manifest (with registry-owned
/// `availability` and `last_heartbeat` filled in) and its host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The daemon hosting the agent.
    pub node: NodeId,
    /// The agent's manifest (signature verifies); shared with the registry's index, so an
    /// answer of many agents copies no manifest.
    pub manifest: std::sync::Arc<Manifest>,
}

/// What the rendezvous tells each side of an introduction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Introduction {
    /// Unique id; a daemon ignores an id it has already seen.
    pub id: u64,
    /// The daemon this introduction is addressed to.
    pub to: NodeId,
    /// The other side.
    pub peer: NodeId,
    /// Whether `to` asked for it (else the peer did).
    pub initiator: bool,
    /// The peer's observed (reflexive) address, first, then its reported candidates.
    pub peer_candidates: Vec<SocketAddr>,
    /// The peer's home relay.
    pub peer_home_relay: Option<String>,
    /// Common start time (Unix milliseconds, rendezvous clock).
    pub start_at_unix_ms: u64,
    /// The same moment as a delay after receipt (computed from the measured RTT), for
    /// daemons whose clock is not synchronised.
    pub start_in_ms: u64,
    /// After this moment (Unix milliseconds) the introduction is stale.
    pub expires_unix_ms: u64,
}

/// An [`Introduction`] with the rendezvous's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedIntroduction {
    /// The introduction.
    pub intro: Introduction,
    /// Signature by the rendezvous key over [`Introduction::signed_bytes`].
    pub signature: Signature,
}

impl Introduction {
    /// The bytes the rendezvous signs: context string then the bincode body.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = INTRO_CONTEXT.to_vec();
        out.extend_from_slice(&crate::frame::to_bytes(self).unwrap_or_default());
        out
    }

    /// Signs with the rendezvous key.
    pub fn sign(self, key: &SecretKey) -> SignedIntroduction {
        let signature = key.sign(&self.signed_bytes());
        SignedIntroduction {
            intro: self,
            signature,
        }
    }
}

impl SignedIntroduction {
    /// Checks the signature against the pinned rendezvous id.
    pub fn verify(&self, server: &NodeId) -> Result<(), crate::id::IdError> {
        server.verify(&self.intro.signed_bytes(), &self.signature)
    }
}

/// The bytes a node signs to authenticate: context, server id, nonce, node id, tenant.
pub fn auth_transcript(server: &NodeId, nonce: &[u8; 32], node: &NodeId, tenant: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(AUTH_CONTEXT.len() + 96 + tenant.len() + 4);
    out.extend_from_slice(AUTH_CONTEXT);
    out.extend_from_slice(server.as_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(&(tenant.len() as u32).to_be_bytes());
    out.extend_from_slice(tenant.as_bytes());
    out
}

/// Why the rendezvous refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RvErrorCode {
    /// The frame could not be decoded.
    MalformedFrame,
    /// The frame is larger than the rendezvous accepts.
    FrameTooLarge,
    /// Unsupported session protocol version.
    UnsupportedVersion,
    /// A request other than `Hello`/`Auth` before authentication, or a second `Hello`.
    NotAuthenticated,
    /// The tenant does not exist.
    UnknownTenant,
    /// Wrong join token.
    BadJoinToken,
    /// The node-key signature does not verify.
    BadSignature,
    /// The `Auth` answers a nonce that is not this session's outstanding challenge.
    ReplayedChallenge,
    /// The claimed node id differs from the TLS-authenticated one.
    IdentityMismatch,
    /// The node is revoked.
    Revoked,
    /// A manifest is unsigned, wrongly signed or invalid.
    InvalidManifest,
    /// The agent belongs to another node of the tenant.
    NotOwner,
    /// The discovery query is invalid.
    InvalidQuery,
    /// A subscription pattern is invalid.
    InvalidPattern,
    /// Too many entries in one request.
    TooMany,
    /// The node asked for is not online in this tenant.
    UnknownNode,
    /// Per-node rate limit exceeded.
    RateLimited,
}

/// A refusal with its code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RvError {
    /// The code.
    pub code: RvErrorCode,
    /// Details for humans.
    pub message: String,
    /// For `RateLimited`: wait this long before retrying.
    pub retry_after_ms: Option<u64>,
}

impl RvError {
    /// An error without a retry hint.
    pub fn new(code: RvErrorCode, message: impl Into<String>) -> Self {
        RvError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode, DEFAULT_MAX_FRAME};
    use crate::manifest::tests::sample;
    use proptest::prelude::*;

    fn node(seed: u8) -> NodeId {
        SecretKey::from_bytes(&[seed; 32]).node_id()
    }

    fn round_trip<T>(msg: &T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let f = encode(msg, DEFAULT_MAX_FRAME).unwrap();
        let (back, used) = decode::<T>(&f, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(used, f.len());
        assert_eq!(&back, msg);
    }

    fn intro(seed: u8, port: u16) -> Introduction {
        Introduction {
            id: u64::from(seed),
            to: node(seed),
            peer: node(seed.wrapping_add(1)),
            initiator: seed % 2 == 0,
            peer_candidates: vec![SocketAddr::from(([203, 0, 113, seed], port))],
            peer_home_relay: Some("relay.example:443".into()),
            start_at_unix_ms: 1_000 + u64::from(port),
            start_in_ms: 120,
            expires_unix_ms: 9_000,
        }
    }

    #[test]
    fn every_client_message_round_trips() {
        let (key, mut m) = sample(4);
        m.sign(&key, "2026-11-21T00:00:00Z");
        let msgs = vec![
            ClientMsg::Hello {
                version: 1,
                node: node(1),
                tenant: "acme".into(),
            },
            ClientMsg::Auth {
                nonce: [7; 32],
                join_token: "t".into(),
                signature: key.sign(b"x"),
                candidates: vec!["[2001:db8::1]:4000".parse().unwrap()],
                home_relay: None,
            },
            ClientMsg::Register {
                req: 1,
                manifests: vec![m.clone()],
            },
            ClientMsg::Unregister {
                req: 2,
                agents: vec![m.id],
            },
            ClientMsg::Heartbeat {
                req: 3,
                agents: vec![(m.id, Availability::Busy)],
            },
            ClientMsg::Discover {
                req: 4,
                query: DiscoverQuery {
                    capabilities: vec!["text".into()],
                    ..DiscoverQuery::default()
                },
            },
            ClientMsg::Subscribe {
                req: 5,
                patterns: vec!["mesh.event.>".into()],
            },
            ClientMsg::Introduce {
                req: 6,
                target: node(2),
            },
            ClientMsg::Ping { req: 7 },
            ClientMsg::UpdateMapping {
                req: 8,
                mapping: NatMapping::Random,
            },
        ];
        for msg in &msgs {
            round_trip(msg);
        }
        let back = match &msgs[2] {
            ClientMsg::Register { manifests, .. } => manifests[0].clone(),
            _ => unreachable!(),
        };
        assert!(back.verify().is_ok());
    }

    #[test]
    fn introductions_verify_only_with_the_server_key() {
        let server = SecretKey::from_bytes(&[9; 32]);
        let signed = intro(3, 5000).sign(&server);
        assert!(signed.verify(&server.node_id()).is_ok());
        assert!(signed.verify(&node(8)).is_err());
        let mut forged = signed.clone();
        forged.intro.peer_candidates = vec![SocketAddr::from(([198, 51, 100, 1], 1))];
        assert!(forged.verify(&server.node_id()).is_err());
        round_trip(&ServerMsg::Introduction(signed));
    }

    #[test]
    fn transcript_binds_every_field() {
        let base = auth_transcript(&node(1), &[0; 32], &node(2), "a");
        assert_ne!(base, auth_transcript(&node(3), &[0; 32], &node(2), "a"));
        assert_ne!(base, auth_transcript(&node(1), &[1; 32], &node(2), "a"));
        assert_ne!(base, auth_transcript(&node(1), &[0; 32], &node(3), "a"));
        assert_ne!(base, auth_transcript(&node(1), &[0; 32], &node(2), "b"));
    }

    proptest! {
        #[test]
        fn server_messages_round_trip(seed in any::<u8>(), port in any::<u16>(), req in any::<u64>(), pats in prop::collection::vec("[a-z]{1,6}", 0..4)) {
            let msgs = vec![
                ServerMsg::Challenge { nonce: [seed; 32], server: node(seed) },
                ServerMsg::Welcome { node: node(seed), observed: SocketAddr::from(([127, 0, 0, 1], port)), heartbeat_ms: 30_000, agent_ttl_ms: 45_000 },
                ServerMsg::Ok { req },
                ServerMsg::Error { req: Some(req), error: RvError { code: RvErrorCode::RateLimited, message: "slow".into(), retry_after_ms: Some(5) } },
                ServerMsg::HeartbeatAck { req, unknown: vec![SecretKey::from_bytes(&[seed; 32]).agent_id()] },
                ServerMsg::Subscriptions { entries: vec![(node(seed), pats.clone())] },
                ServerMsg::Introduction(intro(seed, port).sign(&SecretKey::from_bytes(&[1; 32]))),
                ServerMsg::Pong { req },
                ServerMsg::MappedIntroduction { intro: intro(seed, port).sign(&SecretKey::from_bytes(&[1; 32])), peer_mapping: NatMapping::EndpointIndependent },
            ];
            for m in &msgs {
                round_trip(m);
            }
            round_trip(&ClientMsg::Subscribe { req, patterns: pats });
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = crate::frame::from_bytes::<ClientMsg>(&bytes);
            let _ = crate::frame::from_bytes::<ServerMsg>(&bytes);
        }
    }
}
