//! The `wan` part: agentmesh against a broker across a network, not loopback. A netns
//! lab (real Linux namespaces and veths, nftables NAT, a delay D on every site's uplink
//! in both directions: `tc netem`, or where the kernel has no `sch_netem` the NFQUEUE
//! delay of [`crate::nfdelay`]) holds a `cloud` site with public addresses (hosts
//! `rv`, `relay`, `nats`: the rendezvous and the relay served in-process by runtimes
//! inside their namespaces, a real `nats-server` child) and two home sites `a` and `b`
//! behind port-restricted-cone NAT routers (Linux masquerade), each with hosts running
//! the real `agentmeshd`. Every path between two sites crosses two uplinks, so a round
//! trip straight from `a` to `b` costs 4D and one that goes through the cloud 8D.
//!
//! Contenders, interleaved in rounds as the `rtt` part does: a raw UDP ping-pong
//! `a1` ↔ `b1` (punched through both NATs; the floor), NATS request/reply through the
//! server in the cloud (requester on a runtime inside `a1`, echo responder inside `b1`),
//! agentmesh direct (caller on `a1`'s daemon, echo agent on `b1`'s, over their Unix
//! sockets, measured once the peer path is `direct`) and agentmesh over the relay (`a2`
//! and `b2`, whose namespaces drop all output except to the cloud's servers, so the path
//! stays `relay`). The namespaces, the threads inside them and every child process go
//! away when [`run`] returns, also on error (the [`Lab`] kills its children and deletes
//! its namespaces on drop).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentmesh::cli::sample_agents::spawn_agent;
use agentmesh::cli::Client;
use agentmesh_proto::{NodeId, SecretKey};
use agentmesh_relay::{Config as RelayConfig, MemStore, RelayHandle, StartOptions};
use agentmesh_rendezvous::config::Config as RvConfig;
use agentmesh_rendezvous::server::{self, Running};
use anyhow::{bail, Context as _};
use bytes::Bytes;
use netsim::netns::{gate, lab::enter_namespace, netem, Lab, Netem, Tool, INTERNET};
use netsim::Preset;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::nfdelay::{Held, NodeDelay};
use crate::report::{self, WanReport};
use crate::udp::UdpPingPong;
use crate::{Contender, Payload, Rounds};

/// The NAT of the two home sites (the most common one: plain masquerade).
const HOME_PRESET: Preset = Preset::PortRestrictedCone;
const RV_PORT: u16 = 4433;
const RV_STUN_ALT: u16 = 3479;
const RELAY_UDP: u16 = 3479;
const RELAY_TLS: u16 = 4443;
const NATS_PORT: u16 = 4222;
/// The daemons' UDP ports: one per pair, so that the two daemons behind one masquerade
/// router never compete for a public port (a clash remaps one of them for some
/// destinations only, and its STUN address would then not be its address for the peer).
const DAEMON_PORTS: [u16; 2] = [7000, 7001];
/// The UDP floor's ports (kept by masquerade, so they are also the public ones).
const UDP_ECHO_PORT: u16 = 9000;
const UDP_CLIENT_PORT: u16 = 9001;
/// Name of the nftables table that keeps the relay pair's hosts to the cloud.
const FIREWALL_TABLE: &str = "amwan";

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct WanConfig {
    /// One-way netem delay on every site's uplink (ms).
    pub(crate) delay_ms: u32,
    /// Measured round trips per contender and payload.
    pub(crate) iterations: usize,
    /// Round trips of one contender before the next takes its turn.
    pub(crate) round: usize,
    /// Warm-up round trips per contender and payload.
    pub(crate) warmup: usize,
    pub(crate) payloads: Vec<usize>,
    /// Whether the relayed agentmesh pair runs too.
    pub(crate) relay: bool,
}

/// Why the part cannot run here (not root, programs missing, no `agentmeshd` next to
/// this executable), or `None` when it can.
pub(crate) fn unavailable_reason() -> Option<String> {
    if let Some(r) = gate::unavailable_reason(&[Tool::Tc, Tool::Nft]) {
        return Some(r);
    }
    if gate::find_program("nats-server").is_none() {
        return Some("nats-server not found (Debian package nats-server)".into());
    }
    if let Err(e) = crate::external::daemon_binary() {
        return Some(e.to_string());
    }
    if !netem::netem_supported() {
        return crate::nfdelay::unavailable_reason();
    }
    None
}

