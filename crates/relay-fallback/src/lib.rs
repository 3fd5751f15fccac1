//! agentmesh blind relay: forwards ciphertext between daemons by node id.
