//! A fixed one-way delay without `sch_netem`, for kernels built without it
//! (`CONFIG_NETFILTER_NETLINK_QUEUE` is enough): nftables (its `queue` statement) or, on
//! kernels without `nft_queue`, iptables (the xtables `NFQUEUE` target) sends the held
//! packets to NFQUEUE 0 of a node's namespace, and a thread inside that namespace hands
//! each one back (`NF_ACCEPT`) `delay` after it was queued, in order. Speaks
//! nfnetlink_queue over a raw netlink socket (metadata only, no packet copies). Stopped
//! on drop.
//!
//! Only *forwarded* packets should be held: a packet held in its sender's own namespace
//! keeps its socket's send budget (TCP small queues), which throttles TCP far below what
//! the delay alone does (netem avoids that by orphaning what it delays). So a router
//! holds what crosses its uplink ([`Held::Uplink`]), and a host with a public address is
//! delayed where its traffic is routed, in the internet namespace, by its address
//! ([`Held::Addresses`]).
//!
//! Why not the `nfq` crate: its `Queue` needs `&mut` both to receive and to give verdicts
//! and has no descriptor to wait on with a deadline, so one thread could not block for
//! new packets and also release each one at its due time (a receiving thread and a
//! verdict thread share the socket here). The netlink speaking below is only that: bind,
//! metadata-only copy mode, queue length, packet ids in, verdicts out.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use netsim::netns::lab::enter_namespace;
use netsim::netns::Lab;
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// nfnetlink subsystem of the queue, and its messages and attributes.
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NF_ACCEPT: u32 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
/// Packets the kernel may hold for us (the default 1024 is small for 64 KiB bursts).
const QUEUE_MAXLEN: u32 = 16384;
/// The nftables table holding the queue rules.
const TABLE: &str = "amdelay";

/// Which packets a node's delay holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Held<'a> {
    /// Everything leaving by the node's uplink, and everything arriving on it.
    Uplink,
    /// Everything routed through the node to one of these addresses, and from them.
    Addresses(&'a [Ipv4Addr]),
}

/// One queue rule: the hook and the match, in nft words and in iptables words.
struct QueueRule {
    /// `true`: postrouting (leaving), `false`: prerouting (arriving).
    out: bool,
    nft: [String; 3],
    iptables: [String; 2],
}

impl Held<'_> {
    fn rules(self, lab: &Lab, node: &str) -> anyhow::Result<Vec<QueueRule>> {
        let w = |a: &str, b: &str, c: &str| [a.to_owned(), b.to_owned(), c.to_owned()];
        let x = |a: &str, b: &str| [a.to_owned(), b.to_owned()];
        match self {
            Held::Uplink => {
                let n = lab.node(node)?;
                let up = &n.uplink.as_ref().context("node without an uplink")?.0;
                Ok(vec![
                    QueueRule {
                        out: true,
                        nft: w("meta", "oifname", up),
                        iptables: x("-o", up),
                    },
                    QueueRule {
                        out: false,
                        nft: w("meta", "iifname", up),
                        iptables: x("-i", up),
                    },
                ])
            }
            Held::Addresses(addrs) => Ok(addrs
                .iter()
                .flat_map(|a| {
                    let a = a.to_string();
                    [
                        QueueRule {
                            out: true,
                            nft: w("ip", "daddr", &a),
                            iptables: x("-d", &a),
                        },
                        QueueRule {
                            out: false,
                            nft: w("ip", "saddr", &a),
                            iptables: x("-s", &a),
                        },
                    ]
                })
                .collect()),
        }
    }
}

