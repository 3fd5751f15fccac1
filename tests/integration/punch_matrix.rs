//! The NAT matrix for the daemon's own traversal code, in netsim: for every pair of NAT
//! presets, two daemons' real state machines (STUN prober answered by the rendezvous's
//! STUN responder, Noise-sealed probes, `PeerPath` punching from a common start) run
//! over 20–100 ms links with 1% loss. The expected grid is written down below with the
//! reason for every relayed cell; the run prints the grid it saw. Each side picks its
//! many-port probing role from the two sides' STUN-observed mapping kinds, and the extra
//! sockets of the hard side are ports `PORT + k` of its host.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use agentmesh::net::demux::{classify, Kind};
use agentmesh::net::peer_path::{PathConfig, PathEvent, PeerPath, Tier};
use agentmesh::net::probe;
use agentmesh::net::punch::{mapping_kind, spray_role, MappingKind, SprayConfig};
use agentmesh::net::routes::Path;
use agentmesh::net::stun::StunProbe;
use agentmesh_proto::SecretKey;
use netsim::link::{LinkConfig, Loss};
use netsim::sim::{HostId, Output, Sim};
use netsim::time::SimTime;
use netsim::Preset;

const PORT: u16 = 5000;
const OBSERVERS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 10),
    Ipv4Addr::new(198, 51, 100, 10),
];

/// What the physics allows, and why (the oracle).
pub(crate) fn expected(a: Preset, b: Preset) -> (bool, &'static str) {
    use Preset::*;
    let eim = |p| matches!(p, Open | FullCone | RestrictedCone | PortRestrictedCone);
    let lenient = |p| matches!(p, Open | FullCone | RestrictedCone);
    if a == UdpBlocked || b == UdpBlocked {
        return (
            false,
            "UDP is blocked: only the relay over TCP/TLS gets through",
        );
    }
    if eim(a) && eim(b) {
        return (true, "both mappings are endpoint-independent: each side's STUN address is its address for the peer");
    }
    if (matches!(a, Symmetric | SymmetricSequential) && lenient(b))
        || (lenient(a) && matches!(b, Symmetric | SymmetricSequential))
    {
        return (true, "the symmetric side's fresh port passes the peer's lenient filter; the peer answers it (peer-reflexive)");
    }
    match (a, b) {
        (SymmetricSequential, PortRestrictedCone) | (PortRestrictedCone, SymmetricSequential) => {
            (true, "port prediction: the sequential NAT's next port is guessed and probed")
        }
        (SymmetricSequential, SymmetricSequential) => (
            false,
            "both ports move with every probe either side sends, so neither prediction holds still; \
             possible only with coordinated port stepping, which the punch does not do yet",
        ),
        (Symmetric, PortRestrictedCone) | (PortRestrictedCone, Symmetric) => (
            true,
            "many-port probing: the symmetric side pings the peer from 256 extra sockets, the \
             port-restricted side sprays up to 2048 random ports of its address; a hit passes \
             both filters (99.97 % of attempts by the birthday bound, see \
             many_port_probing_success_over_seeds)",
        ),
        _ => (false, "a random-port symmetric NAT faces an address-and-port-dependent filter on a side whose own port is unknowable too (symmetric) or moving (sequential): no door to aim at"),
    }
}

/// What a harness with one UDP socket per side achieves (`punch_matrix_netns`, which
/// drives `PeerPath` over one real socket): the oracle, less many-port probing, which
/// needs the hard side's extra sockets.
pub(crate) fn expected_one_socket(a: Preset, b: Preset) -> (bool, &'static str) {
    use Preset::*;
    match (a, b) {
        (Symmetric, PortRestrictedCone) | (PortRestrictedCone, Symmetric) => (
            false,
            "needs many-port probing: this harness has one UDP socket per side",
        ),
        _ => expected(a, b),
    }
}

/// The tier a pair's direct path must have, where only one mechanism can give it.
pub(crate) fn expected_tier(a: Preset, b: Preset) -> Option<&'static str> {
    use Preset::*;
    match (a, b) {
        (Symmetric, PortRestrictedCone) | (PortRestrictedCone, Symmetric) => {
            Some("direct-many-port")
        }
        _ => None,
    }
}

struct Node {
    host: HostId,
    key: SecretKey,
    private: SocketAddr,
    stun: StunProbe,
    path: Option<PeerPath>,
    direct_at: Option<(SimTime, Tier)>,
}

struct Run {
    sim: Sim,
    base: Instant,
    nodes: [Node; 2],
}

impl Run {
    fn instant(&self, t: SimTime) -> Instant {
        self.base + t.since_start()
    }

    fn simtime(&self, i: Instant) -> SimTime {
        SimTime::ZERO + i.saturating_duration_since(self.base)
    }

