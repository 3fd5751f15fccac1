//! A bounded outbound queue of encoded frames (per link); frames beyond the bound are refused.

use std::collections::VecDeque;

/// Encoded frames waiting for a transport, bounded in count and bytes.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    /// Frames, oldest first, ready to write (datagram or stream frame).
    frames: VecDeque<Vec<u8>>,
    /// Sum of the frames' lengths.
    bytes: usize,
}

impl OutQueue {
    /// Appends `frame` unless that would exceed `max_frames` or `max_bytes`.
    pub(crate) fn push(&mut self, frame: Vec<u8>, max_frames: usize, max_bytes: usize) -> bool {
        if self.frames.len() >= max_frames || self.bytes + frame.len() > max_bytes {
            return false;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        true
    }

    /// Takes the oldest frame.
    pub(crate) fn pop(&mut self) -> Option<Vec<u8>> {
        let f = self.frames.pop_front()?;
        self.bytes -= f.len();
        Some(f)
    }

    /// Frames waiting.
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Bytes waiting.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_frames_and_bytes() {
        let mut q = OutQueue::default();
        assert!(q.push(vec![0; 10], 2, 15));
        assert!(!q.push(vec![0; 10], 2, 15), "bytes bound");
        assert!(q.push(vec![0; 5], 2, 15));
        assert!(!q.push(vec![], 2, 15), "frame bound");
        assert_eq!((q.len(), q.bytes()), (2, 15));
        assert_eq!(q.pop().map(|f| f.len()), Some(10));
        assert_eq!(q.bytes(), 5);
    }
}
