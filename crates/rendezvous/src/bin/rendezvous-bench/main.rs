//! `rendezvous-bench`: the rendezvous at scale, over the real protocol. Starts the real
//! `agentmesh-rendezvous` binary (from the same target directory) as a child process on
//! loopback with a fresh key and SQLite file, connects many simulated nodes with the real
//! client over QUIC, each authenticating with its own node key and registering signed
//! manifests, then measures registration rate, the service's resident memory and SQLite
//! size, and discovery latency over the wire while every node keeps heartbeating. Prints a
//! table, writes JSON (default `target/bench/rendezvous-scale.json`), reports progress on
//! stderr.
//!
//! `cargo build --release -p agentmesh-rendezvous --bins && target/release/rendezvous-bench`
//!
//! The phases live in [`run`], the manifests in [`agents`]; this file owns the command
//! line and the printed table.

mod agents;
mod run;

use std::path::PathBuf;

use clap::Parser;

/// Benchmark the rendezvous at scale over the real protocol (QUIC on loopback).
///
/// Phases: (1) sign every manifest up front (not timed as registration); (2) start
/// `agentmesh-rendezvous` as a child process and read its idle RSS; (3) connect and
/// authenticate every node (`--connect-concurrency` at a time); (4) every node registers
/// its agents in `Register` requests of `--batch` manifests, `--concurrency` nodes at a
/// time: the registration rate is agents over the wall clock from the first request to the
/// last acknowledgement; then each node heartbeats its agents every `--heartbeat-ms`;
/// (5) wait until SQLite holds every agent; (6) from node 0, `--rounds` discovery queries
/// of each kind, one at a time, timed by the client (round trip over QUIC), while all other
/// nodes stay connected and heartbeating. RSS is read from /proc/<pid>/status (VmRSS).
///
/// Example: `rendezvous-bench --nodes 1000 --agents-per-node 100` (100,000 agents; the
/// default). Quick look: `--nodes 50 --agents-per-node 20 --rounds 200`.
#[derive(Debug, Clone, Parser)]
#[command(name = "rendezvous-bench", verbatim_doc_comment)]
pub(crate) struct Args {
    /// Simulated nodes (daemons), each with its own node key and QUIC connection.
    #[arg(long, default_value_t = 1000)]
    pub(crate) nodes: usize,
    /// Agents registered by each node.
    #[arg(long, default_value_t = 100)]
    pub(crate) agents_per_node: usize,
    /// Manifests per `Register` request (a 100-manifest frame is ≈ 70 KB; the service's
    /// `max_frame` is 256 KiB, at most 1024 per request).
    #[arg(long, default_value_t = 100)]
    pub(crate) batch: usize,
    /// Nodes registering at the same time.
    #[arg(long, default_value_t = 100)]
    pub(crate) concurrency: usize,
    /// Nodes connecting (QUIC + TLS + Hello/Challenge/Auth) at the same time.
    #[arg(long, default_value_t = 32)]
    pub(crate) connect_concurrency: usize,
    /// Client UDP sockets (quinn endpoints) the nodes share; node i uses endpoint i mod n.
    #[arg(long, default_value_t = 8)]
    pub(crate) endpoints: usize,
    /// Heartbeat interval of every node during the run, ms (the agent TTL is 3x this).
    #[arg(long, default_value_t = 5000)]
    pub(crate) heartbeat_ms: u64,
    /// Discovery queries of each kind.
    #[arg(long, default_value_t = 1000)]
    pub(crate) rounds: usize,
    /// The service binary (default: `agentmesh-rendezvous` next to this binary).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/rendezvous-scale.json")]
    pub(crate) out: PathBuf,
}

fn print(r: &run::Report) {
    println!(
        "rendezvous-bench ({} build, {} cpus, load {} → {}): {} nodes × {} agents = {} agents",
        r.build, r.cpus, r.load_avg_start, r.load_avg_end, r.nodes, r.agents_per_node, r.agents
    );
    let c = &r.connect;
    println!(
        "connect+auth   {:>8.0} nodes/s   p50 {:>7.1} ms  p99 {:>7.1} ms  ({:.2} s)",
        c.per_sec, c.p50_ms, c.p99_ms, c.wall_s
    );
    let g = &r.registration;
    println!(
        "registration   {:>8.0} agents/s  node p50 {:>7.1} ms  p99 {:>7.1} ms  max {:.1} ms  ({:.2} s, {} requests of ≤ {}, {} nodes at a time)",
        g.agents_per_sec, g.node_p50_ms, g.node_p99_ms, g.node_max_ms, g.wall_s, g.requests, g.batch, g.concurrency
    );
    println!(
        "               request p50 {:.1} ms p99 {:.1} ms; {} UDP datagrams dropped (receive buffers full, host-wide)",
        g.request_p50_ms, g.request_p99_ms, g.udp_rcvbuf_drops
    );
    println!(
        "persisted      {:>8.0} agents/s  ({} rows in SQLite, as many as live agents, {:.2} s after the first request)",
        g.persisted_agents_per_sec, g.persisted_rows, g.persisted_s
    );
    let m = &r.memory;
    println!(
        "rss (KiB)      idle {} | {} nodes connected {} | {} agents {} | after discovery {} | peak {}",
        m.rss_idle_kib,
        r.nodes,
        m.rss_connected_kib,
        r.agents,
        m.rss_agents_kib,
        m.rss_after_discovery_kib,
        m.hwm_kib
    );
    println!(
        "               {:.0} bytes per connected node, {:.0} bytes per agent",
        m.bytes_per_node, m.bytes_per_agent
    );
    let s = &r.sqlite;
    println!(
        "sqlite         {} bytes (db {} + wal {}), {:.0} bytes per agent",
        s.total_bytes, s.db_bytes, s.wal_bytes, s.bytes_per_agent
    );
    let h = &r.heartbeats;
    println!(
        "heartbeats     {} sent, {} acked, {} unknown agents ({} registered again), {} errors; p50 {:.1} ms p99 {:.1} ms",
        h.sent, h.acked, h.unknown_agents, h.reregistered, h.errors, h.p50_ms, h.p99_ms
    );
    println!(
        "{:<26} {:>7} {:>9} {:>9} {:>9} {:>8} {:>6}",
        "query over the wire (ms)", "rounds", "p50", "p99", "max", "results", "check"
    );
    for q in &r.discovery {
        println!(
            "{:<26} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>8.0} {:>6}",
            q.query,
            q.rounds,
            q.p50_ms,
            q.p99_ms,
            q.max_ms,
            q.avg_results,
            if q.check_ok { "ok" } else { "WRONG" }
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run::run(&args))?;
    print(&report);
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
