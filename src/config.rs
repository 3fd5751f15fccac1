//! The daemon's configuration: TOML at `/etc/agentmesh/agentmeshd.toml` (or `--config`),
//! every field with a default, unknown fields refused so typos are caught.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::api::socket_path::default_socket_path;

/// Default configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/agentmesh/agentmeshd.toml";

/// Default admin (metrics) listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7947";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
}

/// `agentmeshd` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Local API socket (default: `$AGENTMESH_SOCKET`, `$XDG_RUNTIME_DIR/agentmesh/…`,
    /// `/run/agentmesh/agentmeshd.sock`).
    pub socket: PathBuf,
    /// State directory: node key, agent keys.
    pub state_dir: PathBuf,
    /// Node key file (default `<state_dir>/node.key`).
    pub key_file: Option<PathBuf>,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter).
    pub log_level: String,
    /// Longest accepted local-API line, in bytes.
    pub max_line_bytes: usize,
    /// Timeout of requests that give none, in milliseconds.
    pub default_request_timeout_ms: u64,
    /// Bytes queued for a client that stopped reading before it is dropped.
    pub max_queued_bytes: usize,
    /// Worker threads of the daemon's async runtime; 0 = one per CPU core.
    pub worker_threads: usize,
    /// UDP address of the daemon's one socket (QUIC, STUN, probes, relay frames);
    /// port 0 picks any.
    pub listen: String,
    /// Extra STUN servers (`host:port`; names resolved at start). The rendezvous is
    /// always asked too; two observers classify the NAT.
    pub stun_servers: Vec<String>,
    /// Ask the router for a UPnP IGD port mapping.
    pub upnp: bool,
    /// Admin HTTP listener serving `GET /metrics` (Prometheus text), `host:port` with a
    /// literal IP; keep it on loopback. Default `127.0.0.1:7947`; `""` disables it. If
    /// the port is taken (another daemon on the host) the daemon runs without it.
    pub admin: Option<String>,
    /// The rendezvous to join (none: a single-host daemon).
    pub rendezvous: Option<RendezvousSection>,
    /// The blind relay (none: direct paths only).
    pub relay: Option<RelaySection>,
}

/// `[rendezvous]`: where it is and how to join its tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RendezvousSection {
    /// Its UDP address (`host:port`).
    pub addr: String,
    /// Its TCP/TLS address (`host:port`), used when UDP is blocked.
    #[serde(default)]
    pub tcp: Option<String>,
    /// Its node id (`N…`), pinned in TLS.
    pub node_id: agentmesh_proto::NodeId,
    /// Tenant to join.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The tenant's join token.
    #[serde(default)]
    pub token: String,
}

/// `[relay]`: the blind relay's addresses and id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// Its node id (`N…`), pinned.
    pub node_id: agentmesh_proto::NodeId,
    /// Its UDP address (`host:port`).
    pub udp: String,
    /// Its TCP/TLS address (`host:port`), used when UDP is blocked.
    #[serde(default)]
    pub tls: Option<String>,
}

fn default_tenant() -> String {
    "default".into()
}

impl DaemonConfig {
    /// The async runtime `agentmeshd` runs on: multi-thread, with `worker_threads`
    /// workers (one per core when 0).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if self.worker_threads > 0 {
            builder.worker_threads(self.worker_threads);
        }
        builder.enable_all().build()
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: default_socket_path(),
            state_dir: default_state_dir(),
            key_file: None,
            log_level: "info".into(),
            max_line_bytes: 1024 * 1024,
            default_request_timeout_ms: 300_000,
            max_queued_bytes: 16 * 1024 * 1024,
            worker_threads: 0,
            listen: "0.0.0.0:0".into(),
            stun_servers: Vec::new(),
            upnp: true,
            admin: Some(DEFAULT_ADMIN.into()),
            rendezvous: None,
            relay: None,
        }
    }
}

/// `/var/lib/agentmesh` for root (systemd's `StateDirectory`), else
/// `$XDG_STATE_HOME/agentmesh` or `~/.local/state/agentmesh`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(d);
    }
    let is_root = std::env::var("USER").is_ok_and(|u| u == "root");
    if is_root {
        return PathBuf::from("/var/lib/agentmesh");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("agentmesh");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/agentmesh"),
        None => PathBuf::from("/var/lib/agentmesh"),
    }
}

impl DaemonConfig {
    /// Reads `path`; a missing file at the default location means all defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DaemonConfig::default())
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::parse(&text).map_err(|source| ConfigError::Parse { path, source })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The node key file.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("node.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = DaemonConfig::parse("socket = \"/tmp/x.sock\"\nmax_line_bytes = 10").unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.max_line_bytes, 10);
        assert_eq!(c.default_request_timeout_ms, 300_000);
        assert_eq!(c.key_path(), c.state_dir.join("node.key"));
    }

    #[test]
    fn mesh_sections_parse() {
        let id = agentmesh_proto::SecretKey::from_bytes(&[3; 32]).node_id();
        let text = format!(
            "listen = \"0.0.0.0:7946\"\nstun_servers = [\"stun.example.net:3478\"]\n\
             [rendezvous]\naddr = \"rv.example.net:7400\"\nnode_id = \"{id}\"\ntoken = \"t\"\n\
             [relay]\nnode_id = \"{id}\"\nudp = \"203.0.113.9:7500\"\n"
        );
        let c = DaemonConfig::parse(&text).unwrap();
        let rv = c.rendezvous.unwrap();
        assert_eq!((rv.tenant.as_str(), rv.node_id), ("default", id));
        assert_eq!(c.relay.unwrap().tls, None);
        assert_eq!(c.stun_servers.len(), 1);
        assert!(DaemonConfig::parse("[rendezvous]\naddr = \"x:1\"").is_err());
    }

    #[test]
    fn typos_are_refused() {
        let err = DaemonConfig::parse("sockte = \"/x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        assert!(matches!(
            DaemonConfig::load(Some(Path::new("/nonexistent/agentmeshd.toml"))),
            Err(ConfigError::Read { .. })
        ));
    }
}
