//! Sans-IO lease scheduler for one UPnP IGD port mapping: decides when to discover the
//! gateway, add, renew and remove the mapping, and how long to back off after failures.
//!
//! Call order: [`PortMapState::poll_action`] with the current time; perform the
//! [`Action`] it returns (one at a time: nothing more is returned while one is
//! outstanding) and report how it went with [`PortMapState::handle_result`]; when
//! `poll_action` returns `None`, sleep until [`PortMapState::poll_timeout`]. Call
//! [`PortMapState::shutdown`] to have the mapping removed; the machine is done when
//! [`PortMapState::is_finished`].

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Timing of the scheduler.
#[derive(Debug, Clone)]
pub struct PortMapConfig {
    /// Lease asked for each mapping; renewed at half of it. Also the refresh period
    /// (halved) of a permanent mapping, so a router reboot is noticed.
    pub lease: Duration,
    /// Wait after the first failure of an action; doubles with each further failure.
    pub retry_initial: Duration,
    /// Longest wait between two retries.
    pub retry_max: Duration,
    /// Failures in a row after which the mapping is given up and the gateway is only
    /// searched again after [`PortMapConfig::idle_pause`].
    pub max_retries: u32,
    /// Wait before searching again when no IGD answered (or retries ran out).
    pub idle_pause: Duration,
}

impl Default for PortMapConfig {
    fn default() -> Self {
        PortMapConfig {
            lease: Duration::from_secs(3600),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            max_retries: 5,
            idle_pause: Duration::from_secs(600),
        }
    }
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Search for an IGD on the LAN and ask it for the external IP address.
    Discover,
    /// Map UDP `external_port_hint` (any free port when `None`) to our `internal` port.
    Add {
        /// Our local UDP port.
        internal: u16,
        /// The external port to ask for first; `None`: let the router choose.
        external_port_hint: Option<u16>,
        /// Lease to ask for; zero means permanent.
        lease: Duration,
    },
    /// Refresh the existing mapping (same external port, fresh lease).
    Renew {
        /// Our local UDP port.
        internal: u16,
        /// The mapped external port.
        external_port: u16,
        /// Lease to ask for; zero means permanent.
        lease: Duration,
    },
    /// Delete the mapping (on shutdown).
    Remove {
        /// The mapped external port.
        external_port: u16,
    },
}

/// How the last [`Action`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `Discover` found an IGD, which reports this external address.
    GatewayFound {
        /// The router's WAN address.
        external_ip: IpAddr,
    },
    /// `Discover` found no IGD (no answer within the search timeout).
    NoGateway,
    /// `Add` or `Renew` succeeded with this external port.
    Mapped {
        /// The external port now mapped to us.
        external_port: u16,
    },
    /// `Add`/`Renew`: the external port is taken by another client.
    PortInUse,
    /// `Add`/`Renew`: the router only accepts permanent (lease 0) mappings.
    LeaseRefused,
    /// `Remove` succeeded (or the mapping was already gone).
    Removed,
    /// The action failed otherwise (timeout, HTTP or SOAP error).
    Failed,
}

/// The mapping as the scheduler believes it exists on the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The external UDP port.
    pub external_port: u16,
    /// When it lapses unless renewed; `None` for a permanent mapping.
    pub expires_at: Option<Instant>,
}

/// Which step of the mapping's life comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Discover,
    Add,
    Renew,
    Stopped,
}

/// The lease scheduler for one internal UDP port. See the module doc for call order.
#[derive(Debug)]
pub struct PortMapState {
    config: PortMapConfig,
    /// Our local UDP port, the mapping's target.
    internal: u16,
    phase: Phase,
    /// The next action of `phase` is not due before this.
    due: Instant,
    /// The action handed out and not yet answered.
    in_flight: Option<Action>,
    /// The router's WAN address, from the last successful discovery.
    external_ip: Option<IpAddr>,
    mapping: Option<Mapping>,
    /// External port to ask for on the next `Add`; `None`: any.
    hint: Option<u16>,
    /// The router refused leases: ask for permanent mappings from now on.
    permanent: bool,
    /// Failed actions in a row (bounded by `config.max_retries`).
    failures: u32,
    shutting_down: bool,
}

impl PortMapState {
    /// A scheduler for `internal`, starting with a discovery at `now`.
    pub fn new(internal: u16, config: PortMapConfig, now: Instant) -> Self {
        PortMapState {
            config,
            internal,
            phase: Phase::Discover,
            due: now,
            in_flight: None,
            external_ip: None,
            mapping: None,
            hint: Some(internal),
            permanent: false,
            failures: 0,
            shutting_down: false,
        }
    }

