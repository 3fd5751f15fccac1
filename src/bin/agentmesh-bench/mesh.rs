//! The agentmesh contenders: a rendezvous and a relay in-process, and pairs of full
//! daemons on loopback (`Daemon::start` + `run_on` on a real UDP socket), each daemon of
//! a pair on a tokio runtime of its own built as `agentmeshd` builds it (sharing the
//! bench's worker threads made a 64 B round trip ≈ 40 µs faster than two real daemons
//! get), an echo agent on one daemon and a caller on the other, both over the real local
//! API. A pair is
//! either left to find its direct path or firewalled (each daemon's UDP may reach only
//! the rendezvous and the relay) so it stays on the relay path.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh::cli::sample_agents::spawn_agent;
use agentmesh::cli::Client;
use agentmesh::config::DaemonConfig;
use agentmesh::daemon::{mesh_config, Daemon, NetBinding};
use agentmesh_proto::{NodeId, SecretKey};
use agentmesh_relay::limits::Limits;
use agentmesh_relay::{Config as RelayConfig, MemStore, RelayHandle, StartOptions};
use agentmesh_rendezvous::config::Config as RvConfig;
use agentmesh_rendezvous::server::{self, Running};
use anyhow::{bail, Context as _};
use quinn::{AsyncUdpSocket, TokioRuntime};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::firewall::Firewalled;

/// The rendezvous and the relay.
pub(crate) struct Services {
    pub(crate) rv: Running,
    pub(crate) relay: RelayHandle,
    /// `worker_threads` of every daemon's configuration (0: one per core).
    pub(crate) daemon_workers: usize,
}

/// Relay limits with the per-client rate limits out of the way (a benchmark measures
/// forwarding, not the policy); `relay-bench` does the same.
pub(crate) fn bench_limits() -> Limits {
    Limits {
        rate_bytes_per_sec: 1 << 40,
        rate_packets_per_sec: 1 << 30,
        queue_frames: 4096,
        queue_bytes: 16 << 20,
        ..Limits::default()
    }
}

pub(crate) async fn start_relay(limits: Limits) -> anyhow::Result<RelayHandle> {
    let cfg = RelayConfig {
        udp_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        tls_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_listen: None,
        limits,
        ..RelayConfig::default()
    };
    let store = Box::new(MemStore::default());
    let key = SecretKey::from_bytes(&[202; 32]);
    Ok(agentmesh_relay::start(&cfg, key, store, StartOptions::default()).await?)
}

pub(crate) async fn start_services(
    dir: &Path,
    limits: Limits,
    daemon_workers: usize,
) -> anyhow::Result<Services> {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nstun_alt = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         key_file = \"{d}/rv.key\"\ndatabase = \"{d}/rv.sqlite\"\n\
         [[tenant]]\nname = \"bench\"\njoin_token = \"bench-token\"\n",
        d = dir.display()
    );
    let cfg = RvConfig::parse(&text)?;
    let rv = server::start(cfg, SecretKey::from_bytes(&[201; 32])).await?;
    let relay = start_relay(limits).await?;
    Ok(Services {
        rv,
        relay,
        daemon_workers,
    })
}

impl Services {
    /// Every UDP address a daemon needs to reach: the rendezvous, its second STUN
    /// address, the relay.
    fn udp_addrs(&self) -> Vec<SocketAddr> {
        let mut v = vec![self.rv.udp_addr];
        v.extend(self.rv.stun_alt_addr);
        v.extend(self.relay.udp_addr);
        v
    }

    /// A daemon's configuration, as its TOML file would say it.
    pub(crate) fn daemon_config(&self, dir: &Path, name: &str) -> anyhow::Result<DaemonConfig> {
        Ok(DaemonConfig::parse(&self.daemon_toml(dir, name)?)?)
    }

    /// A daemon's TOML configuration file: socket and state under `dir`, this
    /// rendezvous and relay, no UPnP, no admin listener (a thousand daemons would all
    /// try the default port).
    pub(crate) fn daemon_toml(&self, dir: &Path, name: &str) -> anyhow::Result<String> {
        let toml = DaemonToml {
            socket: &dir.join(format!("{name}.sock")),
            state_dir: &dir.join(name),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            stun: self.rv.stun_alt_addr,
            rendezvous: (self.rv.udp_addr, self.rv.id),
            relay_id: self.relay.relay_id,
            relay_udp: self.relay.udp_addr.context("relay without UDP")?,
            relay_tls: self.relay.tls_addr.context("relay without TLS")?,
            workers: self.daemon_workers,
        };
        Ok(toml.text())
    }
}

