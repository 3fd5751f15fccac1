//! Two punches driven against each other over a tiny model of two NATs: endpoint-
//! independent mapping with address-and-port-dependent filtering (Linux masquerade),
//! so inbound packets pass only after the inside has sent to that exact address.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A port-restricted cone NAT with one inside host: `public` is its mapping.
struct Nat {
    public: SocketAddr,
    opened: HashSet<SocketAddr>,
}

impl Nat {
    fn outbound(&mut self, dst: SocketAddr) {
        self.opened.insert(dst);
    }
    fn inbound_allowed(&self, src: SocketAddr) -> bool {
        self.opened.contains(&src)
    }
}

struct World {
    now: Instant,
    sides: [(Punch, Nat); 2],
    latency: Duration,
    in_flight: Vec<(Instant, usize, SocketAddr, ProbeBody)>, // (arrival, to side, src, body)
    events: [Vec<PunchEvent>; 2],
}

impl World {
    fn new(latency: Duration, skew: Duration) -> World {
        let now = Instant::now();
        let a_pub = addr("203.0.113.10:40000");
        let b_pub = addr("198.51.100.20:50000");
        let cfg = PunchConfig::default();
        let a = Punch::new(cfg.clone(), 1, [(b_pub, CandidateKind::Reflexive)], now, 11);
        let b = Punch::new(cfg, 1, [(a_pub, CandidateKind::Reflexive)], now + skew, 22);
        World {
            now,
            sides: [
                (
                    a,
                    Nat {
                        public: a_pub,
                        opened: HashSet::new(),
                    },
                ),
                (
                    b,
                    Nat {
                        public: b_pub,
                        opened: HashSet::new(),
                    },
                ),
            ],
            latency,
            in_flight: Vec::new(),
            events: [Vec::new(), Vec::new()],
        }
    }

    fn flush(&mut self) {
        for i in 0..2 {
            while let Some(t) = self.sides[i].0.poll_transmit() {
                self.sides[i].1.outbound(t.dst);
                let to = 1 - i;
                if self.sides[to].1.public == t.dst {
                    let src = self.sides[i].1.public;
                    self.in_flight
                        .push((self.now + self.latency, to, src, t.body));
                }
            }
            while let Some(e) = self.sides[i].0.poll_event() {
                self.events[i].push(e);
            }
        }
    }

    fn run(&mut self, until: Duration) {
        let end = self.now + until;
        for _ in 0..100_000 {
            let next_timer = self
                .sides
                .iter()
                .filter_map(|(p, _)| p.poll_timeout())
                .min();
            let next_packet = self.in_flight.iter().map(|(t, ..)| *t).min();
            let Some(next) = [next_timer, next_packet].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let (due, rest): (Vec<_>, Vec<_>) =
                self.in_flight.drain(..).partition(|(t, ..)| *t <= self.now);
            self.in_flight = rest;
            for (_, to, src, body) in due {
                if self.sides[to].1.inbound_allowed(src) {
                    self.sides[to].0.handle_probe(self.now, src, body);
                }
            }
            for (p, _) in self.sides.iter_mut() {
                if p.poll_timeout().is_some_and(|t| t <= self.now) {
                    p.handle_timeout(self.now);
                }
            }
            self.flush();
        }
    }
}

#[test]
fn simultaneous_pings_open_both_nats() {
    let mut w = World::new(Duration::from_millis(40), Duration::ZERO);
    w.run(Duration::from_secs(10));
    for (i, events) in w.events.iter().enumerate() {
        match events.as_slice() {
            [PunchEvent::Direct {
                addr,
                via,
                rtt,
                observed,
                socket: 0,
            }] => {
                assert_eq!(*addr, w.sides[1 - i].1.public);
                assert_eq!(*via, CandidateKind::Reflexive);
                assert_eq!(*observed, Some(w.sides[i].1.public));
                // Both first pings pass: each NAT has sent outbound before the other's ping
                // arrives, so the first round trip succeeds.
                assert_eq!(*rtt, Duration::from_millis(80));
            }
            other => panic!("side {i}: {other:?}"),
        }
    }
}