/// A running delay in one node.
pub(crate) struct NodeDelay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NodeDelay {
    /// Delays what `held` says in `node` by `delay`.
    pub(crate) fn start(
        lab: &Lab,
        node: &str,
        held: Held<'_>,
        delay: Duration,
    ) -> anyhow::Result<NodeDelay> {
        let rules = held.rules(lab, node)?;
        let ns = lab.ns(node)?.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_rx, name) = (stop.clone(), format!("delay-{node}"));
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let fd = enter_namespace(&ns)
                .map_err(anyhow::Error::from)
                .and_then(|()| open_queue());
            match fd {
                Ok(fd) => {
                    let _ = ready_tx.send(Ok(()));
                    run(&Arc::new(fd), delay, &stop_rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        let d = NodeDelay {
            stop,
            thread: Some(thread),
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("delay thread never started")??;
        queue_rules(lab, node, &rules)?;
        Ok(d)
    }
}

/// The kernel's counters of `node`'s queue 0 (`/proc/net/netfilter/nfnetlink_queue`):
/// packets waiting, dropped for want of room, dropped for want of a reader.
pub(crate) fn queue_counters(lab: &Lab, node: &str) -> anyhow::Result<serde_json::Value> {
    let out = lab.exec(node, "cat", &["/proc/net/netfilter/nfnetlink_queue"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<u64> = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("0"))
        .context("queue 0 not listed")?
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    Ok(serde_json::json!({
        "waiting": f.get(2),
        "queue_dropped": f.get(5),
        "user_dropped": f.get(6),
        "packets": f.get(7),
    }))
}

impl Drop for NodeDelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why no delay can be made here without netem (no `iptables` for kernels without
/// `nft_queue`), or `None`. Only checks for the program.
pub(crate) fn unavailable_reason() -> Option<String> {
    netsim::netns::gate::find_program("iptables")
        .is_none()
        .then(|| {
            "no sch_netem in the kernel and no iptables (Debian package iptables) for the \
             NFQUEUE delay"
                .to_owned()
        })
}

/// The held traffic in `node` to queue 0 (no bypass: without the delay thread packets
/// drop rather than pass undelayed): nftables, else iptables.
fn queue_rules(lab: &Lab, node: &str, rules: &[QueueRule]) -> anyhow::Result<()> {
    if nft_queue_rules(lab, node, rules).is_ok() {
        return Ok(());
    }
    let _ = lab.exec(node, "nft", &["delete", "table", "inet", TABLE]);
    for r in rules {
        let chain = if r.out { "POSTROUTING" } else { "PREROUTING" };
        let mut args = vec!["-t", "mangle", "-A", chain];
        args.extend(r.iptables.iter().map(String::as_str));
        args.extend(["-j", "NFQUEUE", "--queue-num", "0"]);
        lab.exec(node, "iptables", &args)
            .context("iptables NFQUEUE rule")?;
    }
    Ok(())
}

fn nft_queue_rules(lab: &Lab, node: &str, rules: &[QueueRule]) -> anyhow::Result<()> {
    let chains: [&[&str]; 3] = [
        &["add", "table", "inet", TABLE],
        &[
            "add",
            "chain",
            "inet",
            TABLE,
            "out",
            "{ type filter hook postrouting priority 200; policy accept; }",
        ],
        &[
            "add",
            "chain",
            "inet",
            TABLE,
            "in",
            "{ type filter hook prerouting priority -250; policy accept; }",
        ],
    ];
    for args in chains {
        lab.exec(node, "nft", args)?;
    }
    for r in rules {
        let chain = if r.out { "out" } else { "in" };
        let mut args = vec!["add", "rule", "inet", TABLE, chain];
        args.extend(r.nft.iter().map(String::as_str));
        args.extend(["queue", "num", "0"]);
        lab.exec(node, "nft", &args)?;
    }
    Ok(())
}

/// A netlink socket bound to queue 0 of this thread's namespace, metadata only.
fn open_queue() -> anyhow::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::empty(),
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &(8 << 20));
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 100_000))?;
    let mut cmd = Vec::new();
    attr(&mut cmd, NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]);
    configure(&fd, &cmd)?;
    let mut params = Vec::new();
    let mut p = 0u32.to_be_bytes().to_vec();
    p.push(NFQNL_COPY_META);
    attr(&mut params, NFQA_CFG_PARAMS, &p);
    attr(
        &mut params,
        NFQA_CFG_QUEUE_MAXLEN,
        &QUEUE_MAXLEN.to_be_bytes(),
    );
    configure(&fd, &params)?;
    Ok(fd)
}

