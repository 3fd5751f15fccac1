//! `relay-bench`: forwarding throughput between two clients on loopback (UDP and TCP/TLS),
//! and the relay's resident memory per connected client. Runs the real `agentmesh-relay`
//! binary (from the same target directory) as a child process so its memory and CPU are
//! its own. Prints a table and writes JSON (default `target/bench/relay.json`).
//!
//! `cargo build --release -p agentmesh-relay && target/release/relay-bench`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agentmesh_proto::{NodeId, SecretKey};
use agentmesh_relay::client::{ClientEvent, RelayClient};
use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;

/// Benchmark the relay on loopback.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds of sending per throughput run.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Payload bytes per frame.
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// Idle UDP clients connected for the memory measurement.
    #[arg(long, default_value_t = 10000)]
    udp_clients: usize,
    /// Idle TLS clients connected for the memory measurement.
    #[arg(long, default_value_t = 500)]
    tls_clients: usize,
    /// Paced UDP runs at these offered loads (frames/s), besides the unpaced runs.
    #[arg(long, value_delimiter = ',', default_value = "10000,20000,40000")]
    udp_rates: Vec<u64>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/relay.json")]
    out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Throughput {
    transport: &'static str,
    /// Offered load in frames/s (0 = unpaced).
    offered_per_sec: u64,
    payload_bytes: usize,
    sent: u64,
    received: u64,
    packets_per_sec: f64,
    mb_per_sec: f64,
    loss_percent: f64,
}

#[derive(Debug, Serialize)]
struct Memory {
    transport: &'static str,
    clients: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    bytes_per_client: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    build: &'static str,
    cpus: usize,
    load_avg_1m: String,
    throughput: Vec<Throughput>,
    memory: Vec<Memory>,
}

struct RelayProc {
    child: Child,
    target: Target,
}

