//! Sealed messages for store-and-forward: Noise one-way `X` pattern to a node's static key.
