//! Daemon footprint. In-process: resident memory of this process (`VmRSS`) before and
//! after one idle daemon starts and joins the mesh, and the process's CPU time
//! (`/proc/self/stat` utime + stime) while a direct pair serves requests at a fixed rate.
//! As a separate process: the real `agentmeshd` binary idle, then with sessions from many
//! peer daemons (per idle peer session), and its CPU while clients offer a fixed request
//! rate (see [`crate::external`]). Also the open-file limit the big parts need.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::mesh::MeshPair;

/// Resident set size of this process in KiB.
pub(crate) fn rss_kib() -> anyhow::Result<u64> {
    rss_kib_of("self")
}

/// Resident set size of process `pid` (`"self"` for this one) in KiB.
pub(crate) fn rss_kib_of(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/<pid>/status")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS without a number")?;
    Ok(kib.parse()?)
}

/// CPU time (user + system) of this process so far.
pub(crate) fn cpu_time() -> anyhow::Result<Duration> {
    cpu_time_of("self")
}

/// CPU time (user + system) of process `pid` (`"self"` for this one) so far.
pub(crate) fn cpu_time_of(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').context("odd /proc/<pid>/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
    let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()?
        + f.get(12).context("no stime")?.parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

/// Raises this process's soft limit on open files to the hard limit; returns both
/// (soft after the raise, hard).
pub(crate) fn raise_nofile_limit() -> anyhow::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft.max(hard), hard))
}

/// Open file descriptors of this process.
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
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

    #[test]
    fn reads_rss_and_cpu_of_another_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let rss = rss_kib_of(&pid).unwrap();
        let cpu = cpu_time_of(&pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(rss > 0 && rss < 100_000, "{rss}");
        assert!(cpu < Duration::from_secs(1), "{cpu:?}");
        assert!(rss_kib_of("0").is_err(), "pid 0 has no /proc entry");
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{getrlimit, Resource};
        let (soft, hard) = raise_nofile_limit().unwrap();
        assert_eq!(soft, hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
        assert!(open_fds() >= 3, "stdin, stdout, stderr");
    }
}
