//! Determinism: the same seed gives the same run, packet for packet, even with jitter,
//! bursty loss, reordering, duplication, random NAT ports and crossing traffic.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use netsim::rng::SimRng;
use netsim::trace::{digest, TraceEntry};
use netsim::{LinkConfig, Loss, Output, Preset, Sim, SimTime};

fn messy_link() -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(15),
        loss: Loss::GilbertElliott {
            p_good_to_bad: 0.05,
            p_bad_to_good: 0.3,
            loss_good: 0.01,
            loss_bad: 0.5,
        },
        reorder: 0.1,
        reorder_delay: Duration::from_millis(30),
        duplicate: 0.05,
        mtu: 1400,
    }
}

/// Hosts behind every preset talk to two servers and to each other at random moments;
/// servers echo. Returns the trace and the delivered outputs in order.
fn run(seed: u64) -> (Vec<TraceEntry>, Vec<Output>) {
    let mut sim = Sim::new(seed);
    let inet = sim.internet();
    let servers: Vec<SocketAddr> = vec![
        SocketAddr::from(([203, 0, 113, 1], 3478)),
        SocketAddr::from(([198, 51, 100, 1], 3478)),
    ];
    let mut server_ids = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let SocketAddr::V4(v4) = s else {
            unreachable!()
        };
        server_ids.push(
            sim.add_host(&format!("s{i}"), inet, *v4.ip(), messy_link())
                .unwrap(),
        );
    }
    let mut hosts = Vec::new();
    for (i, p) in Preset::ALL.into_iter().cycle().take(14).enumerate() {
        let public = Ipv4Addr::new(203, 0, 113, 100 + i as u8);
        let site = sim
            .add_site(
                &format!("h{i}"),
                p,
                inet,
                public,
                Ipv4Addr::new(10, 0, 0, 2),
                messy_link(),
            )
            .unwrap();
        hosts.push(site.host);
    }
    let mut traffic = SimRng::new(seed ^ 0xABCD);
    let mut outputs = Vec::new();
    for round in 0..200u64 {
        let h = hosts[traffic.below(hosts.len() as u64) as usize];
        let to = servers[traffic.below(2) as usize];
        let size = 20 + traffic.below(1500) as usize; // some exceed the MTU
        let port = 4000 + traffic.below(3) as u16;
        sim.send(h, port, to, vec![round as u8; size]).unwrap();
        sim.run_until(SimTime::from_millis(round * 7));
        while let Some(o) = sim.poll_output() {
            if let Output::Datagram(d) = &o {
                if server_ids.contains(&d.host) {
                    sim.send(d.host, d.local.port(), d.from, d.data.clone())
                        .unwrap();
                }
            }
            outputs.push(o);
        }
    }
    sim.run_for(Duration::from_secs(5));
    outputs.extend(std::iter::from_fn(|| sim.poll_output()));
    (sim.trace().to_vec(), outputs)
}

#[test]
fn same_seed_same_packet_trace() {
    let (t1, o1) = run(42);
    let (t2, o2) = run(42);
    assert!(t1.len() > 1000, "trace has {} entries", t1.len());
    assert_eq!(t1, t2);
    assert_eq!(o1, o2);
    assert_eq!(digest(&t1), digest(&t2));
    let (t3, _) = run(43);
    assert_ne!(digest(&t1), digest(&t3), "another seed, another run");
}

#[test]
fn the_run_exercises_every_link_effect() {
    use netsim::trace::{DropReason, TraceKind};
    let (t, o) = run(7);
    let has = |k: TraceKind| t.iter().any(|e| e.kind == k);
    assert!(has(TraceKind::Dropped(DropReason::Loss)));
    assert!(has(TraceKind::Dropped(DropReason::TooBig)));
    assert!(has(TraceKind::Duplicated));
    assert!(t
        .iter()
        .any(|e| matches!(e.kind, TraceKind::Dropped(DropReason::Nat(_)))));
    assert!(o.iter().any(|o| matches!(o, Output::Datagram(_))));
}
