//! Topology: a subnet behind a plain router, a multi-homed host, NATs nested three deep.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use netsim::trace::{DropReason, TraceKind};
use netsim::{Datagram, HostId, LinkConfig, LinkRef, NatConfig, Output, Preset, Sim, SimTime};

fn link(ms: u64) -> LinkConfig {
    LinkConfig::with_latency(Duration::from_millis(ms))
}

fn recv(sim: &mut Sim, host: HostId) -> Option<Datagram> {
    let deadline = sim.now() + Duration::from_secs(1);
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
fn subnet_behind_a_router_is_routed_without_translation() {
    let mut sim = Sim::new(1);
    let inet = sim.internet();
    let dc = sim
        .add_router("dc", inet, Ipv4Addr::new(203, 0, 113, 64), 26, link(10))
        .unwrap();
    let subnet = sim.router_inside(dc).unwrap();
    let server_ip = Ipv4Addr::new(203, 0, 113, 70);
    let server = sim.add_host("server", subnet, server_ip, link(1)).unwrap();
    let client = sim
        .add_site(
            "c",
            Preset::PortRestrictedCone,
            inet,
            [198, 51, 100, 1].into(),
            [10, 0, 0, 2].into(),
            link(5),
        )
        .unwrap()
        .host;
    let t0 = sim.now();
    sim.send(client, 5000, SocketAddr::from((server_ip, 80)), &b"GET"[..])
        .unwrap();
    let d = recv(&mut sim, server).unwrap();
    assert_eq!(d.from, SocketAddr::from(([198, 51, 100, 1], 5000)));
    // client link 5 + NAT uplink 5 + router link 10 + server link 1 (each crossed once).
    assert_eq!(d.at - t0, Duration::from_millis(21));
    sim.send(server, 80, d.from, &b"200"[..]).unwrap();
    assert!(recv(&mut sim, client).is_some());
    let on_subnet = sim
        .trace()
        .iter()
        .filter(|e| e.kind == TraceKind::OnNetwork(subnet))
        .count();
    assert_eq!(on_subnet, 2);

    // Outside the prefix, nothing answers; cut the router link and the subnet is gone.
    sim.send(client, 5000, "203.0.113.200:80".parse().unwrap(), &b"x"[..])
        .unwrap();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        sim.trace().last().map(|e| e.kind),
        Some(TraceKind::Dropped(DropReason::NoRoute))
    );
    sim.set_link_up(LinkRef::Router(dc), false).unwrap();
    sim.send(client, 5000, SocketAddr::from((server_ip, 80)), &b"GET"[..])
        .unwrap();
    assert!(recv(&mut sim, server).is_none());
}

#[test]
fn multi_homed_host_picks_the_interface_by_destination() {
    let mut sim = Sim::new(2);
    let inet = sim.internet();
    let cfg = NatConfig::preset(Preset::PortRestrictedCone).unwrap();
    let nat = sim
        .add_nat("home", inet, [198, 51, 100, 1].into(), cfg, link(5))
        .unwrap();
    let lan = sim.nat_inside(nat).unwrap();
    let laptop = sim
        .add_host("laptop", lan, [192, 168, 1, 5].into(), link(1))
        .unwrap();
    // A home server with a LAN leg and a public leg (say, an LTE modem).
    let server = sim
        .add_host("server", lan, [192, 168, 1, 2].into(), link(1))
        .unwrap();
    let idx = sim
        .add_interface(server, inet, [203, 0, 113, 50].into(), link(20))
        .unwrap();
    assert_eq!(idx, 1);
    let remote = sim
        .add_host("remote", inet, [203, 0, 113, 9].into(), link(1))
        .unwrap();
    assert_eq!(sim.host_addrs(server).len(), 2);

    sim.send(server, 7, "192.168.1.5:7".parse().unwrap(), &b"lan"[..])
        .unwrap();
    let d = recv(&mut sim, laptop).unwrap();
    assert_eq!(d.from, "192.168.1.2:7".parse().unwrap());

    sim.send(server, 7, "203.0.113.9:7".parse().unwrap(), &b"wan"[..])
        .unwrap();
    let d = recv(&mut sim, remote).unwrap();
    assert_eq!(
        d.from,
        "203.0.113.50:7".parse().unwrap(),
        "leaves by the public leg"
    );

    // The laptop reaches the server's public leg through the home NAT.
    sim.send(laptop, 9000, "203.0.113.50:7".parse().unwrap(), &b"hi"[..])
        .unwrap();
    let d = recv(&mut sim, server).unwrap();
    assert_eq!(d.local, "203.0.113.50:7".parse().unwrap());
    assert_eq!(d.from, "198.51.100.1:9000".parse().unwrap());
}

#[test]
fn three_nested_nats_translate_three_times() {
    let mut sim = Sim::new(3);
    let inet = sim.internet();
    let server = sim
        .add_host("server", inet, [203, 0, 113, 1].into(), link(1))
        .unwrap();
    let cfg = || NatConfig::preset(Preset::FullCone).unwrap();
    let cgn = sim
        .add_nat("cgnat", inet, [198, 51, 100, 1].into(), cfg(), link(1))
        .unwrap();
    let carrier = sim.nat_inside(cgn).unwrap();
    let home = sim
        .add_nat("home", carrier, [100, 64, 0, 2].into(), cfg(), link(1))
        .unwrap();
    let home_lan = sim.nat_inside(home).unwrap();
    let travel = sim
        .add_nat(
            "travel-router",
            home_lan,
            [192, 168, 1, 2].into(),
            cfg(),
            link(1),
        )
        .unwrap();
    let travel_lan = sim.nat_inside(travel).unwrap();
    let host = sim
        .add_host("laptop", travel_lan, [192, 168, 1, 2].into(), link(1))
        .unwrap();
    sim.send(host, 4000, "203.0.113.1:7".parse().unwrap(), &b"x"[..])
        .unwrap();
    let d = recv(&mut sim, server).unwrap();
    assert_eq!(d.from.ip(), Ipv4Addr::new(198, 51, 100, 1));
    let outs = sim
        .trace()
        .iter()
        .filter(|e| matches!(e.kind, TraceKind::TranslatedOut(_)))
        .count();
    assert_eq!(outs, 3);
    sim.send(server, 7, d.from, &b"back"[..]).unwrap();
    let back = recv(&mut sim, host).unwrap();
    assert_eq!(back.local, "192.168.1.2:4000".parse().unwrap());
    assert!(sim.now() < SimTime::from_secs(1));
}
