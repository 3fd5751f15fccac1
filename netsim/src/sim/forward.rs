//! Moving packets: sending from a host, crossing links, routing inside a network,
//! NAT translation on the way out, in and back (hairpin), and delivery.

use std::net::{SocketAddr, SocketAddrV4};

use bytes::Bytes;

use super::{
    Attach, Datagram, Event, HostId, LinkRef, NatId, NetworkId, Output, Packet, Sim, Upstream,
};
use crate::link::{Dir, Transit};
use crate::trace::{DropReason, TraceKind};

/// Why [`Sim::send`] refused a datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No such host.
    #[error("unknown host {0}")]
    UnknownHost(HostId),
    /// The host is crashed.
    #[error("host {0} is down")]
    HostDown(HostId),
    /// The simulated networks are IPv4 only.
    #[error("IPv6 destination {0} is not simulated")]
    Ipv6Unsupported(SocketAddr),
}

impl Sim {
    /// Sends a UDP datagram from `host`'s port `from_port` to `to`, now. It leaves through
    /// the interface whose network holds `to`, else the first interface.
    pub fn send(
        &mut self,
        host: HostId,
        from_port: u16,
        to: SocketAddr,
        data: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        let SocketAddr::V4(dst) = to else {
            return Err(SendError::Ipv6Unsupported(to));
        };
        let h = self
            .hosts
            .get(host.index())
            .ok_or(SendError::UnknownHost(host))?;
        if !h.up {
            return Err(SendError::HostDown(host));
        }
        let iface = h
            .ifaces
            .iter()
            .position(|i| self.networks[i.net.index()].addrs.contains_key(dst.ip()))
            .unwrap_or(0);
        let Some(i) = h.ifaces.get(iface) else {
            return Err(SendError::UnknownHost(host));
        };
        let (net, src) = (i.net, SocketAddrV4::new(i.ip, from_port));
        let pkt = Packet {
            id: self.new_packet_id(),
            src,
            dst,
            data: data.into(),
        };
        self.record(TraceKind::Sent(host), &pkt);
        self.cross(LinkRef::Host { host, iface }, Dir::Up, pkt, |pkt| {
            Event::OnNetwork {
                net,
                pkt,
                from_gateway: false,
            }
        });
        Ok(())
    }

    pub(crate) fn handle(&mut self, event: Event) {
        match event {
            Event::Timer { host, token, epoch } => {
                let live = self
                    .hosts
                    .get(host.index())
                    .is_some_and(|h| h.up && h.epoch == epoch);
                if live {
                    let at = self.now();
                    self.push_output(Output::Timer { host, token, at });
                }
            }
            Event::OnNetwork {
                net,
                pkt,
                from_gateway,
            } => self.on_network(net, pkt, from_gateway),
            Event::AtHost { host, pkt } => self.deliver(host, pkt),
            Event::AtNatOutside { nat, pkt } => self.nat_inbound(nat, pkt),
        }
    }

    fn drop_packet(&mut self, pkt: &Packet, reason: DropReason) {
        tracing::trace!(packet = pkt.id, ?reason, "dropped");
        self.record(TraceKind::Dropped(reason), pkt);
    }

    /// Offers `pkt` to a link; schedules `make(pkt)` at its arrival (twice if duplicated).
    fn cross(&mut self, link: LinkRef, dir: Dir, pkt: Packet, make: impl Fn(Packet) -> Event) {
        let now = self.now();
        let len = pkt.data.len();
        let transit = match link {
            LinkRef::Host { host, iface } => self.hosts[host.index()].ifaces[iface]
                .link
                .transit(dir, now, len),
            LinkRef::Nat(nat) => self.nats[nat.index()].uplink.transit(dir, now, len),
            LinkRef::Router(r) => self.routers[r.index()].link.transit(dir, now, len),
        };
        match transit {
            Transit::Dropped(reason) => self.drop_packet(&pkt, reason),
            Transit::Arrives { at, duplicate } => {
                if let Some(d) = duplicate {
                    self.record(TraceKind::Duplicated, &pkt);
                    self.schedule(d, make(pkt.clone()));
                }
                self.schedule(at, make(pkt));
            }
        }
    }

