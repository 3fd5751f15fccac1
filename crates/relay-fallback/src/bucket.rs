//! Token buckets for per-client rate limits (bytes/s and packets/s), driven by `now`.

use std::time::Instant;

/// A token bucket: `rate` tokens per second, holding at most `burst` tokens.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// Capacity: how much may be spent at once after a quiet period.
    burst: f64,
    /// Tokens available at `last`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(now: Instant, rate: u64, burst: u64) -> Self {
        let burst = burst.max(1) as f64;
        Self {
            rate: rate as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Whether `cost` tokens are available now (without spending them).
    pub fn check(&mut self, now: Instant, cost: u64) -> bool {
        self.refill(now);
        self.tokens >= cost as f64
    }

    /// Spends `cost` tokens (call after [`TokenBucket::check`] succeeded).
    pub fn spend(&mut self, cost: u64) {
        self.tokens -= cost as f64;
    }

    /// Spends `cost` tokens if available; returns whether it did.
    pub fn take(&mut self, now: Instant, cost: u64) -> bool {
        if self.check(now, cost) {
            self.spend(cost);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 100, 10);
        assert_eq!((0..20).filter(|_| b.take(t0, 1)).count(), 10);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((0..20).filter(|_| b.take(t1, 1)).count(), 10);
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(
            (0..20).filter(|_| b.take(t2, 1)).count(),
            10,
            "capped at burst"
        );
        assert!(!b.take(t2, 1));
    }
}
