//! The `agentmesh-rendezvous` binary: `--help`, start from a TOML file, serve a daemon,
//! exit cleanly on SIGTERM, and never log a peer's address at info level.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentmesh_proto::{DiscoverQuery, NodeId};
use agentmesh_rendezvous::client::{Client, Target};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_agentmesh-rendezvous");

/// Kills the child if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn help_describes_the_service() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rendezvous") && text.contains("--config"),
        "{text}"
    );
}

#[tokio::test]
async fn serves_then_stops_on_sigterm_without_logging_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("rv.toml");
    std::fs::write(&conf, config_text(dir.path(), "")).unwrap();
    let log = dir.path().join("stderr.log");
    let child = Command::new(BIN)
        .args(["--config", conf.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let stdout = guard.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .unwrap()
        .unwrap();
    let mut parts = line.split_whitespace();
    let id: NodeId = parts.next().unwrap().parse().unwrap();
    let udp = parts
        .next()
        .unwrap()
        .strip_prefix("udp=")
        .unwrap()
        .parse()
        .unwrap();
    let ep = endpoint();
    let target = Target {
        addr: udp,
        server: id,
    };
    let c = Client::connect_quic(&ep, &target, &key(1), &join("acme"))
        .await
        .unwrap();
    c.register(vec![manifest(1, &["x"])]).await.unwrap();
    assert_eq!(c.discover(DiscoverQuery::default()).await.unwrap().len(), 1);
    let pid = guard.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = guard.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.expect("exits within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("node authenticated") && logs.contains("SIGTERM"),
        "{logs}"
    );
    let client_port = ep.local_addr().unwrap().port().to_string();
    assert!(
        !logs.contains(&format!("127.0.0.1:{client_port}")),
        "peer address logged at info:\n{logs}"
    );
}
