//! Deterministic tests of the relay core: virtual time, no sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_proto::relay::{
    self as wire, ClientMsg, Payload, RefuseReason, RelayMsg, StoreOutcome, Transport,
};
use agentmesh_proto::{frame, SecretKey};
use proptest::prelude::*;

use super::*;
use crate::client::{ClientEvent, ClientSession};
use crate::store::MemStore;

mod forward;

struct H {
    relay: Relay<MemStore>,
    now: Instant,
}

fn key(seed: u8) -> SecretKey {
    SecretKey::from_bytes(&[seed; 32])
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl H {
    fn new(limits: Limits) -> Self {
        let now = Instant::now();
        Self {
            relay: Relay::new(
                key(200).node_id(),
                limits,
                MemStore::default(),
                [7; 32],
                now,
                1_000_000,
            ),
            now,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.relay.handle_timeout(self.now);
    }

    fn send(&mut self, s: &ClientSession, from: SocketAddr, msg: &ClientMsg) {
        let bytes = s.encode(msg).unwrap();
        self.relay.handle_datagram(self.now, from, &bytes);
    }

    /// Everything the relay sent over UDP, decoded.
    fn out(&mut self) -> Vec<(SocketAddr, RelayMsg)> {
        while self.relay.poll_event().is_some() {}
        let mut v = Vec::new();
        while let Some((a, d)) = self.relay.poll_udp() {
            v.push((a, wire::decode_datagram(&d, 1 << 20).unwrap()));
        }
        v
    }

    fn out_to(&mut self, a: SocketAddr) -> Vec<RelayMsg> {
        self.out()
            .into_iter()
            .filter(|(to, _)| *to == a)
            .map(|(_, m)| m)
            .collect()
    }

    fn connect(&mut self, seed: u8, port: u16) -> (ClientSession, SocketAddr) {
        let mut s = ClientSession::new(key(seed), Some(self.relay.id()), Transport::Udp);
        let a = addr(port);
        self.send(&s, a, &s.hello());
        let challenge = self.out_to(a).pop().unwrap();
        let (auth, _) = s.handle(challenge).unwrap();
        self.send(&s, a, &auth.unwrap());
        let welcome = self.out_to(a).remove(0);
        assert!(matches!(
            s.handle(welcome).unwrap().1,
            Some(ClientEvent::Ready { .. })
        ));
        (s, a)
    }
}

fn send_to(to: &ClientSession, bytes: &[u8]) -> ClientMsg {
    ClientMsg::Send {
        to: to.node_id(),
        payload: Payload(bytes.to_vec()),
    }
}

#[test]
fn two_clients_exchange_and_sender_is_pinned() {
    let mut h = H::new(Limits::default());
    let (a, aa) = h.connect(1, 1001);
    let (b, ba) = h.connect(2, 1002);
    h.send(&a, aa, &send_to(&b, b"hello"));
    let got = h.out();
    assert_eq!(
        got,
        vec![(
            ba,
            RelayMsg::Recv {
                from: a.node_id(),
                payload: Payload(b"hello".to_vec())
            }
        )]
    );
    // A stranger's datagram claiming nothing is dropped: no link, no forward.
    h.send(&a, addr(9999), &send_to(&b, b"spoof"));
    assert!(h.out().is_empty());
    assert_eq!(h.relay.counters().dropped_unauthenticated, 1);
    assert_eq!(h.relay.counters().forwarded, 1);
}

#[test]
fn bad_signature_and_replay_are_refused() {
    let mut h = H::new(Limits::default());
    let a = addr(1001);
    let s = ClientSession::new(key(1), None, Transport::Udp);
    h.send(&s, a, &s.hello());
    let Some(RelayMsg::Challenge { nonce, relay }) = h.out_to(a).pop() else {
        panic!()
    };
    // Signed for the wrong transport.
    let wrong = wire::sign_auth(&key(1), &nonce, &relay, Transport::Tls);
    h.send(&s, a, &wrong);
    assert_eq!(
        h.out_to(a),
        vec![RelayMsg::Refused {
            reason: RefuseReason::AuthFailed
        }]
    );
    // The right signature, replayed after the nonce was consumed.
    let right = wire::sign_auth(&key(1), &nonce, &relay, Transport::Udp);
    h.send(&s, a, &right);
    assert_eq!(
        h.out_to(a),
        vec![RelayMsg::Refused {
            reason: RefuseReason::AuthFailed
        }]
    );
    assert_eq!(h.relay.counters().auth_failed, 2);
    assert_eq!(h.relay.client_count(), 0);
}

#[test]
fn peer_gone_ping_and_health() {
    let mut h = H::new(Limits::default());
    let (a, aa) = h.connect(1, 1001);
    h.send(
        &a,
        aa,
        &ClientMsg::Send {
            to: key(9).node_id(),
            payload: Payload(vec![1]),
        },
    );
    h.send(&a, aa, &ClientMsg::Ping { n: 5 });
    h.send(&a, aa, &ClientMsg::HealthQuery);
    let got = h.out_to(aa);
    assert_eq!(
        got[0],
        RelayMsg::PeerGone {
            node: key(9).node_id()
        }
    );
    assert_eq!(got[1], RelayMsg::Pong { n: 5 });
    assert!(matches!(
        got[2],
        RelayMsg::Health {
            clients: 1,
            draining: false,
            ..
        }
    ));
}

#[test]
fn rate_limit_drops_excess_and_spares_others() {
    let limits = Limits {
        rate_packets_per_sec: 100,
        burst_secs: 1,
        ..Limits::default()
    };
    let mut h = H::new(limits);
    let (a, aa) = h.connect(1, 1001);
    let (b, ba) = h.connect(2, 1002);
    let (c, ca) = h.connect(3, 1003);
    for _ in 0..1000 {
        h.send(&a, aa, &send_to(&b, b"flood"));
    }
    h.send(&c, ca, &send_to(&b, b"calm"));
    let to_b = h.out_to(ba);
    assert!(to_b.len() <= 101 + 1, "flood forwarded {}", to_b.len());
    assert!(to_b.contains(&RelayMsg::Recv {
        from: c.node_id(),
        payload: Payload(b"calm".to_vec())
    }));
    assert!(h.relay.counters().dropped_rate >= 899);
    h.advance(Duration::from_millis(500));
    h.send(&a, aa, &send_to(&b, b"later"));
    assert_eq!(h.out_to(ba).len(), 1, "tokens refill");
}

#[test]
fn queues_are_bounded() {
    let limits = Limits {
        queue_frames: 10,
        ..Limits::default()
    };
    let mut h = H::new(limits);
    let (a, aa) = h.connect(1, 1001);
    let (b, ba) = h.connect(2, 1002);
    for _ in 0..50 {
        h.send(&a, aa, &send_to(&b, b"x"));
    }
    assert_eq!(h.out_to(ba).len(), 10);
    assert_eq!(h.relay.counters().dropped_queue, 40);
}

#[test]
fn mail_is_stored_delivered_in_order_and_deleted() {
    let mut h = H::new(Limits::default());
    let (a, aa) = h.connect(1, 1001);
    let b_key = key(2);
    for i in 0..3u64 {
        h.send(
            &a,
            aa,
            &ClientMsg::Store {
                id: i,
                to: b_key.node_id(),
                sealed: Payload(vec![i as u8; 4]),
            },
        );
    }
    let acks = h.out_to(aa);
    assert!(acks.iter().all(|m| matches!(
        m,
        RelayMsg::StoreAck {
            outcome: StoreOutcome::Stored,
            ..
        }
    )));
    assert_eq!(h.relay.store().total().unwrap(), 3);
    let mut b = ClientSession::new(b_key, None, Transport::Udp);
    let ba = addr(1002);
    h.send(&b, ba, &b.hello());
    let (auth, _) = b.handle(h.out_to(ba).remove(0)).unwrap();
    h.send(&b, ba, &auth.unwrap());
    let mut got = Vec::new();
    for m in h.out_to(ba) {
        let (reply, ev) = b.handle(m).unwrap();
        if let Some(ClientEvent::Mail { sealed, from }) = ev {
            assert_eq!(from, a.node_id());
            got.push(sealed[0]);
        }
        // Lose the first ack: the next, cumulative ack covers it.
        if got.len() > 1 {
            if let Some(r) = reply {
                h.send(&b, ba, &r);
            }
        }
    }
    assert_eq!(got, vec![0, 1, 2]);
    assert_eq!(
        h.relay.store().total().unwrap(),
        0,
        "cumulative ack deletes all"
    );
}

#[test]
fn mail_resent_when_unacked_and_quota_enforced() {
    let mut limits = Limits::default();
    limits.mail.max_messages_per_node = 2;
    let mut h = H::new(limits);
    let (a, aa) = h.connect(1, 1001);
    let (mut b, ba) = h.connect(2, 1002);
    for i in 0..3u64 {
        h.send(
            &a,
            aa,
            &ClientMsg::Store {
                id: i,
                to: b.node_id(),
                sealed: Payload(vec![i as u8]),
            },
        );
    }
    let outcomes: Vec<_> = h
        .out()
        .into_iter()
        .filter_map(|(_, m)| match m {
            RelayMsg::StoreAck { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            StoreOutcome::Stored,
            StoreOutcome::Stored,
            StoreOutcome::QuotaExceeded
        ]
    );
    // b was online: the mails went out, but we dropped them (no acks). Resend comes later.
    h.advance(Duration::from_secs(4));
    let resent = h.out_to(ba);
    assert_eq!(
        resent
            .iter()
            .filter(|m| matches!(m, RelayMsg::Mail { .. }))
            .count(),
        2
    );
    for m in resent {
        if let (Some(r), _) = b.handle(m).unwrap() {
            h.send(&b, ba, &r);
        }
    }
    assert_eq!(h.relay.store().total().unwrap(), 0);
}

#[test]
fn stream_frames_split_anywhere_and_bad_frames_close() {
    let mut h = H::new(Limits {
        max_frame: 1000,
        ..Limits::default()
    });
    let conn = ConnId(1);
    h.relay.handle_stream_open(h.now, conn);
    let mut s = ClientSession::new(key(1), None, Transport::Tls);
    let hello = s.encode(&s.hello()).unwrap();
    for b in &hello {
        h.relay
            .handle_stream_bytes(h.now, conn, std::slice::from_ref(b));
    }
    assert_eq!(h.relay.poll_event(), Some(Event::StreamReady(conn)));
    let StreamPoll::Frame(f) = h.relay.poll_stream(conn) else {
        panic!()
    };
    let (challenge, _) = frame::decode::<RelayMsg>(&f, 1 << 20).unwrap().unwrap();
    let (auth, _) = s.handle(challenge).unwrap();
    h.relay
        .handle_stream_bytes(h.now, conn, &s.encode(&auth.unwrap()).unwrap());
    assert_eq!(h.relay.client_count(), 1);
    while h.relay.poll_stream(conn) != StreamPoll::Idle {}
    // An oversize frame header closes the connection.
    h.relay
        .handle_stream_bytes(h.now, conn, &5000u32.to_be_bytes());
    assert_eq!(h.relay.poll_stream(conn), StreamPoll::Close);
    assert_eq!(h.relay.client_count(), 0);
    h.relay.handle_stream_closed(conn);
    // An unauthenticated data frame closes a fresh connection.
    let c2 = ConnId(2);
    h.relay.handle_stream_open(h.now, c2);
    h.relay
        .handle_stream_bytes(h.now, c2, &s.encode(&ClientMsg::Ping { n: 1 }).unwrap());
    assert_eq!(h.relay.poll_stream(c2), StreamPoll::Close);
    assert_eq!(h.relay.counters().dropped_unauthenticated, 1);
}

#[test]
fn second_login_replaces_first_and_drain_refuses_newcomers() {
    let mut h = H::new(Limits::default());
    let (_a, aa) = h.connect(1, 1001);
    let (_a2, a2) = h.connect(1, 1005);
    assert!(h.out().is_empty());
    assert_eq!(h.relay.client_count(), 1);
    assert_eq!(h.relay.counters().links_closed, 1);
    let _ = aa;
    h.relay.begin_drain();
    assert!(matches!(h.out_to(a2)[..], [RelayMsg::Restarting { .. }]));
    let s = ClientSession::new(key(3), None, Transport::Udp);
    h.send(&s, addr(1009), &s.hello());
    assert_eq!(
        h.out_to(addr(1009)),
        vec![RelayMsg::Refused {
            reason: RefuseReason::Draining
        }]
    );
}

#[test]
fn idle_udp_clients_and_stale_handshakes_expire_and_clients_are_capped() {
    let mut h = H::new(Limits {
        max_clients: 1,
        ..Limits::default()
    });
    let (_a, _) = h.connect(1, 1001);
    let s = ClientSession::new(key(2), None, Transport::Udp);
    h.send(&s, addr(1002), &s.hello());
    let mut s2 = s;
    let (auth, _) = s2.handle(h.out_to(addr(1002)).remove(0)).unwrap();
    h.send(&s2, addr(1002), &auth.unwrap());
    assert_eq!(
        h.out_to(addr(1002)),
        vec![RelayMsg::Refused {
            reason: RefuseReason::Full
        }]
    );
    h.send(&s2, addr(1003), &s2.hello());
    h.advance(Duration::from_secs(61));
    assert_eq!(h.relay.client_count(), 0);
    assert_eq!(h.relay.snapshot().pending, 0);
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut h = H::new(Limits::default());
        let (_a, aa) = h.connect(1, 1001);
        h.relay.handle_datagram(h.now, aa, &bytes);
        h.relay.handle_datagram(h.now, addr(5), &bytes);
        let mut d = wire::UDP_MAGIC.to_vec();
        d.extend_from_slice(&bytes);
        h.relay.handle_datagram(h.now, aa, &d);
        h.relay.handle_stream_open(h.now, ConnId(1));
        h.relay.handle_stream_bytes(h.now, ConnId(1), &bytes);
        let _ = h.out();
        while h.relay.poll_stream(ConnId(1)) != StreamPoll::Idle {
            if h.relay.poll_stream(ConnId(1)) == StreamPoll::Close { break; }
        }
    }
}

#[test]
fn expired_mail_is_purged_not_delivered() {
    let mut limits = Limits::default();
    limits.mail.ttl_secs = 10;
    let mut h = H::new(limits);
    let (a, aa) = h.connect(1, 1001);
    let to = key(2).node_id();
    h.send(
        &a,
        aa,
        &ClientMsg::Store {
            id: 1,
            to,
            sealed: Payload(vec![1]),
        },
    );
    h.advance(Duration::from_secs(31));
    assert_eq!(h.relay.counters().mail_expired, 1);
    assert_eq!(h.relay.store().total().unwrap(), 0);
    let (_b, ba) = h.connect(2, 1002);
    assert!(h.out_to(ba).is_empty());
}
