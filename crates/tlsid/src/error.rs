//! Errors of this crate: building certificates and configs, and reading a peer's node id.

use agentmesh_proto::{IdError, NodeId};

/// Why a TLS identity could not be built or a peer's node id could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsIdError {
    /// rcgen could not build or sign the self-signed node certificate.
    #[error("cannot generate the node certificate: {0}")]
    CertGen(#[from] rcgen::Error),
    /// rustls refused the configuration (for example the key does not load).
    #[error("rustls refused the configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The rustls config cannot drive QUIC (it lacks TLS 1.3 or an initial cipher suite).
    #[error("the TLS config cannot be used for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The peer did not present a certificate (or the handshake has not finished).
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's certificate is not parseable X.509.
    #[error("the peer certificate is not valid X.509")]
    BadCertificate,
    /// The certificate's public key is not an Ed25519 key.
    #[error("the certificate key is not Ed25519 (SubjectPublicKeyInfo of {spki_len} bytes)")]
    NotEd25519 {
        /// Length of the DER SubjectPublicKeyInfo found.
        spki_len: usize,
    },
    /// The peer's node id is not among the pinned ones.
    #[error("peer node {peer} is not pinned")]
    NotPinned {
        /// The node id the peer presented.
        peer: NodeId,
    },
    /// The Ed25519 key is not a valid node id.
    #[error("the certificate key is not a valid node id: {0}")]
    BadNodeId(#[from] IdError),
}
