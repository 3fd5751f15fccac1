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
//! Call order, as in quinn-proto: feed [`Punch::handle_probe`] and
//! [`Punch::handle_timeout`] (when [`Punch::poll_timeout`] is due); after each, drain
//! [`Punch::poll_transmit`] and [`Punch::poll_event`]. Probes are plain [`ProbeBody`]s
//! here; the caller seals and opens them (`net::probe`), so this machine has no crypto,
//! no sockets and no clock.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use indexmap::IndexMap;

use super::probe::{ProbeBody, ProbeKind};

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
}

impl Default for PunchConfig {
    fn default() -> Self {
        PunchConfig {
            fast_interval: Duration::from_millis(50),
            fast_phase: Duration::from_secs(1),
            slow_interval: Duration::from_millis(250),
            give_up_after: Duration::from_secs(6),
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
    },
    /// No path before the deadline.
    GaveUp {
        /// Pings sent in all.
        pings_sent: u64,
    },
}

/// One hole-punching attempt.
#[derive(Debug)]
pub struct Punch {
    config: PunchConfig,
    session: u64,
    targets: IndexMap<SocketAddr, CandidateKind>,
    start_at: Instant,
    next_round: Instant,
    /// Nonce → (destination, time sent), for matching pongs and measuring RTT.
    outstanding: HashMap<u64, (SocketAddr, Instant)>,
    next_nonce: u64,
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
            targets,
            start_at,
            next_round: start_at,
            outstanding: HashMap::new(),
            next_nonce: nonce_seed,
            pings_sent: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            finished: false,
        }
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
        for dst in targets {
            self.ping(now, dst);
        }
        let interval = if now < self.start_at + self.config.fast_phase {
            self.config.fast_interval
        } else {
            self.config.slow_interval
        };
        self.next_round = now + interval;
    }

    fn ping(&mut self, now: Instant, dst: SocketAddr) {
        let nonce = self.next_nonce;
        self.next_nonce = self
            .next_nonce
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.outstanding.insert(nonce, (dst, now));
        self.pings_sent += 1;
        self.transmits.push_back(Transmit {
            dst,
            body: ProbeBody {
                kind: ProbeKind::Ping,
                session: self.session,
                nonce,
                observed: None,
            },
        });
    }

    /// Handles a probe from the peer (already opened and checked to come from the peer),
    /// received from `src`. Probes of other sessions are ignored.
    pub fn handle_probe(&mut self, now: Instant, src: SocketAddr, probe: ProbeBody) {
        if probe.session != self.session {
            return;
        }
        match probe.kind {
            ProbeKind::Ping => {
                // Answer even after success: the peer may not have its pong yet.
                self.transmits.push_back(Transmit {
                    dst: src,
                    body: ProbeBody {
                        kind: ProbeKind::Pong,
                        session: self.session,
                        nonce: probe.nonce,
                        observed: Some(src),
                    },
                });
                if !self.finished && !self.targets.contains_key(&src) {
                    self.targets.insert(src, CandidateKind::PeerReflexive);
                    self.ping(now, src);
                }
            }
            ProbeKind::Pong => {
                let Some((dst, sent)) = self.outstanding.get(&probe.nonce).copied() else {
                    return; // not ours (or forged by a replay of someone else's)
                };
                if dst != src || self.finished {
                    return; // a pong must come back from where the ping went
                }
                self.finished = true;
                let via = self
                    .targets
                    .get(&src)
                    .copied()
                    .unwrap_or(CandidateKind::PeerReflexive);
                self.events.push_back(PunchEvent::Direct {
                    addr: src,
                    via,
                    rtt: now.saturating_duration_since(sent),
                    observed: probe.observed,
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

/// Candidates for a sequential symmetric NAT: the `count` ports after the observed one.
pub fn predicted_ports(observed: SocketAddr, count: u16) -> Vec<(SocketAddr, CandidateKind)> {
    (1..=count)
        .filter_map(|k| observed.port().checked_add(k))
        .map(|p| (SocketAddr::new(observed.ip(), p), CandidateKind::Predicted))
        .collect()
}

#[cfg(test)]
mod tests;
