//! The results: rows for each part, the table printed on stdout, the targets checked,
//! and the JSON written to `target/bench/results.json`.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::stats::Summary;

/// One contender's round trips at one payload size.
#[derive(Debug, Serialize)]
pub(crate) struct RttRow {
    pub(crate) contender: String,
    pub(crate) payload: usize,
    #[serde(flatten)]
    pub(crate) summary: Summary,
}

/// One contender's large-stream runs.
#[derive(Debug, Serialize)]
pub(crate) struct StreamRow {
    pub(crate) contender: String,
    pub(crate) bytes: u64,
    pub(crate) mib_per_s_runs: Vec<f64>,
    pub(crate) mib_per_s_median: f64,
}

/// The `wan` part: round trips across the netns lab, and what proves the paths.
#[derive(Debug, Serialize)]
pub(crate) struct WanReport {
    /// One-way netem delay on every uplink (ms).
    pub(crate) delay_ms: u32,
    /// What makes the delay: `tc netem`, or the NFQUEUE delay where netem is missing.
    pub(crate) delay_by: &'static str,
    /// The propagation floor of each route (ms): 4D direct, 8D through the cloud.
    pub(crate) expected_rtt_ms: Value,
    pub(crate) topology: Value,
    pub(crate) rtt: Vec<RttRow>,
    /// The agentmesh callers' peer status after the measurements.
    pub(crate) paths: Value,
}

/// A target from the issue, checked.
#[derive(Debug, Serialize)]
pub(crate) struct Check {
    pub(crate) target: String,
    pub(crate) value: f64,
    pub(crate) limit: f64,
    pub(crate) pass: bool,
}

/// Everything measured in one run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) meta: Value,
    pub(crate) rtt: Vec<RttRow>,
    pub(crate) paths: Value,
    pub(crate) stream: Vec<StreamRow>,
    pub(crate) footprint: Value,
    pub(crate) fanout: Value,
    pub(crate) wan: Option<WanReport>,
    pub(crate) checks: Vec<Check>,
}

pub(crate) const UDP: &str = "raw UDP ping-pong";
pub(crate) const NATS: &str = "NATS request/reply";
pub(crate) const NATS_TLS: &str = "NATS request/reply, TLS";
pub(crate) const NATS_CLOUD: &str = "NATS request/reply (server in the cloud)";
pub(crate) const HOPS: &str = "hop floor (no protocol)";
pub(crate) const MESH_DIRECT: &str = "agentmesh direct";
pub(crate) const MESH_RELAY: &str = "agentmesh relay";
pub(crate) const QUINN: &str = "raw quinn";
pub(crate) const STREAM_DIRECT: &str = "agentmesh direct (MeshSocket)";
pub(crate) const STREAM_RELAY: &str = "agentmesh relay (MeshSocket + relay)";

/// The p50 of `contender` at `payload` among `rows`.
fn p50_of(rows: &[RttRow], contender: &str, payload: usize) -> Option<f64> {
    rows.iter()
        .find(|r| r.contender == contender && r.payload == payload)
        .map(|r| r.summary.p50_us)
}

/// A table cell: `p50 ÷ base` to two places, or `-` without a base.
fn ratio_cell(p50: f64, base: Option<f64>) -> String {
    base.map_or("-".into(), |b| format!("{:.2}", p50 / b))
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n => s[(n - 1) / 2],
    }
}

impl Report {
    fn p50(&self, contender: &str, payload: usize) -> Option<f64> {
        p50_of(&self.rtt, contender, payload)
    }

    fn stream_rate(&self, contender: &str) -> Option<f64> {
        self.stream
            .iter()
            .find(|r| r.contender == contender)
            .map(|r| r.mib_per_s_median)
    }

    /// The targets, for what was measured.
    pub(crate) fn check_targets(&mut self, payloads: &[usize]) {
        let mut checks = Vec::new();
        let mut check = |target: String, value: Option<f64>, limit: f64, le: bool| {
            if let Some(value) = value {
                let pass = if le { value <= limit } else { value >= limit };
                checks.push(Check {
                    target,
                    value,
                    limit,
                    pass,
                });
            }
        };
        for &p in payloads {
            let direct = self.p50(MESH_DIRECT, p);
            let ratio = |other: Option<f64>| direct.zip(other).map(|(d, o)| d / o);
            check(
                format!("{p} B: direct p50 / NATS p50 ≤ 1"),
                ratio(self.p50(NATS, p)),
                1.0,
                true,
            );
            check(
                format!("{p} B: direct p50 / UDP p50 ≤ 3"),
                ratio(self.p50(UDP, p)),
                3.0,
                true,
            );
        }
        let (raw, direct, relay) = (
            self.stream_rate(QUINN),
            self.stream_rate(STREAM_DIRECT),
            self.stream_rate(STREAM_RELAY),
        );
        let frac = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        check(
            "stream: relay / direct ≥ 0.5".into(),
            frac(relay, direct),
            0.5,
            false,
        );
        check(
            "stream: direct / raw quinn ≥ 0.8".into(),
            frac(direct, raw),
            0.8,
            false,
        );
        let ext = &self.footprint["agentmeshd"];
        check(
            "agentmeshd: memory per idle peer session ≤ 50 KiB (bytes)".into(),
            ext["per_idle_peer_bytes"].as_f64(),
            50.0 * 1024.0,
            true,
        );
        let remote = &ext["cpu_remote_requests"];
        check(
            "agentmeshd: served / offered requests (over the mesh) ≥ 0.95".into(),
            remote["served_per_s"]
                .as_f64()
                .zip(remote["offered_per_s"].as_f64())
                .map(|(s, o)| s / o),
            0.95,
            false,
        );
        if let Some(w) = &self.wan {
            for &p in &w.payloads() {
                check(
                    format!("wan {p} B: direct p50 / NATS (cloud) p50 ≤ 1"),
                    w.p50(MESH_DIRECT, p)
                        .zip(w.p50(NATS_CLOUD, p))
                        .map(|(d, n)| d / n),
                    1.0,
                    true,
                );
            }
        }
        let f = &self.fanout;
        check(
            "fan-out: lost deliveries = 0".into(),
            f["lost"].as_f64(),
            0.0,
            true,
        );
        check(
            "fan-out: duplicate deliveries = 0".into(),
            f["duplicates"].as_f64(),
            0.0,
            true,
        );
        self.checks = checks;
    }

