//! Node certificates: a self-signed X.509 certificate whose SubjectPublicKeyInfo is the
//! node's Ed25519 key, and the reverse mapping from a presented certificate to a [`NodeId`].
//!
//! The certificate carries no trust of its own: a verifier accepts it because the key in it
//! is the pinned node id and the TLS handshake signature (made with that key) verifies.

use agentmesh_proto::{NodeId, SecretKey};
use rcgen::{CertificateParams, KeyPair, PKCS_ED25519};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ParsedCertificate;

use crate::{TlsIdError, SERVER_NAME};

/// RFC 8410 PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// RFC 8410 DER SubjectPublicKeyInfo prefix of an Ed25519 public key; the 32 key bytes follow.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A node's TLS identity: its self-signed certificate and the matching private key.
#[derive(Debug)]
pub struct NodeCert {
    /// The DER certificate; its SubjectPublicKeyInfo is the node key, its SAN is
    /// [`SERVER_NAME`].
    pub cert: CertificateDer<'static>,
    /// The node's Ed25519 private key in PKCS#8 (v1) DER, as rustls loads it.
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl NodeCert {
    /// Builds the self-signed certificate for `key`.
    pub fn generate(key: &SecretKey) -> Result<Self, TlsIdError> {
        let pkcs8 = pkcs8_der(key);
        let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ED25519)?;
        let params = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        let cert = params.self_signed(&key_pair)?;
        Ok(Self {
            cert: cert.der().clone(),
            key: pkcs8,
        })
    }

    /// The certificate chain to hand to rustls (one self-signed certificate).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    /// The private key to hand to rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// Encodes the secret key as RFC 8410 PKCS#8 v1 DER.
fn pkcs8_der(key: &SecretKey) -> PrivatePkcs8KeyDer<'static> {
    let mut der = Vec::with_capacity(PKCS8_ED25519_PREFIX.len() + 32);
    der.extend_from_slice(&PKCS8_ED25519_PREFIX);
    der.extend_from_slice(&key.to_bytes());
    PrivatePkcs8KeyDer::from(der)
}

/// The node id a certificate is bound to: its Ed25519 SubjectPublicKeyInfo.
///
/// This only reads the key; it proves nothing by itself. The TLS handshake signature,
/// checked by this crate's verifiers, proves the peer holds the matching private key.
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Result<NodeId, TlsIdError> {
    let parsed = ParsedCertificate::try_from(cert).map_err(|_| TlsIdError::BadCertificate)?;
    let spki = parsed.subject_public_key_info();
    node_id_from_spki(spki.as_ref())
}

/// The node id of a presented chain: the key of its end-entity (first) certificate.
pub fn node_id_from_certs(certs: &[CertificateDer<'_>]) -> Result<NodeId, TlsIdError> {
    let end_entity = certs.first().ok_or(TlsIdError::NoPeerCertificate)?;
    node_id_from_cert(end_entity)
}

/// The node id in a DER SubjectPublicKeyInfo, if it is an Ed25519 key.
fn node_id_from_spki(spki: &[u8]) -> Result<NodeId, TlsIdError> {
    let not_ed25519 = || TlsIdError::NotEd25519 {
        spki_len: spki.len(),
    };
    let raw = spki
        .strip_prefix(&SPKI_ED25519_PREFIX[..])
        .ok_or_else(not_ed25519)?;
    let bytes: [u8; 32] = raw.try_into().map_err(|_| not_ed25519())?;
    Ok(NodeId::from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_key_is_the_node_key() {
        let key = SecretKey::generate_os();
        let cert = NodeCert::generate(&key).unwrap();
        assert_eq!(node_id_from_cert(&cert.cert).unwrap(), key.node_id());
        assert_eq!(node_id_from_certs(&cert.chain()).unwrap(), key.node_id());
    }

    #[test]
    fn cert_names_the_server_name() {
        let cert = NodeCert::generate(&SecretKey::generate_os()).unwrap();
        let parsed = rustls::server::ParsedCertificate::try_from(&cert.cert).unwrap();
        // The SAN appears in the DER as an IA5String.
        let der: &[u8] = cert.cert.as_ref();
        assert!(der
            .windows(SERVER_NAME.len())
            .any(|w| w == SERVER_NAME.as_bytes()));
        assert_eq!(parsed.subject_public_key_info().as_ref().len(), 44);
    }

    #[test]
    fn rustls_signs_with_the_node_key() {
        use agentmesh_proto::Signature;
        use rustls::SignatureScheme;
        let key = SecretKey::generate_os();
        let cert = NodeCert::generate(&key).unwrap();
        let signing = crate::provider()
            .key_provider
            .load_private_key(cert.private_key())
            .unwrap();
        let signer = signing.choose_scheme(&[SignatureScheme::ED25519]).unwrap();
        let sig: [u8; 64] = signer.sign(b"hello").unwrap().try_into().unwrap();
        key.node_id().verify(b"hello", &Signature(sig)).unwrap();
    }

    #[test]
    fn empty_chain_and_garbage_are_refused() {
        assert!(matches!(
            node_id_from_certs(&[]),
            Err(TlsIdError::NoPeerCertificate)
        ));
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            node_id_from_cert(&junk),
            Err(TlsIdError::BadCertificate)
        ));
    }

    #[test]
    fn non_ed25519_certificate_is_refused() {
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = CertificateParams::new(vec![SERVER_NAME.to_owned()]).unwrap();
        let cert = params.self_signed(&kp).unwrap();
        assert!(matches!(
            node_id_from_cert(cert.der()),
            Err(TlsIdError::NotEd25519 { .. })
        ));
    }

    proptest::proptest! {
        /// Untrusted certificate bytes never panic the reader.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = node_id_from_cert(&CertificateDer::from(bytes));
        }

        /// A corrupted node certificate is refused or still yields a well-formed id; never a panic.
        #[test]
        fn corrupted_cert_never_panics(at in 0usize..400, xor in 1u8..=255) {
            let key = SecretKey::from_bytes(&[7u8; 32]);
            let mut der = NodeCert::generate(&key).unwrap().cert.to_vec();
            let i = at % der.len();
            der[i] ^= xor;
            if let Ok(id) = node_id_from_cert(&CertificateDer::from(der)) {
                proptest::prop_assert!(NodeId::from_bytes(*id.as_bytes()).is_ok());
            }
        }
    }
}
