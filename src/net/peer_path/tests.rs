//! Path lifecycle tests: relay first, punch to direct, keepalive, fallback, upgrades.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn drain_events(p: &mut PeerPath) -> Vec<PathEvent> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

/// Runs two paths against each other over a lossless 10 ms wire, no NAT.
fn punch_pair(now: Instant) -> (PeerPath, PeerPath, SocketAddr, SocketAddr, Instant) {
    let (a_addr, b_addr) = (addr("203.0.113.1:1000"), addr("198.51.100.1:2000"));
    let mut a = PeerPath::new(now, PathConfig::default(), Tier::RelayUdp, 1);
    let mut b = PeerPath::new(now, PathConfig::default(), Tier::RelayUdp, 2);
    drain_events(&mut a);
    drain_events(&mut b);
    a.handle_introduction(7, vec![(b_addr, CandidateKind::Reflexive)], now);
    b.handle_introduction(7, vec![(a_addr, CandidateKind::Reflexive)], now);
    let mut t = now;
    for _ in 0..200 {
        for p in [&mut a, &mut b] {
            if p.poll_timeout().is_some_and(|d| d <= t) {
                p.handle_timeout(t);
            }
        }
        let ta: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
        let tb: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
        t += Duration::from_millis(10);
        for x in ta.into_iter().filter(|x| x.dst == b_addr) {
            b.handle_probe(t, a_addr, x.body);
        }
        for x in tb.into_iter().filter(|x| x.dst == a_addr) {
            a.handle_probe(t, b_addr, x.body);
        }
        if matches!(a.path(), Path::Direct(_)) && matches!(b.path(), Path::Direct(_)) {
            break;
        }
    }
    (a, b, a_addr, b_addr, t)
}

#[test]
fn starts_relayed_and_asks_for_an_introduction() {
    let mut p = PeerPath::new(Instant::now(), PathConfig::default(), Tier::RelayTcp, 1);
    assert_eq!(
        drain_events(&mut p),
        vec![
            PathEvent::Changed {
                path: Path::Relay,
                tier: Tier::RelayTcp,
                rtt: None
            },
            PathEvent::WantIntroduction
        ]
    );
    assert_eq!(p.tier().name(), "relay-tcp");
}

#[test]
fn an_introduction_leads_to_a_direct_path_on_both_sides() {
    let now = Instant::now();
    let (mut a, mut b, a_addr, b_addr, _) = punch_pair(now);
    assert_eq!(a.path(), Path::Direct(b_addr));
    assert_eq!(b.path(), Path::Direct(a_addr));
    assert_eq!(a.tier(), Tier::DirectStun);
    let ev = drain_events(&mut a);
    assert!(
        matches!(
            ev.as_slice(),
            [PathEvent::Changed {
                path: Path::Direct(_),
                tier: Tier::DirectStun,
                rtt: Some(_)
            }]
        ),
        "{ev:?}"
    );
    assert_eq!(drain_events(&mut b).len(), 1);
    // A second introduction while direct changes nothing.
    a.handle_introduction(8, vec![(b_addr, CandidateKind::Reflexive)], now);
    assert_eq!(a.path(), Path::Direct(b_addr));
}

#[test]
fn keepalives_hold_the_path_and_silence_falls_back_to_the_relay() {
    let now = Instant::now();
    let (mut a, mut b, a_addr, b_addr, _) = punch_pair(now);
    let mut t;
    drain_events(&mut a);
    // Answered keepalives: the path stays direct across several intervals.
    for _ in 0..5 {
        t = a.poll_timeout().unwrap();
        a.handle_timeout(t);
        let ping = a.poll_transmit().unwrap();
        assert_eq!(
            (ping.dst, ping.body.kind, ping.body.session),
            (b_addr, ProbeKind::Ping, 0)
        );
        b.handle_probe(t, a_addr, ping.body);
        let pong = b.poll_transmit().unwrap();
        a.handle_probe(t, b_addr, pong.body);
    }
    assert_eq!(a.path(), Path::Direct(b_addr));
    assert!(drain_events(&mut a).is_empty());
    // Now the peer goes silent: three pings go unanswered, the fourth interval notices.
    for _ in 0..3 {
        t = a.poll_timeout().unwrap();
        a.handle_timeout(t);
        assert_eq!(
            a.poll_transmit().map(|x| x.body.kind),
            Some(ProbeKind::Ping)
        );
    }
    assert!(matches!(a.path(), Path::Direct(_)));
    {
        t = a.poll_timeout().unwrap();
        a.handle_timeout(t);
        while a.poll_transmit().is_some() {}
    }
    assert_eq!(a.path(), Path::Relay);
    assert_eq!(
        drain_events(&mut a),
        vec![
            PathEvent::Changed {
                path: Path::Relay,
                tier: Tier::RelayUdp,
                rtt: None
            },
            PathEvent::WantIntroduction
        ]
    );
}

