//! Reading and writing `proto::peer` frames on QUIC streams: a buffered frame reader
//! for a receive stream, and a writer task per send stream so a slow stream never
//! holds up the others.

use agentmesh_proto::frame::{self, FrameError};
use quinn::{ReadError, RecvStream, SendStream, VarInt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

/// Largest peer frame (a request's input or a result may be large; the local API's
/// default line limit is 1 MiB, and a frame adds its envelope).
pub const MAX_PEER_FRAME: usize = 4 * 1024 * 1024;

/// Why a stream could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer reset the stream with this application code.
    #[error("stream reset by the peer (code {code})")]
    Reset {
        /// QUIC application error code.
        code: u64,
    },
    /// The connection or stream failed.
    #[error("stream failed: {0}")]
    Read(#[from] ReadError),
    /// The bytes are not a valid frame; the stream is closed.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
}

/// Reads frames from one receive stream.
pub struct FrameReader {
    recv: RecvStream,
    buf: Vec<u8>,
}

impl FrameReader {
    /// Wraps a receive stream.
    pub fn new(recv: RecvStream) -> Self {
        FrameReader {
            recv,
            buf: Vec::new(),
        }
    }

    /// The next frame, or `None` at the clean end of the stream.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, StreamError> {
        loop {
            if let Some((msg, used)) = frame::decode::<T>(&self.buf, MAX_PEER_FRAME)? {
                self.buf.drain(..used);
                return Ok(Some(msg));
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => return Err(FrameError::Empty.into()),
                Err(ReadError::Reset(code)) => {
                    return Err(StreamError::Reset {
                        code: code.into_inner(),
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Asks the peer to stop sending (cancel).
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(VarInt::from_u32(code));
    }
}

/// What a stream writer is told to do.
#[derive(Debug)]
pub enum WriteCmd {
    /// Write one encoded frame.
    Frame(Vec<u8>),
    /// Write one encoded frame, then finish the stream.
    Last(Vec<u8>),
    /// Reset the stream with this code.
    Reset(u32),
}

/// Encodes a frame for a stream.
pub(super) fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    frame::encode(msg, MAX_PEER_FRAME)
}

/// Spawns the writer task of one send stream; frames queue in the returned sender.
pub(super) fn spawn_writer(mut send: SendStream) -> mpsc::UnboundedSender<WriteCmd> {
    let (tx, mut rx) = mpsc::unbounded_channel::<WriteCmd>();
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                WriteCmd::Frame(bytes) => {
                    if send.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                WriteCmd::Last(bytes) => {
                    let _ = send.write_all(&bytes).await;
                    let _ = send.finish();
                    return;
                }
                WriteCmd::Reset(code) => {
                    let _ = send.reset(VarInt::from_u32(code));
                    return;
                }
            }
        }
        // Every sender dropped: the task ended without a final frame.
        let _ = send.finish();
    });
    tx
}
