//! Reading and writing `proto::peer` frames on QUIC streams: a buffered frame reader
//! for a receive stream, and the sending side of a task stream, which writes frames
//! into the stream's send buffer at once and hands the stream to a writer task only
//! when that buffer is full, so a slow stream never holds up the others.

use agentmesh_proto::frame::FrameError;
use agentmesh_proto::peer;
use bytes::Bytes;
use futures_util::FutureExt as _;
use quinn::{ReadError, RecvStream, SendStream, VarInt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

/// Largest peer frame (a request's input or a result may be large; the local API's
/// default line limit is 1 MiB, and a frame adds its envelope).
pub const MAX_PEER_FRAME: usize = 4 * 1024 * 1024;

/// Most a [`FrameReader`] reserves ahead for an announced frame.
const RESERVE_MAX: usize = 256 * 1024;

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
            if let Some((msg, used)) = peer::decode_frame::<T>(&self.buf, MAX_PEER_FRAME)? {
                self.buf.drain(..used);
                return Ok(Some(msg));
            }
            self.reserve_announced();
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

    /// Makes room for the frame whose header is buffered, up to [`RESERVE_MAX`] bytes: a
    /// 64 KiB frame arrives in QUIC-packet-sized chunks, and a buffer that grows by
    /// doubling copies it several times. The cap keeps a peer that announces large
    /// frames and sends nothing from holding memory it never filled.
    fn reserve_announced(&mut self) {
        let Some(header) = self.buf.get(..4) else {
            return;
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(header);
        let want = (4 + u32::from_be_bytes(len) as usize).min(RESERVE_MAX);
        self.buf.reserve_exact(want.saturating_sub(self.buf.len()));
    }

    /// Asks the peer to stop sending (cancel).
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(VarInt::from_u32(code));
    }
}

/// What a stream writer is told to do.
#[derive(Debug)]
pub enum WriteCmd {
    /// Write one encoded frame (or what is left of it).
    Frame(Bytes),
    /// Write one encoded frame, then finish the stream.
    Last(Bytes),
    /// Reset the stream with this code.
    Reset(u32),
}

/// Encodes a frame for a stream (peer frame version).
pub(super) fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    peer::encode_frame(msg, MAX_PEER_FRAME)
}

/// The sending side of one task stream.
#[derive(Debug)]
pub(super) enum StreamTx {
    /// Nothing waits: frames are written at once.
    Ready(SendStream),
    /// A writer task owns the stream (its send buffer filled up once); frames queue.
    Queued(mpsc::UnboundedSender<WriteCmd>),
}

/// Hands `frame` to the stream's send buffer as far as it takes it now, without
/// waiting and without copying (quinn keeps the buffer itself); what it did not take
/// stays in `frame`. `false` when the stream failed.
fn write_now(send: &mut SendStream, frame: &mut Bytes) -> bool {
    while !frame.is_empty() {
        match send
            .write_chunks(std::slice::from_mut(frame))
            .now_or_never()
        {
            Some(Ok(_)) => {}
            Some(Err(_)) => return false,
            None => break,
        }
    }
    true
}

impl StreamTx {
    /// A stream nothing was written to yet.
    pub(super) fn new(send: SendStream) -> Self {
        StreamTx::Ready(send)
    }

    /// Writes one encoded frame; `false` when the stream failed (drop it).
    pub(super) fn write(&mut self, bytes: Vec<u8>) -> bool {
        let mut frame = Bytes::from(bytes);
        let send = match self {
            StreamTx::Queued(tx) => return tx.send(WriteCmd::Frame(frame)).is_ok(),
            StreamTx::Ready(send) => send,
        };
        if !write_now(send, &mut frame) {
            return false;
        }
        if frame.is_empty() {
            return true;
        }
        // The send buffer is full: a writer task takes the stream and the rest.
        let (closed, _) = mpsc::unbounded_channel();
        let StreamTx::Ready(send) = std::mem::replace(self, StreamTx::Queued(closed)) else {
            return false;
        };
        let tx = spawn_writer(send);
        let ok = tx.send(WriteCmd::Frame(frame)).is_ok();
        *self = StreamTx::Queued(tx);
        ok
    }

