//! The daemon's network layer. Built so far: the demultiplexer of the daemon's single
//! UDP socket (`demux`), the socket quinn runs on with per-peer direct/relay routes
//! (`mesh_socket`, `routes`), hole-punch probes (`probe`) and the sans-IO hole-punching
//! state machine (`punch`). The tokio drivers (socket, QUIC sessions, STUN, UPnP, relay
//! client) come with the daemon networking issue.

pub mod admin;
pub mod demux;
pub mod mailbox;
pub mod mesh_socket;
pub mod metrics;
pub mod node;
pub mod paths;
pub mod peer_path;
pub mod peers;
pub mod ping;
pub mod portmap;
pub mod probe;
pub mod punch;
pub mod reflexive;
pub mod relay_link;
pub mod rendezvous_link;
pub mod resolve;
pub mod routes;
pub mod status;
pub mod stun;
