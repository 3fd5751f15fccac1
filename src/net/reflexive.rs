//! The daemon's own addresses: its interface addresses and, with STUN through its one
//! socket, its public mappings as two or more observers see them. From these come the
//! NAT class shown in `status`, the candidates given to the rendezvous and the mapping
//! kind (for many-port probing) given to the path finder and the rendezvous. STUN runs at
//! start and then periodically; a changed public mapping means the network changed
//! (NAT reboot, new uplink), so direct paths are re-punched.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tracing::{debug, info};

use super::mesh_socket::MeshHandle;
use super::paths::{now, Paths};
use super::punch::{mapping_kind, CandidateKind, MappingKind};
use super::stun::{MappingObservation, StunProbe};

/// How many ports after the last one seen are offered for a sequential symmetric NAT
/// (the peer looks further ahead on its own, see `paths::candidate_kinds`).
pub const PREDICTED_PORTS: u16 = 8;

/// What the daemon knows of its own addresses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelfView {
    /// The socket's local address.
    pub local: Option<SocketAddr>,
    /// (observer, public mapping) pairs of the last STUN round.
    pub mappings: Vec<(SocketAddr, SocketAddr)>,
    /// NAT class by mapping behaviour: `none`, `endpoint-independent`,
    /// `endpoint-dependent`, `unknown`.
    pub nat: String,
    /// The UPnP mapping, if the router made one.
    pub upnp: Option<SocketAddr>,
    /// The candidates given to the rendezvous.
    pub candidates: Vec<(SocketAddr, CandidateKind)>,
}

/// Runs STUN rounds on the daemon's socket.
pub struct Reflexive {
    servers: Vec<SocketAddr>,
    mesh: MeshHandle,
    view: Arc<Mutex<SelfView>>,
    interval: Duration,
    kick: Arc<Notify>,
}

impl Reflexive {
    /// A prober asking `servers` every `interval`.
    pub fn new(servers: Vec<SocketAddr>, mesh: MeshHandle, interval: Duration) -> Self {
        Reflexive {
            servers,
            mesh,
            view: Arc::new(Mutex::new(SelfView {
                nat: "unknown".into(),
                ..SelfView::default()
            })),
            interval,
            kick: Arc::new(Notify::new()),
        }
    }

    /// Starts a new round at once when notified (e.g. a UPnP mapping appeared).
    pub fn kick(&self) -> Arc<Notify> {
        self.kick.clone()
    }

    /// The shared view (read by status).
    pub fn view(&self) -> Arc<Mutex<SelfView>> {
        self.view.clone()
    }

    /// Runs rounds forever; STUN answers arrive on `answers`; new candidate lists and
    /// the mapping kind go to `publish` (and the kind to `paths`); a changed mapping
    /// tells `paths`.
    pub async fn run(
        self,
        mut answers: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
        publish: impl Fn(Vec<SocketAddr>, MappingKind) + Send + 'static,
        paths: Arc<Paths>,
    ) {
        let mut seed = 1u64;
        loop {
            seed = seed.wrapping_add(0x2545_f491_4f6c_dd1d);
            let mappings = self.round(&mut answers, seed).await;
            let local = self.mesh.local_addr().ok();
            let (changed, candidates) = {
                let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
                let changed = !v.mappings.is_empty()
                    && !mappings.is_empty()
                    && v.mappings.first().map(|m| m.1) != mappings.first().map(|m| m.1);
                v.local = local;
                v.nat = nat_name(local.map(|l| concrete_local(l, &mappings)), &mappings);
                v.mappings = mappings.clone();
                v.candidates = candidates(local, &mappings, v.upnp);
                (changed, v.candidates.clone())
            };
            let kind = local.map_or(MappingKind::OpenOrUnknown, |l| {
                mapping_kind(concrete_local(l, &mappings), &mappings)
            });
            info!(candidates = candidates.len(), mapping = ?kind, "own addresses probed");
            paths.set_own_mapping(kind);
            publish(candidates.iter().map(|c| c.0).collect(), kind);
            if changed {
                info!("public mapping changed: re-punching direct paths");
                paths.network_changed();
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.kick.notified() => {}
            }
        }
    }

