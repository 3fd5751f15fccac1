//! agentmesh rendezvous service: registry, discovery, introductions, STUN responder.
//!
//! The protocol logic is the sans-IO [`core::Server`] (with its discovery index);
//! [`stun`] and [`deframe`] are sans-IO codecs; [`store`] persists records in SQLite;
//! [`config`] reads the TOML file. Everything that touches sockets or clocks lives outside
//! the core.

pub mod client;
pub mod config;
pub mod core;
pub mod deframe;
mod index;
pub mod metrics;
pub mod ratelimit;
pub mod server;
pub mod store;
pub mod stun;
