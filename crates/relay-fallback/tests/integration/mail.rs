//! Store-and-forward over real sockets, across a relay restart, with real sealing.

use std::time::Duration;

use agentmesh_proto::relay::StoreOutcome;
use agentmesh_proto::sealed;
use agentmesh_relay::client::ClientEvent;
use agentmesh_relay::{Limits, MailStore, SqliteStore};

use crate::common::*;

#[tokio::test]
async fn mail_survives_a_relay_restart_and_arrives_in_order() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("mail.sqlite3");
        let (alice, bob) = (key(1), key(2));
        let relay = start_relay(Limits::default(), Some(&db), None).await;
        let mut a = client(&relay, Via::Tls, 1).await;
        for i in 0..5u64 {
            let sealed =
                sealed::seal(&alice, bob.node_id(), format!("message {i}").as_bytes()).unwrap();
            a.store(i, bob.node_id(), sealed).await.unwrap();
            let ev = a.recv_timeout(Duration::from_secs(5)).await.unwrap();
            assert_eq!(
                ev,
                Some(ClientEvent::StoreAck {
                    id: i,
                    outcome: StoreOutcome::Stored
                })
            );
        }
        drop(a);
        relay.drain(Duration::from_secs(2)).await;
        assert_eq!(SqliteStore::open(&db).unwrap().total().unwrap(), 5);

        let relay = start_relay(Limits::default(), Some(&db), None).await;
        let mut b = client(&relay, Via::Udp, 2).await;
        let mut got = Vec::new();
        while got.len() < 5 {
            match b.recv_timeout(Duration::from_secs(5)).await.unwrap() {
                Some(ClientEvent::Mail { from, sealed }) => {
                    assert_eq!(from, alice.node_id());
                    let (sender, plain) = sealed::open(&bob, &sealed).unwrap();
                    assert_eq!(sender, alice.node_id());
                    got.push(String::from_utf8(plain).unwrap());
                }
                Some(_) => {}
                None => panic!("mail stopped after {got:?}"),
            }
        }
        let want: Vec<String> = (0..5).map(|i| format!("message {i}")).collect();
        assert_eq!(got, want);
        // Acks were sent by the client; the relay deletes what was acknowledged.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while relay.snapshot().counters.mail_delivered < 5 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(relay.snapshot().counters.mail_delivered, 5);
        drop(b);
        relay.drain(Duration::from_secs(1)).await;
        assert_eq!(SqliteStore::open(&db).unwrap().total().unwrap(), 0);
    })
    .await;
}
