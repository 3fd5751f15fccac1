//! The relay link's protocol state, sans-IO: which transport is tried or in use, the
//! relay sessions on it (authentication via [`ClientSession`]), pings, the UDP → TLS
//! fallback and the way back, reconnect backoff, and the queue of packets waiting for a
//! connection.
//!
//! Call order (like quinn-proto): feed inputs ([`RelayLinkState::handle_udp`],
//! [`RelayLinkState::handle_tls_open`], [`RelayLinkState::handle_tls_frame`],
//! [`RelayLinkState::handle_tls_closed`], [`RelayLinkState::send`]), call
//! [`RelayLinkState::handle_timeout`] when [`RelayLinkState::poll_timeout`] is reached,
//! and after each of these drain [`RelayLinkState::poll_transmit`] (in order: a
//! [`LinkTransmit::OpenTls`] precedes the frames for that connection) and
//! [`RelayLinkState::poll_event`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_proto::relay::{ClientMsg, Transport};
use agentmesh_proto::{NodeId, SecretKey};
use agentmesh_relay::client::ClientSession;
use tracing::debug;

use self::timers::{Alive, Hello, Probe};
use super::events::{DisconnectReason, LinkCounters, LinkEvent, LinkTransmit, TlsConnId};
use super::{RelayLinkConfig, RelayTransport};

mod output;
mod reactions;
mod stores;
mod timers;

pub use self::stores::{STORE_ATTEMPTS, STORE_RETRY};

/// Where the link is.
#[derive(Debug, Clone)]
enum Phase {
    /// Waiting to reconnect.
    Backoff { until: Instant },
    /// Saying hello over UDP; TLS follows if it does not work.
    UdpHello(Hello),
    /// TLS connection asked for, not yet authenticated.
    TlsConnecting { conn: TlsConnId, give_up: Instant },
    /// Authenticated over UDP.
    UdpUp(Alive),
    /// Authenticated over TLS, trying UDP again from time to time.
    TlsUp {
        conn: TlsConnId,
        alive: Alive,
        probe: Probe,
    },
}

/// The TLS connection in use or being set up.
#[derive(Debug)]
struct TlsLink {
    conn: TlsConnId,
    /// `None` until the connection is open.
    session: Option<ClientSession>,
}

/// The relay link's state; see the module doc for the call order.
#[derive(Debug)]
pub struct RelayLinkState {
    config: RelayLinkConfig,
    key: SecretKey,
    udp: ClientSession,
    tls: Option<TlsLink>,
    phase: Phase,
    /// The transport that last worked; reconnects start with it.
    preferred: RelayTransport,
    /// Next reconnect delay.
    backoff: Duration,
    next_conn: TlsConnId,
    /// Packets waiting for a connection.
    queue: VecDeque<(NodeId, Vec<u8>)>,
    transmits: VecDeque<LinkTransmit>,
    events: VecDeque<LinkEvent>,
    counters: LinkCounters,
    /// Store-and-forward messages waiting for the relay's answer.
    stores: stores::Stores,
    /// Id of the last store.
    next_store: u64,
}

impl RelayLinkState {
    /// A link for the node `key` with the relay in `config`; starts saying hello over UDP
    /// at once (the first transmit is ready).
    pub fn new(config: RelayLinkConfig, key: SecretKey, now: Instant) -> Self {
        let udp = ClientSession::new(key.clone(), Some(config.relay_node), Transport::Udp);
        let backoff = config.backoff_min;
        let mut s = RelayLinkState {
            config,
            key,
            udp,
            tls: None,
            phase: Phase::Backoff { until: now },
            preferred: RelayTransport::Udp,
            backoff,
            next_conn: 0,
            queue: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: LinkCounters::default(),
            stores: stores::Stores::new(),
            next_store: 0,
        };
        s.connect(now);
        s
    }

    /// The transport in use, when authenticated.
    pub fn transport(&self) -> Option<RelayTransport> {
        match self.phase {
            Phase::UdpUp(_) => Some(RelayTransport::Udp),
            Phase::TlsUp { .. } => Some(RelayTransport::Tls),
            _ => None,
        }
    }

    /// Whether authenticated with the relay.
    pub fn is_connected(&self) -> bool {
        self.transport().is_some()
    }

    /// Traffic counters.
    pub fn counters(&self) -> LinkCounters {
        self.counters
    }

    /// Packets waiting for a connection.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The relay address of the transport in use (UDP when not connected).
    pub fn relay_addr(&self) -> SocketAddr {
        match (self.transport(), self.config.tls_addr) {
            (Some(RelayTransport::Tls), Some(addr)) => addr,
            _ => self.config.udp_addr,
        }
    }

