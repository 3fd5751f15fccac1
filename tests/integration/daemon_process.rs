//! Starts a real `agentmeshd` process on a temporary socket and state directory, and
//! kills it when dropped (also when a test fails).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct DaemonProcess {
    child: Child,
    dir: tempfile::TempDir,
}

impl DaemonProcess {
    /// Starts a daemon with extra TOML configuration lines.
    pub(crate) fn start_with(config: &str) -> DaemonProcess {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agentmeshd.sock");
        let conf = dir.path().join("agentmeshd.toml");
        std::fs::write(
            &conf,
            format!(
                "socket = {:?}\nstate_dir = {:?}\nlog_level = \"warn\"\n{config}",
                socket,
                dir.path().join("state")
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_agentmeshd"))
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let d = DaemonProcess { child, dir };
        d.wait_ready();
        d
    }

    pub(crate) fn start() -> DaemonProcess {
        Self::start_with("")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agentmeshd did not open its socket within 20 s");
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.path().join("agentmeshd.sock")
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the daemon, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agentmeshd did not exit within 10 s of SIGTERM");
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped.
pub(crate) struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
