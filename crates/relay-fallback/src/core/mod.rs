//! The relay as a sans-IO state machine: bytes and `now` in, frames, events and counters out.
//!
//! Drive it like this:
//! 1. Feed input: [`Relay::handle_datagram`] or [`Relay::forward_in_place`] (UDP; the
//!    second rewrites forwarded datagrams in the caller's buffer, see `forward`),
//!    [`Relay::handle_stream_open`],
//!    [`Relay::handle_stream_bytes`] and [`Relay::handle_stream_closed`] (TCP/TLS), and
//!    [`Relay::handle_timeout`] at least every [`TICK`].
//! 2. After each call, drain [`Relay::poll_event`]: [`Event::UdpReady`] means
//!    [`Relay::poll_udp`] has datagrams to send; [`Event::StreamReady`] means
//!    [`Relay::poll_stream`] has frames (or a close) for that connection. Drain them until
//!    they report nothing more.
//!
//! Outbound frames wait in a bounded queue per link (frames beyond it are dropped and
//! counted), so a slow or flooded destination costs a bounded amount of memory. The store
//! of sealed mails is a [`MailStore`] called synchronously.

mod auth;
mod forward;
mod mail;
mod output;
mod queue;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_proto::relay::{self as wire, ClientMsg, RelayMsg, Transport};
use agentmesh_proto::{frame, NodeId};
use indexmap::IndexMap;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::bucket::TokenBucket;
use crate::limits::Limits;
use crate::metrics::{Counters, Snapshot};
use crate::store::MailStore;
use queue::OutQueue;

pub use forward::Forward;
pub use output::StreamPoll;

/// How often the driver must call [`Relay::handle_timeout`] at least.
pub const TICK: Duration = Duration::from_millis(250);
/// How often expired mails are purged.
const PURGE_EVERY: Duration = Duration::from_secs(30);

/// A TCP/TLS connection, numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Where a client is reached: a UDP address or a stream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    /// UDP, by source address.
    Udp(SocketAddr),
    /// TCP/TLS, by connection.
    Stream(ConnId),
}

impl Link {
    /// The transport bound into this link's authentication.
    pub fn transport(&self) -> Transport {
        match self {
            Link::Udp(_) => Transport::Udp,
            Link::Stream(_) => Transport::Tls,
        }
    }
}

/// Something the driver must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// [`Relay::poll_udp`] has datagrams.
    UdpReady,
    /// [`Relay::poll_stream`] has frames or a close for this connection.
    StreamReady(ConnId),
}

/// Where a link is in its life.
#[derive(Debug)]
enum State {
    /// Connected, not authenticated; `nonce` is the outstanding challenge.
    Pending {
        nonce: Option<[u8; 32]>,
        since: Instant,
    },
    /// Authenticated as a node.
    Authed(Box<Authed>),
    /// A stream the relay is closing: queued frames are flushed, input is ignored.
    Closing,
}

/// What the relay keeps about an authenticated client.
#[derive(Debug)]
struct Authed {
    /// The pinned node id: every frame from this link comes from it.
    node: NodeId,
    /// Bytes-per-second limit.
    bytes: TokenBucket,
    /// Frames-per-second limit.
    packets: TokenBucket,
    /// Store-and-forward delivery progress.
    mail: mail::Cursor,
}

/// Per-link state.
#[derive(Debug)]
struct LinkState {
    /// Authentication state.
    state: State,
    /// Frames waiting to be written to this link.
    queue: OutQueue,
    /// Stream bytes received but not yet a whole frame (streams only; bounded by max frame).
    inbuf: Vec<u8>,
    /// Last time a frame arrived (UDP idle timeout).
    last_seen: Instant,
    /// Whether a [`Event::StreamReady`] is outstanding (streams only).
    signalled: bool,
}

/// The blind relay: authenticates clients, forwards opaque frames by node id, stores sealed mail.
#[derive(Debug)]
pub struct Relay<S> {
    /// The relay's own node id (bound into client signatures).
    id: NodeId,
    /// Limits from the config.
    limits: Limits,
    /// Sealed mails.
    store: S,
    /// Challenge nonces.
    rng: StdRng,
    /// Every known link, in arrival order.
    links: IndexMap<Link, LinkState>,
    /// Authenticated node → its link.
    nodes: HashMap<NodeId, Link>,
    /// Links in [`State::Pending`].
    pending: usize,
    /// Hellos accepted per second, all links together.
    handshakes: TokenBucket,
    /// UDP links with queued frames, served round-robin.
    udp_ready: VecDeque<SocketAddr>,
    /// Datagrams to addresses without link state (refusals), bounded.
    udp_control: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Whether an [`Event::UdpReady`] is outstanding.
    udp_signalled: bool,
    /// Events for the driver.
    events: VecDeque<Event>,
    /// Counters for `/metrics`.
    counters: Counters,
    /// Whether the relay is shutting down.
    draining: bool,
    /// (monotonic, Unix ms) at construction, to turn `now` into wall time for mail TTLs.
    anchor: (Instant, u64),
    /// Next mail purge.
    next_purge: Instant,
}

