//! `agentmesh-rendezvous`: the rendezvous service binary.

fn main() {}
