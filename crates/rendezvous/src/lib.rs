//! agentmesh rendezvous service: registry, discovery, introductions, STUN responder.
//!
//! The protocol logic is the sans-IO [`core::Server`]; [`index`] is its discovery index.
//! Everything that touches sockets, files or clocks lives outside the core.

pub mod core;
mod index;
pub mod metrics;
pub mod ratelimit;
