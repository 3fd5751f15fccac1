//! The full mesh on real kernel NAT: the netns lab builds a public segment with the real
//! rendezvous and the real relay (UDP + TLS; each served in-process by a thread that
//! entered its host's namespace, since the workspace's other binaries are not built for
//! this package's tests), coturn as a second STUN observer, and one site per NAT preset
//! with a real `agentmeshd` process behind it. The test drives every daemon through its
//! local API socket (the filesystem is shared across namespaces):
//!
//! 1. every unordered pair of sites: discovery, an `echo` request a→b, and the path a
//!    settles on for b, judged by the oracle `punch_matrix::expected` (the full daemon
//!    achieves all of it, many-port probing included, on the tier `expected_tier`
//!    names);
//! 2. faults on a direct pair: the relay dies (nothing noticed); the rendezvous stops,
//!    then crashes (its host drops every packet, as after `kill -9`): each time sessions
//!    keep working, `discover` fails with DEPENDENCY_FAILED, and once it is back with
//!    the same key and database discovery works again within 30 s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentmesh::cli::sample_agents::spawn_agent;
use agentmesh::cli::Client;
use agentmesh_proto::{NodeId, SecretKey};
use agentmesh_relay::{Config as RelayConfig, MemStore, StartOptions};
use agentmesh_rendezvous::config::Config as RvConfig;
use netsim::netns::{self, coturn, lab::enter_namespace, Lab, Tool};
use netsim::Preset;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::punch_matrix::{expected, expected_tier};

const RV_PORT: u16 = 4433;
const RV_STUN_ALT: u16 = 3479;
const RELAY_UDP: u16 = 3479;
const RELAY_TLS: u16 = 4443;
const DAEMON_PORT: u16 = 7000;
/// How long after the first response a pair's path may take to settle.
const SETTLE: Duration = Duration::from_secs(8);

