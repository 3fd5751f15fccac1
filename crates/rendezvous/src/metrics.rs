//! Counters of the rendezvous core and their Prometheus text rendering.

use std::fmt::Write as _;

use agentmesh_proto::rendezvous::RvErrorCode;
use indexmap::IndexMap;

/// Counters kept by the sans-IO core (the driver adds its own transport counters).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Frames handled (decoded or not).
    pub frames: u64,
    /// Sessions that completed authentication.
    pub sessions_authenticated: u64,
    /// Agents registered or updated.
    pub registrations: u64,
    /// Discovery queries answered.
    pub discoveries: u64,
    /// Introductions delivered (counted once per pair).
    pub introductions: u64,
    /// Agents expired for missing heartbeats.
    pub expired_agents: u64,
    /// Refusals by code.
    pub rejected: IndexMap<RvErrorCode, u64>,
}

/// Point-in-time sizes reported next to the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Open sessions (authenticated or not).
    pub sessions: usize,
    /// Authenticated nodes online.
    pub nodes_online: usize,
    /// Live agents, all tenants.
    pub agents: usize,
    /// Tenants configured.
    pub tenants: usize,
}

impl Metrics {
    /// Counts one refusal.
    pub(crate) fn reject(&mut self, code: RvErrorCode) {
        *self.rejected.entry(code).or_default() += 1;
    }

    /// Refusals with `code` so far.
    pub fn rejected(&self, code: RvErrorCode) -> u64 {
        self.rejected.get(&code).copied().unwrap_or(0)
    }
}

/// The snake_case label value of a code.
pub fn code_label(code: RvErrorCode) -> String {
    let debug = format!("{code:?}");
    let mut out = String::with_capacity(debug.len() + 4);
    for (i, ch) in debug.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: usize) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// Renders counters, gauges and `extra` (already-rendered driver counters) as
/// Prometheus text exposition format.
pub fn render(m: &Metrics, g: &Gauges, extra: &[(&str, &str, u64)]) -> String {
    let mut out = String::new();
    counter(&mut out, "rv_frames_total", "Frames received.", m.frames);
    counter(
        &mut out,
        "rv_sessions_authenticated_total",
        "Sessions authenticated.",
        m.sessions_authenticated,
    );
    counter(
        &mut out,
        "rv_registrations_total",
        "Agents registered or updated.",
        m.registrations,
    );
    counter(
        &mut out,
        "rv_discoveries_total",
        "Discovery queries answered.",
        m.discoveries,
    );
    counter(
        &mut out,
        "rv_introductions_total",
        "Introductions delivered.",
        m.introductions,
    );
    counter(
        &mut out,
        "rv_expired_agents_total",
        "Agents expired for missed heartbeats.",
        m.expired_agents,
    );
    let _ = writeln!(out, "# HELP rv_rejected_total Refused frames and requests by code.\n# TYPE rv_rejected_total counter");
    for (code, n) in &m.rejected {
        let _ = writeln!(
            out,
            "rv_rejected_total{{code=\"{}\"}} {n}",
            code_label(*code)
        );
    }
    gauge(&mut out, "rv_sessions", "Open sessions.", g.sessions);
    gauge(
        &mut out,
        "rv_nodes_online",
        "Authenticated nodes online.",
        g.nodes_online,
    );
    gauge(&mut out, "rv_agents", "Live agents.", g.agents);
    gauge(&mut out, "rv_tenants", "Tenants.", g.tenants);
    for (name, help, value) in extra {
        counter(&mut out, name, help, *value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_in_snake_case() {
        assert_eq!(code_label(RvErrorCode::BadSignature), "bad_signature");
        assert_eq!(code_label(RvErrorCode::RateLimited), "rate_limited");
        let mut m = Metrics::default();
        m.reject(RvErrorCode::ReplayedChallenge);
        m.reject(RvErrorCode::ReplayedChallenge);
        let text = render(&m, &Gauges::default(), &[("rv_stun_total", "STUN.", 3)]);
        assert!(text.contains("rv_rejected_total{code=\"replayed_challenge\"} 2"));
        assert!(text.contains("rv_stun_total 3"));
        assert!(text.contains("# TYPE rv_agents gauge"));
    }
}
