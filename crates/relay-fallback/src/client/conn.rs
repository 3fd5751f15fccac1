//! [`RelayClient`]: a small tokio relay client over UDP or TCP/TLS (tests, benchmarks, tools).
//!
//! It wraps a [`ClientSession`] and answers the protocol itself (auth, mail acks). The
//! daemon, which owns a shared UDP socket, uses [`ClientSession`] directly instead.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::frame::{self, FrameError};
use agentmesh_proto::relay::{self as wire, ClientMsg, Payload, RefuseReason, RelayMsg, Transport};
use agentmesh_proto::{NodeId, SecretKey};
use agentmesh_tlsid::{ServerPin, TlsIdError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::session::{ClientEvent, ClientSession, SessionError};

/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Receive buffer asked for the UDP socket (Linux caps it at `net.core.rmem_max`). The
/// relay forwards a burst as fast as it arrives (a batch it receives leaves as one GSO
/// send), and the kernel's default ≈ 208 KiB holds only about 90 QUIC-sized datagrams
/// not yet read.
const UDP_RECV_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `addr` with a [`UDP_RECV_BUFFER`] receive buffer (if granted).
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = sock.set_recv_buffer_size(UDP_RECV_BUFFER) {
        tracing::debug!(error = %e, "cannot size the relay client's receive buffer");
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Socket error.
    #[error("relay connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame did not encode or decode.
    #[error("relay frame: {0}")]
    Frame(#[from] FrameError),
    /// Protocol violation by the relay.
    #[error("relay session: {0}")]
    Session(#[from] SessionError),
    /// TLS configuration.
    #[error("relay tls: {0}")]
    Tls(#[from] TlsIdError),
    /// The relay refused us.
    #[error("relay refused: {0:?}")]
    Refused(RefuseReason),
    /// No answer in time.
    #[error("relay did not answer in time")]
    Timeout,
    /// The stream was closed.
    #[error("relay closed the connection")]
    Closed,
}

/// The socket under a client.
#[derive(Debug)]
enum Io {
    /// A UDP socket connected to the relay, and a receive buffer.
    Udp(UdpSocket, Vec<u8>),
    /// A TLS stream and the bytes read but not yet decoded.
    Tls(Box<TlsStream<TcpStream>>, Vec<u8>),
}

/// A connected, authenticated relay client.
#[derive(Debug)]
pub struct RelayClient {
    /// Protocol state.
    session: ClientSession,
    /// The socket.
    io: Io,
    /// Events read while waiting for something else.
    pending: VecDeque<ClientEvent>,
}

impl RelayClient {
    /// Connects over UDP to `relay` and authenticates with `key`. Pin `relay_id` when known.
    pub async fn connect_udp(
        relay: SocketAddr,
        key: SecretKey,
        relay_id: Option<NodeId>,
    ) -> Result<Self, ClientError> {
        let bind: SocketAddr = if relay.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            "[::]:0".parse().map_err(|_| ClientError::Closed)?
        };
        let sock = bind_udp(bind)?;
        sock.connect(relay).await?;
        let session = ClientSession::new(key, relay_id, Transport::Udp);
        Self::handshake(session, Io::Udp(sock, vec![0; 65536])).await
    }

    /// Connects over TCP/TLS to `relay` and authenticates with `key`. With `relay_id` the
    /// TLS handshake only accepts that relay's key.
    pub async fn connect_tls(
        relay: SocketAddr,
        key: SecretKey,
        relay_id: Option<NodeId>,
    ) -> Result<Self, ClientError> {
        agentmesh_tlsid::install_default_provider();
        let pin = relay_id.map_or(ServerPin::AnyNode, ServerPin::Node);
        let cfg = agentmesh_tlsid::client_config_alpn(None, pin, &[agentmesh_tlsid::ALPN_RELAY])?;
        let tcp = TcpStream::connect(relay).await?;
        tcp.set_nodelay(true)?;
        let connect =
            TlsConnector::from(Arc::new(cfg)).connect(agentmesh_tlsid::server_name(), tcp);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
            .await
            .map_err(|_| ClientError::Timeout)??;
        let session = ClientSession::new(key, relay_id, Transport::Tls);
        Self::handshake(session, Io::Tls(Box::new(tls), Vec::new())).await
    }

    async fn handshake(session: ClientSession, io: Io) -> Result<Self, ClientError> {
        let mut c = Self {
            session,
            io,
            pending: VecDeque::new(),
        };
        for _ in 0..3 {
            c.send_msg(&c.session.hello()).await?;
            let wait = tokio::time::timeout(Duration::from_secs(2), c.until_ready());
            match wait.await {
                Ok(r) => return r.map(|()| c),
                Err(_) if matches!(c.io, Io::Udp(..)) => continue,
                Err(_) => break,
            }
        }
        Err(ClientError::Timeout)
    }

    async fn until_ready(&mut self) -> Result<(), ClientError> {
        loop {
            match self.recv().await? {
                ClientEvent::Ready { .. } => return Ok(()),
                ClientEvent::Refused(r) => return Err(ClientError::Refused(r)),
                other => self.pending.push_back(other),
            }
        }
    }

    /// This client's node id.
    pub fn node_id(&self) -> NodeId {
        self.session.node_id()
    }

    /// The relay's node id.
    pub fn relay_id(&self) -> Option<NodeId> {
        self.session.relay_id()
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        Ok(match &self.io {
            Io::Udp(s, _) => s.local_addr()?,
            Io::Tls(s, _) => s.get_ref().0.local_addr()?,
        })
    }

    /// Forwards `payload` to `to`.
    pub async fn send(&mut self, to: NodeId, payload: Vec<u8>) -> Result<(), ClientError> {
        self.send_msg(&ClientMsg::Send {
            to,
            payload: Payload(payload),
        })
        .await
    }

    /// Asks the relay to keep `sealed` for `to` (answered by [`ClientEvent::StoreAck`]).
    pub async fn store(&mut self, id: u64, to: NodeId, sealed: Vec<u8>) -> Result<(), ClientError> {
        self.send_msg(&ClientMsg::Store {
            id,
            to,
            sealed: Payload(sealed),
        })
        .await
    }

    /// Sends any message.
    pub async fn send_msg(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        let bytes = self.session.encode(msg)?;
        self.send_raw(&bytes).await
    }

    /// Sends raw bytes (a datagram, or bytes on the stream): for tests of bad input.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &mut self.io {
            Io::Udp(s, _) => {
                s.send(bytes).await?;
            }
            Io::Tls(s, _) => s.write_all(bytes).await?,
        }
        Ok(())
    }

    /// Flushes buffered stream writes (TLS).
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if let Io::Tls(s, _) = &mut self.io {
            s.flush().await?;
        }
        Ok(())
    }

    /// The next event; protocol replies (auth, mail acks) are sent automatically.
    pub async fn recv(&mut self) -> Result<ClientEvent, ClientError> {
        if let Some(e) = self.pending.pop_front() {
            return Ok(e);
        }
        loop {
            let msg = self.read_msg().await?;
            let (reply, event) = self.session.handle(msg)?;
            if let Some(reply) = reply {
                self.send_msg(&reply).await?;
            }
            if let Some(event) = event {
                return Ok(event);
            }
        }
    }

    /// [`RelayClient::recv`] with a timeout (`Ok(None)` when nothing came).
    pub async fn recv_timeout(&mut self, d: Duration) -> Result<Option<ClientEvent>, ClientError> {
        match tokio::time::timeout(d, self.recv()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    async fn read_msg(&mut self) -> Result<RelayMsg, ClientError> {
        let max = frame::DEFAULT_MAX_FRAME;
        match &mut self.io {
            Io::Udp(s, buf) => loop {
                let n = s.recv(buf).await?;
                if let Ok(m) = wire::decode_datagram(&buf[..n], max) {
                    return Ok(m);
                }
            },
            Io::Tls(s, buf) => loop {
                if let Some((m, used)) = frame::decode(buf, max)? {
                    buf.drain(..used);
                    return Ok(m);
                }
                let mut chunk = [0u8; 16384];
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(ClientError::Closed);
                }
                buf.extend_from_slice(&chunk[..n]);
            },
        }
    }
}
