//! TLS identities bound to Ed25519 node keys (certificates, verifiers, quinn configs).