/// A contender of this part (the UDP floor is the rtt part's own [`UdpPingPong`]).
pub(crate) enum WanContender {
    Nats(WanNats),
    Mesh(MeshCaller),
}

impl WanContender {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            WanContender::Nats(_) => report::NATS_CLOUD,
            WanContender::Mesh(m) => m.name,
        }
    }

    pub(crate) async fn once(&mut self, p: &Payload) -> anyhow::Result<Duration> {
        match self {
            WanContender::Nats(n) => n.round_trip(&p.bytes).await,
            WanContender::Mesh(m) => {
                crate::mesh::echo_request(&mut m.client, &m.me, &m.target, &p.json).await
            }
        }
    }
}

/// Builds the lab, starts everything in it, measures, and tears it all down.
pub(crate) async fn run(cfg: &WanConfig) -> anyhow::Result<WanReport> {
    let dir = tempfile::tempdir()?;
    eprintln!(
        "wan: building the netns lab (one-way delay {} ms per uplink)",
        cfg.delay_ms
    );
    let netem = tokio::task::block_in_place(netem::netem_supported);
    let lab = tokio::task::block_in_place(|| build_lab(cfg, netem))?;
    let result = async {
        let d = Duration::from_millis(cfg.delay_ms.into());
        let delays = if netem {
            Vec::new()
        } else {
            nfqueue_delays(&lab, d)?
        };
        let r = measure(&lab, dir.path(), cfg, netem).await;
        tokio::task::block_in_place(|| drop(delays));
        r
    }
    .await;
    // Namespaces, agentmeshd and nats-server go (blocking commands) whatever happened.
    tokio::task::block_in_place(|| drop(lab));
    let mut r = result?;
    r.delay_by = if netem {
        "tc netem"
    } else {
        "nfqueue (the kernel has no sch_netem)"
    };
    Ok(r)
}

/// The nodes whose uplink carries the delay: the cloud's hosts and the home routers.
const DELAYED: [&str; 5] = ["rv", "relay", "nats", "a", "b"];
/// The cloud's hosts (public addresses on the internet bridge).
const CLOUD: [&str; 3] = ["rv", "relay", "nats"];
/// The home sites' hosts (behind the routers `a` and `b`).
const HOMES: [&str; 4] = ["a1", "a2", "b1", "b2"];

/// The same delays as netem on [`DELAYED`] would give, by NFQUEUE: on the home routers'
/// uplinks, and for the cloud's hosts where their traffic to the home sites is routed
/// (the internet namespace), not in their own namespaces (see [`crate::nfdelay`]).
/// Traffic between two cloud hosts is not delayed (none is measured). Every host sends
/// plain packets, segmented before they leave it as by a NIC without offloads: a
/// forwarded UDP GSO super-packet split by the queue lost some of its segments (about
/// one in ten of a relayed 64 KiB request's, seen as QUIC retransmissions).
fn nfqueue_delays(lab: &Lab, d: Duration) -> anyhow::Result<Vec<NodeDelay>> {
    for host in CLOUD.iter().chain(&HOMES) {
        lab.exec(
            host,
            "ip",
            &["link", "set", "dev", "eth0", "gso_max_segs", "1"],
        )?;
    }
    let cloud: Vec<Ipv4Addr> = CLOUD
        .iter()
        .map(|h| lab.addr(h))
        .collect::<Result<_, _>>()?;
    Ok(vec![
        NodeDelay::start(lab, "a", Held::Uplink, d)?,
        NodeDelay::start(lab, "b", Held::Uplink, d)?,
        NodeDelay::start(lab, INTERNET, Held::Addresses(&cloud), d)?,
    ])
}

/// Sites `cloud` (open), `a` and `b` (NAT); with `netem`, netem on every node of
/// [`DELAYED`] (otherwise the caller puts its NFQUEUE delay there).
fn build_lab(cfg: &WanConfig, netem: bool) -> anyhow::Result<Lab> {
    let d = Netem::delay(cfg.delay_ms);
    let b = Lab::builder()
        .site("cloud", Preset::Open)
        .host("rv", "cloud")
        .host("relay", "cloud")
        .host("nats", "cloud")
        .site("a", HOME_PRESET)
        .host("a1", "a")
        .host("a2", "a")
        .site("b", HOME_PRESET)
        .host("b1", "b")
        .host("b2", "b");
    let b = if netem {
        DELAYED.into_iter().fold(b, |b, node| b.netem(node, d))
    } else {
        b
    };
    Ok(b.build()?)
}

