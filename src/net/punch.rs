//! Sans-IO UDP hole punching for one introduction between two daemons.
//!
//! Both sides receive the other's candidates and a common start time from the
//! rendezvous. From that moment each sends pings to every candidate, quickly at first
//! then more slowly; a ping opens the sender's NAT mapping towards that address, so
//! when both sides ping at once each NAT sees outbound traffic before the other's
//! packets arrive. Every ping received is answered with a pong to the address it came
//! from (and that address becomes a candidate: peer-reflexive). The first pong that
//! echoes one of our nonces proves a two-way path: [`PunchEvent::Direct`].
//!
//! **Many-port probing** ([`Spray`]) is for a random-port symmetric NAT (the *hard*
//! side) facing an endpoint-independent one that filters by address and port (the
//! *easy* side): the hard side's port for the easy side cannot be learned, so the hard
//! side pings the easy side's address from many extra local sockets (each a fresh NAT
//! mapping towards it, so the easy side's address now has `sockets` doors open on the
//! hard NAT) and the easy side pings random ports of the hard side's public address, a
//! bounded number per round up to a budget. A sprayed ping that lands on one of the
//! open doors gets through, is answered from that socket, and proves the path (the
//! birthday bound: 256 doors and 2048 sprayed ports out of 64,512 succeed ≈ 99.97 %; a
//! hit comes after about 250 probes on average, so the budget caps only the tail).
//! Transmits and received probes carry the local socket index (0 = the daemon's socket).
//!
//! Call order, as in quinn-proto: feed [`Punch::handle_probe`] and
//! [`Punch::handle_timeout`] (when [`Punch::poll_timeout`] is due); after each, drain
//! [`Punch::poll_transmit`] and [`Punch::poll_event`]. Probes are plain [`ProbeBody`]s
//! here; the caller seals and opens them (`net::probe`), so this machine has no crypto,
//! no sockets and no clock.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use indexmap::IndexMap;

use super::probe::{ProbeBody, ProbeKind};

mod spray;
pub use spray::{mapping_kind, spray_role, MappingKind, Spray, SprayConfig};

/// Where a candidate address came from (decides the tier a success is reported as).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// An address of the peer's own interfaces (same LAN or public host).
    Local,
    /// The peer's public mapping as a STUN observer (or the rendezvous) saw it.
    Reflexive,
    /// A port mapped by the peer's router with UPnP IGD / NAT-PMP.
    Upnp,
    /// A guessed next port of a sequential symmetric NAT.
    Predicted,
    /// The address a ping from the peer actually came from.
    PeerReflexive,
    /// A port of a random-port symmetric NAT hit by many-port probing (or, on that NAT's
    /// side, the peer reached from one of the extra sockets).
    ManyPort,
}

/// Timing of a punch.
#[derive(Debug, Clone)]
pub struct PunchConfig {
    /// Interval between ping rounds during the fast phase.
    pub fast_interval: Duration,
    /// How long the fast phase lasts after the start time.
    pub fast_phase: Duration,
    /// Interval between ping rounds afterwards.
    pub slow_interval: Duration,
    /// Give up this long after the start time.
    pub give_up_after: Duration,
    /// Many-port probing budget and pace (used when a punch is given a [`Spray`] role).
    pub spray: SprayConfig,
}

impl Default for PunchConfig {
    fn default() -> Self {
        PunchConfig {
            fast_interval: Duration::from_millis(50),
            fast_phase: Duration::from_secs(1),
            slow_interval: Duration::from_millis(250),
            give_up_after: Duration::from_secs(6),
            spray: SprayConfig::default(),
        }
    }
}

/// A probe to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dst: SocketAddr,
    /// What to send (to be sealed by the caller).
    pub body: ProbeBody,
    /// The local socket to send from: 0 is the daemon's socket, others are the extra
    /// sockets of many-port probing.
    pub socket: u16,
}

/// What a punch concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PunchEvent {
    /// A two-way direct path to `addr` works.
    Direct {
        /// The peer's address on that path.
        addr: SocketAddr,
        /// How that address was learned.
        via: CandidateKind,
        /// Ping → pong round-trip time.
        rtt: Duration,
        /// Our own address as the peer saw it.
        observed: Option<SocketAddr>,
        /// The local socket the path runs from (0 unless an extra socket won).
        socket: u16,
    },
    /// No path before the deadline.
    GaveUp {
        /// Pings sent in all.
        pings_sent: u64,
    },
}

/// A ping in flight.
#[derive(Debug, Clone, Copy)]
struct Sent {
    dst: SocketAddr,
    socket: u16,
    at: Instant,
    kind: Option<CandidateKind>,
}

