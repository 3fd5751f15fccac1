//! The NAT matrix for the daemon's traversal on real kernel NAT: the netns lab builds a
//! site per preset twice (nftables rules per preset, real coturn on two addresses), and
//! for every pair two hosts run the daemon's real STUN prober, sealed probes and
//! `PeerPath` over real UDP sockets inside their namespaces. Judged by the same oracle as
//! the netsim matrix, less many-port probing (`punch_matrix::expected_one_socket`).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use agentmesh::net::demux::{classify, Kind};
use agentmesh::net::peer_path::{PathConfig, PathEvent, PeerPath, Tier};
use agentmesh::net::probe;
use agentmesh::net::punch::PunchConfig;
use agentmesh::net::routes::Path;
use agentmesh::net::stun::StunProbe;
use agentmesh_proto::SecretKey;
use netsim::netns::{self, coturn, Lab, Tool};
use netsim::Preset;

use crate::punch_matrix::expected_one_socket as expected;

/// When a side's path became direct, and how.
type Reached = Option<(Instant, Tier)>;

struct Side {
    sock: UdpSocket,
    key: SecretKey,
    local: SocketAddr,
    stun: StunProbe,
    path: Option<PeerPath>,
    direct: Reached,
}

impl Side {
    fn new(lab: &Lab, host: &str, port: u16, seed: u8) -> Side {
        let sock = lab
            .udp_socket(host, SocketAddr::from(([0, 0, 0, 0], port)))
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let local = SocketAddr::new(lab.addr(host).unwrap().into(), port);
        Side {
            sock,
            key: SecretKey::from_bytes(&[seed; 32]),
            local,
            stun: StunProbe::new(
                Instant::now(),
                &coturn::servers(),
                u64::from(seed) << 8 | u64::from(port),
            ),
            path: None,
            direct: None,
        }
    }

    /// One turn: timers, sends, and whatever arrived.
    fn turn(&mut self, peer: agentmesh_proto::NodeId) {
        let now = Instant::now();
        match self.path.as_mut() {
            Some(p) if p.poll_timeout().is_some_and(|t| t <= now) => p.handle_timeout(now),
            None if self.stun.poll_timeout().is_some_and(|t| t <= now) => {
                self.stun.handle_timeout(now)
            }
            _ => {}
        }
        while let Some(t) = self.stun.poll_transmit() {
            let _ = self.sock.send_to(&t.data, t.dst);
        }
        if let Some(p) = self.path.as_mut() {
            while let Some(t) = p.poll_transmit() {
                let bytes = probe::encode(&self.key, peer, &t.body).unwrap();
                let _ = self.sock.send_to(&bytes, t.dst);
            }
            while let Some(ev) = p.poll_event() {
                if let PathEvent::Changed {
                    path: Path::Direct(_),
                    tier,
                    ..
                } = ev
                {
                    self.direct.get_or_insert((now, tier));
                }
            }
        }
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
            let data = &buf[..n];
            match classify(data) {
                Kind::Stun => self.stun.handle_response(from, data),
                Kind::Probe => {
                    if let (Ok((sender, body)), Some(p)) =
                        (probe::decode(&self.key, data), self.path.as_mut())
                    {
                        if sender == peer {
                            p.handle_probe(Instant::now(), from, body);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn run_pair(lab: &Lab, ha: &str, hb: &str, port: u16) -> (Reached, Reached, Instant) {
    let mut a = Side::new(lab, ha, port, 1);
    let mut b = Side::new(lab, hb, port, 2);
    let (na, nb) = (a.key.node_id(), b.key.node_id());
    let stun_deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < stun_deadline && !(a.stun.is_done() && b.stun.is_done()) {
        a.turn(nb);
        b.turn(na);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let config = PathConfig {
        punch: PunchConfig {
            give_up_after: Duration::from_secs(3),
            ..PunchConfig::default()
        },
        ..PathConfig::default()
    };
    // The rendezvous's introduction: each side gets the other's candidates and the start.
    let (for_a, for_b) = (
        b.stun.candidates(b.local, 16),
        a.stun.candidates(a.local, 16),
    );
    for (side, candidates, seed) in [(&mut a, for_a, 10), (&mut b, for_b, 20)] {
        let mut p = PeerPath::new(Instant::now(), config.clone(), Tier::RelayUdp, seed);
        while p.poll_event().is_some() {}
        p.handle_introduction(1, candidates, start);
        side.path = Some(p);
    }
    let deadline = start + Duration::from_secs(4);
    while Instant::now() < deadline && !(a.direct.is_some() && b.direct.is_some()) {
        a.turn(nb);
        b.turn(na);
    }
    (a.direct, b.direct, start)
}

#[test]
fn every_preset_pair_on_real_kernel_nat() {
    if !netns::lab_available(
        "every_preset_pair_on_real_kernel_nat",
        &[Tool::Nft, Tool::Coturn],
    ) {
        return;
    }
    let mut builder = Lab::builder().coturn();
    for (i, p) in Preset::ALL.into_iter().enumerate() {
        builder = builder
            .site(&format!("a{i}"), p)
            .host(&format!("ha{i}"), &format!("a{i}"));
        builder = builder
            .site(&format!("b{i}"), p)
            .host(&format!("hb{i}"), &format!("b{i}"));
    }
    let lab = builder.build().unwrap();
    let mut grid = String::from("pair (real nftables NAT)                    expect  got     tiers (a / b)                       to direct\n");
    let mut wrong = Vec::new();
    for (i, a) in Preset::ALL.into_iter().enumerate() {
        for (j, b) in Preset::ALL.into_iter().enumerate() {
            let port = 42000 + (i * 7 + j) as u16;
            let (da, db, start) = run_pair(&lab, &format!("ha{i}"), &format!("hb{j}"), port);
            let direct = da.is_some() && db.is_some();
            let (want, why) = expected(a, b);
            let name = |d: Reached| d.map_or("relay".to_string(), |d| d.1.name().to_string());
            let to_direct = da
                .zip(db)
                .map(|(x, y)| x.0.max(y.0).saturating_duration_since(start));
            grid.push_str(&format!(
                "{:<43} {:<7} {:<7} {:<35} {}\n",
                format!("{a} x {b}"),
                if want { "direct" } else { "relay" },
                if direct { "direct" } else { "relay" },
                format!("{} / {}", name(da), name(db)),
                to_direct.map_or("-".into(), |d| format!("{} ms", d.as_millis())),
            ));
            if direct != want {
                wrong.push(format!(
                    "{a} x {b}: expected {} ({why})",
                    if want { "direct" } else { "relay" }
                ));
            }
        }
    }
    println!("{grid}");
    assert!(wrong.is_empty(), "{}\n{grid}", wrong.join("\n"));
}
