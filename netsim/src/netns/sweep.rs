//! Removing namespaces: one by one (lab teardown) and leftovers of dead test
//! processes, found by the `amlab-<pid>-` prefix.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::cmd;

/// The prefix of every namespace a lab creates.
pub const PREFIX: &str = "amlab-";

/// Kills every process inside `ns`, then deletes it. Errors are logged, not returned:
/// this runs from `Drop`.
pub fn remove_namespace(ns: &str) {
    if let Ok(out) = cmd::run("ip", &["netns", "pids", ns], None) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    if let Err(e) = cmd::ip(&["netns", "del", ns]) {
        tracing::warn!(ns, error = %e, "cannot delete lab namespace");
    }
}

/// The owning pid encoded in a lab namespace name `amlab-<pid>-…`, if any.
pub fn owner_pid(ns: &str) -> Option<u32> {
    ns.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Deletes lab namespaces whose owning process is gone. Returns how many.
pub fn sweep_stale() -> usize {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(ns = %name, "sweeping leftover lab namespace");
            remove_namespace(&name);
            removed += 1;
        }
    }
    sweep_stale_dirs();
    removed
}

/// Removes log directories `$TMPDIR/amlab-<pid>-<n>` of dead owners after an hour
/// (a lab dropped during a panic keeps its logs for reading).
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if old && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Names of existing namespaces starting with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_lab_names() {
        assert_eq!(owner_pid("amlab-1234-0-inet"), Some(1234));
        assert_eq!(owner_pid("amlab-sh-demo-inet"), None);
        assert_eq!(owner_pid("other-1234"), None);
    }
}