/// One hole-punching attempt.
#[derive(Debug)]
pub struct Punch {
    config: PunchConfig,
    session: u64,
    /// Sessions of earlier introductions this punch was renewed from ([`Punch::renew`]):
    /// the peer may still be punching (or have finished) under one of them.
    earlier: Vec<u64>,
    targets: IndexMap<SocketAddr, CandidateKind>,
    start_at: Instant,
    next_round: Instant,
    /// Nonce → the ping, for matching pongs and measuring RTT.
    outstanding: HashMap<u64, Sent>,
    next_nonce: u64,
    spray: Spray,
    /// Random ports pinged so far (easy side).
    sprayed: u32,
    /// When the extra sockets ping next (hard side).
    next_doors: Instant,
    rng: u64,
    pings_sent: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PunchEvent>,
    finished: bool,
}

impl Punch {
    /// A punch for `session` that starts pinging `candidates` at `start_at`.
    /// `nonce_seed` makes nonces unpredictable to strangers (give it fresh randomness).
    pub fn new(
        config: PunchConfig,
        session: u64,
        candidates: impl IntoIterator<Item = (SocketAddr, CandidateKind)>,
        start_at: Instant,
        nonce_seed: u64,
    ) -> Self {
        let mut targets = IndexMap::new();
        for (addr, kind) in candidates {
            targets.entry(addr).or_insert(kind);
        }
        Punch {
            config,
            session,
            earlier: Vec::new(),
            targets,
            start_at,
            next_round: start_at,
            outstanding: HashMap::new(),
            next_nonce: nonce_seed,
            spray: Spray::Off,
            sprayed: 0,
            next_doors: start_at,
            rng: nonce_seed ^ 0x5851_f42d_4c95_7f2d,
            pings_sent: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            finished: false,
        }
    }

    /// Adds many-port probing to this punch (before it starts).
    pub fn with_spray(mut self, spray: Spray) -> Self {
        self.spray = spray;
        self
    }

    /// A new introduction for the same peer arrived while this punch runs: carry on as
    /// one attempt under the new `session` instead of starting over. Everything learned
    /// is kept: the addresses the peer's pings came from (a random-port NAT's only usable
    /// port for us), the pings in flight (their pongs still count), and the earlier
    /// sessions (the peer may still punch under one, or have finished with it and only
    /// answer now). The new candidates are added, the spray role is the new one, and the
    /// deadline moves to `give_up_after` past the later start.
    pub fn renew(
        &mut self,
        session: u64,
        candidates: impl IntoIterator<Item = (SocketAddr, CandidateKind)>,
        start_at: Instant,
        spray: Spray,
    ) {
        if session != self.session && !self.earlier.contains(&session) {
            if self.earlier.len() >= MAX_EARLIER_SESSIONS {
                self.earlier.remove(0);
            }
            self.earlier.push(self.session);
            self.session = session;
        }
        for (addr, kind) in candidates {
            self.targets.entry(addr).or_insert(kind);
        }
        if start_at > self.start_at {
            self.start_at = start_at;
        }
        self.next_round = self.next_round.min(start_at);
        self.spray = spray;
    }

    /// Whether `session` is this punch's, now or before a renewal.
    fn knows(&self, session: u64) -> bool {
        session == self.session || self.earlier.contains(&session)
    }

    /// Its many-port role.
    pub fn spray(&self) -> Spray {
        self.spray
    }

