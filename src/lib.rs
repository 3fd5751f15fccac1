//! agentmeshd, the per-host daemon, as a library: the local API (`api`), the routing core
//! (`router`), configuration (`config`), start-up (`daemon`), and the client used by the
//! `agentmesh` CLI and the demo (`cli`), and a whole mesh on the network simulator
//! (`simworld`).

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod net;
pub mod router;
pub mod simworld;
