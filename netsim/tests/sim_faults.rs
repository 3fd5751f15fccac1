//! Faults (NAT reboot, address change, crash, link cut) and introspection (mapping
//! tables, trace, pcap export).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use netsim::nat::NatDrop;
use netsim::trace::{DropReason, TraceKind};
use netsim::{HostId, LinkConfig, LinkRef, Output, Preset, SendError, Sim, SimTime};

const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn link() -> LinkConfig {
    LinkConfig::with_latency(Duration::from_millis(5))
}

struct World {
    sim: Sim,
    server: HostId,
    client: HostId,
    nat: netsim::NatId,
}

fn world(preset: Preset) -> World {
    let mut sim = Sim::new(11);
    let inet = sim.internet();
    let server = sim.add_host("server", inet, SERVER, link()).unwrap();
    let site = sim
        .add_site(
            "client",
            preset,
            inet,
            [198, 51, 100, 7].into(),
            [192, 168, 0, 9].into(),
            link(),
        )
        .unwrap();
    World {
        sim,
        server,
        client: site.host,
        nat: site.nat.unwrap(),
    }
}

fn recv(sim: &mut Sim, host: HostId) -> Option<netsim::Datagram> {
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

fn last_drop(sim: &Sim) -> Option<DropReason> {
    sim.trace().iter().rev().find_map(|e| match e.kind {
        TraceKind::Dropped(r) => Some(r),
        _ => None,
    })
}

impl World {
    fn ping(&mut self) -> SocketAddr {
        self.sim
            .send(
                self.client,
                5000,
                SocketAddr::from((SERVER, 7)),
                &b"ping"[..],
            )
            .unwrap();
        recv(&mut self.sim, self.server).unwrap().from
    }

    fn reply_arrives(&mut self, to: SocketAddr) -> bool {
        self.sim.send(self.server, 7, to, &b"pong"[..]).unwrap();
        recv(&mut self.sim, self.client).is_some()
    }
}

#[test]
fn nat_reboot_flushes_mappings() {
    let mut w = world(Preset::Symmetric);
    let public = w.ping();
    assert_eq!(w.sim.nat_mappings(w.nat).len(), 1);
    w.sim.reboot_nat(w.nat).unwrap();
    assert!(w.sim.nat_mappings(w.nat).is_empty());
    assert!(!w.reply_arrives(public));
    assert_eq!(last_drop(&w.sim), Some(DropReason::Nat(NatDrop::NoMapping)));
    let again = w.ping();
    assert_ne!(
        again, public,
        "a random-port NAT picks a new port after reboot"
    );
    assert!(w.reply_arrives(again));
}

#[test]
fn address_changes_are_seen_and_old_addresses_die() {
    let mut w = world(Preset::FullCone);
    let before = w.ping();
    w.sim
        .set_nat_external_ip(w.nat, [198, 51, 100, 8].into())
        .unwrap();
    assert!(!w.reply_arrives(before));
    assert_eq!(last_drop(&w.sim), Some(DropReason::NoRoute));
    let after = w.ping();
    assert_eq!(after.ip(), Ipv4Addr::new(198, 51, 100, 8));

    let old = w
        .sim
        .set_host_ip(w.client, 0, [192, 168, 0, 10].into())
        .unwrap();
    assert_eq!(old, Ipv4Addr::new(192, 168, 0, 9));
    let mappings = w.sim.nat_mappings(w.nat);
    w.ping();
    let newer = w.sim.nat_mappings(w.nat);
    assert_eq!(
        newer.len(),
        mappings.len() + 1,
        "a new inside address, a new mapping"
    );
}

#[test]
fn crashed_host_neither_sends_nor_receives_nor_fires_timers() {
    let mut w = world(Preset::FullCone);
    let public = w.ping();
    w.sim.set_timer(w.client, SimTime::from_secs(30), 1);
    w.sim.crash_host(w.client).unwrap();
    assert_eq!(
        w.sim
            .send(w.client, 5000, SocketAddr::from((SERVER, 7)), &b"x"[..]),
        Err(SendError::HostDown(w.client))
    );
    assert!(!w.reply_arrives(public));
    assert_eq!(last_drop(&w.sim), Some(DropReason::NodeDown));
    w.sim.restart_host(w.client).unwrap();
    w.sim.set_timer(w.client, SimTime::from_secs(40), 2);
    w.sim.run_until(SimTime::from_secs(60));
    let timers: Vec<u64> = std::iter::from_fn(|| w.sim.poll_output())
        .filter_map(|o| match o {
            Output::Timer { token, .. } => Some(token),
            Output::Datagram(_) => None,
        })
        .collect();
    assert_eq!(timers, vec![2], "the timer set before the crash is void");
    assert!(w.reply_arrives(public));
}

#[test]
fn cut_links_drop_until_restored() {
    let mut w = world(Preset::FullCone);
    let public = w.ping();
    w.sim.set_link_up(LinkRef::Nat(w.nat), false).unwrap();
    assert!(!w.reply_arrives(public));
    assert_eq!(last_drop(&w.sim), Some(DropReason::LinkDown));
    w.sim.set_link_up(LinkRef::Nat(w.nat), true).unwrap();
    assert!(w.reply_arrives(public));
    let host_link = LinkRef::Host {
        host: w.client,
        iface: 0,
    };
    w.sim.set_link_up(host_link, false).unwrap();
    assert!(!w.reply_arrives(public));
    w.sim.set_link_up(host_link, true).unwrap();
    assert!(w.reply_arrives(public));
}

#[test]
fn trace_tells_the_path_and_pcap_exports_it() {
    let mut w = world(Preset::PortRestrictedCone);
    w.sim.enable_capture();
    let public = w.ping();
    assert!(w.reply_arrives(public));
    let kinds: Vec<TraceKind> = w.sim.trace().iter().map(|e| e.kind).collect();
    let inet = w.sim.internet();
    let lan = w.sim.nat_inside(w.nat).unwrap();
    assert_eq!(
        kinds,
        vec![
            TraceKind::Sent(w.client),
            TraceKind::OnNetwork(lan),
            TraceKind::TranslatedOut(w.nat),
            TraceKind::OnNetwork(inet),
            TraceKind::Delivered(w.server),
            TraceKind::Sent(w.server),
            TraceKind::OnNetwork(inet),
            TraceKind::TranslatedIn(w.nat),
            TraceKind::OnNetwork(lan),
            TraceKind::Delivered(w.client),
        ]
    );
    // Each packet is captured on both sides of the NAT.
    let cap = w.sim.captured();
    assert_eq!(cap.len(), 4);
    assert_eq!(cap[0].src, "192.168.0.9:5000".parse().unwrap());
    assert_eq!(cap[1].src, "198.51.100.7:5000".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.pcap");
    netsim::pcap::write_pcap(std::fs::File::create(&path).unwrap(), cap).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 24 + 4 * (16 + 28 + 4));
    if let Ok(out) = std::process::Command::new("tcpdump")
        .arg("-nr")
        .arg(&path)
        .output()
    {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(text.lines().count(), 4, "{text}");
            assert!(
                text.contains("192.168.0.9.5000 > 203.0.113.1.7: UDP, length 4"),
                "{text}"
            );
        }
    }
}