#[test]
fn works_with_clock_skew_between_the_sides() {
    let mut w = World::new(Duration::from_millis(30), Duration::from_millis(700));
    w.run(Duration::from_secs(10));
    assert!(
        matches!(w.events[0].as_slice(), [PunchEvent::Direct { .. }]),
        "{:?}",
        w.events[0]
    );
    assert!(
        matches!(w.events[1].as_slice(), [PunchEvent::Direct { .. }]),
        "{:?}",
        w.events[1]
    );
}

#[test]
fn gives_up_at_the_deadline_when_nothing_answers() {
    let now = Instant::now();
    let mut p = Punch::new(
        PunchConfig::default(),
        5,
        [(addr("203.0.113.1:1"), CandidateKind::Reflexive)],
        now,
        1,
    );
    let mut t = now;
    let mut sent = 0;
    for _ in 0..1000 {
        let Some(due) = p.poll_timeout() else { break };
        t = due;
        p.handle_timeout(t);
        while p.poll_transmit().is_some() {
            sent += 1;
        }
    }
    assert_eq!(t, now + PunchConfig::default().give_up_after);
    assert_eq!(
        p.poll_event(),
        Some(PunchEvent::GaveUp { pings_sent: sent })
    );
    // 20 fast rounds in the first second, then a slow round every 250 ms.
    assert_eq!(sent, 20 + 20);
}

#[test]
fn a_ping_from_an_unknown_address_is_answered_and_tried() {
    let now = Instant::now();
    let mut p = Punch::new(PunchConfig::default(), 9, [], now, 1);
    let src = addr("198.51.100.7:6000");
    p.handle_probe(
        now,
        src,
        ProbeBody {
            kind: ProbeKind::Ping,
            session: 9,
            nonce: 77,
            observed: None,
        },
    );
    let pong = p.poll_transmit().unwrap();
    assert_eq!(
        (pong.dst, pong.body.kind, pong.body.nonce),
        (src, ProbeKind::Pong, 77)
    );
    let ping = p.poll_transmit().unwrap();
    assert_eq!((ping.dst, ping.body.kind), (src, ProbeKind::Ping));
    // A pong for that ping from elsewhere is ignored; from the right place it succeeds.
    let answer = ProbeBody {
        kind: ProbeKind::Pong,
        session: 9,
        nonce: ping.body.nonce,
        observed: None,
    };
    p.handle_probe(now, addr("198.51.100.7:6001"), answer);
    assert_eq!(p.poll_event(), None);
    p.handle_probe(now + Duration::from_millis(5), src, answer);
    assert!(matches!(
        p.poll_event(),
        Some(PunchEvent::Direct {
            via: CandidateKind::PeerReflexive,
            ..
        })
    ));
}

#[test]
fn other_sessions_and_unknown_nonces_are_ignored() {
    let now = Instant::now();
    let mut p = Punch::new(
        PunchConfig::default(),
        1,
        [(addr("203.0.113.1:1"), CandidateKind::Reflexive)],
        now,
        1,
    );
    p.handle_probe(
        now,
        addr("203.0.113.1:1"),
        ProbeBody {
            kind: ProbeKind::Ping,
            session: 2,
            nonce: 1,
            observed: None,
        },
    );
    assert_eq!(p.poll_transmit(), None);
    p.handle_probe(
        now,
        addr("203.0.113.1:1"),
        ProbeBody {
            kind: ProbeKind::Pong,
            session: 1,
            nonce: 12345,
            observed: None,
        },
    );
    assert_eq!(p.poll_event(), None);
}

#[test]
fn predicted_ports_follow_the_observed_one() {
    let got: Vec<u16> = predicted_ports(addr("203.0.113.1:65533"), 4)
        .iter()
        .map(|(a, _)| a.port())
        .collect();
    assert_eq!(got, vec![65534, 65535]);
}