    /// Writes the last frame of the stream, then finishes it.
    pub(super) fn write_last(self, bytes: Vec<u8>) {
        let mut frame = Bytes::from(bytes);
        match self {
            StreamTx::Queued(tx) => {
                let _ = tx.send(WriteCmd::Last(frame));
            }
            StreamTx::Ready(mut send) => {
                if !write_now(&mut send, &mut frame) {
                    return;
                }
                if frame.is_empty() {
                    let _ = send.finish();
                } else {
                    let _ = spawn_writer(send).send(WriteCmd::Last(frame));
                }
            }
        }
    }

    /// Resets the stream with `code`.
    pub(super) fn reset(self, code: u32) {
        match self {
            StreamTx::Queued(tx) => {
                let _ = tx.send(WriteCmd::Reset(code));
            }
            StreamTx::Ready(mut send) => {
                let _ = send.reset(VarInt::from_u32(code));
            }
        }
    }
}

/// Spawns the writer task of one send stream; frames queue in the returned sender.
fn spawn_writer(mut send: SendStream) -> mpsc::UnboundedSender<WriteCmd> {
    let (tx, mut rx) = mpsc::unbounded_channel::<WriteCmd>();
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                WriteCmd::Frame(frame) => {
                    if send.write_chunk(frame).await.is_err() {
                        return;
                    }
                }
                WriteCmd::Last(frame) => {
                    let _ = send.write_chunk(frame).await;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use agentmesh_proto::SecretKey;
    use agentmesh_tlsid::{ClientAuth, ServerPin, ALPN_PEER, SERVER_NAME};
    use quinn::Endpoint;

    use super::*;

    /// Transport settings that make a sender's buffer fill after 16 KiB.
    fn small_windows() -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.send_window(16 * 1024);
        t.stream_receive_window(quinn::VarInt::from_u32(16 * 1024));
        Arc::new(t)
    }

    /// A bidirectional stream from a client to a server on loopback, with `transport`
    /// on both ends; the server reads the stream to its end in the returned task. Keep
    /// the returned connection alive while the stream is used.
    async fn stream_to_reader(
        seed: u8,
        transport: Option<Arc<quinn::TransportConfig>>,
    ) -> (
        quinn::Connection,
        quinn::SendStream,
        tokio::task::JoinHandle<Vec<u8>>,
    ) {
        agentmesh_tlsid::install_default_provider();
        let (a, b) = (
            SecretKey::from_bytes(&[seed; 32]),
            SecretKey::from_bytes(&[seed + 1; 32]),
        );
        let mut server_cfg =
            agentmesh_tlsid::quinn_server_config(&a, ClientAuth::RequireNodeCert, &[ALPN_PEER])
                .unwrap();
        let mut client_cfg = agentmesh_tlsid::quinn_client_config(
            Some(&b),
            ServerPin::Node(a.node_id()),
            &[ALPN_PEER],
        )
        .unwrap();
        if let Some(t) = transport {
            server_cfg.transport_config(t.clone());
            client_cfg.transport_config(t);
        }
        let server = Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (_send, mut recv) = conn.accept_bi().await.unwrap();
            recv.read_to_end(1 << 20).await.unwrap()
        });
        let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = client
            .connect_with(client_cfg, addr, SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (send, _recv) = conn.open_bi().await.unwrap();
        (conn, send, reader)
    }

    /// What the reader got, once the stream ended (bounded).
    async fn read_all(reader: tokio::task::JoinHandle<Vec<u8>>) -> Vec<u8> {
        tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the stream ends")
            .unwrap()
    }

    #[tokio::test]
    async fn a_full_send_buffer_hands_the_stream_to_a_writer_in_order() {
        let (_conn, send, reader) = stream_to_reader(41, Some(small_windows())).await;
        let frames: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 50_000]).collect();
        let mut tx = StreamTx::new(send);
        for f in &frames[..3] {
            assert!(tx.write(f.clone()));
        }
        assert!(
            matches!(tx, StreamTx::Queued(_)),
            "a 16 KiB send buffer cannot take 150 kB at once"
        );
        tx.write_last(frames[3].clone());
        let got = read_all(reader).await;
        assert_eq!(got, frames.concat(), "every frame, in order, then the end");
    }

    #[tokio::test]
    async fn frames_that_fit_are_written_without_a_writer_task() {
        let (_conn, send, reader) = stream_to_reader(43, None).await;
        let mut tx = StreamTx::new(send);
        assert!(tx.write(b"first".to_vec()));
        assert!(matches!(tx, StreamTx::Ready(_)));
        tx.write_last(b"last".to_vec());
        assert_eq!(read_all(reader).await, b"firstlast");
    }
}
