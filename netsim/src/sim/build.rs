//! Building the topology (hosts, interfaces, NATs, nested networks), introspecting it,
//! and the faults (NAT reboot, address change, crash, link cut).

use std::net::Ipv4Addr;

use indexmap::IndexMap;

use super::{
    Attach, Host, HostId, Iface, NatId, NatNode, Network, NetworkId, RouterId, Sim, Upstream,
};
use crate::behavior::Preset;
use crate::link::{Link, LinkConfig};
use crate::nat::{MappingView, Nat, NatConfig};

/// Errors building or changing the topology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// No such host.
    #[error("unknown host {0}")]
    UnknownHost(HostId),
    /// No such NAT.
    #[error("unknown NAT {0}")]
    UnknownNat(NatId),
    /// No such router.
    #[error("unknown router {0}")]
    UnknownRouter(RouterId),
    /// A prefix length above 32.
    #[error("bad prefix length {0}")]
    BadPrefix(u8),
    /// No such network.
    #[error("unknown network {0}")]
    UnknownNetwork(NetworkId),
    /// The host has no interface with this index.
    #[error("host {host} has no interface {iface}")]
    UnknownInterface {
        /// The host.
        host: HostId,
        /// The interface index asked for.
        iface: usize,
    },
    /// The address is already taken in that network.
    #[error("address {ip} already in use in {network}")]
    AddressInUse {
        /// The network.
        network: NetworkId,
        /// The address.
        ip: Ipv4Addr,
    },
}

/// A link, named by what it attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRef {
    /// A host interface's link to its network.
    Host {
        /// The host.
        host: HostId,
        /// Interface index (0 = first).
        iface: usize,
    },
    /// A NAT's uplink to its outside network.
    Nat(NatId),
    /// A router's uplink to its outside network.
    Router(RouterId),
}

/// A host placed behind a preset by [`Sim::add_site`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// The host.
    pub host: HostId,
    /// Its NAT (`None` for [`Preset::Open`]).
    pub nat: Option<NatId>,
}

impl Sim {
    fn claim(&mut self, net: NetworkId, ip: Ipv4Addr, at: Attach) -> Result<(), TopologyError> {
        let network = self
            .networks
            .get_mut(net.index())
            .ok_or(TopologyError::UnknownNetwork(net))?;
        if network.addrs.contains_key(&ip) {
            return Err(TopologyError::AddressInUse { network: net, ip });
        }
        network.addrs.insert(ip, at);
        Ok(())
    }

    /// Adds a host with one interface at `ip` in `net`.
    pub fn add_host(
        &mut self,
        name: &str,
        net: NetworkId,
        ip: Ipv4Addr,
        link: LinkConfig,
    ) -> Result<HostId, TopologyError> {
        let id = HostId(self.hosts.len() as u32);
        self.claim(net, ip, Attach::Host(id, 0))?;
        let link = Link::new(link, self.rng());
        self.hosts.push(Host {
            name: name.to_owned(),
            ifaces: vec![Iface { net, ip, link }],
            up: true,
            epoch: 0,
        });
        Ok(id)
    }

    /// Adds another interface to a host; returns its index. Sends use the interface whose
    /// network holds the destination, else interface 0 (the default route).
    pub fn add_interface(
        &mut self,
        host: HostId,
        net: NetworkId,
        ip: Ipv4Addr,
        link: LinkConfig,
    ) -> Result<usize, TopologyError> {
        let n = self.host_ref(host)?.ifaces.len();
        self.claim(net, ip, Attach::Host(host, n))?;
        let link = Link::new(link, self.rng());
        self.host_mut(host)?.ifaces.push(Iface { net, ip, link });
        Ok(n)
    }

