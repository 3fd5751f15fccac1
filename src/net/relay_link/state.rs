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

use agentmesh_proto::relay::{ClientMsg, Payload, RefuseReason, Transport};
use agentmesh_proto::{NodeId, SecretKey};
use agentmesh_relay::client::{ClientEvent, ClientSession};
use tracing::debug;

use super::{RelayLinkConfig, RelayTransport};

/// Identifies one TLS connection attempt, so that frames and closes of an old connection
/// never touch a newer one.
pub type TlsConnId = u64;

/// Something to send or do on a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkTransmit {
    /// A datagram for the relay, on the daemon's UDP socket.
    Udp {
        /// The relay's UDP address.
        dst: SocketAddr,
        /// The datagram (relay magic + one frame).
        bytes: Vec<u8>,
    },
    /// Open a TCP/TLS connection to the relay (pinning `relay`, ALPN relay), then report
    /// it with `handle_tls_open` or `handle_tls_closed`.
    OpenTls {
        /// Its id.
        conn: TlsConnId,
        /// The relay's TLS address.
        addr: SocketAddr,
        /// The relay's node id, to pin.
        relay: NodeId,
    },
    /// Bytes (one frame) to write on connection `conn`.
    Tls {
        /// The connection.
        conn: TlsConnId,
        /// One frame.
        bytes: Vec<u8>,
    },
    /// Close connection `conn` (no longer used).
    CloseTls {
        /// The connection.
        conn: TlsConnId,
    },
}

/// Why an established link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Pings went unanswered.
    Silent,
    /// The TLS connection closed.
    Closed,
    /// The relay is restarting.
    Restarting {
        /// The delay it suggested.
        after: Duration,
    },
    /// The relay refused or ended the session.
    Refused(RefuseReason),
}

/// Something the daemon must know or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Authenticated with the relay on `transport` (also sent when moving between them).
    Connected {
        /// The transport now in use.
        transport: RelayTransport,
    },
    /// A QUIC packet from a peer, for `MeshHandle::deliver_relayed`.
    Received {
        /// The authenticated sender.
        from: NodeId,
        /// The packet.
        packet: Vec<u8>,
    },
    /// The established link on `transport` ended; the link reconnects by itself.
    Disconnected {
        /// The transport that was in use.
        transport: RelayTransport,
        /// Why.
        reason: DisconnectReason,
    },
    /// A packet's destination is not connected to the relay.
    PeerGone(NodeId),
    /// A stored (sealed) message for us; already acknowledged to the relay.
    Mail {
        /// Who stored it.
        from: NodeId,
        /// The sealed bytes.
        sealed: Vec<u8>,
    },
}

/// Traffic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Packets handed to the relay.
    pub sent: u64,
    /// Packets received through the relay.
    pub received: u64,
    /// Packets dropped (queue full while disconnected, or not encodable).
    pub dropped: u64,
    /// `PeerGone` answers.
    pub peer_gone: u64,
    /// Times the link became connected.
    pub connects: u64,
    /// Datagrams or frames from the relay that did not decode or were not acceptable.
    pub malformed: u64,
}

/// Liveness of an established link: one outstanding ping at a time.
#[derive(Debug, Clone)]
struct Alive {
    next_ping: Instant,
    n: u64,
    /// Deadline of the outstanding ping's pong.
    waiting: Option<Instant>,
    misses: u32,
}

/// A UDP hello attempt: hellos repeat until a challenge arrives, then we wait for
/// `Welcome` until `give_up`.
#[derive(Debug, Clone)]
struct Hello {
    next_hello: Option<Instant>,
    give_up: Instant,
}

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

