//! Per-node token buckets for registrations, discoveries and introductions (sans-IO:
//! the caller passes `now`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A rate: sustained requests per second and the burst allowed on top.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Bucket size (largest burst).
    pub burst: f64,
}

impl Rate {
    /// A rate of `per_sec` with a burst of `burst`.
    pub const fn new(per_sec: f64, burst: f64) -> Self {
        Rate { per_sec, burst }
    }
}

/// One bucket.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(rate: Rate, now: Instant) -> Self {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    /// Takes `cost` tokens, or says how long to wait until they are there.
    pub(crate) fn take(&mut self, rate: Rate, cost: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            return Ok(());
        }
        let missing = cost - self.tokens;
        let wait = if rate.per_sec > 0.0 {
            missing / rate.per_sec
        } else {
            3600.0
        };
        Err(Duration::from_secs_f64(wait.min(3600.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let rate = Rate::new(2.0, 3.0);
        let t0 = Instant::now();
        let mut b = Bucket::full(rate, t0);
        for _ in 0..3 {
            assert!(b.take(rate, 1.0, t0).is_ok());
        }
        let wait = b.take(rate, 1.0, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::from_millis(400));
        assert!(b.take(rate, 1.0, t0 + Duration::from_millis(500)).is_ok());
        assert!(b.take(rate, 1.0, t0 + Duration::from_millis(500)).is_err());
        assert!(
            b.take(rate, 3.0, t0 + Duration::from_secs(60)).is_ok(),
            "capped at burst"
        );
    }
}