    async fn round(
        &self,
        answers: &mut mpsc::Receiver<(SocketAddr, Vec<u8>)>,
        seed: u64,
    ) -> Vec<(SocketAddr, SocketAddr)> {
        let mut probe = StunProbe::new(now(), &self.servers, seed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        while !probe.is_done() && tokio::time::Instant::now() < deadline {
            while let Some(t) = probe.poll_transmit() {
                let _ = self.mesh.send_raw(t.dst, &t.data);
            }
            let wake = probe.poll_timeout().map_or(deadline, |t| {
                tokio::time::Instant::from_std(t).min(deadline)
            });
            tokio::select! {
                a = answers.recv() => match a {
                    Some((src, data)) => probe.handle_response(src, &data),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => probe.handle_timeout(now()),
            }
        }
        debug!(answers = probe.answers().len(), "STUN round done");
        probe.answers()
    }
}

/// The socket's local address with a concrete IP, for telling "no NAT" from a NAT that
/// keeps the port: a socket bound to the unspecified address is at the public IP STUN
/// saw if that IP is one of the interfaces', else at its first other interface address.
fn concrete_local(local: SocketAddr, mappings: &[(SocketAddr, SocketAddr)]) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    let ips = interface_ips(local.ip());
    let ip = match mappings.first() {
        Some((_, m)) if ips.contains(&m.ip()) => Some(m.ip()),
        _ => ips.into_iter().find(|ip| !ip.is_loopback()),
    };
    ip.map_or(local, |ip| SocketAddr::new(ip, local.port()))
}

fn nat_name(local: Option<SocketAddr>, mappings: &[(SocketAddr, SocketAddr)]) -> String {
    let Some(local) = local else {
        return "unknown".into();
    };
    match super::stun::classify(local, mappings) {
        MappingObservation::Unknown => "unknown",
        MappingObservation::NoNat => "none",
        MappingObservation::EndpointIndependent(_) => "endpoint-independent",
        MappingObservation::EndpointDependent { .. } => "endpoint-dependent",
    }
    .into()
}

/// Interface addresses (the socket's own, or every interface's when it is bound to the
/// unspecified address), the UPnP mapping, the first public mapping, and predicted ports
/// for a sequential symmetric NAT; in that order, without repeats.
pub fn candidates(
    local: Option<SocketAddr>,
    mappings: &[(SocketAddr, SocketAddr)],
    upnp: Option<SocketAddr>,
) -> Vec<(SocketAddr, CandidateKind)> {
    let mut out: Vec<(SocketAddr, CandidateKind)> = Vec::new();
    let mut push = |a: SocketAddr, k| {
        if !out.iter().any(|(b, _)| *b == a) {
            out.push((a, k));
        }
    };
    if let Some(local) = local {
        for ip in interface_ips(local.ip()) {
            push(SocketAddr::new(ip, local.port()), CandidateKind::Local);
        }
    }
    if let Some(u) = upnp {
        push(u, CandidateKind::Upnp);
    }
    if let Some(local) = local {
        for (addr, kind) in super::stun::candidates_from(local, mappings, PREDICTED_PORTS) {
            if kind != CandidateKind::Local {
                push(addr, kind);
            }
        }
    }
    // The rendezvous refuses longer lists.
    out.truncate(agentmesh_proto::rendezvous::MAX_CANDIDATES);
    out
}

fn interface_ips(bound: IpAddr) -> Vec<IpAddr> {
    if !bound.is_unspecified() {
        return vec![bound];
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|list| list.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    ips.retain(|ip| ip.is_ipv4() == bound.is_ipv4() && !ip.is_unspecified());
    // Loopback last: it only helps two daemons on one host.
    ips.sort_by_key(|ip| ip.is_loopback());
    ips
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::punch::mapping_kind;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_wildcard_socket_behind_a_port_keeping_nat_is_not_taken_for_no_nat() {
        let observers = (a("203.0.113.10:3478"), a("198.51.100.10:3478"));
        let wildcard = a("0.0.0.0:7000");
        // The public IP is one of ours: no NAT.
        let open = [
            (observers.0, a("127.0.0.1:7000")),
            (observers.1, a("127.0.0.1:7000")),
        ];
        assert_eq!(concrete_local(wildcard, &open), a("127.0.0.1:7000"));
        assert_eq!(
            mapping_kind(concrete_local(wildcard, &open), &open),
            MappingKind::OpenOrUnknown
        );
        // A NAT that kept port 7000 on another IP: endpoint-independent, not "no NAT"
        // (the unspecified address alone matched any IP with the same port).
        let natted = [
            (observers.0, a("203.0.113.13:7000")),
            (observers.1, a("203.0.113.13:7000")),
        ];
        let local = concrete_local(wildcard, &natted);
        if !local.ip().is_unspecified() {
            assert_ne!(local.ip(), a("203.0.113.13:7000").ip());
            assert_eq!(
                mapping_kind(local, &natted),
                MappingKind::EndpointIndependent
            );
        }
        // A concrete local address is kept as it is.
        assert_eq!(
            concrete_local(a("10.0.0.2:7000"), &natted),
            a("10.0.0.2:7000")
        );
    }
}