    fn arm(&mut self, n: usize) {
        let due = match &self.nodes[n].path {
            Some(p) => p.poll_timeout(),
            None => self.nodes[n].stun.poll_timeout(),
        };
        if let Some(d) = due {
            let at = self.simtime(d).max(self.sim.now());
            self.sim.set_timer(self.nodes[n].host, at, 0);
        }
    }

    fn flush(&mut self, n: usize) {
        let now = self.sim.now();
        let host = self.nodes[n].host;
        while let Some(t) = self.nodes[n].stun.poll_transmit() {
            let _ = self.sim.send(host, PORT, t.dst, t.data);
        }
        let peer = self.nodes[1 - n].key.node_id();
        if let Some(path) = self.nodes[n].path.as_mut() {
            while let Some(t) = path.poll_transmit() {
                let bytes = probe::encode(&self.nodes[n].key, peer, &t.body).unwrap();
                let _ = self.sim.send(host, PORT + t.socket, t.dst, bytes);
            }
            while let Some(ev) = path.poll_event() {
                if let PathEvent::Changed {
                    path: Path::Direct(_),
                    tier,
                    ..
                } = ev
                {
                    self.nodes[n].direct_at.get_or_insert((now, tier));
                }
            }
        }
        self.arm(n);
    }

    /// Runs the simulation until `until`, answering STUN at the observers.
    fn run_until(&mut self, until: SimTime) {
        while let Some(out) = self.sim.next_output(until) {
            match out {
                Output::Datagram(d) => {
                    if let Some(n) = self.nodes.iter().position(|x| x.host == d.host) {
                        let socket = d.local.port().wrapping_sub(PORT);
                        self.receive(n, d.from, socket, &d.data);
                    } else if let Ok(resp) =
                        agentmesh_rendezvous::stun::respond(&d.data, d.from, d.local, None)
                    {
                        let _ = self.sim.send(d.host, d.local.port(), d.from, resp);
                    }
                }
                Output::Timer { host, .. } => {
                    if let Some(n) = self.nodes.iter().position(|x| x.host == host) {
                        let now = self.instant(self.sim.now());
                        match self.nodes[n].path.as_mut() {
                            Some(p) => p.handle_timeout(now),
                            None => self.nodes[n].stun.handle_timeout(now),
                        }
                        self.flush(n);
                    }
                }
            }
        }
    }

    fn receive(&mut self, n: usize, from: SocketAddr, socket: u16, data: &[u8]) {
        let now = self.instant(self.sim.now());
        match classify(data) {
            Kind::Stun if socket == 0 => self.nodes[n].stun.handle_response(from, data),
            Kind::Probe => {
                let Ok((sender, body)) = probe::decode(&self.nodes[n].key, data) else {
                    return;
                };
                if sender != self.nodes[1 - n].key.node_id() {
                    return;
                }
                if let Some(p) = self.nodes[n].path.as_mut() {
                    p.handle_probe_on(now, from, socket, body);
                }
            }
            _ => {}
        }
        self.flush(n);
    }
}

struct Cell {
    direct: bool,
    tiers: (Option<Tier>, Option<Tier>),
    to_direct: Option<Duration>,
}

/// The mapping kind a node's STUN round showed, and its public address.
fn observed(node: &Node) -> (MappingKind, Option<std::net::IpAddr>) {
    let answers = node.stun.answers();
    (
        mapping_kind(node.private, &answers),
        answers.first().map(|(_, m)| m.ip()),
    )
}

