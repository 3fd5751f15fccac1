//! Bad input and abuse: wrong signatures, replayed challenges, malformed and oversize
//! frames, rate limits; all refused with typed errors and counted in /metrics.

use agentmesh_proto::frame::FRAME_VERSION;
use agentmesh_proto::rendezvous::{auth_transcript, ClientMsg, RvErrorCode, ServerMsg};
use agentmesh_proto::DiscoverQuery;
use agentmesh_rendezvous::client::{ClientError, Event, RawSession};

use crate::harness::*;

fn metric(text: &str, code: &str) -> u64 {
    let prefix = format!("rv_rejected_total{{code=\"{code}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

fn auth(nonce: [u8; 32], signer: u8, node: u8, server: &agentmesh_proto::NodeId) -> ClientMsg {
    let t = auth_transcript(server, &nonce, &key(node).node_id(), "acme");
    ClientMsg::Auth {
        nonce,
        join_token: "acme-token".into(),
        signature: key(signer).sign(&t),
        candidates: vec![],
        home_relay: None,
    }
}

async fn expect_error(raw: &mut RawSession) -> RvErrorCode {
    match raw.recv().await.unwrap() {
        ServerMsg::Error { error, .. } => error.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_signatures_and_replayed_challenges_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let rv = start(dir.path(), "").await;
    let target = quic_target(&rv);
    let ep = endpoint();
    // The TLS key is node 1's, the challenge is signed by node 9.
    let mut raw = RawSession::quic(&ep, &target, &key(1)).await.unwrap();
    let nonce = raw.hello(&target, key(1).node_id(), "acme").await.unwrap();
    raw.send(&auth(nonce, 9, 1, &rv.id)).await.unwrap();
    assert_eq!(expect_error(&mut raw).await, RvErrorCode::BadSignature);
    // A correct answer to the first challenge, replayed on a second session.
    let mut raw2 = RawSession::quic(&ep, &target, &key(1)).await.unwrap();
    let _fresh = raw2.hello(&target, key(1).node_id(), "acme").await.unwrap();
    raw2.send(&auth(nonce, 1, 1, &rv.id)).await.unwrap();
    assert_eq!(
        expect_error(&mut raw2).await,
        RvErrorCode::ReplayedChallenge
    );
    // Claiming another node id than the TLS certificate's.
    let mut raw3 = RawSession::tcp(&tcp_target(&rv), &key(1)).await.unwrap();
    let err = raw3
        .hello(&tcp_target(&rv), key(2).node_id(), "acme")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Refused(e) if e.code == RvErrorCode::IdentityMismatch));
    // Unknown tenant.
    let mut raw4 = RawSession::quic(&ep, &target, &key(1)).await.unwrap();
    let err = raw4
        .hello(&target, key(1).node_id(), "nope")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Refused(e) if e.code == RvErrorCode::UnknownTenant));
    let text = http_get(rv.admin_addr, "/metrics").await;
    assert_eq!(metric(&text, "bad_signature"), 1);
    assert_eq!(metric(&text, "replayed_challenge"), 1);
    assert_eq!(metric(&text, "identity_mismatch"), 1);
    assert_eq!(metric(&text, "unknown_tenant"), 1);
    assert!(text.contains("rv_sessions_authenticated_total 0"));
    rv.shutdown().await;
}

#[tokio::test]
async fn malformed_and_oversize_frames_do_not_kill_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let rv = start(dir.path(), "max_frame = 4096").await;
    let (_ep, mut a) = daemon(&rv, 1, "acme").await;
    a.send_bytes(&[0, 0, 0, 4, FRAME_VERSION, 0xFF, 0xFF, 0xFF])
        .await
        .unwrap();
    let mut big = 10_000u32.to_be_bytes().to_vec();
    big.push(FRAME_VERSION);
    big.extend(vec![0u8; 9_999]);
    a.send_bytes(&big).await.unwrap();
    for want in [RvErrorCode::MalformedFrame, RvErrorCode::FrameTooLarge] {
        match a.next_event().await {
            Some(Event::Error(e)) => assert_eq!(e.code, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
    a.ping().await.expect("the session survives");
    // Unsigned manifests are refused, the session goes on.
    let mut m = manifest(1, &["x"]);
    m.trust = None;
    let err = a.register(vec![m]).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused(e) if e.code == RvErrorCode::InvalidManifest));
    a.ping().await.unwrap();
    let text = http_get(rv.admin_addr, "/metrics").await;
    assert_eq!(metric(&text, "malformed_frame"), 1);
    assert_eq!(metric(&text, "frame_too_large"), 1);
    assert_eq!(metric(&text, "invalid_manifest"), 1);
    rv.shutdown().await;
}

#[tokio::test]
async fn per_node_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[limits]\ndiscover = { per_sec = 0.5, burst = 3.0 }\nintroduce = { per_sec = 0.5, burst = 1.0 }\n";
    let rv = start(dir.path(), extra).await;
    let (_ep, a) = daemon(&rv, 1, "acme").await;
    let (_ep_b, b) = daemon(&rv, 2, "acme").await;
    for _ in 0..3 {
        a.discover(DiscoverQuery::default()).await.unwrap();
    }
    let err = a.discover(DiscoverQuery::default()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused(e) if e.code == RvErrorCode::RateLimited && e.retry_after_ms.is_some()),
        "{err:?}"
    );
    b.discover(DiscoverQuery::default())
        .await
        .expect("limits are per node");
    a.introduce(key(2).node_id()).await.unwrap();
    let err = a.introduce(key(2).node_id()).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused(e) if e.code == RvErrorCode::RateLimited));
    assert_eq!(metric(&rv.metrics_text(), "rate_limited"), 2);
    rv.shutdown().await;
}
