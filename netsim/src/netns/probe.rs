//! Probing a lab host's NAT for real: with plain UDP sockets the test owns in the
//! internet namespace ([`probe_direct`]) or with STUN against coturn ([`probe_stun`],
//! RFC 5780 CHANGE-REQUEST for filtering). Both fill the observations that
//! [`crate::netns::classify`] judges.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::classify::ProbeOutcome;
use crate::netns::classify::{self, ClassifyError, FilteringObs, MappingObs, PortPattern};
use crate::netns::coturn;
use crate::netns::error::LabError;
use crate::netns::lab::Lab;
use crate::netns::stun::{self, Change};
use crate::netns::topology::{INTERNET, SERVER_A, SERVER_B};

/// How long to wait for one answer.
const WAIT: Duration = Duration::from_millis(300);
/// How many times to send one probe.
const TRIES: usize = 3;
const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Both probes' observations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResult {
    /// The mapping probe.
    pub mapping: MappingObs,
    /// The filtering probe.
    pub filtering: FilteringObs,
}

impl ProbeResult {
    /// The classified behaviour.
    pub fn behaviour(&self) -> Result<ProbeOutcome, ClassifyError> {
        classify::classify(&self.mapping, &self.filtering)
    }

    /// How the NAT chose ports for the mapping probe's three flows.
    pub fn port_pattern(&self) -> PortPattern {
        classify::port_pattern(
            self.mapping.local.port(),
            &classify::mapped_ports(&self.mapping),
        )
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Io { what, source }
}

/// Probes `host` with sockets in the internet namespace that report what they saw and
/// send unsolicited packets back.
pub fn probe_direct(lab: &Lab, host: &str) -> Result<ProbeResult, LabError> {
    let a1 = lab.udp_socket(INTERNET, SocketAddr::new(SERVER_A.into(), 0))?;
    let a2 = lab.udp_socket(INTERNET, SocketAddr::new(SERVER_A.into(), 0))?;
    let b1 = lab.udp_socket(INTERNET, SocketAddr::new(SERVER_B.into(), 0))?;
    for s in [&a1, &a2, &b1] {
        s.set_read_timeout(Some(WAIT))
            .map_err(io("socket timeout"))?;
    }
    let s1 = lab.udp_socket(host, ANY)?;
    let local = SocketAddr::new(
        lab.addr(host)?.into(),
        s1.local_addr().map_err(io("local addr"))?.port(),
    );
    let mapping = MappingObs {
        local,
        primary: send_until_seen(&s1, &a1)?,
        other_port: send_until_seen(&s1, &a2)?,
        other_addr: send_until_seen(&s1, &b1)?,
    };
    let s2 = lab.udp_socket(host, ANY)?;
    let mut filtering = FilteringObs::default();
    if let Some(m) = send_until_seen(&s2, &a1)? {
        b1.send_to(b"other_addr", m)
            .map_err(io("unsolicited send"))?;
        a2.send_to(b"other_port", m)
            .map_err(io("unsolicited send"))?;
        a1.send_to(b"control", m).map_err(io("unsolicited send"))?;
        let from = [addr(&a1)?, addr(&a2)?, addr(&b1)?];
        let got = collect_sources(&s2, 2 * WAIT)?;
        filtering = FilteringObs {
            control: got.contains(&from[0]),
            other_port: got.contains(&from[1]),
            other_addr: got.contains(&from[2]),
        };
    }
    Ok(ProbeResult { mapping, filtering })
}

fn addr(s: &UdpSocket) -> Result<SocketAddr, LabError> {
    s.local_addr().map_err(io("local addr"))
}

/// Sends from `from` to `server` until `server` receives; returns the source it saw.
fn send_until_seen(from: &UdpSocket, server: &UdpSocket) -> Result<Option<SocketAddr>, LabError> {
    let to = addr(server)?;
    let mut buf = [0u8; 64];
    for _ in 0..TRIES {
        from.send_to(b"amprobe", to).map_err(io("probe send"))?;
        match server.recv_from(&mut buf) {
            Ok((_, seen)) => return Ok(Some(seen)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => {
                return Err(LabError::Io {
                    what: "probe receive",
                    source: e,
                })
            }
        }
    }
    Ok(None)
}

/// Sources of every datagram arriving on `s` within `window`.
fn collect_sources(s: &UdpSocket, window: Duration) -> Result<Vec<SocketAddr>, LabError> {
    let end = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Some(left) = end
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        s.set_read_timeout(Some(left))
            .map_err(io("socket timeout"))?;
        match s.recv_from(&mut buf) {
            Ok((_, from)) => got.push(from),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => {
                return Err(LabError::Io {
                    what: "probe receive",
                    source: e,
                })
            }
        }
    }
    Ok(got)
}

/// Probes `host` with STUN Binding requests to coturn (primary, other port, other
/// address) and RFC 5780 CHANGE-REQUESTs for filtering.
pub fn probe_stun(lab: &Lab, host: &str) -> Result<ProbeResult, LabError> {
    if !lab.has_coturn() {
        return Err(LabError::Missing { what: "coturn" });
    }
    let [primary, other_addr] = coturn::servers();
    let other_port = SocketAddr::new(primary.ip(), coturn::ALT_PORT);
    let s1 = lab.udp_socket(host, ANY)?;
    let local = SocketAddr::new(
        lab.addr(host)?.into(),
        s1.local_addr().map_err(io("local addr"))?.port(),
    );
    let none = Change::default();
    let mapping = MappingObs {
        local,
        primary: stun_query(&s1, primary, none)?,
        other_port: stun_query(&s1, other_port, none)?,
        other_addr: stun_query(&s1, other_addr, none)?,
    };
    let s2 = lab.udp_socket(host, ANY)?;
    let control = stun_query(&s2, primary, none)?.is_some();
    let filtering = FilteringObs {
        control,
        other_addr: control
            && stun_query(
                &s2,
                primary,
                Change {
                    ip: true,
                    port: true,
                },
            )?
            .is_some(),
        other_port: control
            && stun_query(
                &s2,
                primary,
                Change {
                    ip: false,
                    port: true,
                },
            )?
            .is_some(),
    };
    Ok(ProbeResult { mapping, filtering })
}

/// One STUN Binding transaction (with retries); the mapped address, if answered.
pub fn stun_query(
    s: &UdpSocket,
    server: SocketAddr,
    change: Change,
) -> Result<Option<SocketAddr>, LabError> {
    let txid = next_txid();
    let req = stun::binding_request(txid, change);
    let mut buf = [0u8; 512];
    for _ in 0..TRIES {
        s.send_to(&req, server).map_err(io("STUN send"))?;
        let end = Instant::now() + WAIT;
        while let Some(left) = end
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            s.set_read_timeout(Some(left))
                .map_err(io("socket timeout"))?;
            match s.recv_from(&mut buf) {
                Ok((n, _)) => {
                    if let Some(mapped) = buf
                        .get(..n)
                        .and_then(|m| stun::parse_binding_response(m, txid))
                    {
                        return Ok(Some(mapped));
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => {
                    return Err(LabError::Io {
                        what: "STUN receive",
                        source: e,
                    })
                }
            }
        }
    }
    Ok(None)
}

/// A transaction id unique within this process (not secret: lab traffic only).
fn next_txid() -> [u8; 12] {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8..].copy_from_slice(&std::process::id().to_be_bytes());
    id
}