fn run_pair(a: Preset, b: Preset, latency_ms: (u64, u64), seed: u64) -> Cell {
    let mut sim = Sim::new(seed);
    let inet = sim.internet();
    let lossy = |ms| LinkConfig {
        loss: Loss::Uniform(0.01),
        ..LinkConfig::with_latency(Duration::from_millis(ms))
    };
    for ip in OBSERVERS {
        sim.add_host(
            &format!("stun-{ip}"),
            inet,
            ip,
            LinkConfig::with_latency(Duration::from_millis(5)),
        )
        .unwrap();
    }
    let private = Ipv4Addr::new(10, 0, 0, 2); // the same private address at both sites
    let sa = sim
        .add_site(
            "a",
            a,
            inet,
            Ipv4Addr::new(203, 0, 113, 100),
            private,
            lossy(latency_ms.0),
        )
        .unwrap();
    let sb = sim
        .add_site(
            "b",
            b,
            inet,
            Ipv4Addr::new(198, 51, 100, 200),
            private,
            lossy(latency_ms.1),
        )
        .unwrap();
    let base = Instant::now();
    let servers: Vec<SocketAddr> = OBSERVERS
        .iter()
        .map(|ip| SocketAddr::new((*ip).into(), 3478))
        .collect();
    let node = |host: HostId, seed: u8, ip: Ipv4Addr| Node {
        host,
        key: SecretKey::from_bytes(&[seed; 32]),
        private: SocketAddr::new(ip.into(), PORT),
        stun: StunProbe::new(base, &servers, u64::from(seed)),
        path: None,
        direct_at: None,
    };
    let a_ip = if a == Preset::Open {
        Ipv4Addr::new(203, 0, 113, 100)
    } else {
        private
    };
    let b_ip = if b == Preset::Open {
        Ipv4Addr::new(198, 51, 100, 200)
    } else {
        private
    };
    let mut run = Run {
        sim,
        base,
        nodes: [node(sa.host, 1, a_ip), node(sb.host, 2, b_ip)],
    };
    run.flush(0);
    run.flush(1);
    run.run_until(SimTime::from_secs(3)); // STUN done (answers or retries exhausted)

    // The rendezvous introduces them: each gets the other's candidates and a common start.
    let start = SimTime::from_secs(3) + Duration::from_millis(100);
    let start_at = run.instant(start);
    let kinds = [observed(&run.nodes[0]), observed(&run.nodes[1])];
    for n in 0..2 {
        let other = &run.nodes[1 - n];
        let candidates = other.stun.candidates(other.private, 16);
        let (peer_kind, peer_ip) = kinds[1 - n];
        let role = spray_role(kinds[n].0, peer_kind, peer_ip, &SprayConfig::default());
        let mut path = PeerPath::new(
            run.instant(run.sim.now()),
            PathConfig::default(),
            Tier::RelayUdp,
            100 + n as u64,
        );
        while path.poll_event().is_some() {}
        path.handle_introduction_with(1, candidates, start_at, role);
        run.nodes[n].path = Some(path);
        run.flush(n);
    }
    run.run_until(start + Duration::from_secs(10));
    let tiers = (
        run.nodes[0].direct_at.map(|d| d.1),
        run.nodes[1].direct_at.map(|d| d.1),
    );
    let both = run.nodes[0].direct_at.zip(run.nodes[1].direct_at);
    Cell {
        direct: both.is_some(),
        tiers,
        to_direct: both.map(|(x, y)| x.0.max(y.0).saturating_since(start)),
    }
}

#[test]
fn every_preset_pair_goes_direct_where_the_physics_allows() {
    let mut grid = String::from("pair                                       expect  got     tiers (a / b)                       to direct\n");
    let mut wrong = Vec::new();
    for (i, a) in Preset::ALL.into_iter().enumerate() {
        for (j, b) in Preset::ALL.into_iter().enumerate() {
            let latency = (
                20 + (i as u64 * 37 + j as u64 * 11) % 81,
                20 + (i as u64 * 13 + j as u64 * 29) % 81,
            );
            let cell = run_pair(a, b, latency, 1000 + (i * 7 + j) as u64);
            let (want, why) = expected(a, b);
            let name = |t: Option<Tier>| t.map_or("relay".to_string(), |t| t.name().to_string());
            grid.push_str(&format!(
                "{:<42} {:<7} {:<7} {:<35} {}\n",
                format!("{a} x {b}"),
                if want { "direct" } else { "relay" },
                if cell.direct { "direct" } else { "relay" },
                format!("{} / {}", name(cell.tiers.0), name(cell.tiers.1)),
                cell.to_direct
                    .map_or("-".into(), |d| format!("{} ms", d.as_millis())),
            ));
            if cell.direct != want {
                wrong.push(format!(
                    "{a} x {b}: expected {} ({why})",
                    if want { "direct" } else { "relay" }
                ));
            }
            if let Some(d) = cell.to_direct {
                assert!(
                    d < Duration::from_secs(3),
                    "{a} x {b}: direct only after {d:?}"
                );
            }
        }
    }
    println!("{grid}");
    assert!(wrong.is_empty(), "{}\n{grid}", wrong.join("\n"));
}

/// Many-port probing, random-port symmetric against port-restricted cone (both ways
/// round), over many seeds: the share of attempts that go direct, and how fast.
#[test]
fn many_port_probing_success_over_seeds() {
    let mut ok = 0;
    let mut times = Vec::new();
    let runs = 40;
    for seed in 0..runs {
        let (a, b) = if seed % 2 == 0 {
            (Preset::Symmetric, Preset::PortRestrictedCone)
        } else {
            (Preset::PortRestrictedCone, Preset::Symmetric)
        };
        let latency = (20 + (seed * 17) % 81, 20 + (seed * 29) % 81);
        let cell = run_pair(a, b, latency, 7000 + seed);
        if cell.direct {
            ok += 1;
            assert_eq!(
                cell.tiers,
                (Some(Tier::DirectManyPort), Some(Tier::DirectManyPort)),
                "seed {seed}"
            );
        }
        times.extend(cell.to_direct);
    }
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    println!(
        "many-port probing: {ok} of {runs} attempts direct; median to direct {} ms, worst {} ms",
        median.as_millis(),
        times.last().copied().unwrap_or_default().as_millis()
    );
    // The birthday bound gives 99.97 % per attempt; 1 % loss per link takes a little.
    assert!(ok * 100 >= runs * 80, "only {ok} of {runs} went direct");
}
