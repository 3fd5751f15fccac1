//! The path finder's driver: one sans-IO [`PeerPath`] per peer node, fed with probes
//! from the socket, introductions from the rendezvous and timers; its probes go out on
//! the daemon's socket and its decisions land in the [`Routes`] table that the QUIC
//! socket reads, so a peer's connection moves between relay and direct on its own.
//!
//! Many-port probing: each introduction says how the peer's NAT maps (when the
//! rendezvous knows), our own STUN round says how ours does, and [`spray_role`] picks
//! this side's role. On the hard side the driver opens the doors (extra sockets) of the
//! socket for the attempt, keeps only the winning one once the punch succeeds through
//! it, and closes them all when the attempt ends or the path dies.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentmesh_proto::rendezvous::{Introduction, NatMapping};
use agentmesh_proto::{ErrorCode, ErrorObject, NodeId, SecretKey};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info};

use super::mesh_socket::MeshHandle;
use super::peer_path::{Doors, PathConfig, PathEvent, PeerPath, Tier};
use super::peers::PathSetup;
use super::probe;
use super::punch::{predicted_ports, spray_role, CandidateKind, MappingKind, Spray};
use super::routes::{Path, Routes};

/// How long a peer without a relay may take to get a direct path before dialing fails.
pub const DIRECT_WAIT: Duration = Duration::from_secs(8);

/// How often the driver looks at each peer's traffic (so an idle path's slow keepalive
/// turns fast within this long once traffic resumes).
const TRAFFIC_CHECK: Duration = Duration::from_secs(1);

/// QUIC packets from a peer within one [`TRAFFIC_CHECK`] window that are not yet traffic:
/// QUIC's own keep-alive (a PING every 15 s and the ACK of ours) must not keep an idle
/// path on the fast keepalive.
const KEEPALIVE_PACKETS: u64 = 2;

/// Least time between two introductions asked for the same peer.
const INTRO_SPACING: Duration = Duration::from_secs(3);

/// A peer's path changed (for status, `path` events and metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct PathChange {
    /// The peer.
    pub node: NodeId,
    /// The new route.
    pub path: Path,
    /// How it was obtained.
    pub tier: Tier,
    /// Round-trip time of the probe that proved a direct path.
    pub rtt: Option<Duration>,
}

/// What is known about one peer's path.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerPathInfo {
    /// The peer.
    pub node: NodeId,
    /// Its current route.
    pub path: Path,
    /// Its tier.
    pub tier: Tier,
    /// Probe RTT of the direct path, if direct.
    pub rtt: Option<Duration>,
    /// Direct paths found for it so far.
    pub punch_successes: u64,
    /// Introductions (punch attempts) for it so far.
    pub punch_attempts: u64,
}

struct Entry {
    path: PeerPath,
    info: PeerPathInfo,
    /// The peer's QUIC packet count at the start of the current window (more than
    /// [`KEEPALIVE_PACKETS`] within the window: the path is active).
    traffic_seen: u64,
    /// When the count of `traffic_seen` starts a new window.
    traffic_window: Instant,
    last_intro_asked: Option<Instant>,
    waiters: Vec<oneshot::Sender<()>>,
    /// An introduction is opening this peer's doors and its punch does not have them
    /// yet: [`Paths::flush`] leaves the doors alone (its path still says "no doors").
    opening_doors: bool,
}

struct Table {
    peers: HashMap<NodeId, Entry>,
    intros_seen: HashSet<u64>,
    relay_tier: Option<Tier>,
    seed: u64,
    /// How our NAT maps, from the last STUN round.
    own_mapping: MappingKind,
}

/// The daemon's path finder.
pub struct Paths {
    me: NodeId,
    key: SecretKey,
    routes: Arc<Routes>,
    mesh: MeshHandle,
    config: PathConfig,
    table: Mutex<Table>,
    wake: Notify,
    introduce: mpsc::UnboundedSender<NodeId>,
    changes: mpsc::UnboundedSender<PathChange>,
}

