//! The link's state machine against the real sans-IO relay core (`agentmesh_relay::Relay`),
//! in virtual time: hello → ready, pings, UDP → TLS fallback and back, reconnect after
//! `Restarting`, backoff, the queue bound, forwarding between two links.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_proto::relay::{self as wire, ClientMsg};
use agentmesh_proto::SecretKey;
use agentmesh_relay::{ConnId, Limits, MemStore, Relay, StreamPoll};

use super::events::{DisconnectReason, LinkEvent, LinkTransmit, TlsConnId};
use super::state::RelayLinkState;
use super::tls::frame_len;
use super::{RelayLinkConfig, RelayTransport};

const RELAY_UDP: &str = "203.0.113.1:3479";
const RELAY_TLS: &str = "203.0.113.1:443";

fn key(seed: u8) -> SecretKey {
    SecretKey::from_bytes(&[seed; 32])
}

fn relay_core(now: Instant) -> Relay<MemStore> {
    Relay::new(
        key(200).node_id(),
        Limits::default(),
        MemStore::default(),
        [9; 32],
        now,
        1_000_000,
    )
}

fn config(tls: bool) -> RelayLinkConfig {
    RelayLinkConfig::new(
        key(200).node_id(),
        RELAY_UDP.parse().unwrap(),
        tls.then(|| RELAY_TLS.parse().unwrap()),
    )
}

/// One daemon's link and what the test network lets through.
struct Node {
    link: RelayLinkState,
    addr: SocketAddr,
    index: u64,
    udp_ok: bool,
    tls_ok: bool,
    /// How many challenge answers (UDP `Auth`) the network loses.
    lose_auth: u32,
    open: Option<TlsConnId>,
    events: Vec<(Duration, LinkEvent)>,
    udp_sent: Vec<(Duration, ClientMsg)>,
    tls_opened: Vec<Duration>,
}

struct World {
    relay: Relay<MemStore>,
    nodes: Vec<Node>,
    start: Instant,
    now: Instant,
}

impl World {
    fn new(configs: Vec<RelayLinkConfig>) -> Self {
        let start = Instant::now();
        let nodes = configs
            .into_iter()
            .enumerate()
            .map(|(i, c)| Node {
                link: RelayLinkState::new(c, key(i as u8 + 1), start),
                addr: SocketAddr::from(([198, 51, 100, i as u8 + 1], 4000)),
                index: i as u64,
                udp_ok: true,
                tls_ok: true,
                lose_auth: 0,
                open: None,
                events: Vec::new(),
                udp_sent: Vec::new(),
                tls_opened: Vec::new(),
            })
            .collect();
        // Nothing moves until the first pump: a test can block transports first.
        World {
            relay: relay_core(start),
            nodes,
            start,
            now: start,
        }
    }

    fn t(&self) -> Duration {
        self.now - self.start
    }

    fn cid(n: &Node, conn: TlsConnId) -> ConnId {
        ConnId(n.index * 1_000_000 + conn)
    }

