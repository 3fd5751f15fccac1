//! TCP + rustls (tokio-rustls) handshakes over loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use agentmesh_proto::SecretKey;
use agentmesh_tlsid::{
    self as tlsid, client_config, peer_node_id_tls, server_config, ClientAuth, ServerPin,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::bounded;

/// Result of one TCP+TLS attempt, seen from both ends.
pub(crate) struct Outcome {
    pub(crate) client: std::io::Result<client::TlsStream<TcpStream>>,
    pub(crate) server: std::io::Result<server::TlsStream<TcpStream>>,
}

/// Runs one handshake between the given configs over a fresh loopback listener.
pub(crate) async fn handshake(
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
) -> Outcome {
    tlsid::install_default_provider();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_cfg);
    let server = async move {
        let (tcp, _) = listener.accept().await?;
        acceptor.accept(tcp).await
    };
    let connector = TlsConnector::from(client_cfg);
    let client = async move {
        let tcp = TcpStream::connect(addr).await?;
        connector.connect(tlsid::server_name(), tcp).await
    };
    let (client, server) = tokio::join!(bounded(client), bounded(server));
    Outcome { client, server }
}

/// Asserts the server refused and the client, if its side finished, cannot read data.
pub(crate) async fn assert_refused_by_server(out: Outcome) {
    assert!(out.server.is_err(), "server accepted the client");
    if let Ok(mut c) = out.client {
        let mut buf = [0u8; 8];
        let read = bounded(c.read(&mut buf)).await;
        assert!(
            matches!(read, Err(_) | Ok(0)),
            "client read data from a refusing server"
        );
    }
}

#[tokio::test]
async fn pinned_both_ways_succeeds_and_both_read_ids() {
    let (sk, ck) = (SecretKey::generate_os(), SecretKey::generate_os());
    let scfg = server_config(&sk, ClientAuth::Pinned(vec![ck.node_id()])).unwrap();
    let ccfg = client_config(Some(&ck), ServerPin::Node(sk.node_id())).unwrap();
    let out = handshake(scfg, ccfg).await;
    let (mut c, mut s) = (out.client.unwrap(), out.server.unwrap());
    assert_eq!(peer_node_id_tls(c.get_ref().1).unwrap(), sk.node_id());
    assert_eq!(peer_node_id_tls(s.get_ref().1).unwrap(), ck.node_id());
    assert_eq!(
        c.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    c.write_all(b"ping").await.unwrap();
    c.flush().await.unwrap();
    let mut buf = [0u8; 4];
    bounded(s.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn alpn_is_negotiated() {
    let sk = SecretKey::generate_os();
    let scfg = tlsid::server_config_alpn(&sk, ClientAuth::None, &[tlsid::ALPN_RELAY]).unwrap();
    let ccfg = tlsid::client_config_alpn(None, ServerPin::AnyNode, &[tlsid::ALPN_RELAY]).unwrap();
    let out = handshake(Arc::new(scfg), Arc::new(ccfg)).await;
    let c = out.client.unwrap();
    assert_eq!(c.get_ref().1.alpn_protocol(), Some(tlsid::ALPN_RELAY));
    assert_eq!(peer_node_id_tls(c.get_ref().1).unwrap(), sk.node_id());
}

#[tokio::test]
async fn wrong_server_pin_is_refused() {
    let (sk, other) = (SecretKey::generate_os(), SecretKey::generate_os());
    let scfg = server_config(&sk, ClientAuth::None).unwrap();
    let ccfg = client_config(None, ServerPin::Node(other.node_id())).unwrap();
    let out = handshake(scfg, ccfg).await;
    let Err(err) = out.client else {
        panic!("client accepted the wrong server key")
    };
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(out.server.is_err());
}

#[tokio::test]
async fn client_without_cert_is_refused_when_required() {
    let sk = SecretKey::generate_os();
    let scfg = server_config(&sk, ClientAuth::RequireNodeCert).unwrap();
    let ccfg = client_config(None, ServerPin::Node(sk.node_id())).unwrap();
    assert_refused_by_server(handshake(scfg, ccfg).await).await;
}

#[tokio::test]
async fn client_not_in_pinned_list_is_refused() {
    let (sk, ck, other) = (
        SecretKey::generate_os(),
        SecretKey::generate_os(),
        SecretKey::generate_os(),
    );
    let scfg = server_config(&sk, ClientAuth::Pinned(vec![other.node_id()])).unwrap();
    let ccfg = client_config(Some(&ck), ServerPin::AnyNode).unwrap();
    assert_refused_by_server(handshake(scfg, ccfg).await).await;
}

#[tokio::test]
async fn empty_pinned_list_refuses_everyone() {
    let (sk, ck) = (SecretKey::generate_os(), SecretKey::generate_os());
    let scfg = server_config(&sk, ClientAuth::Pinned(vec![])).unwrap();
    let ccfg = client_config(Some(&ck), ServerPin::AnyNode).unwrap();
    assert_refused_by_server(handshake(scfg, ccfg).await).await;
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let sk = SecretKey::generate_os();
    let scfg = server_config(&sk, ClientAuth::None).unwrap();
    let ccfg = rustls::ClientConfig::builder_with_provider(tlsid::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(tlsid::NodeServerVerifier::new(ServerPin::AnyNode))
        .with_no_client_auth();
    let out = handshake(scfg, Arc::new(ccfg)).await;
    assert!(out.client.is_err() && out.server.is_err());
}
