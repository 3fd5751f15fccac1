//! The daemon's Prometheus page: what the network (paths, punches, sessions, socket,
//! relay, rendezvous) and the router (agents, tasks, connections) count, rendered as
//! Prometheus text (version 0.0.4) for the admin listener's `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::paths::PathChange;
use super::peer_path::Tier;
use super::relay_link::RelayTransport;
use super::routes::Path;
use super::status::Sources;
use crate::router::RouterStats;

/// Direct tiers, so every punch-success series exists from the start (at 0).
const DIRECT_TIERS: [Tier; 5] = [
    Tier::DirectLan,
    Tier::DirectStun,
    Tier::DirectUpnp,
    Tier::DirectPredicted,
    Tier::DirectManyPort,
];

/// Counts of path changes as the path finder reports them (a change to a direct path
/// is a successful punch, labelled by the tier that won).
#[derive(Debug, Default)]
pub struct PathCounters {
    /// Changes by (path, tier).
    changes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Changes to a direct path.
    direct: AtomicU64,
}

impl PathCounters {
    /// Records one path change.
    pub fn record(&self, change: &PathChange) {
        let path = match change.path {
            Path::Direct(_) => {
                self.direct.fetch_add(1, Ordering::Relaxed);
                "direct"
            }
            Path::Relay => "relay",
        };
        let mut m = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((path, change.tier.name())).or_default() += 1;
    }

    fn count(&self, path: &'static str, tier: &'static str) -> u64 {
        let m = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(path, tier)).copied().unwrap_or(0)
    }
}

/// What the network part of the page is read from.
#[derive(Clone)]
pub struct NetMetrics {
    /// The status sources (paths, sessions, socket, relay, rendezvous).
    pub sources: Sources,
    /// Path change counters kept by the status feed.
    pub changes: Arc<PathCounters>,
    /// Store-and-forward counters.
    pub mail: Arc<crate::net::mailbox::MailCounters>,
}

/// A Prometheus text page being written.
#[derive(Debug, Default)]
pub struct Page {
    text: String,
}

