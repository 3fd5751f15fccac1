//! The CLI's commands, each a short conversation with the daemon over its socket.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use agentmesh::api::socket_path::default_socket_path;
use agentmesh::cli::Client;
use agentmesh_proto::keyfile;

use crate::output::{human, join, json_arg, table};
use crate::{
    Cli, Command, DiscoverArgs, EmitArgs, KeygenArgs, PingArgs, RequestArgs, SubscribeArgs,
};

pub(crate) async fn run(cli: Cli) -> Result<()> {
    let socket = cli.socket.clone().unwrap_or_else(default_socket_path);
    let connect = || async { Client::connect(&socket).await.map_err(anyhow::Error::from) };
    match cli.command {
        Command::Status => status(&mut connect().await?, cli.json).await,
        Command::Discover(a) => discover(&mut connect().await?, a, cli.json).await,
        Command::Request(a) => request(&mut connect().await?, a, cli.json).await,
        Command::Emit(a) => emit(&mut connect().await?, a, cli.json).await,
        Command::Subscribe(a) => subscribe(&mut connect().await?, a, cli.json).await,
        Command::Ping(a) => ping(&mut connect().await?, a, cli.json).await,
        Command::Keygen(a) => keygen(a, cli.json),
        Command::Demo => crate::demo::run(cli.json).await,
    }
}

/// Registers a skill-less agent for this CLI connection (requests need a sender).
async fn cli_agent(client: &mut Client) -> Result<Value> {
    let ok = client
        .call(
            "register",
            json!({"manifest": {"name": "agentmesh-cli", "description": "command-line client"}}),
        )
        .await?;
    Ok(ok["agent_id"].clone())
}

async fn status(client: &mut Client, as_json: bool) -> Result<()> {
    let st = client.call("status", json!({})).await?;
    if as_json {
        println!("{st}");
        return Ok(());
    }
    println!("node      {}", human(&st["node_id"]));
    println!(
        "version   {} (protocol {})",
        human(&st["version"]),
        human(&st["protocol_version"])
    );
    println!(
        "tasks     {} in flight, {} subscriptions, {} connections",
        st["tasks_in_flight"], st["subscriptions"], st["connections"]
    );
    let rows: Vec<Vec<String>> = st["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                human(&a["agent_id"]),
                human(&a["name"]),
                join(&a["capabilities"]),
                join(&a["skills"]),
                a["active_tasks"].to_string(),
            ]
        })
        .collect();
    println!();
    table(
        &["AGENT", "NAME", "CAPABILITIES", "SKILLS", "ACTIVE"],
        &rows,
    );
    print_net(&st["net"]);
    Ok(())
}

/// The network part of `status`: NAT class, addresses, relay, rendezvous, and a table
/// of peers with their path, tier, RTT and bytes.
fn print_net(net: &Value) {
    if net.is_null() {
        println!("\nnetwork   none (no [rendezvous] configured: this host's agents only)");
        return;
    }
    println!();
    println!("nat       {}", human(&net["nat"]));
    println!("public    {}", join(&net["public_addrs"]));
    println!("local     {}", human(&net["local_addr"]));
    let relay = &net["relay"];
    if !relay.is_null() {
        let state = if relay["connected"] == true {
            "connected"
        } else {
            "not connected"
        };
        println!(
            "relay     {} {state} ({})",
            human(&relay["addr"]),
            human(&relay["transport"])
        );
    }
    let rv = &net["rendezvous"];
    if !rv.is_null() {
        let state = if rv["connected"] == true {
            "connected"
        } else {
            "not connected"
        };
        println!("rendezvous {state}, sees us at {}", human(&rv["observed"]));
    }
    let ms = |v: &Value| v.as_f64().map_or(String::new(), |x| format!("{x:.1} ms"));
    let rows: Vec<Vec<String>> = net["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                human(&p["node"]),
                human(&p["path"]),
                human(&p["tier"]),
                human(&p["addr"]),
                ms(&p["rtt_ms"]),
                human(&p["bytes_sent"]),
                human(&p["bytes_received"]),
            ]
        })
        .collect();
    println!();
    table(
        &["PEER", "PATH", "TIER", "ADDRESS", "RTT", "SENT", "RECEIVED"],
        &rows,
    );
}

async fn ping(client: &mut Client, a: PingArgs, as_json: bool) -> Result<()> {
    let args = json!({"target": a.target, "count": a.count, "interval_ms": a.interval_ms});
    let ok = client.call("ping", args).await?;
    if as_json {
        println!("{ok}");
        return Ok(());
    }
    let node = ok["node"].as_str().unwrap_or("?");
    let short = node
        .parse::<agentmesh_proto::NodeId>()
        .map_or_else(|_| node.to_string(), |n| n.short());
    for r in ok["replies"].as_array().into_iter().flatten() {
        match r["rtt_ms"].as_f64() {
            Some(rtt) => println!(
                "reply from {short} path {} ({}) rtt {rtt:.1} ms",
                human(&r["path"]),
                human(&r["tier"])
            ),
            None => println!(
                "no reply from {short} (seq {}): {}",
                r["seq"],
                human(&r["error"])
            ),
        }
    }
    println!("{} sent, {} received", ok["sent"], ok["received"]);
    if ok["received"].as_u64() == Some(0) {
        bail!("no replies from {short}");
    }
    Ok(())
}

