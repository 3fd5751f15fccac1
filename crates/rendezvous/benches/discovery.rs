//! Discovery at scale: 100,000 signed agents in one tenant, then a mix of queries through
//! the core (index lookup, matching, cloning the results), and the same plus encoding the
//! answer frame. Prints a table of p50/p99 per query kind and writes
//! `target/bench/rendezvous.json`.
//!
//! Then what the client pays to decode a 100-result answer, and how much of that is
//! checking that each node and agent id is a valid Ed25519 point.
//!
//! Run: `cargo bench -p agentmesh-rendezvous --bench discovery` (AGENTS=n to change the size).

use std::time::{Duration, Instant};

use agentmesh_proto::frame::{encode, from_bytes, to_bytes};
use agentmesh_proto::rendezvous::ServerMsg;
use agentmesh_proto::{AgentId, DiscoverQuery, Manifest, NodeId, SecretKey};
use agentmesh_rendezvous::core::{AgentRow, CoreConfig, Server, TenantConfig};

// The population `rendezvous-bench` registers over the wire, so both benches measure
// the same agents. Its runner parts are not needed here, and its unit tests do not run
// in a bench without a harness.
#[allow(dead_code, unused_imports)]
#[path = "../src/bin/rendezvous-bench/agents.rs"]
mod agents;

use agents::CAPS;

const ROUNDS: usize = 2_000;

fn key(i: u64) -> SecretKey {
    let mut b = [7u8; 32];
    b[..8].copy_from_slice(&i.to_be_bytes());
    SecretKey::from_bytes(&b)
}

/// Agent `i` of the shared population; one in a hundred is busy (outside the
/// signature: the registry owns availability).
fn manifest(i: u64) -> Manifest {
    let mut m = agents::manifest(i as usize);
    if i % 100 == 0 {
        m.availability = agentmesh_proto::Availability::Busy;
    }
    m
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Query `i` of `kind`: the kinds `rendezvous-bench` asks, plus availability, scans and
/// a miss.
fn query(kind: &str, i: usize) -> DiscoverQuery {
    let mut q = DiscoverQuery::default();
    match kind {
        "capability+availability" => {
            q.capabilities = vec![format!("cap{}", i % CAPS)];
            q.availability = Some(agentmesh_proto::Availability::Online);
        }
        "availability busy (1%)" => q.availability = Some(agentmesh_proto::Availability::Busy),
        "name, no match" => q.name = Some("zzz".into()),
        "name, 2 chars (scan)" => q.name = Some(format!("{:02}", i % 100)),
        shared => return agents::query(shared, i, &[], 0),
    }
    q
}

fn main() {
    let n: u64 = std::env::var("AGENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let now = Instant::now();
    let mut core = Server::new(CoreConfig::default(), key(u64::MAX), now, 0, 1);
    core.add_tenant(TenantConfig {
        name: "t".into(),
        join_token: "x".into(),
        revoked: vec![],
    });
    let nodes: Vec<NodeId> = (0..100).map(|i| key(1_000_000 + i).node_id()).collect();
    let t = Instant::now();
    for i in 0..n {
        let row = AgentRow {
            tenant: "t".into(),
            node: nodes[(i % 100) as usize],
            manifest: manifest(i),
            last_seen_unix_ms: 0,
        };
        assert!(core.restore_agent(now, row));
    }
    let load = t.elapsed();
    println!("loaded {n} signed agents in {load:.2?} (sign + verify + index)");
    let kinds = [
        "one capability",
        "two capabilities",
        "skill id",
        "tags (2)",
        "capability+availability",
        "capability, limit 1000",
        "availability busy (1%)",
        "name substring",
        "name, no match",
        "name, 2 chars (scan)",
    ];
    println!(
        "{:<24} {:>9} {:>9} {:>12} {:>12} {:>8}",
        "query (µs)", "p50", "p99", "p50+encode", "p99+encode", "results"
    );
    let mut rows = Vec::new();
    for kind in kinds {
        let mut times = Vec::with_capacity(ROUNDS);
        let mut with_encode = Vec::with_capacity(ROUNDS);
        let mut results = 0usize;
        for i in 0..ROUNDS {
            let q = query(kind, i);
            let t = Instant::now();
            let agents = core.discover_in("t", &q);
            times.push(t.elapsed());
            results += agents.len();
            let frame = encode(&ServerMsg::Discovered { req: 1, agents }, usize::MAX);
            with_encode.push(t.elapsed());
            assert!(frame.is_ok());
        }
        times.sort();
        with_encode.sort();
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        let (e50, e99) = (
            percentile(&with_encode, 0.5),
            percentile(&with_encode, 0.99),
        );
        let avg = results / ROUNDS;
        println!(
            "{kind:<24} {:>9.1} {:>9.1} {:>12.1} {:>12.1} {avg:>8}",
            us(p50),
            us(p99),
            us(e50),
            us(e99)
        );
        rows.push(
            serde_json::json!({"query": kind, "p50_us": us(p50), "p99_us": us(p99),
            "p50_with_encode_us": us(e50), "p99_with_encode_us": us(e99), "avg_results": avg}),
        );
    }
    let decode = client_decode(&core);
    let out = serde_json::json!({
        "bench": "rendezvous discovery",
        "client_decode": decode,
        "agents": n,
        "rounds_per_query": ROUNDS,
        "load_s": load.as_secs_f64(),
        "target_p99_ms": 5.0,
        "queries": rows,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("rendezvous.json");
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    ) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

/// Times decoding one 100-result `Discovered` body (as the client does) and checking one
/// id (`AgentId::from_bytes`, an Ed25519 point decompression; every id decoded pays it).
fn client_decode(core: &Server) -> serde_json::Value {
    let agents = core.discover_in("t", &query("one capability", 0));
    let results = agents.len();
    let Ok(body) = to_bytes(&ServerMsg::Discovered { req: 1, agents }) else {
        return serde_json::Value::Null;
    };
    let mut decode = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let msg = from_bytes::<ServerMsg>(&body);
        decode.push(t.elapsed());
        assert!(msg.is_ok());
    }
    let raw: Vec<[u8; 32]> = (0..ROUNDS as u64)
        .map(|i| *key(i).agent_id().as_bytes())
        .collect();
    let mut checks: Vec<Duration> = raw
        .iter()
        .map(|b| {
            let t = Instant::now();
            let ok = AgentId::from_bytes(*b).is_ok();
            let d = t.elapsed();
            assert!(ok);
            d
        })
        .collect();
    checks.sort();
    let per_id = percentile(&checks, 0.5);
    decode.sort();
    let p50 = percentile(&decode, 0.5);
    // Each result carries two ids: the hosting node's and the agent's.
    let ids = per_id * (2 * results) as u32;
    println!(
        "client decode of a {results}-result answer ({} bytes): p50 {:.1} µs, of which \
         {} id checks ≈ {:.1} µs (p50 {:.2} µs each)",
        body.len(),
        us(p50),
        2 * results,
        us(ids),
        us(per_id)
    );
    serde_json::json!({"results": results, "bytes": body.len(), "decode_p50_us": us(p50),
        "id_check_us": us(per_id), "id_checks_us": us(ids)})
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
