//! The daemon's network layer. Built so far: the demultiplexer of the daemon's single
//! UDP socket (`demux`), the socket quinn runs on with per-peer direct/relay routes
//! (`mesh_socket`, `routes`), hole-punch probes (`probe`) and the sans-IO hole-punching
//! state machine (`punch`). The tokio drivers (socket, QUIC sessions, STUN, UPnP, relay
//! client) come with the daemon networking issue.

pub mod demux;
pub mod mesh_socket;
pub mod peer_path;
pub mod portmap;
pub mod probe;
pub mod punch;
pub mod relay_link;
pub mod routes;
pub mod stun;