/// Reads the clock the way the rest of the driver does (tokio's, virtual in simulations).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Paths {
    /// A path finder sending probes through `mesh`; `relay_tier` is `None` when the
    /// daemon has no relay. Introduction requests come out of `introduce`, path changes
    /// out of `changes`.
    pub fn new(
        key: SecretKey,
        routes: Arc<Routes>,
        mesh: MeshHandle,
        config: PathConfig,
        relay_tier: Option<Tier>,
    ) -> (
        Arc<Self>,
        mpsc::UnboundedReceiver<NodeId>,
        mpsc::UnboundedReceiver<PathChange>,
    ) {
        let (introduce, intro_rx) = mpsc::unbounded_channel();
        let (changes, change_rx) = mpsc::unbounded_channel();
        let me = key.node_id();
        let paths = Arc::new(Paths {
            me,
            key,
            routes,
            mesh,
            config,
            table: Mutex::new(Table {
                peers: HashMap::new(),
                intros_seen: HashSet::new(),
                relay_tier,
                own_mapping: MappingKind::OpenOrUnknown,
                seed: u64::from_le_bytes(me.as_bytes()[..8].try_into().unwrap_or([7; 8])),
            }),
            wake: Notify::new(),
            introduce,
            changes,
        });
        (paths, intro_rx, change_rx)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes sure `node` has a path entry (relayed until punched).
    fn ensure(&self, node: NodeId) {
        let mut t = self.lock();
        if t.peers.contains_key(&node) {
            return;
        }
        t.seed = t.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let tier = t.relay_tier.unwrap_or(Tier::RelayUdp);
        let path = PeerPath::new(now(), self.config.clone(), tier, t.seed);
        let info = PeerPathInfo {
            node,
            path: Path::Relay,
            tier,
            rtt: None,
            punch_successes: 0,
            punch_attempts: 0,
        };
        t.peers.insert(
            node,
            Entry {
                path,
                info,
                traffic_seen: 0,
                traffic_window: now(),
                last_intro_asked: None,
                waiters: Vec::new(),
                opening_doors: false,
            },
        );
        drop(t);
        if self.has_relay() {
            self.routes.set_path(node, Path::Relay);
        }
        self.wake.notify_one();
    }

    fn has_relay(&self) -> bool {
        self.lock().relay_tier.is_some()
    }

    /// The relay link's transport changed (or the link came or went).
    pub fn set_relay_tier(&self, tier: Option<Tier>) {
        let mut t = self.lock();
        t.relay_tier = tier;
        if let Some(tier) = tier {
            for e in t.peers.values_mut() {
                e.path.set_relay_tier(tier);
            }
        }
        drop(t);
        self.wake.notify_one();
    }

    /// A probe datagram arrived from `src` on the daemon's socket.
    pub fn handle_probe(&self, src: SocketAddr, datagram: &[u8]) {
        self.handle_probe_on(src, 0, datagram);
    }

    /// A probe datagram arrived from `src` on local socket `socket` (0: the daemon's
    /// socket, `k`: door `k`).
    pub fn handle_probe_on(&self, src: SocketAddr, socket: u16, datagram: &[u8]) {
        let (node, body) = match probe::decode(&self.key, datagram) {
            Ok(x) => x,
            Err(e) => return debug!(error = %e, "probe dropped"),
        };
        self.ensure(node);
        self.routes.note_source(node, src);
        if let Some(e) = self.lock().peers.get_mut(&node) {
            e.path.handle_probe_on(now(), src, socket, body);
        }
        self.wake.notify_one();
    }

    /// Our STUN round classified our NAT's mapping (it decides our many-port role).
    pub fn set_own_mapping(&self, mapping: MappingKind) {
        self.lock().own_mapping = mapping;
    }

    /// The rendezvous introduced us to a peer (signature already checked by the client);
    /// `peer_mapping` is how the peer's NAT maps, if the rendezvous said.
    pub fn handle_introduction(&self, intro: &Introduction, peer_mapping: Option<NatMapping>) {
        if intro.to != self.me || intro.peer == self.me {
            return;
        }
        if !self.lock().intros_seen.insert(intro.id) {
            return;
        }
        self.ensure(intro.peer);
        let start = now() + Duration::from_millis(intro.start_in_ms);
        let candidates = candidate_kinds(&intro.peer_candidates);
        // Opening hundreds of doors takes a while; meanwhile the path does not know
        // it has them, and a flush must not close them under the opening.
        if let Some(e) = self.lock().peers.get_mut(&intro.peer) {
            e.opening_doors = true;
        }
        let spray = self.spray_for(intro, peer_mapping);
        debug!(peer = %intro.peer.short(), ?candidates, ?spray, "introduction");
        if let Some(e) = self.lock().peers.get_mut(&intro.peer) {
            e.opening_doors = false;
            e.info.punch_attempts += 1;
            let session = punch_session(intro, self.me);
            e.path
                .handle_introduction_with(session, candidates, start, spray);
        }
        self.wake.notify_one();
    }

    /// This side's many-port role for an introduction; as the hard side, the doors are
    /// opened here (before the punch starts), as many as the system gives.
    fn spray_for(&self, intro: &Introduction, peer_mapping: Option<NatMapping>) -> Spray {
        let Some(peer) = peer_mapping else {
            return Spray::Off;
        };
        let own = {
            let t = self.lock();
            if t.peers
                .get(&intro.peer)
                .is_some_and(|e| e.info.tier.is_direct())
            {
                return Spray::Off; // the introduction will be ignored
            }
            t.own_mapping
        };
        let peer_ip = intro
            .peer_candidates
            .iter()
            .find(|a| !is_private(a.ip()))
            .map(|a| a.ip());
        match spray_role(own, peer.into(), peer_ip, &self.config.punch.spray) {
            Spray::Doors { sockets } => match self.mesh.open_doors(intro.peer, sockets) {
                Ok(opened) if opened > 0 => {
                    debug!(peer = %intro.peer.short(), doors = opened, "doors opened");
                    Spray::Doors { sockets: opened }
                }
                Ok(_) => Spray::Off,
                Err(e) => {
                    debug!(error = %e, "no doors: plain punch");
                    Spray::Off
                }
            },
            other => other,
        }
    }

    /// Our addresses changed: every direct path may be gone.
    pub fn network_changed(&self) {
        let t = now();
        for e in self.lock().peers.values_mut() {
            e.path.network_changed(t);
        }
        self.wake.notify_one();
    }

    /// Every peer's path.
    pub fn info(&self) -> Vec<PeerPathInfo> {
        self.lock().peers.values().map(|e| e.info.clone()).collect()
    }

    /// Drives timers and sends probes, until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            let next = self.flush();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Runs due timers, sends probes, applies events; returns the next deadline.
    fn flush(&self) -> Option<Instant> {
        let t = now();
        let with_doors = self.mesh.peers_with_doors();
        let mut table = self.lock();
        let mut next: Option<Instant> = None;
        let mut sends = Vec::new();
        let mut changes = Vec::new();
        let mut intros = Vec::new();
        let mut doors = Vec::new();
        for (node, e) in table.peers.iter_mut() {
            let traffic = self.routes.traffic(node);
            if traffic.saturating_sub(e.traffic_seen) > KEEPALIVE_PACKETS {
                e.traffic_seen = traffic;
                e.traffic_window = t + TRAFFIC_CHECK;
                e.path.note_traffic(t);
            } else if t >= e.traffic_window {
                e.traffic_seen = traffic;
                e.traffic_window = t + TRAFFIC_CHECK;
            }
            if e.path.poll_timeout().is_some_and(|at| at <= t) {
                e.path.handle_timeout(t);
            }
            while let Some(tx) = e.path.poll_transmit() {
                sends.push((*node, tx));
            }
            while let Some(ev) = e.path.poll_event() {
                match ev {
                    PathEvent::Changed { path, tier, rtt } => {
                        e.info.path = path;
                        e.info.tier = tier;
                        e.info.rtt = rtt;
                        if tier.is_direct() {
                            e.info.punch_successes += 1;
                            e.waiters.drain(..).for_each(|w| {
                                let _ = w.send(());
                            });
                        }
                        changes.push(PathChange {
                            node: *node,
                            path,
                            tier,
                            rtt,
                        });
                    }
                    PathEvent::WantIntroduction => {
                        let due = e
                            .last_intro_asked
                            .is_none_or(|last| t.saturating_duration_since(last) >= INTRO_SPACING);
                        if due {
                            e.last_intro_asked = Some(t);
                            intros.push(*node);
                        }
                    }
                }
            }
            if let Some(at) = e.path.poll_timeout() {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            if with_doors.contains(node) && !e.opening_doors {
                doors.push((*node, e.path.doors()));
            }
        }
        for node in &with_doors {
            if !table.peers.contains_key(node) {
                doors.push((*node, Doors::None));
            }
        }
        if !table.peers.is_empty() {
            let check = t + TRAFFIC_CHECK;
            next = Some(next.map_or(check, |n| n.min(check)));
        }
        let relay = table.relay_tier.is_some();
        // Doors first: a path that turned direct through door k must find its QUIC
        // routed through k when the route below changes. Under the table lock, so an
        // introduction cannot start opening doors between the look and the closing.
        for (node, want) in doors {
            self.apply_doors(node, want);
        }
        drop(table);
        for (node, tx) in sends {
            match probe::encode(&self.key, node, &tx.body) {
                Ok(bytes) => {
                    let _ = self.mesh.send_on(node, tx.socket, tx.dst, &bytes);
                }
                Err(e) => debug!(error = %e, "probe not sealed"),
            }
        }
        for c in changes {
            if c.path != Path::Relay || relay {
                self.routes.set_path(c.node, c.path);
            }
            if let Path::Direct(addr) = c.path {
                let n = self.mesh.replay_handshake(c.node, addr);
                if n > 0 {
                    debug!(peer = %c.node.short(), packets = n, "handshake replayed on the direct path");
                }
            }
            info!(peer = %c.node.short(), tier = %c.tier, "peer path");
            let _ = self.changes.send(c);
        }
        for node in intros {
            let _ = self.introduce.send(node);
        }
        next
    }
}

impl Paths {
    /// Brings `node`'s doors to what its path needs now.
    fn apply_doors(&self, node: NodeId, want: Doors) {
        let (open, kept) = self.mesh.doors_of(&node);
        match want {
            Doors::Open(_) => {}
            Doors::Keep(k) if kept == Some(k) && open == 1 => {}
            Doors::Keep(k) => {
                if self.mesh.keep_door(node, k) {
                    debug!(peer = %node.short(), door = k, closed = open - 1, "door kept");
                }
            }
            Doors::None => {
                self.mesh.close_doors(&node);
                debug!(peer = %node.short(), closed = open, "doors closed");
            }
        }
    }
}

impl PathSetup for Paths {
    fn prepare(
        &self,
        node: NodeId,
    ) -> Pin<Box<dyn Future<Output = Result<(), ErrorObject>> + Send>> {
        self.ensure(node);
        let (tx, rx) = oneshot::channel();
        {
            let mut t = self.lock();
            let relay = t.relay_tier.is_some();
            match t.peers.get_mut(&node) {
                Some(e) if relay || e.info.tier.is_direct() => {
                    let _ = tx.send(());
                }
                Some(e) => e.waiters.push(tx),
                None => {}
            }
        }
        Box::pin(async move {
            match tokio::time::timeout(DIRECT_WAIT, rx).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(ErrorObject::new(
                    ErrorCode::AgentUnavailable,
                    format!(
                        "no direct path to node {} within {} s and no relay configured",
                        node.short(),
                        DIRECT_WAIT.as_secs()
                    ),
                )),
            }
        })
    }

    fn incoming(&self, node: NodeId) {
        self.ensure(node);
    }

    fn peer_left(&self, node: NodeId) {
        let relay = {
            let mut t = self.lock();
            t.peers.remove(&node);
            t.relay_tier.is_some()
        };
        if relay {
            self.routes.set_path(node, Path::Relay);
        }
        self.mesh.close_doors(&node);
        debug!(peer = %node.short(), "peer daemon left: its path starts over");
    }
}