/// Where the relay listens and who it is.
#[derive(Debug, Clone, Copy)]
struct Target {
    udp: SocketAddr,
    tls: SocketAddr,
    id: NodeId,
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_relay(dir: &Path) -> anyhow::Result<RelayProc> {
    let bin = std::env::current_exe()?.with_file_name("agentmesh-relay");
    let (udp, tls) = (free_port()?, free_port()?);
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "key_file = {key:?}\nudp_listen = \"127.0.0.1:{udp}\"\ntls_listen = \"127.0.0.1:{tls}\"\n\
             [limits]\nmax_clients = 100000\nmax_pending = 100000\nrate_bytes_per_sec = 100000000000\n\
             rate_packets_per_sec = 100000000\nqueue_frames = 4096\nqueue_bytes = 16777216\n\
             handshakes_per_sec = 1000000\n",
            key = dir.join("relay.key")
        ),
    )?;
    let out = Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .arg("--print-id")
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    let id: NodeId = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .spawn()?;
    let target = Target {
        udp: ([127, 0, 0, 1], udp).into(),
        tls: ([127, 0, 0, 1], tls).into(),
        id,
    };
    let relay = RelayProc { child, target };
    for _ in 0..100 {
        if std::net::TcpStream::connect(target.tls).is_ok() {
            return Ok(relay);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("relay did not start")
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

async fn connect(relay: Target, tls: bool, seed: u64) -> anyhow::Result<RelayClient> {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[31] = 0x5A;
    let key = SecretKey::from_bytes(&bytes);
    Ok(if tls {
        RelayClient::connect_tls(relay.tls, key, Some(relay.id)).await?
    } else {
        RelayClient::connect_udp(relay.udp, key, Some(relay.id)).await?
    })
}

/// One run: `a` sends to `b` for `args.secs`, paced at `rate` frames/s (0 = as fast as it can).
async fn throughput(
    relay: &RelayProc,
    tls: bool,
    rate: u64,
    args: &Args,
) -> anyhow::Result<Throughput> {
    let seed = if tls { 10 } else { 20 };
    let mut a = connect(relay.target, tls, seed).await?;
    let mut b = connect(relay.target, tls, seed + 1).await?;
    let to = b.node_id();
    let size = args.size;
    let receiver = tokio::spawn(async move {
        let (mut n, mut first, mut last) = (0u64, None, Instant::now());
        while let Ok(Some(ev)) = b.recv_timeout(Duration::from_millis(700)).await {
            if let ClientEvent::Recv { payload, .. } = ev {
                if payload.len() == size {
                    n += 1;
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                }
            }
        }
        (n, first.map(|f| last.duration_since(f)).unwrap_or_default())
    });
    let payload = vec![0xAB; size];
    let start = Instant::now();
    let until = start + Duration::from_secs(args.secs);
    let mut sent = 0u64;
    while Instant::now() < until {
        if rate > 0 {
            let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        for _ in 0..64 {
            a.send(to, payload.clone()).await?;
        }
        a.flush().await?;
        sent += 64;
    }
    let (received, span) = receiver.await?;
    let secs = span.as_secs_f64().max(1e-6);
    let pps = received as f64 / secs;
    Ok(Throughput {
        transport: if tls { "tcp/tls" } else { "udp" },
        offered_per_sec: rate,
        payload_bytes: size,
        sent,
        received,
        packets_per_sec: pps,
        mb_per_sec: pps * size as f64 / 1e6,
        loss_percent: 100.0 * (sent - received.min(sent)) as f64 / sent.max(1) as f64,
    })
}

async fn memory(relay: &RelayProc, tls: bool, n: usize) -> anyhow::Result<Memory> {
    let pid = relay.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid)?;
    let mut clients = Vec::with_capacity(n);
    let base = if tls { 1_000_000 } else { 2_000_000 };
    for chunk in (0..n as u64).collect::<Vec<_>>().chunks(50) {
        let target = relay.target;
        let batch = chunk.iter().map(move |i| connect(target, tls, base + i));
        for c in futures_join(batch).await {
            clients.push(c?);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid)?;
    drop(clients);
    Ok(Memory {
        transport: if tls { "tcp/tls" } else { "udp" },
        clients: n,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_client: (after.saturating_sub(before) * 1024) as f64 / n.max(1) as f64,
    })
}

/// Awaits all futures concurrently (small join without an extra dependency).
async fn futures_join<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn print(report: &Report) {
    println!(
        "relay-bench ({} build, {} cpus, load {}, {}-byte payloads)",
        report.build,
        report.cpus,
        report.load_avg_1m,
        report.throughput.first().map_or(0, |t| t.payload_bytes)
    );
    println!(
        "{:<9} {:>7} {:>10} {:>10} {:>12} {:>9} {:>7}",
        "transport", "offered", "sent", "received", "packets/s", "MB/s", "loss%"
    );
    for t in &report.throughput {
        println!(
            "{:<9} {:>7} {:>10} {:>10} {:>12.0} {:>9.1} {:>7.1}",
            t.transport,
            if t.offered_per_sec == 0 {
                "max".to_string()
            } else {
                t.offered_per_sec.to_string()
            },
            t.sent,
            t.received,
            t.packets_per_sec,
            t.mb_per_sec,
            t.loss_percent
        );
    }
    println!(
        "{:<9} {:>8} {:>12} {:>12} {:>16}",
        "transport", "clients", "rss before", "rss after", "bytes/client"
    );
    for m in &report.memory {
        println!(
            "{:<9} {:>8} {:>9} KiB {:>9} KiB {:>16.0}",
            m.transport, m.clients, m.rss_before_kib, m.rss_after_kib, m.bytes_per_client
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    print(&report);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

async fn run(args: &Args, dir: &Path) -> anyhow::Result<Report> {
    let relay = start_relay(dir)?;
    let mut report = Report {
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load_avg_1m: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or("?")
            .to_string(),
        throughput: Vec::new(),
        memory: Vec::new(),
    };
    // Memory first, on a fresh relay, so earlier runs' freed heap does not hide growth.
    report
        .memory
        .push(memory(&relay, false, args.udp_clients).await?);
    report
        .memory
        .push(memory(&relay, true, args.tls_clients).await?);
    drop(relay);
    for tls in [false, true] {
        let relay = start_relay(dir)?;
        report
            .throughput
            .push(throughput(&relay, tls, 0, args).await?);
    }
    for &rate in &args.udp_rates {
        let relay = start_relay(dir)?;
        report
            .throughput
            .push(throughput(&relay, false, rate, args).await?);
    }
    Ok(report)
}
