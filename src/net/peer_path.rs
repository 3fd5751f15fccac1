//! The path to one peer, sans-IO: it starts on the relay (so the first request never
//! waits), punches when the rendezvous introduces the two daemons, moves to the direct
//! path the moment a probe round-trips, keeps the direct path's NAT mappings alive with
//! pings well below NAT timeouts (often while traffic flows or the path is new, so a dead
//! path is noticed in seconds; rarely once it is idle, which only has to keep the
//! mappings open), falls back to the relay when the direct path stops answering, and asks
//! for a new introduction periodically while relayed.
//!
//! Inputs: [`PeerPath::handle_introduction`], [`PeerPath::handle_probe`],
//! [`PeerPath::handle_timeout`], [`PeerPath::network_changed`],
//! [`PeerPath::note_traffic`]. Outputs:
//! [`PeerPath::poll_transmit`] (probes, to seal and send), [`PeerPath::poll_event`]
//! (route changes for [`super::routes::Routes`], introduction requests) and
//! [`PeerPath::poll_timeout`].

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::probe::{ProbeBody, ProbeKind};
use super::punch::{CandidateKind, Punch, PunchConfig, PunchEvent, Spray, Transmit};
use super::routes::Path;

/// How a path was obtained, from best to last resort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Direct to an interface address (same LAN, or a public host).
    DirectLan,
    /// Direct to a STUN-discovered (or peer-reflexive) mapping.
    DirectStun,
    /// Direct to a UPnP IGD / NAT-PMP port mapping.
    DirectUpnp,
    /// Direct to a predicted port of a sequential symmetric NAT.
    DirectPredicted,
    /// Direct through a random-port symmetric NAT, found by many-port probing.
    DirectManyPort,
    /// Through the relay over UDP.
    RelayUdp,
    /// Through the relay over TCP/TLS (UDP blocked).
    RelayTcp,
}

impl Tier {
    /// The name used in status output and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Tier::DirectLan => "direct-lan",
            Tier::DirectStun => "direct-stun",
            Tier::DirectUpnp => "direct-upnp",
            Tier::DirectPredicted => "direct-predicted",
            Tier::DirectManyPort => "direct-many-port",
            Tier::RelayUdp => "relay-udp",
            Tier::RelayTcp => "relay-tcp",
        }
    }

    /// Whether this is a direct path.
    pub fn is_direct(self) -> bool {
        !matches!(self, Tier::RelayUdp | Tier::RelayTcp)
    }

    fn from_candidate(kind: CandidateKind) -> Tier {
        match kind {
            CandidateKind::Local => Tier::DirectLan,
            CandidateKind::Reflexive | CandidateKind::PeerReflexive => Tier::DirectStun,
            CandidateKind::Upnp => Tier::DirectUpnp,
            CandidateKind::Predicted => Tier::DirectPredicted,
            CandidateKind::ManyPort => Tier::DirectManyPort,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Timing of path maintenance.
#[derive(Debug, Clone)]
pub struct PathConfig {
    /// Punch timing.
    pub punch: PunchConfig,
    /// Ping interval on a direct path while it is active (traffic in the last
    /// `idle_after`, or new); below the shortest common NAT UDP timeout, 30 s.
    pub keepalive: Duration,
    /// Ping interval on an idle direct path: it only keeps the NAT mappings open, so it
    /// must stay below their timeout (≤ 25 s); a dead idle path is noticed late, but
    /// traffic makes the path active again at once ([`PeerPath::note_traffic`]).
    pub idle_keepalive: Duration,
    /// A direct path with no traffic (and no change) for this long is idle.
    pub idle_after: Duration,
    /// Unanswered keepalives before the direct path is declared dead.
    pub keepalive_misses: u32,
    /// While relayed, ask for a new introduction this often.
    pub upgrade_interval: Duration,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            punch: PunchConfig::default(),
            keepalive: Duration::from_secs(20),
            idle_keepalive: Duration::from_secs(20),
            idle_after: Duration::from_secs(10),
            keepalive_misses: 3,
            upgrade_interval: Duration::from_secs(30),
        }
    }
}

/// Which doors (extra local sockets) a path needs, see [`PeerPath::doors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doors {
    /// None: close any that are open.
    None,
    /// Doors `1..=n`, for a punch as the hard side.
    Open(u16),
    /// Only door `k`: the direct path runs from it.
    Keep(u16),
}

/// Something the daemon must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEvent {
    /// Route the peer's packets this way from now on.
    Changed {
        /// The new route.
        path: Path,
        /// How it was obtained.
        tier: Tier,
        /// Round-trip time measured by the probe that proved it (direct paths).
        rtt: Option<Duration>,
    },
    /// Ask the rendezvous to introduce us to the peer (first contact, upgrade, re-punch).
    WantIntroduction,
}

#[derive(Debug)]
enum State {
    Relayed {
        next_upgrade: Instant,
    },
    Punching {
        punch: Box<Punch>,
    },
    Direct {
        addr: SocketAddr,
        /// The local socket the path runs from (0: the daemon's; others: many-port).
        socket: u16,
        tier: Tier,
        next_ping: Instant,
        misses: u32,
        outstanding: Option<u64>,
        /// Until when the path counts as active (fast keepalives).
        active_until: Instant,
    },
}

