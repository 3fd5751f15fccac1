//! The framed session stream and the handshake, without request matching: used by
//! [`super::Client`], and directly by tests that misbehave on purpose.

use std::net::SocketAddr;
use std::sync::Arc;

use agentmesh_proto::frame::{encode, DEFAULT_MAX_FRAME};
use agentmesh_proto::rendezvous::{auth_transcript, ClientMsg, ServerMsg, RV_PROTOCOL_VERSION};
use agentmesh_proto::{NodeId, SecretKey};
use agentmesh_tlsid::{self as tlsid, ServerPin, ALPN_RENDEZVOUS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ClientError;
use crate::deframe::FrameReader;

pub(super) type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub(super) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A framed session stream, before or without the request machinery.
pub struct RawSession {
    pub(super) reader: Reader,
    pub(super) writer: Writer,
    pub(super) frames: FrameReader,
    /// Keeps the QUIC connection alive while the session lives.
    pub(super) conn: Option<quinn::Connection>,
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The rendezvous address (UDP for QUIC, TCP for TLS).
    pub addr: SocketAddr,
    /// The rendezvous id to pin.
    pub server: NodeId,
}

impl RawSession {
    /// Opens a QUIC session from `endpoint` (the daemon's socket), presenting `key`.
    pub async fn quic(
        endpoint: &quinn::Endpoint,
        target: &Target,
        key: &SecretKey,
    ) -> Result<Self, ClientError> {
        let cfg = tlsid::quinn_client_config(
            Some(key),
            ServerPin::Node(target.server),
            &[ALPN_RENDEZVOUS],
        )?;
        let conn = endpoint
            .connect_with(cfg, target.addr, tlsid::SERVER_NAME)?
            .await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(RawSession {
            reader: Box::new(recv),
            writer: Box::new(send),
            frames: FrameReader::new(DEFAULT_MAX_FRAME * 16),
            conn: Some(conn),
        })
    }

    /// Opens a TCP/TLS session, presenting `key`.
    pub async fn tcp(target: &Target, key: &SecretKey) -> Result<Self, ClientError> {
        let cfg = tlsid::client_config_alpn(
            Some(key),
            ServerPin::Node(target.server),
            &[ALPN_RENDEZVOUS],
        )?;
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(tlsid::server_name(), stream)
            .await?;
        let (r, w) = tokio::io::split(tls);
        Ok(RawSession {
            reader: Box::new(r),
            writer: Box::new(w),
            frames: FrameReader::new(DEFAULT_MAX_FRAME * 16),
            conn: None,
        })
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        let bytes = encode(msg, DEFAULT_MAX_FRAME * 16)?;
        self.send_bytes(&bytes).await
    }

    /// Sends raw bytes (tests use it for malformed frames).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Receives one message.
    pub async fn recv(&mut self) -> Result<ServerMsg, ClientError> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(item) = self.frames.next_frame::<ServerMsg>() {
                return item.map_err(|_| ClientError::BadFrame);
            }
            let n = self.reader.read(&mut buf).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.frames.push(&buf[..n]);
        }
    }

    /// Sends `Hello`, returning the challenge nonce.
    pub async fn hello(
        &mut self,
        target: &Target,
        node: NodeId,
        tenant: &str,
    ) -> Result<[u8; 32], ClientError> {
        let hello = ClientMsg::Hello {
            version: RV_PROTOCOL_VERSION,
            node,
            tenant: tenant.into(),
        };
        self.send(&hello).await?;
        match self.recv().await? {
            ServerMsg::Challenge { nonce, server } if server == target.server => Ok(nonce),
            ServerMsg::Challenge { server, .. } => Err(ClientError::WrongServer {
                expected: target.server,
                got: server,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Runs the whole handshake; returns the address the rendezvous observed.
    pub async fn authenticate(
        &mut self,
        target: &Target,
        key: &SecretKey,
        join: &Join,
    ) -> Result<SocketAddr, ClientError> {
        let nonce = self.hello(target, key.node_id(), &join.tenant).await?;
        let transcript = auth_transcript(&target.server, &nonce, &key.node_id(), &join.tenant);
        let auth = ClientMsg::Auth {
            nonce,
            join_token: join.token.clone(),
            signature: key.sign(&transcript),
            candidates: join.candidates.clone(),
            home_relay: join.home_relay.clone(),
        };
        self.send(&auth).await?;
        match self.recv().await? {
            ServerMsg::Welcome { observed, .. } => Ok(observed),
            other => Err(unexpected(other)),
        }
    }
}

pub(super) fn unexpected(msg: ServerMsg) -> ClientError {
    match msg {
        ServerMsg::Error { error, .. } => ClientError::Refused(error),
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

/// Tenant membership and what to announce at login.
#[derive(Debug, Clone)]
pub struct Join {
    /// Tenant name.
    pub tenant: String,
    /// Join token.
    pub token: String,
    /// Candidate addresses.
    pub candidates: Vec<SocketAddr>,
    /// Home relay.
    pub home_relay: Option<String>,
}