/// Everything the daemons need to know about the cloud.
struct Cloud {
    rv: SocketAddr,
    rv_stun: SocketAddr,
    rv_id: NodeId,
    relay_udp: SocketAddr,
    relay_tls: SocketAddr,
    relay_id: NodeId,
}

/// The servers in the cloud, on runtimes inside their namespaces.
struct CloudServices {
    rv: Option<Running>,
    relay: Option<RelayHandle>,
    rv_rt: NsRuntime,
    relay_rt: NsRuntime,
}

impl CloudServices {
    /// Stops both servers gracefully (their runtimes go when dropped).
    async fn stop(mut self) {
        if let Some(rv) = self.rv.take() {
            let _ = self.rv_rt.run(rv.shutdown()).await;
        }
        if let Some(mut relay) = self.relay.take() {
            let _ = self.relay_rt.run(async move { relay.stop().await }).await;
        }
    }
}

/// Starts the servers, the daemons and the contenders in the built lab and measures;
/// without `netem`, the NFQUEUE delay's counters go into the paths.
async fn measure(lab: &Lab, dir: &Path, cfg: &WanConfig, netem: bool) -> anyhow::Result<WanReport> {
    let (services, cloud) = start_cloud(lab, dir).await?;
    let port = NATS_PORT.to_string();
    let nats = lab.spawn("nats", "nats-server", &["-a", "0.0.0.0", "-p", &port])?;
    let mut hosts = vec![("a1", "b1")];
    if cfg.relay {
        firewall_to_cloud(lab, "a2")?;
        firewall_to_cloud(lab, "b2")?;
        hosts.push(("a2", "b2"));
    }
    let mut daemons = Vec::new();
    for ((a, b), port) in hosts.iter().zip(DAEMON_PORTS) {
        daemons.push((
            start_daemon(lab, dir, &cloud, a, port)?,
            start_daemon(lab, dir, &cloud, b, port)?,
        ));
    }
    for (a, b) in &mut daemons {
        a.wait_joined().await?;
        b.wait_joined().await?;
    }
    eprintln!("wan: daemons joined; UDP floor, NATS clients, agentmesh pairs");
    let mut cs = vec![Contender::Udp(tokio::task::block_in_place(|| {
        udp_floor(lab, "a1", "b1")
    })?)];
    let nats_addr = SocketAddr::new(lab.addr("nats")?.into(), NATS_PORT);
    cs.push(Contender::Wan(WanContender::Nats(
        WanNats::start(lab, ("a1", "b1"), nats_addr).await?,
    )));
    let mut mesh_names = vec![report::MESH_DIRECT];
    if cfg.relay {
        mesh_names.push(report::MESH_RELAY);
    }
    for ((a, b), name) in daemons.iter().zip(mesh_names) {
        let want = if name == report::MESH_DIRECT {
            "direct"
        } else {
            "relay"
        };
        let caller = MeshCaller::start(a, b, name, want).await?;
        cs.push(Contender::Wan(WanContender::Mesh(caller)));
    }
    let rounds = Rounds {
        label: "wan",
        iterations: cfg.iterations,
        round: cfg.round,
        warmup: cfg.warmup,
        payloads: &cfg.payloads,
    };
    let rtt = crate::rtt_rounds(&rounds, &mut cs).await?;
    let mut paths = path_report(lab, &mut cs, cfg.relay).await?;
    if !netem {
        let mut q = serde_json::Map::new();
        for node in ["a", "b", INTERNET] {
            q.insert(node.into(), crate::nfdelay::queue_counters(lab, node)?);
        }
        eprintln!("wan: delay queues {q:?}");
        paths["delay_queues"] = Value::Object(q);
    }
    drop(cs);
    for (a, b) in &daemons {
        lab.kill(a.pid);
        lab.kill(b.pid);
    }
    lab.kill(nats.pid);
    services.stop().await;
    Ok(WanReport {
        delay_ms: cfg.delay_ms,
        delay_by: "",
        expected_rtt_ms: json!({
            "direct": 4 * cfg.delay_ms,
            "through_the_cloud": 8 * cfg.delay_ms,
        }),
        topology: topology(lab, cfg)?,
        rtt,
        paths,
    })
}

