//! The relay link: carries relayed peers' QUIC packets through the blind relay, over the daemon's UDP socket or TCP/TLS.
