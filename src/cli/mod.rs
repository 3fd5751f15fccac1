//! Client side of the local API, shared by the `agentmesh` CLI, the demo and tests.

pub mod client;
pub mod sample_agents;

pub use client::{Client, ClientError};
