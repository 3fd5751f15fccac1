//! STUN binding responder (RFC 5389, and RFC 3489 requests without the magic cookie),
//! sans-IO: bytes and the sender's address in, response bytes out.
//!
//! Only Binding requests are answered. RFC 5389 requests get XOR-MAPPED-ADDRESS and
//! MAPPED-ADDRESS, plus OTHER-ADDRESS when a second observer is configured. RFC 3489
//! requests (16-byte transaction id, no cookie; e.g. Debian's `stun` client) get
//! MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS. CHANGE-REQUEST is not honoured:
//! every answer leaves from the socket the request reached.
//!
//! Written by hand rather than with a STUN crate: the maintained crates reject
//! cookie-less RFC 3489 messages, which this responder must accept; the subset needed
//! is small and property-tested below.

use std::net::{IpAddr, SocketAddr};

/// The RFC 5389 magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header length.
pub const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_RESPONSE: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_SOURCE_ADDRESS: u16 = 0x0004;
const ATTR_CHANGED_ADDRESS: u16 = 0x0005;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_OTHER_ADDRESS: u16 = 0x802C;
const SOFTWARE: &[u8] = b"agentmesh-rendezvous";

/// Why a datagram is not a Binding request this responder answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Shorter than a STUN header, or the length field disagrees with the datagram.
    #[error("not a complete STUN message ({len} bytes)")]
    Truncated {
        /// Datagram length.
        len: usize,
    },
    /// The two top bits are not zero (not STUN; e.g. QUIC).
    #[error("not a STUN message")]
    NotStun,
    /// A STUN message other than a Binding request.
    #[error("STUN message type {0:#06x} is not a binding request")]
    NotBindingRequest(u16),
}

/// A Binding request's transaction id, which also tells the dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transaction {
    /// RFC 5389: cookie then 12 bytes.
    Modern([u8; 12]),
    /// RFC 3489: 16 bytes, no cookie.
    Classic([u8; 16]),
}

/// Whether `pkt` looks like STUN (top two bits zero and the RFC 5389 cookie, or an
/// RFC 3489 Binding request). Used to demultiplex STUN from QUIC on one socket.
pub fn looks_like_stun(pkt: &[u8]) -> bool {
    if pkt.len() < HEADER_LEN || pkt[0] & 0xC0 != 0 {
        return false;
    }
    let cookie = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
    cookie == MAGIC_COOKIE || u16::from_be_bytes([pkt[0], pkt[1]]) == BINDING_REQUEST
}

/// Parses a Binding request.
pub fn parse_request(pkt: &[u8]) -> Result<Transaction, StunError> {
    let truncated = StunError::Truncated { len: pkt.len() };
    let header = pkt.get(..HEADER_LEN).ok_or(truncated)?;
    if header[0] & 0xC0 != 0 {
        return Err(StunError::NotStun);
    }
    let kind = u16::from_be_bytes([header[0], header[1]]);
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if len % 4 != 0 || HEADER_LEN + len != pkt.len() {
        return Err(truncated);
    }
    if kind != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest(kind));
    }
    let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if cookie == MAGIC_COOKIE {
        let mut id = [0u8; 12];
        id.copy_from_slice(&header[8..20]);
        Ok(Transaction::Modern(id))
    } else {
        let mut id = [0u8; 16];
        id.copy_from_slice(&header[4..20]);
        Ok(Transaction::Classic(id))
    }
}

fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// The value of a (non-XOR) address attribute.
fn address_value(addr: SocketAddr) -> Vec<u8> {
    let mut v = vec![0u8];
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(0x01);
            v.extend_from_slice(&addr.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(0x02);
            v.extend_from_slice(&addr.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
    }
    v
}

/// The value of XOR-MAPPED-ADDRESS for `addr` and transaction `id`.
fn xor_address_value(addr: SocketAddr, id: &[u8; 12]) -> Vec<u8> {
    let mut v = address_value(addr);
    let mut key = MAGIC_COOKIE.to_be_bytes().to_vec();
    key.extend_from_slice(id);
    // Port: XOR with the cookie's top half; address: XOR with cookie then transaction id.
    for (b, k) in v[2..4].iter_mut().zip(&key) {
        *b ^= k;
    }
    for (b, k) in v[4..].iter_mut().zip(&key) {
        *b ^= k;
    }
    v
}

/// Builds the Binding success response for a request from `from`, received on `local`;
/// `other` is the second observer's address, if one is configured.
pub fn binding_response(
    tx: Transaction,
    from: SocketAddr,
    local: SocketAddr,
    other: Option<SocketAddr>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(&BINDING_RESPONSE.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    match tx {
        Transaction::Modern(id) => {
            out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            out.extend_from_slice(&id);
            put_attr(
                &mut out,
                ATTR_XOR_MAPPED_ADDRESS,
                &xor_address_value(from, &id),
            );
            put_attr(&mut out, ATTR_MAPPED_ADDRESS, &address_value(from));
            if let Some(o) = other {
                put_attr(&mut out, ATTR_OTHER_ADDRESS, &address_value(o));
            }
        }
        Transaction::Classic(id) => {
            out.extend_from_slice(&id);
            put_attr(&mut out, ATTR_MAPPED_ADDRESS, &address_value(from));
            put_attr(&mut out, ATTR_SOURCE_ADDRESS, &address_value(local));
            let changed = other.unwrap_or(local);
            put_attr(&mut out, ATTR_CHANGED_ADDRESS, &address_value(changed));
        }
    }
    put_attr(&mut out, ATTR_SOFTWARE, SOFTWARE);
    let body = (out.len() - HEADER_LEN) as u16;
    out[2..4].copy_from_slice(&body.to_be_bytes());
    out
}

/// Answers `pkt` if it is a Binding request.
pub fn respond(
    pkt: &[u8],
    from: SocketAddr,
    local: SocketAddr,
    other: Option<SocketAddr>,
) -> Result<Vec<u8>, StunError> {
    parse_request(pkt).map(|tx| binding_response(tx, from, local, other))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(tx: Transaction) -> Vec<u8> {
        let mut p = BINDING_REQUEST.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 0]);
        match tx {
            Transaction::Modern(id) => {
                p.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
                p.extend_from_slice(&id);
            }
            Transaction::Classic(id) => p.extend_from_slice(&id),
        }
        p
    }

    /// Reads attributes of a response: (type, value) pairs.
    fn attrs(resp: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = HEADER_LEN;
        while i + 4 <= resp.len() {
            let kind = u16::from_be_bytes([resp[i], resp[i + 1]]);
            let len = usize::from(u16::from_be_bytes([resp[i + 2], resp[i + 3]]));
            out.push((kind, resp[i + 4..i + 4 + len].to_vec()));
            i += 4 + len.div_ceil(4) * 4;
        }
        assert_eq!(i, resp.len());
        out
    }

    fn decode_xor(v: &[u8], id: &[u8; 12]) -> SocketAddr {
        let mut key = MAGIC_COOKIE.to_be_bytes().to_vec();
        key.extend_from_slice(id);
        let port = u16::from_be_bytes([v[2] ^ key[0], v[3] ^ key[1]]);
        let raw: Vec<u8> = v[4..].iter().zip(&key).map(|(a, b)| a ^ b).collect();
        let ip: IpAddr = if v[1] == 1 {
            <[u8; 4]>::try_from(&raw[..4]).unwrap().into()
        } else {
            <[u8; 16]>::try_from(&raw[..16]).unwrap().into()
        };
        SocketAddr::new(ip, port)
    }

    #[test]
    fn classic_requests_get_mapped_address() {
        let id = [5u8; 16];
        let from: SocketAddr = "198.51.100.7:5555".parse().unwrap();
        let local: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        let resp = respond(&request(Transaction::Classic(id)), from, local, None).unwrap();
        assert_eq!(&resp[4..20], &id);
        let a = attrs(&resp);
        assert_eq!(a[0], (ATTR_MAPPED_ADDRESS, address_value(from)));
        assert_eq!(a[1], (ATTR_SOURCE_ADDRESS, address_value(local)));
        assert!(
            !looks_like_stun(&[0x80; 40]),
            "QUIC long header is not STUN"
        );
        assert!(looks_like_stun(&request(Transaction::Classic(id))));
    }

    #[test]
    fn refuses_non_requests() {
        let mut p = request(Transaction::Modern([1; 12]));
        p[1] = 0x01;
        p[0] = 0x01;
        assert_eq!(parse_request(&p), Err(StunError::NotBindingRequest(0x0101)));
        assert!(matches!(
            parse_request(&p[..10]),
            Err(StunError::Truncated { .. })
        ));
        let mut q = request(Transaction::Modern([1; 12]));
        q.push(0);
        assert!(matches!(
            parse_request(&q),
            Err(StunError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn modern_responses_carry_the_sender(id in any::<[u8; 12]>(), v6 in any::<bool>(), ip4 in any::<[u8; 4]>(), ip6 in any::<[u8; 16]>(), port in any::<u16>()) {
            let ip: IpAddr = if v6 { ip6.into() } else { ip4.into() };
            let from = SocketAddr::new(ip, port);
            let local: SocketAddr = "127.0.0.1:3478".parse().unwrap();
            let other: SocketAddr = "127.0.0.2:3479".parse().unwrap();
            let resp = respond(&request(Transaction::Modern(id)), from, local, Some(other)).unwrap();
            prop_assert_eq!(u16::from_be_bytes([resp[0], resp[1]]), BINDING_RESPONSE);
            prop_assert_eq!(usize::from(u16::from_be_bytes([resp[2], resp[3]])) + HEADER_LEN, resp.len());
            prop_assert_eq!(&resp[8..20], &id);
            let a = attrs(&resp);
            prop_assert_eq!(a[0].0, ATTR_XOR_MAPPED_ADDRESS);
            prop_assert_eq!(decode_xor(&a[0].1, &id), from);
            prop_assert_eq!(&a[2], &(ATTR_OTHER_ADDRESS, address_value(other)));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = looks_like_stun(&bytes);
            let _ = respond(&bytes, "1.2.3.4:5".parse().unwrap(), "1.2.3.4:6".parse().unwrap(), None);
        }
    }
}
