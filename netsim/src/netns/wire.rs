//! Creating the namespaces, veths, bridges, addresses and routes of a lab (see
//! `topology` for the plan). Every veth is created straight into its two namespaces.

use crate::behavior::Preset;
use crate::netns::cmd::{exec_in, ip, ip_in, sysctl_in};
use crate::netns::error::LabError;
use crate::netns::lab::Lab;
use crate::netns::nft;
use crate::netns::topology::{self, Node, NodeKind, INTERNET, SERVER_A, SERVER_B};

/// The internet: bridge `br0` holding both server addresses, forwarding on.
pub(crate) fn internet(lab: &mut Lab) -> Result<(), LabError> {
    let ns = lab.add_namespace(INTERNET)?;
    ip_in(&ns, &["link", "add", "br0", "type", "bridge"])?;
    ip_in(&ns, &["link", "set", "br0", "up"])?;
    for a in [SERVER_A, SERVER_B] {
        ip_in(&ns, &["addr", "add", &format!("{a}/24"), "dev", "br0"])?;
    }
    sysctl_in(&ns, "net.ipv4.ip_forward", "1")?;
    sysctl_in(&ns, "net.ipv4.conf.all.send_redirects", "0")?;
    sysctl_in(&ns, "net.ipv4.conf.br0.send_redirects", "0")?;
    lab.nodes.push(Node {
        name: INTERNET.to_owned(),
        ns,
        kind: NodeKind::Internet,
        addr: SERVER_A,
        public: SERVER_A,
        lan: None,
        uplink: None,
    });
    Ok(())
}

/// Router of site `i`: `wan` on the internet bridge, bridge `lan`, nftables for `preset`.
pub(crate) fn router(lab: &mut Lab, i: usize, name: &str, preset: Preset) -> Result<(), LabError> {
    let inet = lab.ns(INTERNET)?.to_owned();
    let ns = lab.add_namespace(name)?;
    let port = format!("s{i}");
    let wan = topology::router_wan(i);
    veth(&ns, "wan", &inet, &port)?;
    ip_in(&inet, &["link", "set", &port, "master", "br0", "up"])?;
    ip_in(&ns, &["addr", "add", &format!("{wan}/24"), "dev", "wan"])?;
    ip_in(&ns, &["link", "set", "wan", "up"])?;
    ip_in(&ns, &["link", "add", "lan", "type", "bridge"])?;
    ip_in(&ns, &["link", "set", "lan", "up"])?;
    let gw = topology::lan_gateway(i);
    ip_in(&ns, &["addr", "add", &format!("{gw}/24"), "dev", "lan"])?;
    ip_in(
        &ns,
        &["route", "add", "default", "via", &SERVER_A.to_string()],
    )?;
    sysctl_in(&ns, "net.ipv4.ip_forward", "1")?;
    if let Some(rules) = nft::ruleset(preset, wan) {
        exec_in(&ns, "nft", &["-f", "-"], Some(&rules))?;
    }
    lab.nodes.push(Node {
        name: name.to_owned(),
        ns,
        kind: NodeKind::Router { preset },
        addr: wan,
        public: wan,
        lan: Some(gw),
        uplink: Some(("wan".to_owned(), inet, port)),
    });
    Ok(())
}

/// Host `k` behind site `i`'s router `site`.
pub(crate) fn nat_host(
    lab: &mut Lab,
    name: &str,
    site: &str,
    i: usize,
    k: usize,
) -> Result<(), LabError> {
    let router = lab.node(site)?.clone();
    let ns = lab.add_namespace(name)?;
    let port = format!("h{k}");
    veth(&ns, "eth0", &router.ns, &port)?;
    ip_in(&router.ns, &["link", "set", &port, "master", "lan", "up"])?;
    let addr = topology::lan_host(i, k);
    let gw = topology::lan_gateway(i);
    up_with_route(&ns, addr, gw)?;
    lab.nodes.push(Node {
        name: name.to_owned(),
        ns,
        kind: NodeKind::Host {
            site: site.to_owned(),
        },
        addr,
        public: router.public,
        lan: None,
        uplink: Some(("eth0".to_owned(), router.ns, port)),
    });
    Ok(())
}

/// Open host `n`: straight on the internet bridge with a public address.
pub(crate) fn open_host(lab: &mut Lab, name: &str, site: &str, n: usize) -> Result<(), LabError> {
    let inet = lab.ns(INTERNET)?.to_owned();
    let ns = lab.add_namespace(name)?;
    let port = format!("o{n}");
    veth(&ns, "eth0", &inet, &port)?;
    ip_in(&inet, &["link", "set", &port, "master", "br0", "up"])?;
    let addr = topology::open_host(n);
    up_with_route(&ns, addr, SERVER_B)?;
    lab.nodes.push(Node {
        name: name.to_owned(),
        ns,
        kind: NodeKind::Host {
            site: site.to_owned(),
        },
        addr,
        public: addr,
        lan: None,
        uplink: Some(("eth0".to_owned(), inet, port)),
    });
    Ok(())
}

fn veth(ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> Result<(), LabError> {
    ip(&[
        "link", "add", "name", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns",
        ns_b,
    ])
}

fn up_with_route(
    ns: &str,
    addr: std::net::Ipv4Addr,
    gw: std::net::Ipv4Addr,
) -> Result<(), LabError> {
    ip_in(ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    ip_in(ns, &["link", "set", "eth0", "up"])?;
    ip_in(ns, &["route", "add", "default", "via", &gw.to_string()])
}