/// A server running on its own thread inside a lab namespace, stopped on drop.
struct Service {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Runs `serve` on a thread inside `ns` with its own tokio runtime; `serve` reports
    /// its id once listening and returns when the stop signal fires.
    fn start<F, Fut>(ns: &str, serve: F) -> Service
    where
        F: FnOnce(mpsc::Sender<NodeId>, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let ns = ns.to_owned();
        let thread = std::thread::spawn(move || {
            enter_namespace(&ns).unwrap();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(ready_tx, stop_rx));
        });
        ready_rx
            .recv_timeout(Duration::from_secs(15))
            .expect("service did not start");
        Service {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rv_key() -> SecretKey {
    SecretKey::from_bytes(&[211; 32])
}

fn relay_key() -> SecretKey {
    SecretKey::from_bytes(&[212; 32])
}

/// The rendezvous (QUIC + STUN, TCP/TLS, second STUN port) with its key and database
/// under `dir`; restarting it with the same `dir` keeps both.
fn start_rendezvous(lab: &Lab, host: &str, dir: &Path) -> Service {
    let text = format!(
        "listen = \"0.0.0.0:{RV_PORT}\"\ntcp_listen = \"0.0.0.0:{RV_PORT}\"\n\
         stun_alt = \"0.0.0.0:{RV_STUN_ALT}\"\nadmin = \"127.0.0.1:0\"\n\
         key_file = \"{d}/rv.key\"\ndatabase = \"{d}/rv.sqlite\"\n\
         [[tenant]]\nname = \"acme\"\njoin_token = \"acme-token\"\n",
        d = dir.display()
    );
    let cfg = RvConfig::parse(&text).unwrap();
    Service::start(lab.ns(host).unwrap(), move |ready, stop| async move {
        let rv = agentmesh_rendezvous::server::start(cfg, rv_key())
            .await
            .unwrap();
        ready.send(rv.id).unwrap();
        let _ = stop.await;
        rv.shutdown().await;
    })
}

/// The blind relay on UDP and TLS.
fn start_relay(lab: &Lab, host: &str) -> Service {
    let cfg = RelayConfig {
        udp_listen: Some(([0, 0, 0, 0], RELAY_UDP).into()),
        tls_listen: Some(([0, 0, 0, 0], RELAY_TLS).into()),
        admin_listen: None,
        ..RelayConfig::default()
    };
    Service::start(lab.ns(host).unwrap(), move |ready, stop| async move {
        let mut relay = agentmesh_relay::start(
            &cfg,
            relay_key(),
            Box::new(MemStore::default()),
            StartOptions::default(),
        )
        .await
        .unwrap();
        ready.send(relay.relay_id).unwrap();
        let _ = stop.await;
        relay.stop().await;
    })
}

/// One site's daemon: where its socket is, and what it is.
struct Site {
    preset: Preset,
    host: String,
    socket: PathBuf,
    node: String,
}

/// Writes a daemon config for `host` and starts the real `agentmeshd` inside it.
fn start_daemon(lab: &Lab, dir: &Path, host: &str, preset: Preset) -> Site {
    let rv = lab.addr("rv").unwrap();
    let relay = lab.addr("relay").unwrap();
    let [stun_a, stun_b] = coturn::servers();
    let socket = dir.join(format!("{host}.sock"));
    let text = format!(
        "socket = \"{sock}\"\nstate_dir = \"{state}\"\nlisten = \"0.0.0.0:{DAEMON_PORT}\"\n\
         log_level = \"info,agentmesh::net=debug\"\n\
         stun_servers = [\"{stun_a}\", \"{stun_b}\"]\nupnp = false\n\
         [rendezvous]\naddr = \"{rv}:{RV_PORT}\"\ntcp = \"{rv}:{RV_PORT}\"\n\
         node_id = \"{rv_id}\"\ntenant = \"acme\"\ntoken = \"acme-token\"\n\
         [relay]\nnode_id = \"{relay_id}\"\nudp = \"{relay}:{RELAY_UDP}\"\n\
         tls = \"{relay}:{RELAY_TLS}\"\n",
        sock = socket.display(),
        state = dir.join(host).display(),
        rv_id = rv_key().node_id(),
        relay_id = relay_key().node_id(),
    );
    let config = dir.join(format!("{host}.toml"));
    std::fs::write(&config, text).unwrap();
    let exe = env!("CARGO_BIN_EXE_agentmeshd");
    lab.spawn(host, exe, &["--config", config.to_str().unwrap()])
        .unwrap();
    Site {
        preset,
        host: host.to_owned(),
        socket,
        node: String::new(),
    }
}

/// Waits until the daemon answers and is joined to the rendezvous; returns its node id.
async fn wait_joined(site: &Site) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no socket");
    while Instant::now() < deadline {
        if let Ok(mut c) = Client::connect(&site.socket).await {
            match c.call("status", json!({})).await {
                Ok(st) if st["net"]["rendezvous"]["connected"] == json!(true) => {
                    return Ok(st["node_id"].as_str().unwrap_or_default().to_owned());
                }
                Ok(st) => last = st["net"].to_string(),
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("{} never joined: {last}", site.host))
}

/// Discovers the agents with `capability` until one is there (bounded).
async fn discover_one(c: &mut Client, capability: &str, within: Duration) -> Result<Value, String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match c
            .call("discover", json!({"query": {"capabilities": [capability]}}))
            .await
        {
            Ok(v) if v["agents"].as_array().is_some_and(|a| !a.is_empty()) => {
                return Ok(v["agents"][0].clone())
            }
            Ok(v) => last = v.to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("discovery of {capability} failed: {last}"))
}

/// An `echo` request to `target`; the echoed text, or why not.
async fn echo(c: &mut Client, me: &Value, target: &Value, text: &str) -> Result<(), String> {
    let args = json!({"from": me, "to": target, "skill": "echo", "input": text});
    let id = c.send("request", args).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, c.next_message())
            .await
            .map_err(|_| format!("no reply to {text:?} within 20 s"))?
            .map_err(|e| e.to_string())?;
        if m.get("event").is_none() && m["id"] == json!(id) {
            return match m["ok"]["output"]["text"].as_str() {
                Some(t) if t == text => Ok(()),
                _ => Err(format!("echo {text:?} answered {m}")),
            };
        }
    }
}

/// The peer entry for `node` in the daemon's status.
async fn peer_of(c: &mut Client, node: &str) -> Option<Value> {
    let st = c.call("status", json!({})).await.ok()?;
    let peers = st["net"]["peers"].as_array()?.clone();
    peers.into_iter().find(|p| p["node"] == json!(node))
}

