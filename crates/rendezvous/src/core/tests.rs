//! Tests of the sans-IO core with virtual time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_proto::manifest::{Availability, Skill};
use agentmesh_proto::rendezvous::{auth_transcript, ClientMsg, RvErrorCode, ServerMsg};
use agentmesh_proto::{DiscoverQuery, Manifest, NodeId, SecretKey};

use super::*;
use crate::ratelimit::Rate;

const T0_UNIX: u64 = 1_700_000_000_000;

struct Harness {
    s: Server,
    t0: Instant,
    next: u64,
}

fn key(seed: u8) -> SecretKey {
    SecretKey::from_bytes(&[seed; 32])
}

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, last], 40_000 + u16::from(last)))
}

fn manifest(seed: u8, caps: &[&str]) -> Manifest {
    let k = key(100 + seed);
    let mut m = Manifest::new(k.agent_id(), format!("agent-{seed}"));
    m.capabilities = caps.iter().map(|c| c.to_string()).collect();
    m.skills = vec![Skill {
        id: "do".into(),
        ..Skill::default()
    }];
    m.sign(&k, "2026-11-21T00:00:00Z");
    m
}

fn sends(out: &[Output], to: ConnId) -> Vec<ServerMsg> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { conn, msg } if *conn == to => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn error_code(out: &[Output], to: ConnId) -> Option<RvErrorCode> {
    sends(out, to).into_iter().find_map(|m| match m {
        ServerMsg::Error { error, .. } => Some(error.code),
        _ => None,
    })
}

fn closes(out: &[Output], to: ConnId) -> bool {
    out.iter()
        .any(|o| matches!(o, Output::Close { conn, .. } if *conn == to))
}

