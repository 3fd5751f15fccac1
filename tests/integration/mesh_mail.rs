//! Store-and-forward across real daemons on loopback (real rendezvous, real relay with
//! its mailbox): an agent's daemon stops; a request for that agent is sealed and left
//! at the relay; the daemon starts again with the same keys, its agent registers again,
//! and the waiting requester gets the answer. Also: with no relay to store at, the
//! request fails with a clear error.

use std::time::{Duration, Instant};

use agentmesh::cli::Client;
use serde_json::{json, Value};

use crate::mesh_loopback::{
    caller, discover_until, run_daemon, sample, scrape, two_daemons, TwoDaemons,
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
    let (mut caller, me) = caller(&ca.socket, "caller").await;
    discover_until(&mut caller, "echo", 1).await;
    let warm = caller
        .call(
            "request",
            json!({"from": me, "to": echo, "skill": "echo", "input": "warm"}),
        )
        .await
        .unwrap();
    assert_eq!(warm["state"], "completed", "{warm}");

    // B goes away (its agents with it).
    b.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t0 = Instant::now();
    let id = caller
        .send(
            "request",
            json!({"from": me, "to": echo, "skill": "echo", "input": "while you were out",
                   "timeout_ms": 60_000}),
        )
        .await
        .unwrap();
    // submitted, then stored (after the session layer gives up on B).
    let mut stored_after = None;
    while stored_after.is_none() {
        let m = next_push(&mut caller, Duration::from_secs(20)).await;
        assert!(m.get("event").is_some(), "no final reply yet: {m}");
        if m["event"] == "task_stored" {
            stored_after = Some(t0.elapsed());
        }
    }
    let stored_after = stored_after.unwrap();
    eprintln!("request stored at the relay after {stored_after:?}");

    // B starts again with the same state directory: same node key, same agent key.
    let restart = Instant::now();
    let b = run_daemon(&cb);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = echo_agent(&cb.socket).await;
    assert_eq!(again, echo, "the kept key gives the same agent id");
    let fin = loop {
        let m = next_push(&mut caller, Duration::from_secs(30)).await;
        if m.get("event").is_none() && m["id"] == json!(id) {
            break m;
        }
    };
    eprintln!(
        "answered {:?} after the daemon restarted ({:?} after the request)",
        restart.elapsed(),
        t0.elapsed()
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