/// A caller agent on a daemon.
async fn caller(socket: &Path, name: &str) -> Result<(Client, Value), String> {
    let mut c = Client::connect(socket).await.map_err(|e| e.to_string())?;
    let me = c
        .call("register", json!({"manifest": {"name": name}}))
        .await
        .map_err(|e| e.to_string())?["agent_id"]
        .clone();
    Ok((c, me))
}

/// What one pair did.
#[derive(Debug, Default)]
struct PairRun {
    first: Option<Duration>,
    to_direct: Option<Duration>,
    /// a's view of b at the end: (path, tier).
    a_view: (String, String),
    /// b's view of a at the end.
    b_view: (String, String),
    error: Option<String>,
}

fn view(p: &Option<Value>) -> (String, String) {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    p.as_ref().map_or(("none".into(), "-".into()), |p| {
        (s(&p["path"]), s(&p["tier"]))
    })
}

/// Pair a→b: discover b's agent, echo, then watch a's path to b settle.
async fn run_pair(a: (usize, PathBuf), b: (usize, PathBuf, String), want_direct: bool) -> PairRun {
    let mut run = PairRun::default();
    if let Err(e) = pair_steps(&a, &b, want_direct, &mut run).await {
        run.error = Some(e);
    }
    run
}

async fn pair_steps(
    a: &(usize, PathBuf),
    b: &(usize, PathBuf, String),
    want_direct: bool,
    run: &mut PairRun,
) -> Result<(), String> {
    let (mut c, me) = caller(&a.1, &format!("caller-{}-{}", a.0, b.0)).await?;
    let agent = discover_one(&mut c, &format!("site-{}", b.0), Duration::from_secs(20)).await?;
    if agent["node"] != json!(b.2) {
        return Err(format!("discovered {agent} on the wrong node"));
    }
    let t0 = Instant::now();
    echo(&mut c, &me, &agent["id"], &format!("{}->{}", a.0, b.0)).await?;
    run.first = Some(t0.elapsed());
    let deadline = Instant::now() + SETTLE;
    let mut last = None;
    while Instant::now() < deadline {
        last = peer_of(&mut c, &b.2).await;
        if last.as_ref().is_some_and(|p| p["path"] == "direct") {
            run.to_direct.get_or_insert(t0.elapsed());
            if want_direct {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.a_view = view(&last);
    // The session still carries requests after the path settled.
    echo(&mut c, &me, &agent["id"], "again").await?;
    Ok(())
}

fn build_lab() -> Lab {
    let mut b = Lab::builder()
        .coturn()
        .site("srv", Preset::Open)
        .host("rv", "srv")
        .host("relay", "srv");
    for (i, p) in Preset::ALL.into_iter().enumerate() {
        b = b
            .site(&format!("s{i}"), p)
            .host(&format!("h{i}"), &format!("s{i}"));
    }
    b.build().unwrap()
}

/// Every unordered pair concurrently; returns the grid and the disagreements.
async fn pairs_matrix(sites: &[Site]) -> (String, Vec<String>) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..sites.len() {
        for j in i + 1..sites.len() {
            let want = expected(sites[i].preset, sites[j].preset).0;
            let a = (i, sites[i].socket.clone());
            let b = (j, sites[j].socket.clone(), sites[j].node.clone());
            set.spawn(async move { ((i, j), run_pair(a, b, want).await) });
        }
    }
    let mut runs = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let (k, run) = r.unwrap();
        runs.insert(k, run);
    }
    // b's view of a, now that everything settled.
    for ((i, j), run) in &mut runs {
        if let Ok(mut c) = Client::connect(&sites[*j].socket).await {
            run.b_view = view(&peer_of(&mut c, &sites[*i].node).await);
        }
    }
    judge(sites, &runs)
}

/// The udp_blocked side's view of its peer, if one side is udp_blocked.
fn blocked_view(pa: Preset, pb: Preset, run: &PairRun) -> Option<&(String, String)> {
    match (pa, pb) {
        (Preset::UdpBlocked, _) => Some(&run.a_view),
        (_, Preset::UdpBlocked) => Some(&run.b_view),
        _ => None,
    }
}

fn judge(sites: &[Site], runs: &BTreeMap<(usize, usize), PairRun>) -> (String, Vec<String>) {
    let mut grid = format!(
        "{:<44} {:<7} {:<24} {:<24} {:>8} {:>9}\n",
        "pair a -> b (real agentmeshd, nftables NAT)",
        "expect",
        "a sees b",
        "b sees a",
        "1st resp",
        "to direct"
    );
    let mut wrong = Vec::new();
    let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{} ms", d.as_millis()));
    for ((i, j), run) in runs {
        let (pa, pb) = (sites[*i].preset, sites[*j].preset);
        let (want, why) = expected(pa, pb);
        let want_s = if want { "direct" } else { "relay" };
        let name = format!("{pa} -> {pb}");
        grid.push_str(&format!(
            "{:<44} {:<7} {:<24} {:<24} {:>8} {:>9}\n",
            name,
            want_s,
            format!("{} {}", run.a_view.0, run.a_view.1),
            format!("{} {}", run.b_view.0, run.b_view.1),
            ms(run.first),
            ms(run.to_direct),
        ));
        if let Some(e) = &run.error {
            wrong.push(format!("{name}: {e}"));
        } else if run.a_view.0 != want_s {
            wrong.push(format!(
                "{name}: a sees {:?}, expected {want_s} ({why})",
                run.a_view
            ));
        } else if run.b_view.0 != want_s {
            wrong.push(format!(
                "{name}: b sees {:?}, expected {want_s} ({why})",
                run.b_view
            ));
        } else if let Some(t) = expected_tier(pa, pb).filter(|t| run.a_view.1 != *t) {
            wrong.push(format!(
                "{name}: a sees {:?}, expected the tier {t}",
                run.a_view
            ));
        } else if let Some(v) = blocked_view(pa, pb, run) {
            if v.1 != "relay-tcp" {
                wrong.push(format!(
                    "{name}: the udp_blocked side sees {v:?}, expected relay relay-tcp"
                ));
            }
        }
    }
    (grid, wrong)
}

#[test]
fn full_daemons_on_real_kernel_nat() {
    if !netns::lab_available(
        "full_daemons_on_real_kernel_nat",
        &[Tool::Nft, Tool::Coturn],
    ) {
        return;
    }
    let started = Instant::now();
    let lab = build_lab();
    let dir = tempfile::tempdir().unwrap();
    let rv_dir = dir.path().join("rv");
    std::fs::create_dir_all(&rv_dir).unwrap();
    let mut rv = start_rendezvous(&lab, "rv", &rv_dir);
    let mut relay = start_relay(&lab, "relay");
    let mut sites: Vec<Site> = Preset::ALL
        .into_iter()
        .enumerate()
        .map(|(i, p)| start_daemon(&lab, dir.path(), &format!("h{i}"), p))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for (i, s) in sites.iter_mut().enumerate() {
            s.node = wait_joined(s)
                .await
                .unwrap_or_else(|e| panic!("{e}\nlogs: {}", lab.dir().display()));
            let caps = json!(["echo", format!("site-{i}")]);
            spawn_agent(
                &s.socket,
                &format!("echo-{i}"),
                caps,
                json!([{"id": "echo", "name": "Echo"}]),
            )
            .await
            .unwrap();
        }
        eprintln!("lab and 7 daemons up in {:?}", started.elapsed());
        let t = Instant::now();
        let (grid, wrong) = pairs_matrix(&sites).await;
        println!("{grid}");
        eprintln!("21 pairs in {:?}", t.elapsed());
        for s in &sites {
            if s.preset == Preset::UdpBlocked {
                let mut c = Client::connect(&s.socket).await.unwrap();
                let st = c.call("status", json!({})).await.unwrap();
                println!("udp_blocked daemon's relay link: {}", st["net"]["relay"]);
                assert_eq!(st["net"]["relay"]["transport"], "tls", "{st}");
            }
        }
        // The faults use a pair that must be direct, whatever the matrix found elsewhere.
        faults(&sites, &lab, &mut rv, &mut relay, &rv_dir).await;
        assert!(
            wrong.is_empty(),
            "{}\n{grid}\nlogs: {}",
            wrong.join("\n"),
            lab.dir().display()
        );
    });
    eprintln!("total {:?}", started.elapsed());
}