#[test]
fn relayed_paths_retry_upgrades_and_failed_punches_stay_relayed() {
    let now = Instant::now();
    let mut p = PeerPath::new(now, PathConfig::default(), Tier::RelayUdp, 1);
    drain_events(&mut p);
    p.handle_introduction(
        3,
        vec![(addr("203.0.113.9:9"), CandidateKind::Reflexive)],
        now,
    );
    let mut t = now;
    for _ in 0..100 {
        let Some(d) = p.poll_timeout() else { break };
        t = d;
        p.handle_timeout(t);
        while p.poll_transmit().is_some() {}
        if matches!(p.state, State::Relayed { .. }) {
            break;
        }
    }
    assert_eq!(t, now + PunchConfig::default().give_up_after);
    assert_eq!(p.path(), Path::Relay);
    assert!(
        drain_events(&mut p).is_empty(),
        "still relayed: no route change"
    );
    let next = p.poll_timeout().unwrap();
    assert_eq!(next, t + PathConfig::default().upgrade_interval);
    p.handle_timeout(next);
    assert_eq!(drain_events(&mut p), vec![PathEvent::WantIntroduction]);
}

#[test]
fn a_network_change_drops_the_direct_path_and_re_punches() {
    let now = Instant::now();
    let (mut a, _b, _, _, t) = punch_pair(now);
    drain_events(&mut a);
    a.network_changed(t);
    assert_eq!(a.path(), Path::Relay);
    assert_eq!(
        drain_events(&mut a).last(),
        Some(&PathEvent::WantIntroduction)
    );
}

/// Times at which `p` sends keepalive pings between `from` and `to` (answered at once,
/// so the path stays up), with traffic noted at the instants in `traffic`.
fn keepalive_times(
    p: &mut PeerPath,
    peer: SocketAddr,
    from: Instant,
    to: Instant,
    traffic: &[Instant],
) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        if traffic.contains(&t) {
            p.note_traffic(t);
        }
        if p.poll_timeout().is_some_and(|d| d <= t) {
            p.handle_timeout(t);
        }
        while let Some(x) = p.poll_transmit() {
            if x.body.session == KEEPALIVE_SESSION && x.body.kind == ProbeKind::Ping {
                out.push(t - from);
                let pong = ProbeBody {
                    kind: ProbeKind::Pong,
                    observed: Some(x.dst),
                    ..x.body
                };
                p.handle_probe(t, peer, pong);
            }
        }
        t += Duration::from_millis(100);
    }
    out
}

#[test]
fn keepalive_is_fast_while_active_and_slow_when_idle() {
    let config = PathConfig {
        keepalive: Duration::from_secs(1),
        idle_keepalive: Duration::from_secs(20),
        idle_after: Duration::from_secs(10),
        ..PathConfig::default()
    };
    let now = Instant::now();
    let (a_addr, b_addr) = (addr("203.0.113.1:1000"), addr("198.51.100.1:2000"));
    let mut a = PeerPath::new(now, config.clone(), Tier::RelayUdp, 1);
    let mut b = PeerPath::new(now, config, Tier::RelayUdp, 2);
    a.handle_introduction(7, vec![(b_addr, CandidateKind::Reflexive)], now);
    b.handle_introduction(7, vec![(a_addr, CandidateKind::Reflexive)], now);
    // Punch over a 10 ms wire (as punch_pair, with this config).
    let mut t = now;
    while !matches!(a.path(), Path::Direct(_)) {
        for p in [&mut a, &mut b] {
            if p.poll_timeout().is_some_and(|d| d <= t) {
                p.handle_timeout(t);
            }
        }
        let ta: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
        let tb: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
        t += Duration::from_millis(10);
        ta.into_iter()
            .for_each(|x| b.handle_probe(t, a_addr, x.body));
        tb.into_iter()
            .for_each(|x| a.handle_probe(t, b_addr, x.body));
        assert!(t - now < Duration::from_secs(5), "never direct");
    }
    drain_events(&mut a);
    let direct_at = t;

    // New path, no traffic: fast pings for `idle_after`, then one every 20 s.
    let pings = keepalive_times(
        &mut a,
        b_addr,
        direct_at,
        direct_at + Duration::from_secs(60),
        &[],
    );
    let fast = pings
        .iter()
        .filter(|d| **d <= Duration::from_secs(10))
        .count();
    assert!((9..=11).contains(&fast), "fast pings while new: {pings:?}");
    let late: Vec<_> = pings
        .iter()
        .filter(|d| **d > Duration::from_secs(11))
        .collect();
    assert!(
        late.windows(2)
            .all(|w| *w[1] - *w[0] == Duration::from_secs(20)),
        "{pings:?}"
    );
    assert!(late.len() <= 3 && !late.is_empty(), "{pings:?}");
    assert!(a.is_idle(direct_at + Duration::from_secs(60)));
    assert!(pings
        .windows(2)
        .all(|w| w[1] - w[0] <= Duration::from_secs(25)));

    // Traffic resumes: the next ping comes within the fast interval, and stays fast.
    let resume = direct_at + Duration::from_secs(60);
    let pings = keepalive_times(
        &mut a,
        b_addr,
        resume,
        resume + Duration::from_secs(5),
        &[resume],
    );
    assert!(!a.is_idle(resume + Duration::from_secs(5)));
    assert!(
        pings.first().is_some_and(|d| *d <= Duration::from_secs(1)),
        "{pings:?}"
    );
    assert!(pings.len() >= 4, "{pings:?}");
    assert!(matches!(a.path(), Path::Direct(_)), "stayed direct");
}

