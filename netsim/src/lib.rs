//! agentmesh netsim: a deterministic NAT simulator (sans-IO) and the netns lab for real
//! kernel NAT.
//!
//! The simulator ([`Sim`]) is a discrete-event core with a virtual clock and a seeded RNG:
//! hosts live in networks (the internet, or the inside of a NAT, nested as deep as wanted,
//! address spaces free to overlap), NATs are pure RFC 4787 state machines ([`nat::Nat`]),
//! links model latency, jitter, loss, reordering, duplication and MTU. Drive it like a
//! sans-IO protocol: [`Sim::send`] and [`Sim::set_timer`] in, [`Sim::step`] /
//! [`Sim::run_until`] to move time, [`Sim::poll_output`] for delivered datagrams and timers.
//! With the `quinn` feature, `adapter` runs real async code (quinn) on it in virtual time.

#[cfg(feature = "quinn")]
pub mod adapter;
pub mod behavior;
pub mod classify;
pub mod link;
pub mod nat;
pub mod netns;
pub mod pcap;
pub mod probe;
pub mod rng;
pub mod sim;
pub mod time;
pub mod trace;

pub use behavior::{Filtering, Mapping, Preset};
pub use link::{LinkConfig, Loss};
pub use nat::{NatConfig, PortAlloc, Refresh};
pub use sim::{
    Datagram, HostId, LinkRef, NatId, NetworkId, Output, RouterId, SendError, Sim, Site,
    TopologyError,
};
pub use time::SimTime;