/// The rendezvous (QUIC + STUN, second STUN port) on `rv` and the relay (UDP + TLS)
/// on `relay`, each on a runtime inside its host's namespace.
async fn start_cloud(lab: &Lab, dir: &Path) -> anyhow::Result<(CloudServices, Cloud)> {
    let text = format!(
        "listen = \"0.0.0.0:{RV_PORT}\"\nstun_alt = \"0.0.0.0:{RV_STUN_ALT}\"\n\
         admin = \"127.0.0.1:0\"\nkey_file = \"{d}/rv.key\"\ndatabase = \"{d}/rv.sqlite\"\n\
         [[tenant]]\nname = \"bench\"\njoin_token = \"bench-token\"\n",
        d = dir.display()
    );
    let rv_cfg = RvConfig::parse(&text)?;
    let rv_rt = NsRuntime::start(lab, "rv")?;
    let rv_key = SecretKey::from_bytes(&[221; 32]);
    let rv = rv_rt.run(server::start(rv_cfg, rv_key)).await??;
    let relay_cfg = RelayConfig {
        udp_listen: Some(([0, 0, 0, 0], RELAY_UDP).into()),
        tls_listen: Some(([0, 0, 0, 0], RELAY_TLS).into()),
        admin_listen: None,
        limits: crate::mesh::bench_limits(),
        ..RelayConfig::default()
    };
    let relay_rt = NsRuntime::start(lab, "relay")?;
    let relay = relay_rt
        .run(async move {
            let key = SecretKey::from_bytes(&[222; 32]);
            let store = Box::new(MemStore::default());
            agentmesh_relay::start(&relay_cfg, key, store, StartOptions::default()).await
        })
        .await??;
    let (rv_ip, relay_ip) = (lab.addr("rv")?, lab.addr("relay")?);
    let cloud = Cloud {
        rv: SocketAddr::new(rv_ip.into(), RV_PORT),
        rv_stun: SocketAddr::new(rv_ip.into(), RV_STUN_ALT),
        rv_id: rv.id,
        relay_udp: SocketAddr::new(relay_ip.into(), RELAY_UDP),
        relay_tls: SocketAddr::new(relay_ip.into(), RELAY_TLS),
        relay_id: relay.relay_id,
    };
    let services = CloudServices {
        rv: Some(rv),
        relay: Some(relay),
        rv_rt,
        relay_rt,
    };
    Ok((services, cloud))
}

