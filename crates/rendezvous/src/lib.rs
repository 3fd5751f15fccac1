//! agentmesh rendezvous service: registry, discovery, introductions, STUN responder.
