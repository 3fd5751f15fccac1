//! `agentmesh demo`: a daemon and five agents in this process, talking over the real
//! local API socket: discovery, requests spread by capability, streaming,
//! input_required, events, and a latency measurement. Needs no setup and no root.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use agentmesh::cli::Client;
use agentmesh::config::DaemonConfig;
use agentmesh::daemon::Daemon;

use crate::output::{human, table};

pub(crate) async fn run(as_json: bool) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let config = DaemonConfig {
        socket: dir.path().join("agentmeshd.sock"),
        state_dir: dir.path().join("state"),
        ..DaemonConfig::default()
    };
    let daemon = Daemon::start(&config)?;
    let node = daemon.node_id();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(daemon.run(async {
        let _ = stop_rx.await;
    }));
    eprintln!(
        "demo: agentmeshd {} listening on {}",
        node.short(),
        config.socket.display()
    );

    let sock = config.socket.clone();
    for name in ["echo-1", "echo-2"] {
        spawn_agent(
            &sock,
            name,
            json!(["echo"]),
            json!([{"id": "echo", "name": "Echo"}]),
        )
        .await?;
    }
    spawn_agent(
        &sock,
        "counter",
        json!(["count"]),
        json!([{"id": "count", "name": "Count", "streaming": true}]),
    )
    .await?;
    spawn_agent(
        &sock,
        "clerk",
        json!(["booking"]),
        json!([{"id": "book", "name": "Book a table"}]),
    )
    .await?;
    let mut listener = Client::connect(&sock).await?;
    let lid = listener
        .call("register", json!({"manifest": {"name": "listener"}}))
        .await?["agent_id"]
        .clone();
    listener
        .call(
            "subscribe",
            json!({"agent_id": lid, "pattern": "mesh.event.>"}),
        )
        .await?;

    let mut caller = Client::connect(&sock).await?;
    let me = caller
        .call("register", json!({"manifest": {"name": "caller"}}))
        .await?["agent_id"]
        .clone();
    let mut rows = Vec::new();
    let mut results = serde_json::Map::new();

    let found = caller.call("discover", json!({"query": {}})).await?;
    rows.push(vec![
        "discover".into(),
        format!("{} agents online", found["total"]),
        String::new(),
    ]);

    for i in 0..4 {
        let t = Instant::now();
        let r = call(&mut caller, json!({"from": me, "capability": "echo", "skill": "echo", "input": format!("ping {i}")})).await?;
        rows.push(vec![
            format!("request echo #{i}"),
            format!(
                "{} by {}",
                human(&r["output"]["text"]),
                human(&r["output"]["by"])
            ),
            ms(t.elapsed()),
        ]);
    }

    let t = Instant::now();
    let id = caller.send("request", json!({"from": me, "capability": "count", "skill": "count", "input": 5, "stream": true})).await?;
    let mut chunks = Vec::new();
    let fin = loop {
        let m = caller.next_message().await?;
        if m["event"] == "stream" {
            chunks.push(human(&m["chunk"]));
        } else if m.get("event").is_none() && m["id"] == json!(id) {
            break agentmesh::cli::client::reply_value(m)?;
        }
    };
    rows.push(vec![
        "stream count 5".into(),
        format!("chunks [{}], {}", chunks.join(" "), human(&fin["state"])),
        ms(t.elapsed()),
    ]);

    let t = Instant::now();
    let id = caller
        .send(
            "request",
            json!({"from": me, "capability": "booking", "skill": "book", "input": {"party": 2}}),
        )
        .await?;
    let fin = loop {
        let m = caller.next_message().await?;
        if m["event"] == "task_update" && m["state"] == "input_required" {
            caller
                .send(
                    "continue",
                    json!({"task_id": m["task_id"], "input": "friday 8pm"}),
                )
                .await?;
        } else if m.get("event").is_none() && m["id"] == json!(id) {
            break agentmesh::cli::client::reply_value(m)?;
        }
    };
    rows.push(vec![
        "book (input_required)".into(),
        human(&fin["output"]),
        ms(t.elapsed()),
    ]);

    let t = Instant::now();
    caller
        .call(
            "emit",
            json!({"from": me, "topic": "mesh.event.demo.hello", "data": {"n": 1}}),
        )
        .await?;
    let ev = loop {
        let m = listener.next_message().await?;
        if m["event"] == "event" {
            break m;
        }
    };
    rows.push(vec![
        "emit mesh.event.demo.hello".into(),
        format!("listener got {}", ev["data"]),
        ms(t.elapsed()),
    ]);

    let (p50, p99, n) = latency(&mut caller, &me).await?;
    rows.push(vec![
        format!("{n} sequential echo requests"),
        format!("p50 {} p99 {}", us(p50), us(p99)),
        String::new(),
    ]);
    results.insert("echo_p50_us".into(), json!(p50.as_micros()));
    results.insert("echo_p99_us".into(), json!(p99.as_micros()));

    if as_json {
        results.insert("steps".into(), json!(rows));
        println!("{}", Value::Object(results));
    } else {
        println!();
        table(&["STEP", "RESULT", "LATENCY"], &rows);
        println!("\nAll on one host through agentmeshd's local API. Cross-host paths (direct or relayed)");
        println!("appear here once the daemon's networking lands.");
    }
    let _ = stop_tx.send(());
    served.await.context("daemon task")?;
    Ok(())
}

async fn call(c: &mut Client, args: Value) -> Result<Value> {
    let r = c.call("request", args).await?;
    anyhow::ensure!(
        r["state"] == "completed",
        "request ended {}: {}",
        r["state"],
        r["error"]
    );
    Ok(r)
}

async fn latency(c: &mut Client, me: &Value) -> Result<(Duration, Duration, usize)> {
    let n = 1000;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        call(
            c,
            json!({"from": me, "capability": "echo", "skill": "echo", "input": i}),
        )
        .await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok((times[n / 2], times[n * 99 / 100], n))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

/// Starts one demo agent on its own connection; it serves until the demo ends.
async fn spawn_agent(sock: &Path, name: &str, caps: Value, skills: Value) -> Result<()> {
    let mut c = Client::connect(sock).await?;
    c.call(
        "register",
        json!({"manifest": {"name": name, "capabilities": caps, "skills": skills}}),
    )
    .await?;
    let name = name.to_string();
    tokio::spawn(async move {
        while let Ok(m) = c.next_message().await {
            if serve(&mut c, &name, &m).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

async fn serve(c: &mut Client, name: &str, m: &Value) -> Result<()> {
    let task = &m["task_id"];
    match (m["event"].as_str(), m["skill"].as_str()) {
        (Some("request"), Some("echo")) => {
            let out = json!({"text": human(&m["input"]), "by": name});
            c.send(
                "respond",
                json!({"task_id": task, "state": "completed", "output": out}),
            )
            .await?;
        }
        (Some("request"), Some("count")) => {
            let n = m["input"].as_u64().unwrap_or(3).min(100);
            for i in 1..=n {
                c.send(
                    "stream",
                    json!({"task_id": task, "chunk": i, "final": i == n}),
                )
                .await?;
            }
            c.send(
                "respond",
                json!({"task_id": task, "state": "completed", "output": n}),
            )
            .await?;
        }
        (Some("request"), Some("book")) => {
            c.send(
                "respond",
                json!({"task_id": task, "state": "input_required", "message": "which day?"}),
            )
            .await?;
        }
        (Some("continue"), _) => {
            let out = format!("table booked for {}", human(&m["input"]));
            c.send(
                "respond",
                json!({"task_id": task, "state": "completed", "output": out}),
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}
