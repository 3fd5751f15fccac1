//! Virtual-time tests of the port-mapping lease scheduler.

use super::*;

const WAN: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 10));
const LEASE: Duration = Duration::from_secs(3600);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn add(port: u16, hint: Option<u16>, lease: Duration) -> Action {
    Action::Add {
        internal: port,
        external_port_hint: hint,
        lease,
    }
}

/// A scheduler for port 4000 at `t0`, driven through discovery to a mapping of 4000.
fn mapped(config: PortMapConfig, t0: Instant) -> PortMapState {
    let mut s = PortMapState::new(4000, config, t0);
    assert_eq!(s.poll_action(t0), Some(Action::Discover));
    s.handle_result(t0, Outcome::GatewayFound { external_ip: WAN });
    assert_eq!(s.poll_action(t0), Some(add(4000, Some(4000), LEASE)));
    s.handle_result(
        t0,
        Outcome::Mapped {
            external_port: 4000,
        },
    );
    s
}

#[test]
fn discovers_maps_same_port_and_renews_at_half_lease() {
    let t0 = Instant::now();
    let mut s = PortMapState::new(4000, PortMapConfig::default(), t0);
    assert_eq!(s.poll_action(t0), Some(Action::Discover));
    assert_eq!(s.poll_action(t0), None, "one action at a time");
    assert_eq!(s.poll_timeout(), None);
    s.handle_result(t0, Outcome::GatewayFound { external_ip: WAN });
    assert_eq!(s.poll_action(t0), Some(add(4000, Some(4000), LEASE)));
    assert_eq!(s.external(), None);
    s.handle_result(
        t0,
        Outcome::Mapped {
            external_port: 4000,
        },
    );
    assert_eq!(s.external(), Some(SocketAddr::new(WAN, 4000)));
    assert_eq!(s.mapping().and_then(|m| m.expires_at), Some(t0 + LEASE));
    assert_eq!(s.poll_timeout(), Some(t0 + secs(1800)));
    assert_eq!(s.poll_action(t0 + secs(1799)), None);
    let renew = Action::Renew {
        internal: 4000,
        external_port: 4000,
        lease: LEASE,
    };
    assert_eq!(s.poll_action(t0 + secs(1800)), Some(renew));
    s.handle_result(
        t0 + secs(1800),
        Outcome::Mapped {
            external_port: 4000,
        },
    );
    assert_eq!(s.poll_timeout(), Some(t0 + secs(3600)));
    assert_eq!(
        s.mapping().and_then(|m| m.expires_at),
        Some(t0 + secs(1800) + LEASE)
    );
}

#[test]
fn port_in_use_falls_back_to_any_port() {
    let t0 = Instant::now();
    let mut s = PortMapState::new(4000, PortMapConfig::default(), t0);
    s.poll_action(t0);
    s.handle_result(t0, Outcome::GatewayFound { external_ip: WAN });
    s.poll_action(t0);
    s.handle_result(t0, Outcome::PortInUse);
    assert_eq!(s.poll_action(t0), Some(add(4000, None, LEASE)));
    s.handle_result(
        t0,
        Outcome::Mapped {
            external_port: 51234,
        },
    );
    assert_eq!(s.external(), Some(SocketAddr::new(WAN, 51234)));
}

#[test]
fn failures_back_off_exponentially_then_pause_long() {
    let t0 = Instant::now();
    let mut s = PortMapState::new(4000, PortMapConfig::default(), t0);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..6 {
        assert_eq!(s.poll_action(now), Some(Action::Discover));
        s.handle_result(now, Outcome::Failed);
        let next = s.poll_timeout().unwrap();
        assert_eq!(s.poll_action(next - secs(1) / 2), None, "not early");
        waits.push((next - now).as_secs());
        now = next;
    }
    assert_eq!(
        waits,
        [1, 2, 4, 8, 16, 600],
        "bounded retries, then the idle pause"
    );
    assert_eq!(s.poll_action(now), Some(Action::Discover));
    s.handle_result(now, Outcome::Failed);
    assert_eq!(s.poll_timeout(), Some(now + secs(1)), "backoff starts over");
}

#[test]
fn backoff_is_capped() {
    let config = PortMapConfig {
        max_retries: 20,
        ..PortMapConfig::default()
    };
    let t0 = Instant::now();
    let mut s = PortMapState::new(4000, config, t0);
    let mut now = t0;
    for _ in 0..12 {
        s.poll_action(now);
        s.handle_result(now, Outcome::Failed);
        let next = s.poll_timeout().unwrap();
        assert!(next - now <= secs(60));
        now = next;
    }
    s.poll_action(now);
    s.handle_result(now, Outcome::Failed);
    assert_eq!(s.poll_timeout(), Some(now + secs(60)));
}

