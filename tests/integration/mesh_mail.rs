//! Store-and-forward across real daemons on loopback (real rendezvous, real relay with
//! its mailbox): an agent's daemon stops, or crashes (a real `agentmeshd` process killed
//! with SIGKILL, so nothing tells its peers); a request for that agent is sealed and left
//! at the relay; the daemon starts again with the same keys, its agent registers again,
//! and the waiting requester gets the answer. (With no relay to store at, the request
//! fails with a clear error: `router::tests_mesh::mail`.)

use std::time::{Duration, Instant};

use agentmesh::cli::Client;
use serde_json::{json, Value};

use crate::daemon_process::Killed;
use crate::mesh_loopback::{
    caller, daemon_config, discover_until, run_daemon, sample, scrape, start_services, two_daemons,
    Services, TwoDaemons,
};

/// Registers `echo` (a kept key, so the id survives a restart) and answers its requests.
async fn echo_agent(sock: &std::path::Path) -> String {
    let mut c = Client::connect(sock).await.unwrap();
    let id = c
        .call(
            "register",
            json!({"key_name": "echo", "manifest": {"name": "echo", "capabilities": ["echo"],
                   "skills": [{"id": "echo", "name": "Echo"}]}}),
        )
        .await
        .unwrap()["agent_id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::spawn(async move {
        while let Ok(m) = c.next_message().await {
            if m["event"] == "request" {
                let args = json!({"task_id": m["task_id"], "state": "completed",
                                  "output": {"text": m["input"]}});
                if c.send("respond", args).await.is_err() {
                    break;
                }
            }
        }
    });
    id
}

/// Registers a caller on `socket` and has it reach `echo` once (the session is up).
async fn warm_caller(socket: &std::path::Path, echo: &str) -> (Client, Value) {
    let (mut c, me) = caller(socket, "caller").await;
    discover_until(&mut c, "echo", 1).await;
    let warm = c
        .call(
            "request",
            json!({"from": me, "to": echo, "skill": "echo", "input": "warm"}),
        )
        .await
        .unwrap();
    assert_eq!(warm["state"], "completed", "{warm}");
    (c, me)
}

