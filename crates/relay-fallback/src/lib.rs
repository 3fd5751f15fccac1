//! agentmesh blind relay: forwards ciphertext between daemons by node id.
//!
//! - [`core`]: the sans-IO relay state machine ([`Relay`]).
//! - [`store`]: sealed mails in SQLite for store-and-forward.
//! - [`client`]: the client side, sans-IO plus small tokio clients the daemon can reuse.
//! - [`server`]: the tokio drivers (UDP, TCP/TLS, admin HTTP) and graceful drain.
//!
//! The relay never holds a key that decrypts what it forwards: payloads are QUIC packets or
//! Noise-sealed messages between daemons; its own key only authenticates its TLS endpoint
//! and is bound into client authentication signatures.

pub mod bucket;
pub mod client;
pub mod config;
pub mod core;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod store;

pub use crate::core::{ConnId, Event, Forward, Link, Relay, StreamPoll};
pub use config::Config;
pub use limits::{Limits, MailLimits};
pub use server::{start, Direction, RelayHandle, StartOptions, Tap};
pub use store::{MailStore, MemStore, SqliteStore, StoreError};
