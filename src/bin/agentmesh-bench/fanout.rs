//! Fan-out: one `emit` reaching many subscribers spread over many daemons. Starts
//! `nodes` in-process daemons (real UDP sockets, the bench's rendezvous and relay), each
//! with `per_node` subscriber agents on its local API, and a publisher agent on one more
//! daemon; measures from the `emit` until the last subscriber has the event, first cold
//! (no peer sessions yet) then warm, and counts every delivery so losses and duplicates
//! show.

use std::path::Path;
use std::time::{Duration, Instant};

use agentmesh::cli::Client;
use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::footprint;
use crate::mesh::{run_daemon, RunningDaemon, Services};
use crate::stats::Samples;

/// The subject of the measured events (the subscribers' pattern is `bench.fanout.>`).
const TOPIC: &str = "bench.fanout.event";
/// The subject the readiness probe emits on; subscribers ignore it.
const PROBE_TOPIC: &str = "bench.fanout.probe";

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FanoutConfig {
    /// Subscriber daemons.
    pub(crate) nodes: usize,
    /// Subscriber agents on each of them.
    pub(crate) per_node: usize,
    /// Warm emits after the cold one.
    pub(crate) warm_emits: usize,
}

/// One event received: which subscriber, which emit, when.
type Receipt = (usize, u64, Instant);

