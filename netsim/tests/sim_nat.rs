//! Simulated NATs behave as their RFC 4787 class says: STUN-style probes per preset,
//! nested NAT behind a CGNAT, overlapping private address space, hairpinning, hole
//! punching, mapping timeouts.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use netsim::classify::ProbeOutcome;
use netsim::probe::{probe_nat, ProbeServers};
use netsim::trace::{DropReason, TraceKind};
use netsim::{Filtering, HostId, LinkConfig, Mapping, NatConfig, Output, Preset, Sim, SimTime};

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
const PRIVATE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

fn lan() -> LinkConfig {
    LinkConfig::with_latency(Duration::from_millis(2))
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Runs until `host` receives a datagram (answering nothing), or `limit` passes.
fn recv(sim: &mut Sim, host: HostId, limit: Duration) -> Option<netsim::Datagram> {
    let deadline = sim.now() + limit;
    while let Some(o) = sim.next_output(deadline) {
        if let Output::Datagram(d) = o {
            if d.host == host {
                return Some(d);
            }
        }
    }
    None
}

#[test]
fn every_preset_classifies_as_its_class() {
    for preset in Preset::ALL {
        let mut sim = Sim::new(1);
        let servers = ProbeServers::install(&mut sim).unwrap();
        let inet = sim.internet();
        let site = sim
            .add_site("client", preset, inet, PUBLIC, PRIVATE, lan())
            .unwrap();
        let got = probe_nat(&mut sim, site.host, 40_000, servers).unwrap();
        match preset {
            Preset::Open => assert_eq!(got, ProbeOutcome::NoNat),
            Preset::UdpBlocked => assert_eq!(got, ProbeOutcome::NoUdp),
            _ => assert_eq!(got.class(), preset.class(), "{preset}"),
        }
    }
}

#[test]
fn address_dependent_mapping_is_seen_too() {
    let mut sim = Sim::new(2);
    let servers = ProbeServers::install(&mut sim).unwrap();
    let inet = sim.internet();
    let cfg = NatConfig::new(Mapping::AddressDependent, Filtering::AddressDependent);
    let nat = sim.add_nat("nat", inet, PUBLIC, cfg, lan()).unwrap();
    let inside = sim.nat_inside(nat).unwrap();
    let host = sim.add_host("client", inside, PRIVATE, lan()).unwrap();
    let got = probe_nat(&mut sim, host, 40_000, servers).unwrap();
    assert_eq!(
        got,
        ProbeOutcome::Nat(Mapping::AddressDependent, Filtering::AddressDependent)
    );
}

#[test]
fn nested_nat_behind_cgnat() {
    let mut sim = Sim::new(3);
    let servers = ProbeServers::install(&mut sim).unwrap();
    let inet = sim.internet();
    let cgn_cfg = NatConfig::preset(Preset::PortRestrictedCone).unwrap();
    let cgn = sim.add_nat("cgnat", inet, PUBLIC, cgn_cfg, lan()).unwrap();
    let carrier = sim.nat_inside(cgn).unwrap();
    let home = sim
        .add_site(
            "alice",
            Preset::FullCone,
            carrier,
            Ipv4Addr::new(100, 64, 0, 2),
            PRIVATE,
            lan(),
        )
        .unwrap();
    let got = probe_nat(&mut sim, home.host, 40_000, servers).unwrap();
    // A full cone behind a port-restricted CGNAT filters like the CGNAT.
    assert_eq!(
        got,
        ProbeOutcome::Nat(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent
        )
    );
    let home_nat = home.nat.unwrap();
    let inner = sim.nat_mappings(home_nat);
    let outer = sim.nat_mappings(cgn);
    assert_eq!(inner[0].internal, "192.168.1.2:40000".parse().unwrap());
    assert_eq!(*inner[0].external.ip(), Ipv4Addr::new(100, 64, 0, 2));
    assert_eq!(outer[0].internal, inner[0].external);
    assert_eq!(*outer[0].external.ip(), PUBLIC);
}

#[test]
fn overlapping_private_addresses_stay_apart() {
    let mut sim = Sim::new(4);
    let inet = sim.internet();
    let server_ip = Ipv4Addr::new(203, 0, 113, 1);
    let server = sim.add_host("server", inet, server_ip, lan()).unwrap();
    let mut clients = Vec::new();
    for (i, public) in [[198, 51, 100, 1], [198, 51, 100, 2]]
        .into_iter()
        .enumerate()
    {
        let site = sim
            .add_site(
                &format!("c{i}"),
                Preset::PortRestrictedCone,
                inet,
                public.into(),
                PRIVATE,
                lan(),
            )
            .unwrap();
        clients.push(site.host);
    }
    for (i, c) in clients.iter().enumerate() {
        sim.send(*c, 5000, sa(server_ip, 7), vec![i as u8]).unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = recv(&mut sim, server, Duration::from_secs(1)).unwrap();
        seen.push((d.from, d.data[0]));
    }
    assert_ne!(seen[0].0, seen[1].0);
    // Replies go back to the right host, though both are 192.168.1.2:5000 inside.
    for (from, tag) in &seen {
        sim.send(server, 7, *from, vec![*tag]).unwrap();
    }
    for _ in 0..2 {
        let d = sim_next_datagram(&mut sim);
        assert_eq!(clients[d.data[0] as usize], d.host);
        assert_eq!(d.local, sa(PRIVATE, 5000));
    }
}

fn sim_next_datagram(sim: &mut Sim) -> netsim::Datagram {
    let deadline = sim.now() + Duration::from_secs(1);
    loop {
        match sim.next_output(deadline) {
            Some(Output::Datagram(d)) => return d,
            Some(_) => continue,
            None => panic!("no datagram"),
        }
    }
}

#[test]
fn hairpinning_on_and_off() {
    for hairpin in [true, false] {
        let mut sim = Sim::new(5);
        let inet = sim.internet();
        let server = sim
            .add_host("server", inet, Ipv4Addr::new(203, 0, 113, 1), lan())
            .unwrap();
        let cfg = NatConfig::preset(Preset::FullCone)
            .unwrap()
            .with_hairpin(hairpin);
        let nat = sim.add_nat("nat", inet, PUBLIC, cfg, lan()).unwrap();
        let lan_net = sim.nat_inside(nat).unwrap();
        let a = sim
            .add_host("a", lan_net, Ipv4Addr::new(192, 168, 1, 2), lan())
            .unwrap();
        let b = sim
            .add_host("b", lan_net, Ipv4Addr::new(192, 168, 1, 3), lan())
            .unwrap();
        sim.send(b, 6000, sa(Ipv4Addr::new(203, 0, 113, 1), 7), &b"reg"[..])
            .unwrap();
        let b_public = recv(&mut sim, server, Duration::from_secs(1)).unwrap().from;
        sim.send(a, 5000, b_public, &b"hi"[..]).unwrap();
        let got = recv(&mut sim, b, Duration::from_secs(1));
        assert_eq!(got.is_some(), hairpin);
        if let Some(d) = got {
            assert_eq!(d.from, sa(PUBLIC, 5000), "b sees a's public endpoint");
        } else {
            let dropped = sim.trace().iter().any(|e| {
                e.kind == TraceKind::Dropped(DropReason::Nat(netsim::nat::NatDrop::HairpinDisabled))
            });
            assert!(dropped);
        }
    }
}

/// Both sides learn their public endpoint from a server, then send to each other at once.
fn punch(a_preset: Preset, b_preset: Preset, predict: bool) -> bool {
    let mut sim = Sim::new(6);
    let inet = sim.internet();
    let server_ip = Ipv4Addr::new(203, 0, 113, 1);
    let server = sim.add_host("server", inet, server_ip, lan()).unwrap();
    let a = sim
        .add_site(
            "a",
            a_preset,
            inet,
            [198, 51, 100, 1].into(),
            PRIVATE,
            lan(),
        )
        .unwrap()
        .host;
    let b = sim
        .add_site(
            "b",
            b_preset,
            inet,
            [198, 51, 100, 2].into(),
            PRIVATE,
            lan(),
        )
        .unwrap()
        .host;
    sim.send(a, 5000, sa(server_ip, 7), &b"a"[..]).unwrap();
    let Some(a_reg) = recv(&mut sim, server, Duration::from_secs(1)) else {
        return false; // a cannot even reach the server
    };
    let mut a_pub = a_reg.from;
    sim.send(b, 5000, sa(server_ip, 7), &b"b"[..]).unwrap();
    let Some(b_reg) = recv(&mut sim, server, Duration::from_secs(1)) else {
        return false;
    };
    let b_pub = b_reg.from;
    if predict {
        // A sequential symmetric NAT gives the next destination the next port.
        a_pub.set_port(a_pub.port() + 1);
    }
    // Each side answers to wherever the other's packets come from (peer-reflexive).
    let (mut a_to, mut b_to) = (b_pub, a_pub);
    let (mut a_got, mut b_got) = (false, false);
    for _ in 0..3 {
        sim.send(a, 5000, a_to, &b"punch"[..]).unwrap();
        sim.send(b, 5000, b_to, &b"punch"[..]).unwrap();
        sim.run_for(Duration::from_millis(100));
        while let Some(o) = sim.poll_output() {
            let Output::Datagram(d) = o else { continue };
            if d.host == a {
                (a_got, a_to) = (true, d.from);
            } else if d.host == b {
                (b_got, b_to) = (true, d.from);
            }
        }
    }
    a_got && b_got
}

/// Theory for a simple simultaneous punch (each side sends to the other's server-learned
/// endpoint, then answers wherever packets come from): two endpoint-independent mappings
/// always meet; an endpoint-dependent mapping meets only a peer whose filtering admits its
/// fresh port (open, full cone, restricted cone); UDP blocked never works.
fn punch_should_work(a: Preset, b: Preset) -> bool {
    use Preset::*;
    let eim = |p| matches!(p, Open | FullCone | RestrictedCone | PortRestrictedCone);
    let lenient = |p| matches!(p, Open | FullCone | RestrictedCone);
    let apdm = |p| matches!(p, Symmetric | SymmetricSequential);
    (eim(a) && eim(b)) || (apdm(a) && lenient(b)) || (lenient(a) && apdm(b))
}

#[test]
fn hole_punching_matrix_matches_theory() {
    let mut table = String::new();
    for a in Preset::ALL {
        for b in Preset::ALL {
            let got = punch(a, b, false);
            table.push_str(&format!("{a} x {b}: {got}\n"));
            assert_eq!(got, punch_should_work(a, b), "{a} x {b}\n{table}");
        }
    }
    // Port prediction beats a sequential symmetric NAT facing a port-restricted cone.
    assert!(!punch(
        Preset::SymmetricSequential,
        Preset::PortRestrictedCone,
        false
    ));
    assert!(punch(
        Preset::SymmetricSequential,
        Preset::PortRestrictedCone,
        true
    ));
}

#[test]
fn mappings_time_out_unless_kept_alive() {
    for keepalive in [false, true] {
        let mut sim = Sim::new(7);
        let inet = sim.internet();
        let server_ip = Ipv4Addr::new(203, 0, 113, 1);
        let server = sim.add_host("server", inet, server_ip, lan()).unwrap();
        let site = sim
            .add_site(
                "c",
                Preset::PortRestrictedCone,
                inet,
                PUBLIC,
                PRIVATE,
                lan(),
            )
            .unwrap();
        sim.send(site.host, 5000, sa(server_ip, 7), &b"hello"[..])
            .unwrap();
        let public = recv(&mut sim, server, Duration::from_secs(1)).unwrap().from;
        for i in 1..=6u64 {
            sim.run_until(SimTime::from_secs(i * 25));
            if keepalive {
                sim.send(site.host, 5000, sa(server_ip, 7), &b"ka"[..])
                    .unwrap();
            }
        }
        sim.run_for(Duration::from_secs(1));
        while sim.poll_output().is_some() {}
        sim.send(server, 7, public, &b"late"[..]).unwrap();
        assert_eq!(
            recv(&mut sim, site.host, Duration::from_secs(1)).is_some(),
            keepalive
        );
    }
}
