//! The discrete-event simulator: a virtual clock, an event queue ordered by
//! (time, sequence), a seeded RNG, the topology (hosts, networks, NATs) and the outputs
//! (delivered datagrams, timers) a sans-IO driver polls.
//!
//! Use it like a sans-IO protocol: `send` / `set_timer` in, `step` / `run_until` to move
//! time, `poll_output` to collect what happened. The same seed and the same calls give the
//! same run, packet for packet.

mod build;
mod forward;
mod router;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::Bytes;
use indexmap::IndexMap;

use crate::link::Link;
use crate::nat::Nat;
use crate::pcap::Captured;
use crate::rng::SimRng;
use crate::time::SimTime;
use crate::trace::TraceEntry;

pub use build::{LinkRef, Site, TopologyError};
pub use forward::SendError;

macro_rules! id_type {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u32);

        impl $name {
            /// The index of this item in creation order.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    HostId,
    "h",
    "A host (an endpoint that sends and receives datagrams)."
);
id_type!(
    NatId,
    "nat",
    "A NAT device between an inside network and an outside one."
);
id_type!(
    NetworkId,
    "net",
    "A routed network: one address space (the internet or a NAT's inside)."
);
id_type!(
    RouterId,
    "r",
    "A plain router (no translation) between a subnet and its outside network."
);

/// A datagram that reached a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The receiving host.
    pub host: HostId,
    /// The host's address and port it arrived at.
    pub local: SocketAddr,
    /// The source as the host sees it (after any NAT).
    pub from: SocketAddr,
    /// The UDP payload.
    pub data: Bytes,
    /// Arrival time.
    pub at: SimTime,
}

/// Something a driver must handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A datagram arrived at a host.
    Datagram(Datagram),
    /// A timer set with [`Sim::set_timer`] fired.
    Timer {
        /// The host that set it.
        host: HostId,
        /// The caller's token.
        token: u64,
        /// When it fired.
        at: SimTime,
    },
}

/// A packet in flight; `src`/`dst` are its current headers.
#[derive(Debug, Clone)]
pub(crate) struct Packet {
    pub(crate) id: u64,
    pub(crate) src: SocketAddrV4,
    pub(crate) dst: SocketAddrV4,
    pub(crate) data: Bytes,
}

#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// The packet reaches a network's router; `from_gateway` if its upstream NAT or router
    /// put it there (then it must not be sent back up).
    OnNetwork {
        net: NetworkId,
        pkt: Packet,
        from_gateway: bool,
    },
    /// The packet reaches a host interface.
    AtHost { host: HostId, pkt: Packet },
    /// The packet reaches a NAT's outside interface.
    AtNatOutside { nat: NatId, pkt: Packet },
    /// A host's timer.
    Timer {
        host: HostId,
        token: u64,
        epoch: u32,
    },
}

#[derive(Debug)]
struct Scheduled {
    at: SimTime,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap and we want the earliest (time, seq) first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Where an address in a network leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attach {
    Host(HostId, usize),
    NatOutside(NatId),
}

/// What connects a network to the one outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    Nat(NatId),
    Router(RouterId),
}

/// A subnet reachable through a router attached to this network.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub(crate) prefix: Ipv4Addr,
    pub(crate) len: u8,
    pub(crate) router: RouterId,
}

#[derive(Debug)]
pub(crate) struct Network {
    pub(crate) name: String,
    /// The NAT or router whose inside this is (`None` for the internet).
    pub(crate) upstream: Option<Upstream>,
    pub(crate) addrs: IndexMap<Ipv4Addr, Attach>,
    /// Subnets behind plain routers attached here.
    pub(crate) routes: Vec<Route>,
}

#[derive(Debug)]
pub(crate) struct Iface {
    pub(crate) net: NetworkId,
    pub(crate) ip: Ipv4Addr,
    pub(crate) link: Link,
}

#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) ifaces: Vec<Iface>,
    pub(crate) up: bool,
    /// Bumped on crash so timers set before it never fire.
    pub(crate) epoch: u32,
}

#[derive(Debug)]
pub(crate) struct RouterNode {
    pub(crate) name: String,
    pub(crate) outside: NetworkId,
    pub(crate) inside: NetworkId,
    pub(crate) link: Link,
}

#[derive(Debug)]
pub(crate) struct NatNode {
    pub(crate) name: String,
    pub(crate) nat: Nat,
    pub(crate) outside: NetworkId,
    pub(crate) inside: NetworkId,
    pub(crate) uplink: Link,
    pub(crate) up: bool,
}

