//! UPnP IGD port mapping for the daemon's UDP socket: a sans-IO lease scheduler
//! ([`PortMapState`]: discover, add, renew at half the lease, bounded backoff, long pause
//! when there is no IGD, remove on shutdown) and its tokio driver ([`PortMapper`], using
//! `igd-next`) that publishes the mapped external address for the daemon to offer as a
//! hole-punch candidate of kind `CandidateKind::Upnp`.

mod driver;
mod state;

pub use driver::{Igd, PortMapError, PortMapper, PortMapperConfig};
pub use state::{Action, Mapping, Outcome, PortMapConfig, PortMapState};