impl Harness {
    fn new() -> Self {
        let t0 = Instant::now();
        let cfg = CoreConfig {
            limits: Limits {
                discover: Rate::new(1.0, 3.0),
                ..Limits::default()
            },
            ..CoreConfig::default()
        };
        let mut s = Server::new(cfg, key(1), t0, T0_UNIX, 7);
        for (name, token) in [("acme", "tok-a"), ("other", "tok-o")] {
            s.add_tenant(TenantConfig {
                name: name.into(),
                join_token: token.into(),
                revoked: vec![key(66).node_id()],
            });
        }
        Harness { s, t0, next: 1 }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn open(&mut self, now: Instant, seed: u8) -> ConnId {
        let c = ConnId(self.next);
        self.next += 1;
        self.s.connect(now, c, addr(seed), None);
        c
    }

    fn challenge(&mut self, now: Instant, c: ConnId, node: NodeId, tenant: &str) -> [u8; 32] {
        let msg = ClientMsg::Hello {
            version: 1,
            node,
            tenant: tenant.into(),
        };
        let out = self.s.handle_msg(now, c, msg);
        match sends(&out, c).first() {
            Some(ServerMsg::Challenge { nonce, server }) => {
                assert_eq!(*server, key(1).node_id());
                *nonce
            }
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    fn auth_msg(k: &SecretKey, nonce: [u8; 32], tenant: &str, token: &str) -> ClientMsg {
        let transcript = auth_transcript(&key(1).node_id(), &nonce, &k.node_id(), tenant);
        ClientMsg::Auth {
            nonce,
            join_token: token.into(),
            signature: k.sign(&transcript),
            candidates: vec!["192.168.1.5:4000".parse().unwrap()],
            home_relay: Some("relay:443".into()),
        }
    }

    /// Connects and authenticates node `seed` in `tenant`.
    fn login(&mut self, now: Instant, seed: u8, tenant: &str, token: &str) -> ConnId {
        let c = self.open(now, seed);
        let nonce = self.challenge(now, c, key(seed).node_id(), tenant);
        let out = self.s.handle_msg(
            now + Duration::from_millis(40),
            c,
            Self::auth_msg(&key(seed), nonce, tenant, token),
        );
        assert!(
            matches!(sends(&out, c).first(), Some(ServerMsg::Welcome { observed, .. }) if *observed == addr(seed)),
            "{out:?}"
        );
        c
    }

    fn request(&mut self, now: Instant, c: ConnId, msg: ClientMsg) -> Vec<Output> {
        self.s.handle_msg(now, c, msg)
    }

    fn discover(&mut self, now: Instant, c: ConnId, query: DiscoverQuery) -> Vec<Manifest> {
        let out = self.request(now, c, ClientMsg::Discover { req: 9, query });
        match sends(&out, c).pop() {
            Some(ServerMsg::Discovered { agents, .. }) => {
                agents.into_iter().map(|a| (*a.manifest).clone()).collect()
            }
            other => panic!("expected results, got {other:?}"),
        }
    }
}

fn caps(c: &[&str]) -> DiscoverQuery {
    DiscoverQuery {
        capabilities: c.iter().map(|s| s.to_string()).collect(),
        ..DiscoverQuery::default()
    }
}

#[test]
fn authentication_failures_are_typed_counted_and_close() {
    let mut h = Harness::new();
    let now = h.at(0);
    // Wrong signature: signed by another key.
    let c = h.open(now, 2);
    let nonce = h.challenge(now, c, key(2).node_id(), "acme");
    let out = h.request(now, c, Harness::auth_msg(&key(3), nonce, "acme", "tok-a"));
    assert_eq!(error_code(&out, c), Some(RvErrorCode::BadSignature));
    assert!(closes(&out, c));
    // Replayed challenge: a valid answer to an older nonce.
    let old = Harness::auth_msg(&key(2), nonce, "acme", "tok-a");
    let c2 = h.open(now, 2);
    let _fresh = h.challenge(now, c2, key(2).node_id(), "acme");
    let out = h.request(now, c2, old);
    assert_eq!(error_code(&out, c2), Some(RvErrorCode::ReplayedChallenge));
    // Unknown tenant, bad token, revoked node.
    let c3 = h.open(now, 2);
    let out = h.request(
        now,
        c3,
        ClientMsg::Hello {
            version: 1,
            node: key(2).node_id(),
            tenant: "nope".into(),
        },
    );
    assert_eq!(error_code(&out, c3), Some(RvErrorCode::UnknownTenant));
    let c4 = h.open(now, 2);
    let nonce = h.challenge(now, c4, key(2).node_id(), "acme");
    let out = h.request(now, c4, Harness::auth_msg(&key(2), nonce, "acme", "tok-o"));
    assert_eq!(error_code(&out, c4), Some(RvErrorCode::BadJoinToken));
    let c5 = h.open(now, 66);
    let out = h.request(
        now,
        c5,
        ClientMsg::Hello {
            version: 1,
            node: key(66).node_id(),
            tenant: "acme".into(),
        },
    );
    assert_eq!(error_code(&out, c5), Some(RvErrorCode::Revoked));
    let m = h.s.metrics();
    assert_eq!(m.rejected(RvErrorCode::BadSignature), 1);
    assert_eq!(m.rejected(RvErrorCode::ReplayedChallenge), 1);
    assert_eq!(m.sessions_authenticated, 0);
}

#[test]
fn tls_identity_is_pinned() {
    let mut h = Harness::new();
    let c = ConnId(99);
    h.s.connect(h.at(0), c, addr(2), Some(key(3).node_id()));
    let out = h.request(
        h.at(0),
        c,
        ClientMsg::Hello {
            version: 1,
            node: key(2).node_id(),
            tenant: "acme".into(),
        },
    );
    assert_eq!(error_code(&out, c), Some(RvErrorCode::IdentityMismatch));
}

#[test]
fn requests_before_auth_and_bad_frames_keep_the_session() {
    let mut h = Harness::new();
    let c = h.open(h.at(0), 2);
    let out = h.request(h.at(0), c, ClientMsg::Ping { req: 1 });
    assert_eq!(error_code(&out, c), Some(RvErrorCode::NotAuthenticated));
    assert!(!closes(&out, c));
    let out = h.s.handle_fault(h.at(0), c, FrameFault::Malformed);
    assert_eq!(error_code(&out, c), Some(RvErrorCode::MalformedFrame));
    assert!(!closes(&out, c));
    let out = h.s.handle_fault(
        h.at(0),
        c,
        FrameFault::TooLarge {
            len: 1 << 30,
            skipped: false,
        },
    );
    assert_eq!(error_code(&out, c), Some(RvErrorCode::FrameTooLarge));
    assert!(closes(&out, c));
    // Still able to authenticate on a fresh session after the faults.
    let c2 = h.login(h.at(0), 2, "acme", "tok-a");
    let out = h.request(h.at(1), c2, ClientMsg::Ping { req: 5 });
    assert_eq!(sends(&out, c2), vec![ServerMsg::Pong { req: 5 }]);
}

#[test]
fn unauthenticated_sessions_time_out() {
    let mut h = Harness::new();
    let c = h.open(h.at(0), 2);
    assert_eq!(h.s.poll_timeout(), Some(h.at(10_000)));
    assert!(h.s.handle_timeout(h.at(9_999)).is_empty());
    let out = h.s.handle_timeout(h.at(10_000));
    assert!(closes(&out, c));
}

#[test]
fn register_discover_and_tenant_isolation() {
    let mut h = Harness::new();
    let a = h.login(h.at(0), 2, "acme", "tok-a");
    let o = h.login(h.at(0), 3, "other", "tok-o");
    let m1 = manifest(1, &["text", "vision"]);
    let m2 = manifest(2, &["text"]);
    let out = h.request(
        h.at(100),
        a,
        ClientMsg::Register {
            req: 1,
            manifests: vec![m1.clone(), m2.clone()],
        },
    );
    assert_eq!(sends(&out, a), vec![ServerMsg::Ok { req: 1 }]);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Persist(StoreOp::Agent(_))))
            .count(),
        2
    );
    let found = h.discover(h.at(200), a, caps(&["text", "vision"]));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, m1.id);
    assert!(found[0].verify().is_ok(), "results keep valid signatures");
    assert!(found[0]
        .last_heartbeat
        .as_deref()
        .is_some_and(|t| t.starts_with("2023-11-14T")));
    assert_eq!(h.discover(h.at(200), a, caps(&["text"])).len(), 2);
    assert!(
        h.discover(h.at(200), o, caps(&["text"])).is_empty(),
        "tenants never see each other"
    );
    // The same agent id in another tenant is another record.
    h.request(
        h.at(300),
        o,
        ClientMsg::Register {
            req: 2,
            manifests: vec![m2.clone()],
        },
    );
    assert_eq!(h.discover(h.at(400), o, DiscoverQuery::default()).len(), 1);
    assert_eq!(
        h.discover(h.at(400), a, DiscoverQuery::default()).len(),
        2,
        "no duplicates"
    );
}