impl<S: MailStore> Relay<S> {
    /// A relay with node id `id`. `seed` seeds the challenge nonces (use OS randomness);
    /// `unix_ms` is the wall-clock time at `now`.
    pub fn new(
        id: NodeId,
        limits: Limits,
        store: S,
        seed: [u8; 32],
        now: Instant,
        unix_ms: u64,
    ) -> Self {
        let handshakes =
            TokenBucket::new(now, limits.handshakes_per_sec, limits.handshakes_per_sec);
        Self {
            id,
            limits,
            store,
            rng: StdRng::from_seed(seed),
            links: IndexMap::new(),
            nodes: HashMap::new(),
            pending: 0,
            handshakes,
            udp_ready: VecDeque::new(),
            udp_control: VecDeque::new(),
            udp_signalled: false,
            events: VecDeque::new(),
            counters: Counters::default(),
            draining: false,
            anchor: (now, unix_ms),
            next_purge: now,
        }
    }

    /// The relay's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The mail store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Authenticated clients.
    pub fn client_count(&self) -> usize {
        self.nodes.len()
    }

    /// Whether `node` is connected.
    pub fn is_connected(&self, node: &NodeId) -> bool {
        self.nodes.contains_key(node)
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.anchor.0).as_millis();
        self.anchor
            .1
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// A UDP datagram arrived from `from`. (The batched driver uses
    /// [`Relay::forward_in_place`], which gives the same outcome without copying.)
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if !self.count_in(bytes.len()) {
            return;
        }
        let link = Link::Udp(from);
        if !self.admit(now, link, bytes.len()) {
            return;
        }
        self.dispatch_datagram(now, link, bytes);
    }

    /// Counts a received datagram; `false` (counted as oversize) when it is too long.
    fn count_in(&mut self, len: usize) -> bool {
        self.counters.frames_in += 1;
        self.counters.bytes_in += len as u64;
        if len > self.limits.max_frame + wire::UDP_MAGIC.len() + frame::HEADER_LEN {
            self.counters.dropped_oversize += 1;
            return false;
        }
        true
    }

    /// A counted and admitted UDP datagram: decode it and act on it.
    fn dispatch_datagram(&mut self, now: Instant, link: Link, bytes: &[u8]) {
        // The bulk of the traffic: read `Send` in place (no copy of the payload).
        if let Some((to, payload)) = wire::decode_send_datagram(bytes, self.limits.max_frame) {
            match self.authed_node(&link) {
                Some(node) => self.forward(link, node, to, payload),
                None => self.counters.dropped_unauthenticated += 1,
            }
            return;
        }
        match wire::decode_datagram::<ClientMsg>(bytes, self.limits.max_frame) {
            Ok(msg) => self.handle_msg(now, link, msg, bytes.len()),
            Err(_) => self.counters.dropped_malformed += 1,
        }
    }

    /// The node authenticated on `link`, if any.
    fn authed_node(&self, link: &Link) -> Option<NodeId> {
        match self.links.get(link).map(|l| &l.state) {
            Some(State::Authed(a)) => Some(a.node),
            _ => None,
        }
    }

    /// Forwards `payload` from `node` (authenticated on `link`) to `to`, or tells `link`
    /// that `to` is not connected.
    fn forward(&mut self, link: Link, node: NodeId, to: NodeId, payload: &[u8]) {
        match self.nodes.get(&to) {
            Some(&dst) => {
                self.counters.forwarded += 1;
                self.send_recv(dst, node, payload);
            }
            None => {
                self.counters.peer_gone += 1;
                self.send(link, &RelayMsg::PeerGone { node: to });
            }
        }
    }

    /// Rate check before decoding, for authenticated links; refreshes `last_seen`.
    fn admit(&mut self, now: Instant, link: Link, wire_len: usize) -> bool {
        let Some(ls) = self.links.get_mut(&link) else {
            return true;
        };
        let State::Authed(a) = &mut ls.state else {
            return true;
        };
        ls.last_seen = now;
        if a.admit(now, wire_len) {
            true
        } else {
            self.counters.dropped_rate += 1;
            false
        }
    }

    fn handle_msg(&mut self, now: Instant, link: Link, msg: ClientMsg, wire_len: usize) {
        let node = self.authed_node(&link);
        match (msg, node) {
            (ClientMsg::Hello { version, .. }, _) => self.on_hello(now, link, version, wire_len),
            (ClientMsg::Auth { node, signature }, _) => self.on_auth(now, link, node, signature),
            (msg, Some(node)) => self.on_client_msg(now, link, node, msg),
            (_, None) => {
                self.counters.dropped_unauthenticated += 1;
                if matches!(link, Link::Stream(_)) {
                    self.close(link);
                }
            }
        }
    }

    fn on_client_msg(&mut self, now: Instant, link: Link, node: NodeId, msg: ClientMsg) {
        match msg {
            ClientMsg::Send { to, payload } => self.forward(link, node, to, &payload.0),
            ClientMsg::Store { id, to, sealed } => {
                self.on_store(now, link, node, id, to, &sealed.0)
            }
            ClientMsg::MailAck { id } => self.on_mail_ack(now, link, id),
            ClientMsg::Ping { n } => self.send(link, &RelayMsg::Pong { n }),
            ClientMsg::HealthQuery => {
                let health = RelayMsg::Health {
                    clients: u32::try_from(self.nodes.len()).unwrap_or(u32::MAX),
                    max_clients: u32::try_from(self.limits.max_clients).unwrap_or(u32::MAX),
                    draining: self.draining,
                };
                self.send(link, &health);
            }
            ClientMsg::Hello { .. } | ClientMsg::Auth { .. } => {}
        }
    }

    /// Expires handshakes and idle UDP clients, resends unacknowledged mail, purges old mail.
    pub fn handle_timeout(&mut self, now: Instant) {
        let hs = self.limits.handshake_timeout();
        let idle = self.limits.idle_timeout();
        let mut expired = Vec::new();
        let mut resend = Vec::new();
        for (link, ls) in &self.links {
            match &ls.state {
                State::Pending { since, .. } if now.saturating_duration_since(*since) > hs => {
                    expired.push(*link)
                }
                State::Authed(_)
                    if matches!(link, Link::Udp(_))
                        && now.saturating_duration_since(ls.last_seen) > idle =>
                {
                    expired.push(*link)
                }
                State::Authed(a) if a.mail.due(now, &self.limits.mail) => resend.push(*link),
                _ => {}
            }
        }
        for link in expired {
            self.close(link);
        }
        for link in resend {
            self.resend_mail(now, link);
        }
        if now >= self.next_purge {
            self.next_purge = now + PURGE_EVERY;
            self.purge_mail(now);
        }
    }

    /// Starts a graceful drain: tells every client to reconnect later and refuses new ones.
    pub fn begin_drain(&mut self) {
        self.draining = true;
        let ms = self.limits.reconnect_after_ms;
        let links: Vec<Link> = self.links.keys().copied().collect();
        for link in links {
            self.send(
                link,
                &RelayMsg::Restarting {
                    reconnect_after_ms: ms,
                },
            );
        }
    }

    /// Whether [`Relay::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Stream links still open (draining waits for these to go).
    pub fn stream_links(&self) -> usize {
        self.links
            .keys()
            .filter(|l| matches!(l, Link::Stream(_)))
            .count()
    }

    /// A point-in-time view for `/status` and `/metrics`.
    pub fn snapshot(&self) -> Snapshot {
        let udp = self
            .nodes
            .values()
            .filter(|l| matches!(l, Link::Udp(_)))
            .count();
        Snapshot {
            relay_id: self.id.to_string(),
            clients_udp: udp,
            clients_tls: self.nodes.len() - udp,
            pending: self.pending,
            queued_frames: self.links.values().map(|l| l.queue.len()).sum(),
            queued_bytes: self.links.values().map(|l| l.queue.bytes()).sum(),
            draining: self.draining,
            counters: self.counters.clone(),
        }
    }
}

impl Authed {
    /// Spends a frame of `wire_len` bytes from both rate buckets, if both have it.
    fn admit(&mut self, now: Instant, wire_len: usize) -> bool {
        let cost = wire_len as u64;
        if self.bytes.check(now, cost) && self.packets.check(now, 1) {
            self.bytes.spend(cost);
            self.packets.spend(1);
            true
        } else {
            false
        }
    }
}

impl LinkState {
    fn new(now: Instant, state: State) -> Self {
        Self {
            state,
            queue: OutQueue::default(),
            inbuf: Vec::new(),
            last_seen: now,
            signalled: false,
        }
    }
}

#[cfg(test)]
mod tests;
