//! The extra UDP sockets ("doors") of many-port probing, next to the daemon's socket.
//!
//! On the hard side of a punch (a random-port symmetric NAT) the path finder opens a set
//! of doors for one peer: each door is a fresh local socket, so its pings open a fresh
//! NAT mapping towards the peer. What a door receives goes where the daemon's socket
//! sends it: probes (and other non-QUIC datagrams) are diverted to the daemon tagged
//! with the door's index, QUIC packets from a peer's direct address go to quinn as if
//! they came from the peer's virtual address. When a door wins, the other doors close
//! and the peer's QUIC is sent through the winner ([`Doors::route`]) for as long as the
//! path lasts; when the attempt ends without a win, every door closes. Doors are bounded
//! per peer (the punch asks for at most `SprayConfig::sockets`) and in total
//! ([`MAX_DOORS`]).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use agentmesh_proto::NodeId;
use quinn::udp::RecvMeta;
use quinn::AsyncUdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Diverted, SocketStats};
use crate::net::demux::{classify, Kind};
use crate::net::routes::Routes;

/// Most doors open at once, over all peers.
pub const MAX_DOORS: usize = 1024;

/// Opens door sockets next to the daemon's socket.
pub trait DoorBinder: Send + Sync + fmt::Debug + 'static {
    /// Binds one new socket (an ephemeral port on the daemon's address).
    fn bind(&self) -> io::Result<Arc<dyn AsyncUdpSocket>>;
}

/// Doors as real UDP sockets on `ip`, driven by a quinn runtime.
pub struct UdpDoors {
    ip: IpAddr,
    runtime: Arc<dyn quinn::Runtime>,
}

impl UdpDoors {
    /// Doors bound to `ip` (the daemon socket's local address), driven by `runtime`.
    pub fn new(ip: IpAddr, runtime: Arc<dyn quinn::Runtime>) -> Self {
        UdpDoors { ip, runtime }
    }
}

impl fmt::Debug for UdpDoors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpDoors").field("ip", &self.ip).finish()
    }
}

impl DoorBinder for UdpDoors {
    fn bind(&self) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let sock = std::net::UdpSocket::bind(SocketAddr::new(self.ip, 0))?;
        sock.set_nonblocking(true)?;
        self.runtime.wrap_udp_socket(sock)
    }
}

/// One open door: its socket and the task reading it.
struct Door {
    socket: Arc<dyn AsyncUdpSocket>,
    reader: JoinHandle<()>,
}

impl Drop for Door {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The doors of one peer: index (1-based, as the punch numbers them) → door; `kept` is
/// the door its path runs through once one won.
#[derive(Default)]
struct PeerDoors {
    open: HashMap<u16, Door>,
    kept: Option<u16>,
}

/// Where a door's datagrams go.
#[derive(Clone)]
pub(super) struct Sinks {
    pub(super) routes: Arc<Routes>,
    pub(super) diverted: mpsc::Sender<Diverted>,
    pub(super) quic: mpsc::Sender<(NodeId, Vec<u8>)>,
    pub(super) stats: Arc<SocketStats>,
}

/// Every peer's doors, shared by the socket (routing) and the daemon's handle.
pub(super) struct Doors {
    binder: Mutex<Option<Arc<dyn DoorBinder>>>,
    peers: Mutex<HashMap<NodeId, PeerDoors>>,
    sinks: Sinks,
}

impl fmt::Debug for Doors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Doors")
            .field("open", &self.total())
            .finish_non_exhaustive()
    }
}

