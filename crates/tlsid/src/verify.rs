//! rustls verifiers that accept a peer by its node key instead of a CA chain.
//!
//! [`NodeServerVerifier`] (used by clients) and [`NodeClientVerifier`] (used by servers)
//! read the Ed25519 key out of the peer's end-entity certificate, check it against the
//! pin, and verify the TLS 1.3 handshake signature with that key. TLS 1.2 is refused.
//! Certificate validity dates, names and chains are not consulted: the identity is the key.

use std::collections::BTreeSet;
use std::sync::Arc;

use agentmesh_proto::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    PeerIncompatible, SignatureScheme,
};
use tracing::debug;

use crate::cert::node_id_from_cert;
use crate::TlsIdError;

/// Which servers a client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPin {
    /// Only a server holding this node key; any other key fails the handshake.
    Node(NodeId),
    /// Any server whose certificate is bound to a node key; read which one afterwards with
    /// [`crate::peer_node_id_tls`] or [`crate::peer_node_id_quic`].
    AnyNode,
}

/// Which clients a server accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for; clients stay anonymous at the TLS layer.
    None,
    /// A certificate bound to some node key is required; read which one after the handshake.
    RequireNodeCert,
    /// A certificate bound to one of these node keys is required (an empty list refuses all).
    Pinned(Vec<NodeId>),
}

/// Which keys a verifier lets through.
#[derive(Debug, Clone)]
enum Allowed {
    Any,
    OneOf(BTreeSet<NodeId>),
}

impl Allowed {
    /// Reads the node id out of `cert` and checks it is allowed.
    fn check(&self, cert: &CertificateDer<'_>) -> Result<NodeId, Error> {
        let id = node_id_from_cert(cert).map_err(cert_error)?;
        match self {
            Allowed::OneOf(ids) if !ids.contains(&id) => {
                Err(cert_error(TlsIdError::NotPinned { peer: id }))
            }
            _ => Ok(id),
        }
    }
}

/// Maps a certificate-reading failure to the rustls error the handshake reports.
fn cert_error(e: TlsIdError) -> Error {
    debug!(error = %e, "refusing peer certificate");
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The handshake-signature checks both verifiers share.
#[derive(Debug, Clone)]
struct SignatureCheck {
    algs: WebPkiSupportedAlgorithms,
}

impl SignatureCheck {
    fn new() -> Self {
        Self {
            algs: crate::provider().signature_verification_algorithms,
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(Error::PeerIncompatible(
                PeerIncompatible::NoSignatureSchemesInCommon,
            ));
        }
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn tls12(&self) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
        ))
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Client-side verifier of a server's node certificate (see [`ServerPin`]).
#[derive(Debug, Clone)]
pub struct NodeServerVerifier {
    allowed: Allowed,
    sig: SignatureCheck,
}

impl NodeServerVerifier {
    /// A verifier accepting the servers `pin` allows.
    pub fn new(pin: ServerPin) -> Arc<Self> {
        let allowed = match pin {
            ServerPin::Node(id) => Allowed::OneOf(BTreeSet::from([id])),
            ServerPin::AnyNode => Allowed::Any,
        };
        Arc::new(Self {
            allowed,
            sig: SignatureCheck::new(),
        })
    }
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.allowed.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.sig.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.sig.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.sig.schemes()
    }
}

/// Server-side verifier of a client's node certificate (see [`ClientAuth`]).
///
/// Built only for [`ClientAuth::RequireNodeCert`] and [`ClientAuth::Pinned`]; a client
/// certificate is then mandatory.
#[derive(Debug, Clone)]
pub struct NodeClientVerifier {
    allowed: Allowed,
    sig: SignatureCheck,
}

impl NodeClientVerifier {
    /// A verifier accepting the clients `auth` allows; `None` for [`ClientAuth::None`].
    pub fn new(auth: ClientAuth) -> Option<Arc<Self>> {
        let allowed = match auth {
            ClientAuth::None => return None,
            ClientAuth::RequireNodeCert => Allowed::Any,
            ClientAuth::Pinned(ids) => Allowed::OneOf(ids.into_iter().collect()),
        };
        Some(Arc::new(Self {
            allowed,
            sig: SignatureCheck::new(),
        }))
    }
}

impl ClientCertVerifier for NodeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.allowed.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.sig.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.sig.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.sig.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeCert;
    use agentmesh_proto::SecretKey;

    fn cert_of(key: &SecretKey) -> CertificateDer<'static> {
        NodeCert::generate(key).unwrap().cert
    }

    fn server_check(pin: ServerPin, cert: &CertificateDer<'_>) -> Result<(), Error> {
        let name = crate::server_name();
        NodeServerVerifier::new(pin)
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn client_check(auth: ClientAuth, cert: &CertificateDer<'_>) -> Result<(), Error> {
        NodeClientVerifier::new(auth)
            .unwrap()
            .verify_client_cert(cert, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn server_pin_accepts_only_the_pinned_key() {
        let (a, b) = (SecretKey::generate_os(), SecretKey::generate_os());
        server_check(ServerPin::Node(a.node_id()), &cert_of(&a)).unwrap();
        server_check(ServerPin::AnyNode, &cert_of(&b)).unwrap();
        let err = server_check(ServerPin::Node(a.node_id()), &cert_of(&b)).unwrap_err();
        assert!(err.to_string().contains("NotPinned"), "{err}");
    }

    #[test]
    fn client_pins_accept_only_listed_keys() {
        let (a, b, c) = (
            SecretKey::generate_os(),
            SecretKey::generate_os(),
            SecretKey::generate_os(),
        );
        let pinned = || ClientAuth::Pinned(vec![a.node_id(), b.node_id()]);
        client_check(pinned(), &cert_of(&a)).unwrap();
        client_check(pinned(), &cert_of(&b)).unwrap();
        assert!(client_check(pinned(), &cert_of(&c)).is_err());
        assert!(client_check(ClientAuth::Pinned(vec![]), &cert_of(&a)).is_err());
        client_check(ClientAuth::RequireNodeCert, &cert_of(&c)).unwrap();
        assert!(NodeClientVerifier::new(ClientAuth::None).is_none());
    }

    #[test]
    fn client_cert_is_mandatory_and_ed25519_only() {
        let v = NodeClientVerifier::new(ClientAuth::RequireNodeCert).unwrap();
        assert!(v.offer_client_auth() && v.client_auth_mandatory());
        assert_eq!(v.supported_verify_schemes(), vec![SignatureScheme::ED25519]);
        let s = NodeServerVerifier::new(ServerPin::AnyNode);
        assert_eq!(s.supported_verify_schemes(), vec![SignatureScheme::ED25519]);
    }

    #[test]
    fn garbage_certificate_is_refused() {
        let junk = CertificateDer::from(vec![0u8; 40]);
        assert!(server_check(ServerPin::AnyNode, &junk).is_err());
        assert!(client_check(ClientAuth::RequireNodeCert, &junk).is_err());
    }
}
