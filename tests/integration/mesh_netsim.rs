//! The acceptance matrix with full daemons on netsim: every unordered pair of NAT
//! presets (both sides the production daemon: local API, router, QUIC sessions, STUN,
//! rendezvous, relay, hole punching), 20–100 ms links with 1% loss. Every pair's agents
//! reach each other; the path ends direct exactly where the oracle of the traversal
//! matrix (`punch_matrix::expected`) says the physics allows. Prints the grid: pair →
//! tier, time to first response, time to direct.
//!
//! `udp_blocked` is not in this matrix: netsim carries only UDP, and a UDP-blocked
//! daemon reaches the rendezvous and relay over TCP/TLS. The netns matrix covers it.
//!
//! Also a fault: the relay stops while paths are direct, and nothing is noticed.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use agentmesh::cli::sample_agents::spawn_agent;
use agentmesh::cli::Client;
use agentmesh::simworld::{SiteSpec, World};
use netsim::Preset;
use serde_json::{json, Value};

use crate::punch_matrix::{expected, expected_tier};

/// (caller daemon, callee daemon), indices into the world's daemons.
type Job = (usize, usize);

/// The presets of the matrix (all but `udp_blocked`, see the module comment).
fn presets() -> Vec<Preset> {
    Preset::ALL
        .into_iter()
        .filter(|p| *p != Preset::UdpBlocked)
        .collect()
}

/// Two daemons per preset, so same-preset pairs exist.
fn sites() -> Vec<SiteSpec> {
    let mut out = Vec::new();
    for (i, p) in presets().into_iter().enumerate() {
        for k in 0..2u8 {
            let n = (i * 2) as u8 + k;
            out.push(SiteSpec {
                name: format!("{p}-{k}"),
                preset: p,
                public_ip: if k == 0 {
                    Ipv4Addr::new(203, 0, 113, 100 + n)
                } else {
                    Ipv4Addr::new(198, 51, 100, 100 + n)
                },
                latency: Duration::from_millis(20 + (u64::from(n) * 37) % 81),
                loss: 0.01,
            });
        }
    }
    out
}

struct Cell {
    pair: String,
    want_direct: bool,
    want_tier: Option<&'static str>,
    why: &'static str,
    path: String,
    tier: String,
    first: Duration,
    to_direct: Option<Duration>,
    /// Round trip between the two hosts: each site is two links (host–NAT, NAT–internet)
    /// of its latency, each way.
    rtt: Duration,
    /// Whether the callee's relay link was up when the request left: if not, the relay
    /// drops the handshake ("peer not connected") and only a direct path can carry it.
    callee_relay_up: bool,
}

/// Whether the daemon at `socket` has its relay link connected.
async fn relay_up(socket: &std::path::Path) -> bool {
    let Ok(mut c) = Client::connect(socket).await else {
        return false;
    };
    let st = c.call("status", json!({})).await.unwrap_or_default();
    st["net"]["relay"]["connected"] == json!(true)
}

/// How many extra sockets (doors) the daemon at `socket` has open.
async fn doors_open(socket: &std::path::Path) -> u64 {
    let Ok(mut c) = Client::connect(socket).await else {
        return 0;
    };
    let st = c.call("status", json!({})).await.unwrap_or_default();
    st["net"]["socket"]["doors_open"].as_u64().unwrap_or(0)
}

