//! `tc netem` on a node's uplink: delay, jitter and loss, applied to both directions.

use crate::netns::cmd;
use crate::netns::error::LabError;

/// A netem setting for one direction of a link (applied to both directions).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Netem {
    /// One-way delay in milliseconds.
    pub delay_ms: u32,
    /// Jitter in milliseconds (uniform ± around the delay).
    pub jitter_ms: u32,
    /// Random loss in percent (0–100).
    pub loss_pct: f32,
}

impl Netem {
    /// A pure delay.
    pub fn delay(ms: u32) -> Self {
        Netem {
            delay_ms: ms,
            ..Netem::default()
        }
    }

    /// The `tc qdisc … netem` arguments after `netem`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["delay".to_owned(), format!("{}ms", self.delay_ms)];
        if self.jitter_ms > 0 {
            args.push(format!("{}ms", self.jitter_ms));
        }
        if self.loss_pct > 0.0 {
            args.extend(["loss".to_owned(), format!("{}%", self.loss_pct)]);
        }
        args
    }

    /// Parses `delay=20 jitter=5 loss=1.5` words (milliseconds, percent).
    pub fn parse<'a>(words: impl IntoIterator<Item = &'a str>) -> Option<Netem> {
        let mut n = Netem::default();
        for word in words {
            let (key, value) = word.split_once('=')?;
            let value = value.trim_end_matches("ms").trim_end_matches('%');
            match key {
                "delay" => n.delay_ms = value.parse().ok()?,
                "jitter" => n.jitter_ms = value.parse().ok()?,
                "loss" => n.loss_pct = value.parse().ok()?,
                _ => return None,
            }
        }
        Some(n)
    }

    /// Applies this setting to `ifname` in `ns`: a netem qdisc on its egress when the
    /// kernel has `sch_netem`; otherwise (loss only) an nftables ingress drop on the
    /// *peer* end, which is the same direction. Delay without `sch_netem` is an error.
    pub(crate) fn apply(&self, ns: &str, ifname: &str, peer: (&str, &str)) -> Result<(), LabError> {
        let args = self.args();
        let mut all = vec!["qdisc", "replace", "dev", ifname, "root", "netem"];
        all.extend(args.iter().map(String::as_str));
        match cmd::exec_in(ns, "tc", &all, None) {
            Ok(_) => Ok(()),
            Err(LabError::CommandFailed { stderr, .. })
                if stderr.contains("qdisc kind is unknown") =>
            {
                if self.delay_ms > 0 || self.jitter_ms > 0 {
                    return Err(LabError::Missing {
                        what: "sch_netem in the kernel (netem delay)",
                    });
                }
                let (peer_ns, peer_if) = peer;
                cmd::exec_in(peer_ns, "nft", &["-f", "-"], Some(&self.nft_loss(peer_if))).map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// An nftables netdev table dropping `loss_pct` of what arrives on `ifname`.
    fn nft_loss(&self, ifname: &str) -> String {
        let table = format!("netdev amloss_{ifname}");
        // Loss in units of 1/10000, compared against a uniform random number.
        let per_10k = (self.loss_pct.clamp(0.0, 100.0) * 100.0).round() as u32;
        format!(
            "table {table} {{}}\ndelete table {table}\ntable {table} {{\n\tchain ingress {{\n\t\t\
             type filter hook ingress device \"{ifname}\" priority 0; policy accept;\n\t\t\
             numgen random mod 10000 < {per_10k} drop\n\t}}\n}}\n"
        )
    }
}

/// Whether the kernel has `sch_netem` (tried in a throwaway namespace).
pub fn netem_supported() -> bool {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ns = format!("amlab-{}-netemcheck{n}", std::process::id());
    if cmd::ip(&["netns", "add", &ns]).is_err() {
        return false;
    }
    let ok = cmd::exec_in(
        &ns,
        "tc",
        &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
        None,
    )
    .is_ok();
    let _ = cmd::ip(&["netns", "del", &ns]);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let n = Netem::parse(["delay=20ms", "loss=1.5%"]).unwrap();
        assert_eq!(n.args(), ["delay", "20ms", "loss", "1.5%"]);
        assert_eq!(Netem::parse(["speed=1"]), None);
        assert_eq!(Netem::delay(5).args(), ["delay", "5ms"]);
        let loss = Netem {
            loss_pct: 1.5,
            ..Netem::default()
        }
        .nft_loss("eth0");
        assert!(
            loss.contains("device \"eth0\"") && loss.contains("< 150 drop"),
            "{loss}"
        );
    }
}
