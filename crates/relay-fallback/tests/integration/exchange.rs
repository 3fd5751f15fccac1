//! Two clients exchange frames over UDP, TLS and across the two; peer gone; ping; health.

use std::time::Duration;

use agentmesh_relay::client::ClientEvent;
use agentmesh_relay::Limits;

use crate::common::*;

async fn exchange(a_via: Via, b_via: Via) {
    let relay = start_relay(Limits::default(), None, None).await;
    let mut a = client(&relay, a_via, 1).await;
    let mut b = client(&relay, b_via, 2).await;
    for i in 0..20u8 {
        a.send(b.node_id(), vec![i; 100 + i as usize])
            .await
            .unwrap();
        let (from, p) = next_recv(&mut b, Duration::from_secs(5)).await.unwrap();
        assert_eq!((from, p), (a.node_id(), vec![i; 100 + i as usize]));
        b.send(a.node_id(), vec![i]).await.unwrap();
        let (from, p) = next_recv(&mut a, Duration::from_secs(5)).await.unwrap();
        assert_eq!((from, p), (b.node_id(), vec![i]));
    }
    let snap = relay.snapshot();
    assert_eq!(snap.counters.forwarded, 40);
    assert_eq!(snap.counters.auth_ok, 2);
}

#[tokio::test]
async fn udp_to_udp() {
    bounded(exchange(Via::Udp, Via::Udp)).await;
}

#[tokio::test]
async fn tls_to_tls() {
    bounded(exchange(Via::Tls, Via::Tls)).await;
}

#[tokio::test]
async fn udp_to_tls() {
    bounded(exchange(Via::Udp, Via::Tls)).await;
}

#[tokio::test]
async fn peer_gone_ping_and_health() {
    bounded(async {
        let relay = start_relay(Limits::default(), None, None).await;
        for via in [Via::Udp, Via::Tls] {
            let mut a = client(&relay, via, 1).await;
            a.send(key(77).node_id(), b"anyone?".to_vec())
                .await
                .unwrap();
            let ev = a.recv_timeout(Duration::from_secs(5)).await.unwrap();
            assert_eq!(ev, Some(ClientEvent::PeerGone(key(77).node_id())));
            a.send_msg(&agentmesh_proto::relay::ClientMsg::Ping { n: 42 })
                .await
                .unwrap();
            assert_eq!(
                a.recv_timeout(Duration::from_secs(5)).await.unwrap(),
                Some(ClientEvent::Pong(42))
            );
            a.send_msg(&agentmesh_proto::relay::ClientMsg::HealthQuery)
                .await
                .unwrap();
            let ev = a.recv_timeout(Duration::from_secs(5)).await.unwrap();
            assert!(
                matches!(
                    ev,
                    Some(ClientEvent::Health {
                        clients: 1..,
                        draining: false
                    })
                ),
                "{ev:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn tls_pins_the_relay_key() {
    bounded(async {
        let relay = start_relay(Limits::default(), None, None).await;
        let wrong = key(99).node_id();
        let r = agentmesh_relay::client::RelayClient::connect_tls(
            relay.tls_addr.unwrap(),
            key(1),
            Some(wrong),
        )
        .await;
        assert!(r.is_err());
    })
    .await;
}

/// A burst of QUIC-sized frames from one client: the relay reads them in batches and
/// sends runs for one client as GSO batches; every frame must arrive whole and in order.
#[tokio::test]
async fn a_burst_over_udp_arrives_whole_and_in_order() {
    bounded(async {
        let relay = start_relay(Limits::default(), None, None).await;
        let mut a = client(&relay, Via::Udp, 1).await;
        let mut b = client(&relay, Via::Udp, 2).await;
        const N: u16 = 100;
        let frame = |i: u16| {
            let mut p = vec![(i % 251) as u8; 1200];
            p[..2].copy_from_slice(&i.to_be_bytes());
            p
        };
        for i in 0..N {
            a.send(b.node_id(), frame(i)).await.unwrap();
        }
        // The last one is shorter: it may close a GSO batch.
        a.send(b.node_id(), vec![7; 300]).await.unwrap();
        for i in 0..N {
            let (from, p) = next_recv(&mut b, Duration::from_secs(5)).await.unwrap();
            assert_eq!(from, a.node_id());
            assert!(p == frame(i), "frame {i} intact and in order");
        }
        let (_, p) = next_recv(&mut b, Duration::from_secs(5)).await.unwrap();
        assert_eq!(p, vec![7; 300]);
        assert_eq!(relay.snapshot().counters.forwarded, u64::from(N) + 1);
    })
    .await;
}
