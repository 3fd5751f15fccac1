//! STUN-style probes run inside the simulator: a client behind some NAT sends from one
//! port to two server addresses (two ports on the first), reads its reflexive address from
//! the replies, then checks which unsolicited senders get back in. The result is classified
//! with [`crate::classify`].
//!
//! The probe owns the simulator while it runs: outputs for other hosts are discarded.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::classify::{
    classify_filtering, classify_mapping, FilteringObservation, MappingObservation, ProbeOutcome,
};
use crate::link::LinkConfig;
use crate::sim::{HostId, Output, SendError, Sim, TopologyError};

/// The two probe servers: distinct public addresses, each listening on `port` and `port + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeServers {
    /// Server A.
    pub a: HostId,
    /// Server B (another address).
    pub b: HostId,
    /// First server port (the second is `port + 1`).
    pub port: u16,
}

impl ProbeServers {
    /// Adds two probe servers to the internet, at 203.0.113.10 and 198.51.100.10, port 3478.
    pub fn install(sim: &mut Sim) -> Result<ProbeServers, TopologyError> {
        let inet = sim.internet();
        let link = LinkConfig::with_latency(Duration::from_millis(5));
        let a = sim.add_host("probe-a", inet, Ipv4Addr::new(203, 0, 113, 10), link)?;
        let b = sim.add_host("probe-b", inet, Ipv4Addr::new(198, 51, 100, 10), link)?;
        Ok(ProbeServers { a, b, port: 3478 })
    }
}

const REQUEST: &[u8] = b"PROBE";
const WAIT: Duration = Duration::from_secs(2);

/// Probes the NAT in front of `client`, using client ports `base_port` and `base_port + 1`.
pub fn probe_nat(
    sim: &mut Sim,
    client: HostId,
    base_port: u16,
    servers: ProbeServers,
) -> Result<ProbeOutcome, SendError> {
    let [a1, a2, b1] = server_endpoints(sim, servers);
    let (Some(a1), Some(a2), Some(b1)) = (a1, a2, b1) else {
        return Err(SendError::UnknownHost(servers.a));
    };
    let Some(m1) = binding(sim, client, base_port, a1)? else {
        return Ok(ProbeOutcome::NoUdp);
    };
    let local = sim
        .host_ip(client)
        .map(|ip| SocketAddr::V4(SocketAddrV4::new(ip, base_port)));
    if Some(m1) == local {
        return Ok(ProbeOutcome::NoNat);
    }
    let m2 = binding(sim, client, base_port, a2)?.unwrap_or(m1);
    let m3 = binding(sim, client, base_port, b1)?.unwrap_or(m1);
    let mapping = classify_mapping(MappingObservation {
        a1: m1,
        a2: m2,
        b1: m3,
    });

    let port = base_port + 1;
    let Some(mapped) = binding(sim, client, port, a1)? else {
        return Ok(ProbeOutcome::NoUdp);
    };
    let from_other_address = unsolicited(sim, client, servers.b, b1, mapped)?;
    let from_other_port = unsolicited(sim, client, servers.a, a2, mapped)?;
    let filtering = classify_filtering(FilteringObservation {
        from_other_address,
        from_other_port,
    });
    Ok(ProbeOutcome::Nat(mapping, filtering))
}

fn server_endpoints(sim: &Sim, s: ProbeServers) -> [Option<SocketAddr>; 3] {
    let ep = |h: HostId, port: u16| {
        sim.host_ip(h)
            .map(|ip| SocketAddr::V4(SocketAddrV4::new(ip, port)))
    };
    [ep(s.a, s.port), ep(s.a, s.port + 1), ep(s.b, s.port)]
}

/// One binding request from `client:port` to `server`; the reflexive address it reports.
fn binding(
    sim: &mut Sim,
    client: HostId,
    port: u16,
    server: SocketAddr,
) -> Result<Option<SocketAddr>, SendError> {
    sim.send(client, port, server, REQUEST)?;
    let deadline = sim.now() + WAIT;
    while let Some(out) = sim.next_output(deadline) {
        let Output::Datagram(d) = out else { continue };
        if d.data.as_ref() == REQUEST && d.local == server {
            let port = d.local.port();
            sim.send(d.host, port, d.from, d.from.to_string().into_bytes())?;
        } else if d.host == client && d.from == server {
            let text = String::from_utf8_lossy(&d.data).into_owned();
            return Ok(text.parse().ok());
        }
    }
    Ok(None)
}

/// Whether a packet from `server`'s endpoint `from` to `mapped` reaches the client.
fn unsolicited(
    sim: &mut Sim,
    client: HostId,
    server: HostId,
    from: SocketAddr,
    mapped: SocketAddr,
) -> Result<bool, SendError> {
    sim.send(server, from.port(), mapped, &b"UNSOLICITED"[..])?;
    let deadline = sim.now() + WAIT;
    while let Some(out) = sim.next_output(deadline) {
        if let Output::Datagram(d) = out {
            if d.host == client && d.from == from {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