/// A current-thread tokio runtime on a thread of its own inside one lab namespace: every
/// socket its tasks open is in that namespace. Stopped (its tasks dropped) on drop.
struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    fn start(lab: &Lab, node: &str) -> anyhow::Result<NsRuntime> {
        let ns = lab.ns(node)?.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("wan-{node}"))
            .spawn(move || {
                let rt = enter_namespace(&ns)
                    .map_err(anyhow::Error::from)
                    .and_then(|()| {
                        Ok(tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?)
                    });
                match rt {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        let handle = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("namespace thread never started")??;
        Ok(NsRuntime {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Runs `fut` on this runtime (inside the namespace) and waits for its output.
    async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> anyhow::Result<T> {
        Ok(self.handle.spawn(fut).await?)
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Keeps `host` to the cloud: its namespace drops every packet it sends anywhere else
/// (counted), so its daemon cannot punch to the other site and stays on the relay.
fn firewall_to_cloud(lab: &Lab, host: &str) -> anyhow::Result<()> {
    let cloud: Vec<String> = CLOUD
        .iter()
        .map(|h| lab.addr(h).map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;
    let allow = format!("{{ {} }}", cloud.join(", "));
    let t = FIREWALL_TABLE;
    let rules: [&[&str]; 5] = [
        &["add", "table", "inet", t],
        &[
            "add",
            "chain",
            "inet",
            t,
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        ],
        &["add", "rule", "inet", t, "out", "oif", "lo", "accept"],
        &[
            "add", "rule", "inet", t, "out", "ip", "daddr", &allow, "accept",
        ],
        &["add", "rule", "inet", t, "out", "counter", "drop"],
    ];
    for args in rules {
        lab.exec(host, "nft", args)?;
    }
    Ok(())
}

/// Packets the firewall of `host` dropped.
fn firewall_dropped(lab: &Lab, host: &str) -> anyhow::Result<u64> {
    let out = lab.exec(
        host,
        "nft",
        &["list", "chain", "inet", FIREWALL_TABLE, "out"],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let n = text
        .split("counter packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no counter in the firewall chain")?;
    Ok(n)
}

/// A real `agentmeshd` inside a lab host (killed by the lab).
struct WanDaemon {
    host: String,
    socket: PathBuf,
    pid: u32,
    log: PathBuf,
    node: String,
}

/// Writes `host`'s TOML (socket and state under `dir`, the cloud's rendezvous and
/// relay, STUN at the rendezvous' second port) and starts `agentmeshd` inside `host`.
fn start_daemon(
    lab: &Lab,
    dir: &Path,
    c: &Cloud,
    host: &str,
    port: u16,
) -> anyhow::Result<WanDaemon> {
    let socket = dir.join(format!("{host}.sock"));
    let text = crate::mesh::DaemonToml {
        socket: &socket,
        state_dir: &dir.join(host),
        listen: SocketAddr::from(([0, 0, 0, 0], port)),
        stun: Some(c.rv_stun),
        rendezvous: (c.rv, c.rv_id),
        relay_id: c.relay_id,
        relay_udp: c.relay_udp,
        relay_tls: c.relay_tls,
        workers: 0,
    }
    .text();
    let config = dir.join(format!("{host}.toml"));
    std::fs::write(&config, text)?;
    let exe = crate::external::daemon_binary()?;
    let exe = exe.to_str().context("agentmeshd path is not UTF-8")?;
    let config = config.to_str().context("temp dir path is not UTF-8")?;
    let spawned = lab.spawn(host, exe, &["--config", config, "--log-level", "warn"])?;
    Ok(WanDaemon {
        host: host.to_owned(),
        socket,
        pid: spawned.pid,
        log: spawned.log,
        node: String::new(),
    })
}

impl WanDaemon {
    /// Waits (bounded) until the daemon answers and is joined to the rendezvous.
    async fn wait_joined(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::from("no socket");
        while Instant::now() < deadline {
            if let Ok(mut c) = Client::connect(&self.socket).await {
                match c.call("status", json!({})).await {
                    Ok(st) if st["net"]["rendezvous"]["connected"] == json!(true) => {
                        self.node = st["node_id"].as_str().unwrap_or_default().to_owned();
                        return Ok(());
                    }
                    Ok(st) => last = st["net"].to_string(),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        bail!(
            "agentmeshd on {} never joined: {last}; its log ends:\n{}",
            self.host,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

/// A caller agent on one daemon and the echo agent on the other.
pub(crate) struct MeshCaller {
    name: &'static str,
    client: Client,
    me: Value,
    target: Value,
    /// The echo agent's daemon.
    peer: String,
}

impl MeshCaller {
    /// Registers an echo agent on `b` and a caller on `a`, sends one request and waits
    /// (bounded) until `a`'s path to `b` is `want` (`relay` must hold for a while, as
    /// the path finder would punch within it).
    async fn start(
        a: &WanDaemon,
        b: &WanDaemon,
        name: &'static str,
        want: &str,
    ) -> anyhow::Result<MeshCaller> {
        let cap = format!("wan-{want}");
        let skills = json!([{"id": "echo", "name": "Echo"}]);
        spawn_agent(&b.socket, &format!("echo-{want}"), json!([cap]), skills).await?;
        let mut client = Client::connect(&a.socket).await?;
        let reg = client
            .call(
                "register",
                json!({"manifest": {"name": format!("caller-{want}")}}),
            )
            .await?;
        let target = crate::mesh::discover(&mut client, &cap).await?;
        let mut m = MeshCaller {
            name,
            client,
            me: reg["agent_id"].clone(),
            target,
            peer: b.node.clone(),
        };
        crate::mesh::echo_request(&mut m.client, &m.me, &m.target, &json!("hello")).await?;
        m.wait_for_path(want, Duration::from_secs(15)).await?;
        Ok(m)
    }

    /// The daemon's peer entry for the echo agent's node (path, tier, RTT).
    async fn peer_status(&mut self) -> anyhow::Result<Option<Value>> {
        let st = self.client.call("status", json!({})).await?;
        let peers = st["net"]["peers"].as_array().cloned().unwrap_or_default();
        Ok(peers.into_iter().find(|p| p["node"] == json!(self.peer)))
    }

    async fn wait_for_path(&mut self, want: &str, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let peer = self.peer_status().await?;
            let on_it = peer.as_ref().is_some_and(|p| p["path"] == want);
            if on_it && (want == "direct" || started.elapsed() > within / 3) {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!("{}: path never {want}: {peer:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The UDP floor: an echo socket in `b`'s namespace and a client socket in `a`'s, both
/// behind their NATs on fixed ports. The echo side sends first (opening its NAT toward
/// the client's public address), then the client's probe gets through and back.
fn udp_floor(lab: &Lab, a: &str, b: &str) -> anyhow::Result<UdpPingPong> {
    let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let server = lab.udp_socket(b, any(UDP_ECHO_PORT))?;
    let client = lab.udp_socket(a, any(UDP_CLIENT_PORT))?;
    let server_pub = SocketAddr::new(lab.public_addr(b)?.into(), UDP_ECHO_PORT);
    let client_pub = SocketAddr::new(lab.public_addr(a)?.into(), UDP_CLIENT_PORT);
    punch(&server, &client, server_pub, client_pub)?;
    UdpPingPong::from_std(server, client, server_pub)
}

/// Opens both NATs for the UDP floor (bounded), then drains stray datagrams.
fn punch(
    server: &UdpSocket,
    client: &UdpSocket,
    server_pub: SocketAddr,
    client_pub: SocketAddr,
) -> anyhow::Result<()> {
    let wait = Some(Duration::from_millis(300));
    server.set_read_timeout(wait)?;
    client.set_read_timeout(wait)?;
    let mut buf = [0u8; 64];
    for _ in 0..10 {
        server.send_to(b"punch", client_pub)?;
        client.send_to(b"probe", server_pub)?;
        if let Ok((n, from)) = server.recv_from(&mut buf) {
            if &buf[..n] == b"probe" {
                server.send_to(b"probe", from)?;
            }
        }
        while let Ok((n, _)) = client.recv_from(&mut buf) {
            if &buf[..n] == b"probe" {
                std::thread::sleep(Duration::from_millis(200));
                client.set_read_timeout(Some(Duration::from_millis(1)))?;
                server.set_read_timeout(Some(Duration::from_millis(1)))?;
                while client.recv_from(&mut buf).is_ok() {}
                while server.recv_from(&mut buf).is_ok() {}
                return Ok(());
            }
        }
    }
    bail!("the UDP floor could not open the NATs between {client_pub} and {server_pub}")
}

/// NATS request/reply through the server in the cloud: the requester's connection is
/// made and driven inside `a`'s namespace, the echo responder's inside `b`'s.
pub(crate) struct WanNats {
    requester: async_nats::Client,
    _a: NsRuntime,
    _b: NsRuntime,
}

impl WanNats {
    async fn start(lab: &Lab, (a, b): (&str, &str), server: SocketAddr) -> anyhow::Result<Self> {
        let (a_rt, b_rt) = (NsRuntime::start(lab, a)?, NsRuntime::start(lab, b)?);
        let requester = a_rt.run(nats_connect(server)).await??;
        let responder = b_rt.run(nats_connect(server)).await??;
        b_rt.run(crate::nats::spawn_echo(responder)).await??;
        let ready = requester.clone();
        a_rt.run(async move { crate::nats::wait_for_echo(&ready).await })
            .await??;
        Ok(WanNats {
            requester,
            _a: a_rt,
            _b: b_rt,
        })
    }

    async fn round_trip(&mut self, payload: &Bytes) -> anyhow::Result<Duration> {
        crate::nats::request_round_trip(&self.requester, payload).await
    }
}

/// Connects to `server`, retrying while it starts (bounded).
async fn nats_connect(server: SocketAddr) -> anyhow::Result<async_nats::Client> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match async_nats::connect(server.to_string()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("nats-server in the cloud never ready")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The agentmesh callers' peer status after the measurements (proof of the path) and
/// what the relay pair's firewalls dropped.
async fn path_report(lab: &Lab, cs: &mut [Contender], relay: bool) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for c in cs.iter_mut() {
        if let Contender::Wan(WanContender::Mesh(m)) = c {
            let peer = m.peer_status().await?;
            eprintln!("wan {}: peer {peer:?}", m.name);
            out.insert(m.name.into(), json!({ "peer": peer }));
        }
    }
    if relay {
        let dropped = firewall_dropped(lab, "a2")? + firewall_dropped(lab, "b2")?;
        eprintln!("wan: the relay pair's firewalls dropped {dropped} packets");
        if let Some(Value::Object(o)) = out.get_mut(report::MESH_RELAY) {
            o.insert("firewall_dropped_packets".into(), json!(dropped));
        }
    }
    Ok(Value::Object(out))
}

/// Sites, hosts and addresses, for the JSON.
fn topology(lab: &Lab, cfg: &WanConfig) -> anyhow::Result<Value> {
    let host = |h: &str| -> anyhow::Result<Value> {
        Ok(json!({"addr": lab.addr(h)?.to_string(), "public": lab.public_addr(h)?.to_string()}))
    };
    let home = |site: &str, hosts: &[&str]| -> anyhow::Result<Value> {
        let mut hs = serde_json::Map::new();
        for h in hosts {
            hs.insert((*h).into(), host(h)?);
        }
        Ok(json!({
            "preset": HOME_PRESET.name(),
            "router_wan": lab.addr(site)?.to_string(),
            "delay": format!("{} ms on the router's uplink, both directions", cfg.delay_ms),
            "hosts": hs,
        }))
    };
    let a = home("a", &["a1", "a2"])?;
    let b = home("b", &["b1", "b2"])?;
    Ok(json!({
        "cloud": {
            "preset": "open",
            "delay": format!("{} ms on each host's uplink, both directions", cfg.delay_ms),
            "hosts": {"rv": host("rv")?, "relay": host("relay")?, "nats": host("nats")?},
        },
        "a": a,
        "b": b,
        "contenders": {
            report::UDP: "a1 <-> b1, punched through both NATs",
            report::NATS_CLOUD: "a1 -> nats (cloud) -> b1 and back",
            report::MESH_DIRECT: "agentmeshd a1 <-> agentmeshd b1, direct path",
            report::MESH_RELAY: "agentmeshd a2 -> relay (cloud) -> agentmeshd b2 and back (nftables in a2, b2: output only to the cloud)",
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole part at tiny size: agentmesh direct beats the broker in the cloud, and
    /// both pay the network (more than 4D).
    #[test]
    fn direct_beats_the_cloud_broker_across_netem() {
        let tools = [Tool::Tc, Tool::Nft];
        if !gate::lab_available("direct_beats_the_cloud_broker_across_netem", &tools) {
            return;
        }
        if let Some(why) = unavailable_reason() {
            let required = std::env::var(gate::REQUIRE_ENV).is_ok_and(|v| v == "1");
            assert!(!required, "wan part unavailable: {why}");
            eprintln!("!!! SKIPPED wan test: {why}");
            return;
        }
        agentmesh_tlsid::install_default_provider();
        let cfg = WanConfig {
            delay_ms: 2,
            iterations: 5,
            round: 5,
            warmup: 3,
            payloads: vec![64],
            relay: true,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        let r = rt.block_on(run(&cfg)).unwrap();
        eprintln!("wan part in {:?}: {r:#?}", started.elapsed());
        let p50 = |name: &str| {
            r.rtt
                .iter()
                .find(|row| row.contender == name)
                .map(|row| row.summary.p50_us / 1e3)
                .unwrap()
        };
        let (direct, nats) = (p50(report::MESH_DIRECT), p50(report::NATS_CLOUD));
        let four_d = 4.0 * f64::from(cfg.delay_ms);
        assert!(direct < nats, "direct {direct} ms, NATS {nats} ms");
        assert!(direct > four_d, "direct {direct} ms ≤ 4D");
        assert!(nats > 2.0 * four_d, "NATS {nats} ms ≤ 8D");
        assert_eq!(r.paths[report::MESH_DIRECT]["peer"]["path"], "direct");
        assert_eq!(r.paths[report::MESH_RELAY]["peer"]["path"], "relay");
    }
}
