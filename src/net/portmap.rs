//! UPnP IGD port mapping (igd-next): a public port on the home router, renewed before the lease ends, removed on shutdown.
