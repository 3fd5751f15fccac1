//! Unit tests of the NAT mapping table.

use std::time::Duration;

use super::*;

fn ep(last: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, last), port)
}

fn inside(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), port)
}

fn nat(cfg: NatConfig) -> Nat {
    Nat::new(cfg, Ipv4Addr::new(198, 51, 100, 1), SimRng::new(3))
}

const T0: SimTime = SimTime::ZERO;

#[test]
fn eim_keeps_one_mapping_and_preserves_the_port() {
    let mut n = nat(NatConfig::new(
        Mapping::EndpointIndependent,
        Filtering::EndpointIndependent,
    ));
    let a = n.outbound(T0, inside(5000), ep(1, 3478)).unwrap();
    let b = n.outbound(T0, inside(5000), ep(2, 9)).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.port(), 5000);
    assert_eq!(n.len(), 1);
}

#[test]
fn apdm_sequential_gives_consecutive_ports() {
    let mut cfg = NatConfig::new(
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
    );
    cfg.port_alloc = PortAlloc::Sequential;
    let mut n = nat(cfg);
    let a = n.outbound(T0, inside(5000), ep(1, 1)).unwrap();
    let b = n.outbound(T0, inside(5000), ep(1, 2)).unwrap();
    let c = n.outbound(T0, inside(5000), ep(2, 1)).unwrap();
    assert_eq!(b.port(), a.port() + 1);
    assert_eq!(c.port(), a.port() + 2);
}

#[test]
fn adm_shares_a_mapping_per_remote_address() {
    let mut n = nat(NatConfig::new(
        Mapping::AddressDependent,
        Filtering::AddressDependent,
    ));
    let a = n.outbound(T0, inside(5000), ep(1, 1)).unwrap();
    let b = n.outbound(T0, inside(5000), ep(1, 2)).unwrap();
    let c = n.outbound(T0, inside(5000), ep(2, 1)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn filtering_admits_what_its_class_says() {
    let cases = [
        (Filtering::EndpointIndependent, [true, true, true]),
        (Filtering::AddressDependent, [true, true, false]),
        (Filtering::AddressAndPortDependent, [true, false, false]),
    ];
    for (f, expect) in cases {
        let mut n = nat(NatConfig::new(Mapping::EndpointIndependent, f));
        let ext = n.outbound(T0, inside(5000), ep(1, 1)).unwrap();
        let got = [ep(1, 1), ep(1, 2), ep(2, 1)].map(|r| n.inbound(T0, r, ext.port()).is_ok());
        assert_eq!(got, expect, "{f:?}");
    }
}

#[test]
fn inbound_without_mapping_is_dropped() {
    let mut n = nat(NatConfig::new(
        Mapping::EndpointIndependent,
        Filtering::EndpointIndependent,
    ));
    assert_eq!(n.inbound(T0, ep(1, 1), 4000), Err(NatDrop::NoMapping));
}

#[test]
fn mappings_expire_and_refresh_follows_the_rule() {
    let cfg = NatConfig::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent)
        .with_timeout(Duration::from_secs(30));
    for refresh in [Refresh::Outbound, Refresh::Bidirectional] {
        let mut n = nat(NatConfig {
            refresh,
            ..cfg.clone()
        });
        let ext = n.outbound(T0, inside(5000), ep(1, 1)).unwrap();
        assert!(n
            .inbound(SimTime::from_secs(20), ep(1, 1), ext.port())
            .is_ok());
        let alive = n
            .inbound(SimTime::from_secs(40), ep(1, 1), ext.port())
            .is_ok();
        assert_eq!(alive, refresh == Refresh::Bidirectional, "{refresh:?}");
    }
    let mut n = nat(cfg);
    let ext = n.outbound(T0, inside(5000), ep(1, 1)).unwrap();
    assert_eq!(n.mappings(SimTime::from_secs(29)).len(), 1);
    assert!(n.mappings(SimTime::from_secs(30)).is_empty());
    assert_eq!(
        n.inbound(SimTime::from_secs(31), ep(1, 1), ext.port()),
        Err(NatDrop::NoMapping)
    );
}

#[test]
fn table_limit_refuses_then_reclaims_expired() {
    let cfg = NatConfig::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent)
        .with_max_mappings(2)
        .with_timeout(Duration::from_secs(10));
    let mut n = nat(cfg);
    n.outbound(T0, inside(1), ep(1, 1)).unwrap();
    n.outbound(T0, inside(2), ep(1, 1)).unwrap();
    assert_eq!(n.outbound(T0, inside(3), ep(1, 1)), Err(NatDrop::TableFull));
    assert!(n
        .outbound(SimTime::from_secs(11), inside(3), ep(1, 1))
        .is_ok());
}

#[test]
fn hairpin_on_and_off() {
    let cfg = NatConfig::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
    let mut n = nat(cfg.clone());
    let ext_b = n.outbound(T0, inside(6000), ep(1, 1)).unwrap();
    assert_eq!(
        n.hairpin(T0, inside(5000), ext_b),
        Err(NatDrop::HairpinDisabled)
    );
    let mut n = nat(cfg.with_hairpin(true));
    let ext_b = n.outbound(T0, inside(6000), ep(1, 1)).unwrap();
    let (src, to) = n.hairpin(T0, inside(5000), ext_b).unwrap();
    assert_eq!(to, inside(6000));
    assert_eq!(*src.ip(), n.external_ip());
}

#[test]
fn flush_and_udp_block() {
    let mut n = nat(NatConfig::new(
        Mapping::EndpointIndependent,
        Filtering::EndpointIndependent,
    ));
    let ext = n.outbound(T0, inside(5000), ep(1, 1)).unwrap();
    n.flush();
    assert!(n.is_empty());
    assert_eq!(n.inbound(T0, ep(1, 1), ext.port()), Err(NatDrop::NoMapping));
    let mut cfg = NatConfig::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
    cfg.block_udp = true;
    let mut n = nat(cfg);
    assert_eq!(
        n.outbound(T0, inside(1), ep(1, 1)),
        Err(NatDrop::UdpBlocked)
    );
}

#[test]
fn random_ports_differ_and_stay_in_range() {
    let mut cfg = NatConfig::new(
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
    );
    cfg.port_alloc = PortAlloc::Random;
    let mut n = nat(cfg);
    let ports: Vec<u16> = (1..50)
        .map(|i| n.outbound(T0, inside(5000), ep(1, i)).unwrap().port())
        .collect();
    assert!(ports.iter().all(|p| *p >= 1024));
    assert!(ports.windows(2).any(|w| w[1] != w[0] + 1));
}