async fn discover(client: &mut Client, a: DiscoverArgs, as_json: bool) -> Result<()> {
    let mut query = serde_json::Map::new();
    if !a.capabilities.is_empty() {
        query.insert("capabilities".into(), json!(a.capabilities));
    }
    if !a.tags.is_empty() {
        query.insert("tags".into(), json!(a.tags));
    }
    for (k, v) in [
        ("skill_id", a.skill),
        ("name", a.name),
        ("availability", a.availability),
    ] {
        if let Some(v) = v {
            query.insert(k.into(), json!(v));
        }
    }
    if let Some(l) = a.limit {
        query.insert("limit".into(), json!(l));
    }
    let ok = client.call("discover", json!({"query": query})).await?;
    if as_json {
        println!("{ok}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = ok["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            vec![
                human(&m["id"]),
                human(&m["name"]),
                human(&m["availability"]),
                join(&m["capabilities"]),
                m["skills"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .map(|k| human(&k["id"]))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["AGENT", "NAME", "AVAILABILITY", "CAPABILITIES", "SKILLS"],
        &rows,
    );
    println!("{} of {} matching agents", rows.len(), ok["total"]);
    Ok(())
}

async fn request(client: &mut Client, a: RequestArgs, as_json: bool) -> Result<()> {
    let from = cli_agent(client).await?;
    let mut args =
        json!({"from": from, "skill": a.skill, "input": json_arg(&a.input), "stream": a.stream});
    if let Some(to) = a.to {
        args["to"] = json!(to);
    }
    if let Some(c) = a.capability {
        args["capability"] = json!(c);
    }
    if let Some(t) = a.timeout_ms {
        args["timeout_ms"] = json!(t);
    }
    if let Some(c) = a.context_id {
        args["context_id"] = json!(c);
    }
    let id = client.send("request", args).await?;
    loop {
        let msg = client.next_message().await?;
        match msg["event"].as_str() {
            Some("stream") if as_json => println!("{msg}"),
            Some("stream") => println!("{}", human(&msg["chunk"])),
            Some("task_update") if as_json => eprintln!("{msg}"),
            Some("task_update") => eprintln!(
                "task {} {}{}",
                human(&msg["task_id"]),
                human(&msg["state"]),
                msg["message"]
                    .as_str()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            Some(_) => {}
            None if msg["id"] == json!(id) => return print_result(msg, as_json),
            None => {}
        }
    }
}

fn print_result(msg: Value, as_json: bool) -> Result<()> {
    let ok = agentmesh::cli::client::reply_value(msg)?;
    if as_json {
        println!("{ok}");
    } else if ok["state"] == "completed" {
        println!("{}", human(&ok["output"]));
    }
    if ok["state"] != "completed" {
        let err = &ok["error"];
        bail!(
            "task {} ended {}: {} {}",
            human(&ok["task_id"]),
            human(&ok["state"]),
            human(&err["code"]),
            human(&err["message"])
        );
    }
    Ok(())
}

async fn emit(client: &mut Client, a: EmitArgs, as_json: bool) -> Result<()> {
    let from = cli_agent(client).await?;
    let ok = client
        .call(
            "emit",
            json!({"from": from, "topic": a.topic, "data": json_arg(&a.data)}),
        )
        .await?;
    if as_json {
        println!("{ok}");
    } else {
        println!("delivered to {} subscription(s)", ok["delivered"]);
    }
    Ok(())
}

async fn subscribe(client: &mut Client, a: SubscribeArgs, as_json: bool) -> Result<()> {
    let agent = cli_agent(client).await?;
    client
        .call(
            "subscribe",
            json!({"agent_id": agent, "pattern": a.pattern}),
        )
        .await?;
    eprintln!("listening on '{}' (Ctrl-C to stop)", a.pattern);
    let mut seen = 0u64;
    while a.count.is_none_or(|n| seen < n) {
        let msg = client.next_message().await?;
        if msg["event"] != "event" {
            continue;
        }
        seen += 1;
        if as_json {
            println!("{msg}");
        } else {
            println!(
                "{}  {}  {}",
                human(&msg["topic"]),
                human(&msg["from"]),
                msg["data"]
            );
        }
    }
    Ok(())
}

fn keygen(a: KeygenArgs, as_json: bool) -> Result<()> {
    let key = agentmesh_proto::SecretKey::generate_os();
    keyfile::create(&a.out, &key).with_context(|| format!("writing {}", a.out.display()))?;
    if as_json {
        println!(
            "{}",
            json!({"path": a.out, "node_id": key.node_id(), "agent_id": key.agent_id()})
        );
    } else {
        println!("wrote {} (mode 0600)", a.out.display());
        println!("node id   {}", key.node_id());
        println!("agent id  {}", key.agent_id());
    }
    Ok(())
}