/// The restricted-cone side `a` and the random-port side `b` of the real-NAT matrix,
/// with the race of its failing run: `b`'s introduction is applied late (it opened its
/// doors first), so the pair's second introduction reaches `a` while `a` waits for the
/// pong that proves `b`'s peer-reflexive port; `b` finishes the first punch (with `a`'s
/// pong) and ignores the second introduction. Both must end direct: `a`'s punch continues
/// under the second session and still takes `b`'s pong of the first.
#[test]
fn a_second_introduction_mid_punch_does_not_strand_the_other_side() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let a_pub = addr("203.0.113.13:7000");
    let b_rdv = addr("203.0.113.15:26573"); // b's mapping towards the rendezvous
    let b_for_a = addr("203.0.113.15:40001"); // b's fresh mapping towards a
    let mut a = PeerPath::new(t0, PathConfig::default(), Tier::RelayUdp, 1);
    let mut b = PeerPath::new(t0, PathConfig::default(), Tier::RelayUdp, 2);
    let mut a_sent_to_b_ip = false; // a's address-restricted filter
    let mut b_sent_to_a = false; // b's address-and-port filter on its mapping for a
    let mut wire: Vec<(Instant, bool, ProbeBody)> = Vec::new(); // (arrival, to a?, body)
    a.handle_introduction(1, vec![(b_rdv, CandidateKind::Reflexive)], t0);
    let mut t = t0;
    while t < t0 + Duration::from_secs(8) {
        if t == t0 + ms(250) {
            b.handle_introduction(1, vec![(a_pub, CandidateKind::Reflexive)], t0);
        }
        if t == t0 + ms(265) {
            assert_eq!(a.path(), Path::Relay, "the race needs a still punching");
            a.handle_introduction(2, vec![(b_rdv, CandidateKind::Reflexive)], t);
        }
        if t == t0 + ms(300) {
            assert!(matches!(b.path(), Path::Direct(_)), "b won the first punch");
            b.handle_introduction(2, vec![(a_pub, CandidateKind::Reflexive)], t);
        }
        for (to_a, p) in [(false, &mut a), (true, &mut b)] {
            if p.poll_timeout().is_some_and(|d| d <= t) {
                p.handle_timeout(t);
            }
            while let Some(x) = p.poll_transmit() {
                if to_a {
                    // b's NAT maps a fresh port for a; only a's address reaches a.
                    if x.dst == a_pub {
                        b_sent_to_a = true;
                        wire.push((t + ms(10), true, x.body));
                    }
                } else {
                    a_sent_to_b_ip |= x.dst.ip() == b_for_a.ip();
                    // Only b's mapping for a (once b has sent to a) lets a packet in.
                    if x.dst == b_for_a {
                        wire.push((t + ms(10), false, x.body));
                    }
                }
            }
        }
        t += ms(5);
        let (due, later): (Vec<_>, Vec<_>) = wire.drain(..).partition(|(at, ..)| *at <= t);
        wire = later;
        for (_, to_a, body) in due {
            if to_a && a_sent_to_b_ip {
                a.handle_probe(t, b_for_a, body);
            } else if !to_a && b_sent_to_a {
                b.handle_probe(t, a_pub, body);
            }
        }
    }
    assert_eq!(b.path(), Path::Direct(a_pub));
    assert_eq!(
        a.path(),
        Path::Direct(b_for_a),
        "a stranded on the relay while b went direct"
    );
    assert_eq!(a.tier(), Tier::DirectStun, "peer-reflexive");
}