/// The simulator. See the module docs for the call order.
#[derive(Debug)]
pub struct Sim {
    now: SimTime,
    seq: u64,
    next_packet: u64,
    rng: SimRng,
    queue: BinaryHeap<Scheduled>,
    outputs: VecDeque<Output>,
    pub(crate) networks: Vec<Network>,
    pub(crate) hosts: Vec<Host>,
    pub(crate) nats: Vec<NatNode>,
    pub(crate) routers: Vec<RouterNode>,
    tracing: bool,
    trace: Vec<TraceEntry>,
    capture: Option<Vec<Captured>>,
    events_processed: u64,
}

impl Sim {
    /// A simulator with only the (empty) internet, whose every random choice follows `seed`.
    pub fn new(seed: u64) -> Sim {
        let internet = Network {
            name: "internet".to_owned(),
            upstream: None,
            addrs: IndexMap::new(),
            routes: Vec::new(),
        };
        Sim {
            now: SimTime::ZERO,
            seq: 0,
            next_packet: 0,
            rng: SimRng::new(seed),
            queue: BinaryHeap::new(),
            outputs: VecDeque::new(),
            networks: vec![internet],
            hosts: Vec::new(),
            nats: Vec::new(),
            routers: Vec::new(),
            tracing: true,
            trace: Vec::new(),
            capture: None,
            events_processed: 0,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> SimTime {
        self.now
    }

    /// The public internet (the root network).
    pub fn internet(&self) -> NetworkId {
        NetworkId(0)
    }

    /// Turns the per-packet trace on (the default) or off (for large runs).
    pub fn set_tracing(&mut self, on: bool) {
        self.tracing = on;
    }

    /// The per-packet trace so far.
    pub fn trace(&self) -> &[TraceEntry] {
        &self.trace
    }

    /// Starts keeping a copy of every packet seen on any network, for pcap export.
    pub fn enable_capture(&mut self) {
        self.capture.get_or_insert_with(Vec::new);
    }

    /// Packets captured since [`Sim::enable_capture`].
    pub fn captured(&self) -> &[Captured] {
        self.capture.as_deref().unwrap_or(&[])
    }

    /// Number of events processed so far.
    pub fn events_processed(&self) -> u64 {
        self.events_processed
    }

    /// Sets a timer: [`Output::Timer`] with `token` for `host` at `at` (or now, if earlier).
    pub fn set_timer(&mut self, host: HostId, at: SimTime, token: u64) {
        let epoch = self.hosts.get(host.index()).map_or(0, |h| h.epoch);
        self.schedule(at.max(self.now), Event::Timer { host, token, epoch });
    }

    /// The time of the next pending event, if any.
    pub fn next_event_time(&self) -> Option<SimTime> {
        self.queue.peek().map(|s| s.at)
    }

    /// Processes the next event, advancing the clock to it. False if none is pending.
    pub fn step(&mut self) -> bool {
        let Some(s) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(s.at);
        self.events_processed += 1;
        self.handle(s.event);
        true
    }

    /// Processes every event up to and including `t`, then sets the clock to `t`.
    pub fn run_until(&mut self, t: SimTime) {
        while self.next_event_time().is_some_and(|at| at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: std::time::Duration) {
        self.run_until(self.now + d);
    }

    /// Takes the oldest pending output.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Steps until an output is available or no event at or before `deadline` remains.
    pub fn next_output(&mut self, deadline: SimTime) -> Option<Output> {
        loop {
            if let Some(o) = self.outputs.pop_front() {
                return Some(o);
            }
            if self.next_event_time().is_none_or(|at| at > deadline) {
                return None;
            }
            self.step();
        }
    }

    pub(crate) fn schedule(&mut self, at: SimTime, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    pub(crate) fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    pub(crate) fn new_packet_id(&mut self) -> u64 {
        self.next_packet += 1;
        self.next_packet
    }

    pub(crate) fn push_output(&mut self, o: Output) {
        self.outputs.push_back(o);
    }

    pub(crate) fn record(&mut self, kind: crate::trace::TraceKind, pkt: &Packet) {
        if self.tracing {
            self.trace.push(TraceEntry {
                at: self.now,
                packet: pkt.id,
                kind,
                src: pkt.src,
                dst: pkt.dst,
                len: pkt.data.len(),
            });
        }
    }

    pub(crate) fn capture(&mut self, net: NetworkId, pkt: &Packet) {
        if let Some(c) = self.capture.as_mut() {
            c.push(Captured {
                at: self.now,
                network: net,
                packet: pkt.id,
                src: pkt.src,
                dst: pkt.dst,
                data: pkt.data.clone(),
            });
        }
    }
}