async fn agent_id(c: &mut Client, site: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .call(
                "discover",
                json!({"query": {"capabilities": [format!("at-{site}")]}}),
            )
            .await;
        if let Ok(v) = &r {
            if let Some(id) = v["agents"][0]["id"].as_str() {
                return json!(id);
            }
        }
        assert!(
            Instant::now() < deadline,
            "agent at {site} never discovered: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn peer_path(c: &mut Client, node: &str) -> (String, String) {
    let st = c.call("status", json!({})).await.unwrap_or_default();
    let peers = st["net"]["peers"].as_array().cloned().unwrap_or_default();
    peers
        .iter()
        .find(|p| p["node"] == node)
        .map_or(("none".into(), "-".into()), |p| {
            (
                p["path"].as_str().unwrap_or("?").to_string(),
                p["tier"].as_str().unwrap_or("?").to_string(),
            )
        })
}

async fn echo(c: &mut Client, me: &Value, to: &Value) -> Result<(), String> {
    match c
        .call(
            "request",
            json!({"from": me, "to": to, "skill": "echo", "input": "x", "timeout_ms": 20000}),
        )
        .await
    {
        Ok(r) if r["state"] == "completed" => Ok(()),
        Ok(r) => Err(r.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn run_pair(world: &World, a: usize, b: usize) -> Cell {
    let (da, db) = (&world.daemons[a], &world.daemons[b]);
    let (want_direct, why) = expected(da.preset, db.preset);
    let lat = |name: &str| {
        sites()
            .into_iter()
            .find(|s| s.name == name)
            .map_or(Duration::ZERO, |s| s.latency)
    };
    let rtt = (lat(&da.name) + lat(&db.name)) * 4;
    let mut c = Client::connect(&da.socket).await.unwrap();
    let me = c
        .call(
            "register",
            json!({"manifest": {"name": format!("caller-{a}-{b}")}}),
        )
        .await
        .unwrap()["agent_id"]
        .clone();
    let to = agent_id(&mut c, &db.name).await;
    let callee_relay_up = relay_up(&db.socket).await;
    let start = Instant::now();
    if let Err(e) = echo(&mut c, &me, &to).await {
        panic!("{} → {}: request failed: {e}", da.name, db.name);
    }
    let first = start.elapsed();
    let node = db.node_id.to_string();
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut to_direct = None;
    let (path, tier) = loop {
        let (path, tier) = peer_path(&mut c, &node).await;
        if path == "direct" {
            to_direct = Some(start.elapsed());
            break (path, tier);
        }
        if Instant::now() >= deadline {
            break (path, tier);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Still answering on whatever path it settled on.
    if let Err(e) = echo(&mut c, &me, &to).await {
        panic!("{} → {}: second request failed: {e}", da.name, db.name);
    }
    Cell {
        pair: format!("{} x {}", da.preset, db.preset),
        want_direct,
        want_tier: expected_tier(da.preset, db.preset),
        why,
        path,
        tier,
        first,
        to_direct,
        rtt,
        callee_relay_up,
    }
}

/// Logs to stderr when `AGENTMESH_TEST_LOG` holds a tracing filter (e.g.
/// `quinn_proto=debug,agentmesh::net=debug`), to see why one pair was slow.
fn init_log() {
    if let Ok(filter) = std::env::var("AGENTMESH_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preset_pair_of_full_daemons_connects_and_goes_direct_where_possible() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let sites = sites();
    let mut world = World::start(dir.path(), &sites, 4787).await.unwrap();
    for d in &world.daemons {
        spawn_agent(
            &d.socket,
            &format!("echo-{}", d.name),
            json!([format!("at-{}", d.name)]),
            json!([{"id": "echo", "name": "Echo"}]),
        )
        .await
        .unwrap();
    }
    // Cold start is measured on a ready mesh: every daemon's relay link up. (A request to
    // a daemon whose link is still coming up loses its handshake at the relay, "peer not
    // connected", and waits for the direct path; that case is shown by the last column.)
    let ready = Instant::now();
    let mut waited = Vec::new();
    for d in &world.daemons {
        while !relay_up(&d.socket).await && ready.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        waited.push(format!(
            "{} ({}) {} ms",
            d.name,
            d.node_id.short(),
            ready.elapsed().as_millis()
        ));
    }
    eprintln!("relay links up: {}", waited.join(", "));
    let n = presets().len();
    let mut jobs = Vec::new();
    for i in 0..n {
        for j in i..n {
            // First daemon of preset i calls the second daemon of preset j.
            jobs.push((i * 2, j * 2 + 1));
        }
    }
    // Pairs with a sequential symmetric NAT run one at a time, port-restricted first:
    // port prediction guesses the next ports its NAT hands out, and concurrent punches by
    // the same daemon towards other peers would take them first (with them concurrent,
    // port-restricted x sequential stays relayed).
    let seq = |k: usize| world.daemons[k].preset == Preset::SymmetricSequential;
    let (mut serial, parallel): (Vec<Job>, Vec<Job>) =
        jobs.iter().partition(|(a, b)| seq(*a) || seq(*b));
    serial.sort_by_key(|(a, _)| world.daemons[*a].preset != Preset::PortRestrictedCone);
    let world_ref = &world;
    let mut cells =
        futures::future::join_all(parallel.iter().map(|&(a, b)| run_pair(world_ref, a, b))).await;
    for &(a, b) in &serial {
        cells.push(run_pair(world_ref, a, b).await);
    }
    let jobs: Vec<Job> = parallel.into_iter().chain(serial).collect();

    let mut grid = String::from(
        "pair                                        expect  got     tier               first     to direct   rtt    first/rtt direct/rtt callee relay\n",
    );
    let mut wrong = Vec::new();
    for c in &cells {
        let got_direct = c.path == "direct";
        let in_rtts = |d: Duration| d.as_secs_f64() / c.rtt.as_secs_f64().max(1e-9);
        grid.push_str(&format!(
            "{:<43} {:<7} {:<7} {:<18} {:>6} ms {:>9} {:>4} ms {:>9.1} {:>10} {}\n",
            c.pair,
            if c.want_direct { "direct" } else { "relay" },
            c.path,
            c.tier,
            c.first.as_millis(),
            c.to_direct
                .map_or("-".into(), |d| format!("{} ms", d.as_millis())),
            c.rtt.as_millis(),
            in_rtts(c.first),
            c.to_direct
                .map_or("-".into(), |d| format!("{:.1}", in_rtts(d))),
            if c.callee_relay_up { "up" } else { "down" },
        ));
        if let Some(tier) = c.want_tier.filter(|t| got_direct && *t != c.tier) {
            wrong.push(format!(
                "{}: direct, but on {} instead of {tier}",
                c.pair, c.tier
            ));
        }
        if got_direct != c.want_direct {
            wrong.push(format!(
                "{}: expected {} ({})",
                c.pair,
                if c.want_direct { "direct" } else { "relay" },
                c.why
            ));
        }
    }
    eprintln!("{grid}");

    // Bounded resources: each many-port path keeps exactly one door on its hard side;
    // every other door (losers, and attempts that ended) is closed.
    let many_port = cells
        .iter()
        .filter(|c| c.tier == "direct-many-port")
        .count() as u64;
    let mut doors = 0;
    for d in &world.daemons {
        doors += doors_open(&d.socket).await;
    }
    eprintln!("doors open after the matrix: {doors} (many-port paths: {many_port})");
    if doors != many_port {
        wrong.push(format!(
            "{doors} doors open for {many_port} many-port paths (one each expected)"
        ));
    }

    // Fault: the relay goes away while direct paths carry the sessions; nothing notices.
    world.stop_relay().await;
    let direct_pair = cells.iter().position(|c| c.path == "direct");
    if let Some(k) = direct_pair {
        let (a, b) = jobs[k];
        let (da, db) = (&world.daemons[a], &world.daemons[b]);
        let mut c = Client::connect(&da.socket).await.unwrap();
        let me = c
            .call("register", json!({"manifest": {"name": "after-relay"}}))
            .await
            .unwrap()["agent_id"]
            .clone();
        let to = agent_id(&mut c, &db.name).await;
        for _ in 0..10 {
            echo(&mut c, &me, &to)
                .await
                .expect("a direct session must not need the relay");
        }
    }
    world.shutdown().await;
    assert!(direct_pair.is_some(), "no pair went direct");
    assert!(
        wrong.is_empty(),
        "cells disagree with the oracle:\n{}\n{grid}",
        wrong.join("\n")
    );
}

/// Fault: the NAT of one side reboots (mappings gone, a new public address) while
/// requests flow on a direct path. The path falls back to the relay within seconds (keepalive misses; the relay
/// link says hello again from the new mapping), and no request is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nat_reboot_mid_traffic_recovers_within_five_seconds_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let site = |name: &str, preset, ip: [u8; 4]| SiteSpec {
        name: name.into(),
        preset,
        public_ip: Ipv4Addr::from(ip),
        latency: Duration::from_millis(20),
        loss: 0.0,
    };
    let sites = [
        site("a", Preset::FullCone, [203, 0, 113, 150]),
        site("b", Preset::PortRestrictedCone, [198, 51, 100, 150]),
    ];
    let world = World::start(dir.path(), &sites, 99).await.unwrap();
    spawn_agent(
        &world.daemons[1].socket,
        "echo-b",
        json!(["at-b"]),
        json!([{"id": "echo", "name": "Echo"}]),
    )
    .await
    .unwrap();
    let mut c = Client::connect(&world.daemons[0].socket).await.unwrap();
    let me = c
        .call("register", json!({"manifest": {"name": "caller"}}))
        .await
        .unwrap()["agent_id"]
        .clone();
    let to = agent_id(&mut c, "b").await;
    echo(&mut c, &me, &to).await.unwrap();
    let node_b = world.daemons[1].node_id.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer_path(&mut c, &node_b).await.0 != "direct" {
        assert!(Instant::now() < deadline, "never direct before the fault");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nat = world.daemons[0].nat.expect("a is behind a NAT");
    let mut completions = Vec::new();
    let mut rebooted_at = None;
    for i in 0..80u32 {
        if i == 10 {
            // The router reboots and its uplink comes back with another address.
            world
                .net
                .with(|sim| {
                    sim.reboot_nat(nat)?;
                    sim.set_nat_external_ip(nat, Ipv4Addr::new(203, 0, 113, 151))
                })
                .unwrap();
            rebooted_at = Some(Instant::now());
        }
        let r = c
            .call(
                "request",
                json!({"from": me, "to": to, "skill": "echo", "input": i, "timeout_ms": 20000}),
            )
            .await
            .unwrap();
        assert_eq!(r["state"], "completed", "request {i} lost: {r}");
        assert_eq!(r["output"]["text"], json!(i.to_string()), "{r}");
        completions.push(Instant::now());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rebooted_at = rebooted_at.unwrap();
    let worst_gap = completions
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap();
    let (path, tier) = peer_path(&mut c, &node_b).await;
    eprintln!(
        "NAT reboot: worst gap between responses {worst_gap:?}; 80 requests done {:?} after the reboot; now {path} ({tier})",
        completions.last().unwrap().duration_since(rebooted_at)
    );
    world.shutdown().await;
    assert!(
        worst_gap < Duration::from_secs(5),
        "recovery took {worst_gap:?}"
    );
}
