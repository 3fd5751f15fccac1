//! `netsim/lab/lab.sh` still works: `up` builds the example lab from its description,
//! the NATs behave (stun-client inside it), `down` leaves nothing behind.

use std::path::PathBuf;
use std::process::{Command, Output};

use netsim::netns::{self, sweep, Tool};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lab")
}

fn lab_sh(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script().join("lab.sh"))
        .args(args)
        .output()
        .expect("run lab.sh")
}

/// Runs `lab.sh down NAME` when dropped, so a failing test leaves no namespaces.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        lab_sh(&["down", &self.0]);
    }
}

#[test]
fn lab_sh_up_exec_status_down() {
    let tools = [Tool::Nft, Tool::Coturn, Tool::Miniupnpd, Tool::StunClient];
    if !netns::lab_available("lab_sh_up_exec_status_down", &tools) {
        return;
    }
    let name = format!("t{}", std::process::id());
    let prefix = format!("amlab-sh-{name}-");
    let desc = script().join("two-sites.lab");
    let guard = Down(name.clone());
    let up = lab_sh(&["up", desc.to_str().unwrap(), &name]);
    assert!(
        up.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let mut nodes = sweep::list(&prefix);
    nodes.sort();
    let want: Vec<String> = ["a", "a1", "b", "b1", "internet", "p1"]
        .iter()
        .map(|n| format!("{prefix}{n}"))
        .collect();
    assert_eq!(nodes, want);

    let stun = lab_sh(&["exec", &name, "b1", "stun", "203.0.113.1"]);
    let text = String::from_utf8_lossy(&stun.stdout);
    assert!(
        text.contains("Independent Mapping, Port Dependent Filter"),
        "{text}"
    );
    let status = lab_sh(&["status", &name]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("203.0.113.11/24"));

    drop(guard);
    assert!(
        sweep::list(&prefix).is_empty(),
        "lab.sh down left namespaces"
    );
    assert!(!std::path::Path::new(&format!("/tmp/amlab-sh-{name}")).exists());
}
