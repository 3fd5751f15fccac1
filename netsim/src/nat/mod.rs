//! NAT as a pure state machine, configurable per RFC 4787: `NatConfig` says how it
//! behaves (with the named presets), `Nat` holds the mapping table and translates.

mod config;
mod table;

pub use config::{NatConfig, PortAlloc, Refresh};
pub use table::{MappingView, Nat, NatDrop};
