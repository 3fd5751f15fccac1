//! The nftables rulesets that make a router behave like each preset. The rule files
//! live in `netsim/lab/nft/` (shared with `lab.sh`); each says how it works.
//!
//! | preset | rules |
//! |---|---|
//! | `full_cone` | masquerade + dynamic map `outside port -> inside addr.port`, DNAT for anyone |
//! | `restricted_cone` | as full_cone, DNAT only from addresses the inside port sent to |
//! | `port_restricted_cone` | plain `masquerade` (conntrack: EIM, APDF) |
//! | `symmetric` | `masquerade random` (a random port per flow) |
//! | `symmetric_sequential` | `snat to WAN : numgen inc` map (ports 30000, 30001, … per flow) |
//! | `udp_blocked` | masquerade, forwarded UDP dropped |
//! | `open` | no router at all: the host has a public address |

use std::net::Ipv4Addr;

use crate::behavior::Preset;

const FULL_CONE: &str = include_str!("../../lab/nft/full_cone.nft");
const RESTRICTED_CONE: &str = include_str!("../../lab/nft/restricted_cone.nft");
const PORT_RESTRICTED_CONE: &str = include_str!("../../lab/nft/port_restricted_cone.nft");
const SYMMETRIC: &str = include_str!("../../lab/nft/symmetric.nft");
const SYMMETRIC_SEQUENTIAL: &str = include_str!("../../lab/nft/symmetric_sequential.nft");
const UDP_BLOCKED: &str = include_str!("../../lab/nft/udp_blocked.nft");
/// The chains miniupnpd adds its rules to.
pub const MINIUPNPD: &str = include_str!("../../lab/nft/miniupnpd.nft");

/// First port the sequential NAT hands out.
pub const SEQ_FIRST_PORT: u16 = 30000;
/// How many ports it cycles through.
pub const SEQ_PORTS: u16 = 1024;

/// The ruleset for a router doing `preset` with WAN address `wan`; `None` for open.
pub fn ruleset(preset: Preset, wan: Ipv4Addr) -> Option<String> {
    let template = match preset {
        Preset::Open => return None,
        Preset::FullCone => FULL_CONE,
        Preset::RestrictedCone => RESTRICTED_CONE,
        Preset::PortRestrictedCone => PORT_RESTRICTED_CONE,
        Preset::Symmetric => SYMMETRIC,
        Preset::SymmetricSequential => SYMMETRIC_SEQUENTIAL,
        Preset::UdpBlocked => UDP_BLOCKED,
    };
    Some(
        template
            .replace("@WAN_IP@", &wan.to_string())
            .replace("@SEQ_PORT_MAP@", &seq_port_map()),
    )
}

/// `0 : 30000, 1 : 30001, …` for the sequential NAT's map.
fn seq_port_map() -> String {
    (0..SEQ_PORTS)
        .map(|i| format!("{i} : {}", SEQ_FIRST_PORT + i))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled() {
        let wan = Ipv4Addr::new(203, 0, 113, 10);
        assert!(ruleset(Preset::Open, wan).is_none());
        for p in Preset::ALL.into_iter().skip(1) {
            let r = ruleset(p, wan).unwrap();
            assert!(
                !r.contains('@') || r.contains("@fullcone") || r.contains("@contacted"),
                "{p}"
            );
            assert!(r.contains("table ip amnat"), "{p}");
        }
        let seq = ruleset(Preset::SymmetricSequential, wan).unwrap();
        assert!(seq.contains("snat ip to 203.0.113.10 :") && seq.contains("1023 : 31023"));
    }
}