    /// Moves bytes until nobody has anything left to say.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            for i in 0..self.nodes.len() {
                progress |= self.pump_node(i);
            }
            while let Some((dst, bytes)) = self.relay.poll_udp() {
                progress = true;
                let relay = RELAY_UDP.parse().unwrap();
                if let Some(n) = self.nodes.iter_mut().find(|n| n.addr == dst && n.udp_ok) {
                    n.link.handle_udp(self.now, relay, &bytes);
                }
            }
            for i in 0..self.nodes.len() {
                progress |= self.pump_stream(i);
            }
            while self.relay.poll_event().is_some() {}
            if !progress {
                return;
            }
        }
        panic!("the link and the relay never went quiet");
    }

    fn pump_node(&mut self, i: usize) -> bool {
        let (now, t) = (self.now, self.t());
        let n = &mut self.nodes[i];
        let mut progress = false;
        while let Some(tx) = n.link.poll_transmit() {
            progress = true;
            match tx {
                LinkTransmit::Udp { dst, bytes } => {
                    assert_eq!(dst, RELAY_UDP.parse().unwrap());
                    let msg: ClientMsg = wire::decode_datagram(&bytes, 1 << 20).unwrap();
                    let lost = matches!(msg, ClientMsg::Auth { .. }) && n.lose_auth > 0;
                    n.lose_auth -= u32::from(lost);
                    n.udp_sent.push((t, msg));
                    if n.udp_ok && !lost {
                        self.relay.handle_datagram(now, n.addr, &bytes);
                    }
                }
                LinkTransmit::OpenTls { conn, addr, relay } => {
                    assert_eq!(
                        (addr, relay),
                        (RELAY_TLS.parse().unwrap(), key(200).node_id())
                    );
                    n.tls_opened.push(t);
                    if n.tls_ok {
                        self.relay.handle_stream_open(now, Self::cid(n, conn));
                        n.open = Some(conn);
                        n.link.handle_tls_open(now, conn);
                    } else {
                        n.link.handle_tls_closed(now, conn);
                    }
                }
                LinkTransmit::Tls { conn, bytes } => {
                    assert_eq!(n.open, Some(conn), "frames only for the open connection");
                    self.relay
                        .handle_stream_bytes(now, Self::cid(n, conn), &bytes);
                }
                LinkTransmit::CloseTls { conn } => {
                    if n.open == Some(conn) {
                        self.relay.handle_stream_closed(Self::cid(n, conn));
                        n.open = None;
                    }
                }
            }
        }
        while let Some(e) = n.link.poll_event() {
            n.events.push((t, e));
        }
        progress
    }

    fn pump_stream(&mut self, i: usize) -> bool {
        let now = self.now;
        let n = &mut self.nodes[i];
        let Some(conn) = n.open else {
            return false;
        };
        let mut progress = false;
        loop {
            match self.relay.poll_stream(Self::cid(n, conn)) {
                StreamPoll::Frame(f) => {
                    progress = true;
                    n.link.handle_tls_frame(now, conn, &f);
                }
                StreamPoll::Idle => return progress,
                StreamPoll::Close => {
                    self.relay.handle_stream_closed(Self::cid(n, conn));
                    n.open = None;
                    n.link.handle_tls_closed(now, conn);
                    return true;
                }
            }
        }
    }

    /// Runs every timer up to `d` from the start.
    fn run_until(&mut self, d: Duration) {
        let target = self.start + d;
        self.pump();
        for _ in 0..1_000_000 {
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.link.poll_timeout())
                .min()
                .unwrap_or(target)
                .clamp(self.now, target);
            self.now = next;
            for n in &mut self.nodes {
                if n.link.poll_timeout().is_some_and(|t| t <= next) {
                    n.link.handle_timeout(next);
                }
            }
            self.relay.handle_timeout(next);
            self.pump();
            if self.now >= target {
                return;
            }
        }
        panic!("timers never reached {d:?}");
    }

    fn events(&self, i: usize) -> Vec<(Duration, LinkEvent)> {
        self.nodes[i].events.clone()
    }

    fn connects(&self, i: usize) -> Vec<(Duration, RelayTransport)> {
        self.nodes[i]
            .events
            .iter()
            .filter_map(|(t, e)| match e {
                LinkEvent::Connected { transport } => Some((*t, *transport)),
                _ => None,
            })
            .collect()
    }

    fn pings(&self, i: usize) -> Vec<Duration> {
        self.nodes[i]
            .udp_sent
            .iter()
            .filter(|(_, m)| matches!(m, ClientMsg::Ping { .. }))
            .map(|(t, _)| *t)
            .collect()
    }

    fn hellos(&self, i: usize) -> Vec<Duration> {
        self.nodes[i]
            .udp_sent
            .iter()
            .filter(|(_, m)| matches!(m, ClientMsg::Hello { .. }))
            .map(|(t, _)| *t)
            .collect()
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn hello_gets_ready_at_once_and_pings_every_interval() {
    let mut w = World::new(vec![config(true)]);
    w.pump();
    assert_eq!(w.connects(0), vec![(Duration::ZERO, RelayTransport::Udp)]);
    assert!(w.nodes[0].link.is_connected());
    assert_eq!(w.hellos(0).len(), 1, "one hello, answered at once");
    w.run_until(secs(50.0));
    assert_eq!(w.pings(0), vec![secs(15.0), secs(30.0), secs(45.0)]);
    assert!(w.nodes[0].tls_opened.is_empty(), "never needed tls");
    assert_eq!(w.connects(0).len(), 1, "pongs kept the link up");
}

#[test]
fn falls_back_to_tls_when_udp_gets_no_answer_within_two_seconds() {
    let mut cfg = vec![config(true)];
    cfg[0].queue = 10;
    let mut w = World::new(cfg);
    w.nodes[0].udp_ok = false;
    w.run_until(secs(1.99));
    assert!(!w.nodes[0].link.is_connected());
    assert_eq!(
        w.hellos(0),
        vec![secs(0.0), secs(0.5), secs(1.0), secs(1.5)],
        "hellos repeat until answered"
    );
    w.run_until(secs(3.0));
    assert_eq!(w.nodes[0].tls_opened, vec![secs(2.0)]);
    assert_eq!(w.connects(0), vec![(secs(2.0), RelayTransport::Tls)]);
    assert_eq!(w.relay.snapshot().clients_tls, 1);
    // Pings now go over TLS, none over UDP.
    let before = w.nodes[0].udp_sent.len();
    w.run_until(secs(40.0));
    assert_eq!(w.nodes[0].udp_sent.len(), before);
    assert_eq!(w.connects(0).len(), 1, "tls pongs kept the link up");
}

#[test]
fn udp_going_silent_moves_the_link_to_tls() {
    let mut w = World::new(vec![config(true)]);
    w.run_until(secs(1.0));
    w.nodes[0].udp_ok = false;
    w.run_until(secs(40.0));
    // Ping at 15 s missed at 20 s, again at 20 s missed at 25 s: dead. A new UDP hello
    // at once (the relay may only have forgotten us), TLS 2 s later.
    let ev = w.events(0);
    assert!(
        ev.contains(&(
            secs(25.0),
            LinkEvent::Disconnected {
                transport: RelayTransport::Udp,
                reason: DisconnectReason::Silent
            }
        )),
        "{ev:?}"
    );
    let hellos = w.hellos(0);
    assert_eq!(
        hellos[1..],
        [secs(25.0), secs(25.5), secs(26.0), secs(26.5)]
    );
    assert_eq!(
        w.connects(0),
        vec![
            (secs(0.0), RelayTransport::Udp),
            (secs(27.0), RelayTransport::Tls)
        ]
    );
}

#[test]
fn a_relay_that_forgot_us_is_rejoined_over_udp() {
    let mut w = World::new(vec![config(true)]);
    w.run_until(secs(1.0));
    w.relay = relay_core(w.now); // crashed and restarted: no Restarting was sent
    w.run_until(secs(30.0));
    assert_eq!(
        w.connects(0),
        vec![
            (secs(0.0), RelayTransport::Udp),
            (secs(25.0), RelayTransport::Udp)
        ],
        "pings went unanswered, the new hello was answered"
    );
    assert!(w.nodes[0].tls_opened.is_empty());
}

#[test]
fn on_tls_udp_is_retried_and_taken_back_when_it_answers() {
    let mut w = World::new(vec![config(true)]);
    w.nodes[0].udp_ok = false;
    w.run_until(secs(3.0));
    assert_eq!(w.nodes[0].link.transport(), Some(RelayTransport::Tls));
    w.run_until(secs(65.0));
    let hellos = w.hellos(0);
    let retries: Vec<_> = hellos.into_iter().filter(|t| *t > secs(3.0)).collect();
    assert_eq!(
        retries,
        vec![secs(62.0), secs(62.5), secs(63.0), secs(63.5)]
    );
    assert_eq!(w.nodes[0].link.transport(), Some(RelayTransport::Tls));
    w.nodes[0].udp_ok = true; // the network lets UDP through again
    w.run_until(secs(125.0));
    assert_eq!(
        w.connects(0),
        vec![
            (secs(2.0), RelayTransport::Tls),
            (secs(124.0), RelayTransport::Udp)
        ]
    );
    assert_eq!(w.nodes[0].open, None, "the TLS connection was closed");
    let snap = w.relay.snapshot();
    assert_eq!((snap.clients_udp, snap.clients_tls), (1, 0));
}

#[test]
fn restarting_relay_is_reconnected_after_its_delay() {
    let mut w = World::new(vec![config(true)]);
    w.run_until(secs(1.0));
    w.relay.begin_drain(); // suggests 2 s
    w.pump();
    assert!(w.events(0).contains(&(
        secs(1.0),
        LinkEvent::Disconnected {
            transport: RelayTransport::Udp,
            reason: DisconnectReason::Restarting {
                after: Duration::from_millis(2000)
            }
        }
    )));
    w.relay = relay_core(w.now); // the relay comes back, new process
    w.run_until(secs(2.9));
    assert_eq!(w.connects(0).len(), 1, "waits the suggested delay");
    w.run_until(secs(3.5));
    assert_eq!(
        w.connects(0),
        vec![
            (secs(0.0), RelayTransport::Udp),
            (secs(3.0), RelayTransport::Udp)
        ]
    );
}

#[test]
fn reconnect_backoff_doubles_up_to_its_bound() {
    let mut w = World::new(vec![config(true)]);
    w.nodes[0].udp_ok = false;
    w.nodes[0].tls_ok = false;
    w.run_until(secs(200.0));
    let opened = &w.nodes[0].tls_opened;
    let gaps: Vec<f64> = opened
        .windows(2)
        .map(|p| (p[1] - p[0]).as_secs_f64())
        .collect();
    // Each round: 2 s of UDP hellos, then TLS fails, then the backoff.
    assert_eq!(gaps[..7], [2.5, 3.0, 4.0, 6.0, 10.0, 18.0, 32.0]);
    assert!(gaps[7..].iter().all(|g| *g == 32.0), "{gaps:?}");
    assert!(!w.nodes[0].link.is_connected());
}

#[test]
fn packets_wait_for_the_connection_and_the_queue_drops_the_oldest() {
    let mut cfgs = vec![config(false), config(false)];
    cfgs[0].queue = 256;
    let mut w = World::new(cfgs);
    let b = key(2).node_id();
    w.nodes[0].udp_ok = false;
    w.run_until(secs(3.0)); // UDP only: hello attempts keep failing
    for i in 0..300u32 {
        w.nodes[0].link.send(b, i.to_be_bytes().to_vec());
    }
    assert_eq!(w.nodes[0].link.queued(), 256);
    assert_eq!(w.nodes[0].link.counters().dropped, 44);
    w.nodes[0].udp_ok = true;
    w.run_until(secs(10.0));
    assert!(w.nodes[0].link.is_connected());
    let got: Vec<u32> = w
        .events(1)
        .iter()
        .filter_map(|(_, e)| match e {
            LinkEvent::Received { packet, .. } => {
                Some(u32::from_be_bytes(packet[..4].try_into().unwrap()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        (44..300).collect::<Vec<_>>(),
        "oldest dropped, rest in order"
    );
    assert_eq!(w.nodes[0].link.counters().sent, 256);
    assert_eq!(w.nodes[1].link.counters().received, 256);
}

#[test]
fn packets_cross_between_a_udp_link_and_a_tls_link() {
    let mut w = World::new(vec![config(true), config(true)]);
    w.nodes[1].udp_ok = false;
    w.run_until(secs(3.0));
    assert_eq!(w.nodes[0].link.transport(), Some(RelayTransport::Udp));
    assert_eq!(w.nodes[1].link.transport(), Some(RelayTransport::Tls));
    let (a, b) = (key(1).node_id(), key(2).node_id());
    w.nodes[0].link.send(b, b"to b".to_vec());
    w.nodes[1].link.send(a, b"to a".to_vec());
    w.nodes[1].link.send(key(9).node_id(), b"nobody".to_vec());
    w.pump();
    let received = |i: usize| -> Vec<LinkEvent> {
        w.events(i)
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| matches!(e, LinkEvent::Received { .. } | LinkEvent::PeerGone(_)))
            .collect()
    };
    assert_eq!(
        received(1),
        vec![
            LinkEvent::Received {
                from: a,
                packet: b"to b".to_vec()
            },
            LinkEvent::PeerGone(key(9).node_id())
        ]
    );
    assert_eq!(
        received(0),
        vec![LinkEvent::Received {
            from: b,
            packet: b"to a".to_vec()
        }]
    );
}

#[test]
fn datagrams_not_from_the_relay_address_are_ignored() {
    let mut w = World::new(vec![config(false)]);
    let msg = agentmesh_proto::relay::RelayMsg::Recv {
        from: key(7).node_id(),
        payload: b"spoof".to_vec().into(),
    };
    let bytes = wire::encode_datagram(&msg, 1 << 20).unwrap();
    let now = w.now;
    let stranger = "198.51.100.77:3479".parse().unwrap();
    w.nodes[0].link.handle_udp(now, stranger, &bytes);
    assert_eq!(w.nodes[0].link.poll_event(), None);
    assert_eq!(w.nodes[0].link.counters().malformed, 1);
    // The same bytes from the relay's address, IPv4-mapped, are accepted.
    let mapped = "[::ffff:203.0.113.1]:3479".parse().unwrap();
    w.nodes[0].link.handle_udp(now, mapped, &bytes);
    assert!(matches!(
        w.nodes[0].link.poll_event(),
        Some(LinkEvent::Received { .. })
    ));
}

#[test]
fn frames_are_cut_from_a_stream_only_when_whole() {
    let msg = ClientMsg::Ping { n: 7 };
    let frame = agentmesh_proto::frame::encode(&msg, 1 << 20).unwrap();
    let mut two = frame.clone();
    two.extend_from_slice(&frame);
    assert_eq!(frame_len(&two, 1 << 20).unwrap(), Some(frame.len()));
    assert_eq!(frame_len(&frame[..frame.len() - 1], 1 << 20).unwrap(), None);
    assert_eq!(frame_len(&frame[..3], 1 << 20).unwrap(), None);
    assert!(frame_len(&[0, 0, 0, 0, 1], 1 << 20).is_err());
    assert!(frame_len(&[0, 1, 0, 0, 1], 1000).is_err());
}

fn stored(w: &World, i: usize) -> Vec<(Duration, u64, Option<wire::StoreOutcome>)> {
    w.events(i)
        .into_iter()
        .filter_map(|(t, e)| match e {
            LinkEvent::Stored { id, outcome } => Some((t, id, outcome)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_store_waits_for_the_link_and_the_mail_reaches_its_node_when_it_connects() {
    let mut w = World::new(vec![config(false), config(false)]);
    w.nodes[0].udp_ok = false;
    w.nodes[1].udp_ok = false;
    w.pump();
    let (a, b) = (key(1).node_id(), key(2).node_id());
    let now = w.now;
    let id = w.nodes[0].link.store(now, b, b"sealed for b".to_vec());
    w.run_until(secs(1.2));
    assert!(stored(&w, 0).is_empty(), "not connected: still trying");
    assert_eq!(w.nodes[0].link.stores_pending(), 1);
    w.nodes[0].udp_ok = true;
    w.run_until(secs(4.0));
    let acks = stored(&w, 0);
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(
        (acks[0].1, acks[0].2),
        (id, Some(wire::StoreOutcome::Stored))
    );
    assert_eq!(w.nodes[0].link.stores_pending(), 0);
    // B comes online later and gets the mail, once.
    w.nodes[1].udp_ok = true;
    w.run_until(secs(30.0));
    let mail: Vec<LinkEvent> = w
        .events(1)
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| matches!(e, LinkEvent::Mail { .. }))
        .collect();
    assert_eq!(
        mail,
        vec![LinkEvent::Mail {
            from: a,
            sealed: b"sealed for b".to_vec()
        }]
    );
}

#[test]
fn a_store_the_relay_never_answers_ends_after_its_tries() {
    let mut w = World::new(vec![config(false)]);
    w.nodes[0].udp_ok = false;
    w.pump();
    let now = w.now;
    let id = w.nodes[0].link.store(now, key(2).node_id(), b"x".to_vec());
    w.run_until(secs(10.0));
    let tries = super::STORE_ATTEMPTS;
    let retry = super::STORE_RETRY;
    assert_eq!(stored(&w, 0), vec![(retry * tries, id, None)]);
    assert_eq!(w.nodes[0].link.stores_pending(), 0);
}

#[test]
fn a_lost_challenge_answer_is_followed_by_a_new_hello_soon() {
    let mut w = World::new(vec![config(true)]);
    w.nodes[0].lose_auth = 1;
    w.run_until(secs(1.0));
    assert_eq!(
        w.connects(0),
        vec![(secs(0.5), RelayTransport::Udp)],
        "one hello interval after the lost answer, not the 2 s TLS fallback"
    );
    assert_eq!(w.hellos(0), vec![secs(0.0), secs(0.5)]);
    assert!(w.nodes[0].tls_opened.is_empty());
}
