//! Binary framing for daemon↔daemon, daemon↔rendezvous and daemon↔relay messages.
//!
//! A frame is `length: u32 (big endian) | version: u8 | body`, where `length` counts the
//! version byte and the body, and the body is the message in bincode (standard config).
//! Frames longer than the caller's maximum are refused before any allocation. bincode
//! is used only here, so the body codec can be swapped without touching callers.
//! Rendezvous and relay messages are version [`FRAME_VERSION`]; peer frames have their
//! own version ([`crate::peer::PEER_FRAME_VERSION`]) through [`encode_version`] and
//! [`decode_version`].

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The frame format version this build writes and reads.
pub const FRAME_VERSION: u8 = 1;
/// Default maximum frame length (version byte + body), in bytes.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;
/// Bytes before the body: length and version.
pub const HEADER_LEN: usize = 5;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame is larger than allowed.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced or encoded length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The frame has length zero (no version byte).
    #[error("frame is empty")]
    Empty,
    /// Written by an incompatible version.
    #[error("frame version {got} is not supported (this build speaks {supported})")]
    Version {
        /// Version found.
        got: u8,
        /// Version supported.
        supported: u8,
    },
    /// The body does not decode as the expected message.
    #[error("frame body does not decode: {0}")]
    Decode(#[source] bincode::error::DecodeError),
    /// The body decoded but bytes were left over.
    #[error("frame body has {extra} trailing bytes")]
    Trailing {
        /// Bytes left.
        extra: usize,
    },
    /// The message could not be encoded.
    #[error("message does not encode: {0}")]
    Encode(#[source] bincode::error::EncodeError),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DEFAULT_MAX_FRAME>()
}

/// Encodes `msg` as a bare bincode body (no header).
pub fn to_bytes<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(msg, config()).map_err(FrameError::Encode)
}

/// Decodes a bare bincode body that must be consumed entirely.
pub fn from_bytes<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(FrameError::Decode)?;
    if used != body.len() {
        return Err(FrameError::Trailing {
            extra: body.len() - used,
        });
    }
    Ok(msg)
}

/// Encodes `msg` as one complete frame, refusing frames over `max` bytes. The body is
/// written in place after the header (no second buffer, no copy of a large body).
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    write_frame(msg, max, FRAME_VERSION, 256)
}

/// [`encode`] with another version byte (a message family with its own version), for
/// bodies that are cheap to walk twice: the body's size is counted first, so a large
/// body is written into a buffer of the right size (no reallocations and copies while
/// it grows) and an oversize one is refused before anything is written. (Types that
/// serialise themselves as JSON text in binary formats would pay that JSON twice: they
/// go through [`encode`].)
pub fn encode_version<T: Serialize>(
    msg: &T,
    max: usize,
    version: u8,
) -> Result<Vec<u8>, FrameError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(msg, &mut size, config()).map_err(FrameError::Encode)?;
    let len = size.bytes_written + 1;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    write_frame(msg, max, version, HEADER_LEN + size.bytes_written)
}

fn write_frame<T: Serialize>(
    msg: &T,
    max: usize,
    version: u8,
    capacity: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(&[0, 0, 0, 0, version]);
    bincode::serde::encode_into_std_write(msg, &mut out, config()).map_err(FrameError::Encode)?;
    let len = out.len() - 4;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    out[..4].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// Tries to decode one frame from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((msg, used)))` when a frame
/// was read (`used` bytes may be dropped from `buf`), and an error when the stream is
/// corrupt (the caller should close it: framing cannot be recovered).
pub fn decode<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    decode_version(buf, max, FRAME_VERSION)
}

/// [`decode`] of frames that must carry `version` (any other is [`FrameError::Version`]).
pub fn decode_version<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
    version: u8,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(header);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let Some(frame) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let (got, body) = (frame[0], &frame[1..]);
    if got != version {
        return Err(FrameError::Version {
            got,
            supported: version,
        });
    }
    let msg = from_bytes(body)?;
    Ok(Some((msg, 4 + len)))
}

