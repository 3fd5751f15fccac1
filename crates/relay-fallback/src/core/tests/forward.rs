//! Tests of the in-place forwarding path ([`Relay::forward_in_place`]): what it sends from
//! the buffer, and that every datagram gets the outcome `handle_datagram` gives it.

use std::collections::HashMap;

use super::*;
use crate::core::Forward;

/// A GRO-style buffer: the datagrams back to back (all `stride` long but the last).
fn gro(datagrams: &[Vec<u8>]) -> (Vec<u8>, usize) {
    let stride = datagrams.first().map_or(1, Vec::len);
    for d in &datagrams[..datagrams.len().saturating_sub(1)] {
        assert_eq!(d.len(), stride, "a GRO batch has one size");
    }
    (datagrams.concat(), stride)
}

fn send_datagram(to: NodeId, payload: &[u8]) -> Vec<u8> {
    let msg = ClientMsg::Send {
        to,
        payload: Payload(payload.to_vec()),
    };
    wire::encode_datagram(&msg, 1 << 20).unwrap()
}

fn recv(from: &ClientSession, payload: &[u8]) -> RelayMsg {
    RelayMsg::Recv {
        from: from.node_id(),
        payload: Payload(payload.to_vec()),
    }
}

impl H {
    /// Runs `forward_in_place` on `buf`; returns the fates and the datagrams to send.
    fn forward(
        &mut self,
        from: SocketAddr,
        buf: &mut [u8],
        stride: usize,
    ) -> (Vec<Forward>, Vec<(SocketAddr, RelayMsg)>) {
        let mut fates = Vec::new();
        self.relay
            .forward_in_place(self.now, from, buf, stride, &mut fates);
        let sent = buf
            .chunks(stride)
            .zip(&fates)
            .filter_map(|(d, f)| match f {
                Forward::Send(to) => Some((*to, wire::decode_datagram(d, 1 << 20).unwrap())),
                Forward::Done => None,
            })
            .collect();
        (fates, sent)
    }

    /// Authenticates a TLS client on `conn`.
    fn connect_stream(&mut self, seed: u8, conn: ConnId) -> ClientSession {
        let mut s = ClientSession::new(key(seed), Some(self.relay.id()), Transport::Tls);
        self.relay.handle_stream_open(self.now, conn);
        let hello = s.encode(&s.hello()).unwrap();
        self.relay.handle_stream_bytes(self.now, conn, &hello);
        let challenge = self.stream_out(conn).remove(0);
        let (auth, _) = s.handle(challenge).unwrap();
        let auth = s.encode(&auth.unwrap()).unwrap();
        self.relay.handle_stream_bytes(self.now, conn, &auth);
        assert!(matches!(
            self.stream_out(conn)[..],
            [RelayMsg::Welcome { .. }]
        ));
        s
    }

    /// Frames queued for stream `conn`, decoded.
    fn stream_out(&mut self, conn: ConnId) -> Vec<RelayMsg> {
        let mut v = Vec::new();
        while let StreamPoll::Frame(f) = self.relay.poll_stream(conn) {
            v.push(frame::decode(&f, 1 << 20).unwrap().unwrap().0);
        }
        v
    }
}

#[test]
fn gro_batch_is_rewritten_and_sent_from_the_buffer() {
    let mut h = H::new(Limits::default());
    let (a, aa) = h.connect(1, 1001);
    let (b, ba) = h.connect(2, 1002);
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1200]).collect();
    let mut datagrams: Vec<_> = payloads
        .iter()
        .map(|p| send_datagram(b.node_id(), p))
        .collect();
    // The last segment of a GRO batch may be shorter.
    datagrams.push(send_datagram(b.node_id(), &[9; 300]));
    let (mut buf, stride) = gro(&datagrams);
    let before = h.relay.counters().clone();
    let (fates, sent) = h.forward(aa, &mut buf, stride);
    assert_eq!(fates, vec![Forward::Send(ba); 6]);
    let mut want: Vec<_> = payloads.iter().map(|p| (ba, recv(&a, p))).collect();
    want.push((ba, recv(&a, &[9; 300])));
    assert_eq!(sent, want);
    assert!(h.out().is_empty(), "nothing went through the queues");
    let c = h.relay.counters();
    assert_eq!((c.frames_in, c.forwarded), (2 + 2 + 6, 6));
    assert_eq!(c.frames_out, 2 + 2 + 6, "challenges, welcomes, forwards");
    let len = buf.len() as u64;
    assert_eq!(c.bytes_in - before.bytes_in, len);
    assert_eq!(
        c.bytes_out - before.bytes_out,
        len,
        "a Recv is as long as its Send"
    );
}

