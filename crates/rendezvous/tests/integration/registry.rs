//! Register, discover, expiry, restart with persistence, tenant isolation, introductions.

use std::time::Duration;

use agentmesh_proto::rendezvous::RvErrorCode;
use agentmesh_proto::{Availability, DiscoverQuery};
use agentmesh_rendezvous::client::{Client, ClientError, Event};

use crate::harness::*;

fn caps(c: &[&str]) -> DiscoverQuery {
    DiscoverQuery {
        capabilities: c.iter().map(|s| s.to_string()).collect(),
        ..DiscoverQuery::default()
    }
}

#[tokio::test]
async fn register_and_discover_over_quic_and_tcp_with_tenant_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let rv = start(dir.path(), "").await;
    let (ep, a) = daemon(&rv, 1, "acme").await;
    assert_eq!(
        a.observed(),
        ep.local_addr().unwrap(),
        "the rendezvous sees the daemon's own socket"
    );
    let b = Client::connect_tcp(&tcp_target(&rv), &key(2), &join("acme"))
        .await
        .unwrap();
    let (_ep_o, o) = daemon(&rv, 3, "other").await;
    a.register(vec![
        manifest(1, &["text", "vision"]),
        manifest(2, &["text"]),
    ])
    .await
    .unwrap();
    let found = b.discover(caps(&["text", "vision"])).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].node, key(1).node_id());
    assert!(
        found[0].manifest.verify().is_ok(),
        "results carry valid signatures"
    );
    assert_eq!(b.discover(caps(&["text"])).await.unwrap().len(), 2);
    assert!(
        o.discover(DiscoverQuery::default())
            .await
            .unwrap()
            .is_empty(),
        "tenants are isolated"
    );
    // A node of another tenant is not reachable either.
    let err = o.introduce(key(1).node_id()).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused(e) if e.code == RvErrorCode::UnknownNode));
    a.unregister(vec![manifest(2, &[]).id]).await.unwrap();
    assert_eq!(b.discover(caps(&["text"])).await.unwrap().len(), 1);
    let status = http_get(rv.admin_addr, "/status").await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["nodes_online"], 3);
    assert_eq!(v["agents"], 1);
    assert_eq!(v["id"], rv.id.to_string());
    rv.shutdown().await;
}

#[tokio::test]
async fn agents_expire_after_missed_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let rv = start(dir.path(), "").await;
    let (_ep, a) = daemon(&rv, 1, "acme").await;
    let (kept, dropped) = (manifest(1, &["x"]), manifest(2, &["x"]));
    a.register(vec![kept.clone(), dropped.clone()])
        .await
        .unwrap();
    // Heartbeat only `kept` (and mark it busy) for 3 TTLs.
    let end = tokio::time::Instant::now() + Duration::from_millis(3 * TTL_MS);
    while tokio::time::Instant::now() < end {
        assert!(a
            .heartbeat(vec![(kept.id, Availability::Busy)])
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)).await;
    }
    let left = a.discover(DiscoverQuery::default()).await.unwrap();
    assert_eq!(
        left.iter().map(|r| r.manifest.id).collect::<Vec<_>>(),
        vec![kept.id]
    );
    assert_eq!(left[0].manifest.availability, Availability::Busy);
    assert!(left[0].manifest.verify().is_ok());
    // Without heartbeats `kept` goes too; a late heartbeat learns it must re-register.
    assert!(
        eventually(Duration::from_secs(3), || async {
            a.discover(DiscoverQuery::default())
                .await
                .unwrap()
                .is_empty()
        })
        .await
    );
    assert_eq!(
        a.heartbeat(vec![(kept.id, Availability::Online)])
            .await
            .unwrap(),
        vec![kept.id]
    );
    assert!(rv.metrics_text().contains("rv_expired_agents_total 2"));
    rv.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_records_and_resync_does_not_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let rv = start(dir.path(), "").await;
    let id = rv.id;
    let (_ep, a) = daemon(&rv, 1, "acme").await;
    let agents = vec![manifest(1, &["x"]), manifest(2, &["x", "y"])];
    a.register(agents.clone()).await.unwrap();
    drop(a);
    rv.shutdown().await;

    let rv = start(dir.path(), "").await;
    assert_eq!(rv.id, id, "the key persists");
    let (_ep_b, b) = daemon(&rv, 2, "acme").await;
    let found = b.discover(DiscoverQuery::default()).await.unwrap();
    assert_eq!(found.len(), 2, "records survive the restart");
    assert!(found
        .iter()
        .all(|r| r.node == key(1).node_id() && r.manifest.verify().is_ok()));
    // The daemon reconnects and resyncs: same agents, no duplicates.
    let (_ep_a, a) = daemon(&rv, 1, "acme").await;
    a.register(agents.clone()).await.unwrap();
    assert!(a
        .heartbeat(
            agents
                .iter()
                .map(|m| (m.id, Availability::Online))
                .collect()
        )
        .await
        .unwrap()
        .is_empty());
    assert_eq!(b.discover(DiscoverQuery::default()).await.unwrap().len(), 2);
    assert_eq!(b.discover(caps(&["y"])).await.unwrap().len(), 1);
    rv.shutdown().await;
}

async fn next(c: &mut Client) -> Event {
    tokio::time::timeout(Duration::from_secs(5), c.next_event())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn introductions_reach_both_sides_signed_with_a_common_start() {
    let dir = tempfile::tempdir().unwrap();
    let rv = start(dir.path(), "").await;
    let (ep_a, mut a) = daemon(&rv, 1, "acme").await;
    let (ep_b, mut b) = daemon(&rv, 2, "acme").await;
    a.introduce(key(2).node_id()).await.unwrap();
    let Event::Introduction(ia) = next(&mut a).await else {
        panic!("expected an introduction")
    };
    let Event::Introduction(ib) = next(&mut b).await else {
        panic!("expected an introduction")
    };
    assert!(ia.verify(&rv.id).is_ok() && ib.verify(&rv.id).is_ok());
    assert_eq!(ia.intro.start_at_unix_ms, ib.intro.start_at_unix_ms);
    assert!(ia.intro.start_in_ms >= 100 && ia.intro.start_in_ms < 2_000);
    assert_eq!(
        (ia.intro.to, ia.intro.peer),
        (key(1).node_id(), key(2).node_id())
    );
    assert_eq!(ia.intro.peer_candidates[0], ep_b.local_addr().unwrap());
    assert_eq!(ib.intro.peer_candidates[0], ep_a.local_addr().unwrap());
    assert!(ib
        .intro
        .peer_candidates
        .contains(&"192.168.7.2:4100".parse().unwrap()));
    assert_eq!(ib.intro.peer_home_relay.as_deref(), Some("relay.test:443"));
    assert!(ia.intro.initiator && !ib.intro.initiator);
    rv.shutdown().await;
}

#[tokio::test]
async fn subscription_index_is_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let rv = start(dir.path(), "").await;
    let (_ep_a, a) = daemon(&rv, 1, "acme").await;
    let (_ep_b, mut b) = daemon(&rv, 2, "acme").await;
    a.subscribe(vec!["mesh.event.>".into()]).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), b.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        Event::Subscriptions(vec![(key(1).node_id(), vec!["mesh.event.>".into()])])
    );
    drop(a);
    let ev = tokio::time::timeout(Duration::from_secs(5), b.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        Event::Subscriptions(vec![]),
        "a node that leaves leaves the index"
    );
    rv.shutdown().await;
}
