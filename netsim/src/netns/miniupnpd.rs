//! Real miniupnpd (Debian `miniupnpd-nftables`) on a lab router: UPnP IGD on the LAN
//! (HTTP port 5000) and NAT-PMP (port 5351), adding its mappings to nftables chains
//! the lab creates. It refuses 203.0.113.0/24 as a WAN address ("reserved"), so it
//! learns the public address by STUN from the lab's coturn instead.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::netns::error::LabError;
use crate::netns::lab::Lab;
use crate::netns::topology::{NodeKind, SERVER_A};
use crate::netns::{cmd, coturn, natpmp, nft};

/// miniupnpd's UPnP HTTP port on the LAN address.
pub const HTTP_PORT: u16 = 5000;
/// How long miniupnpd may take to start (it runs STUN first: 3–6 s seen).
const READY: Duration = Duration::from_secs(20);

/// The config file for a router whose LAN gateway is `lan_gw`.
pub fn config(lan_gw: Ipv4Addr) -> String {
    let [a, b, c, _] = lan_gw.octets();
    format!(
        "ext_ifname=wan\nlistening_ip=lan\nport={HTTP_PORT}\nenable_upnp=yes\nenable_natpmp=yes\n\
         secure_mode=yes\nsystem_uptime=yes\nuuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b\n\
         ext_perform_stun=yes\next_stun_host={SERVER_A}\next_stun_port={port}\n\
         allow 1024-65535 {a}.{b}.{c}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
        port = coturn::PORT
    )
}

/// Starts miniupnpd on `site`'s router and waits until NAT-PMP answers on the LAN.
pub(crate) fn start(lab: &Lab, site: &str) -> Result<(), LabError> {
    let router = lab.node(site)?;
    if !matches!(router.kind, NodeKind::Router { .. }) {
        return Err(LabError::UnknownNode {
            name: site.to_owned(),
        });
    }
    cmd::exec_in(&router.ns, "nft", &["-f", "-"], Some(nft::MINIUPNPD))?;
    let gw = lan_gateway(lab, site)?;
    let conf = lab.dir().join(format!("miniupnpd-{site}.conf"));
    std::fs::write(&conf, config(gw)).map_err(|source| LabError::Io {
        what: "writing miniupnpd.conf",
        source,
    })?;
    let pid = lab.dir().join(format!("miniupnpd-{site}.pid"));
    let spawned = lab.spawn(
        site,
        "miniupnpd",
        &[
            "-f",
            &conf.to_string_lossy(),
            "-d",
            "-P",
            &pid.to_string_lossy(),
        ],
    )?;
    let sock = lab.udp_socket(site, SocketAddr::new(gw.into(), 0))?;
    let start = Instant::now();
    while start.elapsed() < READY {
        if public_address(&sock, gw)?.is_some() {
            tracing::debug!(site, elapsed = ?start.elapsed(), "miniupnpd ready");
            return Ok(());
        }
    }
    Err(LabError::NotReady {
        what: "miniupnpd",
        secs: READY.as_secs(),
        log: spawned.log.display().to_string(),
    })
}

/// The LAN gateway address of `site`'s router.
pub fn lan_gateway(lab: &Lab, site: &str) -> Result<Ipv4Addr, LabError> {
    lab.node(site)?.lan.ok_or_else(|| LabError::UnknownNode {
        name: site.to_owned(),
    })
}

/// One NAT-PMP external-address exchange with `gw` (300 ms wait).
pub fn public_address(sock: &UdpSocket, gw: Ipv4Addr) -> Result<Option<Ipv4Addr>, LabError> {
    let io = |source| LabError::Io {
        what: "NAT-PMP",
        source,
    };
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .map_err(io)?;
    sock.send_to(&natpmp::address_request(), (gw, natpmp::PORT))
        .map_err(io)?;
    let mut buf = [0u8; 64];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Ok(buf.get(..n).and_then(natpmp::parse_address_response)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::thread::sleep(Duration::from_millis(200));
            Ok(None)
        }
        Err(e) => Err(io(e)),
    }
}
