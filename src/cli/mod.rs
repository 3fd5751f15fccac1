//! Client side of the local API, shared by the `agentmesh` CLI, the demo and tests.

pub mod client;

pub use client::{Client, ClientError};