/// What a measured daemon's TOML says: where it lives, where it listens, and the
/// rendezvous (tenant `bench`) and relay it joins. The loopback pairs and the `wan`
/// part's daemons are written by this one template.
pub(crate) struct DaemonToml<'a> {
    pub(crate) socket: &'a Path,
    pub(crate) state_dir: &'a Path,
    pub(crate) listen: SocketAddr,
    pub(crate) stun: Option<SocketAddr>,
    /// The rendezvous' address and node id.
    pub(crate) rendezvous: (SocketAddr, NodeId),
    pub(crate) relay_id: NodeId,
    pub(crate) relay_udp: SocketAddr,
    pub(crate) relay_tls: SocketAddr,
    /// `worker_threads` (0: one per core).
    pub(crate) workers: usize,
}

impl DaemonToml<'_> {
    pub(crate) fn text(&self) -> String {
        let stun: Vec<String> = self.stun.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "socket = \"{sock}\"\nstate_dir = \"{state}\"\nlisten = \"{listen}\"\n\
             upnp = false\nadmin = \"\"\nstun_servers = [{stun}]\nworker_threads = {workers}\n\
             [rendezvous]\naddr = \"{rv}\"\nnode_id = \"{rv_id}\"\ntenant = \"bench\"\n\
             token = \"bench-token\"\n\
             [relay]\nnode_id = \"{relay_id}\"\nudp = \"{udp}\"\ntls = \"{tls}\"\n",
            sock = self.socket.display(),
            state = self.state_dir.display(),
            listen = self.listen,
            stun = stun.join(", "),
            rv = self.rendezvous.0,
            rv_id = self.rendezvous.1,
            relay_id = self.relay_id,
            udp = self.relay_udp,
            tls = self.relay_tls,
            workers = self.workers,
        )
    }
}

/// One daemon running in a task of this process.
pub(crate) struct RunningDaemon {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    /// Datagrams the firewall dropped (zero without one).
    pub(crate) dropped: Arc<AtomicU64>,
}

impl RunningDaemon {
    /// Stops the daemon the way SIGTERM does (its network node shuts down, sessions
    /// close) and waits for it, at most `within`.
    pub(crate) async fn shutdown(mut self, within: Duration) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(within, &mut self.task).await;
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

/// Starts a daemon on a real loopback UDP socket, firewalled to `allow` when given.
pub(crate) async fn run_daemon(
    config: &DaemonConfig,
    allow: Option<Vec<SocketAddr>>,
) -> anyhow::Result<RunningDaemon> {
    let daemon = Daemon::start(config)?;
    let std_sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    std_sock.set_nonblocking(true)?;
    let mut udp = quinn::Runtime::wrap_udp_socket(&TokioRuntime, std_sock)?;
    let dropped = Arc::new(AtomicU64::new(0));
    if let Some(allow) = allow {
        let f: Arc<dyn AsyncUdpSocket> = Arc::new(Firewalled::new(udp, allow, dropped.clone()));
        udp = f;
    }
    let binding = NetBinding {
        udp,
        runtime: Arc::new(TokioRuntime),
        doors: None,
        mesh: mesh_config(config, true).await?,
    };
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stopped = async {
            let _ = rx.await;
        };
        if let Err(e) = daemon.run_on(Some(binding), stopped).await {
            eprintln!("daemon stopped: {e}");
        }
    });
    Ok(RunningDaemon {
        stop: Some(tx),
        task,
        dropped,
    })
}