/// The punch session both sides of an introduction agree on without talking: each
/// side's introduction has its own id, but the start moment and the pair are shared.
/// Never 0 (the keepalive session).
fn punch_session(intro: &Introduction, me: NodeId) -> u64 {
    let (lo, hi) = if me < intro.peer {
        (me, intro.peer)
    } else {
        (intro.peer, me)
    };
    let fold = |n: NodeId| {
        n.as_bytes().chunks(8).fold(0u64, |acc, c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            acc.rotate_left(17) ^ u64::from_le_bytes(b)
        })
    };
    let s = intro.start_at_unix_ms.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ fold(lo)
        ^ fold(hi).rotate_left(32);
    s.max(1)
}

/// Guesses what each of a peer's candidate addresses is: private and loopback
/// addresses are its interfaces; public ones are reflexive, except a run of ports just
/// above the first public address on the same IP, which are port predictions for a
/// sequential symmetric NAT. (The rendezvous carries bare addresses.)
pub fn candidate_kinds(addrs: &[SocketAddr]) -> Vec<(SocketAddr, CandidateKind)> {
    let mut out: Vec<(SocketAddr, CandidateKind)> = Vec::new();
    let first_public = addrs.iter().find(|a| !is_private(a.ip())).copied();
    for a in addrs {
        if out.iter().any(|(b, _)| b == a) {
            continue;
        }
        let kind = if is_private(a.ip()) {
            CandidateKind::Local
        } else {
            match first_public {
                Some(f) if f.ip() == a.ip() && a.port() > f.port() && a.port() - f.port() <= 64 => {
                    CandidateKind::Predicted
                }
                _ => CandidateKind::Reflexive,
            }
        };
        out.push((*a, kind));
    }
    let predicted = out
        .iter()
        .filter(|(_, k)| *k == CandidateKind::Predicted)
        .count();
    if predicted < 4 {
        // Too few to be a prediction run: a second reflexive or mapped address.
        for (_, k) in out.iter_mut() {
            if *k == CandidateKind::Predicted {
                *k = CandidateKind::Reflexive;
            }
        }
    } else if let Some(last) = out
        .iter()
        .filter(|(_, k)| *k == CandidateKind::Predicted)
        .map(|(a, _)| *a)
        .max_by_key(|a| a.port())
    {
        // The peer's NAT kept allocating ports since it measured them (its relay
        // link, other peers' punches): look further ahead.
        out.extend(predicted_ports(last, EXTRA_PREDICTED));
    }
    out
}

