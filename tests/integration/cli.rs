//! The `agentmesh` CLI against a real daemon: output a person can read, errors a person
//! can act on, `--json` for machines.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use crate::daemon_process::DaemonProcess;

fn cli(d: &DaemonProcess, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .arg("--socket")
        .arg(d.socket())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn status_and_discover() {
    let d = DaemonProcess::start();
    let o = cli(&d, &["status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(st["node_id"].as_str().unwrap().starts_with('N'));
    let o = cli(&d, &["discover", "--capability", "nothing"]);
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("0 of 0 matching agents"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn errors_are_readable() {
    let d = DaemonProcess::start();
    let unknown = agentmesh_proto::SecretKey::from_bytes(&[7; 32])
        .agent_id()
        .to_string();
    let o = cli(&d, &["request", "--to", &unknown, "--skill", "x"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.starts_with("error: AGENT_UNAVAILABLE: agent "), "{e}");
    let o = cli(&d, &["request", "--to", "not-an-id", "--skill", "x"]);
    assert!(stderr(&o).contains("INPUT_INVALID"), "{}", stderr(&o));
    let o = cli(&d, &["request", "--capability", "none", "--skill", "x"]);
    assert!(
        stderr(&o).contains("TRANSPORT_NO_RESPONDERS"),
        "{}",
        stderr(&o)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .args(["--socket", "/nonexistent/agentmesh.sock", "status"])
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("is the daemon running"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn emit_reaches_a_cli_subscriber() {
    let d = DaemonProcess::start();
    let sub = Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .arg("--socket")
        .arg(d.socket())
        .args(["--json", "subscribe", "mesh.event.>", "--count", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sub = crate::daemon_process::Killed(sub);
    // Wait until the subscription exists (bounded).
    let mut delivered = 0;
    for _ in 0..200 {
        let o = cli(
            &d,
            &[
                "--json",
                "emit",
                "mesh.event.test.ping",
                "--data",
                "{\"n\":7}",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        delivered = v["delivered"].as_u64().unwrap();
        if delivered == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert_eq!(delivered, 1);
    let mut child = sub;
    let out = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let ev: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(ev["topic"], "mesh.event.test.ping");
    assert_eq!(ev["data"]["n"], 7);
}

#[test]
fn keygen_writes_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    let o = Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(stdout(&o).contains("node id   N"));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!again.status.success(), "never overwrites a key");
}