    /// Adds a NAT with its external address in `outside`; its inside is a new, empty network
    /// ([`Sim::nat_inside`]) whose address space may overlap any other.
    pub fn add_nat(
        &mut self,
        name: &str,
        outside: NetworkId,
        external_ip: Ipv4Addr,
        config: NatConfig,
        uplink: LinkConfig,
    ) -> Result<NatId, TopologyError> {
        let id = NatId(self.nats.len() as u32);
        self.claim(outside, external_ip, Attach::NatOutside(id))?;
        let inside = NetworkId(self.networks.len() as u32);
        self.networks.push(Network {
            name: format!("{name}-lan"),
            upstream: Some(Upstream::Nat(id)),
            addrs: IndexMap::new(),
            routes: Vec::new(),
        });
        let rng = self.rng().fork();
        let uplink = Link::new(uplink, self.rng());
        self.nats.push(NatNode {
            name: name.to_owned(),
            nat: Nat::new(config, external_ip, rng),
            outside,
            inside,
            uplink,
            up: true,
        });
        Ok(id)
    }

    /// Adds a host behind a NAT of the given preset: the NAT at `public_ip` in `parent`,
    /// the host at `private_ip` inside it; for [`Preset::Open`] the host itself at
    /// `public_ip`. Both links get `link`.
    pub fn add_site(
        &mut self,
        name: &str,
        preset: Preset,
        parent: NetworkId,
        public_ip: Ipv4Addr,
        private_ip: Ipv4Addr,
        link: LinkConfig,
    ) -> Result<Site, TopologyError> {
        let Some(cfg) = crate::nat::NatConfig::preset(preset) else {
            let host = self.add_host(name, parent, public_ip, link)?;
            return Ok(Site { host, nat: None });
        };
        let nat = self.add_nat(&format!("{name}-nat"), parent, public_ip, cfg, link)?;
        let inside = self.nat_inside(nat)?;
        let host = self.add_host(name, inside, private_ip, link)?;
        Ok(Site {
            host,
            nat: Some(nat),
        })
    }

    /// The network on the inside of a NAT.
    pub fn nat_inside(&self, nat: NatId) -> Result<NetworkId, TopologyError> {
        Ok(self.nat_ref(nat)?.inside)
    }

    /// A host's interface addresses, with their networks, in interface order.
    pub fn host_addrs(&self, host: HostId) -> Vec<(NetworkId, Ipv4Addr)> {
        self.hosts
            .get(host.index())
            .map(|h| h.ifaces.iter().map(|i| (i.net, i.ip)).collect())
            .unwrap_or_default()
    }

    /// A host's first interface address.
    pub fn host_ip(&self, host: HostId) -> Option<Ipv4Addr> {
        self.hosts.get(host.index())?.ifaces.first().map(|i| i.ip)
    }

