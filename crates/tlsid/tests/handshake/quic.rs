//! QUIC (quinn) handshakes over loopback.

use std::net::SocketAddr;

use agentmesh_proto::SecretKey;
use agentmesh_tlsid::{
    self as tlsid, peer_node_id_quic, quinn_client_config, quinn_server_config, ClientAuth,
    ServerPin, ALPN_PEER,
};
use quinn::Endpoint;

use crate::bounded;

fn server(key: &SecretKey, auth: ClientAuth) -> (Endpoint, SocketAddr) {
    tlsid::install_default_provider();
    let cfg = quinn_server_config(key, auth, &[ALPN_PEER]).unwrap();
    let ep = Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    (ep, addr)
}

fn client(key: Option<&SecretKey>, pin: ServerPin) -> Endpoint {
    let mut ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn_client_config(key, pin, &[ALPN_PEER]).unwrap());
    ep
}

/// Accepts one connection attempt; `Ok(conn)` or the handshake error.
async fn accept_one(ep: &Endpoint) -> Result<quinn::Connection, quinn::ConnectionError> {
    let incoming = bounded(ep.accept()).await.expect("endpoint closed");
    bounded(std::future::IntoFuture::into_future(incoming)).await
}

#[tokio::test]
async fn pinned_both_ways_succeeds_and_both_read_ids() {
    let (sk, ck) = (SecretKey::generate_os(), SecretKey::generate_os());
    let (sep, addr) = server(&sk, ClientAuth::Pinned(vec![ck.node_id()]));
    let cep = client(Some(&ck), ServerPin::Node(sk.node_id()));
    let connecting = cep.connect(addr, tlsid::SERVER_NAME).unwrap();
    let (c, s) = tokio::join!(bounded(connecting), accept_one(&sep));
    let (c, s) = (c.unwrap(), s.unwrap());
    assert_eq!(peer_node_id_quic(&c).unwrap(), sk.node_id());
    assert_eq!(peer_node_id_quic(&s).unwrap(), ck.node_id());
    assert_eq!(
        c.handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol
            .as_deref(),
        Some(ALPN_PEER)
    );

    // The connection carries data.
    let (mut tx, mut rx) = c.open_bi().await.unwrap();
    tx.write_all(b"ping").await.unwrap();
    tx.finish().unwrap();
    let (mut stx, mut srx) = bounded(s.accept_bi()).await.unwrap();
    assert_eq!(bounded(srx.read_to_end(16)).await.unwrap(), b"ping");
    stx.write_all(b"pong").await.unwrap();
    stx.finish().unwrap();
    assert_eq!(bounded(rx.read_to_end(16)).await.unwrap(), b"pong");
}

#[tokio::test]
async fn any_node_modes_report_the_peer() {
    let (sk, ck) = (SecretKey::generate_os(), SecretKey::generate_os());
    let (sep, addr) = server(&sk, ClientAuth::RequireNodeCert);
    let cep = client(Some(&ck), ServerPin::AnyNode);
    let connecting = cep.connect(addr, tlsid::SERVER_NAME).unwrap();
    let (c, s) = tokio::join!(bounded(connecting), accept_one(&sep));
    assert_eq!(peer_node_id_quic(&c.unwrap()).unwrap(), sk.node_id());
    assert_eq!(peer_node_id_quic(&s.unwrap()).unwrap(), ck.node_id());
}

#[tokio::test]
async fn anonymous_client_allowed_when_no_client_auth() {
    let sk = SecretKey::generate_os();
    let (sep, addr) = server(&sk, ClientAuth::None);
    let cep = client(None, ServerPin::Node(sk.node_id()));
    let connecting = cep.connect(addr, tlsid::SERVER_NAME).unwrap();
    let (c, s) = tokio::join!(bounded(connecting), accept_one(&sep));
    assert_eq!(peer_node_id_quic(&c.unwrap()).unwrap(), sk.node_id());
    assert!(matches!(
        peer_node_id_quic(&s.unwrap()),
        Err(tlsid::TlsIdError::NoPeerCertificate)
    ));
}

#[tokio::test]
async fn wrong_server_pin_is_refused() {
    let (sk, ck, other) = (
        SecretKey::generate_os(),
        SecretKey::generate_os(),
        SecretKey::generate_os(),
    );
    let (sep, addr) = server(&sk, ClientAuth::RequireNodeCert);
    let cep = client(Some(&ck), ServerPin::Node(other.node_id()));
    let connecting = cep.connect(addr, tlsid::SERVER_NAME).unwrap();
    let (c, s) = tokio::join!(bounded(connecting), accept_one(&sep));
    assert!(c.is_err(), "client accepted a server with the wrong key");
    assert!(s.is_err(), "server finished a handshake the client refused");
}