    /// The next action to perform, if one is due at `now` and none is outstanding.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        if self.in_flight.is_some() || self.phase == Phase::Stopped {
            return None;
        }
        if self.shutting_down {
            return self.poll_shutdown();
        }
        self.expire(now);
        if now < self.due {
            return None;
        }
        let action = self.action_for_phase()?;
        self.in_flight = Some(action);
        Some(action)
    }

    /// When [`PortMapState::poll_action`] will next have something (none while an
    /// action is outstanding or after stopping).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight.is_some() || self.phase == Phase::Stopped || self.shutting_down {
            return None;
        }
        let expiry = self.mapping.and_then(|m| m.expires_at);
        Some(expiry.map_or(self.due, |e| e.min(self.due)))
    }

    /// Reports how the outstanding action went. Ignored when none is outstanding.
    pub fn handle_result(&mut self, now: Instant, outcome: Outcome) {
        let Some(action) = self.in_flight.take() else {
            tracing::debug!(?outcome, "port mapping result without a pending action");
            return;
        };
        match (action, outcome) {
            (Action::Remove { .. }, _) => self.stop(),
            (Action::Discover, Outcome::GatewayFound { external_ip }) => {
                self.external_ip = Some(external_ip);
                self.succeed(Phase::Add, now);
            }
            (Action::Discover, Outcome::NoGateway) => self.idle(now),
            (
                Action::Add { lease, .. } | Action::Renew { lease, .. },
                Outcome::Mapped { external_port },
            ) => self.mapped(now, external_port, lease),
            (Action::Add { .. } | Action::Renew { .. }, Outcome::PortInUse) => {
                self.mapping = None;
                self.hint = None;
                self.retry(Phase::Add, now, Duration::ZERO);
            }
            (Action::Add { .. } | Action::Renew { .. }, Outcome::LeaseRefused)
                if !self.permanent =>
            {
                tracing::info!("router only grants permanent port mappings; asking for one");
                self.permanent = true;
                self.retry(self.phase, now, Duration::ZERO);
            }
            _ => {
                let wait = self.backoff();
                self.retry(self.phase, now, wait);
            }
        }
    }

    /// Asks for the mapping to be removed; afterwards only `Remove` is handed out.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// True once shut down and the mapping is removed (or there was none).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// Our mapped external address, when mapped and the router's IP is known.
    pub fn external(&self) -> Option<SocketAddr> {
        let m = self.mapping?;
        Some(SocketAddr::new(self.external_ip?, m.external_port))
    }

    /// The mapping as believed to exist on the router.
    pub fn mapping(&self) -> Option<Mapping> {
        self.mapping
    }

    /// True after the router refused leases: mappings are requested as permanent.
    pub fn permanent(&self) -> bool {
        self.permanent
    }

    /// The internal port being mapped.
    pub fn internal(&self) -> u16 {
        self.internal
    }

    fn action_for_phase(&self) -> Option<Action> {
        let lease = self.lease();
        match self.phase {
            Phase::Discover => Some(Action::Discover),
            Phase::Add => Some(Action::Add {
                internal: self.internal,
                external_port_hint: self.hint,
                lease,
            }),
            Phase::Renew => self.mapping.map(|m| Action::Renew {
                internal: self.internal,
                external_port: m.external_port,
                lease,
            }),
            Phase::Stopped => None,
        }
    }

    fn poll_shutdown(&mut self) -> Option<Action> {
        match self.mapping {
            Some(m) => {
                let action = Action::Remove {
                    external_port: m.external_port,
                };
                self.in_flight = Some(action);
                Some(action)
            }
            None => {
                self.stop();
                None
            }
        }
    }

    /// A mapping whose lease ran out without renewal is gone: map again.
    fn expire(&mut self, now: Instant) {
        let Some(m) = self.mapping else { return };
        if m.expires_at.is_some_and(|e| e <= now) {
            tracing::debug!(port = m.external_port, "port mapping lease lapsed");
            self.mapping = None;
            self.hint = Some(m.external_port);
            self.phase = Phase::Add;
            self.due = now;
        }
    }

    fn mapped(&mut self, now: Instant, external_port: u16, lease: Duration) {
        let expires_at = (!lease.is_zero()).then(|| now + lease);
        self.mapping = Some(Mapping {
            external_port,
            expires_at,
        });
        self.hint = Some(external_port);
        self.phase = Phase::Renew;
        self.failures = 0;
        self.due = now + self.config.lease / 2;
    }

    fn succeed(&mut self, next: Phase, now: Instant) {
        self.failures = 0;
        self.phase = next;
        self.due = now;
    }

    /// Counts a failure and schedules `phase` again after `wait`, or gives up for
    /// `idle_pause` once retries run out.
    fn retry(&mut self, phase: Phase, now: Instant, wait: Duration) {
        self.failures += 1;
        if self.failures > self.config.max_retries {
            tracing::debug!(failures = self.failures, "port mapping retries exhausted");
            self.idle(now);
            return;
        }
        self.phase = phase;
        self.due = now + wait;
    }

    /// No IGD (or it keeps failing): drop the mapping, search again much later.
    fn idle(&mut self, now: Instant) {
        self.mapping = None;
        self.external_ip = None;
        self.hint = Some(self.internal);
        self.failures = 0;
        self.phase = Phase::Discover;
        self.due = now + self.config.idle_pause;
    }

    fn stop(&mut self) {
        self.mapping = None;
        self.phase = Phase::Stopped;
    }

    fn lease(&self) -> Duration {
        if self.permanent {
            Duration::ZERO
        } else {
            self.config.lease
        }
    }

    /// Wait before the next retry: `retry_initial` doubled per earlier failure.
    fn backoff(&self) -> Duration {
        let doublings = self.failures.min(16);
        self.config
            .retry_initial
            .saturating_mul(1 << doublings)
            .min(self.config.retry_max)
    }
}

#[cfg(test)]
mod tests;
