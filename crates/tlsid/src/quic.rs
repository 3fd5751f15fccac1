//! quinn configs built on the node-key TLS configs, the default transport settings, and
//! reading the peer's node id from a QUIC connection.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::{NodeId, SecretKey};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;

use crate::cert::node_id_from_certs;
use crate::config::{client_config_alpn, server_config_alpn};
use crate::verify::{ClientAuth, ServerPin};
use crate::TlsIdError;

/// Interval of QUIC keep-alive pings in [`transport_config`] (keeps NAT mappings open).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Idle timeout in [`transport_config`], in milliseconds (QUIC's unit).
pub const IDLE_TIMEOUT_MS: u32 = 60_000;

/// The transport settings the configs below start with: keep-alive every
/// [`KEEP_ALIVE_INTERVAL`], idle timeout [`IDLE_TIMEOUT_MS`], quinn defaults otherwise.
/// Change them with `ServerConfig::transport_config` / `ClientConfig::transport_config`.
pub fn transport_config() -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))));
    transport
}

/// A quinn server config presenting `key`'s node certificate, checking clients as
/// `client_auth` says, speaking the ALPN protocols `alpn`, with [`transport_config`].
pub fn quinn_server_config(
    key: &SecretKey,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<quinn::ServerConfig, TlsIdError> {
    let tls = server_config_alpn(key, client_auth, alpn)?;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// A quinn client config checking the server as `server_pin` says, presenting `key`'s node
/// certificate when given, offering the ALPN protocols `alpn`, with [`transport_config`].
/// Connect with [`crate::SERVER_NAME`] as the server name.
pub fn quinn_client_config(
    key: Option<&SecretKey>,
    server_pin: ServerPin,
    alpn: &[&[u8]],
) -> Result<quinn::ClientConfig, TlsIdError> {
    let tls = client_config_alpn(key, server_pin, alpn)?;
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// The node id of the peer of an established QUIC connection (verified during the
/// handshake by this crate's verifiers).
pub fn peer_node_id_quic(conn: &quinn::Connection) -> Result<NodeId, TlsIdError> {
    let identity = conn.peer_identity().ok_or(TlsIdError::NoPeerCertificate)?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsIdError::NoPeerCertificate)?;
    node_id_from_certs(&certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build_for_quic() {
        let key = SecretKey::generate_os();
        quinn_server_config(&key, ClientAuth::RequireNodeCert, &[crate::ALPN_PEER]).unwrap();
        quinn_server_config(&key, ClientAuth::None, &[crate::ALPN_RENDEZVOUS]).unwrap();
        quinn_client_config(Some(&key), ServerPin::AnyNode, &[crate::ALPN_PEER]).unwrap();
        quinn_client_config(None, ServerPin::Node(key.node_id()), &[crate::ALPN_RELAY]).unwrap();
    }
}
