//! End-to-end tests: the real `agentmeshd` and `agentmesh` binaries, real sockets, real
//! Python and Node agents. One test binary, modules inside.

mod cli;
mod daemon_process;
mod examples;
mod local_api;
