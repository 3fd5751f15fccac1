//! The netns lab itself: teardown on drop, on panic and of leftovers; traffic between
//! NATed sites; netem; real miniupnpd answering NAT-PMP and UPnP on a router.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use netsim::netns::{self, miniupnpd, natpmp, sweep, Lab, Netem, Tool, INTERNET, SERVER_A};
use netsim::Preset;

fn available(test: &str, tools: &[Tool]) -> bool {
    netns::lab_available(test, tools)
}

fn any() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

#[test]
fn drop_and_panic_tear_everything_down() {
    if !available("drop_and_panic_tear_everything_down", &[Tool::Nft]) {
        return;
    }
    let lab = Lab::builder()
        .site("a", Preset::Symmetric)
        .host("a1", "a")
        .build()
        .unwrap();
    let prefix = lab.prefix().to_owned();
    let spawned = lab.spawn("a1", "sleep", &["60"]).unwrap();
    assert_eq!(sweep::list(&prefix).len(), 3, "internet, router, host");
    drop(lab);
    assert!(sweep::list(&prefix).is_empty());
    assert!(
        !std::path::Path::new(&format!("/proc/{}", spawned.pid)).exists(),
        "child killed"
    );

    let mut prefix = String::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::builder()
            .site("b", Preset::FullCone)
            .host("b1", "b")
            .build()
            .unwrap();
        prefix = lab.prefix().to_owned();
        panic!("test failure inside a lab");
    }));
    assert!(result.is_err());
    assert!(
        !prefix.is_empty() && sweep::list(&prefix).is_empty(),
        "namespaces left after panic"
    );
    // The lab kept its logs for the (intended) panic; they are not needed here.
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(prefix.trim_end_matches('-')));
}

#[test]
fn leftovers_of_dead_processes_are_swept() {
    if !available("leftovers_of_dead_processes_are_swept", &[]) {
        return;
    }
    // pid_max is at most 2^22, so this owner cannot be alive.
    let stale = "amlab-4999999-0-stale";
    std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .status()
        .unwrap();
    assert_eq!(sweep::list(stale).len(), 1);
    let lab = Lab::builder().build().unwrap();
    assert!(
        sweep::list(stale).is_empty(),
        "stale namespace survived a lab build"
    );
    drop(lab);
}

#[test]
fn hosts_behind_cone_nats_punch_through_public_addresses() {
    if !available(
        "hosts_behind_cone_nats_punch_through_public_addresses",
        &[Tool::Nft],
    ) {
        return;
    }
    let lab = Lab::builder()
        .site("a", Preset::PortRestrictedCone)
        .host("a1", "a")
        .site("b", Preset::RestrictedCone)
        .host("b1", "b")
        .build()
        .unwrap();
    let port = 40000;
    let sa = lab
        .udp_socket("a1", SocketAddr::new([0, 0, 0, 0].into(), port))
        .unwrap();
    let sb = lab
        .udp_socket("b1", SocketAddr::new([0, 0, 0, 0].into(), port))
        .unwrap();
    let pa = SocketAddr::new(lab.public_addr("a1").unwrap().into(), port);
    let pb = SocketAddr::new(lab.public_addr("b1").unwrap().into(), port);
    assert_ne!(lab.addr("a1").unwrap(), lab.public_addr("a1").unwrap());
    for s in [&sa, &sb] {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    let mut buf = [0u8; 16];
    let (mut a_got, mut b_got) = (None, None);
    for _ in 0..5 {
        sa.send_to(b"from a", pb).unwrap();
        sb.send_to(b"from b", pa).unwrap();
        a_got = a_got.or_else(|| sa.recv_from(&mut buf).ok().map(|(_, from)| from));
        b_got = b_got.or_else(|| sb.recv_from(&mut buf).ok().map(|(_, from)| from));
        if a_got.is_some() && b_got.is_some() {
            break;
        }
    }
    assert_eq!(
        (a_got, b_got),
        (Some(pb), Some(pa)),
        "hole punching between cone NATs"
    );
}

#[test]
fn tokio_runtimes_run_inside_a_node() {
    if !available("tokio_runtimes_run_inside_a_node", &[Tool::Nft]) {
        return;
    }
    let lab = Lab::builder()
        .site("a", Preset::PortRestrictedCone)
        .host("a1", "a")
        .build()
        .unwrap();
    let inside = SocketAddr::new(lab.addr("a1").unwrap().into(), 0);
    let server = lab
        .udp_socket(INTERNET, SocketAddr::new(SERVER_A.into(), 0))
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let to = server.local_addr().unwrap();
    // A multi-thread runtime built on a thread inside a1: its workers are in a1 too, so
    // a task there can bind a1's private address and reach the internet through the NAT.
    lab.run_in("a1", || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let handle = tokio::spawn(async move {
                let s = tokio::net::UdpSocket::bind(inside).await.unwrap();
                s.send_to(b"from a task", to).await.unwrap();
            });
            handle.await.unwrap();
        });
    })
    .unwrap();
    let mut buf = [0u8; 32];
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"from a task");
    assert_eq!(
        from.ip(),
        std::net::IpAddr::from(lab.public_addr("a1").unwrap())
    );
}