/// Drives a lone punch (no answers) through its whole life; returns every transmit with
/// the time it was due.
fn lone_run(
    spray: Spray,
    candidates: Vec<(SocketAddr, CandidateKind)>,
) -> Vec<(Duration, Transmit)> {
    let start = Instant::now();
    let mut p = Punch::new(PunchConfig::default(), 3, candidates, start, 5).with_spray(spray);
    let mut out = Vec::new();
    while let Some(at) = p.poll_timeout() {
        p.handle_timeout(at);
        while let Some(t) = p.poll_transmit() {
            out.push((at - start, t));
        }
        assert!(at - start <= Duration::from_secs(10), "never gives up");
    }
    assert!(matches!(p.poll_event(), Some(PunchEvent::GaveUp { .. })));
    out
}

#[test]
fn spraying_random_ports_is_bounded_and_waits_for_the_plain_punch() {
    let peer = addr("198.51.100.20:50000");
    let cfg = SprayConfig::default();
    let sent = lone_run(
        Spray::Ports { ip: peer.ip() },
        vec![(peer, CandidateKind::Reflexive)],
    );
    let sprayed: Vec<&(Duration, Transmit)> = sent.iter().filter(|(_, t)| t.dst != peer).collect();
    assert_eq!(sprayed.len(), cfg.budget as usize, "exactly the budget");
    assert!(sprayed.iter().all(|(at, t)| *at >= cfg.after
        && t.dst.ip() == peer.ip()
        && t.dst.port() >= cfg.min_port
        && t.socket == 0));
    // Paced: never more than `per_round` in one round.
    let mut per_round = std::collections::HashMap::new();
    for (at, _) in &sprayed {
        *per_round.entry(*at).or_insert(0u32) += 1;
    }
    assert!(per_round.values().all(|n| *n <= cfg.per_round));
    let distinct: HashSet<u16> = sprayed.iter().map(|(_, t)| t.dst.port()).collect();
    assert!(distinct.len() > 900, "ports spread: {}", distinct.len());
}

#[test]
fn the_hard_side_pings_from_every_extra_socket_once_a_second() {
    let peer = addr("198.51.100.20:50000");
    let sent = lone_run(
        Spray::Doors { sockets: 4 },
        vec![
            (peer, CandidateKind::Reflexive),
            (addr("10.0.0.2:5000"), CandidateKind::Local),
        ],
    );
    let doors: Vec<&(Duration, Transmit)> = sent.iter().filter(|(_, t)| t.socket != 0).collect();
    // From 1 s to the 6 s give-up, every second: 5 rounds of 4 sockets, public target only.
    assert_eq!(doors.len(), 5 * 4);
    assert!(doors
        .iter()
        .all(|(at, t)| t.dst == peer && *at >= Duration::from_secs(1)));
    let sockets: HashSet<u16> = doors.iter().map(|(_, t)| t.socket).collect();
    assert_eq!(sockets, (1..=4).collect());
}

#[test]
fn a_sprayed_ping_on_an_extra_socket_is_answered_from_it_and_wins_there() {
    let now = Instant::now();
    let easy = addr("198.51.100.20:50000");
    let mut p = Punch::new(
        PunchConfig::default(),
        9,
        [(easy, CandidateKind::Reflexive)],
        now,
        1,
    )
    .with_spray(Spray::Doors { sockets: 8 });
    let ping = ProbeBody {
        kind: ProbeKind::Ping,
        session: 9,
        nonce: 77,
        observed: None,
    };
    p.handle_probe_on(now, easy, 5, ping);
    let pong = p.poll_transmit().unwrap();
    assert_eq!(
        (pong.dst, pong.socket, pong.body.kind),
        (easy, 5, ProbeKind::Pong)
    );
    let back = p.poll_transmit().unwrap();
    assert_eq!(
        (back.dst, back.socket, back.body.kind),
        (easy, 5, ProbeKind::Ping)
    );
    // Its pong on another socket does not count; on socket 5 it does.
    let answer = ProbeBody {
        kind: ProbeKind::Pong,
        session: 9,
        nonce: back.body.nonce,
        observed: None,
    };
    p.handle_probe_on(now, easy, 0, answer);
    assert_eq!(p.poll_event(), None);
    p.handle_probe_on(now + Duration::from_millis(3), easy, 5, answer);
    assert!(matches!(
        p.poll_event(),
        Some(PunchEvent::Direct {
            via: CandidateKind::ManyPort,
            socket: 5,
            ..
        })
    ));
}