#[tokio::test]
async fn client_not_in_pinned_list_is_refused() {
    let (sk, ck, other) = (
        SecretKey::generate_os(),
        SecretKey::generate_os(),
        SecretKey::generate_os(),
    );
    let (sep, addr) = server(&sk, ClientAuth::Pinned(vec![other.node_id()]));
    let cep = client(Some(&ck), ServerPin::Node(sk.node_id()));
    let connecting = cep.connect(addr, tlsid::SERVER_NAME).unwrap();
    let (c, s) = tokio::join!(bounded(connecting), accept_one(&sep));
    assert!(s.is_err(), "server accepted a client that is not pinned");
    assert_client_dropped(c).await;
}

#[tokio::test]
async fn client_without_cert_is_refused_when_required() {
    let sk = SecretKey::generate_os();
    let (sep, addr) = server(&sk, ClientAuth::RequireNodeCert);
    let cep = client(None, ServerPin::Node(sk.node_id()));
    let connecting = cep.connect(addr, tlsid::SERVER_NAME).unwrap();
    let (c, s) = tokio::join!(bounded(connecting), accept_one(&sep));
    assert!(s.is_err(), "server accepted a client without a certificate");
    assert_client_dropped(c).await;
}

/// A refused client may see its own handshake finish (TLS 1.3 clients finish first) but the
/// server then closes the connection: no stream can be used.
async fn assert_client_dropped(c: Result<quinn::Connection, quinn::ConnectionError>) {
    let Ok(conn) = c else { return };
    let err = bounded(conn.closed()).await;
    assert!(
        matches!(
            err,
            quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::ConnectionClosed(_)
        ),
        "unexpected close reason {err:?}"
    );
}

#[tokio::test]
async fn alpn_mismatch_is_refused() {
    let sk = SecretKey::generate_os();
    let (sep, addr) = server(&sk, ClientAuth::None);
    let mut cep = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let cfg = quinn_client_config(None, ServerPin::AnyNode, &[tlsid::ALPN_RELAY]).unwrap();
    cep.set_default_client_config(cfg);
    let connecting = cep.connect(addr, tlsid::SERVER_NAME).unwrap();
    let (c, s) = tokio::join!(bounded(connecting), accept_one(&sep));
    assert!(c.is_err() && s.is_err(), "handshake with mismatched ALPN");
}

#[tokio::test]
async fn forged_server_certificate_is_refused_over_quic() {
    let (victim, attacker) = (SecretKey::generate_os(), SecretKey::generate_os());
    let tls = crate::forged::server_tls(&victim, &attacker, &[ALPN_PEER]);
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let cfg = quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto));
    let sep = Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sep.local_addr().unwrap();
    let cep = client(None, ServerPin::Node(victim.node_id()));
    let connecting = cep.connect(addr, tlsid::SERVER_NAME).unwrap();
    let (c, s) = tokio::join!(bounded(connecting), accept_one(&sep));
    assert!(c.is_err(), "client accepted a forged server certificate");
    assert!(s.is_err());
}

/// Daemon-style endpoints: each is a server (node cert required) and dials the other with a
/// pinned client config; both directions work and report the right ids.
#[tokio::test]
async fn symmetric_endpoints_connect_both_ways() {
    let (ka, kb) = (SecretKey::generate_os(), SecretKey::generate_os());
    let (ea, addr_a) = server(&ka, ClientAuth::RequireNodeCert);
    let (eb, addr_b) = server(&kb, ClientAuth::RequireNodeCert);
    for (dialer, dk, listener, lk, addr) in
        [(&ea, &ka, &eb, &kb, addr_b), (&eb, &kb, &ea, &ka, addr_a)]
    {
        let cfg = quinn_client_config(Some(dk), ServerPin::Node(lk.node_id()), &[ALPN_PEER]);
        let connecting = dialer
            .connect_with(cfg.unwrap(), addr, tlsid::SERVER_NAME)
            .unwrap();
        let (c, s) = tokio::join!(bounded(connecting), accept_one(listener));
        assert_eq!(peer_node_id_quic(&c.unwrap()).unwrap(), lk.node_id());
        assert_eq!(peer_node_id_quic(&s.unwrap()).unwrap(), dk.node_id());
    }
}