#[test]
fn netem_delays_both_directions() {
    if !available("netem_delays_both_directions", &[Tool::Nft, Tool::Tc]) {
        return;
    }
    if !netns::netem::netem_supported() {
        let required = std::env::var("AGENTMESH_REQUIRE_NETEM").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "AGENTMESH_REQUIRE_NETEM=1 but this kernel has no sch_netem"
        );
        eprintln!("!!! SKIPPED netns test netem_delays_both_directions: kernel has no sch_netem (CONFIG_NET_SCH_NETEM)");
        return;
    }
    let lab = Lab::builder()
        .site("a", Preset::FullCone)
        .host("a1", "a")
        .netem("a1", Netem::delay(40))
        .build()
        .unwrap();
    let server = lab
        .udp_socket(INTERNET, SocketAddr::new(SERVER_A.into(), 0))
        .unwrap();
    let client = lab.udp_socket("a1", any()).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 16];
    let start = Instant::now();
    client
        .send_to(b"ping", server.local_addr().unwrap())
        .unwrap();
    let (_, from) = server.recv_from(&mut buf).unwrap();
    server.send_to(b"pong", from).unwrap();
    client.recv_from(&mut buf).unwrap();
    let rtt = start.elapsed();
    println!("rtt with 40 ms netem on each end of the uplink: {rtt:?}");
    // 40 ms on the host's egress and 40 ms on the router's egress towards the host.
    assert!(rtt >= Duration::from_millis(80), "rtt {rtt:?}");
    assert!(rtt < Duration::from_secs(1), "rtt {rtt:?}");
}

#[test]
fn netem_loss_drops_about_the_asked_share() {
    if !available(
        "netem_loss_drops_about_the_asked_share",
        &[Tool::Nft, Tool::Tc],
    ) {
        return;
    }
    let lab = Lab::builder()
        .site("a", Preset::FullCone)
        .host("a1", "a")
        .build()
        .unwrap();
    let server = lab
        .udp_socket(INTERNET, SocketAddr::new(SERVER_A.into(), 0))
        .unwrap();
    let client = lab.udp_socket("a1", any()).unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let to = server.local_addr().unwrap();
    let mut buf = [0u8; 16];
    // Resolve ARP before the loss starts, or lost ARP holds the burst back.
    client.send_to(b"warm", to).unwrap();
    server.recv_from(&mut buf).unwrap();
    lab.netem(
        "a1",
        Netem {
            loss_pct: 50.0,
            ..Netem::default()
        },
    )
    .unwrap();
    for i in 0..200u32 {
        client.send_to(&i.to_be_bytes(), to).unwrap();
    }
    let mut got = 0;
    while server.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    println!("50% loss on the uplink: {got}/200 arrived");
    // Binomial(200, 0.5): 60..=140 is more than 5.6 standard deviations wide.
    assert!((60..=140).contains(&got), "{got}/200 arrived");
    lab.netem("a1", Netem::default()).unwrap();
    client.send_to(b"after", to).unwrap();
    assert!(server.recv_from(&mut buf).is_ok(), "loss not removed");
}

#[test]
fn miniupnpd_maps_a_port_by_natpmp_and_serves_upnp() {
    if !available(
        "miniupnpd_maps_a_port_by_natpmp_and_serves_upnp",
        &[Tool::Nft, Tool::Coturn, Tool::Miniupnpd],
    ) {
        return;
    }
    let lab = Lab::builder()
        .site("a", Preset::Symmetric)
        .host("a1", "a")
        .miniupnpd("a")
        .build()
        .unwrap();
    let gw = miniupnpd::lan_gateway(&lab, "a").unwrap();
    let host = lab
        .udp_socket("a1", SocketAddr::new([0, 0, 0, 0].into(), 41000))
        .unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(
        miniupnpd::public_address(&host, gw).unwrap(),
        Some(lab.public_addr("a1").unwrap())
    );

    host.send_to(
        &natpmp::map_udp_request(41000, 41000, 120),
        (gw, natpmp::PORT),
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = host.recv_from(&mut buf).unwrap();
    let (internal, external, _) =
        natpmp::parse_map_response(&buf[..n]).expect("NAT-PMP mapping refused");
    assert_eq!(internal, 41000);

    // An unsolicited sender on the internet reaches the host through the mapping,
    // which the symmetric NAT alone would drop.
    let outside = lab
        .udp_socket(INTERNET, SocketAddr::new(SERVER_A.into(), 0))
        .unwrap();
    let public = SocketAddr::new(lab.public_addr("a1").unwrap().into(), external);
    let mut got = None;
    for _ in 0..5 {
        outside.send_to(b"inbound", public).unwrap();
        host.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        if let Ok((n, _)) = host.recv_from(&mut buf) {
            got = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(
        got.as_deref(),
        Some(&b"inbound"[..]),
        "mapping did not let traffic in"
    );

    // UPnP IGD: SSDP discovery on the LAN, then the device description over HTTP.
    let location = ssdp_location(&lab, "a1");
    assert!(
        location.starts_with(&format!("http://{gw}:{}/", miniupnpd::HTTP_PORT)),
        "{location}"
    );
    let path = location.splitn(4, '/').nth(3).unwrap_or("").to_owned();
    let desc = lab
        .run_in("a1", || -> std::io::Result<String> {
            let server = SocketAddr::new(gw.into(), miniupnpd::HTTP_PORT);
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {server}\r\n\r\n").as_bytes())?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })
        .unwrap()
        .unwrap();
    assert!(
        desc.contains("urn:schemas-upnp-org:device:InternetGatewayDevice:"),
        "{desc}"
    );
    assert!(
        desc.contains("urn:schemas-upnp-org:service:WANIPConnection:"),
        "{desc}"
    );
}

/// Sends an SSDP M-SEARCH for an IGD from `host` and returns the LOCATION answered.
fn ssdp_location(lab: &Lab, host: &str) -> String {
    let sock = lab.udp_socket(host, any()).expect("socket in host");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let search =
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\n\
                  ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n";
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        sock.send_to(search.as_bytes(), "239.255.255.250:1900")
            .expect("M-SEARCH send");
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let line = text
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("location:"));
            return line.map(|l| l[9..].trim().to_owned()).unwrap_or(text);
        }
    }
    panic!("no SSDP answer from miniupnpd");
}
