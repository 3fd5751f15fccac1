//! The benchmark's phases against a child `agentmesh-rendezvous` process: start it,
//! connect the nodes, register, heartbeat, wait for SQLite, query, and measure the
//! process (RSS from /proc) and its database file.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_proto::{AgentId, Availability, Manifest, NodeId};
use agentmesh_rendezvous::client::{Client, Join, Target};
use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

use crate::agents;
use crate::Args;

const TENANT: &str = "bench";
const TOKEN: &str = "bench-token";
/// How long a request may wait for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything measured, as written to JSON.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) build: &'static str,
    pub(crate) cpus: usize,
    pub(crate) load_avg_start: String,
    pub(crate) load_avg_end: String,
    pub(crate) nodes: usize,
    pub(crate) agents_per_node: usize,
    pub(crate) agents: usize,
    pub(crate) endpoints: usize,
    pub(crate) heartbeat_ms: u64,
    pub(crate) sign_s: f64,
    pub(crate) connect: Connect,
    pub(crate) registration: Registration,
    pub(crate) memory: Memory,
    pub(crate) sqlite: Sqlite,
    pub(crate) heartbeats: Heartbeats,
    pub(crate) server: ServerCounters,
    pub(crate) target_p99_ms: f64,
    pub(crate) discovery: Vec<QueryRow>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Connect {
    pub(crate) wall_s: f64,
    pub(crate) per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Registration {
    pub(crate) batch: usize,
    pub(crate) concurrency: usize,
    pub(crate) requests: usize,
    /// First `Register` sent to the last acknowledgement.
    pub(crate) wall_s: f64,
    pub(crate) agents_per_sec: f64,
    /// One node: its first request sent to its last acknowledgement.
    pub(crate) node_p50_ms: f64,
    pub(crate) node_p99_ms: f64,
    pub(crate) node_max_ms: f64,
    pub(crate) request_p50_ms: f64,
    pub(crate) request_p99_ms: f64,
    /// Agent rows in SQLite at the end of the wait.
    pub(crate) persisted_rows: usize,
    /// First request to every agent row being in SQLite.
    pub(crate) persisted_s: f64,
    pub(crate) persisted_agents_per_sec: f64,
    /// Host-wide UDP datagrams dropped for a full receive buffer, from connecting the
    /// nodes to the last acknowledgement.
    pub(crate) udp_rcvbuf_drops: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Memory {
    pub(crate) rss_idle_kib: u64,
    pub(crate) rss_connected_kib: u64,
    /// At the last registration acknowledgement.
    pub(crate) rss_registered_kib: u64,
    /// Once SQLite holds every agent (store queue drained).
    pub(crate) rss_agents_kib: u64,
    pub(crate) rss_after_discovery_kib: u64,
    pub(crate) hwm_kib: u64,
    pub(crate) bytes_per_node: f64,
    pub(crate) bytes_per_agent: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Sqlite {
    pub(crate) db_bytes: u64,
    pub(crate) wal_bytes: u64,
    pub(crate) total_bytes: u64,
    pub(crate) bytes_per_agent: f64,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Heartbeats {
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) unknown_agents: u64,
    /// Unknown agents registered again.
    pub(crate) reregistered: u64,
    pub(crate) errors: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// The service's own view, from `GET /metrics`.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ServerCounters {
    pub(crate) agents: u64,
    pub(crate) nodes_online: u64,
    pub(crate) registrations_total: u64,
    pub(crate) discoveries_total: u64,
    pub(crate) rejected_total: u64,
    pub(crate) expired_agents_total: u64,
    pub(crate) store_errors_total: u64,
    pub(crate) slow_consumers_total: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct QueryRow {
    pub(crate) query: String,
    pub(crate) rounds: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) avg_results: f64,
    /// The first rounds' result counts equal a full scan's.
    pub(crate) check_ok: bool,
}

/// The child service and its files; killed and removed on drop.
struct Service {
    child: Child,
    dir: PathBuf,
    target: Target,
    admin: SocketAddr,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Service {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn db(&self) -> PathBuf {
        self.dir.join("rv.sqlite")
    }

    /// The tail of the service's log (for errors).
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn config_text(dir: &Path, heartbeat_ms: u64) -> String {
    let big = "{ per_sec = 1000000.0, burst = 1000000.0 }";
    format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         key_file = {key:?}\ndatabase = {db:?}\n\
         heartbeat_ms = {heartbeat_ms}\nagent_ttl_ms = {ttl}\n\
         [limits]\nregister = {big}\ndiscover = {big}\nintroduce = {big}\n\
         [[tenant]]\nname = \"{TENANT}\"\njoin_token = \"{TOKEN}\"\n",
        key = dir.join("rv.key"),
        db = dir.join("rv.sqlite"),
        ttl = heartbeat_ms * 3,
    )
}

fn server_bin(args: &Args) -> anyhow::Result<PathBuf> {
    match &args.server_bin {
        Some(p) => Ok(p.clone()),
        None => Ok(std::env::current_exe()?.with_file_name("agentmesh-rendezvous")),
    }
}

/// Starts the service and reads its id and addresses from its first stdout line.
async fn start_service(args: &Args) -> anyhow::Result<Service> {
    let bin = server_bin(args)?;
    let dir = std::env::temp_dir().join(format!("rendezvous-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("rv.toml");
    std::fs::write(&cfg, config_text(&dir, args.heartbeat_ms))?;
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .spawn()
        .with_context(|| format!("run {} (build it: cargo build --bins)", bin.display()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let placeholder = Target {
        addr: ([127, 0, 0, 1], 0).into(),
        server: agents::node_key(usize::MAX).node_id(),
    };
    let mut svc = Service {
        child,
        dir,
        target: placeholder,
        admin: ([127, 0, 0, 1], 0).into(),
    };
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = match tokio::time::timeout(Duration::from_secs(30), line).await {
        Ok(Ok(Ok(line))) if !line.is_empty() => line,
        _ => bail!("the service did not start:\n{}", svc.log_tail()),
    };
    let (id, udp, admin) = parse_banner(&line).with_context(|| format!("banner {line:?}"))?;
    svc.target = Target {
        addr: udp,
        server: id,
    };
    svc.admin = admin;
    Ok(svc)
}

/// `"<id> udp=<addr> admin=<addr>"`.
fn parse_banner(line: &str) -> anyhow::Result<(NodeId, SocketAddr, SocketAddr)> {
    let mut parts = line.split_whitespace();
    let id = parts.next().context("id")?.parse()?;
    let udp = parts
        .next()
        .and_then(|p| p.strip_prefix("udp="))
        .context("udp=")?
        .parse()?;
    let admin = parts
        .next()
        .and_then(|p| p.strip_prefix("admin="))
        .context("admin=")?
        .parse()?;
    Ok((id, udp, admin))
}

/// (VmRSS, VmHWM) of `pid`, KiB.
fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name}"))?;
        Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// `GET /metrics` from the admin port, as name → value (labels summed into the name).
async fn metrics(admin: SocketAddr) -> anyhow::Result<HashMap<String, u64>> {
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text)).await??;
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("rv_")) {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name).to_string();
        *out.entry(name).or_default() += value.parse::<u64>().unwrap_or(0);
    }
    Ok(out)
}

fn server_counters(m: &HashMap<String, u64>) -> ServerCounters {
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    ServerCounters {
        agents: get("rv_agents"),
        nodes_online: get("rv_nodes_online"),
        registrations_total: get("rv_registrations_total"),
        discoveries_total: get("rv_discoveries_total"),
        rejected_total: get("rv_rejected_total"),
        expired_agents_total: get("rv_expired_agents_total"),
        store_errors_total: get("rv_store_errors_total"),
        slow_consumers_total: get("rv_slow_consumers_total"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p` quantile (0..=1) of `v` (sorted in place), in ms.
fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    ms(v[i.min(v.len() - 1)])
}

/// The host's UDP receive-buffer drops so far (`RcvbufErrors` in /proc/net/snmp; counts
/// every process, so other traffic adds to it).
fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    head.split_whitespace()
        .zip(values.split_whitespace())
        .find(|(k, _)| *k == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints `done/total` for `label` on stderr every 2 s until aborted.
fn progress(
    label: &'static str,
    done: Arc<AtomicUsize>,
    total: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let d = done.load(Ordering::Relaxed);
            eprintln!(
                "  {label}: {d}/{total} ({:.0} s)",
                start.elapsed().as_secs_f64()
            );
        }
    })
}

struct Connected {
    clients: Vec<Arc<Client>>,
    stats: Connect,
}

/// Connects and authenticates every node, `connect_concurrency` at a time.
async fn connect_all(
    args: &Args,
    target: &Target,
    endpoints: &[quinn::Endpoint],
) -> anyhow::Result<Connected> {
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let done = Arc::new(AtomicUsize::new(0));
    let ticker = progress("connected", done.clone(), args.nodes);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let (sem, done, target) = (sem.clone(), done.clone(), target.clone());
        let ep = endpoints[i % endpoints.len()].clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let join = Join {
                tenant: TENANT.into(),
                token: TOKEN.into(),
                candidates: vec![SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 4100))],
                home_relay: None,
            };
            let t = Instant::now();
            let mut client = Client::connect_quic(&ep, &target, &agents::node_key(i), &join)
                .await
                .with_context(|| format!("node {i} connect"))?;
            // Measure slow answers rather than give up on them.
            client.set_timeout(REQUEST_TIMEOUT);
            done.fetch_add(1, Ordering::Relaxed);
            anyhow::Ok((Arc::new(client), t.elapsed()))
        }));
    }
    let mut clients = Vec::with_capacity(args.nodes);
    let mut lat = Vec::with_capacity(args.nodes);
    for t in tasks {
        let (c, d) = t.await??;
        clients.push(c);
        lat.push(d);
    }
    ticker.abort();
    let wall = start.elapsed();
    Ok(Connected {
        clients,
        stats: Connect {
            wall_s: wall.as_secs_f64(),
            per_sec: args.nodes as f64 / wall.as_secs_f64().max(1e-9),
            p50_ms: pct(&mut lat, 0.5),
            p99_ms: pct(&mut lat, 0.99),
        },
    })
}

/// Heartbeat counters shared by the nodes' loops.
#[derive(Default)]
struct HbStats {
    sent: AtomicU64,
    acked: AtomicU64,
    unknown: AtomicU64,
    reregistered: AtomicU64,
    errors: AtomicU64,
    lat: Mutex<Vec<Duration>>,
}

/// Heartbeats the agents every `every`, first after `offset`, until `stop`; registers
/// again those the service does not know (as the daemon does).
async fn heartbeat_loop(
    client: Arc<Client>,
    manifests: Vec<Manifest>,
    every: Duration,
    offset: Duration,
    stats: Arc<HbStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = tokio::time::Instant::now() + offset;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => break,
        }
        next += every;
        let batch = manifests
            .iter()
            .map(|m| (m.id, Availability::Online))
            .collect();
        stats.sent.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        match client.heartbeat(batch).await {
            Ok(unknown) => {
                stats.acked.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = stats.lat.lock() {
                    l.push(t.elapsed());
                }
                if !unknown.is_empty() {
                    reregister(&client, &manifests, &unknown, &stats).await;
                }
            }
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn reregister(client: &Client, manifests: &[Manifest], unknown: &[AgentId], stats: &HbStats) {
    let n = unknown.len() as u64;
    stats.unknown.fetch_add(n, Ordering::Relaxed);
    let again: Vec<Manifest> = manifests
        .iter()
        .filter(|m| unknown.contains(&m.id))
        .cloned()
        .collect();
    match client.register(again).await {
        Ok(()) => stats.reregistered.fetch_add(n, Ordering::Relaxed),
        Err(_) => stats.errors.fetch_add(1, Ordering::Relaxed),
    };
}

/// What one node's registration took: (first sent, last acked, per-request latencies).
type NodeTiming = (Instant, Instant, Vec<Duration>);

struct Registered {
    stats: Registration,
    first: Instant,
    rss_registered_kib: u64,
}

/// Every node registers its manifests (`concurrency` nodes at a time), then starts
/// heartbeating them.
async fn register_all(
    args: &Args,
    svc: &Service,
    clients: &[Arc<Client>],
    population: Vec<Vec<Manifest>>,
    hb: &Arc<HbStats>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Registered> {
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let done = Arc::new(AtomicUsize::new(0));
    let total: usize = population.iter().map(Vec::len).sum();
    let ticker = progress("agents registered", done.clone(), total);
    let batch = args.batch.clamp(1, agentmesh_proto::rendezvous::MAX_BATCH);
    let every = Duration::from_millis(args.heartbeat_ms);
    let mut tasks = Vec::with_capacity(clients.len());
    for (i, (client, manifests)) in clients.iter().zip(population).enumerate() {
        let (sem, done, client) = (sem.clone(), done.clone(), client.clone());
        let (hb, stop) = (hb.clone(), stop.clone());
        let offset = every.mul_f64(i as f64 / clients.len().max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let kept = manifests.clone();
            let mut chunks: Vec<Vec<Manifest>> = Vec::new();
            let mut rest = manifests;
            while !rest.is_empty() {
                let tail = rest.split_off(batch.min(rest.len()));
                chunks.push(std::mem::replace(&mut rest, tail));
            }
            let start = Instant::now();
            let mut lat = Vec::with_capacity(chunks.len());
            for chunk in chunks {
                let (n, t) = (chunk.len(), Instant::now());
                client
                    .register(chunk)
                    .await
                    .with_context(|| format!("node {i} register"))?;
                lat.push(t.elapsed());
                done.fetch_add(n, Ordering::Relaxed);
            }
            let end = Instant::now();
            tokio::spawn(heartbeat_loop(client, kept, every, offset, hb, stop));
            anyhow::Ok((start, end, lat))
        }));
    }
    let mut timings: Vec<NodeTiming> = Vec::with_capacity(tasks.len());
    for t in tasks {
        timings.push(t.await??);
    }
    let (rss_registered_kib, _) = rss_kib(svc.pid())?;
    ticker.abort();
    let first = timings
        .iter()
        .map(|t| t.0)
        .min()
        .unwrap_or_else(Instant::now);
    let last = timings.iter().map(|t| t.1).max().unwrap_or(first);
    let wall = last.duration_since(first);
    let mut node: Vec<Duration> = timings.iter().map(|t| t.1.duration_since(t.0)).collect();
    let mut req: Vec<Duration> = timings.iter().flat_map(|t| t.2.iter().copied()).collect();
    let node_max_ms = node.iter().max().map_or(0.0, |d| ms(*d));
    let stats = Registration {
        batch,
        concurrency: args.concurrency,
        requests: req.len(),
        wall_s: wall.as_secs_f64(),
        agents_per_sec: total as f64 / wall.as_secs_f64().max(1e-9),
        node_p50_ms: pct(&mut node, 0.5),
        node_p99_ms: pct(&mut node, 0.99),
        node_max_ms,
        request_p50_ms: pct(&mut req, 0.5),
        request_p99_ms: pct(&mut req, 0.99),
        persisted_rows: 0,
        persisted_s: 0.0,
        persisted_agents_per_sec: 0.0,
        udp_rcvbuf_drops: 0,
    };
    Ok(Registered {
        stats,
        first,
        rss_registered_kib,
    })
}

/// Agent rows in the service's SQLite file (read-only; WAL lets it read while the
/// service writes).
fn agent_rows(db: &Path) -> anyhow::Result<usize> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let n: i64 = conn.query_row("SELECT count(*) FROM agents", [], |r| r.get(0))?;
    Ok(n.max(0) as usize)
}

/// Waits (at most 2 minutes) until SQLite holds as many agents as the service has live
/// (`rv_agents`; agents whose registration was acknowledged after their TTL may have
/// expired and been registered again); returns the rows seen.
async fn wait_persisted(db: &Path, admin: SocketAddr) -> anyhow::Result<usize> {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let live = server_counters(&metrics(admin).await?).agents as usize;
        let path = db.to_path_buf();
        let rows = tokio::task::spawn_blocking(move || agent_rows(&path)).await??;
        if (rows == live && live > 0) || Instant::now() > until {
            return Ok(rows);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Round trips of `Ping`, then `rounds` queries of each kind, one at a time.
async fn discovery(
    args: &Args,
    client: &Client,
    all: &[Vec<Manifest>],
) -> anyhow::Result<Vec<QueryRow>> {
    let agents = args.nodes * args.agents_per_node;
    let rounds = args.rounds.max(1);
    let mut rows = Vec::new();
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        lat.push(client.ping().await?);
    }
    rows.push(QueryRow {
        query: "ping (no query)".into(),
        rounds,
        max_ms: lat.iter().max().map_or(0.0, |d| ms(*d)),
        p50_ms: pct(&mut lat, 0.5),
        p99_ms: pct(&mut lat, 0.99),
        avg_results: 0.0,
        check_ok: true,
    });
    for kind in agents::KINDS {
        eprintln!("  discovery: {kind}");
        let mut lat = Vec::with_capacity(rounds);
        let mut counts = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let q = agents::query(kind, i, all, agents);
            let t = Instant::now();
            let found = client.discover(q).await?;
            lat.push(t.elapsed());
            counts.push(found.len());
        }
        let check_ok = counts
            .iter()
            .take(3)
            .enumerate()
            .all(|(i, &n)| n == agents::expected(&agents::query(kind, i, all, agents), all));
        rows.push(QueryRow {
            query: kind.into(),
            rounds,
            max_ms: lat.iter().max().map_or(0.0, |d| ms(*d)),
            p50_ms: pct(&mut lat, 0.5),
            p99_ms: pct(&mut lat, 0.99),
            avg_results: counts.iter().sum::<usize>() as f64 / rounds as f64,
            check_ok,
        });
    }
    Ok(rows)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn sqlite_size(db: &Path, agents: usize) -> Sqlite {
    let db_bytes = file_len(db);
    let wal_bytes = file_len(&db.with_extension("sqlite-wal"));
    let total_bytes = db_bytes + wal_bytes;
    Sqlite {
        db_bytes,
        wal_bytes,
        total_bytes,
        bytes_per_agent: total_bytes as f64 / agents.max(1) as f64,
    }
}

fn heartbeat_report(hb: &HbStats) -> Heartbeats {
    let mut lat = hb.lat.lock().map(|l| l.clone()).unwrap_or_default();
    Heartbeats {
        sent: hb.sent.load(Ordering::Relaxed),
        acked: hb.acked.load(Ordering::Relaxed),
        unknown_agents: hb.unknown.load(Ordering::Relaxed),
        reregistered: hb.reregistered.load(Ordering::Relaxed),
        errors: hb.errors.load(Ordering::Relaxed),
        p50_ms: pct(&mut lat, 0.5),
        p99_ms: pct(&mut lat, 0.99),
    }
}

/// `n` client endpoints on loopback, each on its own UDP socket with 4 MiB buffers
/// (capped by `net.core.rmem_max`), so answers to many nodes are not dropped here.
fn client_endpoints(n: usize) -> anyhow::Result<Vec<quinn::Endpoint>> {
    (0..n.max(1))
        .map(|_| {
            let sock = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
            let state = quinn::udp::UdpSocketState::new((&sock).into())?;
            state.set_recv_buffer_size((&sock).into(), 4 << 20)?;
            state.set_send_buffer_size((&sock).into(), 4 << 20)?;
            let runtime = Arc::new(quinn::TokioRuntime);
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, sock, runtime)
                .context("client endpoint on loopback")
        })
        .collect()
}

/// Runs every phase; the service is stopped and its files removed on return.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    agentmesh_tlsid::install_default_provider();
    let load_avg_start = load_avg();
    let agents = args.nodes * args.agents_per_node;
    eprintln!("signing {agents} manifests for {} nodes…", args.nodes);
    let t = Instant::now();
    let population = agents::population(args.nodes, args.agents_per_node);
    let sign_s = t.elapsed().as_secs_f64();
    let all = population.clone();
    eprintln!("starting the service…");
    let svc = start_service(args).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_idle_kib, _) = rss_kib(svc.pid())?;
    eprintln!(
        "connecting {} nodes over {} endpoints…",
        args.nodes, args.endpoints
    );
    let endpoints = client_endpoints(args.endpoints)?;
    let drops_before = udp_rcvbuf_errors();
    let Connected {
        clients,
        stats: connect,
    } = connect_all(args, &svc.target, &endpoints)
        .await
        .with_context(|| svc.log_tail())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_connected_kib, _) = rss_kib(svc.pid())?;
    eprintln!("registering {agents} agents…");
    let hb = Arc::new(HbStats::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut reg = register_all(args, &svc, &clients, population, &hb, &stop)
        .await
        .with_context(|| svc.log_tail())?;
    reg.stats.udp_rcvbuf_drops = udp_rcvbuf_errors().saturating_sub(drops_before);
    eprintln!("waiting for SQLite…");
    let rows = wait_persisted(&svc.db(), svc.admin).await?;
    let persisted = reg.first.elapsed();
    reg.stats.persisted_rows = rows;
    reg.stats.persisted_s = persisted.as_secs_f64();
    reg.stats.persisted_agents_per_sec = rows as f64 / persisted.as_secs_f64().max(1e-9);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_agents_kib, _) = rss_kib(svc.pid())?;
    eprintln!(
        "discovery from node 0 while {} nodes heartbeat…",
        args.nodes
    );
    let client0 = clients.first().context("no nodes")?.clone();
    let discovery = discovery(args, &client0, &all).await?;
    let (rss_after_discovery_kib, hwm_kib) = rss_kib(svc.pid())?;
    let server = server_counters(&metrics(svc.admin).await?);
    let _ = stop_tx.send(true);
    let sqlite = sqlite_size(&svc.db(), agents);
    let connected_growth = rss_connected_kib.saturating_sub(rss_idle_kib) * 1024;
    let agents_growth = rss_agents_kib.saturating_sub(rss_connected_kib) * 1024;
    drop(clients);
    Ok(Report {
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_avg_start,
        load_avg_end: load_avg(),
        nodes: args.nodes,
        agents_per_node: args.agents_per_node,
        agents,
        endpoints: endpoints.len(),
        heartbeat_ms: args.heartbeat_ms,
        sign_s,
        connect,
        registration: reg.stats,
        memory: Memory {
            rss_idle_kib,
            rss_connected_kib,
            rss_registered_kib: reg.rss_registered_kib,
            rss_agents_kib,
            rss_after_discovery_kib,
            hwm_kib,
            bytes_per_node: connected_growth as f64 / args.nodes.max(1) as f64,
            bytes_per_agent: agents_growth as f64 / agents.max(1) as f64,
        },
        sqlite,
        heartbeats: heartbeat_report(&hb),
        server,
        target_p99_ms: 5.0,
        discovery,
    })
}
