//! The local API: a Unix socket speaking JSON lines to agents in any language.
//!
//! `ops` parses client lines, `lines` reads them with a size limit, `server` accepts
//! connections and drives the [`crate::router::Router`], `outbox` bounds what a slow
//! client can make the daemon hold.

pub mod lines;
pub mod ops;
pub mod outbox;
pub mod server;
pub mod socket_path;

pub use server::{ApiConfig, ApiServer, RouterHandle, ServeError};
