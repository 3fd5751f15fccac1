//! The measured daemon as its own process: the real `agentmeshd` binary (found next to
//! this executable) started with a TOML file pointing at the bench's rendezvous and
//! relay. Its resident memory idle and with sessions from many in-process peer daemons
//! (each pings it once) and its CPU time idle with them; then, with only a few peers
//! left, its CPU time while clients offer a fixed request rate to echo agents on it,
//! over the mesh from peer daemons and over its own local socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh::cli::sample_agents::spawn_agent;
use agentmesh::cli::Client;
use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::footprint::{cpu_time, cpu_time_of, rss_kib_of};
use crate::mesh::{run_daemon, RunningDaemon, Services};

/// Echo agents on the measured daemon (requests are spread over them).
const ECHO_AGENTS: usize = 4;
/// Peer daemons whose agents send the remote requests.
const CALLER_NODES: usize = 4;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExternalConfig {
    /// Peer daemons that open a session to the measured daemon.
    pub(crate) peers: usize,
    /// Offered request rate for the CPU measurement.
    pub(crate) rate: u32,
    /// Concurrent clients offering it.
    pub(crate) clients: usize,
    /// Seconds of each CPU measurement.
    pub(crate) secs: u64,
}

/// A running `agentmeshd` child; killed on drop.
struct Agentmeshd {
    child: Child,
    socket: PathBuf,
}

