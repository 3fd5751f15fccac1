//! Classifying a NAT from STUN-style observations (RFC 5780 logic), as pure functions so
//! the simulator's probes and the netns lab's real probes judge alike.

use std::net::SocketAddr;

use crate::behavior::{Filtering, Mapping};

/// The reflexive address one client socket got from three server endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingObservation {
    /// Seen by server address A, port 1.
    pub a1: SocketAddr,
    /// Seen by server address A, port 2.
    pub a2: SocketAddr,
    /// Seen by server address B, port 1.
    pub b1: SocketAddr,
}

/// Which unsolicited senders reached a client that had sent only to server A, port 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilteringObservation {
    /// A packet from server address B got in.
    pub from_other_address: bool,
    /// A packet from server address A, port 2 got in.
    pub from_other_port: bool,
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// No reply at all: UDP is blocked.
    NoUdp,
    /// The reflexive address is the local one: no NAT.
    NoNat,
    /// A NAT of this class.
    Nat(Mapping, Filtering),
}

impl ProbeOutcome {
    /// The class in the form of [`crate::Preset::class`].
    pub fn class(self) -> Option<(Mapping, Filtering)> {
        match self {
            ProbeOutcome::Nat(m, f) => Some((m, f)),
            ProbeOutcome::NoUdp | ProbeOutcome::NoNat => None,
        }
    }
}

/// Mapping behaviour: one reflexive address for all → endpoint-independent; one per server
/// address → address-dependent; one per server port too → address-and-port-dependent.
pub fn classify_mapping(obs: MappingObservation) -> Mapping {
    if obs.a1 == obs.a2 && obs.a1 == obs.b1 {
        Mapping::EndpointIndependent
    } else if obs.a1 == obs.a2 {
        Mapping::AddressDependent
    } else {
        Mapping::AddressAndPortDependent
    }
}

/// Filtering behaviour: anyone gets in → endpoint-independent; only the address sent to →
/// address-dependent; only the exact endpoint → address-and-port-dependent.
pub fn classify_filtering(obs: FilteringObservation) -> Filtering {
    if obs.from_other_address {
        Filtering::EndpointIndependent
    } else if obs.from_other_port {
        Filtering::AddressDependent
    } else {
        Filtering::AddressAndPortDependent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapping_cases() {
        let x = sa("198.51.100.1:5000");
        let y = sa("198.51.100.1:5001");
        let z = sa("198.51.100.1:5002");
        let m = |a1, a2, b1| classify_mapping(MappingObservation { a1, a2, b1 });
        assert_eq!(m(x, x, x), Mapping::EndpointIndependent);
        assert_eq!(m(x, x, y), Mapping::AddressDependent);
        assert_eq!(m(x, y, z), Mapping::AddressAndPortDependent);
    }

    #[test]
    fn filtering_cases() {
        let f = |from_other_address, from_other_port| {
            classify_filtering(FilteringObservation {
                from_other_address,
                from_other_port,
            })
        };
        assert_eq!(f(true, true), Filtering::EndpointIndependent);
        assert_eq!(f(false, true), Filtering::AddressDependent);
        assert_eq!(f(false, false), Filtering::AddressAndPortDependent);
    }
}
