//! Two full daemons on loopback with a real rendezvous and a real relay in-process:
//! agents on one daemon discover, request (with streaming and `continue`) and receive
//! events from agents on the other, and the peers' path becomes direct. Also: a
//! rendezvous that is gone fails discovery with a clear error while the established
//! session keeps working.

use std::path::Path;
use std::time::{Duration, Instant};

use agentmesh::cli::sample_agents::spawn_agent;
use agentmesh::cli::Client;
use agentmesh::config::{DaemonConfig, RelaySection, RendezvousSection};
use agentmesh::daemon::Daemon;
use agentmesh_proto::SecretKey;
use agentmesh_relay::{Config as RelayConfig, MemStore, RelayHandle, StartOptions};
use agentmesh_rendezvous::config::Config as RvConfig;
use agentmesh_rendezvous::server::{self, Running};
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub(crate) struct Services {
    pub(crate) rv: Running,
    pub(crate) relay: RelayHandle,
}

pub(crate) async fn start_services(dir: &Path) -> Services {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nstun_alt = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         key_file = \"{d}/rv.key\"\ndatabase = \"{d}/rv.sqlite\"\n\
         [[tenant]]\nname = \"acme\"\njoin_token = \"acme-token\"\n",
        d = dir.display()
    );
    let cfg = RvConfig::parse(&text).unwrap();
    let rv = server::start(cfg, SecretKey::from_bytes(&[201; 32]))
        .await
        .unwrap();
    let relay_cfg = RelayConfig {
        udp_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls_listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: None,
        ..RelayConfig::default()
    };
    let relay = agentmesh_relay::start(
        &relay_cfg,
        SecretKey::from_bytes(&[202; 32]),
        Box::new(MemStore::default()),
        StartOptions::default(),
    )
    .await
    .unwrap();
    Services { rv, relay }
}

pub(crate) fn daemon_config(dir: &Path, name: &str, s: &Services) -> DaemonConfig {
    DaemonConfig {
        socket: dir.join(format!("{name}.sock")),
        state_dir: dir.join(name),
        listen: "127.0.0.1:0".into(),
        stun_servers: s.rv.stun_alt_addr.iter().map(|a| a.to_string()).collect(),
        upnp: false,
        rendezvous: Some(RendezvousSection {
            addr: s.rv.udp_addr.to_string(),
            tcp: None,
            node_id: s.rv.id,
            tenant: "acme".into(),
            token: "acme-token".into(),
        }),
        relay: Some(RelaySection {
            node_id: s.relay.relay_id,
            udp: s.relay.udp_addr.unwrap().to_string(),
            tls: s.relay.tls_addr.map(|a| a.to_string()),
        }),
        admin: Some("127.0.0.1:0".into()),
        ..DaemonConfig::default()
    }
}