#[test]
fn gro_batch_mixing_destinations_reaches_each() {
    let mut h = H::new(Limits::default());
    let (a, aa) = h.connect(1, 1001);
    let (b, ba) = h.connect(2, 1002);
    let (c, ca) = h.connect(3, 1003);
    let gone = key(9).node_id();
    let dsts = [
        b.node_id(),
        c.node_id(),
        a.node_id(),
        gone,
        b.node_id(),
        a.node_id(),
    ];
    let datagrams: Vec<_> = dsts
        .iter()
        .enumerate()
        .map(|(i, to)| send_datagram(*to, &[i as u8; 100]))
        .collect();
    let (mut buf, stride) = gro(&datagrams);
    let (fates, sent) = h.forward(aa, &mut buf, stride);
    use Forward::{Done, Send};
    // After the `PeerGone` queued for A, A's next frame waits behind it in the queue.
    assert_eq!(
        fates,
        vec![Send(ba), Send(ca), Send(aa), Done, Send(ba), Done]
    );
    assert_eq!(
        sent,
        vec![
            (ba, recv(&a, &[0; 100])),
            (ca, recv(&a, &[1; 100])),
            (aa, recv(&a, &[2; 100])),
            (ba, recv(&a, &[4; 100])),
        ]
    );
    assert_eq!(
        h.out(),
        vec![
            (aa, RelayMsg::PeerGone { node: gone }),
            (aa, recv(&a, &[5; 100]))
        ]
    );
    assert_eq!(h.relay.counters().peer_gone, 1);
    assert_eq!(h.relay.counters().forwarded, 5);
}

#[test]
fn rate_limit_holds_on_the_fast_path() {
    let mut h = H::new(Limits {
        rate_packets_per_sec: 10,
        burst_secs: 1,
        ..Limits::default()
    });
    let (_a, aa) = h.connect(1, 1001);
    let (b, ba) = h.connect(2, 1002);
    // The handshake spent nothing: the bucket holds 10.
    let datagrams = vec![send_datagram(b.node_id(), b"flood"); 30];
    let (mut buf, stride) = gro(&datagrams);
    let (fates, sent) = h.forward(aa, &mut buf, stride);
    assert_eq!(sent.len(), 10);
    assert_eq!(fates[..10], [Forward::Send(ba); 10]);
    assert_eq!(fates[10..], [Forward::Done; 20]);
    assert_eq!(h.relay.counters().dropped_rate, 20);
    h.advance(Duration::from_millis(500));
    let (mut buf, stride) = gro(&datagrams);
    let (_, sent) = h.forward(aa, &mut buf, stride);
    assert_eq!(sent.len(), 5, "five tokens refilled in half a second");
}

#[test]
fn forwarding_in_place_keeps_the_sender_alive() {
    let mut h = H::new(Limits::default());
    let (a, aa) = h.connect(1, 1001);
    let (b, _ba) = h.connect(2, 1002);
    h.advance(Duration::from_secs(40));
    let mut buf = send_datagram(b.node_id(), b"still here");
    let stride = buf.len();
    h.forward(aa, &mut buf, stride);
    h.advance(Duration::from_secs(30));
    assert!(h.relay.is_connected(&a.node_id()), "seen 30 s ago");
    assert!(!h.relay.is_connected(&b.node_id()), "silent for 70 s");
}

#[test]
fn send_from_an_unauthenticated_address_is_dropped_untouched() {
    let mut h = H::new(Limits::default());
    let (_a, _aa) = h.connect(1, 1001);
    let (b, _ba) = h.connect(2, 1002);
    let datagrams = vec![send_datagram(b.node_id(), b"spoof"); 3];
    let (mut buf, stride) = gro(&datagrams);
    let before = buf.clone();
    let (fates, sent) = h.forward(addr(9999), &mut buf, stride);
    assert_eq!(fates, vec![Forward::Done; 3]);
    assert!(sent.is_empty());
    assert_eq!(buf, before, "not rewritten");
    assert!(h.out().is_empty());
    assert_eq!(h.relay.counters().dropped_unauthenticated, 3);
    assert_eq!(h.relay.counters().forwarded, 0);
}

