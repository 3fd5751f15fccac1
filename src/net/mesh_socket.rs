//! The daemon's UDP socket as quinn sees it: one real socket underneath, peers at stable
//! virtual addresses (see [`Routes`]), each peer's packets sent direct or through the
//! relay as its current path says, and everything that is not QUIC (STUN, probes, relay
//! frames) diverted to the daemon instead of quinn.
//!
//! This is how a peer's connection starts on the relay and moves to a punched direct path
//! with no reconnect: only the route changes, quinn keeps talking to the same address.
//!
//! The socket also remembers the last few handshake (long-header) packets it handed to
//! the relay for each peer: when a direct path appears, [`MeshHandle::replay_handshake`]
//! sends them again on it. A handshake whose packets the relay could not deliver (the
//! peer not yet connected to it, or plain loss) then completes as soon as the path is
//! direct, instead of at quinn's next retransmission timeout (1 s, then 2 s, 4 s…).
//!
//! For many-port probing the socket also has *doors* ([`doors`]): extra sockets opened
//! for one peer's punch on the hard side. Probes received on door `k` are diverted
//! tagged with `k`; once door `k` wins, that peer's QUIC is sent and received through
//! it (the other doors close), and the rest of the daemon's traffic stays on the one
//! socket.
//!
//! While the relay link is authenticated over UDP ([`RelayLink::udp_relay`]), relayed
//! packets do not go through the link's task: the socket frames a quinn transmit as
//! `Send` datagrams itself (a GSO batch stays one send to the relay) and takes the relay's
//! `Recv` datagrams in place, QUIC packets moved to the front of the receive buffer (a GRO
//! batch of them stays one batch for quinn). Everything else from the relay (challenges,
//! pongs, `PeerGone`, mail) still goes to the link.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use agentmesh_proto::NodeId;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use super::demux::{classify, Kind};
use super::routes::{is_virtual, Path, Routes};

pub mod doors;
pub use doors::{DoorBinder, UdpDoors, MAX_DOORS};
use doors::{Doors, Sinks};

/// Sends QUIC packets of relayed peers to the relay.
pub trait RelayLink: Send + Sync + fmt::Debug + 'static {
    /// Hands one QUIC packet for `peer` to the relay; must not block (drop when full).
    fn send(&self, peer: NodeId, packet: &[u8]) -> io::Result<()>;

    /// The relay while the link is authenticated with it over UDP: the socket then frames
    /// relayed packets itself and sends them to it, and takes its `Recv` datagrams in
    /// place (see the module doc). `None` (the default): every packet goes through
    /// [`RelayLink::send`] and every relay datagram to the link.
    fn udp_relay(&self) -> Option<UdpRelay> {
        None
    }

    /// Counts packets the socket framed itself (`sent`) or took in place (`received`),
    /// so the link's counters include them.
    fn count_framed(&self, sent: u64, received: u64) {
        let _ = (sent, received);
    }
}

/// Where the socket sends relayed packets itself ([`RelayLink::udp_relay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRelay {
    /// The relay's UDP address; only `Recv` datagrams from it are taken in place.
    pub addr: SocketAddr,
    /// Largest frame the relay accepts.
    pub max_frame: usize,
}

/// Largest datagram batch handed to the socket in one GSO send.
const MAX_GSO_BYTES: usize = 60_000;

/// A datagram that was not QUIC, for the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diverted {
    /// Where it came from.
    pub src: SocketAddr,
    /// The local socket it arrived on: 0 is the daemon's socket, `k` is door `k` of
    /// many-port probing.
    pub socket: u16,
    /// What it is.
    pub kind: Kind,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Counters of the socket's traffic.
#[derive(Debug, Default)]
pub struct SocketStats {
    /// QUIC packets sent on direct paths.
    pub direct_sent: AtomicU64,
    /// QUIC packets handed to the relay link.
    pub relay_sent: AtomicU64,
    /// QUIC packets received through the relay.
    pub relay_received: AtomicU64,
    /// Of `relay_sent`, those the socket framed and sent to the relay itself.
    pub relay_framed: AtomicU64,
    /// Of `relay_received`, those the socket unwrapped from the relay's datagrams itself.
    pub relay_unwrapped: AtomicU64,
    /// Datagrams diverted to the daemon.
    pub diverted: AtomicU64,
    /// Datagrams dropped (no path yet, or a full queue).
    pub dropped: AtomicU64,
    /// Handshake packets sent again on a new direct path ([`MeshHandle::replay_handshake`]).
    pub replayed: AtomicU64,
    /// QUIC packets received through a door (passed to quinn).
    pub door_received: AtomicU64,
    /// QUIC packets sent through a door.
    pub door_sent: AtomicU64,
}

