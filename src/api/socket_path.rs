//! Where the local API socket lives: `$AGENTMESH_SOCKET`, else
//! `$XDG_RUNTIME_DIR/agentmesh/agentmeshd.sock`, else `/run/agentmesh/agentmeshd.sock`.

use std::path::PathBuf;

/// Environment variable that names the socket.
pub const SOCKET_ENV: &str = "AGENTMESH_SOCKET";

/// The default socket path from the environment.
pub fn default_socket_path() -> PathBuf {
    resolve(
        std::env::var_os(SOCKET_ENV).map(PathBuf::from),
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
    )
}

fn resolve(explicit: Option<PathBuf>, runtime_dir: Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return p;
    }
    if let Some(d) = runtime_dir.filter(|p| !p.as_os_str().is_empty()) {
        return d.join("agentmesh").join("agentmeshd.sock");
    }
    PathBuf::from("/run/agentmesh/agentmeshd.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        assert_eq!(
            resolve(Some("/x.sock".into()), Some("/r".into())),
            PathBuf::from("/x.sock")
        );
        assert_eq!(
            resolve(None, Some("/r".into())),
            PathBuf::from("/r/agentmesh/agentmeshd.sock")
        );
        assert_eq!(
            resolve(Some("".into()), None),
            PathBuf::from("/run/agentmesh/agentmeshd.sock")
        );
    }
}
