//! Integration tests of the rendezvous service on loopback: one binary, modules inside.

// Tests may unwrap (STYLE): a failure here is a test failure.
#![allow(clippy::unwrap_used)]

mod abuse;
mod binary;
mod harness;
mod registry;
mod stun;
