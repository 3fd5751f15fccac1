//! agentmesh deterministic NAT simulator (sans-IO) and the netns lab for real kernel NAT.