#[test]
fn bad_manifests_are_refused() {
    let mut h = Harness::new();
    let a = h.login(h.at(0), 2, "acme", "tok-a");
    let mut unsigned = manifest(1, &["x"]);
    unsigned.trust = None;
    let out = h.request(
        h.at(1),
        a,
        ClientMsg::Register {
            req: 1,
            manifests: vec![unsigned],
        },
    );
    assert_eq!(error_code(&out, a), Some(RvErrorCode::InvalidManifest));
    let mut tampered = manifest(1, &["x"]);
    tampered.capabilities.push("admin".into());
    let out = h.request(
        h.at(1),
        a,
        ClientMsg::Register {
            req: 2,
            manifests: vec![tampered],
        },
    );
    assert_eq!(error_code(&out, a), Some(RvErrorCode::InvalidManifest));
    // Registered by node 2: node 4 may not take it over while it is live.
    h.request(
        h.at(1),
        a,
        ClientMsg::Register {
            req: 3,
            manifests: vec![manifest(1, &["x"])],
        },
    );
    let b = h.login(h.at(0), 4, "acme", "tok-a");
    let out = h.request(
        h.at(2),
        b,
        ClientMsg::Register {
            req: 4,
            manifests: vec![manifest(1, &["x"])],
        },
    );
    assert_eq!(error_code(&out, b), Some(RvErrorCode::NotOwner));
    assert_eq!(h.s.metrics().rejected(RvErrorCode::InvalidManifest), 2);
}

