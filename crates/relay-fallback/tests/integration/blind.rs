//! Blindness: everything the relay reads and writes (after TLS decryption, so the strictest
//! place to look) is captured while two daemons exchange sealed payloads holding a known
//! marker; the marker must never appear. A control run with unsealed payloads proves the
//! capture would have seen it.

use std::time::Duration;

use agentmesh_proto::sealed;
use agentmesh_relay::client::ClientEvent;
use agentmesh_relay::Limits;

use crate::common::*;

const MARKER: &[u8] = b"AGENTMESH-PLAINTEXT-MARKER-7f3a9c";

fn seen(log: &[Vec<u8>]) -> bool {
    log.iter()
        .any(|chunk| chunk.windows(MARKER.len()).any(|w| w == MARKER))
}

async fn run(seal: bool) -> bool {
    let (tap, log) = capture();
    let relay = start_relay(Limits::default(), None, Some(tap)).await;
    let (ka, kb) = (key(1), key(2));
    let mut a = client(&relay, Via::Udp, 1).await;
    let mut b = client(&relay, Via::Tls, 2).await;
    let mut body = b"{\"text\":\"".to_vec();
    body.extend_from_slice(MARKER);
    body.extend_from_slice(b"\"}");
    let wrap = |from: &agentmesh_proto::SecretKey, to| {
        if seal {
            sealed::seal(from, to, &body).unwrap()
        } else {
            body.clone()
        }
    };
    for _ in 0..5 {
        a.send(b.node_id(), wrap(&ka, b.node_id())).await.unwrap();
        let (_, p) = next_recv(&mut b, Duration::from_secs(5)).await.unwrap();
        if seal {
            assert_eq!(sealed::open(&kb, &p).unwrap().1, body);
        }
        b.send(a.node_id(), wrap(&kb, a.node_id())).await.unwrap();
        next_recv(&mut a, Duration::from_secs(5)).await.unwrap();
    }
    // Store-and-forward too: sealed for an offline node.
    let offline = key(3);
    b.store(1, offline.node_id(), wrap(&kb, offline.node_id()))
        .await
        .unwrap();
    assert!(matches!(
        b.recv_timeout(Duration::from_secs(5)).await.unwrap(),
        Some(ClientEvent::StoreAck { .. })
    ));
    let mut c = client(&relay, Via::Udp, 3).await;
    let ev = c.recv_timeout(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(ev, Some(ClientEvent::Mail { .. })), "{ev:?}");
    let captured = log.lock().unwrap().clone();
    assert!(
        captured.len() > 20,
        "the tap saw only {} chunks",
        captured.len()
    );
    seen(&captured)
}

#[tokio::test]
async fn the_relay_never_sees_the_plaintext_marker() {
    bounded(async {
        assert!(
            run(false).await,
            "control: an unsealed marker must be visible to the capture"
        );
        assert!(!run(true).await, "the marker appeared in relay traffic");
    })
    .await;
}
