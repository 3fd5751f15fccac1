//! Stream (TCP/TLS) input: connection lifecycle and splitting the byte stream into frames.

use std::time::Instant;

use agentmesh_proto::frame;
use agentmesh_proto::relay::ClientMsg;

use super::{ConnId, Link, Relay, State};
use crate::store::MailStore;

impl<S: MailStore> Relay<S> {
    /// A stream connection was accepted (after TLS).
    pub fn handle_stream_open(&mut self, now: Instant, conn: ConnId) {
        self.add_pending(now, Link::Stream(conn));
    }

    /// Bytes arrived on a stream connection.
    pub fn handle_stream_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let link = Link::Stream(conn);
        let Some(ls) = self.links.get_mut(&link) else {
            return;
        };
        if matches!(ls.state, State::Closing) {
            return;
        }
        let mut buf = std::mem::take(&mut ls.inbuf);
        buf.extend_from_slice(bytes);
        let used = self.consume_frames(now, link, &buf);
        if let Some(ls) = self.links.get_mut(&link) {
            if !matches!(ls.state, State::Closing) {
                buf.drain(..used);
                ls.inbuf = buf;
            }
        }
    }

    /// Handles every whole frame at the start of `buf`; returns the bytes used.
    fn consume_frames(&mut self, now: Instant, link: Link, buf: &[u8]) -> usize {
        let mut off = 0;
        while let Some(header) = buf.get(off..off + 4) {
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if len == 0 || len > self.limits.max_frame {
                self.counters.frames_in += 1;
                self.counters.dropped_oversize += 1;
                self.close(link);
                return off;
            }
            let Some(whole) = buf.get(off..off + 4 + len) else {
                break;
            };
            off += whole.len();
            self.counters.frames_in += 1;
            self.counters.bytes_in += whole.len() as u64;
            if !self.admit(now, link, whole.len()) {
                continue;
            }
            match frame::decode::<ClientMsg>(whole, self.limits.max_frame) {
                Ok(Some((msg, _))) => self.handle_msg(now, link, msg, whole.len()),
                _ => {
                    self.counters.dropped_malformed += 1;
                    self.close(link);
                }
            }
            if !self
                .links
                .get(&link)
                .is_some_and(|l| !matches!(l.state, State::Closing))
            {
                return off;
            }
        }
        off
    }

    /// The driver closed a stream connection (or saw it close).
    pub fn handle_stream_closed(&mut self, conn: ConnId) {
        self.forget(Link::Stream(conn));
    }
}
