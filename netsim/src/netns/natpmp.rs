//! A minimal NAT-PMP client codec (RFC 6886), sans-IO: enough to check that
//! miniupnpd on a lab router answers and maps ports.

use std::net::Ipv4Addr;

/// The NAT-PMP server port on the gateway.
pub const PORT: u16 = 5351;

/// The "external address" request.
pub fn address_request() -> [u8; 2] {
    [0, 0]
}

/// A UDP mapping request for `internal` port, suggesting `external`, for `lifetime_s`.
pub fn map_udp_request(internal: u16, external: u16, lifetime_s: u32) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[1] = 1;
    r[4..6].copy_from_slice(&internal.to_be_bytes());
    r[6..8].copy_from_slice(&external.to_be_bytes());
    r[8..12].copy_from_slice(&lifetime_s.to_be_bytes());
    r
}

/// A successful external address response's address.
pub fn parse_address_response(msg: &[u8]) -> Option<Ipv4Addr> {
    let m: &[u8; 12] = msg.get(..12)?.try_into().ok()?;
    if m[0] != 0 || m[1] != 128 || m[2..4] != [0, 0] {
        return None;
    }
    Some(Ipv4Addr::new(m[8], m[9], m[10], m[11]))
}

/// A successful UDP mapping response: (internal port, external port, lifetime).
pub fn parse_map_response(msg: &[u8]) -> Option<(u16, u16, u32)> {
    let m: &[u8; 16] = msg.get(..16)?.try_into().ok()?;
    if m[0] != 0 || m[1] != 129 || m[2..4] != [0, 0] {
        return None;
    }
    let internal = u16::from_be_bytes([m[8], m[9]]);
    let external = u16::from_be_bytes([m[10], m[11]]);
    Some((
        internal,
        external,
        u32::from_be_bytes([m[12], m[13], m[14], m[15]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec() {
        assert_eq!(
            map_udp_request(5000, 6000, 60)[..8],
            [0, 1, 0, 0, 0x13, 0x88, 0x17, 0x70]
        );
        let resp = [0, 128, 0, 0, 0, 0, 0, 9, 203, 0, 113, 10];
        assert_eq!(
            parse_address_response(&resp),
            Some(Ipv4Addr::new(203, 0, 113, 10))
        );
        let failed = [0, 128, 0, 3, 0, 0, 0, 9, 0, 0, 0, 0];
        assert_eq!(parse_address_response(&failed), None);
        let map = [
            0, 129, 0, 0, 0, 0, 0, 9, 0x13, 0x88, 0x17, 0x70, 0, 0, 0, 60,
        ];
        assert_eq!(parse_map_response(&map), Some((5000, 6000, 60)));
        assert_eq!(parse_map_response(&map[..10]), None);
    }
}