    /// Our network changed (a direct path died, a NAT may have rebooted): a UDP link
    /// says hello again from whatever mapping the socket has now, instead of waiting
    /// for missed pongs. A TLS link notices a broken connection by itself.
    pub fn network_changed(&mut self, now: Instant) {
        if matches!(self.phase, Phase::UdpUp(_)) {
            debug!("relay: network changed, saying hello again over udp");
            self.start_udp_hello(now);
        }
    }

    /// Sends `packet` to `peer` through the relay, or queues it until connected.
    pub fn send(&mut self, peer: NodeId, packet: Vec<u8>) {
        if self.is_connected() {
            self.forward(peer, packet);
            return;
        }
        if self.queue.len() >= self.config.queue.max(1) {
            self.queue.pop_front();
            self.counters.dropped += 1;
        }
        self.queue.push_back((peer, packet));
    }

    /// A datagram that came from `src` on the daemon's socket with the relay magic.
    pub fn handle_udp(&mut self, now: Instant, src: SocketAddr, bytes: &[u8]) {
        if !same_addr(src, self.config.udp_addr) {
            self.counters.malformed += 1;
            debug!(%src, "relay datagram from an address that is not the relay");
            return;
        }
        let msg = match self.udp.decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.counters.malformed += 1;
                debug!(error = %e, "undecodable relay datagram");
                return;
            }
        };
        match self.udp.handle(msg) {
            Ok((reply, event)) => {
                if let Some(r) = reply {
                    if matches!(r, ClientMsg::Auth { .. }) {
                        self.on_challenge_answered(now);
                    }
                    self.push_udp(&r);
                }
                if let Some(e) = event {
                    self.on_event(now, RelayTransport::Udp, e);
                }
            }
            Err(e) => {
                self.counters.malformed += 1;
                debug!(error = %e, "relay session error over udp");
            }
        }
    }

    /// TLS connection `conn` is open (handshake done, relay key pinned).
    pub fn handle_tls_open(&mut self, _now: Instant, conn: TlsConnId) {
        let Some(link) = self.tls.as_mut().filter(|l| l.conn == conn) else {
            self.transmits.push_back(LinkTransmit::CloseTls { conn });
            return;
        };
        let session = ClientSession::new(
            self.key.clone(),
            Some(self.config.relay_node),
            Transport::Tls,
        );
        let hello = session.encode(&session.hello());
        link.session = Some(session);
        match hello {
            Ok(bytes) => self.transmits.push_back(LinkTransmit::Tls { conn, bytes }),
            Err(e) => debug!(error = %e, "relay hello does not encode"),
        }
    }

    /// One whole frame read from TLS connection `conn`.
    pub fn handle_tls_frame(&mut self, now: Instant, conn: TlsConnId, bytes: &[u8]) {
        let Some(session) = self
            .tls
            .as_mut()
            .filter(|l| l.conn == conn)
            .and_then(|l| l.session.as_mut())
        else {
            return;
        };
        let handled = session
            .decode(bytes)
            .map_err(|e| e.to_string())
            .and_then(|m| session.handle(m).map_err(|e| e.to_string()));
        match handled {
            Ok((reply, event)) => {
                if let Some(r) = reply {
                    self.push_tls(conn, &r);
                }
                if let Some(e) = event {
                    self.on_event(now, RelayTransport::Tls, e);
                }
            }
            Err(error) => {
                // A stream that does not decode cannot be resynchronised: close it.
                self.counters.malformed += 1;
                debug!(%error, "bad relay frame over tls");
                self.handle_tls_closed(now, conn);
            }
        }
    }

    /// TLS connection `conn` closed or could not be opened.
    pub fn handle_tls_closed(&mut self, now: Instant, conn: TlsConnId) {
        if self.tls.as_ref().is_none_or(|l| l.conn != conn) {
            return;
        }
        self.close_tls();
        match self.phase {
            Phase::TlsConnecting { .. } => self.fail(now),
            Phase::TlsUp { .. } => self.lost(now, DisconnectReason::Closed),
            _ => {}
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick_stores(now);
        match &mut self.phase {
            Phase::Backoff { until } if now >= *until => self.connect(now),
            Phase::Backoff { .. } => {}
            Phase::UdpHello(h) if now >= h.give_up => self.udp_failed(now),
            Phase::UdpHello(h) => {
                if h.next_hello.is_some_and(|t| now >= t) {
                    h.next_hello = Some(now + self.config.hello_retry);
                    self.send_udp_hello();
                }
            }
            Phase::TlsConnecting { give_up, .. } if now >= *give_up => {
                self.close_tls();
                self.fail(now);
            }
            Phase::TlsConnecting { .. } => {}
            Phase::UdpUp(_) => self.tick_alive(now),
            Phase::TlsUp { .. } => {
                self.tick_probe(now);
                self.tick_alive(now);
            }
        }
    }

    /// When [`RelayLinkState::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let phase = self.phase_deadline();
        match self.stores_deadline() {
            Some(s) => Some(phase.map_or(s, |p| p.min(s))),
            None => phase,
        }
    }

    fn phase_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Backoff { until } => Some(*until),
            Phase::UdpHello(h) => Some(h.next_hello.map_or(h.give_up, |t| t.min(h.give_up))),
            Phase::TlsConnecting { give_up, .. } => Some(*give_up),
            Phase::UdpUp(alive) => Some(alive.deadline()),
            Phase::TlsUp { alive, probe, .. } => {
                let probe = match probe {
                    Probe::Idle { at } => *at,
                    Probe::Hello(h) => h.next_hello.map_or(h.give_up, |t| t.min(h.give_up)),
                };
                Some(alive.deadline().min(probe))
            }
        }
    }

    /// The next thing to send or do.
    pub fn poll_transmit(&mut self) -> Option<LinkTransmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    // ---- transitions ----

    /// Starts a connection attempt on the preferred transport.
    fn connect(&mut self, now: Instant) {
        match (self.preferred, self.config.tls_addr) {
            (RelayTransport::Tls, Some(addr)) => self.open_tls(now, addr),
            _ => self.start_udp_hello(now),
        }
    }

    fn start_udp_hello(&mut self, now: Instant) {
        self.phase = Phase::UdpHello(self.new_hello(now));
    }

    /// A fresh UDP session, its hello sent, and the attempt's timers.
    fn new_hello(&mut self, now: Instant) -> Hello {
        self.udp = ClientSession::new(
            self.key.clone(),
            Some(self.config.relay_node),
            Transport::Udp,
        );
        self.send_udp_hello();
        Hello {
            next_hello: Some(now + self.config.hello_retry),
            give_up: now + self.config.tls_after,
        }
    }

    fn open_tls(&mut self, now: Instant, addr: SocketAddr) {
        self.close_tls();
        self.next_conn += 1;
        let conn = self.next_conn;
        self.tls = Some(TlsLink {
            conn,
            session: None,
        });
        self.transmits.push_back(LinkTransmit::OpenTls {
            conn,
            addr,
            relay: self.config.relay_node,
        });
        self.phase = Phase::TlsConnecting {
            conn,
            give_up: now + self.config.tls_timeout,
        };
    }

    fn close_tls(&mut self) {
        if let Some(l) = self.tls.take() {
            self.transmits
                .push_back(LinkTransmit::CloseTls { conn: l.conn });
        }
    }

    /// UDP did not authenticate in time: TLS if there is one, else back off.
    fn udp_failed(&mut self, now: Instant) {
        match self.config.tls_addr {
            Some(addr) => {
                debug!("relay: no answer over udp, trying tls");
                self.open_tls(now, addr);
            }
            None => self.fail(now),
        }
    }

    /// A connection attempt failed: wait, longer each time.
    fn fail(&mut self, now: Instant) {
        self.wait(now, Duration::ZERO);
    }

    fn wait(&mut self, now: Instant, at_least: Duration) {
        let delay = self.backoff.max(at_least);
        self.backoff = (self.backoff * 2).min(self.config.backoff_max);
        self.phase = Phase::Backoff { until: now + delay };
    }

    /// The established link ended.
    fn lost(&mut self, now: Instant, reason: DisconnectReason) {
        let Some(transport) = self.transport() else {
            return;
        };
        debug!(?transport, ?reason, "relay link lost");
        self.events
            .push_back(LinkEvent::Disconnected { transport, reason });
        self.close_tls();
        match (reason, transport) {
            (DisconnectReason::Restarting { after }, _) => self.wait(now, after),
            // Say hello again at once (the relay may have lost us); TLS follows in
            // `tls_after` if UDP stays silent.
            (DisconnectReason::Silent, RelayTransport::Udp) => self.start_udp_hello(now),
            _ => self.fail(now),
        }
    }
}

/// Whether two socket addresses are the same endpoint (IPv4-mapped IPv6 = IPv4).
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}