/// Sends one config message and checks the kernel's acknowledgement.
fn configure(fd: &OwnedFd, attrs: &[u8]) -> anyhow::Result<()> {
    let msg = message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, attrs);
    send(fd.as_raw_fd(), &msg, MsgFlags::empty())?;
    let mut buf = vec![0u8; 4096];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).context("no ack from nfqueue")?;
    let (ty, payload) = first_message(&buf[..n]).context("short netlink reply")?;
    if ty == NLMSG_ERROR {
        let code = payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(-1, i32::from_ne_bytes);
        if code != 0 {
            bail!("nfqueue config refused: errno {}", -code);
        }
    }
    Ok(())
}

/// Receives packet ids and lets each go `delay` after it arrived, in order, until
/// `stop`; the verdicts go out from a second thread that sleeps until each is due.
fn run(fd: &Arc<OwnedFd>, delay: Duration, stop: &AtomicBool) {
    let (tx, rx) = mpsc::channel::<(u32, Instant)>();
    let out = fd.clone();
    let verdicts = std::thread::spawn(move || {
        while let Ok((id, due)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let _ = send(out.as_raw_fd(), &verdict(id), MsgFlags::empty());
        }
    });
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
            continue;
        };
        let now = Instant::now();
        for id in packet_ids(&buf[..n]) {
            if tx.send((id, now + delay)).is_err() {
                return;
            }
        }
    }
    drop(tx);
    let _ = verdicts.join();
}

/// The ids of the queued packets in one netlink datagram.
fn packet_ids(mut buf: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            break;
        }
        if ty == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            // nlmsghdr (16) + nfgenmsg (4), then attributes.
            if let Some(id) = packet_id(&buf[20.min(len)..len]) {
                ids.push(id);
            }
        }
        buf = &buf[align(len).min(buf.len())..];
    }
    ids
}

/// NFQA_PACKET_HDR's packet id among `attrs`.
fn packet_id(mut attrs: &[u8]) -> Option<u32> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == NFQA_PACKET_HDR && len >= 8 {
            return Some(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    None
}

/// The type and payload of the first message in `buf`.
fn first_message(buf: &[u8]) -> Option<(u16, &[u8])> {
    let len = u32::from_ne_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let ty = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
    Some((ty, buf.get(16..len.min(buf.len()))?))
}

/// An accept verdict for packet `id` of queue 0.
fn verdict(id: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut v = NF_ACCEPT.to_be_bytes().to_vec();
    v.extend(id.to_be_bytes());
    attr(&mut attrs, NFQA_VERDICT_HDR, &v);
    message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, &attrs)
}

/// nlmsghdr + nfgenmsg (AF_UNSPEC, version 0, queue 0) + `attrs`.
fn message(msg: u16, flags: u16, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend(u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend(((NFNL_SUBSYS_QUEUE << 8) | msg).to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(0u32.to_ne_bytes()); // seq
    m.extend(0u32.to_ne_bytes()); // port id: the kernel
    m.extend([0u8, 0, 0, 0]); // family, version, queue number (big endian) 0
    m.extend(attrs);
    m
}

/// Appends a netlink attribute, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    out.extend(len.to_ne_bytes());
    out.extend(ty.to_ne_bytes());
    out.extend(payload);
    out.resize(align(out.len()), 0);
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_the_parser() {
        let v = verdict(0x0102_0304);
        assert_eq!(v.len(), 16 + 4 + 12);
        assert_eq!(
            u32::from_ne_bytes(v[..4].try_into().unwrap()) as usize,
            v.len()
        );
        // A packet message as the kernel sends it: header attribute with the id.
        let mut attrs = Vec::new();
        attr(&mut attrs, NFQA_PACKET_HDR, &[0, 0, 0, 7, 8, 0, 3]);
        let mut two = message(NFQNL_MSG_PACKET, 0, &attrs);
        two.extend(message(NFQNL_MSG_PACKET, 0, &{
            let mut a = Vec::new();
            attr(&mut a, 9, &[1, 2]);
            attr(&mut a, NFQA_PACKET_HDR, &[0, 0, 1, 0, 8, 0, 1]);
            a
        }));
        assert_eq!(packet_ids(&two), vec![7, 256]);
    }
}
