//! Integration tests of the rendezvous service on loopback (and one on netsim's simulated
//! network): one binary, modules inside.

// Tests may unwrap (STYLE): a failure here is a test failure.
#![allow(clippy::unwrap_used)]

mod abuse;
mod binary;
mod harness;
mod registry;
mod scale;
mod simnet;
mod stun;
