//! Benchmark: 10,000 hosts behind NATs (home NATs of every preset nested behind
//! carrier-grade NATs) keeping mappings alive and talking to two servers for two minutes
//! of virtual time. Prints a table and writes JSON to `target/bench/netsim.json`.
//!
//! `cargo run --release -p netsim --bin netsim-bench -- [--hosts N] [--out PATH]`

use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netsim::rng::SimRng;
use netsim::{HostId, LinkConfig, Loss, NatConfig, Output, Preset, Sim, SimTime};

const HOSTS_PER_CGNAT: usize = 250;
const KEEPALIVE: Duration = Duration::from_secs(25);
const SIMULATED: SimTime = SimTime::from_secs(120);

struct Args {
    hosts: usize,
    out: PathBuf,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        hosts: 10_000,
        out: workspace_root().join("target/bench/netsim.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hosts" => args.hosts = it.next().ok_or("--hosts needs a value")?.parse()?,
            "--out" => args.out = it.next().ok_or("--out needs a value")?.into(),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// The workspace root (the parent of this crate's directory).
fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

fn access_link(rng: &mut SimRng) -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(5 + rng.below(40)),
        jitter: Duration::from_millis(3),
        loss: Loss::Uniform(0.01),
        ..LinkConfig::default()
    }
}

/// The built world: servers (ids and endpoints) and hosts.
struct World {
    servers: Vec<HostId>,
    endpoints: Vec<SocketAddr>,
    hosts: Vec<HostId>,
}

/// Builds the world: two servers, `hosts` hosts in home sites of every preset, 250 per CGNAT.
fn build(sim: &mut Sim, hosts: usize) -> Result<World, Box<dyn Error>> {
    let inet = sim.internet();
    let mut rng = SimRng::new(99);
    let ips = [
        Ipv4Addr::new(203, 0, 113, 1),
        Ipv4Addr::new(198, 51, 100, 1),
    ];
    let mut w = World {
        servers: Vec::new(),
        endpoints: ips.iter().map(|ip| SocketAddr::from((*ip, 3478))).collect(),
        hosts: Vec::with_capacity(hosts),
    };
    for (i, ip) in ips.iter().enumerate() {
        w.servers
            .push(sim.add_host(&format!("server{i}"), inet, *ip, LinkConfig::default())?);
    }
    let mut carrier = inet;
    for i in 0..hosts {
        let cg = i / HOSTS_PER_CGNAT;
        if i % HOSTS_PER_CGNAT == 0 {
            let preset = [Preset::PortRestrictedCone, Preset::Symmetric][cg % 2];
            let cfg = NatConfig::preset(preset).ok_or("preset without NAT")?;
            let public = Ipv4Addr::new(203, 0, 113, 10 + (cg % 240) as u8);
            let nat = sim.add_nat(
                &format!("cgnat{cg}"),
                inet,
                public,
                cfg,
                access_link(&mut rng),
            )?;
            carrier = sim.nat_inside(nat)?;
        }
        let k = (i % HOSTS_PER_CGNAT) as u8 + 1;
        let preset = Preset::ALL[i % Preset::ALL.len()];
        let site = sim.add_site(
            &format!("h{i}"),
            preset,
            carrier,
            Ipv4Addr::new(100, 64, (cg % 256) as u8, k),
            Ipv4Addr::new(192, 168, 1, 2),
            access_link(&mut rng),
        )?;
        w.hosts.push(site.host);
    }
    Ok(w)
}

struct Counts {
    sent: u64,
    delivered_to_hosts: u64,
    echoed: u64,
}

/// Every host sends a binding request at a random moment in the first second, then a
/// keepalive every 25 s; servers echo each datagram to its source.
fn run(sim: &mut Sim, w: &World) -> Counts {
    let mut rng = SimRng::new(7);
    for (i, h) in w.hosts.iter().enumerate() {
        sim.set_timer(*h, SimTime::from_millis(rng.below(1000)), i as u64);
    }
    let mut c = Counts {
        sent: 0,
        delivered_to_hosts: 0,
        echoed: 0,
    };
    while let Some(out) = sim.next_output(SIMULATED) {
        match out {
            Output::Timer { host, token, at } => {
                let to = w.endpoints[(token % 2) as usize];
                if sim
                    .send(host, 40_000, to, &b"binding-request-or-keepalive"[..])
                    .is_ok()
                {
                    c.sent += 1;
                }
                sim.set_timer(host, at + KEEPALIVE, token);
            }
            Output::Datagram(d) if w.servers.contains(&d.host) => {
                if sim.send(d.host, d.local.port(), d.from, d.data).is_ok() {
                    c.echoed += 1;
                }
            }
            Output::Datagram(_) => c.delivered_to_hosts += 1,
        }
    }
    c
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let t0 = Instant::now();
    let mut sim = Sim::new(1);
    sim.set_tracing(false);
    let world = build(&mut sim, args.hosts)?;
    let hosts = &world.hosts;
    let build_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let c = run(&mut sim, &world);
    let run_s = t1.elapsed().as_secs_f64();
    let events = sim.events_processed();
    let rate = events as f64 / run_s.max(1e-9);
    let speedup = SIMULATED.since_start().as_secs_f64() / run_s.max(1e-9);
    println!(
        "netsim benchmark: {} hosts behind NATs ({} CGNATs), {} s simulated",
        hosts.len(),
        hosts.len().div_ceil(HOSTS_PER_CGNAT),
        SIMULATED.since_start().as_secs()
    );
    println!("| metric | value |\n|---|---|");
    println!("| build topology | {build_s:.3} s |");
    println!("| run (wall) | {run_s:.3} s |");
    println!("| events processed | {events} |");
    println!("| events per second | {rate:.0} |");
    println!("| datagrams sent by hosts | {} |", c.sent);
    println!("| echoed by servers | {} |", c.echoed);
    println!("| delivered back to hosts | {} |", c.delivered_to_hosts);
    println!("| virtual / wall time | {speedup:.0}x |");
    let json = format!(
        "{{\n  \"hosts\": {},\n  \"simulated_s\": {},\n  \"build_s\": {build_s:.4},\n  \"run_s\": {run_s:.4},\n  \"total_s\": {:.4},\n  \"events\": {events},\n  \"events_per_s\": {rate:.0},\n  \"sent\": {},\n  \"echoed\": {},\n  \"delivered\": {},\n  \"speedup\": {speedup:.1}\n}}\n",
        hosts.len(),
        SIMULATED.since_start().as_secs(),
        build_s + run_s,
        c.sent,
        c.echoed,
        c.delivered_to_hosts
    );
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, json)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
