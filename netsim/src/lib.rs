//! agentmesh netsim: a deterministic NAT simulator (sans-IO) and the netns lab for real
//! kernel NAT.

pub mod behavior;
pub mod netns;

pub use behavior::{Filtering, Mapping, Preset};
