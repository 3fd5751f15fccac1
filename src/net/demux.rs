//! Demultiplexing the daemon's one UDP socket: STUN, hole-punch probes, relay frames and
//! QUIC share it, so the mapping STUN reports is the mapping QUIC uses.
//!
//! - STUN (RFC 5389): first two bits `00` and the magic cookie `0x2112A442` at bytes 4..8.
//! - Relay frames: [`agentmesh_proto::relay::UDP_MAGIC`] (`A7 'A' 'M' 'R'`).
//! - Probes: [`PROBE_MAGIC`] (`A7 'A' 'M' 'P'`).
//! - QUIC: the fixed bit `0x40` of the first byte is set (long and short headers). The
//!   QUIC endpoint must not grease that bit (RFC 9287), or short-header packets could
//!   clear it; the daemon configures quinn with `grease_quic_bit(false)`.
//!
//! The magic bytes start with `0xA7` (`0b1010_0111`): fixed bit clear, so never QUIC; top
//! bits `10`, so never STUN.

use agentmesh_proto::relay::UDP_MAGIC;

/// First bytes of a hole-punch probe datagram.
pub const PROBE_MAGIC: [u8; 4] = [0xA7, b'A', b'M', b'P'];

/// STUN magic cookie (RFC 5389).
pub const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// What a datagram on the daemon's socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A STUN message (binding responses to our queries).
    Stun,
    /// A hole-punch probe.
    Probe,
    /// A frame from or for a relay.
    Relay,
    /// A QUIC packet.
    Quic,
    /// Nothing we speak; dropped and counted.
    Unknown,
}

/// Classifies one datagram by its first bytes.
pub fn classify(datagram: &[u8]) -> Kind {
    if datagram.starts_with(&PROBE_MAGIC) {
        return Kind::Probe;
    }
    if datagram.starts_with(&UDP_MAGIC) {
        return Kind::Relay;
    }
    match datagram.first() {
        Some(b) if b & 0xC0 == 0 && datagram.len() >= 20 && datagram[4..8] == STUN_COOKIE => {
            Kind::Stun
        }
        Some(b) if b & 0x40 != 0 => Kind::Quic,
        _ => Kind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_kind_is_recognised() {
        let mut stun = vec![0x01, 0x01, 0x00, 0x0c];
        stun.extend_from_slice(&STUN_COOKIE);
        stun.extend_from_slice(&[0; 12]);
        assert_eq!(classify(&stun), Kind::Stun);
        assert_eq!(classify(&[0xA7, b'A', b'M', b'P', 1]), Kind::Probe);
        assert_eq!(classify(&[0xA7, b'A', b'M', b'R', 1]), Kind::Relay);
        assert_eq!(classify(&[0xC3, 0, 0, 0, 1]), Kind::Quic); // long header
        assert_eq!(classify(&[0x41, 9, 9]), Kind::Quic); // short header
        assert_eq!(classify(&[0x00, 0x01, 0, 0]), Kind::Unknown); // STUN-like, no cookie
        assert_eq!(classify(&[]), Kind::Unknown);
    }

    proptest! {
        #[test]
        fn magic_prefixes_never_look_like_quic_or_stun(rest in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut p = PROBE_MAGIC.to_vec();
            p.extend_from_slice(&rest);
            prop_assert_eq!(classify(&p), Kind::Probe);
            let mut r = UDP_MAGIC.to_vec();
            r.extend_from_slice(&rest);
            prop_assert_eq!(classify(&r), Kind::Relay);
        }
    }
}