#[test]
fn only_random_symmetric_against_endpoint_independent_sprays() {
    use MappingKind::*;
    let cfg = SprayConfig::default();
    let hard = addr("198.51.100.20:1").ip();
    let ip = Some(hard);
    assert_eq!(
        spray_role(Random, EndpointIndependent, ip, &cfg),
        Spray::Doors { sockets: 256 }
    );
    assert_eq!(
        spray_role(EndpointIndependent, Random, ip, &cfg),
        Spray::Ports { ip: hard }
    );
    for (a, b) in [
        (Random, Random),
        (Random, Sequential),
        (Sequential, EndpointIndependent),
        (EndpointIndependent, EndpointIndependent),
        (OpenOrUnknown, Random),
    ] {
        assert_eq!(spray_role(a, b, ip, &cfg), Spray::Off, "{a:?} x {b:?}");
    }
    assert_eq!(
        spray_role(EndpointIndependent, Random, None, &cfg),
        Spray::Off
    );
}

/// A renewed punch (the pair's second introduction) keeps what the first one learned:
/// it pings the peer-reflexive address under the new session, answers pings of the
/// earlier session echoing it, and takes the pong of a ping sent before the renewal.
#[test]
fn a_renewed_punch_keeps_what_it_learned() {
    let now = Instant::now();
    let (rdv, prflx) = (addr("203.0.113.15:26573"), addr("203.0.113.15:40001"));
    let mut p = Punch::new(
        PunchConfig::default(),
        1,
        [(rdv, CandidateKind::Reflexive)],
        now,
        1,
    );
    let ping = |session, nonce| ProbeBody {
        kind: ProbeKind::Ping,
        session,
        nonce,
        observed: None,
    };
    p.handle_probe(now, prflx, ping(1, 77));
    let sent: Vec<Transmit> = std::iter::from_fn(|| p.poll_transmit()).collect();
    let first = sent
        .iter()
        .find(|x| x.dst == prflx && x.body.kind == ProbeKind::Ping)
        .expect("pinged the peer-reflexive address")
        .body;
    let later = now + Duration::from_millis(20);
    p.renew(2, [(rdv, CandidateKind::Reflexive)], later, Spray::Off);
    assert_eq!(p.session(), 2);
    p.handle_timeout(later);
    let round: Vec<Transmit> = std::iter::from_fn(|| p.poll_transmit()).collect();
    assert!(
        round
            .iter()
            .any(|x| x.dst == prflx && x.body.session == 2 && x.body.kind == ProbeKind::Ping),
        "{round:?}"
    );
    // The peer still punches under session 1: its ping is answered in session 1.
    p.handle_probe(later, prflx, ping(1, 78));
    let pong = p.poll_transmit().expect("answered");
    assert_eq!((pong.body.kind, pong.body.session), (ProbeKind::Pong, 1));
    // An unrelated session stays ignored.
    p.handle_probe(later, prflx, ping(9, 79));
    assert_eq!(p.poll_transmit(), None);
    // The pong of the ping sent before the renewal proves the path.
    p.handle_probe(
        later,
        prflx,
        ProbeBody {
            kind: ProbeKind::Pong,
            observed: None,
            ..first
        },
    );
    assert!(matches!(
        p.poll_event(),
        Some(PunchEvent::Direct { addr, .. }) if addr == prflx
    ));
}
