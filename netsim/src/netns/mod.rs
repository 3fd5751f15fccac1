//! The netns lab: real Linux NAT in network namespaces (nftables, coturn, miniupnpd).
