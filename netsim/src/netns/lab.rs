//! A built lab: its nodes, running code and processes inside them, and teardown on
//! drop (processes killed, namespaces deleted, also while unwinding from a panic).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use nix::sched::CloneFlags;

use crate::behavior::Preset;
use crate::netns::builder::LabBuilder;
use crate::netns::error::LabError;
use crate::netns::netem::Netem;
use crate::netns::topology::{Node, NodeKind};
use crate::netns::{cmd, coturn, gate, miniupnpd, sweep, wire};

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

/// A running lab. Dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    /// `amlab-<pid>-<n>-`: every namespace name starts with it.
    prefix: String,
    /// Nodes in creation order.
    pub(crate) nodes: Vec<Node>,
    /// Namespaces created so far (a failed build still deletes them).
    namespaces: Vec<String>,
    /// Processes started with [`Lab::spawn`], killed on drop.
    children: Mutex<Vec<Child>>,
    /// Logs and config files; kept when dropped during a panic.
    dir: PathBuf,
    /// Whether coturn runs.
    pub(crate) coturn: bool,
}

/// A process started inside a lab node.
#[derive(Debug, Clone)]
pub struct Spawned {
    /// Its pid.
    pub pid: u32,
    /// File receiving its stdout and stderr.
    pub log: PathBuf,
}

impl Lab {
    /// Starts a description.
    pub fn builder() -> LabBuilder {
        LabBuilder::new()
    }

