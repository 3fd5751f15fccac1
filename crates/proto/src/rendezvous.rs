//! Rendezvous wire messages: node sessions, registry, discovery, subscriptions index, introductions.