/// UDP retries while on TLS.
#[derive(Debug, Clone)]
enum Probe {
    /// Next attempt at this time.
    Idle { at: Instant },
    /// Attempt under way.
    Hello(Hello),
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
                        self.on_challenge_answered();
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
        match (reason, transport, self.config.tls_addr) {
            (DisconnectReason::Restarting { after }, _, _) => self.wait(now, after),
            (DisconnectReason::Silent, RelayTransport::Udp, Some(addr)) => self.open_tls(now, addr),
            _ => self.fail(now),
        }
    }

    fn on_event(&mut self, now: Instant, via: RelayTransport, event: ClientEvent) {
        match event {
            ClientEvent::Recv { from, payload } => {
                self.counters.received += 1;
                self.events.push_back(LinkEvent::Received {
                    from,
                    packet: payload,
                });
            }
            ClientEvent::Ready { .. } => self.on_ready(now, via),
            ClientEvent::Pong(n) => self.on_pong(via, n),
            ClientEvent::PeerGone(node) => {
                self.counters.peer_gone += 1;
                self.events.push_back(LinkEvent::PeerGone(node));
            }
            ClientEvent::Mail { from, sealed } => {
                self.events.push_back(LinkEvent::Mail { from, sealed })
            }
            ClientEvent::Restarting { reconnect_after_ms } => {
                let after = Duration::from_millis(u64::from(reconnect_after_ms));
                self.on_ended(now, via, DisconnectReason::Restarting { after });
            }
            ClientEvent::Refused(reason) => {
                self.on_ended(now, via, DisconnectReason::Refused(reason))
            }
            ClientEvent::StoreAck { .. } | ClientEvent::Health { .. } => {}
        }
    }

    /// `Restarting` or `Refused` arrived over `via`.
    fn on_ended(&mut self, now: Instant, via: RelayTransport, reason: DisconnectReason) {
        if self.transport() == Some(via) {
            if via == RelayTransport::Tls && self.udp_probe_pending() {
                // Our own UDP retry replaced the TLS link: its Welcome is on the way.
                self.close_tls();
                let hello = self.probe_as_hello(now);
                self.events.push_back(LinkEvent::Disconnected {
                    transport: via,
                    reason,
                });
                self.phase = Phase::UdpHello(hello);
                return;
            }
            self.lost(now, reason);
            return;
        }
        let connecting = matches!(
            (&self.phase, via),
            (Phase::UdpHello(_), RelayTransport::Udp)
                | (Phase::TlsConnecting { .. }, RelayTransport::Tls)
        );
        if !connecting {
            return; // About a link we no longer use.
        }
        match reason {
            DisconnectReason::Refused(RefuseReason::AuthFailed) if via == RelayTransport::Udp => {
                // A stale nonce (hello repeated): say hello again.
                if let Phase::UdpHello(h) = &mut self.phase {
                    h.next_hello = Some(now);
                }
            }
            DisconnectReason::Restarting { after } => {
                self.close_tls();
                self.wait(now, after);
            }
            _ => {
                self.close_tls();
                self.fail(now);
            }
        }
    }

    fn on_ready(&mut self, now: Instant, via: RelayTransport) {
        let alive = Alive::new(now, self.config.ping_interval);
        match via {
            RelayTransport::Udp => {
                if matches!(self.phase, Phase::UdpUp(_)) {
                    return;
                }
                self.close_tls();
                self.phase = Phase::UdpUp(alive);
            }
            RelayTransport::Tls => {
                let Phase::TlsConnecting { conn, .. } = self.phase else {
                    return;
                };
                let probe = Probe::Idle {
                    at: now + self.config.udp_retry,
                };
                self.phase = Phase::TlsUp { conn, alive, probe };
            }
        }
        debug!(transport = ?via, "relay link connected");
        self.preferred = via;
        self.backoff = self.config.backoff_min;
        self.counters.connects += 1;
        self.events
            .push_back(LinkEvent::Connected { transport: via });
        while let Some((peer, packet)) = self.queue.pop_front() {
            self.forward(peer, packet);
        }
    }

    fn on_pong(&mut self, via: RelayTransport, n: u64) {
        if self.transport() != Some(via) {
            return;
        }
        if let Phase::UdpUp(alive) | Phase::TlsUp { alive, .. } = &mut self.phase {
            alive.pong(n);
        }
    }

    /// The relay's challenge over UDP was answered: stop repeating hellos.
    fn on_challenge_answered(&mut self) {
        match &mut self.phase {
            Phase::UdpHello(h)
            | Phase::TlsUp {
                probe: Probe::Hello(h),
                ..
            } => h.next_hello = None,
            _ => {}
        }
    }

    fn udp_probe_pending(&self) -> bool {
        matches!(
            self.phase,
            Phase::TlsUp {
                probe: Probe::Hello(_),
                ..
            }
        )
    }

    fn probe_as_hello(&self, now: Instant) -> Hello {
        match &self.phase {
            Phase::TlsUp {
                probe: Probe::Hello(h),
                ..
            } => h.clone(),
            _ => Hello {
                next_hello: Some(now),
                give_up: now + self.config.tls_after,
            },
        }
    }

    // ---- timers of an established link ----

    fn tick_alive(&mut self, now: Instant) {
        let (misses, ping) = {
            let (Phase::UdpUp(alive) | Phase::TlsUp { alive, .. }) = &mut self.phase else {
                return;
            };
            alive.tick(now, self.config.ping_interval, self.config.pong_timeout)
        };
        if misses >= self.config.ping_misses.max(1) {
            self.lost(now, DisconnectReason::Silent);
            return;
        }
        if let Some(n) = ping {
            self.push_active(&ClientMsg::Ping { n });
        }
    }

    fn tick_probe(&mut self, now: Instant) {
        let Phase::TlsUp { probe, .. } = &self.phase else {
            return;
        };
        match probe {
            Probe::Idle { at } if now >= *at => {
                debug!("relay: on tls, trying udp again");
                let hello = self.new_hello(now);
                self.set_probe(Probe::Hello(hello));
            }
            Probe::Hello(h) if now >= h.give_up => {
                let at = now + self.config.udp_retry;
                self.set_probe(Probe::Idle { at });
            }
            Probe::Hello(h) if h.next_hello.is_some_and(|t| now >= t) => {
                let mut h = h.clone();
                h.next_hello = Some(now + self.config.hello_retry);
                self.set_probe(Probe::Hello(h));
                self.send_udp_hello();
            }
            _ => {}
        }
    }

    fn set_probe(&mut self, new: Probe) {
        if let Phase::TlsUp { probe, .. } = &mut self.phase {
            *probe = new;
        }
    }

    // ---- output ----

    fn forward(&mut self, to: NodeId, packet: Vec<u8>) {
        let msg = ClientMsg::Send {
            to,
            payload: Payload(packet),
        };
        if self.push_active(&msg) {
            self.counters.sent += 1;
        } else {
            self.counters.dropped += 1;
        }
    }

    /// Sends `msg` on the transport in use; false if there is none or it does not encode.
    fn push_active(&mut self, msg: &ClientMsg) -> bool {
        match self.phase {
            Phase::UdpUp(_) => self.push_udp(msg),
            Phase::TlsUp { conn, .. } => self.push_tls(conn, msg),
            _ => false,
        }
    }

    fn send_udp_hello(&mut self) {
        let hello = self.udp.hello();
        self.push_udp(&hello);
    }

    fn push_udp(&mut self, msg: &ClientMsg) -> bool {
        match self.udp.encode(msg) {
            Ok(bytes) => {
                self.transmits.push_back(LinkTransmit::Udp {
                    dst: self.config.udp_addr,
                    bytes,
                });
                true
            }
            Err(e) => {
                debug!(error = %e, "relay message does not encode");
                false
            }
        }
    }

    fn push_tls(&mut self, conn: TlsConnId, msg: &ClientMsg) -> bool {
        let Some(session) = self
            .tls
            .as_ref()
            .filter(|l| l.conn == conn)
            .and_then(|l| l.session.as_ref())
        else {
            return false;
        };
        match session.encode(msg) {
            Ok(bytes) => {
                self.transmits.push_back(LinkTransmit::Tls { conn, bytes });
                true
            }
            Err(e) => {
                debug!(error = %e, "relay message does not encode");
                false
            }
        }
    }
}

impl Alive {
    fn new(now: Instant, interval: Duration) -> Self {
        Alive {
            next_ping: now + interval,
            n: 0,
            waiting: None,
            misses: 0,
        }
    }

    fn deadline(&self) -> Instant {
        self.waiting.unwrap_or(self.next_ping)
    }

    /// Advances to `now`: returns the consecutive misses and the number of a ping to send.
    fn tick(&mut self, now: Instant, interval: Duration, timeout: Duration) -> (u32, Option<u64>) {
        if let Some(deadline) = self.waiting {
            if now < deadline {
                return (self.misses, None);
            }
            // Missed: ping again at once.
            self.misses += 1;
            self.waiting = None;
            self.next_ping = now;
        }
        if now < self.next_ping {
            return (self.misses, None);
        }
        self.n += 1;
        self.waiting = Some(now + timeout);
        self.next_ping = now + interval;
        (self.misses, Some(self.n))
    }

    fn pong(&mut self, n: u64) {
        if n == self.n {
            self.waiting = None;
            self.misses = 0;
        }
    }
}

/// Whether two socket addresses are the same endpoint (IPv4-mapped IPv6 = IPv4).
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}