/// Waits for the next message that is not a reply (bounded).
async fn next_push(c: &mut Client, within: Duration) -> Value {
    tokio::time::timeout(within, c.next_message())
        .await
        .expect("no message in time")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_an_agent_whose_daemon_is_down_is_answered_after_it_returns() {
    if std::env::var_os("MAIL_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("agentmesh=debug,agentmesh_relay=debug")
            .try_init();
    }
    let dir = tempfile::tempdir().unwrap();
    let TwoDaemons {
        s: _services,
        ca,
        cb,
        a,
        b,
    } = two_daemons(dir.path()).await;
    let echo = echo_agent(&cb.socket).await;
    let (mut caller, me) = warm_caller(&ca.socket, &echo).await;

    // B goes away (its agents with it).
    b.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (id, stored_after) = request_until_stored(&mut caller, &me, &echo).await;
    eprintln!("request stored at the relay after {stored_after:?}");

    // B starts again with the same state directory: same node key, same agent key.
    let restart = Instant::now();
    let b = run_daemon(&cb);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = echo_agent(&cb.socket).await;
    assert_eq!(again, echo, "the kept key gives the same agent id");
    let fin = final_reply(&mut caller, id).await;
    eprintln!(
        "answered {:?} after the daemon restarted",
        restart.elapsed()
    );
    assert_eq!(fin["ok"]["state"], "completed", "{fin}");
    assert_eq!(fin["ok"]["output"]["text"], "while you were out");
    assert!(
        stored_after < Duration::from_secs(5),
        "the rendezvous's 'offline' ends the dial early ({stored_after:?})"
    );
    let page = scrape(a.admin.unwrap()).await;
    assert_eq!(
        sample(&page, "agentmesh_mail_stored_total{outcome=\"stored\"}"),
        Some(1.0),
        "{page}"
    );
    let page = scrape(b.admin.unwrap()).await;
    assert_eq!(
        sample(
            &page,
            "agentmesh_mail_received_total{outcome=\"delivered\"}"
        ),
        Some(1.0)
    );
}

/// Sends a request for `echo` with a long timeout; returns its id and how long it took
/// until the requester heard it was stored at the relay.
async fn request_until_stored(c: &mut Client, me: &Value, echo: &str) -> (u64, Duration) {
    let t0 = Instant::now();
    let id = c
        .send(
            "request",
            json!({"from": me, "to": echo, "skill": "echo", "input": "while you were out",
                   "timeout_ms": 60_000}),
        )
        .await
        .unwrap();
    loop {
        let m = next_push(c, Duration::from_secs(30)).await;
        assert!(m.get("event").is_some(), "no final reply yet: {m}");
        if m["event"] == "task_stored" {
            return (id, t0.elapsed());
        }
    }
}

/// Waits for the final reply to request `id` (bounded).
async fn final_reply(c: &mut Client, id: u64) -> Value {
    loop {
        let m = next_push(c, Duration::from_secs(30)).await;
        if m.get("event").is_none() && m["id"] == json!(id) {
            return m;
        }
    }
}

/// Starts the real `agentmeshd` binary with `name`'s configuration from
/// [`daemon_config`] and waits until it has joined the rendezvous.
async fn daemon_process(dir: &std::path::Path, name: &str, s: &Services) -> Killed {
    let c = daemon_config(dir, name, s);
    let (rv, relay) = (c.rendezvous.unwrap(), c.relay.unwrap());
    let text = format!(
        "socket = {sock:?}\nstate_dir = {state:?}\nlisten = \"127.0.0.1:0\"\n\
         log_level = \"warn\"\nstun_servers = {stun:?}\nupnp = false\n\
         [rendezvous]\naddr = {rv_addr:?}\nnode_id = \"{rv_id}\"\ntenant = {tenant:?}\n\
         token = {token:?}\n[relay]\nnode_id = \"{relay_id}\"\nudp = {udp:?}\n",
        sock = c.socket,
        state = c.state_dir,
        stun = c.stun_servers,
        rv_addr = rv.addr,
        rv_id = rv.node_id,
        tenant = rv.tenant,
        token = rv.token,
        relay_id = relay.node_id,
        udp = relay.udp,
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_agentmeshd"))
        .arg("--config")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut cl) = Client::connect(&c.socket).await {
            if let Ok(st) = cl.call("status", json!({})).await {
                if st["net"]["rendezvous"]["connected"] == json!(true) {
                    return guard;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} never joined the rendezvous"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_an_agent_whose_daemon_crashed_is_stored_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_services(dir.path()).await;
    let ca = daemon_config(dir.path(), "a", &s);
    let a = run_daemon(&ca);
    let b = daemon_process(dir.path(), "b", &s).await;
    let b_socket = daemon_config(dir.path(), "b", &s).socket;
    let echo = echo_agent(&b_socket).await;
    let (mut caller, me) = warm_caller(&ca.socket, &echo).await;

    // B crashes: SIGKILL, no close frames; A's session to it still looks fine.
    drop(b);
    let (id, stored_after) = request_until_stored(&mut caller, &me, &echo).await;
    eprintln!("request to a crashed daemon stored at the relay after {stored_after:?}");
    let bound = agentmesh::net::peers::SILENCE_CHECK + agentmesh::net::peers::PING_TIMEOUT;
    assert!(
        stored_after >= agentmesh::net::peers::SILENCE_CHECK
            && stored_after < bound + Duration::from_secs(2),
        "a silent peer is found out by one liveness ping ({stored_after:?}, QUIC's idle \
         timeout would take 60 s)"
    );

    let restart = Instant::now();
    let _b = daemon_process(dir.path(), "b", &s).await;
    let again = echo_agent(&b_socket).await;
    assert_eq!(again, echo, "the kept key gives the same agent id");
    let fin = final_reply(&mut caller, id).await;
    eprintln!(
        "answered {:?} after the crashed daemon restarted",
        restart.elapsed()
    );
    assert_eq!(fin["ok"]["state"], "completed", "{fin}");
    assert_eq!(fin["ok"]["output"]["text"], "while you were out");
    let page = scrape(a.admin.unwrap()).await;
    assert_eq!(
        sample(&page, "agentmesh_mail_stored_total{outcome=\"stored\"}"),
        Some(1.0),
        "{page}"
    );
}
