//! Bounds and bad input: rate limits, a flood that must not slow others, malformed,
//! oversize and unauthenticated frames.

use std::time::{Duration, Instant};

use agentmesh_proto::relay::{self as wire, ClientMsg, Payload};
use agentmesh_relay::client::ClientError;
use agentmesh_relay::Limits;

use crate::common::*;

async fn rate_limited(via: Via) {
    let limits = Limits {
        rate_packets_per_sec: 200,
        burst_secs: 1,
        ..Limits::default()
    };
    let relay = start_relay(limits, None, None).await;
    let mut a = client(&relay, via, 1).await;
    let mut b = client(&relay, via, 2).await;
    let started = Instant::now();
    for _ in 0..2000 {
        a.send(b.node_id(), vec![7; 64]).await.unwrap();
    }
    a.flush().await.unwrap();
    let mut got = 0;
    while next_recv(&mut b, Duration::from_millis(500))
        .await
        .is_some()
    {
        got += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let allowed = 200.0 + 200.0 * secs + 10.0;
    assert!(
        got as f64 <= allowed,
        "received {got}, allowed {allowed:.0} in {secs:.2}s"
    );
    assert!(got >= 150, "received only {got}");
    let snap = relay.snapshot();
    assert!(
        snap.counters.dropped_rate >= 2000 - allowed as u64,
        "{:?}",
        snap.counters
    );
    // The limit is a rate, not a ban.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.send(b.node_id(), b"after".to_vec()).await.unwrap();
    a.flush().await.unwrap();
    let (_, p) = next_recv(&mut b, Duration::from_secs(5)).await.unwrap();
    assert_eq!(p, b"after");
}

#[tokio::test]
async fn rate_limit_udp() {
    bounded(rate_limited(Via::Udp)).await;
}

#[tokio::test]
async fn rate_limit_tls() {
    bounded(rate_limited(Via::Tls)).await;
}

#[tokio::test]
async fn a_flood_does_not_slow_the_others() {
    bounded(async {
        let relay = start_relay(Limits::default(), None, None).await;
        let mut flooder = client(&relay, Via::Udp, 1).await;
        let victim = client(&relay, Via::Tls, 2).await; // connected, never reads
        let mut c = client(&relay, Via::Udp, 3).await;
        let mut d = client(&relay, Via::Tls, 4).await;
        let target = victim.node_id();
        let flood = tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(3);
            let mut n = 0u64;
            while Instant::now() < until {
                flooder.send(target, vec![0xEE; 1200]).await.unwrap();
                n += 1;
                if n % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            n
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut worst = Duration::ZERO;
        for i in 0..50u8 {
            let t = Instant::now();
            c.send(d.node_id(), vec![i]).await.unwrap();
            let (_, p) = next_recv(&mut d, Duration::from_secs(5))
                .await
                .expect("c→d lost during flood");
            assert_eq!(p, vec![i]);
            d.send(c.node_id(), vec![i]).await.unwrap();
            d.flush().await.unwrap();
            let (_, p) = next_recv(&mut c, Duration::from_secs(5))
                .await
                .expect("d→c lost during flood");
            assert_eq!(p, vec![i]);
            worst = worst.max(t.elapsed());
        }
        let flooded = flood.await.unwrap();
        let snap = relay.snapshot();
        assert!(
            snap.counters.dropped_rate + snap.counters.dropped_queue > 0,
            "flood of {flooded} was never limited"
        );
        // Generous: a round trip through a debug build on a shared 2-core machine.
        assert!(
            worst < Duration::from_millis(1500),
            "worst round trip {worst:?} during flood"
        );
        drop(victim);
    })
    .await;
}

#[tokio::test]
async fn bad_udp_input_is_dropped_and_counted() {
    bounded(async {
        let relay = start_relay(
            Limits {
                max_frame: 1024,
                ..Limits::default()
            },
            None,
            None,
        )
        .await;
        let mut a = client(&relay, Via::Udp, 1).await;
        let mut b = client(&relay, Via::Udp, 2).await;
        a.send_raw(b"\x00\x01 not a relay frame").await.unwrap();
        let mut bad = wire::UDP_MAGIC.to_vec();
        bad.extend_from_slice(&[
            0, 0, 0, 9, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        a.send_raw(&bad).await.unwrap();
        a.send_raw(&vec![0xA7; 3000]).await.unwrap();
        // Unauthenticated: a fresh socket sending a well-formed Send.
        let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let msg = ClientMsg::Send {
            to: b.node_id(),
            payload: Payload(b"spoof".to_vec()),
        };
        let d = wire::encode_datagram(&msg, 4096).unwrap();
        stranger.send_to(&d, relay.udp_addr.unwrap()).await.unwrap();
        // A short Hello (amplification guard).
        let hello = ClientMsg::Hello {
            version: 1,
            pad: Payload(vec![]),
        };
        stranger
            .send_to(
                &wire::encode_datagram(&hello, 4096).unwrap(),
                relay.udp_addr.unwrap(),
            )
            .await
            .unwrap();
        // Still working afterwards.
        a.send(b.node_id(), b"fine".to_vec()).await.unwrap();
        let (_, p) = next_recv(&mut b, Duration::from_secs(5)).await.unwrap();
        assert_eq!(p, b"fine");
        let c = relay.snapshot().counters;
        assert_eq!(c.dropped_malformed, 3, "{c:?}");
        assert_eq!(c.dropped_oversize, 1, "{c:?}");
        assert_eq!(c.dropped_unauthenticated, 1, "{c:?}");
        assert_eq!(c.forwarded, 1);
    })
    .await;
}

#[tokio::test]
async fn bad_tls_input_closes_the_connection() {
    bounded(async {
        let relay = start_relay(
            Limits {
                max_frame: 1024,
                ..Limits::default()
            },
            None,
            None,
        )
        .await;
        let mut a = client(&relay, Via::Tls, 1).await;
        a.send_raw(&[0, 0, 0, 5, 1, 0xFF, 0xFF, 0xFF, 0xFF])
            .await
            .unwrap();
        a.flush().await.unwrap();
        let r = a.recv_timeout(Duration::from_secs(5)).await;
        assert!(
            matches!(r, Err(ClientError::Closed) | Err(ClientError::Io(_))),
            "{r:?}"
        );
        let mut b = client(&relay, Via::Tls, 2).await;
        b.send_raw(&100_000u32.to_be_bytes()).await.unwrap();
        b.flush().await.unwrap();
        let r = b.recv_timeout(Duration::from_secs(5)).await;
        assert!(
            matches!(r, Err(ClientError::Closed) | Err(ClientError::Io(_))),
            "{r:?}"
        );
        let c = relay.snapshot().counters;
        assert_eq!((c.dropped_malformed, c.dropped_oversize), (1, 1), "{c:?}");
    })
    .await;
}
