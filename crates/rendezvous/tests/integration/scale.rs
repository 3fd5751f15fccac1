//! `rendezvous-bench` at tiny scale (3 nodes × 5 agents): the real service binary, real
//! QUIC clients; the counts in its JSON must add up, so the benchmark cannot rot.

use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_rendezvous-bench");
const SERVICE: &str = env!("CARGO_BIN_EXE_agentmesh-rendezvous");

#[test]
fn help_teaches_the_phases() {
    let out = Command::new(BENCH).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--agents-per-node") && text.contains("VmRSS"),
        "{text}"
    );
}

#[test]
fn tiny_run_registers_persists_and_discovers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scale.json");
    let run = Command::new(BENCH)
        .args(["--nodes", "3", "--agents-per-node", "5", "--batch", "2"])
        .args([
            "--rounds",
            "20",
            "--heartbeat-ms",
            "200",
            "--endpoints",
            "2",
        ])
        .arg("--server-bin")
        .arg(SERVICE)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["agents"], 15);
    // 5 agents in requests of 2: 3 requests per node.
    assert_eq!(r["registration"]["requests"], 9);
    assert_eq!(r["registration"]["persisted_rows"], 15);
    assert_eq!(r["server"]["agents"], 15);
    assert_eq!(r["server"]["nodes_online"], 3);
    assert_eq!(r["server"]["rejected_total"], 0);
    assert_eq!(r["server"]["discoveries_total"], 7 * 20);
    assert_eq!(r["heartbeats"]["errors"], 0);
    // Node 0 heartbeats as soon as it has registered; any agent reported unknown (expired
    // on a stalled machine) was registered again.
    assert!(r["heartbeats"]["acked"].as_u64().unwrap() >= 1);
    let unknown = r["heartbeats"]["unknown_agents"].as_u64().unwrap();
    let again = r["heartbeats"]["reregistered"].as_u64().unwrap();
    assert!(
        again <= unknown && unknown <= again + 5,
        "{unknown} {again}"
    );
    let registrations = r["server"]["registrations_total"].as_u64().unwrap();
    assert!(
        (15..=15 + again).contains(&registrations),
        "{registrations}"
    );
    assert!(r["registration"]["agents_per_sec"].as_f64().unwrap() > 0.0);
    assert!(r["memory"]["rss_agents_kib"].as_u64().unwrap() > 0);
    assert!(r["sqlite"]["db_bytes"].as_u64().unwrap() > 0);
    let queries = r["discovery"].as_array().unwrap();
    assert_eq!(queries.len(), 8, "ping and seven query kinds");
    for q in queries {
        assert_eq!(q["check_ok"], true, "{q}");
        assert_eq!(q["rounds"], 20);
    }
    assert_eq!(
        queries[1]["avg_results"], 1.0,
        "an agent id finds its agent"
    );
}
