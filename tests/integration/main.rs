//! End-to-end tests: the real `agentmeshd` and `agentmesh` binaries, real sockets, real
//! Python and Node agents. One test binary, modules inside.

// Test support code panics on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod cli;
mod daemon_process;
mod examples;
mod local_api;
mod mesh_loopback;
mod mesh_mail;
mod mesh_netns;
mod mesh_netsim;
mod portmap_netns;
mod punch_matrix;
mod punch_matrix_netns;
mod relay_link;
mod stun_coturn;