impl Agentmeshd {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Agentmeshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `agentmeshd` next to this executable (`cargo build --release --bins` builds both), or
/// one directory up when this is a unit-test executable in `target/<profile>/deps`.
pub(crate) fn daemon_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable without a directory")?;
    let mut bin = dir.join("agentmeshd");
    if !bin.exists() && dir.ends_with("deps") {
        if let Some(up) = dir.parent() {
            bin = up.join("agentmeshd");
        }
    }
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --bins`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Writes the measured daemon's TOML and starts `agentmeshd` on it; waits (bounded)
/// until its local API answers and its network layer reports.
async fn start_agentmeshd(s: &Services, dir: &Path) -> anyhow::Result<Agentmeshd> {
    let toml = s.daemon_toml(dir, "measured")?;
    let path = dir.join("measured.toml");
    std::fs::write(&path, toml)?;
    let log = std::fs::File::create(dir.join("measured.log"))?;
    let child = Command::new(daemon_binary()?)
        .arg("--config")
        .arg(&path)
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting agentmeshd")?;
    let d = Agentmeshd {
        child,
        socket: dir.join("measured.sock"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = Client::connect(&d.socket).await {
            if let Ok(st) = c.call("status", json!({})).await {
                if !st["net"].is_null() {
                    return Ok(d);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("agentmeshd did not come up in 20 s (see measured.log)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the separate-process footprint and returns its JSON.
pub(crate) async fn run(s: &Services, dir: &Path, cfg: ExternalConfig) -> anyhow::Result<Value> {
    eprintln!("footprint: agentmeshd as its own process");
    let d = start_agentmeshd(s, dir).await?;
    let pid = d.pid();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_kib_of(&pid)?;
    let node = {
        let mut c = Client::connect(&d.socket).await?;
        c.call("status", json!({})).await?["node_id"].clone()
    };
    eprintln!(
        "footprint: agentmeshd idle at {idle} KiB; {} peers ping it",
        cfg.peers
    );
    let t0 = Instant::now();
    let (peers, failed) = start_peers(s, dir, &node, cfg.peers).await?;
    let sessions_s = t0.elapsed().as_secs_f64();
    // Let handshakes, punching and the first keepalives settle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let with_peers = rss_kib_of(&pid)?;
    let sessions = session_count(&d.socket).await?;
    let per_peer_bytes =
        (with_peers.saturating_sub(idle) as f64 * 1024.0) / (sessions.max(1) as f64);
    eprintln!(
        "footprint: {sessions} sessions, agentmeshd at {with_peers} KiB ({per_peer_bytes:.0} B per peer)"
    );
    let idle_cpu = {
        let (c0, t0) = (cpu_time_of(&pid)?, Instant::now());
        tokio::time::sleep(Duration::from_secs(cfg.secs)).await;
        (cpu_time_of(&pid)? - c0).as_secs_f64() / t0.elapsed().as_secs_f64()
    };
    // The load is measured with only the caller daemons as peers: a thousand daemons in
    // this process would compete with the measured one for the machine's cores.
    let mut peers = peers;
    let leaving = peers.split_off(CALLER_NODES.min(peers.len()));
    let stops = leaving
        .into_iter()
        .map(|(p, _)| tokio::spawn(p.shutdown(Duration::from_secs(5))));
    for s in stops.collect::<Vec<_>>() {
        s.await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let targets = start_echo_agents(&d.socket).await?;
    let callers: Vec<&Path> = peers.iter().map(|(_, p)| p.as_path()).collect();
    eprintln!(
        "footprint: {} requests/s from {} clients on {} peer daemons for {} s",
        cfg.rate,
        cfg.clients,
        callers.len(),
        cfg.secs
    );
    let remote = cpu_at_rate(&pid, &callers, &targets, cfg).await?;
    eprintln!("footprint: the same on agentmeshd's own socket");
    let local = cpu_at_rate(&pid, &[d.socket.as_path()], &targets, cfg).await?;
    let rss_end = rss_kib_of(&pid)?;
    drop(peers);
    Ok(json!({
        "rss_idle_kib": idle,
        "peers_started": cfg.peers,
        "peer_pings_failed": failed,
        "sessions": sessions,
        "seconds_to_open_sessions": sessions_s,
        "rss_with_peers_kib": with_peers,
        "cpu_core_share_idle_with_peers": idle_cpu,
        "per_idle_peer_bytes": per_peer_bytes,
        "rss_after_load_kib": rss_end,
        "cpu_remote_requests": remote,
        "cpu_local_requests": local,
    }))
}

/// Starts `n` in-process daemons, each of which pings `node` once (at most 32 at a
/// time); returns them with their sockets, and how many pings failed.
async fn start_peers(
    s: &Services,
    dir: &Path,
    node: &Value,
    n: usize,
) -> anyhow::Result<(Vec<(RunningDaemon, PathBuf)>, usize)> {
    let gate = Arc::new(Semaphore::new(32));
    let failed = Arc::new(AtomicU64::new(0));
    let mut peers = Vec::with_capacity(n);
    let mut pings = Vec::with_capacity(n);
    for i in 0..n {
        let config = s.daemon_config(dir, &format!("peer{i}"))?;
        let permit = gate.clone().acquire_owned().await?;
        peers.push((run_daemon(&config, None).await?, config.socket.clone()));
        let (sock, node, failed) = (config.socket, node.clone(), failed.clone());
        pings.push(tokio::spawn(async move {
            if ping(&sock, &node).await.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        }));
        if (i + 1) % 100 == 0 {
            eprintln!("footprint: {} peers started", i + 1);
        }
    }
    for p in pings {
        p.await?;
    }
    let failed = failed.load(Ordering::Relaxed) as usize;
    Ok((peers, failed))
}

/// One ping from the daemon at `sock` to `node` (retried while the peer daemon is still
/// joining the mesh).
async fn ping(sock: &Path, node: &Value) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut c = Client::connect(sock).await?;
    loop {
        let r = c.call("ping", json!({"target": node, "count": 1})).await;
        if matches!(&r, Ok(v) if v["received"] == json!(1)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("ping never answered: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Peers with a live session, as the measured daemon's `status` says.
async fn session_count(sock: &Path) -> anyhow::Result<usize> {
    let mut c = Client::connect(sock).await?;
    let st = c.call("status", json!({})).await?;
    let peers = st["net"]["peers"].as_array().cloned().unwrap_or_default();
    Ok(peers.iter().filter(|p| p["session"] == json!(true)).count())
}

/// Echo agents on the measured daemon; their ids.
async fn start_echo_agents(sock: &Path) -> anyhow::Result<Vec<Value>> {
    let skills = json!([{"id": "echo", "name": "Echo"}]);
    for i in 0..ECHO_AGENTS {
        spawn_agent(
            sock,
            &format!("echo-{i}"),
            json!(["bench-load"]),
            skills.clone(),
        )
        .await?;
    }
    let mut c = Client::connect(sock).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .call(
                "discover",
                json!({"query": {"capabilities": ["bench-load"]}}),
            )
            .await;
        let ids: Vec<Value> = r
            .as_ref()
            .ok()
            .and_then(|r| r["agents"].as_array())
            .map(|a| a.iter().map(|x| x["id"].clone()).collect())
            .unwrap_or_default();
        if ids.len() >= ECHO_AGENTS {
            return Ok(ids);
        }
        if Instant::now() > deadline {
            bail!("only {} echo agents discovered: {r:?}", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `cfg.clients` callers spread over the daemons at `socks`, each sending sequential
/// requests paced at its share of `cfg.rate` to the echo agents in turn, for
/// `cfg.secs`; the measured daemon's and this process's CPU as a share of one core.
async fn cpu_at_rate(
    pid: &str,
    socks: &[&Path],
    targets: &[Value],
    cfg: ExternalConfig,
) -> anyhow::Result<Value> {
    let clients = cfg.clients.max(1);
    let period = Duration::from_secs_f64(clients as f64 / f64::from(cfg.rate.max(1)));
    let mut callers = Vec::with_capacity(clients);
    for i in 0..clients {
        let sock = socks
            .get(i % socks.len().max(1))
            .context("no caller daemon")?;
        let mut c = Client::connect(sock).await?;
        let reg = c
            .call(
                "register",
                json!({"manifest": {"name": format!("caller-{i}")}}),
            )
            .await?;
        // The remote echo agents must be in the caller daemon's directory first.
        let target = targets[i % targets.len()].clone();
        wait_known(&mut c, &target).await?;
        callers.push((c, reg["agent_id"].clone(), target));
    }
    let run_for = Duration::from_secs(cfg.secs);
    let (cpu0, own0, t0) = (cpu_time_of(pid)?, cpu_time()?, Instant::now());
    let served = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for (mut c, me, to) in callers {
        let (served, errors) = (served.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let args = json!({"from": me, "to": to, "skill": "echo", "input": "x".repeat(64)});
            while t0.elapsed() < run_for {
                tick.tick().await;
                match request(&mut c, args.clone()).await {
                    Ok(()) => served.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let (cpu, own) = (cpu_time_of(pid)? - cpu0, cpu_time()? - own0);
    Ok(json!({
        "offered_per_s": cfg.rate,
        "clients": clients,
        "caller_daemons": socks.len(),
        "served_per_s": served.load(Ordering::Relaxed) as f64 / wall,
        "errors": errors.load(Ordering::Relaxed),
        "agentmeshd_cpu_core_share": cpu.as_secs_f64() / wall,
        "bench_process_cpu_core_share": own.as_secs_f64() / wall,
        "seconds": wall,
        "load_average": crate::load_average(),
    }))
}

/// Waits (bounded) until a request to `target` no longer fails for want of its address.
async fn wait_known(c: &mut Client, target: &Value) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Discovery fails while the rendezvous link is down (it may still be catching
        // up after the peers left): retried like an empty answer.
        let r = c
            .call(
                "discover",
                json!({"query": {"capabilities": ["bench-load"]}}),
            )
            .await;
        let known = r.as_ref().is_ok_and(|r| {
            r["agents"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| &x["id"] == target))
        });
        if known {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("echo agent {target} never discovered: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One request and its final reply; an error unless it completed.
async fn request(c: &mut Client, args: Value) -> anyhow::Result<()> {
    let id = c.send("request", args).await?;
    // Skips the pushes (`submitted`, updates) rather than queueing them.
    let fin = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), c.next_message())
            .await
            .context("no reply in 10 s")??;
        if m.get("event").is_none() && m["id"] == json!(id) {
            break m;
        }
    };
    if fin["ok"]["state"] != "completed" {
        bail!("request ended {}", fin["ok"]["state"]);
    }
    Ok(())
}
