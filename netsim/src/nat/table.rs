//! The NAT mapping table: outbound translation (creating and refreshing mappings),
//! inbound translation (filtering), hairpinning, expiry, size limit and reboot.

use std::net::{Ipv4Addr, SocketAddrV4};

use indexmap::{IndexMap, IndexSet};

use super::config::{NatConfig, PortAlloc, Refresh};
use crate::behavior::{Filtering, Mapping};
use crate::rng::SimRng;
use crate::time::SimTime;

/// Why a NAT dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum NatDrop {
    /// The firewall drops all UDP.
    #[error("UDP blocked")]
    UdpBlocked,
    /// The mapping table is full.
    #[error("mapping table full")]
    TableFull,
    /// No free external port.
    #[error("no free external port")]
    PortsExhausted,
    /// Inbound packet to an external port with no (live) mapping.
    #[error("no mapping for the external port")]
    NoMapping,
    /// Inbound packet the filtering behaviour refuses.
    #[error("filtered")]
    Filtered,
    /// Packet to the NAT's own external address from inside, with hairpinning off.
    #[error("hairpinning disabled")]
    HairpinDisabled,
}

/// What a mapping is keyed by besides the internal endpoint (set by the mapping behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RemoteKey {
    Any,
    Addr(Ipv4Addr),
    AddrPort(SocketAddrV4),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct MapKey {
    internal: SocketAddrV4,
    remote: RemoteKey,
}

#[derive(Debug, Clone)]
struct Entry {
    external_port: u16,
    /// Remote endpoints the inside has sent to through this mapping (for filtering).
    permits: IndexSet<SocketAddrV4>,
    last_active: SimTime,
}

/// A read-only view of one mapping, for introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingView {
    /// The inside endpoint.
    pub internal: SocketAddrV4,
    /// The outside endpoint it is translated to.
    pub external: SocketAddrV4,
    /// Remote endpoints the inside has sent to (what filtering admits).
    pub permits: Vec<SocketAddrV4>,
    /// When it expires unless refreshed.
    pub expires_at: SimTime,
}

/// A NAT: its configuration, external address and mapping table.
#[derive(Debug, Clone)]
pub struct Nat {
    config: NatConfig,
    external_ip: Ipv4Addr,
    mappings: IndexMap<MapKey, Entry>,
    by_port: IndexMap<u16, MapKey>,
    next_port: u16,
    rng: SimRng,
}