    fn on_network(&mut self, net: NetworkId, pkt: Packet, from_gateway: bool) {
        self.capture(net, &pkt);
        self.record(TraceKind::OnNetwork(net), &pkt);
        let network = &self.networks[net.index()];
        let attach = network.addrs.get(pkt.dst.ip()).copied();
        let route = network.route(*pkt.dst.ip());
        match (attach, route, network.upstream) {
            (Some(Attach::Host(host, iface)), _, _) => {
                self.cross(LinkRef::Host { host, iface }, Dir::Down, pkt, |pkt| {
                    Event::AtHost { host, pkt }
                });
            }
            (Some(Attach::NatOutside(nat)), _, _) => {
                self.cross(LinkRef::Nat(nat), Dir::Down, pkt, |pkt| {
                    Event::AtNatOutside { nat, pkt }
                });
            }
            (None, Some(r), _) => {
                let inside = self.routers[r.index()].inside;
                self.cross(LinkRef::Router(r), Dir::Down, pkt, |pkt| Event::OnNetwork {
                    net: inside,
                    pkt,
                    from_gateway: true,
                });
            }
            (None, None, Some(Upstream::Nat(gw))) if !from_gateway => self.nat_outbound(gw, pkt),
            (None, None, Some(Upstream::Router(r))) if !from_gateway => {
                let outside = self.routers[r.index()].outside;
                self.cross(LinkRef::Router(r), Dir::Up, pkt, |pkt| Event::OnNetwork {
                    net: outside,
                    pkt,
                    from_gateway: false,
                });
            }
            (None, _, _) => self.drop_packet(&pkt, DropReason::NoRoute),
        }
    }

    fn nat_outbound(&mut self, id: NatId, mut pkt: Packet) {
        let now = self.now();
        let node = &mut self.nats[id.index()];
        if !node.up {
            return self.drop_packet(&pkt, DropReason::NodeDown);
        }
        let (inside, outside) = (node.inside, node.outside);
        if *pkt.dst.ip() == node.nat.external_ip() {
            match node.nat.hairpin(now, pkt.src, pkt.dst) {
                Ok((src, to)) => {
                    pkt.src = src;
                    pkt.dst = to;
                    self.record(TraceKind::TranslatedIn(id), &pkt);
                    self.on_network(inside, pkt, true);
                }
                Err(e) => self.drop_packet(&pkt, DropReason::Nat(e)),
            }
            return;
        }
        match node.nat.outbound(now, pkt.src, pkt.dst) {
            Ok(src) => {
                pkt.src = src;
                self.record(TraceKind::TranslatedOut(id), &pkt);
                self.cross(LinkRef::Nat(id), Dir::Up, pkt, |pkt| Event::OnNetwork {
                    net: outside,
                    pkt,
                    from_gateway: false,
                });
            }
            Err(e) => self.drop_packet(&pkt, DropReason::Nat(e)),
        }
    }

    fn nat_inbound(&mut self, id: NatId, mut pkt: Packet) {
        let now = self.now();
        let node = &mut self.nats[id.index()];
        if !node.up {
            return self.drop_packet(&pkt, DropReason::NodeDown);
        }
        let inside = node.inside;
        match node.nat.inbound(now, pkt.src, pkt.dst.port()) {
            Ok(to) => {
                pkt.dst = to;
                self.record(TraceKind::TranslatedIn(id), &pkt);
                self.on_network(inside, pkt, true);
            }
            Err(e) => self.drop_packet(&pkt, DropReason::Nat(e)),
        }
    }

    fn deliver(&mut self, host: HostId, pkt: Packet) {
        let Some(h) = self.hosts.get(host.index()) else {
            return self.drop_packet(&pkt, DropReason::NoRoute);
        };
        if !h.up {
            return self.drop_packet(&pkt, DropReason::NodeDown);
        }
        if !h.ifaces.iter().any(|i| i.ip == *pkt.dst.ip()) {
            return self.drop_packet(&pkt, DropReason::NoRoute);
        }
        self.record(TraceKind::Delivered(host), &pkt);
        let at = self.now();
        self.push_output(Output::Datagram(Datagram {
            host,
            local: SocketAddr::V4(pkt.dst),
            from: SocketAddr::V4(pkt.src),
            data: pkt.data,
            at,
        }));
    }
}
