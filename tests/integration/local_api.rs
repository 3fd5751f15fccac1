//! The local API over a real socket: bad input, slow consumers, socket mode, shutdown.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::daemon_process::DaemonProcess;

struct Line {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Line {
    fn connect(d: &DaemonProcess) -> Line {
        let s = UnixStream::connect(d.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Line {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn read(&mut self) -> Value {
        let mut l = String::new();
        self.reader.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap()
    }

    fn call(&mut self, v: Value) -> Value {
        self.raw(format!("{v}\n").as_bytes());
        loop {
            let m = self.read();
            if m.get("event").is_none() {
                return m;
            }
        }
    }
}

#[test]
fn bad_input_gets_errors_and_the_connection_stays_usable() {
    let d = DaemonProcess::start_with("max_line_bytes = 4096\n");
    let mut c = Line::connect(&d);
    c.raw(b"{this is not json\n");
    let r = c.read();
    assert_eq!(r["error"]["code"], "INVALID_ENVELOPE");
    assert_eq!(r["id"], Value::Null);
    let r = c.call(json!({"op": "teleport", "id": 2}));
    assert_eq!(
        (r["error"]["code"].as_str(), r["id"].as_i64()),
        (Some("INVALID_ENVELOPE"), Some(2))
    );
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("known ops"));
    let r = c.call(json!({"op": "subscribe", "id": 3}));
    assert_eq!(r["error"]["code"], "INPUT_INVALID");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("agent_id"),
        "{r}"
    );
    let big = format!(
        "{{\"op\":\"hello\",\"id\":4,\"pad\":\"{}\"}}\n",
        "x".repeat(10_000)
    );
    c.raw(big.as_bytes());
    let r = c.read();
    assert_eq!(r["error"]["code"], "INVALID_ENVELOPE");
    assert!(r["error"]["message"].as_str().unwrap().contains("exceeds"));
    c.raw(b"\n\n");
    let r = c.call(json!({"op": "hello", "id": 5}));
    assert_eq!(r["id"], 5);
    assert!(r["ok"]["node_id"].as_str().unwrap().starts_with('N'));
}

#[test]
fn socket_is_0660_and_sigterm_removes_it() {
    let d = DaemonProcess::start();
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let key_mode = std::fs::metadata(d.dir().join("state/node.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let socket = d.socket();
    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists());
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let d = DaemonProcess::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentmeshd"))
        .arg("--socket")
        .arg(d.socket())
        .arg("--state-dir")
        .arg(d.dir().join("state2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_memory_stays_bounded() {
    let d = DaemonProcess::start_with("max_queued_bytes = 1048576\n");
    let mut sleeper = Line::connect(&d);
    let a = sleeper.call(json!({"op": "register", "id": 1, "manifest": {"name": "sleeper"}}))["ok"]
        ["agent_id"]
        .clone();
    sleeper.call(json!({"op": "subscribe", "id": 2, "agent_id": a, "pattern": "flood.>"}));
    // From here on the sleeper never reads.
    let mut pubr = Line::connect(&d);
    let p = pubr.call(json!({"op": "register", "id": 1, "manifest": {"name": "pub"}}))["ok"]
        ["agent_id"]
        .clone();
    let rss_before = d.rss_kib();
    let payload = "y".repeat(60_000);
    let mut delivered_zero_at = None;
    for i in 0..2000 {
        let r = pubr
            .call(json!({"op": "emit", "id": 3, "from": p, "topic": "flood.x", "data": payload}));
        if r["ok"]["delivered"] == 0 {
            delivered_zero_at = Some(i);
            break;
        }
    }
    let dropped_at = delivered_zero_at.expect("the slow subscriber was never dropped");
    // 2000 × 60 KB = 120 MB would have been queued without the bound.
    let grown_mib = d.rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 40, "daemon grew by {grown_mib} MiB");
    assert!(dropped_at < 2000);
    let r = pubr.call(json!({"op": "hello", "id": 9}));
    assert!(r["ok"].is_object(), "other clients keep working");
}
