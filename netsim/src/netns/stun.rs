//! A minimal STUN client codec (RFC 5389 Binding, RFC 5780 CHANGE-REQUEST), sans-IO:
//! enough to ask coturn for our mapped address and to test filtering.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The RFC 5389 magic cookie.
pub const MAGIC: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_MAPPED: u16 = 0x0001;
const ATTR_CHANGE_REQUEST: u16 = 0x0003;
const ATTR_XOR_MAPPED: u16 = 0x0020;

/// CHANGE-REQUEST flags (RFC 5780 §7.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// Answer from the other IP address.
    pub ip: bool,
    /// Answer from the other port.
    pub port: bool,
}

/// A Binding request with transaction id `txid`, with CHANGE-REQUEST if `change` asks.
pub fn binding_request(txid: [u8; 12], change: Change) -> Vec<u8> {
    let mut attrs = Vec::new();
    if change.ip || change.port {
        let flags = (u32::from(change.ip) << 2) | (u32::from(change.port) << 1);
        attrs.extend_from_slice(&ATTR_CHANGE_REQUEST.to_be_bytes());
        attrs.extend_from_slice(&4u16.to_be_bytes());
        attrs.extend_from_slice(&flags.to_be_bytes());
    }
    let mut msg = Vec::with_capacity(20 + attrs.len());
    msg.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    msg.extend_from_slice(&u16::try_from(attrs.len()).unwrap_or(0).to_be_bytes());
    msg.extend_from_slice(&MAGIC.to_be_bytes());
    msg.extend_from_slice(&txid);
    msg.extend_from_slice(&attrs);
    msg
}

/// The mapped address in a Binding success response for `txid`; `None` for anything
/// else (other message, other transaction, malformed).
pub fn parse_binding_response(msg: &[u8], txid: [u8; 12]) -> Option<SocketAddr> {
    let header = msg.get(..20)?;
    let kind = u16::from_be_bytes([header[0], header[1]]);
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if kind != BINDING_SUCCESS || header[4..8] != MAGIC.to_be_bytes() || header[8..20] != txid {
        return None;
    }
    let mut attrs = msg.get(20..20 + len)?;
    let mut mapped = None;
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let alen = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let value = attrs.get(4..4 + alen)?;
        match kind {
            ATTR_XOR_MAPPED => return decode_address(value, Some(&header[4..20])),
            ATTR_MAPPED => mapped = decode_address(value, None),
            _ => {}
        }
        attrs = attrs.get((4 + alen).next_multiple_of(4)..).unwrap_or(&[]);
    }
    mapped
}

/// Decodes a (XOR-)MAPPED-ADDRESS value; `xor` is cookie + txid for the XOR form.
fn decode_address(v: &[u8], xor: Option<&[u8]>) -> Option<SocketAddr> {
    let key = |i: usize| xor.map_or(0, |k| k.get(i).copied().unwrap_or(0));
    let port = u16::from_be_bytes([v.get(2)? ^ key(0), v.get(3)? ^ key(1)]);
    let ip = match v.get(1)? {
        1 => {
            let b: Vec<u8> = (0..4)
                .map(|i| v.get(4 + i).map(|x| x ^ key(i)))
                .collect::<Option<_>>()?;
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        2 => {
            let b: Vec<u8> = (0..16)
                .map(|i| v.get(4 + i).map(|x| x ^ key(i)))
                .collect::<Option<_>>()?;
            let arr: [u8; 16] = b.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(arr))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(txid: [u8; 12], addr: SocketAddr) -> Vec<u8> {
        let SocketAddr::V4(a) = addr else { panic!() };
        let cookie = MAGIC.to_be_bytes();
        let port = a.port() ^ 0x2112;
        let ip: Vec<u8> = a
            .ip()
            .octets()
            .iter()
            .zip(cookie)
            .map(|(x, k)| x ^ k)
            .collect();
        let mut m = vec![0x01, 0x01, 0, 12];
        m.extend_from_slice(&cookie);
        m.extend_from_slice(&txid);
        m.extend_from_slice(&[0x00, 0x20, 0, 8, 0, 1]);
        m.extend_from_slice(&port.to_be_bytes());
        m.extend_from_slice(&ip);
        m
    }

    #[test]
    fn request_layout() {
        let r = binding_request(
            [7; 12],
            Change {
                ip: true,
                port: true,
            },
        );
        assert_eq!(r.len(), 28);
        assert_eq!(&r[..4], &[0, 1, 0, 8]);
        assert_eq!(&r[20..], &[0, 3, 0, 4, 0, 0, 0, 6]);
        assert_eq!(binding_request([7; 12], Change::default()).len(), 20);
    }

    #[test]
    fn xor_mapped_round_trip_and_rejects() {
        let addr: SocketAddr = "203.0.113.10:40001".parse().unwrap();
        let m = response([9; 12], addr);
        assert_eq!(parse_binding_response(&m, [9; 12]), Some(addr));
        assert_eq!(parse_binding_response(&m, [8; 12]), None);
        assert_eq!(parse_binding_response(&m[..25], [9; 12]), None);
        assert_eq!(parse_binding_response(&[], [9; 12]), None);
    }
}