#[test]
fn agents_expire_without_heartbeats() {
    let mut h = Harness::new();
    let a = h.login(h.at(0), 2, "acme", "tok-a");
    let m1 = manifest(1, &["x"]);
    let m2 = manifest(2, &["x"]);
    h.request(
        h.at(0),
        a,
        ClientMsg::Register {
            req: 1,
            manifests: vec![m1.clone(), m2.clone()],
        },
    );
    // Only m1 heartbeats at 30 s (and goes busy).
    let out = h.request(
        h.at(30_000),
        a,
        ClientMsg::Heartbeat {
            req: 2,
            agents: vec![(m1.id, Availability::Busy)],
        },
    );
    assert_eq!(
        sends(&out, a),
        vec![ServerMsg::HeartbeatAck {
            req: 2,
            unknown: vec![]
        }]
    );
    assert_eq!(h.s.poll_timeout(), Some(h.at(45_000)));
    let out = h.s.handle_timeout(h.at(45_000));
    assert!(out.iter().any(
        |o| matches!(o, Output::Persist(StoreOp::DeleteAgent { agent, .. }) if *agent == m2.id)
    ));
    let left = h.discover(h.at(45_001), a, DiscoverQuery::default());
    assert_eq!(left.iter().map(|m| m.id).collect::<Vec<_>>(), vec![m1.id]);
    assert_eq!(left[0].availability, Availability::Busy);
    h.s.handle_timeout(h.at(75_000));
    assert!(h
        .discover(h.at(75_001), a, DiscoverQuery::default())
        .is_empty());
    assert_eq!(h.s.metrics().expired_agents, 2);
    let out = h.request(
        h.at(80_000),
        a,
        ClientMsg::Heartbeat {
            req: 3,
            agents: vec![(m1.id, Availability::Online)],
        },
    );
    assert_eq!(
        sends(&out, a),
        vec![ServerMsg::HeartbeatAck {
            req: 3,
            unknown: vec![m1.id]
        }]
    );
}

#[test]
fn declared_mappings_ride_in_introductions_to_nodes_that_declared_theirs() {
    use agentmesh_proto::rendezvous::NatMapping;
    let mut h = Harness::new();
    let a = h.login(h.at(0), 2, "acme", "tok-a");
    let b = h.login(h.at(0), 3, "acme", "tok-a");
    let out = h.request(
        h.at(10),
        a,
        ClientMsg::UpdateMapping {
            req: 1,
            mapping: NatMapping::Random,
        },
    );
    assert_eq!(sends(&out, a), vec![ServerMsg::Ok { req: 1 }]);
    let out = h.request(
        h.at(1_000),
        b,
        ClientMsg::Introduce {
            req: 2,
            target: key(2).node_id(),
        },
    );
    // b never declared its mapping: it gets the version-1 message; a learns that b's
    // mapping is unknown.
    let to_b = sends(&out, b);
    assert!(matches!(to_b[1], ServerMsg::Introduction(_)), "{to_b:?}");
    let Some(ServerMsg::MappedIntroduction {
        intro,
        peer_mapping: NatMapping::NoneOrUnknown,
    }) = sends(&out, a).pop()
    else {
        panic!("{out:?}")
    };
    assert!(intro.verify(&h.s.id()).is_ok());
    let out = h.request(
        h.at(1_100),
        b,
        ClientMsg::UpdateMapping {
            req: 3,
            mapping: NatMapping::EndpointIndependent,
        },
    );
    assert_eq!(sends(&out, b), vec![ServerMsg::Ok { req: 3 }]);
    let out = h.request(
        h.at(5_000),
        a,
        ClientMsg::Introduce {
            req: 4,
            target: key(3).node_id(),
        },
    );
    let mapping_seen = |conn| match sends(&out, conn).pop() {
        Some(ServerMsg::MappedIntroduction { peer_mapping, .. }) => Some(peer_mapping),
        _ => None,
    };
    assert_eq!(mapping_seen(a), Some(NatMapping::EndpointIndependent));
    assert_eq!(mapping_seen(b), Some(NatMapping::Random));
}

#[test]
fn introductions_are_signed_and_share_a_start_time() {
    let mut h = Harness::new();
    let a = h.login(h.at(0), 2, "acme", "tok-a");
    let b = h.login(h.at(0), 3, "acme", "tok-a");
    let o = h.login(h.at(0), 4, "other", "tok-o");
    let out = h.request(
        h.at(1_000),
        a,
        ClientMsg::Introduce {
            req: 1,
            target: key(3).node_id(),
        },
    );
    let to_a = sends(&out, a);
    assert_eq!(to_a[0], ServerMsg::Ok { req: 1 });
    let ServerMsg::Introduction(ia) = &to_a[1] else {
        panic!("{to_a:?}")
    };
    let Some(ServerMsg::Introduction(ib)) = sends(&out, b).pop() else {
        panic!("{out:?}")
    };
    let server = h.s.id();
    assert!(ia.verify(&server).is_ok() && ib.verify(&server).is_ok());
    assert_eq!(ia.intro.start_at_unix_ms, ib.intro.start_at_unix_ms);
    // Both RTTs were 40 ms: start = now + 40 ms + 100 ms margin; each arrives after 20 ms.
    assert_eq!(ia.intro.start_at_unix_ms, T0_UNIX + 1_140);
    assert_eq!(ia.intro.start_in_ms, 120);
    assert_eq!(ia.intro.peer, key(3).node_id());
    assert_eq!(
        ia.intro.peer_candidates,
        vec![addr(3), "192.168.1.5:4000".parse().unwrap()]
    );
    assert!(ia.intro.initiator && !ib.intro.initiator);
    assert_eq!(ib.intro.to, key(3).node_id());
    assert_ne!(ia.intro.id, ib.intro.id);
    // After a NAT rebinding (QUIC migration) the new address is handed out.
    h.s.observe_addr(b, addr(33));
    let out = h.request(
        h.at(2_000),
        a,
        ClientMsg::Introduce {
            req: 3,
            target: key(3).node_id(),
        },
    );
    let Some(ServerMsg::Introduction(again)) = sends(&out, a).pop() else {
        panic!("{out:?}")
    };
    assert_eq!(again.intro.peer_candidates[0], addr(33));
    // Another tenant's node is unknown.
    let out = h.request(
        h.at(1_000),
        a,
        ClientMsg::Introduce {
            req: 2,
            target: key(4).node_id(),
        },
    );
    assert_eq!(error_code(&out, a), Some(RvErrorCode::UnknownNode));
    assert!(sends(&out, o).is_empty());
}

