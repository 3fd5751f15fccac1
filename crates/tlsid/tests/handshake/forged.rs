//! Peers presenting a node certificate for one key while holding another: the handshake
//! signature does not verify with the certificate's key, so they are refused.

use std::sync::Arc;

use agentmesh_proto::SecretKey;
use agentmesh_tlsid::{self as tlsid, ClientAuth, NodeCert, ServerPin};
use rustls::sign::{CertifiedKey, SingleCertAndKey};

use crate::tcp::{assert_refused_by_server, handshake};

/// A certificate claiming `claimed`'s node id, with the signing key of `holder`.
fn certified(claimed: &SecretKey, holder: &SecretKey) -> SingleCertAndKey {
    let cert = NodeCert::generate(claimed).unwrap();
    let key = NodeCert::generate(holder).unwrap();
    let signer = tlsid::provider()
        .key_provider
        .load_private_key(key.private_key())
        .unwrap();
    // CertifiedKey::new does not check that the key matches the certificate.
    SingleCertAndKey::from(CertifiedKey::new(cert.chain(), signer))
}

/// A TLS 1.3 server config presenting `claimed`'s certificate while signing with `holder`'s
/// key (no client auth, ALPN `alpn`).
pub(crate) fn server_tls(
    claimed: &SecretKey,
    holder: &SecretKey,
    alpn: &[&[u8]],
) -> rustls::ServerConfig {
    let mut cfg = rustls::ServerConfig::builder_with_provider(tlsid::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certified(claimed, holder)));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

fn server_presenting(claimed: &SecretKey, holder: &SecretKey) -> Arc<rustls::ServerConfig> {
    Arc::new(server_tls(claimed, holder, &[]))
}

fn client_presenting(
    claimed: &SecretKey,
    holder: &SecretKey,
    pin: ServerPin,
) -> Arc<rustls::ClientConfig> {
    let cfg = rustls::ClientConfig::builder_with_provider(tlsid::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(tlsid::NodeServerVerifier::new(pin))
        .with_client_cert_resolver(Arc::new(certified(claimed, holder)));
    Arc::new(cfg)
}

#[tokio::test]
async fn honest_hand_built_server_is_accepted() {
    // Control for the forged case: the same construction with the right key works.
    let victim = SecretKey::generate_os();
    let ccfg = tlsid::client_config(None, ServerPin::Node(victim.node_id())).unwrap();
    let out = handshake(server_presenting(&victim, &victim), ccfg).await;
    let c = out.client.unwrap();
    assert_eq!(
        tlsid::peer_node_id_tls(c.get_ref().1).unwrap(),
        victim.node_id()
    );
}

#[tokio::test]
async fn server_with_anothers_certificate_is_refused() {
    let (victim, attacker) = (SecretKey::generate_os(), SecretKey::generate_os());
    for pin in [ServerPin::Node(victim.node_id()), ServerPin::AnyNode] {
        let ccfg = tlsid::client_config(None, pin).unwrap();
        let out = handshake(server_presenting(&victim, &attacker), ccfg).await;
        let Err(err) = out.client else {
            panic!("client accepted a forged server certificate")
        };
        assert!(
            err.to_string().to_lowercase().contains("signature"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn honest_hand_built_client_is_accepted() {
    let (sk, ck) = (SecretKey::generate_os(), SecretKey::generate_os());
    let scfg = tlsid::server_config(&sk, ClientAuth::Pinned(vec![ck.node_id()])).unwrap();
    let out = handshake(scfg, client_presenting(&ck, &ck, ServerPin::AnyNode)).await;
    let s = out.server.unwrap();
    assert_eq!(
        tlsid::peer_node_id_tls(s.get_ref().1).unwrap(),
        ck.node_id()
    );
}

#[tokio::test]
async fn client_with_anothers_certificate_is_refused() {
    let (sk, victim, attacker) = (
        SecretKey::generate_os(),
        SecretKey::generate_os(),
        SecretKey::generate_os(),
    );
    for auth in [
        ClientAuth::Pinned(vec![victim.node_id()]),
        ClientAuth::RequireNodeCert,
    ] {
        let scfg = tlsid::server_config(&sk, auth).unwrap();
        let ccfg = client_presenting(&victim, &attacker, ServerPin::Node(sk.node_id()));
        assert_refused_by_server(handshake(scfg, ccfg).await).await;
    }
}