    /// The introduction this punch belongs to.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Whether a result has been reported.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// When [`Punch::handle_timeout`] is next due, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            None
        } else {
            Some(self.next_round.min(self.deadline()))
        }
    }

    fn deadline(&self) -> Instant {
        self.start_at + self.config.give_up_after
    }

    /// Sends a round of pings when due; gives up at the deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        if now >= self.deadline() {
            self.finished = true;
            self.events.push_back(PunchEvent::GaveUp {
                pings_sent: self.pings_sent,
            });
            return;
        }
        if now < self.next_round {
            return;
        }
        let targets: Vec<SocketAddr> = self.targets.keys().copied().collect();
        for dst in &targets {
            self.ping(now, *dst, 0, None);
        }
        self.spray_round(now, &targets);
        let interval = if now < self.start_at + self.config.fast_phase || self.spraying(now) {
            self.config.fast_interval
        } else {
            self.config.slow_interval
        };
        self.next_round = now + interval;
    }

    /// The many-port part of a round: pings from every extra socket (hard side, at most
    /// every `doors_interval`) or to a batch of random ports (easy side, within budget).
    fn spray_round(&mut self, now: Instant, targets: &[SocketAddr]) {
        if now < self.start_at + self.config.spray.after {
            return;
        }
        match self.spray {
            Spray::Off => {}
            Spray::Doors { sockets } => {
                if now < self.next_doors {
                    return;
                }
                self.next_doors = now + self.config.spray.doors_interval;
                for socket in 1..=sockets {
                    for dst in targets.iter().filter(|a| !is_private(a.ip())) {
                        self.ping(now, *dst, socket, Some(CandidateKind::ManyPort));
                    }
                }
            }
            Spray::Ports { ip } => {
                let left = self.config.spray.budget.saturating_sub(self.sprayed);
                for _ in 0..left.min(self.config.spray.per_round) {
                    let port = self.random_port();
                    self.sprayed += 1;
                    let dst = SocketAddr::new(ip, port);
                    self.ping(now, dst, 0, Some(CandidateKind::ManyPort));
                }
            }
        }
    }

    /// Whether random ports are still to be sprayed (rounds stay fast meanwhile).
    fn spraying(&self, now: Instant) -> bool {
        matches!(self.spray, Spray::Ports { .. })
            && now >= self.start_at + self.config.spray.after
            && self.sprayed < self.config.spray.budget
    }

    fn random_port(&mut self) -> u16 {
        // xorshift64*: enough to spread probes; unpredictability is not needed here.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        let min = u64::from(self.config.spray.min_port);
        let span = 65_536 - min;
        (min + r % span) as u16
    }

    fn ping(&mut self, now: Instant, dst: SocketAddr, socket: u16, kind: Option<CandidateKind>) {
        let nonce = self.next_nonce;
        self.next_nonce = self
            .next_nonce
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.outstanding.insert(
            nonce,
            Sent {
                dst,
                socket,
                at: now,
                kind,
            },
        );
        self.pings_sent += 1;
        self.transmits.push_back(Transmit {
            dst,
            body: ProbeBody {
                kind: ProbeKind::Ping,
                session: self.session,
                nonce,
                observed: None,
            },
            socket,
        });
    }

    /// Handles a probe from the peer (already opened and checked to come from the peer),
    /// received from `src` on the daemon's socket. Probes of sessions this punch does not
    /// know (current or renewed from) are ignored; a pong echoes its ping's session.
    pub fn handle_probe(&mut self, now: Instant, src: SocketAddr, probe: ProbeBody) {
        self.handle_probe_on(now, src, 0, probe);
    }

    /// [`Punch::handle_probe`] for a probe received on local socket `socket`.
    pub fn handle_probe_on(
        &mut self,
        now: Instant,
        src: SocketAddr,
        socket: u16,
        probe: ProbeBody,
    ) {
        if !self.knows(probe.session) {
            return;
        }
        match probe.kind {
            ProbeKind::Ping => {
                // Answer even after success: the peer may not have its pong yet.
                self.transmits.push_back(Transmit {
                    dst: src,
                    body: ProbeBody {
                        kind: ProbeKind::Pong,
                        session: probe.session,
                        nonce: probe.nonce,
                        observed: Some(src),
                    },
                    socket,
                });
                if self.finished {
                    return;
                }
                if socket != 0 {
                    // A sprayed ping found one of our doors: ping back through it.
                    self.ping(now, src, socket, Some(CandidateKind::ManyPort));
                } else if !self.targets.contains_key(&src) {
                    // A door we sprayed at (its ping passed our filter because we had
                    // pinged it): many-port, else a plain peer-reflexive address.
                    let sprayed = self
                        .outstanding
                        .values()
                        .any(|s| s.dst == src && s.kind == Some(CandidateKind::ManyPort));
                    let kind = if sprayed {
                        CandidateKind::ManyPort
                    } else {
                        CandidateKind::PeerReflexive
                    };
                    self.targets.insert(src, kind);
                    self.ping(now, src, 0, None);
                }
            }
            ProbeKind::Pong => {
                let Some(sent) = self.outstanding.get(&probe.nonce).copied() else {
                    return; // not ours (or forged by a replay of someone else's)
                };
                if sent.dst != src || sent.socket != socket || self.finished {
                    return; // a pong must come back from where the ping went
                }
                self.finished = true;
                let via = sent.kind.unwrap_or_else(|| {
                    self.targets
                        .get(&src)
                        .copied()
                        .unwrap_or(CandidateKind::PeerReflexive)
                });
                self.events.push_back(PunchEvent::Direct {
                    addr: src,
                    via,
                    rtt: now.saturating_duration_since(sent.at),
                    observed: probe.observed,
                    socket,
                });
            }
        }
    }

    /// The next probe to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next result.
    pub fn poll_event(&mut self) -> Option<PunchEvent> {
        self.events.pop_front()
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Earlier sessions a renewed punch still answers (introductions come in pairs, one
/// per side's request; a few more only if the rendezvous repeats itself).
const MAX_EARLIER_SESSIONS: usize = 4;

/// Candidates for a sequential symmetric NAT: the `count` ports after the observed one.
pub fn predicted_ports(observed: SocketAddr, count: u16) -> Vec<(SocketAddr, CandidateKind)> {
    (1..=count)
        .filter_map(|k| observed.port().checked_add(k))
        .map(|p| (SocketAddr::new(observed.ip(), p), CandidateKind::Predicted))
        .collect()
}

#[cfg(test)]
mod tests;
