//! Loopback integration tests of the relay: real sockets, real TLS, real SQLite; and one on
//! netsim's simulated network.

// Tests may unwrap (helpers here are not `#[test]` functions, so say it once).
#![allow(clippy::unwrap_used)]

mod blind;
mod common;
mod exchange;
mod limits;
mod mail;
mod ops;
mod simnet;