#[test]
fn a_destination_with_queued_frames_gets_them_in_order() {
    let mut h = H::new(Limits::default());
    let (a, aa) = h.connect(1, 1001);
    let (b, ba) = h.connect(2, 1002);
    // One frame for B waits in its queue (not yet taken by the driver).
    h.send(&a, aa, &send_to(&b, b"first"));
    let mut buf = send_datagram(b.node_id(), b"second");
    let stride = buf.len();
    let (fates, sent) = h.forward(aa, &mut buf, stride);
    assert_eq!((fates, sent), (vec![Forward::Done], vec![]));
    assert_eq!(
        h.out(),
        vec![(ba, recv(&a, b"first")), (ba, recv(&a, b"second"))]
    );
    // Queue empty again: straight from the buffer.
    let mut buf = send_datagram(b.node_id(), b"third");
    let (fates, _) = h.forward(aa, &mut buf, stride - 1);
    assert_eq!(fates, vec![Forward::Send(ba)]);
}

#[test]
fn stream_destinations_and_other_messages_take_the_queues() {
    let mut h = H::new(Limits::default());
    let (a, aa) = h.connect(1, 1001);
    let t = h.connect_stream(3, ConnId(7));
    let mut buf = send_datagram(t.node_id(), &[5; 64]);
    let stride = buf.len();
    let (fates, _) = h.forward(aa, &mut buf, stride);
    assert_eq!(fates, vec![Forward::Done]);
    assert_eq!(h.stream_out(ConnId(7)), vec![recv(&a, &[5; 64])]);
    let mut ping = a.encode(&ClientMsg::Ping { n: 3 }).unwrap();
    let stride = ping.len();
    let (fates, _) = h.forward(aa, &mut ping, stride);
    assert_eq!(fates, vec![Forward::Done]);
    assert_eq!(h.out_to(aa), vec![RelayMsg::Pong { n: 3 }]);
}

#[test]
fn a_login_in_the_batch_that_moves_links_is_seen_by_the_next_datagram() {
    let mut h = H::new(Limits::default());
    let (_a, aa) = h.connect(1, 1001);
    let (b, ba) = h.connect(2, 1002);
    // A logs in again from another address: the old link goes, which moves the new one
    // in the link table. The `Auth` and a `Send` arrive in one GRO batch.
    let mut a2 = ClientSession::new(key(1), Some(h.relay.id()), Transport::Udp);
    let a2a = addr(1005);
    h.send(&a2, a2a, &a2.hello());
    let challenge = h.out_to(a2a).remove(0);
    let auth = a2.handle(challenge).unwrap().0.unwrap();
    let auth = a2.encode(&auth).unwrap();
    let send = send_datagram(b.node_id(), &[3; 63]);
    let (mut buf, stride) = gro(&[auth, send]);
    let (fates, sent) = h.forward(a2a, &mut buf, stride);
    assert_eq!(fates, vec![Forward::Done, Forward::Send(ba)]);
    assert_eq!(sent, vec![(ba, recv(&a2, &[3; 63]))]);
    let out = h.out();
    assert!(out.contains(&(
        aa,
        RelayMsg::Refused {
            reason: RefuseReason::Replaced
        }
    )));
    assert!(matches!(out.last(), Some((a, RelayMsg::Welcome { .. })) if *a == a2a));
}

/// One datagram of a scripted batch, `size` bytes long.
#[derive(Debug, Clone, Copy)]
enum Seg {
    /// `Send` to destination `0..5` (A, B, C, the stream client, an unknown node).
    Send(usize),
    /// `Send` to B with the variant index in a longer (valid) varint form.
    LongSend,
    /// `Hello` (re-authentication: the link becomes pending).
    Hello,
    /// Bytes that decode to nothing.
    Garbage,
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        6 => (0usize..5).prop_map(Seg::Send),
        1 => Just(Seg::LongSend),
        1 => Just(Seg::Hello),
        1 => Just(Seg::Garbage),
    ]
}

/// A receive: from A, B, C or a stranger, after `wait_ms`, datagrams of `size` bytes
/// (the last `short` bytes shorter).
#[derive(Debug, Clone)]
struct Batch {
    sender: usize,
    wait_ms: u64,
    size: usize,
    short: usize,
    segs: Vec<Seg>,
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        0usize..4,
        0u64..60,
        // Not 251..=299: around 251 payload bytes not every length can be made.
        prop_oneof![160usize..250, 320usize..400],
        0usize..2,
        prop::collection::vec(seg(), 1..12),
    )
        .prop_map(|(sender, wait_ms, size, short, segs)| Batch {
            sender,
            wait_ms,
            size,
            short: short * 20,
            segs,
        })
}

/// How many bytes a byte string can have to take `total` bytes with its length (sizes
/// where that is impossible are not generated).
fn fit(total: usize) -> usize {
    if total <= 251 {
        total - 1
    } else {
        total - 3
    }
}

