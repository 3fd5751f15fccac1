//! How the relay link reacts to what the relay says: received packets, `Welcome`, pongs,
//! `Restarting` and refusals, and the UDP retry timers while on TLS.

use std::time::{Duration, Instant};

use agentmesh_proto::relay::{ClientMsg, RefuseReason};
use agentmesh_relay::client::ClientEvent;
use tracing::debug;

use super::timers::{Alive, Hello, Probe};
use super::{Phase, RelayLinkState};
use crate::net::relay_link::events::{DisconnectReason, LinkEvent};
use crate::net::relay_link::RelayTransport;

impl RelayLinkState {
    pub(super) fn on_event(&mut self, now: Instant, via: RelayTransport, event: ClientEvent) {
        match event {
            ClientEvent::Recv { from, payload } => {
                self.counters.received += 1;
                self.events.push_back(LinkEvent::Received {
                    from,
                    packet: payload,
                });
            }
            ClientEvent::Ready { .. } => self.on_ready(now, via),
            ClientEvent::Pong(n) => self.on_pong(via, n),
            ClientEvent::PeerGone(node) => {
                self.counters.peer_gone += 1;
                self.events.push_back(LinkEvent::PeerGone(node));
            }
            ClientEvent::Mail { from, sealed } => {
                self.events.push_back(LinkEvent::Mail { from, sealed })
            }
            ClientEvent::Restarting { reconnect_after_ms } => {
                let after = Duration::from_millis(u64::from(reconnect_after_ms));
                self.on_ended(now, via, DisconnectReason::Restarting { after });
            }
            ClientEvent::Refused(reason) => {
                self.on_ended(now, via, DisconnectReason::Refused(reason))
            }
            ClientEvent::StoreAck { id, outcome } => self.on_store_ack(id, outcome),
            ClientEvent::Health { .. } => {}
        }
    }

    /// `Restarting` or `Refused` arrived over `via`.
    pub(super) fn on_ended(&mut self, now: Instant, via: RelayTransport, reason: DisconnectReason) {
        if self.transport() == Some(via) {
            if via == RelayTransport::Tls && self.udp_probe_pending() {
                // Our own UDP retry replaced the TLS link: its Welcome is on the way.
                self.close_tls();
                let hello = self.probe_as_hello(now);
                self.events.push_back(LinkEvent::Disconnected {
                    transport: via,
                    reason,
                });
                self.phase = Phase::UdpHello(hello);
                return;
            }
            self.lost(now, reason);
            return;
        }
        let connecting = matches!(
            (&self.phase, via),
            (Phase::UdpHello(_), RelayTransport::Udp)
                | (Phase::TlsConnecting { .. }, RelayTransport::Tls)
        );
        if !connecting {
            return; // About a link we no longer use.
        }
        match reason {
            DisconnectReason::Refused(RefuseReason::AuthFailed) if via == RelayTransport::Udp => {
                // A stale nonce (hello repeated): say hello again.
                if let Phase::UdpHello(h) = &mut self.phase {
                    h.next_hello = Some(now);
                }
            }
            DisconnectReason::Restarting { after } => {
                self.close_tls();
                self.wait(now, after);
            }
            _ => {
                self.close_tls();
                self.fail(now);
            }
        }
    }

    pub(super) fn on_ready(&mut self, now: Instant, via: RelayTransport) {
        let alive = Alive::new(now, self.config.ping_interval);
        match via {
            RelayTransport::Udp => {
                if matches!(self.phase, Phase::UdpUp(_)) {
                    return;
                }
                self.close_tls();
                self.phase = Phase::UdpUp(alive);
            }
            RelayTransport::Tls => {
                let Phase::TlsConnecting { conn, .. } = self.phase else {
                    return;
                };
                let probe = Probe::Idle {
                    at: now + self.config.udp_retry,
                };
                self.phase = Phase::TlsUp { conn, alive, probe };
            }
        }
        debug!(transport = ?via, "relay link connected");
        self.preferred = via;
        self.backoff = self.config.backoff_min;
        self.counters.connects += 1;
        self.events
            .push_back(LinkEvent::Connected { transport: via });
        while let Some((peer, packet)) = self.queue.pop_front() {
            self.forward(peer, packet);
        }
        self.resend_stores(now);
    }

    pub(super) fn on_pong(&mut self, via: RelayTransport, n: u64) {
        if self.transport() != Some(via) {
            return;
        }
        if let Phase::UdpUp(alive) | Phase::TlsUp { alive, .. } = &mut self.phase {
            alive.pong(n);
        }
    }

    /// The relay's challenge over UDP was answered: stop repeating hellos.
    /// The relay's challenge was answered: the next hello waits a full retry interval,
    /// and comes only if the answer or the `Welcome` was lost (the relay then challenges
    /// again; a stale answer is refused and answered by a new hello).
    pub(super) fn on_challenge_answered(&mut self, now: Instant) {
        let retry = self.config.hello_retry;
        match &mut self.phase {
            Phase::UdpHello(h)
            | Phase::TlsUp {
                probe: Probe::Hello(h),
                ..
            } => h.next_hello = Some(now + retry),
            _ => {}
        }
    }

    pub(super) fn udp_probe_pending(&self) -> bool {
        matches!(
            self.phase,
            Phase::TlsUp {
                probe: Probe::Hello(_),
                ..
            }
        )
    }

    pub(super) fn probe_as_hello(&self, now: Instant) -> Hello {
        match &self.phase {
            Phase::TlsUp {
                probe: Probe::Hello(h),
                ..
            } => h.clone(),
            _ => Hello {
                next_hello: Some(now),
                give_up: now + self.config.tls_after,
            },
        }
    }

    // ---- timers of an established link ----

    pub(super) fn tick_alive(&mut self, now: Instant) {
        let (misses, ping) = {
            let (Phase::UdpUp(alive) | Phase::TlsUp { alive, .. }) = &mut self.phase else {
                return;
            };
            alive.tick(now, self.config.ping_interval, self.config.pong_timeout)
        };
        if misses >= self.config.ping_misses.max(1) {
            self.lost(now, DisconnectReason::Silent);
            return;
        }
        if let Some(n) = ping {
            self.push_active(&ClientMsg::Ping { n });
        }
    }

    pub(super) fn tick_probe(&mut self, now: Instant) {
        let Phase::TlsUp { probe, .. } = &self.phase else {
            return;
        };
        match probe {
            Probe::Idle { at } if now >= *at => {
                debug!("relay: on tls, trying udp again");
                let hello = self.new_hello(now);
                self.set_probe(Probe::Hello(hello));
            }
            Probe::Hello(h) if now >= h.give_up => {
                let at = now + self.config.udp_retry;
                self.set_probe(Probe::Idle { at });
            }
            Probe::Hello(h) if h.next_hello.is_some_and(|t| now >= t) => {
                let mut h = h.clone();
                h.next_hello = Some(now + self.config.hello_retry);
                self.set_probe(Probe::Hello(h));
                self.send_udp_hello();
            }
            _ => {}
        }
    }

    pub(super) fn set_probe(&mut self, new: Probe) {
        if let Phase::TlsUp { probe, .. } = &mut self.phase {
            *probe = new;
        }
    }
}
