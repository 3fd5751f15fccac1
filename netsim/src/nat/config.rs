//! NAT configuration (RFC 4787 knobs) and the named presets.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::behavior::{Filtering, Mapping, Preset};

/// How a NAT picks the external port of a new mapping (RFC 4787 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortAlloc {
    /// Keep the internal port when free, else the next free one (Linux masquerade).
    Preserve,
    /// The next port after the previous mapping's: predictable.
    Sequential,
    /// A random free port.
    Random,
}

/// Which traffic keeps a mapping alive (RFC 4787 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Only packets from inside refresh the timer.
    Outbound,
    /// Packets in both directions refresh it.
    Bidirectional,
}

/// Everything that decides how a NAT behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// Port allocation.
    pub port_alloc: PortAlloc,
    /// Idle time after which a mapping is gone.
    pub mapping_timeout: Duration,
    /// Which direction refreshes a mapping.
    pub refresh: Refresh,
    /// Whether inside hosts reach each other through the external address.
    pub hairpin: bool,
    /// Most mappings held at once; new ones beyond it are refused.
    pub max_mappings: usize,
    /// A firewall that drops every UDP packet, both ways.
    pub block_udp: bool,
    /// External ports the NAT hands out.
    pub port_range: RangeInclusive<u16>,
}

impl NatConfig {
    /// A NAT with these behaviours and common defaults: ports preserved, 120 s timeout
    /// refreshed by outbound traffic, no hairpinning, 65,536 mappings, ports 1024-65535.
    pub fn new(mapping: Mapping, filtering: Filtering) -> NatConfig {
        NatConfig {
            mapping,
            filtering,
            port_alloc: PortAlloc::Preserve,
            mapping_timeout: Duration::from_secs(120),
            refresh: Refresh::Outbound,
            hairpin: false,
            max_mappings: 65_536,
            block_udp: false,
            port_range: 1024..=65535,
        }
    }

    /// The configuration of a named preset, or `None` for [`Preset::Open`] (no NAT at all).
    pub fn preset(preset: Preset) -> Option<NatConfig> {
        use Filtering as F;
        use Mapping as M;
        let cfg = match preset {
            Preset::Open => return None,
            Preset::UdpBlocked => NatConfig {
                block_udp: true,
                ..NatConfig::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
            },
            Preset::Symmetric => NatConfig {
                port_alloc: PortAlloc::Random,
                ..NatConfig::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
            },
            Preset::SymmetricSequential => NatConfig {
                port_alloc: PortAlloc::Sequential,
                ..NatConfig::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
            },
            other => {
                let (m, f) = other
                    .class()
                    .unwrap_or((M::EndpointIndependent, F::EndpointIndependent));
                NatConfig::new(m, f)
            }
        };
        Some(cfg)
    }

    /// Builder: sets hairpinning.
    pub fn with_hairpin(mut self, on: bool) -> NatConfig {
        self.hairpin = on;
        self
    }

    /// Builder: sets the mapping timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> NatConfig {
        self.mapping_timeout = timeout;
        self
    }

    /// Builder: sets the table size limit.
    pub fn with_max_mappings(mut self, max: usize) -> NatConfig {
        self.max_mappings = max;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_carry_their_class() {
        for p in Preset::ALL {
            let cfg = NatConfig::preset(p);
            match p {
                Preset::Open => assert!(cfg.is_none()),
                Preset::UdpBlocked => assert!(cfg.is_some_and(|c| c.block_udp)),
                _ => {
                    let c = cfg.unwrap();
                    assert_eq!(Some((c.mapping, c.filtering)), p.class());
                    assert!(!c.block_udp);
                }
            }
        }
    }
}