/// Faults on a direct pair (full_cone → restricted_cone): the relay dies, then the
/// rendezvous dies and comes back with the same key and database.
async fn faults(sites: &[Site], lab: &Lab, rv: &mut Service, relay: &mut Service, rv_dir: &Path) {
    let (a, b) = (&sites[1], &sites[2]);
    let (mut c, me) = caller(&a.socket, "fault-caller").await.unwrap();
    let agent = discover_one(&mut c, "site-2", Duration::from_secs(10))
        .await
        .unwrap();
    let target = agent["id"].clone();
    echo(&mut c, &me, &target, "warm").await.unwrap();
    let deadline = Instant::now() + SETTLE;
    while peer_of(&mut c, &b.node).await.map(|p| p["path"].clone()) != Some(json!("direct")) {
        assert!(
            Instant::now() < deadline,
            "{} -> {} never went direct",
            a.preset,
            b.preset
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The relay dies: the direct pair does not notice.
    tokio::task::block_in_place(|| relay.stop());
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        echo(&mut c, &me, &target, &format!("no relay {i}"))
            .await
            .unwrap();
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let peer = peer_of(&mut c, &b.node).await.unwrap();
    assert_eq!(peer["path"], "direct", "{peer}");
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?} without the relay"
    );
    eprintln!("relay killed: 20 requests on the direct pair, slowest {slowest:?}; {peer}");

    // The rendezvous stops (its sessions are closed), then it crashes (no close at all).
    for crash in [false, true] {
        rendezvous_outage(lab, rv, rv_dir, (&mut c, &me, &target), crash).await;
    }
}