    /// The tables, for people.
    pub(crate) fn print(&self) {
        if !self.rtt.is_empty() {
            println!("\nRequest/response round trip (µs; ratios are of p50s)\n");
            println!(
                "| payload | contender | n | p50 | p99 | ÷ UDP | ÷ hop floor | ÷ NATS | ÷ NATS TLS |"
            );
            println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
            for r in &self.rtt {
                let s = &r.summary;
                let ratio = |c: &str| ratio_cell(s.p50_us, self.p50(c, r.payload));
                println!(
                    "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} |",
                    r.payload,
                    r.contender,
                    s.n,
                    s.p50_us,
                    s.p99_us,
                    ratio(UDP),
                    ratio(HOPS),
                    ratio(NATS),
                    ratio(NATS_TLS)
                );
            }
        }
        if !self.stream.is_empty() {
            println!("\nOne large stream (MiB/s, median of runs)\n");
            println!("| contender | MiB | MiB/s | runs | ÷ raw quinn |");
            println!("|---|---:|---:|---|---:|");
            let raw = self.stream_rate(QUINN);
            for r in &self.stream {
                let runs: Vec<String> =
                    r.mib_per_s_runs.iter().map(|x| format!("{x:.0}")).collect();
                let rel = raw.map_or("-".into(), |q| format!("{:.2}", r.mib_per_s_median / q));
                println!(
                    "| {} | {} | {:.1} | {} | {} |",
                    r.contender,
                    r.bytes >> 20,
                    r.mib_per_s_median,
                    runs.join(" / "),
                    rel
                );
            }
        }
        if !self.footprint.is_null() {
            println!("\nFootprint: {}", self.footprint);
        }
        if !self.fanout.is_null() {
            self.print_fanout();
        }
        if let Some(w) = &self.wan {
            w.print();
        }
        if !self.checks.is_empty() {
            println!("\nTargets\n");
            println!("| target | value | pass |");
            println!("|---|---:|---|");
            for c in &self.checks {
                let pass = if c.pass { "yes" } else { "NO" };
                println!("| {} | {:.2} | {} |", c.target, c.value, pass);
            }
        }
    }

    fn print_fanout(&self) {
        let f = &self.fanout;
        let ms = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
        println!(
            "\nFan-out: one emit to {} subscribers on {} daemons (ms from emit)\n",
            f["subscribers"], f["nodes"]
        );
        println!("| emit | received | last receiver | p50 receiver |");
        println!("|---|---:|---:|---:|");
        let c = &f["cold"];
        println!(
            "| cold (first) | {} | {} | {} |",
            c["received"],
            ms(&c["last_ms"]),
            ms(&c["p50_ms"])
        );
        let w = &f["warm"];
        println!(
            "| warm ({} emits) | {} incomplete | p50 {} / p99 {} | p50 {} |",
            w["emits"],
            w["incomplete_emits"],
            ms(&w["last_p50_ms"]),
            ms(&w["last_p99_ms"]),
            ms(&w["median_receive_p50_ms"])
        );
        println!(
            "\nDeliveries: {} expected, {} lost, {} duplicated",
            f["deliveries_expected"], f["lost"], f["duplicates"]
        );
    }

    pub(crate) fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

impl WanReport {
    fn p50(&self, contender: &str, payload: usize) -> Option<f64> {
        p50_of(&self.rtt, contender, payload)
    }

    fn payloads(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.rtt.iter().map(|r| r.payload).collect();
        v.dedup();
        v
    }

    /// The round-trip table in milliseconds, with the paths the agentmesh pairs used.
    fn print(&self) {
        let d = self.delay_ms;
        println!(
            "\nAcross a network (netns lab, one-way delay {d} ms on every uplink by {}: \
             direct floor 4D = {} ms, through the cloud 8D = {} ms; ms, ratios are of p50s)\n",
            self.delay_by,
            4 * d,
            8 * d
        );
        println!("| payload | contender | n | p50 | p99 | ÷ UDP | ÷ NATS |");
        println!("|---:|---|---:|---:|---:|---:|---:|");
        for r in &self.rtt {
            let s = &r.summary;
            let ratio = |c: &str| ratio_cell(s.p50_us, self.p50(c, r.payload));
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {} | {} |",
                r.payload,
                r.contender,
                s.n,
                s.p50_us / 1e3,
                s.p99_us / 1e3,
                ratio(UDP),
                ratio(NATS_CLOUD)
            );
        }
        let path = |c: &str| {
            let p = &self.paths[c]["peer"];
            let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            format!("{} ({})", s(&p["path"]), s(&p["tier"]))
        };
        println!(
            "\nPaths: {MESH_DIRECT}: {}; {MESH_RELAY}: {}",
            path(MESH_DIRECT),
            path(MESH_RELAY)
        );
    }
}