    /// A host's name.
    pub fn host_name(&self, host: HostId) -> Option<&str> {
        self.hosts.get(host.index()).map(|h| h.name.as_str())
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// A NAT's name.
    pub fn nat_name(&self, nat: NatId) -> Option<&str> {
        self.nats.get(nat.index()).map(|n| n.name.as_str())
    }

    /// A network's name.
    pub fn network_name(&self, net: NetworkId) -> Option<&str> {
        self.networks.get(net.index()).map(|n| n.name.as_str())
    }

    /// A NAT's state machine (configuration, external address, table).
    pub fn nat(&self, nat: NatId) -> Option<&Nat> {
        self.nats.get(nat.index()).map(|n| &n.nat)
    }

    /// A NAT's live mappings now.
    pub fn nat_mappings(&self, nat: NatId) -> Vec<MappingView> {
        self.nat(nat)
            .map(|n| n.mappings(self.now()))
            .unwrap_or_default()
    }

    /// Fault: the NAT reboots; every mapping is lost.
    pub fn reboot_nat(&mut self, nat: NatId) -> Result<(), TopologyError> {
        self.nat_mut(nat)?.nat.flush();
        Ok(())
    }

    /// Fault: the NAT stops (drops everything) or comes back (with an empty table).
    pub fn set_nat_up(&mut self, nat: NatId, up: bool) -> Result<(), TopologyError> {
        let n = self.nat_mut(nat)?;
        if up && !n.up {
            n.nat.flush();
        }
        n.up = up;
        Ok(())
    }

    /// Fault: the NAT's external address changes (mappings are lost).
    pub fn set_nat_external_ip(&mut self, nat: NatId, ip: Ipv4Addr) -> Result<(), TopologyError> {
        let (outside, old) = {
            let n = self.nat_ref(nat)?;
            (n.outside, n.nat.external_ip())
        };
        self.claim(outside, ip, Attach::NatOutside(nat))?;
        self.networks[outside.index()].addrs.shift_remove(&old);
        self.nat_mut(nat)?.nat.set_external_ip(ip);
        Ok(())
    }

    /// Fault: a host interface's address changes; returns the old one. Packets in flight to
    /// the old address are lost.
    pub fn set_host_ip(
        &mut self,
        host: HostId,
        iface: usize,
        ip: Ipv4Addr,
    ) -> Result<Ipv4Addr, TopologyError> {
        let (net, old) = {
            let i = self.host_ref(host)?.ifaces.get(iface);
            let i = i.ok_or(TopologyError::UnknownInterface { host, iface })?;
            (i.net, i.ip)
        };
        self.claim(net, ip, Attach::Host(host, iface))?;
        self.networks[net.index()].addrs.shift_remove(&old);
        self.host_mut(host)?.ifaces[iface].ip = ip;
        Ok(old)
    }

    /// Fault: the host crashes (sends nothing, receives nothing, its timers are void).
    pub fn crash_host(&mut self, host: HostId) -> Result<(), TopologyError> {
        let h = self.host_mut(host)?;
        h.up = false;
        h.epoch += 1;
        Ok(())
    }

    /// The host comes back after a crash.
    pub fn restart_host(&mut self, host: HostId) -> Result<(), TopologyError> {
        self.host_mut(host)?.up = true;
        Ok(())
    }

    /// Whether the host is up.
    pub fn host_is_up(&self, host: HostId) -> bool {
        self.hosts.get(host.index()).is_some_and(|h| h.up)
    }

    /// Fault: cuts (`false`) or restores a link.
    pub fn set_link_up(&mut self, link: LinkRef, up: bool) -> Result<(), TopologyError> {
        self.link_mut(link)?.up = up;
        Ok(())
    }

    /// Changes a link's behaviour (latency, loss...) from now on.
    pub fn set_link_config(&mut self, link: LinkRef, cfg: LinkConfig) -> Result<(), TopologyError> {
        self.link_mut(link)?.config = cfg;
        Ok(())
    }

    fn link_mut(&mut self, link: LinkRef) -> Result<&mut Link, TopologyError> {
        match link {
            LinkRef::Nat(nat) => Ok(&mut self.nat_mut(nat)?.uplink),
            LinkRef::Router(r) => self
                .routers
                .get_mut(r.index())
                .map(|r| &mut r.link)
                .ok_or(TopologyError::UnknownRouter(r)),
            LinkRef::Host { host, iface } => self
                .host_mut(host)?
                .ifaces
                .get_mut(iface)
                .map(|i| &mut i.link)
                .ok_or(TopologyError::UnknownInterface { host, iface }),
        }
    }

    fn host_ref(&self, host: HostId) -> Result<&Host, TopologyError> {
        self.hosts
            .get(host.index())
            .ok_or(TopologyError::UnknownHost(host))
    }

    fn host_mut(&mut self, host: HostId) -> Result<&mut Host, TopologyError> {
        self.hosts
            .get_mut(host.index())
            .ok_or(TopologyError::UnknownHost(host))
    }

    fn nat_ref(&self, nat: NatId) -> Result<&NatNode, TopologyError> {
        self.nats
            .get(nat.index())
            .ok_or(TopologyError::UnknownNat(nat))
    }

    fn nat_mut(&mut self, nat: NatId) -> Result<&mut NatNode, TopologyError> {
        self.nats
            .get_mut(nat.index())
            .ok_or(TopologyError::UnknownNat(nat))
    }
}