pub(crate) struct Running1 {
    /// The admin (metrics) listener.
    pub(crate) admin: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running1 {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

impl Running1 {
    /// Stops the daemon as SIGTERM would and waits until it has shut down (bounded).
    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let task = &mut self.task;
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the daemon did not shut down within 10 s")
            .unwrap();
    }
}

pub(crate) fn run_daemon(config: &DaemonConfig) -> Running1 {
    let daemon = Daemon::start(config).unwrap();
    let admin = daemon.admin_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        daemon
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running1 {
        admin,
        stop: Some(tx),
        task,
    }
}

/// A rendezvous and a relay, and daemons `a` and `b` running with them, on loopback.
pub(crate) struct TwoDaemons {
    pub(crate) s: Services,
    pub(crate) ca: DaemonConfig,
    pub(crate) cb: DaemonConfig,
    pub(crate) a: Running1,
    pub(crate) b: Running1,
}

/// Starts [`TwoDaemons`] with their state in `dir`.
pub(crate) async fn two_daemons(dir: &Path) -> TwoDaemons {
    let s = start_services(dir).await;
    let (ca, cb) = (daemon_config(dir, "a", &s), daemon_config(dir, "b", &s));
    let (a, b) = (run_daemon(&ca), run_daemon(&cb));
    tokio::time::sleep(Duration::from_millis(200)).await;
    TwoDaemons { s, ca, cb, a, b }
}

/// Connects to `socket` and registers an agent named `name`; returns the client and the
/// agent's id.
pub(crate) async fn caller(socket: &Path, name: &str) -> (Client, Value) {
    let mut c = Client::connect(socket).await.unwrap();
    let me = c
        .call("register", json!({"manifest": {"name": name}}))
        .await
        .unwrap()["agent_id"]
        .clone();
    (c, me)
}

/// One `GET /metrics` from a daemon's admin listener.
pub(crate) async fn scrape(admin: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    text
}

/// The value of one sample (`name` with its labels, as written on the page).
pub(crate) fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Discovers until `want` agents with `capability` are seen (bounded).
pub(crate) async fn discover_until(c: &mut Client, capability: &str, want: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c
            .call("discover", json!({"query": {"capabilities": [capability]}}))
            .await;
        if let Ok(v) = &r {
            if v["agents"].as_array().map_or(0, Vec::len) >= want {
                return v.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "discovery never found {capability}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a request and collects its pushes until the final reply.
pub(crate) async fn request(c: &mut Client, args: Value) -> (Value, Vec<Value>) {
    let id = c.send("request", args).await.unwrap();
    let mut pushes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, c.next_message())
            .await
            .expect("no final reply in time")
            .unwrap();
        if m.get("event").is_none() && m["id"] == json!(id) {
            return (m, pushes);
        }
        pushes.push(m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_two_daemons_work_together_and_the_path_goes_direct() {
    let dir = tempfile::tempdir().unwrap();
    let TwoDaemons { s, ca, cb, a, b } = two_daemons(dir.path()).await;
    spawn_agent(
        &cb.socket,
        "echo-b",
        json!(["echo", "count", "booking"]),
        json!([{"id": "echo", "name": "Echo"}, {"id": "count", "name": "Count"},
               {"id": "book", "name": "Book"}]),
    )
    .await
    .unwrap();
    let (mut caller, me) = caller(&ca.socket, "caller").await;

    let found = discover_until(&mut caller, "echo", 1).await;
    let agent = &found["agents"][0];
    assert_eq!(agent["node"], json!(node_of(&cb)), "{found}");
    let target = agent["id"].clone();

    // Request by id, across daemons.
    let t = Instant::now();
    let (fin, pushes) = request(
        &mut caller,
        json!({"from": me, "to": target, "skill": "echo", "input": "hello"}),
    )
    .await;
    let first = t.elapsed();
    assert_eq!(fin["ok"]["state"], "completed", "{fin}");
    assert_eq!(fin["ok"]["output"]["text"], "hello");
    assert!(
        pushes.iter().any(|p| p["state"] == "submitted"),
        "{pushes:?}"
    );

    // Streaming by capability: the only matching agent is remote.
    let (fin, pushes) = request(
        &mut caller,
        json!({"from": me, "capability": "count", "skill": "count", "input": 5, "stream": true}),
    )
    .await;
    assert_eq!(fin["ok"]["state"], "completed", "{fin}");
    let chunks: Vec<_> = pushes
        .iter()
        .filter(|p| p["event"] == "stream")
        .map(|p| p["chunk"].clone())
        .collect();
    assert_eq!(chunks, (1..=5).map(|i| json!(i)).collect::<Vec<_>>());

    // input_required → continue → completed.
    let id = caller
        .send(
            "request",
            json!({"from": me, "to": target, "skill": "book", "input": "table"}),
        )
        .await
        .unwrap();
    let task = loop {
        let m = caller.next_message().await.unwrap();
        if m["state"] == "input_required" {
            break m["task_id"].clone();
        }
    };
    caller
        .call("continue", json!({"task_id": task, "input": "friday"}))
        .await
        .unwrap();
    let fin = loop {
        let m = caller.next_message().await.unwrap();
        if m.get("event").is_none() && m["id"] == json!(id) {
            break m;
        }
    };
    assert_eq!(fin["ok"]["output"], "table booked for friday", "{fin}");

    // The path to B becomes direct (loopback: a LAN candidate).
    let deadline = Instant::now() + Duration::from_secs(10);
    let peer = loop {
        let st = caller.call("status", json!({})).await.unwrap();
        let peers = st["net"]["peers"].as_array().cloned().unwrap_or_default();
        if let Some(p) = peers.iter().find(|p| p["path"] == "direct") {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "never direct: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(peer["tier"], "direct-lan", "{peer}");
    eprintln!("first cross-daemon response in {first:?}; peer {peer}");

    // 100 sequential requests over the (now direct) session.
    let t = Instant::now();
    for i in 0..100 {
        let (fin, _) = request(
            &mut caller,
            json!({"from": me, "to": target, "skill": "echo", "input": i}),
        )
        .await;
        assert_eq!(fin["ok"]["output"]["text"], json!(i.to_string()));
    }
    eprintln!("100 cross-daemon requests: {:?} each", t.elapsed() / 100);
    let st = caller.call("status", json!({})).await.unwrap();
    let peer = &st["net"]["peers"][0];
    assert_eq!(
        (peer["path"].as_str(), peer["session"].as_bool()),
        (Some("direct"), Some(true)),
        "{st}"
    );

    // The relay link may still be coming up: the requests above no longer wait for it
    // (a handshake the relay could not carry is replayed on the direct path).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = caller.call("status", json!({})).await.unwrap();
        if st["net"]["relay"]["connected"] == json!(true) {
            break;
        }
        assert!(Instant::now() < deadline, "relay link never up: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The metrics page counts the same: a session, a LAN punch, a direct peer, the
    // requests; on B the requests arrived from a peer.
    let page = scrape(a.admin.expect("admin listener")).await;
    let at_least = |name: &str, min: f64| {
        let v = sample(&page, name).unwrap_or_else(|| panic!("no {name}:\n{page}"));
        assert!(v >= min, "{name} = {v} < {min}:\n{page}");
    };
    at_least("agentmesh_sessions_open", 1.0);
    at_least("agentmesh_punch_successes_total{tier=\"direct-lan\"}", 1.0);
    at_least("agentmesh_punch_attempts_total", 1.0);
    at_least("agentmesh_peers{path=\"direct\"}", 1.0);
    at_least("agentmesh_requests_total", 101.0);
    at_least("agentmesh_session_bytes{direction=\"sent\"}", 10_000.0);
    at_least("agentmesh_rendezvous_connected", 1.0);
    at_least("agentmesh_relay_connected", 1.0);
    at_least("agentmesh_relay_transport{transport=\"udp\"}", 1.0);
    at_least("agentmesh_socket_packets_total{way=\"direct_sent\"}", 1.0);
    let wanted = [
        "agentmesh_sessions_open",
        "agentmesh_punch_",
        "agentmesh_peers",
        "agentmesh_requests_total",
    ];
    let shown: Vec<&str> = page
        .lines()
        .filter(|l| !l.starts_with('#') && wanted.iter().any(|w| l.starts_with(w)))
        .collect();
    eprintln!("metrics of A: {shown:?}");
    let page_b = scrape(b.admin.expect("admin listener")).await;
    let served = sample(&page_b, "agentmesh_requests_total").unwrap_or(0.0);
    assert!(served >= 101.0, "B served {served}:\n{page_b}");

    // `ping` by agent id and by node id: real round trips over the direct session.
    for t in [target.clone(), json!(node_of(&cb))] {
        let ok = caller
            .call("ping", json!({"target": t, "count": 3, "interval_ms": 20}))
            .await
            .unwrap();
        assert_eq!(
            (ok["sent"].as_u64(), ok["received"].as_u64()),
            (Some(3), Some(3)),
            "{ok}"
        );
        assert_eq!(ok["node"], json!(node_of(&cb)), "{ok}");
        eprintln!("ping {t}: {}", ok["replies"]);
        for r in ok["replies"].as_array().unwrap() {
            let rtt = r["rtt_ms"].as_f64().unwrap_or(-1.0);
            assert!(rtt > 0.0 && rtt < 1000.0, "{r}");
            assert_eq!(
                (r["path"].as_str(), r["tier"].as_str()),
                (Some("direct"), Some("direct-lan")),
                "{r}"
            );
        }
    }
    let own = caller.call("ping", json!({"target": me})).await;
    assert!(
        own.is_err_and(|e| e.to_string().contains("INPUT_INVALID")),
        "ping of a local agent"
    );
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .arg("--socket")
        .arg(&ca.socket)
        .args(["ping", &node_of(&cb), "-c", "2", "-i", "20"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(
        out.matches("path direct (direct-lan) rtt ").count(),
        2,
        "{out}"
    );
    assert!(
        out.starts_with(&format!("reply from {}", &node_of(&cb)[..9])),
        "{out}"
    );
    // `agentmesh status` shows the NAT class, the relay and the peer's path and tier.
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .arg("--socket")
        .arg(&ca.socket)
        .arg("status")
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{out}");
    for want in [
        "nat       none",
        "relay     ",
        "PEER",
        "direct-lan",
        &node_of(&cb),
    ] {
        assert!(out.contains(want), "status lacks {want:?}:\n{out}");
    }

    // An event from A reaches a subscriber on B (once the subscription index arrived).
    let mut sub = Client::connect(&cb.socket).await.unwrap();
    let sid = sub
        .call("register", json!({"manifest": {"name": "listener"}}))
        .await
        .unwrap()["agent_id"]
        .clone();
    sub.call("subscribe", json!({"agent_id": sid, "pattern": "news.>"}))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        caller
            .call(
                "emit",
                json!({"from": me, "topic": "news.today", "data": {"n": 1}}),
            )
            .await
            .unwrap();
        if let Ok(Ok(m)) =
            tokio::time::timeout(Duration::from_millis(300), sub.next_message()).await
        {
            break m;
        }
        assert!(Instant::now() < deadline, "the event never crossed");
    };
    assert_eq!(event["event"], "event", "{event}");
    assert_eq!(event["data"], json!({"n": 1}), "{event}");

    // The rendezvous goes away: discovery fails clearly, the session keeps working.
    s.rv.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        let r = caller
            .call("discover", json!({"query": {"capabilities": ["echo"]}}))
            .await;
        if let Err(e) = r {
            break e.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "discovery kept working without the rendezvous"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        err.contains("DEPENDENCY_FAILED") && err.contains("rendezvous"),
        "{err}"
    );
    let (fin, _) = request(
        &mut caller,
        json!({"from": me, "to": target, "skill": "echo", "input": "still here"}),
    )
    .await;
    assert_eq!(fin["ok"]["output"]["text"], "still here", "{fin}");
}

fn node_of(cb: &DaemonConfig) -> String {
    agentmesh_proto::keyfile::load_or_create(&cb.key_path())
        .unwrap()
        .node_id()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_without_a_mesh_serves_router_metrics_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = DaemonConfig {
        socket: dir.path().join("solo.sock"),
        state_dir: dir.path().join("solo"),
        admin: Some("127.0.0.1:0".into()),
        ..DaemonConfig::default()
    };
    let d = run_daemon(&config);
    let admin = d.admin.expect("admin listener");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut c = loop {
        match Client::connect(&config.socket).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "no socket: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.call("register", json!({"manifest": {"name": "one"}}))
        .await
        .unwrap();
    let page = scrape(admin).await;
    assert_eq!(sample(&page, "agentmesh_agents"), Some(1.0), "{page}");
    assert_eq!(
        sample(&page, "agentmesh_api_connections"),
        Some(1.0),
        "{page}"
    );
    assert!(
        !page.contains("agentmesh_sessions_open"),
        "no network part: {page}"
    );
    let st = c.call("status", json!({})).await.unwrap();
    assert_eq!(st["net"], Value::Null, "{st}");
}