/// Handshake packets most recently sent through the relay, per peer, kept for a replay on
/// the direct path. Only long-header packets (Initial, Handshake, 0-RTT) are kept, so the
/// memory is bounded by the handshakes in flight; a peer's entry goes as soon as a
/// short-header packet is sent to it (our side of its handshake is done).
#[derive(Debug, Default)]
struct HandshakeLog {
    peers: HashMap<NodeId, VecDeque<(tokio::time::Instant, Vec<u8>)>>,
}

/// Most handshake packets kept per peer (a flight is 1–4 datagrams).
const HANDSHAKE_LOG: usize = 8;

/// Handshake packets older than this are not replayed: quinn has retransmitted them
/// (its first retransmission timeout is about 1 s) or given up.
const HANDSHAKE_REPLAY_AGE: Duration = Duration::from_secs(3);

impl HandshakeLog {
    fn record(&mut self, node: NodeId, packet: &[u8]) {
        let now = tokio::time::Instant::now();
        let q = self.peers.entry(node).or_default();
        while q.len() >= HANDSHAKE_LOG
            || q.front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > HANDSHAKE_REPLAY_AGE)
        {
            q.pop_front();
        }
        q.push_back((now, packet.to_vec()));
    }

    fn take(&mut self, node: &NodeId) -> Vec<Vec<u8>> {
        let now = tokio::time::Instant::now();
        self.peers
            .remove(node)
            .unwrap_or_default()
            .into_iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= HANDSHAKE_REPLAY_AGE)
            .map(|(_, p)| p)
            .collect()
    }
}

/// Whether a QUIC packet has a long header (sent only during the handshake).
fn is_long_header(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| b & 0x80 != 0)
}

/// The socket quinn is given.
pub struct MeshSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    routes: Arc<Routes>,
    relay: Arc<dyn RelayLink>,
    diverted: mpsc::Sender<Diverted>,
    relayed: Mutex<mpsc::Receiver<(NodeId, Vec<u8>)>>,
    stats: Arc<SocketStats>,
    handshakes: Arc<Mutex<HandshakeLog>>,
    doors: Arc<Doors>,
    /// Where relayed transmits are framed (reused, so no allocation per transmit).
    framing: Mutex<Vec<u8>>,
}

/// The daemon's side of a [`MeshSocket`].
#[derive(Debug, Clone)]
pub struct MeshHandle {
    inner: Arc<dyn AsyncUdpSocket>,
    relayed: mpsc::Sender<(NodeId, Vec<u8>)>,
    stats: Arc<SocketStats>,
    handshakes: Arc<Mutex<HandshakeLog>>,
    doors: Arc<Doors>,
}

fn lock_log(log: &Mutex<HandshakeLog>) -> MutexGuard<'_, HandshakeLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queue sizes between the socket and the daemon.
const QUEUE: usize = 1024;

/// Most non-QUIC datagrams diverted in one `poll_recv` before yielding, so a flood of
/// them cannot keep quinn's receive task spinning.
const MAX_DIVERTED_PER_POLL: usize = 64;

