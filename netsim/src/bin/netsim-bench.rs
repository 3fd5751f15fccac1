//! Benchmark: 10,000 hosts behind NATs (home NATs of every preset nested behind
//! carrier-grade NATs) keeping mappings alive and talking to two servers for two minutes
//! of virtual time, then 5,000 pairs punching holes to each other. Prints a table and
//! writes JSON to `target/bench/netsim.json`.
//!
//! `cargo run --release -p netsim --bin netsim-bench -- [--hosts N] [--out PATH]`

use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use netsim::rng::SimRng;
use netsim::{HostId, LinkConfig, Loss, NatConfig, Output, Preset, Sim, SimTime};

const HOSTS_PER_CGNAT: usize = 250;
const KEEPALIVE: Duration = Duration::from_secs(25);
const SIMULATED: SimTime = SimTime::from_secs(120);
const PORT: u16 = 40_000;

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
    /// Each host's public endpoint as the server saw it (indexed by `HostId::index`).
    public: Vec<Option<SocketAddr>>,
}

/// Every host sends a binding request at a random moment in the first second, then a
/// keepalive every 25 s; servers answer each datagram with the source they saw.
fn run(sim: &mut Sim, w: &World) -> Counts {
    let mut rng = SimRng::new(7);
    for (i, h) in w.hosts.iter().enumerate() {
        sim.set_timer(*h, SimTime::from_millis(rng.below(1000)), i as u64);
    }
    let mut c = Counts {
        sent: 0,
        delivered_to_hosts: 0,
        echoed: 0,
        public: vec![None; sim.host_count()],
    };
    while let Some(out) = sim.next_output(SIMULATED) {
        match out {
            Output::Timer { host, token, at } => {
                let to = w.endpoints[(token % 2) as usize];
                if sim.send(host, PORT, to, &b"binding-request"[..]).is_ok() {
                    c.sent += 1;
                }
                sim.set_timer(host, at + KEEPALIVE, token);
            }
            Output::Datagram(d) if w.servers.contains(&d.host) => {
                let seen = d.from.to_string().into_bytes();
                if sim.send(d.host, d.local.port(), d.from, seen).is_ok() {
                    c.echoed += 1;
                }
            }
            Output::Datagram(d) => {
                c.delivered_to_hosts += 1;
                let text = String::from_utf8_lossy(&d.data).into_owned();
                c.public[d.host.index()] = text.parse().ok();
            }
        }
    }
    c
}

/// Pairs host `i` with host `i + n/2` (another CGNAT); both send to each other's public
/// endpoint three times, 200 ms apart, answering wherever the peer's packets come from.
/// Returns (pairs, pairs where both sides heard the other).
fn punch_all(sim: &mut Sim, w: &World, public: &[Option<SocketAddr>]) -> (u64, u64) {
    let half = w.hosts.len() / 2;
    let mut target: IndexMap<HostId, SocketAddr> = IndexMap::new();
    let mut got = vec![false; sim.host_count()];
    for i in 0..half {
        let (a, b) = (w.hosts[i], w.hosts[i + half]);
        if let (Some(pa), Some(pb)) = (public[a.index()], public[b.index()]) {
            target.insert(a, pb);
            target.insert(b, pa);
        }
    }
    for _ in 0..3 {
        for (h, to) in &target {
            let _ = sim.send(*h, PORT, *to, &b"punch"[..]);
        }
        let deadline = sim.now() + Duration::from_millis(200);
        while let Some(out) = sim.next_output(deadline) {
            let Output::Datagram(d) = out else { continue };
            if d.data.as_ref() == b"punch" {
                got[d.host.index()] = true;
                target.insert(d.host, d.from);
            }
        }
    }
    let punched = (0..half)
        .filter(|i| got[w.hosts[*i].index()] && got[w.hosts[*i + half].index()])
        .count();
    (half as u64, punched as u64)
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
    sim.run_until(SIMULATED);
    let (pairs, punched) = punch_all(&mut sim, &world, &c.public);
    let run_s = t1.elapsed().as_secs_f64();
    let events = sim.events_processed();
    let rate = events as f64 / run_s.max(1e-9);
    let simulated = sim.now().since_start().as_secs_f64();
    let speedup = simulated / run_s.max(1e-9);
    println!(
        "netsim benchmark: {} hosts behind NATs ({} CGNATs), {simulated:.1} s simulated",
        hosts.len(),
        hosts.len().div_ceil(HOSTS_PER_CGNAT),
    );
    println!("| metric | value |\n|---|---|");
    println!("| build topology | {build_s:.3} s |");
    println!("| run (wall) | {run_s:.3} s |");
    println!("| events processed | {events} |");
    println!("| events per second | {rate:.0} |");
    println!("| datagrams sent by hosts | {} |", c.sent);
    println!("| echoed by servers | {} |", c.echoed);
    println!("| delivered back to hosts | {} |", c.delivered_to_hosts);
    println!("| hole-punch pairs: tried / both ways | {pairs} / {punched} |");
    println!("| virtual / wall time | {speedup:.0}x |");
    let json = format!(
        "{{\n  \"hosts\": {},\n  \"simulated_s\": {simulated:.1},\n  \"build_s\": {build_s:.4},\n  \"run_s\": {run_s:.4},\n  \"total_s\": {:.4},\n  \"events\": {events},\n  \"events_per_s\": {rate:.0},\n  \"sent\": {},\n  \"echoed\": {},\n  \"delivered\": {},\n  \"punch_pairs\": {pairs},\n  \"punched\": {punched},\n  \"speedup\": {speedup:.1}\n}}\n",
        hosts.len(),
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
