//! Which path each peer's QUIC packets take. quinn sees every peer at a stable *virtual*
//! address (`[fd61:6d65:7368::N]:1`, an IPv6 unique-local address that never reaches a
//! wire); this table maps it to the peer's current path: a direct UDP address or the
//! relay. Changing a path here moves the peer's QUIC connection without quinn noticing:
//! no reconnect, no lost stream.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use agentmesh_proto::NodeId;

/// How packets for one peer travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Straight to this UDP address.
    Direct(SocketAddr),
    /// Through the relay (whichever relay link the socket was given).
    Relay,
}

#[derive(Debug, Default)]
struct Table {
    virtual_of: HashMap<NodeId, SocketAddr>,
    node_of_virtual: HashMap<SocketAddr, NodeId>,
    path_of: HashMap<NodeId, Path>,
    node_of_direct: HashMap<SocketAddr, NodeId>,
    /// QUIC packets sent to or received from each peer (the path finder reads them to
    /// tell an active direct path from an idle one).
    traffic: HashMap<NodeId, AtomicU64>,
    next: u32,
}

impl Path {
    /// How status and `path` events name it: `"direct"` with the address, or `"relay"`.
    pub fn describe(&self) -> (&'static str, Option<String>) {
        match self {
            Path::Direct(a) => ("direct", Some(a.to_string())),
            Path::Relay => ("relay", None),
        }
    }
}

/// The peer → path table shared by the socket and the path finder.
#[derive(Debug, Default)]
pub struct Routes {
    table: RwLock<Table>,
}

/// The `/48` prefix of virtual peer addresses.
const VIRTUAL_PREFIX: [u16; 3] = [0xfd61, 0x6d65, 0x7368];

/// Whether `addr` is a virtual peer address.
pub fn is_virtual(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(a) => a.ip().segments()[..3] == VIRTUAL_PREFIX,
        SocketAddr::V4(_) => false,
    }
}

impl Routes {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The stable virtual address of `node` (allocated on first use).
    pub fn virtual_addr(&self, node: NodeId) -> SocketAddr {
        if let Some(a) = self.read().virtual_of.get(&node) {
            return *a;
        }
        let mut t = self.write();
        if let Some(a) = t.virtual_of.get(&node) {
            return *a;
        }
        t.next += 1;
        let n = t.next;
        let ip = Ipv6Addr::new(
            VIRTUAL_PREFIX[0],
            VIRTUAL_PREFIX[1],
            VIRTUAL_PREFIX[2],
            0,
            0,
            0,
            (n >> 16) as u16,
            n as u16,
        );
        let addr = SocketAddr::V6(SocketAddrV6::new(ip, 1, 0, 0));
        t.virtual_of.insert(node, addr);
        t.node_of_virtual.insert(addr, node);
        t.traffic.insert(node, AtomicU64::new(0));
        addr
    }

    /// Counts one QUIC packet to or from `node` (the socket calls it per packet).
    pub fn count_traffic(&self, node: &NodeId) {
        if let Some(c) = self.read().traffic.get(node) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// QUIC packets to and from `node` so far.
    pub fn traffic(&self, node: &NodeId) -> u64 {
        self.read()
            .traffic
            .get(node)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Sets the path of `node` (allocating its virtual address if needed).
    pub fn set_path(&self, node: NodeId, path: Path) {
        self.virtual_addr(node);
        let mut t = self.write();
        if let Some(Path::Direct(old)) = t.path_of.insert(node, path) {
            t.node_of_direct.remove(&old);
        }
        if let Path::Direct(addr) = path {
            t.node_of_direct.insert(addr, node);
        }
    }

    /// Packets from `addr` come from `node` (an authenticated probe arrived from there):
    /// map them to its virtual address even before its path turns direct here, so a
    /// peer that switched first never makes quinn migrate to a bare address.
    pub fn note_source(&self, node: NodeId, addr: SocketAddr) {
        self.virtual_addr(node);
        self.write().node_of_direct.entry(addr).or_insert(node);
    }

    /// The current path of `node`.
    pub fn path(&self, node: &NodeId) -> Option<Path> {
        self.read().path_of.get(node).copied()
    }

    /// The peer behind a virtual address, and its path.
    pub fn resolve_virtual(&self, addr: &SocketAddr) -> Option<(NodeId, Option<Path>)> {
        let t = self.read();
        let node = *t.node_of_virtual.get(addr)?;
        Some((node, t.path_of.get(&node).copied()))
    }

    /// The peer whose direct path is `addr`, as its virtual address.
    pub fn virtual_of_direct(&self, addr: &SocketAddr) -> Option<SocketAddr> {
        self.peer_of_direct(addr).map(|(_, v)| v)
    }

    /// The peer whose direct path is `addr`, and its virtual address.
    pub fn peer_of_direct(&self, addr: &SocketAddr) -> Option<(NodeId, SocketAddr)> {
        let t = self.read();
        let node = t.node_of_direct.get(addr)?;
        Some((*node, *t.virtual_of.get(node)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::SecretKey;

    #[test]
    fn virtual_addresses_are_stable_and_paths_move() {
        let r = Routes::default();
        let n = SecretKey::from_bytes(&[1; 32]).node_id();
        let v = r.virtual_addr(n);
        assert!(is_virtual(&v));
        assert_eq!(r.virtual_addr(n), v);
        let a: SocketAddr = "203.0.113.1:5000".parse().unwrap();
        let b: SocketAddr = "203.0.113.1:5001".parse().unwrap();
        r.set_path(n, Path::Direct(a));
        assert_eq!(r.virtual_of_direct(&a), Some(v));
        r.set_path(n, Path::Direct(b));
        assert_eq!(r.virtual_of_direct(&a), None);
        assert_eq!(r.resolve_virtual(&v), Some((n, Some(Path::Direct(b)))));
        r.set_path(n, Path::Relay);
        assert_eq!(r.virtual_of_direct(&b), None);
        assert_eq!(r.traffic(&n), 0);
        r.count_traffic(&n);
        r.count_traffic(&n);
        assert_eq!(r.traffic(&n), 2);
        assert!(!is_virtual(&a));
    }
}
