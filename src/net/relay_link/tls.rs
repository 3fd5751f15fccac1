//! The TCP/TLS connection to the relay, for the relay link's driver: connect (relay key
//! pinned, ALPN relay), then one reader task cutting the stream into frames and one writer
//! task writing frames handed to it. Both report to the driver through one channel.

use std::net::SocketAddr;
use std::sync::Arc;

use agentmesh_proto::frame::{self, FrameError};
use agentmesh_proto::NodeId;
use agentmesh_tlsid::ServerPin;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::events::TlsConnId;

/// Frames queued for the writer; beyond it frames are dropped (QUIC retransmits).
const WRITE_QUEUE: usize = 1024;
/// Bytes read per call (one TLS record at most).
const READ_CHUNK: usize = 16 * 1024;

/// What a TLS connection tells the driver.
#[derive(Debug)]
pub(super) enum TlsInput {
    /// Connected and authenticated (TLS); frames can be written through `writer`.
    Opened {
        conn: TlsConnId,
        writer: mpsc::Sender<Vec<u8>>,
    },
    /// One whole frame read.
    Frame { conn: TlsConnId, bytes: Vec<u8> },
    /// Closed, failed to connect, or broke framing.
    Closed { conn: TlsConnId },
}

/// A connection being opened or open; dropping it closes the connection.
#[derive(Debug)]
pub(super) struct TlsConn {
    pub(super) conn: TlsConnId,
    writer: Option<mpsc::Sender<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl TlsConn {
    /// Starts connecting to `addr`, pinning `relay`; reports on `events`.
    pub(super) fn open(
        conn: TlsConnId,
        addr: SocketAddr,
        relay: NodeId,
        events: mpsc::Sender<TlsInput>,
    ) -> Self {
        let task = tokio::spawn(async move {
            match connect(addr, relay).await {
                Ok(stream) => run(conn, stream, &events).await,
                Err(error) => debug!(%error, "relay tls connect failed"),
            }
            let _ = events.send(TlsInput::Closed { conn }).await;
        });
        TlsConn {
            conn,
            writer: None,
            task,
        }
    }

    /// The connection is open: frames go to `writer` from now on.
    pub(super) fn set_writer(&mut self, writer: mpsc::Sender<Vec<u8>>) {
        self.writer = Some(writer);
    }

    /// Queues one frame; false if it was dropped (not open yet, or the queue is full).
    pub(super) fn send(&self, frame: Vec<u8>) -> bool {
        self.writer
            .as_ref()
            .is_some_and(|w| w.try_send(frame).is_ok())
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        // The reader ends here; the writer ends when its sender (ours) is dropped.
        self.task.abort();
    }
}

/// Why the connection could not be opened.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("tcp: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls config: {0}")]
    Config(#[from] agentmesh_tlsid::TlsIdError),
}

async fn connect(
    addr: SocketAddr,
    relay: NodeId,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    agentmesh_tlsid::install_default_provider();
    let cfg = agentmesh_tlsid::client_config_alpn(
        None,
        ServerPin::Node(relay),
        &[agentmesh_tlsid::ALPN_RELAY],
    )?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(agentmesh_tlsid::server_name(), tcp)
        .await?;
    Ok(tls)
}

/// Runs an open connection: spawns the writer, reads frames until the stream ends.
async fn run<S>(conn: TlsConnId, stream: S, events: &mpsc::Sender<TlsInput>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let writer_events = events.clone();
    tokio::spawn(async move {
        if let Err(error) = write_frames(wr, rx).await {
            debug!(%error, "relay tls write failed");
            let _ = writer_events.send(TlsInput::Closed { conn }).await;
        }
    });
    if events
        .send(TlsInput::Opened { conn, writer: tx })
        .await
        .is_err()
    {
        return;
    }
    if let Err(error) = read_frames(conn, rd, events).await {
        debug!(%error, "relay tls read ended");
    }
}

/// Writes frames until the sender is dropped, flushing whenever the queue is empty.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    while let Some(frame) = rx.recv().await {
        wr.write_all(&frame).await?;
        while let Ok(frame) = rx.try_recv() {
            wr.write_all(&frame).await?;
        }
        wr.flush().await?;
    }
    wr.shutdown().await
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    #[error("closed by the relay")]
    Eof,
    #[error("driver gone")]
    DriverGone,
}

async fn read_frames<R: AsyncRead + Unpin>(
    conn: TlsConnId,
    mut rd: R,
    events: &mpsc::Sender<TlsInput>,
) -> Result<(), ReadError> {
    let mut buf = Vec::with_capacity(READ_CHUNK * 2);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Err(ReadError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(len) = frame_len(&buf[start..], frame::DEFAULT_MAX_FRAME)? {
            let bytes = buf[start..start + len].to_vec();
            start += len;
            events
                .send(TlsInput::Frame { conn, bytes })
                .await
                .map_err(|_| ReadError::DriverGone)?;
        }
        buf.drain(..start);
    }
}

/// The length of the whole frame (header included) at the start of `buf`, once all of
/// it is there.
pub(super) fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let mut len = [0u8; 4];
    len.copy_from_slice(header);
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok((buf.len() >= 4 + len).then_some(4 + len))
}
