//! The per-packet trace: what happened to every packet, when and where, and a stable
//! digest of it (two runs with the same seed must give the same digest).

use std::fmt;
use std::net::SocketAddrV4;

use crate::nat::NatDrop;
use crate::sim::{HostId, NatId, NetworkId};
use crate::time::SimTime;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A link on the path was cut.
    LinkDown,
    /// The link's loss model lost it.
    Loss,
    /// Larger than a link's MTU.
    TooBig,
    /// No network on the path knows the destination address.
    NoRoute,
    /// The sending or receiving host (or NAT) is crashed.
    NodeDown,
    /// A NAT refused it.
    Nat(NatDrop),
}

/// One step in a packet's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceKind {
    /// A host sent it.
    Sent(HostId),
    /// It appeared on a network (a capture point, as Wireshark would see it there).
    OnNetwork(NetworkId),
    /// A NAT rewrote its source (outbound).
    TranslatedOut(NatId),
    /// A NAT rewrote its destination (inbound or hairpin).
    TranslatedIn(NatId),
    /// A link duplicated it.
    Duplicated,
    /// It reached a host.
    Delivered(HostId),
    /// It was dropped.
    Dropped(DropReason),
}

/// One line of the trace. `src`/`dst` are the headers *after* the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceEntry {
    /// When it happened.
    pub at: SimTime,
    /// The packet's id (copies made by duplication keep the id).
    pub packet: u64,
    /// What happened.
    pub kind: TraceKind,
    /// Source endpoint in the header.
    pub src: SocketAddrV4,
    /// Destination endpoint in the header.
    pub dst: SocketAddrV4,
    /// UDP payload length.
    pub len: usize,
}

impl fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} #{} {:?} {} -> {} len {}",
            self.at, self.packet, self.kind, self.src, self.dst, self.len
        )
    }
}

/// A stable 64-bit FNV-1a digest of a trace (independent of Rust's randomized hashers).
pub fn digest(trace: &[TraceEntry]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for e in trace {
        for b in e.to_string().bytes().chain(std::iter::once(b'\n')) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}