#[test]
fn subscriptions_are_pushed_and_dropped_on_disconnect() {
    let mut h = Harness::new();
    let a = h.login(h.at(0), 2, "acme", "tok-a");
    let b = h.login(h.at(0), 3, "acme", "tok-a");
    let o = h.login(h.at(0), 4, "other", "tok-o");
    let out = h.request(
        h.at(1),
        a,
        ClientMsg::Subscribe {
            req: 1,
            patterns: vec!["mesh.event.>".into()],
        },
    );
    let want = ServerMsg::Subscriptions {
        entries: vec![(key(2).node_id(), vec!["mesh.event.>".into()])],
    };
    assert!(sends(&out, b).contains(&want));
    assert!(sends(&out, o).is_empty());
    let out = h.request(
        h.at(2),
        a,
        ClientMsg::Subscribe {
            req: 2,
            patterns: vec!["mesh.event.>".into()],
        },
    );
    assert_eq!(sends(&out, b), vec![], "no push when nothing changed");
    let out = h.request(
        h.at(2),
        a,
        ClientMsg::Subscribe {
            req: 3,
            patterns: vec!["bad..pattern".into()],
        },
    );
    assert_eq!(error_code(&out, a), Some(RvErrorCode::InvalidPattern));
    // A node joining later gets the snapshot with its welcome.
    let c = h.open(h.at(3), 5);
    let nonce = h.challenge(h.at(3), c, key(5).node_id(), "acme");
    let out = h.request(
        h.at(3),
        c,
        Harness::auth_msg(&key(5), nonce, "acme", "tok-a"),
    );
    assert!(sends(&out, c).contains(&want));
    let out = h.s.disconnect(h.at(4), a);
    assert!(sends(&out, b).contains(&ServerMsg::Subscriptions { entries: vec![] }));
}

#[test]
fn discovery_is_rate_limited_per_node() {
    let mut h = Harness::new();
    let a = h.login(h.at(0), 2, "acme", "tok-a");
    let b = h.login(h.at(0), 3, "acme", "tok-a");
    for _ in 0..3 {
        h.discover(h.at(10), a, DiscoverQuery::default());
    }
    let out = h.request(
        h.at(10),
        a,
        ClientMsg::Discover {
            req: 1,
            query: DiscoverQuery::default(),
        },
    );
    let Some(ServerMsg::Error {
        req: Some(1),
        error,
    }) = sends(&out, a).pop()
    else {
        panic!("{out:?}")
    };
    assert_eq!(error.code, RvErrorCode::RateLimited);
    assert!(error.retry_after_ms.is_some());
    h.discover(h.at(10), b, DiscoverQuery::default());
    h.discover(h.at(1_100), a, DiscoverQuery::default());
    assert_eq!(h.s.metrics().rejected(RvErrorCode::RateLimited), 1);
}

