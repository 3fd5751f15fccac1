//! Limits that bound the relay's work and memory (part of the TOML config, `[limits]`/`[mail]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Resource limits enforced by the relay core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Maximum authenticated clients.
    pub max_clients: usize,
    /// Maximum links in the middle of authenticating (oldest evicted beyond this).
    pub max_pending: usize,
    /// Maximum frame length (version byte + body) accepted from clients.
    pub max_frame: usize,
    /// Per-client sustained rate in bytes per second.
    pub rate_bytes_per_sec: u64,
    /// Per-client sustained rate in frames per second.
    pub rate_packets_per_sec: u64,
    /// Burst allowance, in seconds of the sustained rate.
    pub burst_secs: u64,
    /// Per-client outbound queue, in frames (further frames are dropped and counted).
    pub queue_frames: usize,
    /// Per-client outbound queue, in bytes.
    pub queue_bytes: usize,
    /// A UDP client silent this long is forgotten (clients ping more often).
    pub idle_timeout_secs: u64,
    /// A link that has not authenticated after this long is dropped.
    pub handshake_timeout_secs: u64,
    /// Hellos accepted per second over all links (protects signature checks).
    pub handshakes_per_sec: u64,
    /// Delay suggested to clients in `Restarting`.
    pub reconnect_after_ms: u32,
    /// Store-and-forward limits.
    pub mail: MailLimits,
}

/// Store-and-forward limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailLimits {
    /// How long a sealed message is kept before being discarded undelivered.
    pub ttl_secs: u64,
    /// Maximum messages kept per recipient.
    pub max_messages_per_node: u64,
    /// Maximum bytes kept per recipient.
    pub max_bytes_per_node: u64,
    /// Mails sent per batch before waiting for an ack.
    pub batch: usize,
    /// Resend unacknowledged mails after this many milliseconds.
    pub resend_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_clients: 10_000,
            max_pending: 1024,
            max_frame: 64 * 1024,
            rate_bytes_per_sec: 4 * 1024 * 1024,
            rate_packets_per_sec: 8_000,
            burst_secs: 1,
            queue_frames: 512,
            queue_bytes: 2 * 1024 * 1024,
            idle_timeout_secs: 60,
            handshake_timeout_secs: 10,
            handshakes_per_sec: 2_000,
            reconnect_after_ms: 2_000,
            mail: MailLimits::default(),
        }
    }
}

impl Default for MailLimits {
    fn default() -> Self {
        Self {
            ttl_secs: 7 * 24 * 3600,
            max_messages_per_node: 1_000,
            max_bytes_per_node: 16 * 1024 * 1024,
            batch: 32,
            resend_ms: 3_000,
        }
    }
}

impl Limits {
    /// `idle_timeout_secs` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// `handshake_timeout_secs` as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// Largest frame the relay itself emits (a forwarded frame plus its header).
    pub fn max_out_frame(&self) -> usize {
        self.max_frame + 128
    }
}
