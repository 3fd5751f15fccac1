//! UPnP IGD port mapping on real kernel NAT: the daemon's `PortMapper` runs inside a
//! host namespace behind a symmetric-NAT router of the netns lab that runs real
//! miniupnpd. Judged three independent ways: unsolicited UDP from the simulated internet
//! reaches the host through the mapping (and not through an unmapped port, nor before
//! the mapping), miniupnpd's own mapping list (UPnP GetGenericPortMappingEntry), and the
//! DNAT rule in the router's nftables chain.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use agentmesh::net::portmap::{Igd, PortMapper, PortMapperConfig};
use igd_next::{GetGenericPortMappingEntryError, PortMappingProtocol};
use netsim::netns::{self, Lab, Tool, INTERNET, SERVER_A};
use netsim::Preset;

/// The host's UDP port the mapper maps.
const MAPPED: u16 = 41000;
/// A port the host also listens on, never mapped (the control).
const UNMAPPED: u16 = 41001;

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// Sends `payload` to `dst` from a fresh socket on the internet (a new flow, so no
/// earlier conntrack entry decides its fate) a few times; returns the source address
/// `rx` saw it from, if it arrived.
fn inbound(lab: &Lab, rx: &UdpSocket, dst: SocketAddr, payload: &[u8]) -> Option<SocketAddr> {
    let tx = lab
        .udp_socket(INTERNET, SocketAddr::new(SERVER_A.into(), 0))
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..3 {
        tx.send_to(payload, dst).unwrap();
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            match rx.recv_from(&mut buf) {
                Ok((n, from)) if &buf[..n] == payload => {
                    assert_eq!(from, tx.local_addr().unwrap(), "source kept by DNAT");
                    return Some(from);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    None
}

/// The DNAT rules miniupnpd put in the router's nftables chain.
fn dnat_rules(lab: &Lab, site: &str) -> String {
    let out = lab
        .exec(
            site,
            "nft",
            &["list", "chain", "inet", "filter", "prerouting_miniupnpd"],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// miniupnpd's first mapping entry, as `upnpc -l` would list it (`None`: list empty).
async fn first_entry(search_timeout: Duration) -> Option<igd_next::PortMappingEntry> {
    let mut opts = igd_next::SearchOptions::default();
    opts.timeout = Some(search_timeout);
    let gw = igd_next::aio::tokio::search_gateway(opts).await.unwrap();
    match gw.get_generic_port_mapping_entry(0).await {
        Ok(e) => Some(e),
        Err(GetGenericPortMappingEntryError::SpecifiedArrayIndexInvalid) => None,
        Err(e) => panic!("GetGenericPortMappingEntry: {e}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn upnp_mapping_lets_inbound_through_symmetric_nat_until_shutdown() {
    let test = "portmap_netns::upnp_mapping_lets_inbound_through_symmetric_nat_until_shutdown";
    if !netns::lab_available(test, &[Tool::Nft, Tool::Coturn, Tool::Miniupnpd]) {
        return;
    }
    let lab = Lab::builder()
        .site("home", Preset::Symmetric)
        .host("h1", "home")
        .miniupnpd("home")
        .build()
        .unwrap();
    let lan = lab.addr("h1").unwrap();
    let public = lab.public_addr("h1").unwrap();
    assert_eq!(public.octets()[..3], [203, 0, 113], "NAT's WAN address");
    let mapped = lab.udp_socket("h1", any(MAPPED)).unwrap();
    let unmapped = lab.udp_socket("h1", any(UNMAPPED)).unwrap();
    let public_mapped = SocketAddr::new(public.into(), MAPPED);
    let public_unmapped = SocketAddr::new(public.into(), UNMAPPED);

    assert_eq!(
        inbound(&lab, &mapped, public_mapped, b"before mapping"),
        None,
        "the symmetric NAT alone must drop unsolicited inbound UDP"
    );

    let config = PortMapperConfig::default();
    let search = config.search_timeout;
    lab.run_in("h1", || {
        runtime().block_on(async {
            let started = Instant::now();
            let igd = Igd::discover(&config).await.unwrap();
            let discover_time = started.elapsed();
            assert_eq!(
                igd.local_ip(),
                IpAddr::V4(lan),
                "mapping targets the LAN address"
            );
            assert_eq!(igd.external_ip(), IpAddr::V4(public));

            let started = Instant::now();
            let mapper = PortMapper::spawn(MAPPED, config.clone());
            let mut external = mapper.external();
            let got =
                tokio::time::timeout(Duration::from_secs(15), external.wait_for(Option::is_some))
                    .await
                    .expect("no mapping within 15 s")
                    .unwrap()
                    .unwrap();
            let map_time = started.elapsed();
            eprintln!(
                "portmap netns: IGD discovery {discover_time:?}; spawn to mapped {map_time:?}"
            );
            assert_eq!(
                got, public_mapped,
                "same external port as internal, NAT's IP"
            );

            let entry = first_entry(search)
                .await
                .expect("miniupnpd lists the mapping");
            assert_eq!(entry.external_port, MAPPED);
            assert_eq!(entry.internal_port, MAPPED);
            assert_eq!(entry.protocol, PortMappingProtocol::UDP);
            assert_eq!(entry.internal_client, lan.to_string());
            assert!(
                (1..=3600).contains(&entry.lease_duration),
                "{}",
                entry.lease_duration
            );
            assert!(dnat_rules(&lab, "home").contains(&format!("dnat ip to {lan}:{MAPPED}")));

            assert!(
                inbound(&lab, &mapped, public_mapped, b"through the mapping").is_some(),
                "inbound UDP did not arrive through the UPnP mapping"
            );
            assert_eq!(
                inbound(&lab, &unmapped, public_unmapped, b"unmapped port"),
                None,
                "an unmapped port must stay closed"
            );

            let started = Instant::now();
            mapper.shutdown().await;
            eprintln!(
                "portmap netns: shutdown (DeletePortMapping) {:?}",
                started.elapsed()
            );
            assert_eq!(*external.borrow(), None, "watch cleared on shutdown");
            assert!(
                first_entry(search).await.is_none(),
                "mapping left on the router"
            );
            assert!(!dnat_rules(&lab, "home").contains(&format!("{lan}:{MAPPED}")));
            assert_eq!(
                inbound(&lab, &mapped, public_mapped, b"after shutdown"),
                None,
                "inbound still arrives after the mapping was removed"
            );
        })
    })
    .unwrap();
}

#[test]
fn no_igd_publishes_nothing_and_stops_quickly() {
    let test = "portmap_netns::no_igd_publishes_nothing_and_stops_quickly";
    if !netns::lab_available(test, &[Tool::Nft]) {
        return;
    }
    let lab = Lab::builder()
        .site("plain", Preset::PortRestrictedCone)
        .host("p1", "plain")
        .build()
        .unwrap();
    let _sock = lab.udp_socket("p1", any(MAPPED)).unwrap();
    lab.run_in("p1", || {
        runtime().block_on(async {
            let config = PortMapperConfig {
                search_timeout: Duration::from_millis(500),
                ..PortMapperConfig::default()
            };
            let mapper = PortMapper::spawn(MAPPED, config);
            let external = mapper.external();
            // Well past one search timeout: the search found nothing and is idle.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(*external.borrow(), None);
            let started = Instant::now();
            mapper.shutdown().await;
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "{:?}",
                started.elapsed()
            );
        })
    })
    .unwrap();
}
