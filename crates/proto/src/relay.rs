//! Relay wire messages: client authentication, forwarded frames by destination node id, control frames.
