//! agentmesh-bench: agentmesh side by side with its floor and a broker, all contenders
//! in one process and interleaved in rounds so they share the machine's state.
//!
//! Parts: `rtt` (request/response between two agents on two daemons over the direct
//! path vs a raw UDP ping-pong vs the same hops with no protocol on them vs NATS
//! request/reply, plain and over TLS), `relay-rtt` (the same agentmesh
//! request with both daemons firewalled to the rendezvous and relay, so the path stays
//! relayed), `stream` (one large QUIC stream: raw quinn vs the mesh socket direct vs
//! through the relay), `footprint` (RSS of one idle daemon and CPU at a fixed request
//! rate in-process; then the real `agentmeshd` as its own process: RSS idle and per idle
//! peer session, CPU at 10,000 requests/s), `fanout` (one `emit` to 1,000 subscribers on
//! 100 daemons, cold and warm), `wan` (across a network instead of loopback: a netns lab
//! with a delay D on every uplink, `tc netem` or an NFQUEUE delay where the kernel has no
//! netem, two NATed home sites with a real `agentmeshd` each and a cloud site with the
//! rendezvous, the relay and `nats-server`: UDP floor vs NATS through the cloud vs
//! agentmesh direct vs agentmesh relayed; needs root, skipped with the reason otherwise,
//! an error when asked for by name).
//! Table on stdout, JSON in `target/bench/results.json`, progress on stderr.

mod external;
mod fanout;
mod firewall;
mod footprint;
mod hops;
mod mesh;
mod nats;
mod nfdelay;
mod report;
mod stats;
mod stream;
mod udp;
mod wan;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, ValueEnum};
use serde_json::{json, Value};

use crate::mesh::{MeshPair, Services, Want};
use crate::report::{Report, RttRow};
use crate::stats::Samples;

/// Benchmarks agentmesh against a raw UDP floor, a NATS broker and raw quinn, on loopback.
#[derive(Debug, Parser)]
#[command(name = "agentmesh-bench")]
struct Args {
    /// Parts to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Part::all())]
    parts: Vec<Part>,
    /// Measured round trips per contender and payload.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Round trips of one contender before the next takes its turn.
    #[arg(long, default_value_t = 100)]
    round: usize,
    /// Request payload sizes in bytes (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![64, 65536])]
    payloads: Vec<usize>,
    /// Size of the large stream in MiB (1024 for 1 GiB).
    #[arg(long, default_value_t = 256)]
    stream_mib: u64,
    /// Transfers of the large stream per contender (interleaved); the median is reported.
    #[arg(long, default_value_t = 3)]
    stream_runs: usize,
    /// Keep the relay's default per-client rate limits (4 MiB/s, 8000 frames/s); by
    /// default they are raised out of the way, as relay-bench does.
    #[arg(long)]
    relay_default_limits: bool,
    /// Request rate for the CPU measurement of the footprint part.
    #[arg(long, default_value_t = 200)]
    cpu_rate: u32,
    /// Seconds of the CPU measurement.
    #[arg(long, default_value_t = 5)]
    cpu_secs: u64,
    /// Peer daemons that open a session to the separate-process daemon (footprint).
    #[arg(long, default_value_t = 1000)]
    footprint_peers: usize,
    /// Request rate offered to the separate-process daemon (footprint).
    #[arg(long, default_value_t = 10_000)]
    daemon_cpu_rate: u32,
    /// Concurrent clients offering that rate, each one request at a time.
    #[arg(long, default_value_t = 64)]
    daemon_cpu_clients: usize,
    /// Subscriber daemons of the fan-out part.
    #[arg(long, default_value_t = 100)]
    fanout_nodes: usize,
    /// Subscriber agents on each of them.
    #[arg(long, default_value_t = 10)]
    fanout_subscribers: usize,
    /// Warm emits after the cold one.
    #[arg(long, default_value_t = 50)]
    fanout_emits: usize,
    /// `worker_threads` of the measured daemons (agentmeshd's setting; 0 = one per
    /// core, its default): the rtt pairs' own runtimes and the separate-process daemon.
    #[arg(long, default_value_t = 0)]
    daemon_workers: usize,
    /// Run only the agentmesh contenders of the rtt parts (no UDP, hop floor or NATS):
    /// for profiling the daemons' own work, e.g. under `perf record`.
    #[arg(long)]
    only_mesh: bool,
    /// One-way delay on every site's uplink in the `wan` part (ms; `tc netem`, or an
    /// NFQUEUE delay without netem): a direct round trip crosses four uplinks, one
    /// through the cloud eight.
    #[arg(long, default_value_t = 5)]
    wan_delay_ms: u32,
    /// Measured round trips per contender and payload in the `wan` part.
    #[arg(long, default_value_t = 200)]
    wan_iterations: usize,
    /// Round trips of one `wan` contender before the next takes its turn.
    #[arg(long, default_value_t = 20)]
    wan_round: usize,
    /// Leave out the relayed agentmesh pair of the `wan` part.
    #[arg(long)]
    wan_no_relay: bool,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Whether `--parts` was given (a part asked for by name must run or fail).
    #[arg(skip)]
    parts_explicit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Rtt,
    RelayRtt,
    Stream,
    Footprint,
    Fanout,
    Wan,
}

