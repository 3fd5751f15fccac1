//! The Python and Node examples, run unchanged against a real daemon, in every pairing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::daemon_process::{DaemonProcess, Killed};

fn examples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts an echo agent and waits for its "ready" line.
fn start_agent(d: &DaemonProcess, program: &str, script: &str) -> Killed {
    let mut child = Command::new(program)
        .arg(examples_dir().join(script))
        .env("AGENTMESH_SOCKET", d.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready A"), "{script} said: {line:?}");
    Killed(child)
}

fn run_caller(d: &DaemonProcess, program: &str, script: &str, text: &str) -> serde_json::Value {
    let out = Command::new(program)
        .arg(examples_dir().join(script))
        .arg(text)
        .env("AGENTMESH_SOCKET", d.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn python_and_node_agents_talk_in_every_pairing() {
    assert!(have("python3"), "python3 is required for the example tests");
    assert!(have("node"), "node is required for the example tests");
    for (agent_prog, agent, by) in [
        ("python3", "python/echo_agent.py", "python"),
        ("node", "node/echo_agent.js", "node"),
    ] {
        let d = DaemonProcess::start();
        let _agent = start_agent(&d, agent_prog, agent);
        for (caller_prog, caller) in [("python3", "python/caller.py"), ("node", "node/caller.js")] {
            let text = format!("hi from {caller}");
            let out = run_caller(&d, caller_prog, caller, &text);
            assert_eq!(out["echo"], text.as_str());
            assert_eq!(out["by"], by);
        }
    }
}

#[test]
fn example_files_stay_short() {
    for f in [
        "python/echo_agent.py",
        "python/caller.py",
        "node/echo_agent.js",
        "node/caller.js",
    ] {
        let n = std::fs::read_to_string(examples_dir().join(f))
            .unwrap()
            .lines()
            .count();
        assert!(n <= 60, "{f} has {n} lines; examples must stay within 60");
    }
}