    pub(crate) fn create(b: LabBuilder) -> Result<Lab, LabError> {
        let swept = sweep::sweep_stale();
        if swept > 0 {
            tracing::info!(swept, "removed leftover lab namespaces");
        }
        let prefix = format!(
            "{}{}-{}-",
            sweep::PREFIX,
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(prefix.trim_end_matches('-'));
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
            what: "creating lab dir",
            source,
        })?;
        let mut lab = Lab {
            prefix,
            nodes: Vec::new(),
            namespaces: Vec::new(),
            children: Mutex::default(),
            dir,
            coturn: false,
        };
        lab.wire(&b)?;
        for (node, netem) in &b.netem {
            lab.netem(node, *netem)?;
        }
        if b.coturn {
            coturn::start(&lab)?;
            lab.coturn = true;
        }
        for site in &b.miniupnpd {
            miniupnpd::start(&lab, site)?;
        }
        Ok(lab)
    }

    fn wire(&mut self, b: &LabBuilder) -> Result<(), LabError> {
        wire::internet(self)?;
        for (i, (name, preset)) in b.sites.iter().enumerate() {
            if *preset != Preset::Open {
                wire::router(self, i, name, *preset)?;
            }
        }
        let mut open = 0;
        for (i, (site, preset)) in b.sites.iter().enumerate() {
            let hosts = b.hosts.iter().filter(|h| &h.1 == site).map(|h| &h.0);
            for (k, host) in hosts.enumerate() {
                if *preset == Preset::Open {
                    wire::open_host(self, host, site, open)?;
                    open += 1;
                } else {
                    wire::nat_host(self, host, site, i, k)?;
                }
            }
        }
        Ok(())
    }

    /// Creates namespace `<prefix><name>` with `lo` up and records it for teardown.
    pub(crate) fn add_namespace(&mut self, name: &str) -> Result<String, LabError> {
        let ns = format!("{}{name}", self.prefix);
        cmd::ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        cmd::ip_in(&ns, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace prefix `amlab-<pid>-<n>-`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The directory holding logs and generated configs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All nodes, in creation order (internet, routers, hosts).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node by name (site name = its router, [`INTERNET`], host names).
    pub fn node(&self, name: &str) -> Result<&Node, LabError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::UnknownNode {
                name: name.to_owned(),
            })
    }

    /// The namespace of a node (for `ip netns exec`).
    pub fn ns(&self, name: &str) -> Result<&str, LabError> {
        self.node(name).map(|n| n.ns.as_str())
    }

    /// A node's own address (a NATed host's private address).
    pub fn addr(&self, name: &str) -> Result<Ipv4Addr, LabError> {
        self.node(name).map(|n| n.addr)
    }

    /// The address the internet sees for a node (its router's WAN address if NATed).
    pub fn public_addr(&self, name: &str) -> Result<Ipv4Addr, LabError> {
        self.node(name).map(|n| n.public)
    }

    /// The preset of a host's site or of a router; `Open` for open hosts.
    pub fn preset_of(&self, name: &str) -> Result<Preset, LabError> {
        match &self.node(name)?.kind {
            NodeKind::Router { preset } => Ok(*preset),
            NodeKind::Host { site } => match self.node(site) {
                Ok(router) => self.preset_of(&router.name),
                Err(_) => Ok(Preset::Open),
            },
            NodeKind::Internet => Ok(Preset::Open),
        }
    }

    /// Runs `program args…` inside `node` to completion; non-zero exit is an error.
    pub fn exec(&self, node: &str, program: &str, args: &[&str]) -> Result<Output, LabError> {
        cmd::exec_in(self.ns(node)?, program, args, None)
    }

    /// Runs `program args…` inside `node` to completion and returns its output, whatever
    /// the exit status (for programs like `stun` that encode results in it).
    pub fn output(&self, node: &str, program: &str, args: &[&str]) -> Result<Output, LabError> {
        cmd::output_in(self.ns(node)?, program, args)
    }

    /// Starts `program args…` inside `node`, output to a log file in [`Lab::dir`].
    /// Killed when the lab drops (or by [`Lab::kill`]).
    pub fn spawn(&self, node: &str, program: &str, args: &[&str]) -> Result<Spawned, LabError> {
        let ns = self.ns(node)?;
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let log = self.dir.join(format!(
            "{node}-{}-{}.log",
            log_stem(program),
            children.len()
        ));
        let out = File::create(&log).map_err(|source| LabError::Io {
            what: "creating log",
            source,
        })?;
        let err = out.try_clone().map_err(|source| LabError::Io {
            what: "creating log",
            source,
        })?;
        let ip = gate::find_program("ip").unwrap_or_else(|| "ip".into());
        let exe = gate::find_program(program).unwrap_or_else(|| program.into());
        let child = Command::new(ip)
            .args(["netns", "exec", ns])
            .arg(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| LabError::Spawn {
                program: program.to_owned(),
                source,
            })?;
        let spawned = Spawned {
            pid: child.id(),
            log,
        };
        children.push(child);
        Ok(spawned)
    }

    /// Kills a process started by [`Lab::spawn`]; false if it is not ours.
    pub fn kill(&self, pid: u32) -> bool {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = children.iter().position(|c| c.id() == pid) else {
            return false;
        };
        let mut child = children.swap_remove(i);
        let _ = child.kill();
        let _ = child.wait();
        true
    }

    /// Runs `f` on a fresh thread inside `node`'s namespace and returns its result.
    /// Sockets created there stay in that namespace and may be used from any thread.
    /// A tokio runtime built inside `f` has its threads in the namespace too.
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(
        &self,
        node: &str,
        f: F,
    ) -> Result<T, LabError> {
        let ns = self.ns(node)?;
        std::thread::scope(|s| {
            let handle = s.spawn(|| -> Result<T, LabError> {
                enter_namespace(ns)?;
                Ok(f())
            });
            handle
                .join()
                .map_err(|_| LabError::ThreadPanicked { ns: ns.to_owned() })?
        })
    }

    /// A UDP socket bound to `bind` inside `node` (blocking; set timeouts as needed).
    pub fn udp_socket(&self, node: &str, bind: SocketAddr) -> Result<UdpSocket, LabError> {
        self.run_in(node, || UdpSocket::bind(bind))?
            .map_err(|source| LabError::Io {
                what: "binding UDP socket",
                source,
            })
    }

    /// Puts `netem` on `node`'s uplink, both directions (replaces any earlier one).
    pub fn netem(&self, node: &str, netem: Netem) -> Result<(), LabError> {
        let n = self.node(node)?;
        let Some((own_if, peer_ns, peer_if)) = &n.uplink else {
            return Err(LabError::UnknownNode {
                name: node.to_owned(),
            });
        };
        netem.apply(&n.ns, own_if, (peer_ns, peer_if))?;
        netem.apply(peer_ns, peer_if, (&n.ns, own_if))
    }

    /// True when coturn runs in the internet namespace.
    pub fn has_coturn(&self) -> bool {
        self.coturn
    }
}

/// The program's file name, safe inside a log file name.
fn log_stem(program: &str) -> String {
    let name = Path::new(program)
        .file_name()
        .map_or_else(|| program.into(), |n| n.to_string_lossy());
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Moves the calling thread into namespace `ns` (`/run/netns/<ns>`) for good. Use it on
/// a thread you own (e.g. one that then runs a tokio runtime).
pub fn enter_namespace(ns: &str) -> Result<(), LabError> {
    let file = File::open(Path::new("/run/netns").join(ns)).map_err(|source| LabError::Setns {
        ns: ns.to_owned(),
        source,
    })?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| LabError::Setns {
        ns: ns.to_owned(),
        source: errno.into(),
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        let children = self.children.get_mut().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            sweep::remove_namespace(ns);
        }
        if std::thread::panicking() {
            eprintln!(
                "netns lab {}: logs kept in {}",
                self.prefix,
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_stem_is_a_plain_file_name() {
        assert_eq!(log_stem("/usr/sbin/miniupnpd"), "miniupnpd");
        assert_eq!(log_stem("agentmesh d.v2"), "agentmesh_d_v2");
    }
}