impl Doors {
    pub(super) fn new(sinks: Sinks) -> Self {
        Doors {
            binder: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            sinks,
        }
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<NodeId, PeerDoors>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn binder(&self) -> Option<Arc<dyn DoorBinder>> {
        self.binder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_binder(&self, binder: Arc<dyn DoorBinder>) {
        *self.binder.lock().unwrap_or_else(|e| e.into_inner()) = Some(binder);
    }

    pub(super) fn available(&self) -> bool {
        self.binder().is_some()
    }

    pub(super) fn total(&self) -> usize {
        self.peers().values().map(|p| p.open.len()).sum()
    }

    /// Opens doors `1..=count` for `node` (those not open yet), within [`MAX_DOORS`];
    /// returns how many of them are open (they are numbered from 1 without gaps).
    pub(super) fn open(&self, node: NodeId, count: u16) -> io::Result<u16> {
        let Some(binder) = self.binder() else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let mut opened = 0u16;
        for k in 1..=count {
            if self
                .peers()
                .get(&node)
                .is_some_and(|p| p.open.contains_key(&k))
            {
                opened = k;
                continue;
            }
            if self.total() >= MAX_DOORS {
                break;
            }
            let socket = match binder.bind() {
                Ok(s) => s,
                Err(e) if opened == 0 => return Err(e),
                Err(_) => break,
            };
            let reader = tokio::spawn(read_door(self.sinks.clone(), socket.clone(), k));
            self.peers()
                .entry(node)
                .or_default()
                .open
                .insert(k, Door { socket, reader });
            opened = k;
        }
        Ok(opened)
    }

    /// Door `k` of `node` won: keeps it (the peer's QUIC goes through it), closes the
    /// others. Returns false (and closes them all) if door `k` is not open.
    pub(super) fn keep(&self, node: NodeId, k: u16) -> bool {
        let mut peers = self.peers();
        let Some(p) = peers.get_mut(&node) else {
            return false;
        };
        p.open.retain(|i, _| *i == k);
        if p.open.is_empty() {
            peers.remove(&node);
            return false;
        }
        p.kept = Some(k);
        true
    }

    /// Closes every door of `node`.
    pub(super) fn close(&self, node: &NodeId) {
        self.peers().remove(node);
    }

    /// Peers with doors open.
    pub(super) fn peers_with_doors(&self) -> Vec<NodeId> {
        self.peers().keys().copied().collect()
    }

    /// How many doors `node` has open, and the kept one.
    pub(super) fn state(&self, node: &NodeId) -> (usize, Option<u16>) {
        self.peers()
            .get(node)
            .map_or((0, None), |p| (p.open.len(), p.kept))
    }

    /// The socket of door `k` of `node`, if open.
    pub(super) fn socket(&self, node: &NodeId, k: u16) -> Option<Arc<dyn AsyncUdpSocket>> {
        self.peers()
            .get(node)?
            .open
            .get(&k)
            .map(|d| d.socket.clone())
    }

    /// The door `node`'s QUIC packets go through, if its path runs from one.
    pub(super) fn route(&self, node: &NodeId) -> Option<Arc<dyn AsyncUdpSocket>> {
        let peers = self.peers();
        let p = peers.get(node)?;
        p.open.get(&p.kept?).map(|d| d.socket.clone())
    }
}

/// Reads door `index` until the socket fails or the door closes (the task is aborted).
async fn read_door(sinks: Sinks, socket: Arc<dyn AsyncUdpSocket>, index: u16) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let got = std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            let mut meta = [RecvMeta::default()];
            socket
                .poll_recv(cx, &mut bufs, &mut meta)
                .map_ok(|_| (meta[0].addr, meta[0].len, meta[0].stride))
        })
        .await;
        let Ok((src, len, stride)) = got else {
            return;
        };
        let len = len.min(buf.len());
        for segment in buf[..len].chunks(stride.max(1)) {
            deliver(&sinks, src, index, segment);
        }
    }
}

/// One datagram from door `index`: QUIC of a known peer to quinn, the rest diverted.
fn deliver(sinks: &Sinks, src: SocketAddr, index: u16, data: &[u8]) {
    let kind = classify(data);
    let counter = if kind == Kind::Quic {
        let sent = match sinks.routes.peer_of_direct(&src) {
            Some((node, _)) => sinks.quic.try_send((node, data.to_vec())).is_ok(),
            None => false,
        };
        sent.then_some(&sinks.stats.door_received)
    } else {
        let d = Diverted {
            src,
            socket: index,
            kind,
            data: data.to_vec(),
        };
        sinks
            .diverted
            .try_send(d)
            .is_ok()
            .then_some(&sinks.stats.diverted)
    };
    counter
        .unwrap_or(&sinks.stats.dropped)
        .fetch_add(1, Ordering::Relaxed);
}