impl Nat {
    /// A NAT with an empty table. `rng` drives random port choices.
    pub fn new(config: NatConfig, external_ip: Ipv4Addr, mut rng: SimRng) -> Nat {
        let (lo, hi) = (*config.port_range.start(), *config.port_range.end());
        let span = u64::from(hi.saturating_sub(lo)) + 1;
        let next_port = lo.saturating_add(rng.below(span) as u16);
        Nat {
            config,
            external_ip,
            mappings: IndexMap::new(),
            by_port: IndexMap::new(),
            next_port,
            rng,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// The external (outside) address.
    pub fn external_ip(&self) -> Ipv4Addr {
        self.external_ip
    }

    /// Changes the external address; every mapping is lost, as on a real renumbering.
    pub fn set_external_ip(&mut self, ip: Ipv4Addr) {
        self.external_ip = ip;
        self.flush();
    }

    /// Forgets every mapping (a reboot).
    pub fn flush(&mut self) {
        self.mappings.clear();
        self.by_port.clear();
    }

    /// Number of mappings held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.mappings.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }

    /// Translates an outbound packet from `internal` to `remote`, creating or refreshing its
    /// mapping; returns the external source endpoint.
    pub fn outbound(
        &mut self,
        now: SimTime,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Result<SocketAddrV4, NatDrop> {
        if self.config.block_udp {
            return Err(NatDrop::UdpBlocked);
        }
        let key = MapKey {
            internal,
            remote: match self.config.mapping {
                Mapping::EndpointIndependent => RemoteKey::Any,
                Mapping::AddressDependent => RemoteKey::Addr(*remote.ip()),
                Mapping::AddressAndPortDependent => RemoteKey::AddrPort(remote),
            },
        };
        if self
            .mappings
            .get(&key)
            .is_some_and(|e| self.expired(e, now))
        {
            self.remove(&key);
        }
        if !self.mappings.contains_key(&key) {
            self.create(key, now)?;
        }
        let entry = self.mappings.get_mut(&key).ok_or(NatDrop::NoMapping)?;
        entry.last_active = now;
        entry.permits.insert(remote);
        Ok(SocketAddrV4::new(self.external_ip, entry.external_port))
    }

    /// Translates an inbound packet from `remote` to `external_port`; returns the internal
    /// destination if the mapping exists and its filtering admits `remote`.
    pub fn inbound(
        &mut self,
        now: SimTime,
        remote: SocketAddrV4,
        external_port: u16,
    ) -> Result<SocketAddrV4, NatDrop> {
        if self.config.block_udp {
            return Err(NatDrop::UdpBlocked);
        }
        let key = *self.by_port.get(&external_port).ok_or(NatDrop::NoMapping)?;
        let entry = self.mappings.get(&key).ok_or(NatDrop::NoMapping)?;
        if self.expired(entry, now) {
            self.remove(&key);
            return Err(NatDrop::NoMapping);
        }
        let admitted = match self.config.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => entry.permits.iter().any(|p| p.ip() == remote.ip()),
            Filtering::AddressAndPortDependent => entry.permits.contains(&remote),
        };
        if !admitted {
            return Err(NatDrop::Filtered);
        }
        if self.config.refresh == Refresh::Bidirectional {
            if let Some(e) = self.mappings.get_mut(&key) {
                e.last_active = now;
            }
        }
        Ok(key.internal)
    }

    /// A packet from inside to the NAT's own external address: translated out and back in.
    /// Returns (external source, internal destination).
    pub fn hairpin(
        &mut self,
        now: SimTime,
        internal: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Result<(SocketAddrV4, SocketAddrV4), NatDrop> {
        if !self.config.hairpin {
            return Err(NatDrop::HairpinDisabled);
        }
        let src = self.outbound(now, internal, dst)?;
        let to = self.inbound(now, src, dst.port())?;
        Ok((src, to))
    }

    /// The live mappings at `now`, oldest first.
    pub fn mappings(&self, now: SimTime) -> Vec<MappingView> {
        self.mappings
            .iter()
            .filter(|(_, e)| !self.expired(e, now))
            .map(|(k, e)| MappingView {
                internal: k.internal,
                external: SocketAddrV4::new(self.external_ip, e.external_port),
                permits: e.permits.iter().copied().collect(),
                expires_at: e.last_active + self.config.mapping_timeout,
            })
            .collect()
    }

    fn expired(&self, e: &Entry, now: SimTime) -> bool {
        now.saturating_since(e.last_active) >= self.config.mapping_timeout
    }

    fn remove(&mut self, key: &MapKey) {
        if let Some(e) = self.mappings.shift_remove(key) {
            self.by_port.swap_remove(&e.external_port);
        }
    }

    fn create(&mut self, key: MapKey, now: SimTime) -> Result<(), NatDrop> {
        if self.mappings.len() >= self.config.max_mappings {
            self.sweep(now);
            if self.mappings.len() >= self.config.max_mappings {
                return Err(NatDrop::TableFull);
            }
        }
        let port = self.allocate(key.internal.port())?;
        self.by_port.insert(port, key);
        let entry = Entry {
            external_port: port,
            permits: IndexSet::new(),
            last_active: now,
        };
        self.mappings.insert(key, entry);
        Ok(())
    }

    fn sweep(&mut self, now: SimTime) {
        let dead: Vec<MapKey> = self
            .mappings
            .iter()
            .filter(|(_, e)| self.expired(e, now))
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            self.remove(&k);
        }
    }

    fn allocate(&mut self, internal_port: u16) -> Result<u16, NatDrop> {
        let range = self.config.port_range.clone();
        match self.config.port_alloc {
            PortAlloc::Preserve if range.contains(&internal_port) => {
                if !self.by_port.contains_key(&internal_port) {
                    return Ok(internal_port);
                }
            }
            PortAlloc::Random => {
                let span = u64::from(range.end().saturating_sub(*range.start())) + 1;
                for _ in 0..64 {
                    let p = range.start().saturating_add(self.rng.below(span) as u16);
                    if !self.by_port.contains_key(&p) {
                        return Ok(p);
                    }
                }
            }
            PortAlloc::Preserve | PortAlloc::Sequential => {}
        }
        self.next_free()
    }

    fn next_free(&mut self) -> Result<u16, NatDrop> {
        let range = self.config.port_range.clone();
        let span = usize::from(range.end().saturating_sub(*range.start())) + 1;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p >= *range.end() || p < *range.start() {
                *range.start()
            } else {
                p + 1
            };
            if range.contains(&p) && !self.by_port.contains_key(&p) {
                return Ok(p);
            }
        }
        Err(NatDrop::PortsExhausted)
    }
}

#[cfg(test)]
mod tests;
