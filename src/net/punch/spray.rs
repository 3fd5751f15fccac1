//! The roles, budget and pace of many-port probing (see the `punch` module doc), and
//! how a side chooses its role from the two sides' STUN-observed mapping kinds.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::net::stun::{self, MappingObservation};

/// Many-port probing for one punch (see the `punch` module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spray {
    /// A plain punch.
    Off,
    /// We are the hard side: also ping the peer's candidates from local sockets
    /// `1..=sockets` (the caller binds them).
    Doors {
        /// Extra sockets pinging from the start.
        sockets: u16,
    },
    /// The peer is the hard side: also ping random ports of its public address.
    Ports {
        /// The hard side's public address.
        ip: IpAddr,
    },
}

/// Budget and pace of many-port probing.
#[derive(Debug, Clone)]
pub struct SprayConfig {
    /// Extra sockets the hard side pings from (doors on its NAT).
    pub sockets: u16,
    /// Most random ports the easy side pings in one punch.
    pub budget: u32,
    /// Most random ports pinged per ping round (with 50 ms rounds: 640 a second).
    pub per_round: u32,
    /// Least time between two rounds of pings from every extra socket (hard side).
    pub doors_interval: Duration,
    /// Lowest port sprayed (NATs rarely hand out ports below it).
    pub min_port: u16,
    /// Spraying starts this long after the start time, if the plain punch has not
    /// succeeded by then (it does within a round trip wherever it can), so pairs that do
    /// not need it never pay for it.
    pub after: Duration,
}

impl Default for SprayConfig {
    fn default() -> Self {
        SprayConfig {
            sockets: 256,
            budget: 2048,
            per_round: 32,
            doors_interval: Duration::from_secs(1),
            min_port: 1024,
            after: Duration::from_secs(1),
        }
    }
}

/// How a side's NAT maps, as its own STUN observations show (the input of [`spray_role`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingKind {
    /// No NAT, or not known.
    OpenOrUnknown,
    /// One public port for every destination.
    EndpointIndependent,
    /// A new port per destination, in sequence (port prediction handles it).
    Sequential,
    /// A new random port per destination.
    Random,
}

/// How a NAT maps, from the (observer, reflexive address) answers of its STUN round and
/// the socket's local address.
pub fn mapping_kind(local: SocketAddr, answers: &[(SocketAddr, SocketAddr)]) -> MappingKind {
    match stun::classify(local, answers) {
        MappingObservation::Unknown | MappingObservation::NoNat => MappingKind::OpenOrUnknown,
        MappingObservation::EndpointIndependent(_) => MappingKind::EndpointIndependent,
        MappingObservation::EndpointDependent { mut ports } => {
            ports.sort_unstable();
            if ports.windows(2).all(|w| w[1] == w[0].wrapping_add(1)) {
                MappingKind::Sequential
            } else {
                MappingKind::Random
            }
        }
    }
}

/// Which part of many-port probing this side plays: only a random-port symmetric side
/// facing an endpoint-independent one (either way round) sprays; `peer_ip` is the
/// peer's public address.
pub fn spray_role(
    own: MappingKind,
    peer: MappingKind,
    peer_ip: Option<IpAddr>,
    config: &SprayConfig,
) -> Spray {
    match (own, peer, peer_ip) {
        (MappingKind::Random, MappingKind::EndpointIndependent, _) if config.sockets > 0 => {
            Spray::Doors {
                sockets: config.sockets,
            }
        }
        (MappingKind::EndpointIndependent, MappingKind::Random, Some(ip)) if config.budget > 0 => {
            Spray::Ports { ip }
        }
        _ => Spray::Off,
    }
}

impl From<MappingKind> for agentmesh_proto::rendezvous::NatMapping {
    fn from(kind: MappingKind) -> Self {
        use agentmesh_proto::rendezvous::NatMapping;
        match kind {
            MappingKind::OpenOrUnknown => NatMapping::NoneOrUnknown,
            MappingKind::EndpointIndependent => NatMapping::EndpointIndependent,
            MappingKind::Sequential => NatMapping::Sequential,
            MappingKind::Random => NatMapping::Random,
        }
    }
}

impl From<agentmesh_proto::rendezvous::NatMapping> for MappingKind {
    fn from(mapping: agentmesh_proto::rendezvous::NatMapping) -> Self {
        use agentmesh_proto::rendezvous::NatMapping;
        match mapping {
            NatMapping::NoneOrUnknown => MappingKind::OpenOrUnknown,
            NatMapping::EndpointIndependent => MappingKind::EndpointIndependent,
            NatMapping::Sequential => MappingKind::Sequential,
            NatMapping::Random => MappingKind::Random,
        }
    }
}
