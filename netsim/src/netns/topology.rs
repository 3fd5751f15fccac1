//! The lab's address plan and node kinds.
//!
//! | what | address |
//! |---|---|
//! | servers in the internet namespace (coturn, test sockets) | [`SERVER_A`] 203.0.113.1, [`SERVER_B`] 198.51.100.1 |
//! | router of site *i* (0-based, declaration order), WAN `wan` | 203.0.113.(10+*i*)/24, gateway 203.0.113.1 |
//! | LAN of site *i*, bridge `lan` on the router | 10.0.(*i*+1).0/24, router .1 |
//! | host *k* of site *i*, `eth0` | 10.0.(*i*+1).(2+*k*) |
//! | host *n* of an `open` site (no NAT), `eth0` on the internet bridge | 198.51.100.(10+*n*)/24, gateway 198.51.100.1 |

use std::net::Ipv4Addr;

use crate::behavior::Preset;

/// The name of the internet namespace's node.
pub const INTERNET: &str = "internet";
/// First public server address (coturn primary, test sockets).
pub const SERVER_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Second public server address (coturn alternate, test sockets).
pub const SERVER_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// At most this many NAT sites.
pub const MAX_SITES: usize = 80;
/// At most this many hosts per site (and open hosts in total).
pub const MAX_HOSTS: usize = 100;

/// What a node of the lab is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// The simulated internet: a bridge, the servers.
    Internet,
    /// A NAT router; its node name is the site's name.
    Router {
        /// The NAT preset its nftables rules implement.
        preset: Preset,
    },
    /// A host behind a site's router, or on the internet for an `open` site.
    Host {
        /// The site's name.
        site: String,
    },
}

/// One node: a namespace and its place in the address plan.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name in the lab.
    pub name: String,
    /// Its namespace (`/run/netns/<ns>`).
    pub ns: String,
    /// What it is.
    pub kind: NodeKind,
    /// Its own address (router: WAN address; host: `eth0`).
    pub addr: Ipv4Addr,
    /// The address the internet sees for it (router WAN; host: its router's WAN or its own).
    pub public: Ipv4Addr,
    /// A router's LAN gateway address.
    pub lan: Option<Ipv4Addr>,
    /// Its uplink: (own interface, peer namespace, peer interface); none for the internet.
    pub uplink: Option<(String, String, String)>,
}

/// WAN address of site `i`'s router.
pub fn router_wan(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 10 + octet(i))
}

/// LAN gateway (router) address of site `i`.
pub fn lan_gateway(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1 + octet(i), 1)
}

/// Address of host `k` on site `i`'s LAN.
pub fn lan_host(i: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1 + octet(i), 2 + octet(k))
}

/// Address of open host `n` (on the internet bridge).
pub fn open_host(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + octet(n))
}

fn octet(i: usize) -> u8 {
    // The builder bounds indexes by MAX_SITES / MAX_HOSTS, well under 245.
    u8::try_from(i.min(200)).unwrap_or(200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_disjoint() {
        assert_eq!(router_wan(0), Ipv4Addr::new(203, 0, 113, 10));
        assert_eq!(lan_host(1, 0), Ipv4Addr::new(10, 0, 2, 2));
        assert_ne!(router_wan(MAX_SITES - 1), SERVER_A);
        assert_ne!(open_host(0), SERVER_B);
    }
}