/// Ports probed beyond a sequential NAT's own predictions.
const EXTRA_PREDICTED: u16 = 48;

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00 || v6.is_unicast_link_local()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::mesh_socket::{MeshSocket, RelayLink, UdpDoors};
    use agentmesh_proto::rendezvous::NatMapping;

    #[derive(Debug)]
    struct NoRelay;

    impl RelayLink for NoRelay {
        fn send(&self, _: NodeId, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn intro(id: u64, to: NodeId, peer: NodeId, candidate: SocketAddr) -> Introduction {
        Introduction {
            id,
            to,
            peer,
            initiator: true,
            peer_candidates: vec![candidate],
            peer_home_relay: None,
            start_at_unix_ms: 1_000 + id,
            start_in_ms: 100,
            expires_unix_ms: u64::MAX,
        }
    }

    /// A mesh socket on a loopback UDP socket, without a relay: its routes, its handle,
    /// and the socket itself (keep it: it holds the receiving end of the doors' QUIC).
    fn loopback_mesh() -> (Arc<Routes>, MeshHandle, MeshSocket) {
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std_sock.set_nonblocking(true).unwrap();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, std_sock).unwrap();
        let routes = Arc::new(Routes::default());
        let (socket, mesh, _diverted) = MeshSocket::new(inner, routes.clone(), Arc::new(NoRelay));
        (routes, mesh, socket)
    }

    /// The hard side of many-port probing opens its doors for the attempt and closes
    /// every one when the attempt gives up; without the peer's mapping (an older
    /// rendezvous) there are none.
    #[tokio::test]
    async fn doors_live_as_long_as_the_hard_side_attempt() {
        let (routes, mesh, _socket) = loopback_mesh();
        mesh.set_door_binder(Arc::new(UdpDoors::new(
            "127.0.0.1".parse().unwrap(),
            Arc::new(quinn::TokioRuntime),
        )));
        let key = SecretKey::from_bytes(&[1; 32]);
        let me = key.node_id();
        let peer = SecretKey::from_bytes(&[2; 32]).node_id();
        let old = SecretKey::from_bytes(&[3; 32]).node_id();
        let mut config = PathConfig::default();
        config.punch.spray.sockets = 8;
        config.punch.give_up_after = Duration::from_millis(600);
        let (paths, _intros, _changes) =
            Paths::new(key, routes, mesh.clone(), config, Some(Tier::RelayUdp));
        paths.set_own_mapping(MappingKind::Random);
        // A peer that never answers (loopback: nothing leaves the host).
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = silent.local_addr().unwrap();
        paths.handle_introduction(&intro(1, me, old, silent), None);
        assert_eq!(mesh.doors_of(&old), (0, None), "no mapping, no doors");
        paths.handle_introduction(&intro(2, me, peer, silent), Some(NatMapping::Random));
        assert_eq!(
            mesh.doors_of(&peer),
            (0, None),
            "two random sides: no spray"
        );
        paths.handle_introduction(
            &intro(3, me, peer, silent),
            Some(NatMapping::EndpointIndependent),
        );
        assert_eq!(mesh.doors_of(&peer), (8, None));
        let run = tokio::spawn(paths.clone().run());
        // The punch gives up 0.6 s after its start (0.1 s from now); the doors go with it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(mesh.doors_open(), 8, "open while the attempt runs");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while mesh.doors_open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(mesh.doors_open(), 0, "all closed once it gave up");
        assert!(!paths.info().iter().any(|p| p.tier.is_direct()));
        run.abort();
    }

    /// Binds real doors, but runs the path finder's flush (the driver's loop, racing in
    /// the daemon) in the middle of the opening.
    #[derive(Debug)]
    struct FlushWhileOpening {
        inner: UdpDoors,
        paths: std::sync::OnceLock<std::sync::Weak<Paths>>,
        bound: std::sync::atomic::AtomicUsize,
    }

    impl crate::net::mesh_socket::DoorBinder for FlushWhileOpening {
        fn bind(&self) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
            let n = self
                .bound
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n == 3 {
                if let Some(paths) = self.paths.get().and_then(|w| w.upgrade()) {
                    paths.flush();
                }
            }
            self.inner.bind()
        }
    }

    /// The daemon's run loop may flush while an introduction opens the hard side's
    /// doors (hundreds of binds): the doors already open must not be closed under the
    /// opening (the path does not have them yet), or the punch sprays from doors that
    /// are gone.
    #[tokio::test]
    async fn a_flush_during_the_opening_keeps_the_doors() {
        let (routes, mesh, _socket) = loopback_mesh();
        let binder = Arc::new(FlushWhileOpening {
            inner: UdpDoors::new("127.0.0.1".parse().unwrap(), Arc::new(quinn::TokioRuntime)),
            paths: std::sync::OnceLock::new(),
            bound: std::sync::atomic::AtomicUsize::new(0),
        });
        mesh.set_door_binder(binder.clone());
        let key = SecretKey::from_bytes(&[1; 32]);
        let me = key.node_id();
        let peer = SecretKey::from_bytes(&[2; 32]).node_id();
        let mut config = PathConfig::default();
        config.punch.spray.sockets = 8;
        let (paths, _intros, _changes) =
            Paths::new(key, routes, mesh.clone(), config, Some(Tier::RelayUdp));
        binder.paths.set(Arc::downgrade(&paths)).unwrap();
        paths.set_own_mapping(MappingKind::Random);
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = silent.local_addr().unwrap();
        paths.handle_introduction(
            &intro(1, me, peer, silent),
            Some(NatMapping::EndpointIndependent),
        );
        assert!(binder.bound.load(std::sync::atomic::Ordering::Relaxed) >= 8);
        assert_eq!(mesh.doors_of(&peer), (8, None), "every door opened is open");
        paths.flush();
        assert_eq!(
            mesh.doors_of(&peer),
            (8, None),
            "and stays open for the punch"
        );
    }

    #[test]
    fn candidate_kinds_are_inferred() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let mut list = vec![
            a("203.0.113.5:4000"),
            a("10.0.0.2:5000"),
            a("203.0.113.5:4000"),
        ];
        let kinds = candidate_kinds(&list);
        assert_eq!(
            kinds,
            vec![
                (a("203.0.113.5:4000"), CandidateKind::Reflexive),
                (a("10.0.0.2:5000"), CandidateKind::Local)
            ]
        );
        list.extend((1..=8).map(|i| a(&format!("203.0.113.5:{}", 4000 + i))));
        let kinds = candidate_kinds(&list);
        assert_eq!(kinds.len(), 10 + usize::from(EXTRA_PREDICTED));
        assert!(kinds[2..]
            .iter()
            .all(|(_, k)| *k == CandidateKind::Predicted));
        let two = candidate_kinds(&[a("203.0.113.5:4000"), a("203.0.113.5:4001")]);
        assert!(two.iter().all(|(_, k)| *k == CandidateKind::Reflexive));
    }
}
