//! The timers of the relay link: liveness pings of an established link, UDP hello
//! attempts, and the UDP retries while on TLS.

use std::time::{Duration, Instant};

/// Liveness of an established link: one outstanding ping at a time.
#[derive(Debug, Clone)]
pub(super) struct Alive {
    next_ping: Instant,
    n: u64,
    /// Deadline of the outstanding ping's pong.
    waiting: Option<Instant>,
    misses: u32,
}

/// A UDP hello attempt: hellos repeat until a challenge arrives, then we wait for
/// `Welcome` until `give_up`.
#[derive(Debug, Clone)]
pub(super) struct Hello {
    pub(super) next_hello: Option<Instant>,
    pub(super) give_up: Instant,
}

/// UDP retries while on TLS.
#[derive(Debug, Clone)]
pub(super) enum Probe {
    /// Next attempt at this time.
    Idle { at: Instant },
    /// Attempt under way.
    Hello(Hello),
}

impl Alive {
    pub(super) fn new(now: Instant, interval: Duration) -> Self {
        Alive {
            next_ping: now + interval,
            n: 0,
            waiting: None,
            misses: 0,
        }
    }

    pub(super) fn deadline(&self) -> Instant {
        self.waiting.unwrap_or(self.next_ping)
    }

    /// Advances to `now`: returns the consecutive misses and the number of a ping to send.
    pub(super) fn tick(
        &mut self,
        now: Instant,
        interval: Duration,
        timeout: Duration,
    ) -> (u32, Option<u64>) {
        if let Some(deadline) = self.waiting {
            if now < deadline {
                return (self.misses, None);
            }
            // Missed: ping again at once.
            self.misses += 1;
            self.waiting = None;
            self.next_ping = now;
        }
        if now < self.next_ping {
            return (self.misses, None);
        }
        self.n += 1;
        self.waiting = Some(now + timeout);
        self.next_ping = now + interval;
        (self.misses, Some(self.n))
    }

    pub(super) fn pong(&mut self, n: u64) {
        if n == self.n {
            self.waiting = None;
            self.misses = 0;
        }
    }
}