/// The rendezvous goes away (gracefully, or `crash`: its host drops every packet, as
/// after `kill -9` or a power cut): the session keeps working and discovery fails with
/// DEPENDENCY_FAILED; then it comes back as a fresh process with the same key and
/// database and discovery works again within 30 s (three heartbeats).
async fn rendezvous_outage(
    lab: &Lab,
    rv: &mut Service,
    rv_dir: &Path,
    (c, me, target): (&mut Client, &Value, &Value),
    crash: bool,
) {
    let how = if crash { "crashed" } else { "stopped" };
    if crash {
        silence(lab, "rv", true);
    } else {
        tokio::task::block_in_place(|| rv.stop());
    }
    let t = Instant::now();
    let err = loop {
        match c
            .call("discover", json!({"query": {"capabilities": ["site-2"]}}))
            .await
        {
            Err(e) => break e.to_string(),
            Ok(v) => assert!(
                t.elapsed() < Duration::from_secs(40),
                "discovery kept working: {v}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        err.contains("DEPENDENCY_FAILED") && err.contains("rendezvous"),
        "{err}"
    );
    eprintln!(
        "rendezvous {how}: discover fails after {:?}: {err}",
        t.elapsed()
    );
    echo(c, me, target, &format!("still here ({how})"))
        .await
        .unwrap();

    tokio::task::block_in_place(|| rv.stop());
    if crash {
        silence(lab, "rv", false);
    }
    *rv = tokio::task::block_in_place(|| start_rendezvous(lab, "rv", rv_dir));
    let t = Instant::now();
    let again = discover_one(c, "site-2", Duration::from_secs(30)).await;
    let again = again.unwrap_or_else(|e| panic!("rendezvous {how} and restarted: {e}"));
    assert_eq!(&again["id"], target, "{again}");
    eprintln!(
        "rendezvous {how} and restarted: discovery works again after {:?}",
        t.elapsed()
    );
    echo(c, me, target, &format!("after restart ({how})"))
        .await
        .unwrap();
}

/// Drops every packet into and out of `node` (a crashed host), or lets them pass again.
fn silence(lab: &Lab, node: &str, on: bool) {
    let cmds: &[&[&str]] = if on {
        &[
            &["add", "table", "inet", "amcrash"],
            &[
                "add",
                "chain",
                "inet",
                "amcrash",
                "in",
                "{ type filter hook input priority 0; policy drop; }",
            ],
            &[
                "add",
                "chain",
                "inet",
                "amcrash",
                "out",
                "{ type filter hook output priority 0; policy drop; }",
            ],
        ]
    } else {
        &[&["delete", "table", "inet", "amcrash"]]
    };
    for args in cmds {
        lab.exec(node, "nft", args).unwrap();
    }
}
