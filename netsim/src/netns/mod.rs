//! The netns lab: real Linux NAT in network namespaces (nftables, coturn, miniupnpd).
//!
//! A [`Lab`] is a set of network namespaces named `amlab-<pid>-<n>-<node>`:
//!
//! ```text
//!  host ns ──veth── router ns (nftables NAT, preset) ──veth──┐
//!  host ns ──veth── router ns ───────────────────────────────┤ bridge in the
//!  host ns (preset open: public address) ────────────────────┤ "internet" ns:
//!                                                            │ 203.0.113.1, 198.51.100.1
//!                                                            └ coturn, test sockets
//! ```
//!
//! Nothing is ever connected to the host's own interfaces: veths are created straight
//! into their namespaces. Dropping the [`Lab`] kills its processes and deletes its
//! namespaces (also on panic, as unwinding runs `Drop`); building a lab first sweeps
//! leftovers of dead test processes by the `amlab-` prefix.
//!
//! Use [`gate::lab_available`] first: without root it skips with one loud line, and
//! with `AGENTMESH_REQUIRE_NETNS=1` a skip panics. [`classify`] is the pure RFC 4787
//! classification used by [`probe`] (and usable by netsim's own tests).

pub mod builder;
pub mod classify;
mod cmd;
pub mod coturn;
pub mod error;
pub mod gate;
pub mod lab;
pub mod miniupnpd;
pub mod natpmp;
pub mod netem;
pub mod nft;
pub mod probe;
pub mod stun;
pub mod sweep;
pub mod topology;
mod wire;

pub use builder::LabBuilder;
pub use classify::{classify, ClassifyError, FilteringObs, MappingObs, PortPattern};
pub use error::LabError;
pub use gate::{lab_available, Tool};
pub use lab::{Lab, Spawned};
pub use netem::Netem;
pub use topology::{NodeKind, INTERNET, SERVER_A, SERVER_B};
