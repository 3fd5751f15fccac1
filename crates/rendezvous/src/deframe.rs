//! Splits a byte stream into frames (see `agentmesh_proto::frame`), telling apart faults
//! the stream survives (a malformed body; an oversize frame, which is skipped) from those
//! it does not (zero length, unknown version, absurd length).

use agentmesh_proto::frame::{from_bytes, FRAME_VERSION};
use serde::de::DeserializeOwned;

use crate::core::FrameFault;

/// Frames announced larger than `max * SKIP_FACTOR` are not skipped: the stream closes.
const SKIP_FACTOR: usize = 16;

/// Incremental deframer: [`FrameReader::push`] bytes, then call [`FrameReader::next_frame`]
/// until it returns `None`.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    max: usize,
    /// Bytes of an oversize frame still to discard.
    skipping: usize,
    /// Set after a fatal fault: everything else is ignored.
    dead: bool,
}

impl FrameReader {
    /// A reader accepting frames of at most `max` bytes (version byte + body).
    pub fn new(max: usize) -> Self {
        FrameReader {
            buf: Vec::new(),
            max,
            skipping: 0,
            dead: false,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.dead {
            return;
        }
        let skip = self.skipping.min(bytes.len());
        self.skipping -= skip;
        self.buf.extend_from_slice(&bytes[skip..]);
    }

    /// Bytes buffered (bounded by the maximum frame size plus one read).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next frame, or fault, if one is complete.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Option<Result<T, FrameFault>> {
        if self.dead || self.skipping > 0 {
            return None;
        }
        let header: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(header) as usize;
        if len == 0 {
            return Some(Err(self.die()));
        }
        if len > self.max {
            return Some(Err(self.oversize(len)));
        }
        let frame = self.buf.get(4..4 + len)?;
        let result = if frame[0] != FRAME_VERSION {
            self.dead = true;
            Err(FrameFault::Corrupt)
        } else {
            from_bytes(&frame[1..]).map_err(|_| FrameFault::Malformed)
        };
        self.buf.drain(..4 + len);
        Some(result)
    }

    fn die(&mut self) -> FrameFault {
        self.dead = true;
        self.buf.clear();
        FrameFault::Corrupt
    }

    fn oversize(&mut self, len: usize) -> FrameFault {
        if len > self.max.saturating_mul(SKIP_FACTOR) {
            self.dead = true;
            self.buf.clear();
            return FrameFault::TooLarge {
                len,
                skipped: false,
            };
        }
        let have = self.buf.len() - 4;
        if have >= len {
            self.buf.drain(..4 + len);
        } else {
            self.skipping = len - have;
            self.buf.clear();
        }
        FrameFault::TooLarge { len, skipped: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::frame::{encode, DEFAULT_MAX_FRAME};
    use proptest::prelude::*;

    fn frame(n: u64) -> Vec<u8> {
        encode(&n, DEFAULT_MAX_FRAME).unwrap()
    }

    #[test]
    fn malformed_and_oversize_frames_are_survived() {
        let mut r = FrameReader::new(64);
        let mut bad = vec![0, 0, 0, 3, FRAME_VERSION, 0xFF, 0xFF];
        bad.extend(frame(7));
        let mut big = vec![0, 0, 0, 200, FRAME_VERSION];
        big.extend(vec![0u8; 199]);
        bad.extend(&big[..100]);
        r.push(&bad);
        assert_eq!(r.next_frame::<u64>(), Some(Err(FrameFault::Malformed)));
        assert_eq!(r.next_frame::<u64>(), Some(Ok(7)));
        assert_eq!(
            r.next_frame::<u64>(),
            Some(Err(FrameFault::TooLarge {
                len: 200,
                skipped: true
            }))
        );
        assert_eq!(r.next_frame::<u64>(), None);
        let mut rest = big[100..].to_vec();
        rest.extend(frame(9));
        r.push(&rest);
        assert_eq!(r.next_frame::<u64>(), Some(Ok(9)));
    }

    #[test]
    fn corrupt_streams_die() {
        let mut r = FrameReader::new(64);
        r.push(&[0, 0, 0, 2, 99, 0]);
        assert_eq!(r.next_frame::<u64>(), Some(Err(FrameFault::Corrupt)));
        r.push(&frame(1));
        assert_eq!(r.next_frame::<u64>(), None);
        let mut r = FrameReader::new(64);
        r.push(&[0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(
            r.next_frame::<u64>(),
            Some(Err(FrameFault::TooLarge { skipped: false, .. }))
        ));
    }

    proptest! {
        #[test]
        fn any_split_yields_the_same_frames(values in prop::collection::vec(any::<u64>(), 1..8), cut in 1usize..16) {
            let stream: Vec<u8> = values.iter().flat_map(|v| frame(*v)).collect();
            let mut r = FrameReader::new(64);
            let mut got = Vec::new();
            for chunk in stream.chunks(cut) {
                r.push(chunk);
                while let Some(item) = r.next_frame::<u64>() {
                    got.push(item.unwrap());
                }
            }
            prop_assert_eq!(got, values);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut r = FrameReader::new(64);
            r.push(&bytes);
            for _ in 0..100 {
                if r.next_frame::<u64>().is_none() { break; }
            }
        }
    }
}
