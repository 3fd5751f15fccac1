//! Relay counters, rendered for `/metrics` (Prometheus text) and `/status` (JSON).

use std::fmt::Write;

use serde::Serialize;

/// Monotonic counters kept by the relay core.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Frames received (all links, all kinds).
    pub frames_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Frames handed to the transports.
    pub frames_out: u64,
    /// Bytes handed to the transports.
    pub bytes_out: u64,
    /// Payloads forwarded between clients.
    pub forwarded: u64,
    /// Successful authentications.
    pub auth_ok: u64,
    /// Failed authentications (bad signature, unknown or reused nonce).
    pub auth_failed: u64,
    /// Frames that did not decode.
    pub dropped_malformed: u64,
    /// Frames over the maximum size.
    pub dropped_oversize: u64,
    /// Frames from links that have not authenticated.
    pub dropped_unauthenticated: u64,
    /// Frames over a client's rate limit.
    pub dropped_rate: u64,
    /// Frames dropped because the destination's queue was full.
    pub dropped_queue: u64,
    /// Hellos dropped by the global handshake rate or the pending bound.
    pub dropped_handshake: u64,
    /// Authentications refused because the relay was full.
    pub refused_full: u64,
    /// `PeerGone` answers sent.
    pub peer_gone: u64,
    /// Mails stored.
    pub mail_stored: u64,
    /// Mails refused for quota.
    pub mail_quota: u64,
    /// Mails delivered and acknowledged (deleted).
    pub mail_delivered: u64,
    /// Mail store errors.
    pub store_errors: u64,
    /// Mails purged after their TTL.
    pub mail_expired: u64,
    /// Links closed by the relay (bad input, replaced, idle).
    pub links_closed: u64,
}

/// A point-in-time view: counters plus gauges.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The relay's node id (text form).
    pub relay_id: String,
    /// Authenticated clients on UDP.
    pub clients_udp: usize,
    /// Authenticated clients on TLS.
    pub clients_tls: usize,
    /// Links authenticating.
    pub pending: usize,
    /// Frames waiting in client queues.
    pub queued_frames: usize,
    /// Bytes waiting in client queues.
    pub queued_bytes: usize,
    /// Whether the relay is draining.
    pub draining: bool,
    /// Counters.
    pub counters: Counters,
}

impl Snapshot {
    /// Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let gauges = [
            ("clients_udp", self.clients_udp as u64),
            ("clients_tls", self.clients_tls as u64),
            ("pending", self.pending as u64),
            ("queued_frames", self.queued_frames as u64),
            ("queued_bytes", self.queued_bytes as u64),
            ("draining", u64::from(self.draining)),
        ];
        for (name, v) in gauges {
            let _ = writeln!(out, "# TYPE agentmesh_relay_{name} gauge");
            let _ = writeln!(out, "agentmesh_relay_{name} {v}");
        }
        let c = serde_json::to_value(&self.counters).unwrap_or_default();
        if let Some(map) = c.as_object() {
            for (name, v) in map {
                let _ = writeln!(out, "# TYPE agentmesh_relay_{name}_total counter");
                let _ = writeln!(out, "agentmesh_relay_{name}_total {v}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_lists_every_counter() {
        let s = Snapshot {
            relay_id: "N".into(),
            clients_udp: 1,
            clients_tls: 2,
            pending: 0,
            queued_frames: 0,
            queued_bytes: 0,
            draining: false,
            counters: Counters {
                dropped_rate: 7,
                ..Counters::default()
            },
        };
        let text = s.prometheus();
        assert!(text.contains("agentmesh_relay_clients_tls 2"));
        assert!(text.contains("agentmesh_relay_dropped_rate_total 7"));
        assert!(text.contains("agentmesh_relay_links_closed_total 0"));
    }
}
