//! TLS identities bound to Ed25519 node keys: certificates, verifiers, rustls and quinn
//! configs.
//!
//! Every agentmesh link (rendezvous over QUIC or TCP/TLS, the blind relay, daemon↔daemon
//! QUIC) authenticates both ends by their node keys ([`SecretKey`], [`NodeId`]). This crate
//! makes a self-signed certificate whose SubjectPublicKeyInfo *is* the node key (SAN
//! [`SERVER_NAME`]), and verifiers that accept a peer only if
//! - its certificate carries an Ed25519 key that is pinned ([`ServerPin::Node`],
//!   [`ClientAuth::Pinned`]) or any node key ([`ServerPin::AnyNode`],
//!   [`ClientAuth::RequireNodeCert`]; read the id after the handshake), and
//! - its TLS 1.3 handshake signature verifies with that key (ring's Ed25519).
//!
//! TLS 1.2, CA chains, validity dates and session resumption are not used. All configs use
//! the ring provider explicitly, so they work whatever the process default is; call
//! [`install_default_provider`] anyway at start-up for other rustls users.
//!
//! # API
//! - [`server_config`] / [`client_config`] (and `_alpn` variants returning the unwrapped
//!   config) for TCP + rustls (`tokio-rustls`); connect with [`server_name`].
//! - [`quinn_server_config`] / [`quinn_client_config`] with [`transport_config`]
//!   (keep-alive 15 s, idle timeout 60 s; replace it via `transport_config(..)` on the result).
//! - [`peer_node_id_quic`] / [`peer_node_id_tls`] / [`node_id_from_certs`]: who is on the other end.
//! - ALPN ids: [`ALPN_RENDEZVOUS`], [`ALPN_RELAY`], [`ALPN_PEER`].
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! use agentmesh_proto::SecretKey;
//! use agentmesh_tlsid::{self as tlsid, ClientAuth, ServerPin};
//! type Res<T> = Result<T, Box<dyn std::error::Error>>;
//!
//! tlsid::install_default_provider();
//! let (server_key, client_key) = (SecretKey::generate_os(), SecretKey::generate_os());
//!
//! // Server: require a node certificate from every client.
//! let server_cfg =
//!     tlsid::quinn_server_config(&server_key, ClientAuth::RequireNodeCert, &[tlsid::ALPN_PEER])?;
//! let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
//! let addr = server.local_addr()?;
//!
//! // Client: accept only the server's node key, present our own.
//! let client_cfg = tlsid::quinn_client_config(
//!     Some(&client_key),
//!     ServerPin::Node(server_key.node_id()),
//!     &[tlsid::ALPN_PEER],
//! )?;
//! let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
//! client.set_default_client_config(client_cfg);
//!
//! // quinn handshakes only once the server accepts, so run both sides together.
//! let accept = async {
//!     let conn = server.accept().await.ok_or("endpoint closed")?.await?;
//!     Res::Ok(tlsid::peer_node_id_quic(&conn)?)
//! };
//! let connect = async {
//!     let conn = client.connect(addr, tlsid::SERVER_NAME)?.await?;
//!     Res::Ok(tlsid::peer_node_id_quic(&conn)?)
//! };
//! let (seen_by_server, seen_by_client) = tokio::join!(accept, connect);
//! assert_eq!(seen_by_server?, client_key.node_id());
//! assert_eq!(seen_by_client?, server_key.node_id());
//! # Res::Ok(())
//! # })
//! # }
//! ```
//! Over TCP the same with `tokio_rustls::{TlsAcceptor, TlsConnector}` built from
//! [`server_config`] / [`client_config`], connecting with [`server_name`] and reading the
//! peer with `peer_node_id_tls(stream.get_ref().1)`.
//!
//! # Refusals
//! A peer that fails a check never completes the handshake. Over QUIC the refusing side
//! reports `ConnectionError::TransportError` and the other side `ConnectionClosed`, both with
//! a crypto code (TLS alert, e.g. `crypto(2e)` certificate_unknown for an unpinned key,
//! `crypto(33)` decrypt_error for a certificate whose key did not sign the handshake, or
//! `crypto(74)` certificate_required for a client without one). Over TCP, tokio-rustls
//! returns an `io::Error` wrapping the `rustls::Error`. A TLS 1.3 client finishes its side before the server has checked the
//! client's certificate, so a refused *client* may see `connect` succeed and the connection
//! close right after.
//!
//! # Not done here
//! Pinned sets are fixed per config: to change them, build a new config (cheap: ~50 µs for
//! the certificate) and swap it in (`quinn::Endpoint::set_server_config`).

mod cert;
mod config;
mod error;
mod quic;
mod verify;

use std::sync::{Arc, Once, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;

pub use agentmesh_proto::{NodeId, SecretKey};
pub use cert::{node_id_from_cert, node_id_from_certs, NodeCert};
pub use config::{client_config, client_config_alpn, server_config, server_config_alpn};
pub use error::TlsIdError;
pub use quic::{
    peer_node_id_quic, quinn_client_config, quinn_server_config, transport_config, IDLE_TIMEOUT_MS,
    KEEP_ALIVE_INTERVAL,
};
pub use verify::{ClientAuth, NodeClientVerifier, NodeServerVerifier, ServerPin};

/// The server name every node certificate carries and every client asks for.
pub const SERVER_NAME: &str = "agentmesh";

/// ALPN id of the node ↔ rendezvous control protocol.
pub const ALPN_RENDEZVOUS: &[u8] = b"agentmesh-rv/1";
/// ALPN id of the node ↔ blind relay protocol.
pub const ALPN_RELAY: &[u8] = b"agentmesh-relay/1";
/// ALPN id of the daemon ↔ daemon peer protocol. `/2`: peer frames of version 2 (binary
/// envelopes); daemons of the `/1` build fail the handshake with "no application protocol"
/// instead of connecting and then refusing every frame.
pub const ALPN_PEER: &[u8] = b"agentmesh-peer/2";

/// Installs ring as the process-wide default rustls `CryptoProvider`. Idempotent; if another
/// provider was installed first it stays (this crate's configs use ring regardless).
pub fn install_default_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err only means a default is already installed; that is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The ring provider every config of this crate is built with.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// [`SERVER_NAME`] as the `ServerName` that rustls/tokio-rustls `connect` takes.
pub fn server_name() -> ServerName<'static> {
    // SERVER_NAME is a valid DNS name (a unit test checks); the fallback is unreachable and
    // harmless anyway, as the verifiers identify servers by key, not by name.
    ServerName::try_from(SERVER_NAME)
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// The node id of the peer of a finished rustls handshake (client or server side; pass
/// `tls_stream.get_ref().1` for a tokio-rustls stream).
pub fn peer_node_id_tls(conn: &rustls::CommonState) -> Result<NodeId, TlsIdError> {
    let certs = conn
        .peer_certificates()
        .ok_or(TlsIdError::NoPeerCertificate)?;
    node_id_from_certs(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_is_the_dns_name() {
        assert_eq!(server_name().to_str(), SERVER_NAME);
        assert!(matches!(server_name(), ServerName::DnsName(_)));
    }

    #[test]
    fn install_default_provider_is_idempotent() {
        install_default_provider();
        install_default_provider();
        assert!(CryptoProvider::get_default().is_some());
    }
}
