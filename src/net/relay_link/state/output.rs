//! Encoding and queueing what the relay link sends: forwarded packets, hellos, replies.

use agentmesh_proto::relay::{ClientMsg, Payload};
use agentmesh_proto::NodeId;
use tracing::debug;

use super::{Phase, RelayLinkState};
use crate::net::relay_link::events::{LinkTransmit, TlsConnId};

impl RelayLinkState {
    pub(super) fn forward(&mut self, to: NodeId, packet: Vec<u8>) {
        let msg = ClientMsg::Send {
            to,
            payload: Payload(packet),
        };
        if self.push_active(&msg) {
            self.counters.sent += 1;
        } else {
            self.counters.dropped += 1;
        }
    }

    /// Sends `msg` on the transport in use; false if there is none or it does not encode.
    pub(super) fn push_active(&mut self, msg: &ClientMsg) -> bool {
        match self.phase {
            Phase::UdpUp(_) => self.push_udp(msg),
            Phase::TlsUp { conn, .. } => self.push_tls(conn, msg),
            _ => false,
        }
    }

    pub(super) fn send_udp_hello(&mut self) {
        let hello = self.udp.hello();
        self.push_udp(&hello);
    }

    pub(super) fn push_udp(&mut self, msg: &ClientMsg) -> bool {
        match self.udp.encode(msg) {
            Ok(bytes) => {
                self.transmits.push_back(LinkTransmit::Udp {
                    dst: self.config.udp_addr,
                    bytes,
                });
                true
            }
            Err(e) => {
                debug!(error = %e, "relay message does not encode");
                false
            }
        }
    }

    pub(super) fn push_tls(&mut self, conn: TlsConnId, msg: &ClientMsg) -> bool {
        let Some(session) = self
            .tls
            .as_ref()
            .filter(|l| l.conn == conn)
            .and_then(|l| l.session.as_ref())
        else {
            return false;
        };
        match session.encode(msg) {
            Ok(bytes) => {
                self.transmits.push_back(LinkTransmit::Tls { conn, bytes });
                true
            }
            Err(e) => {
                debug!(error = %e, "relay message does not encode");
                false
            }
        }
    }
}