/// Starts a daemon as [`run_daemon`] does, but on a runtime of its own, built as
/// `agentmeshd` builds it (`DaemonConfig::runtime`), so the two daemons of a pair and the
/// bench's agents do not share worker threads, as separate processes would not.
pub(crate) async fn run_daemon_alone(
    config: &DaemonConfig,
    allow: Option<Vec<SocketAddr>>,
) -> anyhow::Result<RunningDaemon> {
    let config = config.clone();
    let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<Arc<AtomicU64>>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::task::spawn_blocking(move || {
        let runtime = match config.runtime() {
            Ok(r) => r,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        runtime.block_on(async move {
            match run_daemon(&config, allow).await {
                Ok(daemon) => {
                    let _ = ready_tx.send(Ok(daemon.dropped.clone()));
                    let _ = stop_rx.await;
                    daemon.shutdown(Duration::from_secs(5)).await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
    });
    let dropped = ready_rx
        .await
        .context("the daemon's runtime thread ended before the daemon started")??;
    Ok(RunningDaemon {
        stop: Some(stop_tx),
        task,
        dropped,
    })
}

/// Which path a pair is expected to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Direct,
    Relay,
}

impl Want {
    fn name(self) -> &'static str {
        match self {
            Want::Direct => "direct",
            Want::Relay => "relay",
        }
    }
}

/// Two daemons, an echo agent on `b`, a registered caller on `a`.
pub(crate) struct MeshPair {
    pub(crate) a: RunningDaemon,
    pub(crate) b: RunningDaemon,
    caller: Client,
    me: Value,
    target: Value,
    want: Want,
}

impl MeshPair {
    /// Starts the pair and waits (bounded) until its peer path is the wanted one.
    pub(crate) async fn start(s: &Services, dir: &Path, want: Want) -> anyhow::Result<MeshPair> {
        let tag = want.name();
        let (ca, cb) = (
            s.daemon_config(dir, &format!("{tag}-a"))?,
            s.daemon_config(dir, &format!("{tag}-b"))?,
        );
        let allow = (want == Want::Relay).then(|| s.udp_addrs());
        let a = run_daemon_alone(&ca, allow.clone()).await?;
        let b = run_daemon_alone(&cb, allow).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cap = format!("bench-{tag}");
        let skills = json!([{"id": "echo", "name": "Echo"}]);
        spawn_agent(&cb.socket, &format!("echo-{tag}"), json!([cap]), skills).await?;
        let mut caller = Client::connect(&ca.socket).await?;
        let reg = caller
            .call(
                "register",
                json!({"manifest": {"name": format!("caller-{tag}")}}),
            )
            .await?;
        let me = reg["agent_id"].clone();
        let target = discover(&mut caller, &cap).await?;
        let mut pair = MeshPair {
            a,
            b,
            caller,
            me,
            target,
            want,
        };
        pair.request(&json!("hello")).await?;
        pair.wait_for_path(Duration::from_secs(15)).await?;
        Ok(pair)
    }

    /// The peer entry of `status` (path, tier, RTT), when a session exists.
    pub(crate) async fn peer_status(&mut self) -> anyhow::Result<Option<Value>> {
        let st = self.caller.call("status", json!({})).await?;
        let peers = st["net"]["peers"].as_array().cloned().unwrap_or_default();
        Ok(peers.into_iter().find(|p| p["session"] == json!(true)))
    }

    async fn wait_for_path(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let peer = self.peer_status().await?;
            if let Some(p) = &peer {
                if p["path"] == self.want.name() {
                    // A relayed pair must still be relayed after the path finder had
                    // its chance to punch.
                    if self.want == Want::Direct || Instant::now() + within / 3 > deadline {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("path never {}: {peer:?}", self.want.name());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One request to the echo agent and its final reply; `input` comes back as text.
    pub(crate) async fn request(&mut self, input: &Value) -> anyhow::Result<Duration> {
        echo_request(&mut self.caller, &self.me, &self.target, input).await
    }

    /// Datagrams the firewalls dropped (the direct attempts of a relayed pair).
    pub(crate) fn dropped(&self) -> u64 {
        self.a.dropped.load(Ordering::Relaxed) + self.b.dropped.load(Ordering::Relaxed)
    }
}

/// One request from `me` to the echo agent `target` over the caller's local API, and
/// its final reply; `input` must come back as text.
pub(crate) async fn echo_request(
    caller: &mut Client,
    me: &Value,
    target: &Value,
    input: &Value,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let args = json!({"from": me, "to": target, "skill": "echo", "input": input});
    let id = caller.send("request", args).await?;
    let fin = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), caller.next_message())
            .await
            .context("no reply in 10 s")??;
        if m.get("event").is_none() && m["id"] == json!(id) {
            break m;
        }
    };
    let took = started.elapsed();
    let want_len = input.as_str().map_or(0, str::len);
    let got = fin["ok"]["output"]["text"].as_str().map(str::len);
    if fin["ok"]["state"] != "completed" || (want_len > 0 && got != Some(want_len)) {
        bail!("request failed: {}", truncate(&fin));
    }
    Ok(took)
}

fn truncate(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(300).collect()
}

/// Discovers the agent with `cap` (bounded) and returns its id.
pub(crate) async fn discover(c: &mut Client, cap: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c
            .call("discover", json!({"query": {"capabilities": [cap]}}))
            .await;
        if let Ok(v) = &r {
            if let Some(a) = v["agents"].as_array().and_then(|a| a.first()) {
                return Ok(a["id"].clone());
            }
        }
        if Instant::now() > deadline {
            bail!("discovery never found {cap}: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
