//! RFC 4787 NAT behaviour classes and the named presets, shared by the simulator
//! (`nat`), the real-kernel lab (`netns`) and the probes that classify either.

use std::fmt;

/// How a NAT picks the external endpoint for an internal endpoint (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mapping {
    /// Same mapping whatever the destination ("cone").
    EndpointIndependent,
    /// New mapping per destination address.
    AddressDependent,
    /// New mapping per destination address and port ("symmetric").
    AddressAndPortDependent,
}

/// Which inbound packets a NAT lets through a mapping (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filtering {
    /// Anyone may send to the mapping ("full cone").
    EndpointIndependent,
    /// Only addresses the inside has sent to.
    AddressDependent,
    /// Only address and port pairs the inside has sent to.
    AddressAndPortDependent,
}

/// The named NAT presets used by tests, the demo and the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Preset {
    /// No NAT, no firewall: a public address.
    Open,
    /// EIM + EIF.
    FullCone,
    /// EIM + ADF.
    RestrictedCone,
    /// EIM + APDF (Linux masquerade's default behaviour).
    PortRestrictedCone,
    /// APDM + APDF with random ports.
    Symmetric,
    /// APDM + APDF with sequential (predictable) ports.
    SymmetricSequential,
    /// A firewall that drops all UDP.
    UdpBlocked,
}

impl Preset {
    /// Every preset, in order of increasing hostility.
    pub const ALL: [Preset; 7] = [
        Preset::Open,
        Preset::FullCone,
        Preset::RestrictedCone,
        Preset::PortRestrictedCone,
        Preset::Symmetric,
        Preset::SymmetricSequential,
        Preset::UdpBlocked,
    ];

    /// The snake_case name used in configs, tests and tables.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Open => "open",
            Preset::FullCone => "full_cone",
            Preset::RestrictedCone => "restricted_cone",
            Preset::PortRestrictedCone => "port_restricted_cone",
            Preset::Symmetric => "symmetric",
            Preset::SymmetricSequential => "symmetric_sequential",
            Preset::UdpBlocked => "udp_blocked",
        }
    }

    /// Parses a preset name.
    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The (mapping, filtering) class a probe should observe, or `None` where no
    /// NAT translates (open) or no UDP passes (udp_blocked).
    pub fn class(self) -> Option<(Mapping, Filtering)> {
        use Filtering as F;
        use Mapping as M;
        match self {
            Preset::Open | Preset::UdpBlocked => None,
            Preset::FullCone => Some((M::EndpointIndependent, F::EndpointIndependent)),
            Preset::RestrictedCone => Some((M::EndpointIndependent, F::AddressDependent)),
            Preset::PortRestrictedCone => {
                Some((M::EndpointIndependent, F::AddressAndPortDependent))
            }
            Preset::Symmetric | Preset::SymmetricSequential => {
                Some((M::AddressAndPortDependent, F::AddressAndPortDependent))
            }
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Preset::ALL {
            assert_eq!(Preset::from_name(p.name()), Some(p));
        }
        assert_eq!(Preset::from_name("cone"), None);
    }
}
