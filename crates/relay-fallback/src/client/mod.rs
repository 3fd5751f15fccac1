//! The relay client: [`ClientSession`] (sans-IO, for the daemon's own socket) and
//! [`RelayClient`], a small tokio client over UDP or TCP/TLS used by tests and benchmarks.

mod conn;
mod session;

pub use conn::{ClientError, RelayClient};
pub use session::{ClientEvent, ClientSession, SessionError, PING_INTERVAL};