/// The datagram for `seg`, exactly `size` bytes long.
fn encode_seg(seg: Seg, size: usize, dsts: &[NodeId; 5]) -> Vec<u8> {
    // magic 4, frame header 5, variant 1, node 32, then the payload's length and bytes.
    let send_payload = |extra: usize| fit(size - 4 - 5 - 1 - 32 - extra);
    let d = match seg {
        Seg::Send(i) => send_datagram(dsts[i], &vec![i as u8; send_payload(0)]),
        Seg::LongSend => {
            let mut d = send_datagram(dsts[1], &vec![7; send_payload(2)]);
            // Variant 2 as `0xFB, 2, 0` (u16 form): longer but valid.
            d.splice(9..10, [0xFB, 2, 0]);
            let len = (d.len() - 8) as u32;
            d[4..8].copy_from_slice(&len.to_be_bytes());
            d
        }
        Seg::Hello => {
            let hello = |pad: usize| ClientMsg::Hello {
                version: wire::RELAY_VERSION,
                pad: Payload(vec![0; pad]),
            };
            let base = wire::encode_datagram(&hello(0), 1 << 20).unwrap().len();
            wire::encode_datagram(&hello(fit(size - base + 1)), 1 << 20).unwrap()
        }
        Seg::Garbage => vec![0xA7; size],
    };
    assert_eq!(d.len(), size, "{seg:?}");
    d
}

/// The relay's visible behaviour: per UDP address the datagrams it sent (in order), the
/// stream client's frames, the counters and the gauges.
type Seen = (
    HashMap<SocketAddr, Vec<Vec<u8>>>,
    Vec<Vec<u8>>,
    crate::metrics::Counters,
    usize,
    usize,
);

/// Runs `batches` on a relay with A, B, C on UDP and a stream client; `fast` uses
/// `forward_in_place`, else `handle_datagram` per datagram.
fn run(batches: &[Batch], fast: bool) -> Seen {
    let mut h = H::new(Limits {
        rate_packets_per_sec: 15,
        burst_secs: 1,
        ..Limits::default()
    });
    let (a, aa) = h.connect(1, 1001);
    let (b, ba) = h.connect(2, 1002);
    let (c, ca) = h.connect(3, 1003);
    let t = h.connect_stream(4, ConnId(1));
    let dsts = [
        a.node_id(),
        b.node_id(),
        c.node_id(),
        t.node_id(),
        key(99).node_id(),
    ];
    let senders = [aa, ba, ca, addr(9999)];
    let mut udp: HashMap<SocketAddr, Vec<Vec<u8>>> = HashMap::new();
    let mut stream = Vec::new();
    for b in batches {
        h.now += Duration::from_millis(b.wait_ms);
        let mut datagrams: Vec<_> = b
            .segs
            .iter()
            .map(|s| encode_seg(*s, b.size, &dsts))
            .collect();
        if let Some(last) = datagrams.last_mut() {
            if b.short > 0 {
                *last = encode_seg(b.segs[b.segs.len() - 1], b.size - b.short, &dsts);
            }
        }
        let (mut buf, stride) = gro(&datagrams);
        let from = senders[b.sender];
        if fast {
            let mut fates = Vec::new();
            h.relay
                .forward_in_place(h.now, from, &mut buf, stride, &mut fates);
            for (d, f) in buf.chunks(stride).zip(&fates) {
                if let Forward::Send(to) = f {
                    udp.entry(*to).or_default().push(d.to_vec());
                }
            }
        } else {
            for d in buf.chunks(stride) {
                h.relay.handle_datagram(h.now, from, d);
            }
        }
        while h.relay.poll_event().is_some() {}
        while let Some((to, d)) = h.relay.poll_udp() {
            udp.entry(to).or_default().push(d);
        }
        while let StreamPoll::Frame(f) = h.relay.poll_stream(ConnId(1)) {
            stream.push(f);
        }
        // Clients a `Hello` unpinned log in again (so later batches forward again).
        for (seed, port) in [(1, 1001), (2, 1002), (3, 1003)] {
            if !h.relay.is_connected(&key(seed).node_id()) {
                h.connect(seed, port);
            }
        }
    }
    let snap = h.relay.snapshot();
    (udp, stream, snap.counters, snap.clients_udp, snap.pending)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever arrives, in whatever batches: the same datagrams to the same clients in
    /// the same order, the same counters, the same clients, with or without the fast path.
    #[test]
    fn fast_path_has_the_outcome_of_the_general_path(
        batches in prop::collection::vec(batch(), 1..30),
    ) {
        let slow = run(&batches, false);
        let fast = run(&batches, true);
        prop_assert_eq!(fast, slow);
    }
}
