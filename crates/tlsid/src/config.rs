//! rustls configs for node-key identities: TLS 1.3 only, ring provider, no session
//! resumption, the node certificate presented and the peer checked by [`crate::verify`].

use std::sync::Arc;

use agentmesh_proto::SecretKey;
use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};

use crate::cert::NodeCert;
use crate::verify::{ClientAuth, NodeClientVerifier, NodeServerVerifier, ServerPin};
use crate::TlsIdError;

/// A server config presenting `key`'s node certificate and checking clients as `client_auth`
/// says. No ALPN is set; see [`server_config_alpn`].
pub fn server_config(
    key: &SecretKey,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsIdError> {
    server_config_alpn(key, client_auth, &[]).map(Arc::new)
}

/// A client config checking the server as `server` says and presenting `key`'s node
/// certificate when given. Connect with [`crate::server_name`]. No ALPN; see
/// [`client_config_alpn`].
pub fn client_config(
    key: Option<&SecretKey>,
    server: ServerPin,
) -> Result<Arc<ClientConfig>, TlsIdError> {
    client_config_alpn(key, server, &[]).map(Arc::new)
}

/// [`server_config`] offering the ALPN protocols `alpn` (a client must then offer one of
/// them), returned unwrapped so it can be adjusted further.
pub fn server_config_alpn(
    key: &SecretKey,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsIdError> {
    let node = NodeCert::generate(key)?;
    let builder = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match NodeClientVerifier::new(client_auth) {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(node.chain(), node.private_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// [`client_config`] offering the ALPN protocols `alpn`, returned unwrapped so it can be
/// adjusted further.
pub fn client_config_alpn(
    key: Option<&SecretKey>,
    server: ServerPin,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsIdError> {
    let builder = ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(NodeServerVerifier::new(server));
    let mut config = match key {
        Some(key) => {
            let node = NodeCert::generate(key)?;
            builder.with_client_auth_cert(node.chain(), node.private_key())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = Resumption::disabled();
    Ok(config)
}