#[test]
fn no_gateway_waits_ten_minutes_then_searches_again() {
    let t0 = Instant::now();
    let mut s = PortMapState::new(4000, PortMapConfig::default(), t0);
    s.poll_action(t0);
    s.handle_result(t0, Outcome::NoGateway);
    assert_eq!(s.poll_timeout(), Some(t0 + secs(600)));
    assert_eq!(s.poll_action(t0 + secs(599)), None);
    assert_eq!(s.poll_action(t0 + secs(600)), Some(Action::Discover));
    s.handle_result(t0 + secs(600), Outcome::GatewayFound { external_ip: WAN });
    assert!(matches!(
        s.poll_action(t0 + secs(600)),
        Some(Action::Add { .. })
    ));
}

#[test]
fn refused_lease_switches_to_permanent_mapping() {
    let t0 = Instant::now();
    let mut s = PortMapState::new(4000, PortMapConfig::default(), t0);
    s.poll_action(t0);
    s.handle_result(t0, Outcome::GatewayFound { external_ip: WAN });
    s.poll_action(t0);
    s.handle_result(t0, Outcome::LeaseRefused);
    assert!(s.permanent());
    assert_eq!(
        s.poll_action(t0),
        Some(add(4000, Some(4000), Duration::ZERO))
    );
    s.handle_result(
        t0,
        Outcome::Mapped {
            external_port: 4000,
        },
    );
    assert_eq!(s.mapping().and_then(|m| m.expires_at), None, "never lapses");
    // Still refreshed now and then, in case the router forgot it.
    assert_eq!(
        s.poll_action(t0 + secs(1800)),
        Some(Action::Renew {
            internal: 4000,
            external_port: 4000,
            lease: Duration::ZERO,
        })
    );
    // A second refusal is a plain failure, not a loop.
    s.handle_result(t0 + secs(1800), Outcome::LeaseRefused);
    assert_eq!(s.poll_timeout(), Some(t0 + secs(1801)));
}

#[test]
fn failed_renewals_lose_the_mapping_at_expiry_and_map_again() {
    let config = PortMapConfig {
        retry_initial: secs(1000),
        retry_max: secs(1000),
        ..PortMapConfig::default()
    };
    let t0 = Instant::now();
    let mut s = mapped(config, t0);
    let t = t0 + secs(1800);
    assert!(matches!(s.poll_action(t), Some(Action::Renew { .. })));
    s.handle_result(t, Outcome::Failed);
    assert_eq!(s.poll_timeout(), Some(t + secs(1000)));
    s.poll_action(t + secs(1000));
    s.handle_result(t + secs(1000), Outcome::Failed);
    assert!(s.external().is_some(), "still valid until the lease ends");
    assert_eq!(s.poll_timeout(), Some(t0 + LEASE), "expiry comes first");
    assert_eq!(
        s.poll_action(t0 + LEASE),
        Some(add(4000, Some(4000), LEASE))
    );
    assert_eq!(s.external(), None, "lapsed mapping is not advertised");
}

#[test]
fn renewal_port_taken_maps_a_new_port() {
    let t0 = Instant::now();
    let mut s = mapped(PortMapConfig::default(), t0);
    let t = t0 + secs(1800);
    s.poll_action(t);
    s.handle_result(t, Outcome::PortInUse);
    assert_eq!(s.external(), None);
    assert_eq!(s.poll_action(t), Some(add(4000, None, LEASE)));
}

#[test]
fn shutdown_removes_the_mapping_then_finishes() {
    let t0 = Instant::now();
    let mut s = mapped(PortMapConfig::default(), t0);
    s.shutdown();
    assert_eq!(
        s.poll_action(t0),
        Some(Action::Remove {
            external_port: 4000
        })
    );
    assert!(!s.is_finished());
    s.handle_result(t0, Outcome::Removed);
    assert!(s.is_finished());
    assert_eq!(s.external(), None);
    assert_eq!(s.poll_action(t0 + secs(5000)), None);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn shutdown_without_mapping_finishes_at_once() {
    let t0 = Instant::now();
    let mut s = PortMapState::new(4000, PortMapConfig::default(), t0);
    s.shutdown();
    assert_eq!(s.poll_action(t0), None);
    assert!(s.is_finished());
}

#[test]
fn shutdown_during_add_removes_what_it_mapped() {
    let t0 = Instant::now();
    let mut s = PortMapState::new(4000, PortMapConfig::default(), t0);
    s.poll_action(t0);
    s.handle_result(t0, Outcome::GatewayFound { external_ip: WAN });
    s.poll_action(t0);
    s.shutdown();
    assert_eq!(s.poll_action(t0), None, "Add still outstanding");
    s.handle_result(
        t0,
        Outcome::Mapped {
            external_port: 4000,
        },
    );
    assert_eq!(
        s.poll_action(t0),
        Some(Action::Remove {
            external_port: 4000
        })
    );
    // A failed removal still ends (the lease cleans up on the router).
    s.handle_result(t0, Outcome::Failed);
    assert!(s.is_finished());
}

#[test]
fn result_without_pending_action_is_ignored() {
    let t0 = Instant::now();
    let mut s = PortMapState::new(4000, PortMapConfig::default(), t0);
    s.handle_result(
        t0,
        Outcome::Mapped {
            external_port: 9999,
        },
    );
    assert_eq!(s.external(), None);
    assert_eq!(s.poll_action(t0), Some(Action::Discover));
}
