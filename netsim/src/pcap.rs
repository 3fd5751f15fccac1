//! Pcap export: captured packets written as a classic libpcap file (LINKTYPE_RAW, IPv4 +
//! UDP headers synthesized) that Wireshark and tcpdump open.
//!
//! Written by hand: the format is 24 + 16 bytes of header, and the crate that would do it
//! (`pcap-file`) has not been released since 2022 and would still leave the IP/UDP headers
//! to us.

use std::io::{self, Write};
use std::net::SocketAddrV4;

use bytes::Bytes;

use crate::sim::NetworkId;
use crate::time::SimTime;

/// One packet as seen on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// When it was seen.
    pub at: SimTime,
    /// Where it was seen.
    pub network: NetworkId,
    /// The packet's id in the trace.
    pub packet: u64,
    /// Source endpoint (as on that network).
    pub src: SocketAddrV4,
    /// Destination endpoint (as on that network).
    pub dst: SocketAddrV4,
    /// UDP payload.
    pub data: Bytes,
}

/// LINKTYPE_RAW: each record starts with an IP header.
const LINKTYPE_RAW: u32 = 101;

/// Writes `packets` as a pcap file (microsecond timestamps from virtual time zero).
pub fn write_pcap<'a, W: Write>(
    mut w: W,
    packets: impl IntoIterator<Item = &'a Captured>,
) -> io::Result<()> {
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes());
    header.extend_from_slice(&0i32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&65_535u32.to_le_bytes());
    header.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
    w.write_all(&header)?;
    for p in packets {
        let frame = ipv4_udp(p);
        let micros = p.at.as_nanos() / 1_000;
        let len = frame.len() as u32;
        let mut rec = Vec::with_capacity(16 + frame.len());
        rec.extend_from_slice(&((micros / 1_000_000) as u32).to_le_bytes());
        rec.extend_from_slice(&((micros % 1_000_000) as u32).to_le_bytes());
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&frame);
        w.write_all(&rec)?;
    }
    w.flush()
}

/// An IPv4 header (with checksum) + UDP header (checksum 0, allowed over IPv4) + payload.
fn ipv4_udp(p: &Captured) -> Vec<u8> {
    let udp_len = 8 + p.data.len();
    let total = (20 + udp_len).min(usize::from(u16::MAX)) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&(p.packet as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&p.src.ip().octets());
    ip[16..20].copy_from_slice(&p.dst.ip().octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut out = Vec::with_capacity(20 + udp_len);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&p.src.port().to_be_bytes());
    out.extend_from_slice(&p.dst.port().to_be_bytes());
    out.extend_from_slice(&(udp_len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&p.data);
    out
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_layout_and_ip_checksum() {
        let p = Captured {
            at: SimTime::from_millis(1_500),
            network: crate::Sim::new(0).internet(),
            packet: 7,
            src: "10.0.0.1:1000".parse().unwrap(),
            dst: "203.0.113.9:3478".parse().unwrap(),
            data: Bytes::from_static(b"hello"),
        };
        let mut out = Vec::new();
        write_pcap(&mut out, [&p]).unwrap();
        assert_eq!(out.len(), 24 + 16 + 20 + 8 + 5);
        assert_eq!(&out[0..4], &0xa1b2_c3d4u32.to_le_bytes());
        assert_eq!(
            u32::from_le_bytes(out[20..24].try_into().unwrap()),
            LINKTYPE_RAW
        );
        assert_eq!(u32::from_le_bytes(out[24..28].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(out[28..32].try_into().unwrap()), 500_000);
        let ip = &out[40..60];
        assert_eq!(checksum(ip), 0, "a header with its checksum sums to zero");
        assert_eq!(&out[60..62], &1000u16.to_be_bytes());
        assert_eq!(&out[68..], b"hello");
    }
}
