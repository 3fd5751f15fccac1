//! Daemon footprint: resident memory of this process (`VmRSS`) before and after one
//! idle daemon starts and joins the mesh, and the process's CPU time (`/proc/self/stat`
//! utime + stime) while a direct pair serves requests at a fixed rate.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::mesh::MeshPair;

/// Resident set size of this process in KiB.
pub(crate) fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS without a number")?;
    Ok(kib.parse()?)
}

/// CPU time (user + system) of this process so far.
pub(crate) fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').context("odd /proc/self/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
    let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()?
        + f.get(12).context("no stime")?.parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

/// Requests at `rate` per second for `secs` seconds on `pair`; the process's CPU use as a
/// share of one core, and how many requests were served.
pub(crate) async fn cpu_at_rate(
    pair: &mut MeshPair,
    rate: u32,
    secs: u64,
) -> anyhow::Result<serde_json::Value> {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let input = json!("x".repeat(64));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (cpu0, t0) = (cpu_time()?, Instant::now());
    let mut done = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        pair.request(&input).await?;
        done += 1;
    }
    let (cpu, wall) = (cpu_time()? - cpu0, t0.elapsed());
    Ok(json!({
        "offered_per_s": rate,
        "served_per_s": done as f64 / wall.as_secs_f64(),
        "cpu_core_share": cpu.as_secs_f64() / wall.as_secs_f64(),
        "seconds": wall.as_secs_f64(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_cpu_of_this_process() {
        let rss = rss_kib().unwrap();
        assert!(rss > 100, "{rss}");
        let t0 = cpu_time().unwrap();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_time().unwrap() > t0, "busy loop used no CPU time");
    }
}