/// Decodes a datagram that holds exactly one frame (UDP transports).
pub fn decode_datagram<T: DeserializeOwned>(datagram: &[u8], max: usize) -> Result<T, FrameError> {
    match decode(datagram, max)? {
        Some((msg, used)) if used == datagram.len() => Ok(msg),
        Some((_, used)) => Err(FrameError::Trailing {
            extra: datagram.len() - used,
        }),
        None => Err(FrameError::Decode(
            bincode::error::DecodeError::UnexpectedEnd { additional: 1 },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, Manifest};
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Msg {
        Ping(u64),
        Data { to: [u8; 32], payload: Vec<u8> },
    }

    #[test]
    fn stream_of_frames_decodes_piecewise() {
        let a = encode(&Msg::Ping(7), DEFAULT_MAX_FRAME).unwrap();
        let b = encode(
            &Msg::Data {
                to: [3; 32],
                payload: vec![1, 2, 3],
            },
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        let mut stream = a.clone();
        stream.extend_from_slice(&b);
        for cut in 0..a.len() {
            assert!(decode::<Msg>(&stream[..cut], DEFAULT_MAX_FRAME)
                .unwrap()
                .is_none());
        }
        let (m, used) = decode::<Msg>(&stream, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((m, used), (Msg::Ping(7), a.len()));
        let (m, _) = decode::<Msg>(&stream[used..], DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(
            m,
            Msg::Data {
                to: [3; 32],
                payload: vec![1, 2, 3]
            }
        );
    }

    #[test]
    fn oversize_and_bad_version_are_refused() {
        let big = Msg::Data {
            to: [0; 32],
            payload: vec![0; 2000],
        };
        assert!(matches!(
            encode(&big, 100),
            Err(FrameError::TooLarge { max: 100, .. })
        ));
        let frame = encode(&big, DEFAULT_MAX_FRAME).unwrap();
        assert!(matches!(
            decode::<Msg>(&frame, 100),
            Err(FrameError::TooLarge { .. })
        ));
        let mut wrong = encode(&Msg::Ping(1), DEFAULT_MAX_FRAME).unwrap();
        wrong[4] = 99;
        assert!(matches!(
            decode::<Msg>(&wrong, DEFAULT_MAX_FRAME),
            Err(FrameError::Version { got: 99, .. })
        ));
        assert!(matches!(
            decode::<Msg>(&[0, 0, 0, 0], DEFAULT_MAX_FRAME),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn versioned_frames_are_sized_before_they_are_written() {
        let big = Msg::Data {
            to: [7; 32],
            payload: vec![9; 70_000],
        };
        let v1 = encode(&big, DEFAULT_MAX_FRAME).unwrap();
        let v2 = encode_version(&big, DEFAULT_MAX_FRAME, 2).unwrap();
        assert_eq!((&v1[..4], &v1[5..]), (&v2[..4], &v2[5..]));
        assert_eq!(v2[4], 2);
        // One allocation of the frame's size (no doubling while the body was written).
        assert_eq!(v2.capacity(), v2.len());
        assert!(matches!(
            encode_version(&big, 1000, 2),
            Err(FrameError::TooLarge { max: 1000, .. })
        ));
        let (back, used) = decode_version::<Msg>(&v2, DEFAULT_MAX_FRAME, 2)
            .unwrap()
            .unwrap();
        assert_eq!((back, used), (big, v2.len()));
    }

    #[test]
    fn datagrams_must_be_exact() {
        let mut d = encode(&Msg::Ping(1), DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(
            decode_datagram::<Msg>(&d, DEFAULT_MAX_FRAME).unwrap(),
            Msg::Ping(1)
        );
        d.push(0);
        assert!(decode_datagram::<Msg>(&d, DEFAULT_MAX_FRAME).is_err());
        assert!(decode_datagram::<Msg>(&d[..3], DEFAULT_MAX_FRAME).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(n in any::<u64>(), payload in prop::collection::vec(any::<u8>(), 0..512)) {
            for msg in [Msg::Ping(n), Msg::Data { to: [n as u8; 32], payload: payload.clone() }] {
                let f = encode(&msg, DEFAULT_MAX_FRAME).unwrap();
                let (back, used) = decode::<Msg>(&f, DEFAULT_MAX_FRAME).unwrap().unwrap();
                prop_assert_eq!(used, f.len());
                prop_assert_eq!(back, msg);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Msg>(&bytes, DEFAULT_MAX_FRAME);
            let _ = decode::<Envelope>(&bytes, DEFAULT_MAX_FRAME);
            let _ = decode::<Manifest>(&bytes, DEFAULT_MAX_FRAME);
            let _ = decode_datagram::<Msg>(&bytes, 64);
            let _ = from_bytes::<crate::ErrorObject>(&bytes);
        }

        #[test]
        fn garbage_after_a_valid_header_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
            f.push(FRAME_VERSION);
            f.extend_from_slice(&body);
            let _ = decode::<Msg>(&f, DEFAULT_MAX_FRAME);
            let _ = decode::<Envelope>(&f, DEFAULT_MAX_FRAME);
            let _ = decode::<crate::DiscoverQuery>(&f, DEFAULT_MAX_FRAME);
        }
    }
}