impl Page {
    /// Writes a metric family header and its samples (`labels` in Prometheus syntax
    /// without braces; empty for none).
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.text, "{name} {value}");
            } else {
                let _ = writeln!(self.text, "{name}{{{labels}}} {value}");
            }
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help, &[(String::new(), value)]);
    }

    /// The finished page.
    pub fn finish(self) -> String {
        self.text
    }

    /// The router's gauges.
    pub fn router(&mut self, s: &RouterStats) {
        self.gauge("agentmesh_agents", "Local agents registered.", s.agents);
        self.gauge(
            "agentmesh_tasks_in_flight",
            "Tasks not yet finished.",
            s.tasks_in_flight,
        );
        self.family(
            "agentmesh_requests_total",
            "counter",
            "Requests accepted from local agents and from peers.",
            &[(String::new(), s.requests_total)],
        );
        self.gauge(
            "agentmesh_api_connections",
            "Local API connections.",
            s.connections,
        );
        self.gauge(
            "agentmesh_subscriptions",
            "Event subscriptions of local agents.",
            s.subscriptions,
        );
        self.gauge(
            "agentmesh_remote_agents_known",
            "Agents on other daemons learned from lookups.",
            s.remote_agents_known,
        );
    }

    /// The network's counters and gauges.
    pub fn net(&mut self, m: &NetMetrics) {
        self.paths(m);
        self.sessions(&m.sources);
        self.socket(&m.sources);
        self.links(&m.sources);
        self.mail(&m.mail);
    }

    fn mail(&mut self, c: &crate::net::mailbox::MailCounters) {
        use std::sync::atomic::Ordering::Relaxed;
        self.family(
            "agentmesh_mail_stored_total",
            "counter",
            "Requests for unreachable nodes left at the relay, by outcome.",
            &[
                ("outcome=\"stored\"".into(), c.stored.load(Relaxed)),
                ("outcome=\"failed\"".into(), c.store_failed.load(Relaxed)),
            ],
        );
        self.family(
            "agentmesh_mail_received_total",
            "counter",
            "Stored messages the relay delivered to this node, by outcome.",
            &[
                ("outcome=\"delivered\"".into(), c.delivered.load(Relaxed)),
                ("outcome=\"rejected\"".into(), c.rejected.load(Relaxed)),
            ],
        );
    }

    fn paths(&mut self, m: &NetMetrics) {
        let info = m.sources.paths.info();
        let attempts = info.iter().map(|p| p.punch_attempts).sum();
        self.family(
            "agentmesh_punch_attempts_total",
            "counter",
            "Hole-punch attempts (introductions) over all peers.",
            &[(String::new(), attempts)],
        );
        let successes: Vec<_> = DIRECT_TIERS
            .iter()
            .map(|t| {
                let tier = t.name();
                (format!("tier=\"{tier}\""), m.changes.count("direct", tier))
            })
            .collect();
        self.family(
            "agentmesh_punch_successes_total",
            "counter",
            "Direct paths found, by the tier that won.",
            &successes,
        );
        self.family(
            "agentmesh_paths_to_relay_total",
            "counter",
            "Peers' paths that fell back to the relay.",
            &[(
                String::new(),
                m.changes.count("relay", "relay-udp") + m.changes.count("relay", "relay-tcp"),
            )],
        );
        let direct = info
            .iter()
            .filter(|p| matches!(p.path, Path::Direct(_)))
            .count() as u64;
        let relay = info.len() as u64 - direct;
        self.family(
            "agentmesh_peers",
            "gauge",
            "Peers by current path.",
            &[
                ("path=\"direct\"".into(), direct),
                ("path=\"relay\"".into(), relay),
            ],
        );
    }

    fn sessions(&mut self, s: &Sources) {
        let info = s.sessions.info();
        self.gauge(
            "agentmesh_sessions_open",
            "QUIC sessions open with peers.",
            info.len() as u64,
        );
        let sent = info.iter().map(|i| i.bytes_sent).sum();
        let received = info.iter().map(|i| i.bytes_received).sum();
        self.family(
            "agentmesh_session_bytes",
            "gauge",
            "UDP bytes carried by the open QUIC sessions (closed sessions drop out).",
            &[
                ("direction=\"sent\"".into(), sent),
                ("direction=\"received\"".into(), received),
            ],
        );
    }

    fn socket(&mut self, s: &Sources) {
        let st = s.mesh.stats();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.family(
            "agentmesh_socket_packets_total",
            "counter",
            "QUIC packets on the daemon's socket, by way.",
            &[
                ("way=\"direct_sent\"".into(), load(&st.direct_sent)),
                ("way=\"relay_sent\"".into(), load(&st.relay_sent)),
                ("way=\"relay_received\"".into(), load(&st.relay_received)),
                ("way=\"door_sent\"".into(), load(&st.door_sent)),
                ("way=\"door_received\"".into(), load(&st.door_received)),
                ("way=\"dropped\"".into(), load(&st.dropped)),
            ],
        );
        self.gauge(
            "agentmesh_socket_doors_open",
            "Extra sockets (doors) of many-port probing open now.",
            s.mesh.doors_open() as u64,
        );
    }

    fn links(&mut self, s: &Sources) {
        let rv = s.rendezvous.as_ref().is_some_and(|r| r.connected());
        self.gauge(
            "agentmesh_rendezvous_connected",
            "1 while a rendezvous session is up.",
            u64::from(rv),
        );
        let relay = s.relay.as_ref().map(|r| r.borrow().clone());
        let connected = relay.as_ref().is_some_and(|r| r.connected);
        self.gauge(
            "agentmesh_relay_connected",
            "1 while the relay link is authenticated.",
            u64::from(connected),
        );
        let transport = relay.as_ref().and_then(|r| r.transport);
        let is = |t: RelayTransport| u64::from(connected && transport == Some(t));
        self.family(
            "agentmesh_relay_transport",
            "gauge",
            "1 for the transport the relay link uses.",
            &[
                ("transport=\"udp\"".into(), is(RelayTransport::Udp)),
                ("transport=\"tls\"".into(), is(RelayTransport::Tls)),
            ],
        );
        let (sent, received, dropped) =
            relay.map_or((0, 0, 0), |r| (r.sent, r.received, r.dropped));
        self.family(
            "agentmesh_relay_packets_total",
            "counter",
            "Packets through the relay link.",
            &[
                ("way=\"sent\"".into(), sent),
                ("way=\"received\"".into(), received),
                ("way=\"dropped\"".into(), dropped),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_type_and_labelled_samples() {
        let mut p = Page::default();
        p.router(&RouterStats {
            agents: 2,
            tasks_in_flight: 1,
            requests_total: 7,
            connections: 3,
            subscriptions: 0,
            remote_agents_known: 4,
        });
        p.family(
            "x_total",
            "counter",
            "X.",
            &[("tier=\"direct-lan\"".into(), 5)],
        );
        let text = p.finish();
        assert!(
            text.contains("# TYPE agentmesh_agents gauge\nagentmesh_agents 2\n"),
            "{text}"
        );
        assert!(text.contains("agentmesh_requests_total 7\n"), "{text}");
        assert!(
            text.contains(
                "# HELP x_total X.\n# TYPE x_total counter\nx_total{tier=\"direct-lan\"} 5\n"
            ),
            "{text}"
        );
    }
}