impl MeshSocket {
    /// Wraps `inner`; returns the socket for quinn, the daemon's handle, and the stream
    /// of diverted (non-QUIC) datagrams.
    pub fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        routes: Arc<Routes>,
        relay: Arc<dyn RelayLink>,
    ) -> (MeshSocket, MeshHandle, mpsc::Receiver<Diverted>) {
        let (div_tx, div_rx) = mpsc::channel(QUEUE);
        let (rel_tx, rel_rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(SocketStats::default());
        let handshakes = Arc::new(Mutex::new(HandshakeLog::default()));
        let doors = Arc::new(Doors::new(Sinks {
            routes: routes.clone(),
            diverted: div_tx.clone(),
            quic: rel_tx.clone(),
            stats: stats.clone(),
        }));
        let socket = MeshSocket {
            inner: inner.clone(),
            routes,
            relay,
            diverted: div_tx,
            relayed: Mutex::new(rel_rx),
            stats: stats.clone(),
            handshakes: handshakes.clone(),
            doors: doors.clone(),
            framing: Mutex::new(Vec::with_capacity(MAX_GSO_BYTES)),
        };
        let handle = MeshHandle {
            inner,
            relayed: rel_tx,
            stats,
            handshakes,
            doors,
        };
        (socket, handle, div_rx)
    }

    /// A quinn endpoint on this socket, serving with `server` (peers dial out with their
    /// own client configs). QUIC's fixed bit is not greased (RFC 9287): the demultiplexer
    /// tells QUIC from STUN, probes and relay frames by it.
    pub fn into_endpoint(
        self,
        server: quinn::ServerConfig,
        runtime: Arc<dyn quinn::Runtime>,
    ) -> io::Result<quinn::Endpoint> {
        let mut config = quinn::EndpointConfig::default();
        config.grease_quic_bit(false);
        quinn::Endpoint::new_with_abstract_socket(config, Some(server), Arc::new(self), runtime)
    }

    fn map_incoming(&self, src: SocketAddr) -> SocketAddr {
        match self.routes.peer_of_direct(&src) {
            Some((node, virt)) => {
                self.routes.count_traffic(&node);
                virt
            }
            None => to_v6(src),
        }
    }

    fn divert(&self, src: SocketAddr, data: &[u8]) {
        let d = Diverted {
            src,
            socket: 0,
            kind: classify(data),
            data: data.to_vec(),
        };
        match self.diverted.try_send(d) {
            Ok(()) => self.stats.diverted.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Keeps the QUIC datagrams among the first `n` (moving them to the front, source
    /// addresses mapped) and the QUIC packets in the relay's `Recv` datagrams (unwrapped
    /// in place), diverts the others; returns how many buffers were kept.
    fn filter(&self, n: usize, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let relay = self.relay.udp_relay();
        let mut kept = 0;
        let mut unwrapped = 0;
        for i in 0..n {
            let m = meta[i];
            let len = m.len.min(bufs[i].len());
            let keep = match classify(&bufs[i][..len]) {
                Kind::Quic => Some(RecvMeta {
                    addr: self.map_incoming(m.addr),
                    len,
                    ..m
                }),
                Kind::Relay => match relay.filter(|r| same_addr(r.addr, m.addr)) {
                    Some(r) => {
                        let u = unwrap_relayed(&mut bufs[i][..len], m.stride, r.max_frame, |d| {
                            self.divert(m.addr, d)
                        });
                        u.map(|u| {
                            unwrapped += u.packets;
                            self.routes.count_traffic(&u.from);
                            RecvMeta {
                                addr: self.routes.virtual_addr(u.from),
                                len: u.len,
                                stride: u.stride,
                                ecn: None,
                                dst_ip: None,
                            }
                        })
                    }
                    None => self.divert_all(m, &bufs[i][..len]),
                },
                _ => self.divert_all(m, &bufs[i][..len]),
            };
            if let Some(k) = keep {
                if kept != i {
                    let (head, tail) = bufs.split_at_mut(i);
                    head[kept][..k.len].copy_from_slice(&tail[0][..k.len]);
                }
                meta[kept] = k;
                kept += 1;
            }
        }
        if unwrapped > 0 {
            self.stats
                .relay_received
                .fetch_add(unwrapped, Ordering::Relaxed);
            self.stats
                .relay_unwrapped
                .fetch_add(unwrapped, Ordering::Relaxed);
            self.relay.count_framed(0, unwrapped);
        }
        kept
    }

    /// Diverts every datagram of a (GRO) buffer; keeps nothing.
    fn divert_all(&self, m: RecvMeta, buf: &[u8]) -> Option<RecvMeta> {
        for segment in buf.chunks(m.stride.max(1)) {
            self.divert(m.addr, segment);
        }
        None
    }

    fn send_relayed(&self, node: NodeId, transmit: &Transmit<'_>) -> io::Result<()> {
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for segment in transmit.contents.chunks(size) {
            if is_long_header(segment) {
                lock_log(&self.handshakes).record(node, segment);
            }
        }
        if let Some(relay) = self.relay.udp_relay() {
            let mut buf = self.framing.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(frames) =
                frame_for_relay(&mut buf, node, transmit.contents, size, relay.max_frame)
            {
                self.send_framed(relay.addr, &buf, frames)?;
                let packets = transmit.contents.chunks(size).len() as u64;
                self.stats.relay_sent.fetch_add(packets, Ordering::Relaxed);
                self.stats
                    .relay_framed
                    .fetch_add(packets, Ordering::Relaxed);
                self.relay.count_framed(packets, 0);
                return Ok(());
            }
        }
        for segment in transmit.contents.chunks(size) {
            self.relay.send(node, segment)?;
            self.stats.relay_sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sends a QUIC transmit to `dst` through a door, one datagram per segment (a door
    /// may not offer the segmentation offload of the daemon's socket).
    fn send_door(
        &self,
        door: &dyn AsyncUdpSocket,
        dst: SocketAddr,
        transmit: &Transmit<'_>,
    ) -> io::Result<()> {
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for segment in transmit.contents.chunks(size) {
            let t = Transmit {
                destination: dst,
                ecn: transmit.ecn,
                contents: segment,
                segment_size: None,
                src_ip: None,
            };
            match door.try_send(&t) {
                Ok(()) => self.stats.door_sent.fetch_add(1, Ordering::Relaxed),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed)
                }
                Err(e) => return Err(e),
            };
        }
        Ok(())
    }

    /// Sends the `Send` datagrams framed in `buf` to the relay: as GSO batches of
    /// `frames.stride` when they are uniform, else one by one. A full socket buffer is
    /// returned to quinn (it waits and sends the transmit again; duplicates are dropped
    /// by QUIC).
    fn send_framed(&self, relay: SocketAddr, buf: &[u8], frames: Framed) -> io::Result<()> {
        let mut t = Transmit {
            destination: relay,
            ecn: None,
            contents: buf,
            segment_size: None,
            src_ip: None,
        };
        let Some(stride) = frames.stride else {
            for d in frames.lens.iter().scan(0, |at, &len| {
                let d = buf.get(*at..*at + len);
                *at += len;
                d
            }) {
                t.contents = d;
                self.inner.try_send(&t)?;
            }
            return Ok(());
        };
        let per_send = (MAX_GSO_BYTES / stride).clamp(1, self.inner.max_transmit_segments().max(1));
        for batch in buf.chunks(per_send * stride) {
            t.contents = batch;
            t.segment_size = (batch.len() > stride).then_some(stride);
            self.inner.try_send(&t)?;
        }
        Ok(())
    }

    /// A short-header packet goes to `node`: its handshake is over on our side, so
    /// nothing of it needs replaying.
    fn handshake_done(&self, node: NodeId, transmit: &Transmit<'_>) {
        if !is_long_header(transmit.contents) {
            let mut log = lock_log(&self.handshakes);
            if !log.peers.is_empty() {
                log.peers.remove(&node);
            }
        }
    }
}

impl MeshHandle {
    /// Delivers a QUIC packet that arrived from `from` through the relay.
    pub fn deliver_relayed(&self, from: NodeId, packet: Vec<u8>) {
        match self.relayed.try_send((from, packet)) {
            Ok(()) => self.stats.relay_received.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Sends a raw datagram (STUN, probe, relay frame) on the socket. A full socket
    /// buffer drops it: the senders of these datagrams retry on their own timers.
    pub fn send_raw(&self, dst: SocketAddr, data: &[u8]) -> io::Result<()> {
        self.send_datagram(&*self.inner, dst, data)
    }

    /// One datagram on `socket`; a full socket buffer drops it (counted).
    fn send_datagram(
        &self,
        socket: &dyn AsyncUdpSocket,
        dst: SocketAddr,
        data: &[u8],
    ) -> io::Result<()> {
        let t = Transmit {
            destination: dst,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        };
        match socket.try_send(&t) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            other => other,
        }
    }

    /// The path to `node` just became direct at `dst`: sends there again the handshake
    /// packets of the last few seconds that went through the relay (the relay may not
    /// have delivered them), so the handshake need not wait for quinn's retransmission
    /// timer. QUIC drops duplicates, so a packet that did arrive costs nothing but bytes.
    /// Returns how many were sent.
    pub fn replay_handshake(&self, node: NodeId, dst: SocketAddr) -> usize {
        let packets = lock_log(&self.handshakes).take(&node);
        let door = self.doors.state(&node).1.unwrap_or(0);
        let mut sent = 0;
        for p in &packets {
            if self.send_on(node, door, dst, p).is_ok() {
                sent += 1;
            }
        }
        self.stats
            .replayed
            .fetch_add(sent as u64, Ordering::Relaxed);
        sent
    }

    /// Sends a raw datagram for `node` from local socket `socket`: 0 is the daemon's
    /// socket, `k` is door `k` of `node` (an error if it is not open).
    pub fn send_on(
        &self,
        node: NodeId,
        socket: u16,
        dst: SocketAddr,
        data: &[u8],
    ) -> io::Result<()> {
        if socket == 0 {
            return self.send_raw(dst, data);
        }
        let door = self
            .doors
            .socket(&node, socket)
            .ok_or(io::ErrorKind::NotConnected)?;
        self.send_datagram(&*door, dst, data)
    }

    /// Gives the socket a way to open doors (without one, [`MeshHandle::open_doors`]
    /// fails and the daemon never takes the hard side of many-port probing).
    pub fn set_door_binder(&self, binder: Arc<dyn DoorBinder>) {
        self.doors.set_binder(binder);
    }

    /// Whether doors can be opened.
    pub fn doors_available(&self) -> bool {
        self.doors.available()
    }

    /// Opens doors `1..=count` for a punch with `node` (keeping those already open);
    /// returns how many are open, numbered from 1 (fewer than asked when the total
    /// bound [`MAX_DOORS`] or the system's ports run out).
    pub fn open_doors(&self, node: NodeId, count: u16) -> io::Result<u16> {
        self.doors.open(node, count)
    }

    /// Door `k` won `node`'s punch: its QUIC goes through door `k` from now on; the
    /// other doors close. False if door `k` was not open (then none is).
    pub fn keep_door(&self, node: NodeId, k: u16) -> bool {
        self.doors.keep(node, k)
    }

    /// Closes every door of `node` (its punch ended without one, or its path died).
    pub fn close_doors(&self, node: &NodeId) {
        self.doors.close(node);
    }

    /// Peers that have doors open.
    pub fn peers_with_doors(&self) -> Vec<NodeId> {
        self.doors.peers_with_doors()
    }

    /// Doors open now, over all peers.
    pub fn doors_open(&self) -> usize {
        self.doors.total()
    }

    /// How many doors `node` has open, and the door its path runs through.
    pub fn doors_of(&self, node: &NodeId) -> (usize, Option<u16>) {
        self.doors.state(node)
    }

    /// Traffic counters.
    pub fn stats(&self) -> &SocketStats {
        &self.stats
    }

    /// The real local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The relay datagrams [`frame_for_relay`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Framed {
    /// Each datagram's length, in order.
    lens: Vec<usize>,
    /// The common length when every datagram but the last has it and the last is not
    /// longer (a GSO batch), else `None`.
    stride: Option<usize>,
}

/// Writes into `buf` (cleared first) one `ClientMsg::Send` datagram to `node` for each
/// `size`-byte segment of `contents`. `None` when one does not fit the relay's
/// `max_frame` (the caller then takes the link's path, which counts the drop).
fn frame_for_relay(
    buf: &mut Vec<u8>,
    node: NodeId,
    contents: &[u8],
    size: usize,
    max_frame: usize,
) -> Option<Framed> {
    buf.clear();
    let mut lens = Vec::with_capacity(contents.len() / size.max(1) + 1);
    for segment in contents.chunks(size.max(1)) {
        let at = buf.len();
        agentmesh_proto::relay::encode_send_datagram(buf, &node, segment, max_frame).ok()?;
        lens.push(buf.len() - at);
    }
    let first = *lens.first()?;
    let uniform = lens.len() > 1
        && lens[..lens.len() - 1].iter().all(|&l| l == first)
        && lens.last().is_some_and(|&l| l <= first);
    let stride = if lens.len() == 1 || uniform {
        Some(first)
    } else {
        None
    };
    Some(Framed { lens, stride })
}

/// What [`unwrap_relayed`] left in the buffer for quinn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unwrapped {
    /// The peer that sent them through the relay.
    from: NodeId,
    /// Bytes of QUIC packets at the front of the buffer.
    len: usize,
    /// Size of each packet (the last may be shorter).
    stride: usize,
    /// How many packets.
    packets: u64,
}

/// Turns the relay datagrams in `buf` (a GRO batch of `stride`-byte datagrams, the last
/// maybe shorter) into the QUIC packets they carry: every `Recv` from the sender of the
/// first one, with the payload size of the first one (only the last may be shorter), is
/// moved to the front of `buf`; every other datagram (another message, another sender,
/// another size) goes to `divert` untouched. `None` when nothing was kept.
fn unwrap_relayed(
    buf: &mut [u8],
    stride: usize,
    max_frame: usize,
    mut divert: impl FnMut(&[u8]),
) -> Option<Unwrapped> {
    let stride = stride.max(1);
    let mut out: Option<Unwrapped> = None;
    let mut closed = false;
    let mut start = 0;
    while start < buf.len() {
        let end = (start + stride).min(buf.len());
        let parsed = agentmesh_proto::relay::decode_recv_datagram(&buf[start..end], max_frame)
            .map(|(from, payload)| (from, payload.len()));
        let fits = parsed.filter(|&(from, plen)| {
            plen > 0 && !closed && out.is_none_or(|u| u.from == from && plen <= u.stride)
        });
        match fits {
            Some((from, plen)) => {
                // The payload is the datagram's tail; everything before `start` is
                // already used, so the move never overwrites unread bytes.
                let u = out.get_or_insert(Unwrapped {
                    from,
                    len: 0,
                    stride: plen,
                    packets: 0,
                });
                buf.copy_within(end - plen..end, u.len);
                u.len += plen;
                u.packets += 1;
                closed = plen < u.stride;
            }
            None => divert(&buf[start..end]),
        }
        start = end;
    }
    out
}

fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// quinn needs IPv6 addresses everywhere once the socket reports an IPv6 address (the
/// virtual peer addresses are IPv6); IPv4 peers appear IPv4-mapped.
fn to_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
        v6 => v6,
    }
}

fn from_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

impl fmt::Debug for MeshSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for MeshSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let dst = transmit.destination;
        if !is_virtual(&dst) {
            let t = Transmit {
                destination: from_v6(dst),
                ..*transmit
            };
            return self.inner.try_send(&t);
        }
        match self.routes.resolve_virtual(&dst) {
            Some((node, Some(Path::Direct(addr)))) => {
                self.routes.count_traffic(&node);
                self.handshake_done(node, transmit);
                if let Some(door) = self.doors.route(&node) {
                    return self.send_door(door.as_ref(), addr, transmit);
                }
                let t = Transmit {
                    destination: addr,
                    ..*transmit
                };
                self.inner.try_send(&t)?;
                self.stats.direct_sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Some((node, Some(Path::Relay))) => {
                self.routes.count_traffic(&node);
                self.handshake_done(node, transmit);
                self.send_relayed(node, transmit)
            }
            // No path chosen yet (a peer whose first packets came through the relay):
            // answer the way it came. Without a relay, QUIC retransmits once the path
            // finder sets a direct path.
            Some((node, None)) => self.send_relayed(node, transmit).or_else(|_| {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }),
            None => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) {
            let mut relayed = self.relayed.lock().unwrap_or_else(|e| e.into_inner());
            if let Poll::Ready(Some((node, packet))) = relayed.poll_recv(cx) {
                self.routes.count_traffic(&node);
                let len = packet.len().min(buf.len());
                buf[..len].copy_from_slice(&packet[..len]);
                *slot = RecvMeta {
                    addr: self.routes.virtual_addr(node),
                    len,
                    stride: len,
                    ecn: None,
                    dst_ip: None,
                };
                return Poll::Ready(Ok(1));
            }
        }
        let mut diverted = 0;
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let kept = self.filter(n, bufs, meta);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            diverted += n;
            if diverted >= MAX_DIVERTED_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr().map(to_v6)
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests;
