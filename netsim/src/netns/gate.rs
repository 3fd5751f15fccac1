//! Whether a lab can run here: root, namespaces, the programs. Skips loudly, or fails
//! when `AGENTMESH_REQUIRE_NETNS=1` (set by `.ci/run`).

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::netns::cmd;

/// The environment variable that turns a skip into a failure.
pub const REQUIRE_ENV: &str = "AGENTMESH_REQUIRE_NETNS";

/// A program a lab may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// iproute2 `ip` (always needed).
    Ip,
    /// nftables `nft` (routers).
    Nft,
    /// iproute2 `tc` (netem).
    Tc,
    /// coturn `turnserver`.
    Coturn,
    /// miniupnpd (Debian package `miniupnpd-nftables`).
    Miniupnpd,
    /// `stun` (Debian package `stun-client`), an independent RFC 3489 classifier.
    StunClient,
}

impl Tool {
    /// The program's name.
    pub fn program(self) -> &'static str {
        match self {
            Tool::Ip => "ip",
            Tool::Nft => "nft",
            Tool::Tc => "tc",
            Tool::Coturn => "turnserver",
            Tool::Miniupnpd => "miniupnpd",
            Tool::StunClient => "stun",
        }
    }
}

/// Finds a program on `PATH` or in the sbin directories (often missing from `PATH`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// Why a lab cannot run here, or `None` when it can.
pub fn unavailable_reason(tools: &[Tool]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".to_owned());
    }
    let missing: Vec<_> = [Tool::Ip]
        .iter()
        .chain(tools)
        .map(|t| t.program())
        .filter(|p| find_program(p).is_none())
        .collect();
    if !missing.is_empty() {
        return Some(format!("missing programs: {}", missing.join(", ")));
    }
    if let Some(reason) = namespace_check() {
        return Some(reason.clone());
    }
    None
}

/// Creates and deletes a throwaway namespace, once per process.
fn namespace_check() -> &'static Option<String> {
    static CHECK: OnceLock<Option<String>> = OnceLock::new();
    CHECK.get_or_init(|| {
        let probe = format!("amlab-{}-gate", std::process::id());
        if let Err(e) = cmd::ip(&["netns", "add", &probe]) {
            return Some(format!("cannot create a network namespace: {e}"));
        }
        let _ = cmd::ip(&["netns", "del", &probe]);
        None
    })
}

/// True when a lab with `tools` can run. Otherwise prints one loud line naming `test`
/// and returns false, or panics if `AGENTMESH_REQUIRE_NETNS=1`.
pub fn lab_available(test: &str, tools: &[Tool]) -> bool {
    let Some(reason) = unavailable_reason(tools) else {
        return true;
    };
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
    assert!(
        !required,
        "netns lab REQUIRED ({REQUIRE_ENV}=1) but unavailable for {test}: {reason}"
    );
    eprintln!("!!! SKIPPED netns test {test}: {reason} (set {REQUIRE_ENV}=1 to fail instead)");
    false
}