impl Part {
    fn all() -> Vec<Part> {
        vec![
            Part::Rtt,
            Part::RelayRtt,
            Part::Stream,
            Part::Footprint,
            Part::Fanout,
            Part::Wan,
        ]
    }
}

/// A request/response contender.
enum Contender {
    Udp(udp::UdpPingPong),
    Hops(hops::HopChain),
    Nats(nats::Nats, &'static str),
    Mesh(MeshPair, &'static str),
    Wan(wan::WanContender),
}

/// One payload in each contender's form.
struct Payload {
    raw: Vec<u8>,
    bytes: Bytes,
    json: Value,
}

impl Payload {
    fn new(n: usize) -> Payload {
        let raw = vec![b'x'; n];
        Payload {
            bytes: Bytes::from(raw.clone()),
            json: json!("x".repeat(n)),
            raw,
        }
    }
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Contender::Udp(_) => report::UDP,
            Contender::Hops(_) => report::HOPS,
            Contender::Nats(_, name) => name,
            Contender::Mesh(_, name) => name,
            Contender::Wan(w) => w.name(),
        }
    }

    async fn once(&mut self, p: &Payload) -> anyhow::Result<Duration> {
        match self {
            Contender::Udp(u) => u.round_trip(&p.raw).await,
            Contender::Hops(h) => h.round_trip(&p.raw).await,
            Contender::Nats(n, _) => n.round_trip(&p.bytes).await,
            Contender::Mesh(m, _) => m.request(&p.json).await,
            Contender::Wan(w) => w.once(p).await,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches)?;
    args.parts_explicit = matches.value_source("parts") == Some(ValueSource::CommandLine);
    agentmesh_tlsid::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let wan_unavailable = args
        .parts
        .contains(&Part::Wan)
        .then(|| tokio::task::block_in_place(wan::unavailable_reason))
        .flatten();
    if let (Some(why), true) = (&wan_unavailable, args.parts_explicit) {
        anyhow::bail!("the wan part cannot run here: {why}");
    }
    if args.parts.contains(&Part::Footprint) || args.parts.contains(&Part::Wan) {
        // Fail now, not minutes into the run: both parts start the real daemon.
        external::daemon_binary()?;
    }
    let dir = tempfile::tempdir()?;
    let (nofile, nofile_hard) = footprint::raise_nofile_limit()?;
    let mut report = Report {
        meta: json!({
            "iterations": args.iterations,
            "round": args.round,
            "payloads": args.payloads,
            "stream_mib": args.stream_mib,
            "relay_default_limits": args.relay_default_limits,
            "load_average_before": load_average(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "nofile_limit": [nofile, nofile_hard],
        }),
        ..Report::default()
    };
    let limits = if args.relay_default_limits {
        agentmesh_relay::limits::Limits::default()
    } else {
        mesh::bench_limits()
    };
    eprintln!("starting rendezvous and relay");
    let services = mesh::start_services(dir.path(), limits, args.daemon_workers).await?;
    let has = |p: Part| args.parts.contains(&p);
    if has(Part::Footprint) {
        report.footprint = idle_daemon_rss(&services, dir.path()).await?;
    }
    let mut contenders = contenders(&args, &services, dir.path()).await?;
    if !contenders.is_empty() {
        let rounds = Rounds {
            label: "rtt",
            iterations: args.iterations,
            round: args.round,
            warmup: 20,
            payloads: &args.payloads,
        };
        report.rtt = rtt_rounds(&rounds, &mut contenders).await?;
        report.paths = path_report(&mut contenders).await?;
    }
    if has(Part::Footprint) {
        let direct = contenders.iter_mut().find_map(|c| match c {
            Contender::Mesh(m, report::MESH_DIRECT) => Some(m),
            _ => None,
        });
        let mut own = None;
        let pair = match direct {
            Some(p) => p,
            None => own.insert(MeshPair::start(&services, dir.path(), Want::Direct).await?),
        };
        eprintln!(
            "cpu at {} requests/s for {} s",
            args.cpu_rate, args.cpu_secs
        );
        let cpu = footprint::cpu_at_rate(pair, args.cpu_rate, args.cpu_secs).await?;
        if let Value::Object(o) = &mut report.footprint {
            o.insert("cpu_direct_pair".into(), cpu);
        }
    }
    drop(contenders);
    if has(Part::Footprint) {
        let cfg = external::ExternalConfig {
            peers: args.footprint_peers,
            rate: args.daemon_cpu_rate,
            clients: args.daemon_cpu_clients,
            secs: args.cpu_secs,
        };
        let ext = external::run(&services, dir.path(), cfg).await?;
        if let Value::Object(o) = &mut report.footprint {
            o.insert("agentmeshd".into(), ext);
        }
    }
    if has(Part::Stream) {
        report.stream = stream_part(&args, &services).await?;
    }
    if has(Part::Fanout) {
        let cfg = fanout::FanoutConfig {
            nodes: args.fanout_nodes,
            per_node: args.fanout_subscribers,
            warm_emits: args.fanout_emits,
        };
        report.fanout = fanout::run(&services, dir.path(), cfg).await?;
    }
    match (has(Part::Wan), wan_unavailable) {
        (true, Some(why)) => eprintln!("wan: skipped: {why}"),
        (true, None) => report.wan = Some(wan::run(&wan_config(&args)).await?),
        (false, _) => {}
    }
    report.meta["load_average_after"] = json!(load_average());
    report.check_targets(&args.payloads);
    report.print();
    report.write_json(&args.out)?;
    eprintln!("JSON written to {}", args.out.display());
    Ok(())
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// RSS before and after one daemon starts and joins the mesh (idle, no agents).
async fn idle_daemon_rss(s: &Services, dir: &std::path::Path) -> anyhow::Result<Value> {
    eprintln!("footprint: RSS before/after one idle daemon");
    let before = footprint::rss_kib()?;
    let config = s.daemon_config(dir, "idle")?;
    let daemon = mesh::run_daemon(&config, None).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = footprint::rss_kib()?;
    drop(daemon);
    Ok(json!({
        "rss_before_kib": before,
        "rss_after_kib": after,
        "idle_daemon_kib": after.saturating_sub(before),
    }))
}

async fn contenders(
    args: &Args,
    s: &Services,
    dir: &std::path::Path,
) -> anyhow::Result<Vec<Contender>> {
    let mut v = Vec::new();
    if args.parts.contains(&Part::Rtt) {
        eprintln!(
            "rtt: starting UDP echo, hop floor, nats-server (plain, TLS), two daemons (direct)"
        );
        if !args.only_mesh {
            v.push(Contender::Udp(udp::UdpPingPong::start().await?));
            v.push(Contender::Hops(hops::HopChain::start(dir).await?));
            v.push(Contender::Nats(
                nats::Nats::start(dir, false).await?,
                report::NATS,
            ));
            v.push(Contender::Nats(
                nats::Nats::start(dir, true).await?,
                report::NATS_TLS,
            ));
        }
        let pair = MeshPair::start(s, dir, Want::Direct).await?;
        v.push(Contender::Mesh(pair, report::MESH_DIRECT));
    }
    if args.parts.contains(&Part::RelayRtt) {
        eprintln!("relay-rtt: starting two firewalled daemons (relay path)");
        let pair = MeshPair::start(s, dir, Want::Relay).await?;
        v.push(Contender::Mesh(pair, report::MESH_RELAY));
    }
    Ok(v)
}

/// The `wan` part's settings from the command line.
fn wan_config(args: &Args) -> wan::WanConfig {
    wan::WanConfig {
        delay_ms: args.wan_delay_ms,
        iterations: args.wan_iterations,
        round: args.wan_round,
        warmup: 10,
        payloads: args.payloads.clone(),
        relay: !args.wan_no_relay,
    }
}

/// How [`rtt_rounds`] runs: the progress label, round trips measured per contender and
/// payload, per turn, and of warm-up.
struct Rounds<'a> {
    label: &'static str,
    iterations: usize,
    round: usize,
    warmup: usize,
    payloads: &'a [usize],
}

/// Every payload: a short warm-up, then rounds of `round` round trips per contender,
/// the contenders taking turns (the first one rotating).
async fn rtt_rounds(args: &Rounds<'_>, cs: &mut [Contender]) -> anyhow::Result<Vec<RttRow>> {
    let mut rows = Vec::new();
    let round = args.round.max(1);
    let rounds = args.iterations.div_ceil(round);
    for &size in args.payloads {
        let p = Payload::new(size);
        let mut samples = vec![Samples::default(); cs.len()];
        for c in cs.iter_mut() {
            for _ in 0..args.warmup {
                c.once(&p)
                    .await
                    .with_context(|| format!("warm-up {}", c.name()))?;
            }
        }
        for r in 0..rounds {
            eprintln!("{} {size} B: round {}/{rounds}", args.label, r + 1);
            for k in 0..cs.len() {
                let i = (k + r) % cs.len();
                for _ in 0..round {
                    let d = cs[i].once(&p).await.with_context(|| cs[i].name())?;
                    samples[i].push(d);
                }
            }
        }
        for (c, s) in cs.iter().zip(&samples) {
            rows.push(RttRow {
                contender: c.name().into(),
                payload: size,
                summary: s.summary(),
            });
        }
    }
    Ok(rows)
}

/// The mesh pairs' peer status after the measurements (proof of the path used).
async fn path_report(cs: &mut [Contender]) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for c in cs.iter_mut() {
        if let Contender::Mesh(m, name) = c {
            let peer = m.peer_status().await?;
            let dropped = m.dropped();
            eprintln!("{name}: peer {peer:?}; firewall dropped {dropped} datagrams");
            out.insert(
                (*name).into(),
                json!({"peer": peer, "firewall_dropped_datagrams": dropped}),
            );
        }
    }
    Ok(Value::Object(out))
}

/// Raw quinn, mesh socket direct and mesh socket through the relay, interleaved.
async fn stream_part(args: &Args, s: &Services) -> anyhow::Result<Vec<report::StreamRow>> {
    use agentmesh::net::relay_link::RelayLinkConfig;
    use stream::Route;
    let relay_udp = s.relay.udp_addr.context("relay without UDP")?;
    let link = RelayLinkConfig::new(s.relay.relay_id, relay_udp, s.relay.tls_addr);
    let nodes = [
        (
            report::QUINN,
            stream::raw_node(11)?,
            stream::raw_node(12)?,
            Route::Plain,
        ),
        (
            report::STREAM_DIRECT,
            stream::mesh_node(13, link.clone())?,
            stream::mesh_node(14, link.clone())?,
            Route::Direct,
        ),
        (
            report::STREAM_RELAY,
            stream::mesh_node(15, link.clone())?,
            stream::mesh_node(16, link)?,
            Route::Relay,
        ),
    ];
    let mut conns = Vec::new();
    for (name, a, b, path) in &nodes {
        a.relay_connected().await?;
        b.relay_connected().await?;
        conns.push((*name, stream::connect(a, b, *path).await?));
    }
    let total = args.stream_mib << 20;
    let mut runs = vec![Vec::new(); conns.len()];
    for r in 0..args.stream_runs.max(1) {
        for k in 0..conns.len() {
            let i = (k + r) % conns.len();
            let (name, conn) = &conns[i];
            eprintln!("stream run {}: {name}, {} MiB", r + 1, args.stream_mib);
            let took = stream::transfer(conn, total).await.with_context(|| *name)?;
            runs[i].push(total as f64 / 1048576.0 / took.as_secs_f64());
        }
    }
    let rows = conns
        .iter()
        .zip(runs)
        .map(|((name, _), runs)| report::StreamRow {
            contender: (*name).into(),
            bytes: total,
            mib_per_s_median: report::median(&runs),
            mib_per_s_runs: runs,
        })
        .collect();
    for (_, conn) in &conns {
        conn.close(0u32.into(), b"done");
    }
    for (_, a, b, _) in nodes {
        a.shutdown().await;
        b.shutdown().await;
    }
    Ok(rows)
}
