//! RFC 4787 classification of what the lab's probes saw, as pure functions. The verdict
//! itself comes from the simulator's [`crate::classify`] (`classify_mapping`,
//! `classify_filtering`), so the real kernel NAT and the simulated ones are judged by
//! the same code; this module adds what real probes need: lost answers (blocked,
//! partial), the filtering control packet, and the port allocation pattern.
//!
//! Mapping probe: one socket sends to a primary server endpoint, to the same address
//! on another port, and to another address; each server reports the source it saw.
//! Filtering probe: a fresh socket sends only to the primary endpoint; then the
//! servers send unsolicited packets to the mapping from another port and from another
//! address (plus one from the primary endpoint as a control).

use std::net::SocketAddr;

use crate::classify::{
    classify_filtering, classify_mapping, FilteringObservation, MappingObservation, ProbeOutcome,
};

/// What the mapping probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingObs {
    /// The probing socket's own address (host address, local port).
    pub local: SocketAddr,
    /// Source seen by the primary endpoint (address A, port p).
    pub primary: Option<SocketAddr>,
    /// Source seen by address A on another port.
    pub other_port: Option<SocketAddr>,
    /// Source seen by another address B.
    pub other_addr: Option<SocketAddr>,
}

/// What the filtering probe received, after sending only to the primary endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilteringObs {
    /// A packet from the primary endpoint itself arrived (the control).
    pub control: bool,
    /// A packet from the primary address, other port, arrived.
    pub other_port: bool,
    /// A packet from the other address arrived.
    pub other_addr: bool,
}

/// How external ports were chosen, judged over successive new mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    /// Every mapping kept the local port.
    Preserved,
    /// One port for all, but not the local one.
    Same,
    /// Each new mapping got the previous port plus at most `max_step` (> 0).
    Sequential {
        /// The largest step seen.
        max_step: u16,
    },
    /// Anything else.
    Random,
}

/// Observations that do not fit together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClassifyError {
    /// Some mapping probes got through and others not.
    #[error("mapping probe `{probe}` got no answer while others did")]
    Partial {
        /// Which probe was lost.
        probe: &'static str,
    },
    /// The filtering control packet was lost, so filtering cannot be judged.
    #[error("filtering control packet lost")]
    ControlLost,
}

/// Classifies a NAT from one mapping and one filtering probe.
pub fn classify(m: &MappingObs, f: &FilteringObs) -> Result<ProbeOutcome, ClassifyError> {
    let (a1, a2, b1) = match (m.primary, m.other_port, m.other_addr) {
        (None, None, None) => return Ok(ProbeOutcome::NoUdp),
        (Some(a), Some(b), Some(c)) => (a, b, c),
        (None, _, _) => return Err(ClassifyError::Partial { probe: "primary" }),
        (_, None, _) => {
            return Err(ClassifyError::Partial {
                probe: "other_port",
            })
        }
        (_, _, None) => {
            return Err(ClassifyError::Partial {
                probe: "other_addr",
            })
        }
    };
    if [a1, a2, b1].iter().all(|a| *a == m.local) {
        return Ok(ProbeOutcome::NoNat);
    }
    if !f.control {
        return Err(ClassifyError::ControlLost);
    }
    let mapping = classify_mapping(MappingObservation { a1, a2, b1 });
    let filtering = classify_filtering(FilteringObservation {
        from_other_address: f.other_addr,
        from_other_port: f.other_port,
    });
    Ok(ProbeOutcome::Nat(mapping, filtering))
}

/// The port pattern of mappings made in order (e.g. primary, other port, other
/// address) by a socket bound to `local_port`.
pub fn port_pattern(local_port: u16, ports: &[u16]) -> PortPattern {
    if ports.iter().all(|p| *p == local_port) {
        return PortPattern::Preserved;
    }
    if ports.windows(2).all(|w| w[0] == w[1]) {
        return PortPattern::Same;
    }
    let steps: Vec<u16> = ports.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    match steps.iter().max() {
        Some(&max_step) if steps.iter().all(|s| (1..=16).contains(s)) => {
            PortPattern::Sequential { max_step }
        }
        _ => PortPattern::Random,
    }
}

/// The ports of a mapping probe's answers, in probe order.
pub fn mapped_ports(m: &MappingObs) -> Vec<u16> {
    [m.primary, m.other_port, m.other_addr]
        .iter()
        .flatten()
        .map(|a| a.port())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::behavior::{Filtering, Mapping};

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn obs(p: &str, op: &str, oa: &str) -> MappingObs {
        MappingObs {
            local: a("10.0.1.2:5000"),
            primary: Some(a(p)),
            other_port: Some(a(op)),
            other_addr: Some(a(oa)),
        }
    }

    #[test]
    fn mapping_classes() {
        let all = FilteringObs {
            control: true,
            other_port: true,
            other_addr: true,
        };
        let x = "1.2.3.4:5000";
        let eim = classify(&obs(x, x, x), &all).unwrap();
        assert_eq!(
            eim.class(),
            Some((Mapping::EndpointIndependent, Filtering::EndpointIndependent))
        );
        let adm = classify(&obs(x, x, "1.2.3.4:6000"), &all).unwrap();
        assert_eq!(adm.class().unwrap().0, Mapping::AddressDependent);
        let apdm = classify(&obs(x, "1.2.3.4:5001", "1.2.3.4:5002"), &all).unwrap();
        assert_eq!(apdm.class().unwrap().0, Mapping::AddressAndPortDependent);
        let local = "10.0.1.2:5000";
        assert_eq!(
            classify(&obs(local, local, local), &all),
            Ok(ProbeOutcome::NoNat)
        );
    }

    #[test]
    fn filtering_classes_and_errors() {
        let x = "1.2.3.4:5000";
        let f = |op, oa| FilteringObs {
            control: true,
            other_port: op,
            other_addr: oa,
        };
        let class = |fo| classify(&obs(x, x, x), &fo).unwrap().class().unwrap().1;
        assert_eq!(class(f(true, false)), Filtering::AddressDependent);
        assert_eq!(class(f(false, false)), Filtering::AddressAndPortDependent);
        assert_eq!(class(f(true, true)), Filtering::EndpointIndependent);
        let lost = FilteringObs::default();
        assert_eq!(
            classify(&obs(x, x, x), &lost),
            Err(ClassifyError::ControlLost)
        );
        let none = MappingObs {
            local: a(x),
            primary: None,
            other_port: None,
            other_addr: None,
        };
        assert_eq!(classify(&none, &lost), Ok(ProbeOutcome::NoUdp));
        let partial = MappingObs {
            other_port: None,
            ..obs(x, x, x)
        };
        assert_eq!(
            classify(&partial, &lost),
            Err(ClassifyError::Partial {
                probe: "other_port"
            })
        );
    }

    #[test]
    fn port_patterns() {
        assert_eq!(
            port_pattern(5000, &[5000, 5000, 5000]),
            PortPattern::Preserved
        );
        assert_eq!(port_pattern(5000, &[7000, 7000]), PortPattern::Same);
        assert_eq!(
            port_pattern(5000, &[30001, 30002, 30003]),
            PortPattern::Sequential { max_step: 1 }
        );
        assert_eq!(
            port_pattern(5000, &[65535, 0, 2]),
            PortPattern::Sequential { max_step: 2 }
        );
        assert_eq!(
            port_pattern(5000, &[41234, 1022, 60000]),
            PortPattern::Random
        );
    }
}