/// Probe session id used for keepalives on an established direct path.
const KEEPALIVE_SESSION: u64 = 0;

/// The path to one peer.
#[derive(Debug)]
pub struct PeerPath {
    config: PathConfig,
    relay_tier: Tier,
    state: State,
    next_nonce: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PathEvent>,
}

impl PeerPath {
    /// A new peer: relayed (over `relay_tier`), with an introduction wanted at once.
    pub fn new(now: Instant, config: PathConfig, relay_tier: Tier, nonce_seed: u64) -> Self {
        let mut path = PeerPath {
            state: State::Relayed {
                next_upgrade: now + config.upgrade_interval,
            },
            config,
            relay_tier,
            next_nonce: nonce_seed,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        path.events.push_back(PathEvent::Changed {
            path: Path::Relay,
            tier: relay_tier,
            rtt: None,
        });
        path.events.push_back(PathEvent::WantIntroduction);
        path
    }

    /// The current tier.
    pub fn tier(&self) -> Tier {
        match &self.state {
            State::Direct { tier, .. } => *tier,
            _ => self.relay_tier,
        }
    }

    /// The local socket of the current route: 0 (the daemon's socket) unless the path
    /// runs from door `k` of many-port probing.
    pub fn socket(&self) -> u16 {
        match &self.state {
            State::Direct { socket, .. } => *socket,
            _ => 0,
        }
    }

    /// The doors (extra sockets) this path needs now: `1..=n` while punching as the hard
    /// side of many-port probing, the winning one while its direct path runs from it,
    /// none otherwise.
    pub fn doors(&self) -> Doors {
        match &self.state {
            State::Punching { punch } => match punch.spray() {
                Spray::Doors { sockets } => Doors::Open(sockets),
                _ => Doors::None,
            },
            State::Direct { socket, .. } if *socket != 0 => Doors::Keep(*socket),
            _ => Doors::None,
        }
    }

    /// The current route.
    pub fn path(&self) -> Path {
        match &self.state {
            State::Direct { addr, .. } => Path::Direct(*addr),
            _ => Path::Relay,
        }
    }

    fn nonce(&mut self) -> u64 {
        self.next_nonce = self
            .next_nonce
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.next_nonce
    }

    /// The rendezvous introduced us: punch `candidates` from `start_at` (the agreed
    /// moment, in our clock), unless a direct path already works; a punch already
    /// running is renewed with them, not restarted.
    pub fn handle_introduction(
        &mut self,
        session: u64,
        candidates: Vec<(SocketAddr, CandidateKind)>,
        start_at: Instant,
    ) {
        self.handle_introduction_with(session, candidates, start_at, Spray::Off);
    }

    /// [`PeerPath::handle_introduction`] with many-port probing in the role `spray`.
    pub fn handle_introduction_with(
        &mut self,
        session: u64,
        candidates: Vec<(SocketAddr, CandidateKind)>,
        start_at: Instant,
        spray: Spray,
    ) {
        match &mut self.state {
            State::Direct { .. } => return,
            // The second introduction of a pair (each side asks for one) while the
            // first one's punch runs: the peer may finish that one and ignore this one,
            // so continue it rather than forget what it learned (see `Punch::renew`).
            State::Punching { punch } if !punch.is_finished() => {
                punch.renew(session, candidates, start_at, spray);
                return;
            }
            _ => {}
        }
        let seed = self.nonce();
        let punch = Punch::new(
            self.config.punch.clone(),
            session,
            candidates,
            start_at,
            seed,
        )
        .with_spray(spray);
        self.state = State::Punching {
            punch: Box::new(punch),
        };
    }

    /// A probe from the peer arrived from `src` (opened and checked by the caller).
    pub fn handle_probe(&mut self, now: Instant, src: SocketAddr, probe: ProbeBody) {
        self.handle_probe_on(now, src, 0, probe);
    }

    /// [`PeerPath::handle_probe`] for a probe received on local socket `socket` (0: the
    /// daemon's socket; others: the extra sockets of many-port probing).
    pub fn handle_probe_on(
        &mut self,
        now: Instant,
        src: SocketAddr,
        socket: u16,
        probe: ProbeBody,
    ) {
        if probe.session == KEEPALIVE_SESSION {
            self.handle_keepalive(src, socket, probe);
            return;
        }
        if let State::Punching { punch } = &mut self.state {
            punch.handle_probe_on(now, src, socket, probe);
            self.drain_punch(now);
        } else if probe.kind == ProbeKind::Ping {
            // A late ping of a finished punch: answer so the peer finishes too.
            self.transmits.push_back(Transmit {
                dst: src,
                body: ProbeBody {
                    kind: ProbeKind::Pong,
                    observed: Some(src),
                    ..probe
                },
                socket,
            });
        }
    }

    fn handle_keepalive(&mut self, src: SocketAddr, socket: u16, probe: ProbeBody) {
        match probe.kind {
            ProbeKind::Ping => self.transmits.push_back(Transmit {
                dst: src,
                body: ProbeBody {
                    kind: ProbeKind::Pong,
                    observed: Some(src),
                    ..probe
                },
                socket,
            }),
            ProbeKind::Pong => {
                if let State::Direct {
                    addr,
                    socket: on,
                    misses,
                    outstanding,
                    ..
                } = &mut self.state
                {
                    if *addr == src && *on == socket && *outstanding == Some(probe.nonce) {
                        *misses = 0;
                        *outstanding = None;
                    }
                }
            }
        }
    }

    fn drain_punch(&mut self, now: Instant) {
        let State::Punching { punch } = &mut self.state else {
            return;
        };
        while let Some(t) = punch.poll_transmit() {
            self.transmits.push_back(t);
        }
        match punch.poll_event() {
            Some(PunchEvent::Direct {
                addr,
                via,
                rtt,
                socket,
                ..
            }) => {
                let tier = if socket == 0 {
                    Tier::from_candidate(via)
                } else {
                    Tier::DirectManyPort
                };
                self.state = State::Direct {
                    addr,
                    socket,
                    tier,
                    next_ping: now + self.config.keepalive,
                    misses: 0,
                    outstanding: None,
                    active_until: now + self.config.idle_after,
                };
                self.events.push_back(PathEvent::Changed {
                    path: Path::Direct(addr),
                    tier,
                    rtt: Some(rtt),
                });
            }
            Some(PunchEvent::GaveUp { .. }) => {
                self.state = State::Relayed {
                    next_upgrade: now + self.config.upgrade_interval,
                };
            }
            None => {}
        }
    }

    /// Timers: punch rounds, keepalives, upgrade attempts.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::Punching { punch } => {
                punch.handle_timeout(now);
                self.drain_punch(now);
            }
            State::Relayed { next_upgrade } => {
                if now >= *next_upgrade {
                    *next_upgrade = now + self.config.upgrade_interval;
                    self.events.push_back(PathEvent::WantIntroduction);
                }
            }
            State::Direct { .. } => self.keepalive(now),
        }
    }

    fn keepalive(&mut self, now: Instant) {
        let nonce = self.nonce();
        let State::Direct {
            addr,
            socket,
            next_ping,
            misses,
            outstanding,
            active_until,
            ..
        } = &mut self.state
        else {
            return;
        };
        if now < *next_ping {
            return;
        }
        if outstanding.is_some() {
            *misses += 1;
        }
        if *misses >= self.config.keepalive_misses {
            self.fall_back(now);
            return;
        }
        *outstanding = Some(nonce);
        let interval = if now < *active_until {
            self.config.keepalive
        } else {
            self.config.idle_keepalive
        };
        *next_ping = now + interval;
        let (dst, socket) = (*addr, *socket);
        self.transmits.push_back(Transmit {
            dst,
            body: ProbeBody {
                kind: ProbeKind::Ping,
                session: KEEPALIVE_SESSION,
                nonce,
                observed: None,
            },
            socket,
        });
    }

    /// Traffic to or from the peer was seen: the path is active for `idle_after` more, and
    /// an idle schedule is brought forward to the active one.
    pub fn note_traffic(&mut self, now: Instant) {
        if let State::Direct {
            next_ping,
            active_until,
            ..
        } = &mut self.state
        {
            *active_until = now + self.config.idle_after;
            *next_ping = (*next_ping).min(now + self.config.keepalive);
        }
    }

    /// Whether the path is direct and idle (pinged at the slow interval).
    pub fn is_idle(&self, now: Instant) -> bool {
        matches!(&self.state, State::Direct { active_until, .. } if now >= *active_until)
    }

    /// The direct path died (or the network changed): back to the relay, and re-punch.
    fn fall_back(&mut self, now: Instant) {
        self.state = State::Relayed {
            next_upgrade: now + self.config.upgrade_interval,
        };
        self.events.push_back(PathEvent::Changed {
            path: Path::Relay,
            tier: self.relay_tier,
            rtt: None,
        });
        self.events.push_back(PathEvent::WantIntroduction);
    }

    /// Our addresses changed (new interface, NAT reboot detected by STUN): the direct
    /// path may be gone, so fall back to the relay at once and punch again.
    pub fn network_changed(&mut self, now: Instant) {
        if matches!(self.state, State::Direct { .. }) {
            self.fall_back(now);
        } else {
            self.events.push_back(PathEvent::WantIntroduction);
        }
    }

    /// The relay transport changed (e.g. UDP blocked: TCP/TLS now).
    pub fn set_relay_tier(&mut self, tier: Tier) {
        self.relay_tier = tier;
        if !matches!(self.state, State::Direct { .. }) {
            self.events.push_back(PathEvent::Changed {
                path: Path::Relay,
                tier,
                rtt: None,
            });
        }
    }

    /// When [`PeerPath::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Relayed { next_upgrade } => Some(*next_upgrade),
            State::Punching { punch } => punch.poll_timeout(),
            State::Direct { next_ping, .. } => Some(*next_ping),
        }
    }

    /// The next probe to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