/// The daemons and agents of a fan-out run.
struct Setup {
    _daemons: Vec<RunningDaemon>,
    readers: Vec<JoinHandle<()>>,
    receipts: mpsc::UnboundedReceiver<Receipt>,
    publisher: Client,
    publisher_id: Value,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

/// One emit's deliveries.
struct EmitResult {
    /// Time from sending `emit` to each delivery, in arrival order.
    times: Vec<Duration>,
    /// Daemons the publisher's daemon sent the event to.
    remote_nodes: u64,
}

/// Runs the fan-out part and returns its JSON.
pub(crate) async fn run(s: &Services, dir: &Path, cfg: FanoutConfig) -> anyhow::Result<Value> {
    let total = cfg.nodes * cfg.per_node;
    let rss_before = footprint::rss_kib()?;
    let t_setup = Instant::now();
    let mut setup = start(s, dir, cfg).await?;
    let setup_s = t_setup.elapsed().as_secs_f64();
    let rss_after = footprint::rss_kib()?;
    let fds = footprint::open_fds();
    // Deliveries per subscriber and emit, to find losses and duplicates.
    let emits = 1 + cfg.warm_emits;
    let mut counts = vec![vec![0u32; emits]; total];

    eprintln!(
        "fan-out: cold emit to {total} subscribers on {} daemons",
        cfg.nodes
    );
    let cold = emit_once(&mut setup, &mut counts, 0, total, Duration::from_secs(60)).await?;
    let mut last = Samples::default();
    let mut median = Samples::default();
    let mut incomplete = 0usize;
    for seq in 1..emits {
        if seq % 10 == 0 {
            eprintln!("fan-out: warm emit {seq}/{}", cfg.warm_emits);
        }
        let r = emit_once(
            &mut setup,
            &mut counts,
            seq as u64,
            total,
            Duration::from_secs(10),
        )
        .await?;
        if r.times.len() < total {
            incomplete += 1;
        }
        if let Some(l) = r.times.last() {
            last.push(*l);
        }
        median.push(median_of(&r.times));
    }
    // Late or repeated deliveries still in flight.
    drain(&mut setup.receipts, &mut counts, Duration::from_secs(1)).await;
    let paths = publisher_paths(&mut setup.publisher).await?;
    let lost: usize = counts.iter().flatten().filter(|&&c| c == 0).count();
    let duplicates: u64 = counts
        .iter()
        .flatten()
        .map(|&c| u64::from(c.saturating_sub(1)))
        .sum();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (l, m) = (last.summary(), median.summary());
    Ok(json!({
        "nodes": cfg.nodes,
        "subscribers_per_node": cfg.per_node,
        "subscribers": total,
        "setup_seconds": setup_s,
        "process_rss_before_kib": rss_before,
        "process_rss_after_setup_kib": rss_after,
        "process_open_fds_after_setup": fds,
        "cold": {
            "received": cold.times.len(),
            "remote_nodes": cold.remote_nodes,
            "last_ms": cold.times.last().map(|d| ms(*d)),
            "p50_ms": ms(median_of(&cold.times)),
            "first_ms": cold.times.first().map(|d| ms(*d)),
        },
        "warm": {
            "emits": cfg.warm_emits,
            "incomplete_emits": incomplete,
            "last_p50_ms": l.p50_us / 1e3,
            "last_p99_ms": l.p99_us / 1e3,
            "median_receive_p50_ms": m.p50_us / 1e3,
        },
        "publisher_sessions_by_path": paths,
        "deliveries_expected": total * emits,
        "lost": lost,
        "duplicates": duplicates,
    }))
}

/// How many of the publisher daemon's peer sessions are on each path (`direct`,
/// `relay`), from its `status`.
async fn publisher_paths(publisher: &mut Client) -> anyhow::Result<Value> {
    let st = publisher.call("status", json!({})).await?;
    let mut by_path = serde_json::Map::new();
    let peers = st["net"]["peers"].as_array().cloned().unwrap_or_default();
    for p in peers.iter().filter(|p| p["session"] == json!(true)) {
        let path = p["path"].as_str().unwrap_or("unknown").to_string();
        let n = by_path.get(&path).and_then(Value::as_u64).unwrap_or(0);
        by_path.insert(path, json!(n + 1));
    }
    Ok(Value::Object(by_path))
}

fn median_of(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t.get(t.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

/// Starts the subscriber daemons and agents, the publisher and a probe daemon, and waits
/// until the subscriptions of every daemon have reached the mesh.
async fn start(s: &Services, dir: &Path, cfg: FanoutConfig) -> anyhow::Result<Setup> {
    let (tx, receipts) = mpsc::unbounded_channel();
    let mut daemons = Vec::new();
    let mut readers = Vec::new();
    let mut sockets = Vec::new();
    for n in 0..cfg.nodes + 2 {
        let config = s.daemon_config(dir, &format!("fan{n}"))?;
        daemons.push(run_daemon(&config, None).await?);
        sockets.push(config.socket);
        if (n + 1) % 20 == 0 {
            eprintln!("fan-out: {} daemons started", n + 1);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (n, sock) in sockets.iter().enumerate().take(cfg.nodes) {
        for k in 0..cfg.per_node {
            let sub = n * cfg.per_node + k;
            let c = subscriber(sock, sub).await?;
            readers.push(tokio::spawn(read_events(c, sub, tx.clone())));
        }
        if (n + 1) % 20 == 0 {
            eprintln!("fan-out: subscribers on {} daemons", n + 1);
        }
    }
    let (publisher, publisher_id) = registered(&sockets[cfg.nodes], "publisher").await?;
    let (mut probe, probe_id) = registered(&sockets[cfg.nodes + 1], "probe").await?;
    wait_for_subscriptions(&mut probe, &probe_id, cfg.nodes).await?;
    // The publisher's daemon receives the same subscription list from the rendezvous.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Setup {
        _daemons: daemons,
        readers,
        receipts,
        publisher,
        publisher_id,
    })
}

/// A connection with one registered agent.
async fn registered(sock: &Path, name: &str) -> anyhow::Result<(Client, Value)> {
    let mut c = Client::connect(sock).await?;
    let reg = c
        .call("register", json!({"manifest": {"name": name}}))
        .await?;
    let id = reg["agent_id"].clone();
    Ok((c, id))
}

/// Subscriber `n`: an agent subscribed to `bench.fanout.>`.
async fn subscriber(sock: &Path, n: usize) -> anyhow::Result<Client> {
    let (mut c, id) = registered(sock, &format!("sub-{n}")).await?;
    c.call(
        "subscribe",
        json!({"agent_id": id, "pattern": "bench.fanout.>"}),
    )
    .await
    .with_context(|| format!("subscriber {n}"))?;
    Ok(c)
}

/// Forwards every measured event subscriber `n` receives, with its arrival time.
async fn read_events(mut c: Client, n: usize, tx: mpsc::UnboundedSender<Receipt>) {
    while let Ok(m) = c.next_message().await {
        let now = Instant::now();
        if m["event"] != "event" || m["topic"] != TOPIC {
            continue;
        }
        if let Some(seq) = m["data"]["seq"].as_u64() {
            if tx.send((n, seq, now)).is_err() {
                return;
            }
        }
    }
}

/// Emits on the probe topic from the probe daemon until it sees all `nodes` subscriber
/// daemons (bounded): the rendezvous has then pushed everyone's subscriptions.
async fn wait_for_subscriptions(
    probe: &mut Client,
    probe_id: &Value,
    nodes: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = probe
            .call(
                "emit",
                json!({"from": probe_id, "topic": PROBE_TOPIC, "data": {}}),
            )
            .await?;
        let seen = r["remote_nodes"].as_u64().unwrap_or(0);
        if seen as usize >= nodes {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {seen} of {nodes} subscriber daemons visible after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One emit; waits (bounded) until all `total` subscribers have it.
async fn emit_once(
    setup: &mut Setup,
    counts: &mut [Vec<u32>],
    seq: u64,
    total: usize,
    within: Duration,
) -> anyhow::Result<EmitResult> {
    let args = json!({"from": setup.publisher_id, "topic": TOPIC, "data": {"seq": seq}});
    let (publisher, receipts) = (&mut setup.publisher, &mut setup.receipts);
    let t0 = Instant::now();
    let id = publisher.send("emit", args).await?;
    let deadline = tokio::time::Instant::from_std(t0 + within);
    let mut times = Vec::with_capacity(total);
    // The emit's reply comes on the publisher's connection while deliveries arrive on
    // the subscribers': read both.
    let reply = async {
        tokio::time::timeout(within, publisher.wait_reply(id))
            .await
            .context("no reply to emit")?
            .context("emit failed")
    };
    let collect = async {
        while times.len() < total {
            let Ok(Some((n, s, at))) = tokio::time::timeout_at(deadline, receipts.recv()).await
            else {
                break;
            };
            if let Some(c) = counts.get_mut(n).and_then(|v| v.get_mut(s as usize)) {
                *c += 1;
            }
            if s == seq {
                times.push(at.saturating_duration_since(t0));
            }
        }
    };
    let (reply, ()) = tokio::join!(reply, collect);
    let reply = reply?;
    Ok(EmitResult {
        times,
        remote_nodes: reply["remote_nodes"].as_u64().unwrap_or(0),
    })
}

/// Counts what still arrives within `grace`.
async fn drain(
    rx: &mut mpsc::UnboundedReceiver<Receipt>,
    counts: &mut [Vec<u32>],
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    while let Ok(Some((n, s, _))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if let Some(c) = counts.get_mut(n).and_then(|v| v.get_mut(s as usize)) {
            *c += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_arrival_times() {
        let ms = Duration::from_millis;
        assert_eq!(median_of(&[]), Duration::ZERO);
        assert_eq!(median_of(&[ms(5)]), ms(5));
        assert_eq!(median_of(&[ms(9), ms(1), ms(5)]), ms(5));
        assert_eq!(median_of(&[ms(4), ms(1), ms(3), ms(2)]), ms(2));
    }

    #[tokio::test]
    async fn drain_counts_late_and_repeated_deliveries() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut counts = vec![vec![0u32; 2]; 2];
        let now = Instant::now();
        for r in [
            (0, 1, now),
            (0, 1, now),
            (1, 0, now),
            (5, 0, now),
            (1, 7, now),
        ] {
            tx.send(r).unwrap();
        }
        drain(&mut rx, &mut counts, Duration::from_millis(50)).await;
        // Out-of-range subscribers and emits are ignored, not a panic.
        assert_eq!(counts, vec![vec![0, 2], vec![1, 0]]);
    }
}