#[test]
fn a_new_session_supersedes_the_old_and_restore_keeps_agents() {
    let mut h = Harness::new();
    let a = h.login(h.at(0), 2, "acme", "tok-a");
    let c = h.open(h.at(5), 2);
    let nonce = h.challenge(h.at(5), c, key(2).node_id(), "acme");
    let out = h.request(
        h.at(5),
        c,
        Harness::auth_msg(&key(2), nonce, "acme", "tok-a"),
    );
    assert!(closes(&out, a));
    assert!(
        h.s.disconnect(h.at(6), a).is_empty(),
        "old session is already gone"
    );
    assert_eq!(h.s.gauges().nodes_online, 1);
    // Restore into a fresh core: the agent is back, with a full TTL.
    let m = manifest(1, &["x"]);
    let mut fresh = Harness::new();
    let row = AgentRow {
        tenant: "acme".into(),
        node: key(2).node_id(),
        manifest: m.clone(),
        last_seen_unix_ms: T0_UNIX,
    };
    assert!(fresh.s.restore_agent(fresh.at(0), row.clone()));
    let mut forged = row;
    forged.manifest.name = "evil".into();
    assert!(
        !fresh.s.restore_agent(fresh.at(0), forged),
        "signatures are re-checked"
    );
    assert_eq!(
        fresh.s.discover_in("acme", &DiscoverQuery::default()).len(),
        1
    );
    assert_eq!(fresh.s.poll_timeout(), Some(fresh.at(45_000)));
}

mod model {
    //! Model-based property test: random registrations, heartbeats, removals and clock
    //! jumps from two nodes; discovery always answers exactly what a simple model says.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Register(usize, usize),
        Heartbeat(usize, usize),
        Unregister(usize, usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..2usize, 0..6usize).prop_map(|(n, a)| Op::Register(n, a)),
            (0..2usize, 0..6usize).prop_map(|(n, a)| Op::Heartbeat(n, a)),
            (0..2usize, 0..6usize).prop_map(|(n, a)| Op::Unregister(n, a)),
            (0..40_000u64).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn discovery_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
            let pool: Vec<Manifest> = (0..6).map(|i| manifest(i, &["x"])).collect();
            let mut h = Harness::new();
            let conns = [h.login(h.at(0), 2, "acme", "tok-a"), h.login(h.at(0), 3, "acme", "tok-a")];
            let ttl = 45_000u64;
            let mut now = 0u64;
            // agent index -> (owner, deadline ms)
            let mut model: BTreeMap<usize, (usize, u64)> = BTreeMap::new();
            for op in ops {
                h.s.handle_timeout(h.at(now));
                model.retain(|_, (_, d)| *d > now);
                match op {
                    Op::Advance(ms) => now += ms,
                    Op::Register(n, a) => {
                        let out = h.request(h.at(now), conns[n], ClientMsg::Register { req: 1, manifests: vec![pool[a].clone()] });
                        match model.get(&a) {
                            Some((owner, _)) if *owner != n => prop_assert_eq!(error_code(&out, conns[n]), Some(RvErrorCode::NotOwner)),
                            _ => { model.insert(a, (n, now + ttl)); }
                        }
                    }
                    Op::Heartbeat(n, a) => {
                        let out = h.request(h.at(now), conns[n], ClientMsg::Heartbeat { req: 2, agents: vec![(pool[a].id, Availability::Online)] });
                        let known = matches!(model.get(&a), Some((owner, _)) if *owner == n);
                        if known {
                            model.insert(a, (n, now + ttl));
                        }
                        let want = if known { vec![] } else { vec![pool[a].id] };
                        prop_assert_eq!(sends(&out, conns[n]), vec![ServerMsg::HeartbeatAck { req: 2, unknown: want }]);
                    }
                    Op::Unregister(n, a) => {
                        h.request(h.at(now), conns[n], ClientMsg::Unregister { req: 3, agents: vec![pool[a].id] });
                        if matches!(model.get(&a), Some((owner, _)) if *owner == n) {
                            model.remove(&a);
                        }
                    }
                }
                h.s.handle_timeout(h.at(now));
                model.retain(|_, (_, d)| *d > now);
                let mut got: Vec<_> = h.s.discover_in("acme", &DiscoverQuery { limit: Some(1000), ..DiscoverQuery::default() })
                    .into_iter().map(|r| (r.manifest.id, r.node)).collect();
                got.sort();
                let node_ids = [key(2).node_id(), key(3).node_id()];
                let mut want: Vec<_> = model.iter().map(|(a, (n, _))| (pool[*a].id, node_ids[*n])).collect();
                want.sort();
                prop_assert_eq!(got, want);
                prop_assert_eq!(h.s.gauges().agents, model.len());
            }
        }
    }
}
