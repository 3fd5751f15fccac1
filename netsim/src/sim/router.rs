//! Plain routers: a subnet (say a datacenter's 203.0.113.64/26) behind a router with its
//! own link, routed without translation from the network outside it.

use std::net::Ipv4Addr;

use indexmap::IndexMap;

use super::{Network, NetworkId, Route, RouterId, RouterNode, Sim, TopologyError, Upstream};
use crate::link::{Link, LinkConfig};

impl Network {
    /// The router whose subnet holds `ip` (longest prefix wins).
    pub(crate) fn route(&self, ip: Ipv4Addr) -> Option<RouterId> {
        self.routes
            .iter()
            .filter(|r| in_prefix(ip, r.prefix, r.len))
            .max_by_key(|r| r.len)
            .map(|r| r.router)
    }
}

fn in_prefix(ip: Ipv4Addr, prefix: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(prefix) & mask
}

impl Sim {
    /// Adds a router in `outside` serving the subnet `prefix/len`; returns it. Its inside is
    /// a new network ([`Sim::router_inside`]) for addresses in that subnet; packets to them
    /// from `outside` cross the router's link, and the rest goes back out through it.
    pub fn add_router(
        &mut self,
        name: &str,
        outside: NetworkId,
        prefix: Ipv4Addr,
        len: u8,
        link: LinkConfig,
    ) -> Result<RouterId, TopologyError> {
        if len > 32 {
            return Err(TopologyError::BadPrefix(len));
        }
        if self.networks.get(outside.index()).is_none() {
            return Err(TopologyError::UnknownNetwork(outside));
        }
        let id = RouterId(self.routers.len() as u32);
        let inside = NetworkId(self.networks.len() as u32);
        self.networks.push(Network {
            name: format!("{name}-subnet"),
            upstream: Some(Upstream::Router(id)),
            addrs: IndexMap::new(),
            routes: Vec::new(),
        });
        self.networks[outside.index()].routes.push(Route {
            prefix,
            len,
            router: id,
        });
        let link = Link::new(link, self.rng());
        self.routers.push(RouterNode {
            name: name.to_owned(),
            outside,
            inside,
            link,
        });
        Ok(id)
    }

    /// The subnet behind a router.
    pub fn router_inside(&self, router: RouterId) -> Result<NetworkId, TopologyError> {
        self.routers
            .get(router.index())
            .map(|r| r.inside)
            .ok_or(TopologyError::UnknownRouter(router))
    }

    /// A router's name.
    pub fn router_name(&self, router: RouterId) -> Option<&str> {
        self.routers.get(router.index()).map(|r| r.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match() {
        let p = Ipv4Addr::new(203, 0, 113, 64);
        assert!(in_prefix(Ipv4Addr::new(203, 0, 113, 100), p, 26));
        assert!(!in_prefix(Ipv4Addr::new(203, 0, 113, 128), p, 26));
        assert!(in_prefix(Ipv4Addr::new(1, 2, 3, 4), p, 0));
        assert!(in_prefix(p, p, 32));
    }
}
