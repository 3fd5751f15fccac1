//! Links: latency, jitter, loss (uniform or Gilbert-Elliott bursts), reordering,
//! duplication and MTU, as a pure model that turns "a packet enters now" into arrival times.

use std::time::Duration;

use crate::rng::SimRng;
use crate::time::SimTime;
use crate::trace::DropReason;

/// Bytes of IPv4 + UDP header counted against the MTU.
pub const UDP_IPV4_OVERHEAD: usize = 28;

/// How a link loses packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// No loss.
    None,
    /// Each packet is lost with this probability, independently.
    Uniform(f64),
    /// Bursty loss: a two-state (good/bad) Markov chain, one transition per packet.
    GilbertElliott {
        /// Probability of moving from the good to the bad state.
        p_good_to_bad: f64,
        /// Probability of moving from the bad to the good state.
        p_bad_to_good: f64,
        /// Loss probability while good.
        loss_good: f64,
        /// Loss probability while bad.
        loss_bad: f64,
    },
}

/// The behaviour of one link (applied separately in each direction).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// One-way base delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per packet (order is kept unless reordered).
    pub jitter: Duration,
    /// Loss model.
    pub loss: Loss,
    /// Probability that a packet is held back by `reorder_delay`, letting later ones overtake.
    pub reorder: f64,
    /// How long a reordered packet is held back.
    pub reorder_delay: Duration,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Largest IP packet (payload + 28 bytes of IPv4/UDP header) the link carries.
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss: Loss::None,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            duplicate: 0.0,
            mtu: 1500,
        }
    }
}

impl LinkConfig {
    /// A link with this one-way latency and otherwise perfect.
    pub fn with_latency(latency: Duration) -> LinkConfig {
        LinkConfig {
            latency,
            ..LinkConfig::default()
        }
    }
}

/// Direction across a link: `Up` leaves the attached node, `Down` arrives at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Up,
    Down,
}

/// Per-direction state: burst state, FIFO floor and the direction's own randomness.
#[derive(Debug, Clone)]
struct DirState {
    bad: bool,
    last_arrival: SimTime,
    rng: SimRng,
}

/// What happened to a packet offered to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transit {
    /// The packet is gone.
    Dropped(DropReason),
    /// It arrives at `at`, and a copy at `duplicate` if duplicated.
    Arrives {
        at: SimTime,
        duplicate: Option<SimTime>,
    },
}

/// A link attaching a node (host interface or NAT uplink) to a network.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) config: LinkConfig,
    pub(crate) up: bool,
    dirs: [DirState; 2],
}

impl Link {
    pub(crate) fn new(config: LinkConfig, rng: &mut SimRng) -> Link {
        let dir = |rng: &mut SimRng| DirState {
            bad: false,
            last_arrival: SimTime::ZERO,
            rng: rng.fork(),
        };
        Link {
            config,
            up: true,
            dirs: [dir(rng), dir(rng)],
        }
    }

    /// Offers a packet of `payload_len` bytes of UDP payload to the link at `now`.
    pub(crate) fn transit(&mut self, dir: Dir, now: SimTime, payload_len: usize) -> Transit {
        if !self.up {
            return Transit::Dropped(DropReason::LinkDown);
        }
        let cfg = self.config;
        if payload_len + UDP_IPV4_OVERHEAD > cfg.mtu {
            return Transit::Dropped(DropReason::TooBig);
        }
        let st = &mut self.dirs[dir as usize];
        if lost(st, cfg.loss) {
            return Transit::Dropped(DropReason::Loss);
        }
        let jitter = jitter_sample(&mut st.rng, cfg.jitter);
        let base = now + cfg.latency + jitter;
        let at = if st.rng.chance(cfg.reorder) {
            base + cfg.reorder_delay
        } else {
            let at = base.max(st.last_arrival);
            st.last_arrival = at;
            at
        };
        let duplicate = st.rng.chance(cfg.duplicate).then_some(at);
        Transit::Arrives { at, duplicate }
    }
}

fn jitter_sample(rng: &mut SimRng, jitter: Duration) -> Duration {
    let max = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
    if max == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.below(max.saturating_add(1)))
}

fn lost(st: &mut DirState, loss: Loss) -> bool {
    match loss {
        Loss::None => false,
        Loss::Uniform(p) => st.rng.chance(p),
        Loss::GilbertElliott {
            p_good_to_bad,
            p_bad_to_good,
            loss_good,
            loss_bad,
        } => {
            let flip = if st.bad { p_bad_to_good } else { p_good_to_bad };
            if st.rng.chance(flip) {
                st.bad = !st.bad;
            }
            st.rng.chance(if st.bad { loss_bad } else { loss_good })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(cfg: LinkConfig) -> Link {
        Link::new(cfg, &mut SimRng::new(42))
    }

    fn run(l: &mut Link, n: usize) -> Vec<Transit> {
        (0..n)
            .map(|i| l.transit(Dir::Up, SimTime::from_millis(i as u64), 100))
            .collect()
    }

    #[test]
    fn latency_mtu_and_down() {
        let mut l = link(LinkConfig::with_latency(Duration::from_millis(10)));
        let t = l.transit(Dir::Up, SimTime::ZERO, 1472);
        assert_eq!(
            t,
            Transit::Arrives {
                at: SimTime::from_millis(10),
                duplicate: None
            }
        );
        assert_eq!(
            l.transit(Dir::Up, SimTime::ZERO, 1473),
            Transit::Dropped(DropReason::TooBig)
        );
        l.up = false;
        assert_eq!(
            l.transit(Dir::Down, SimTime::ZERO, 1),
            Transit::Dropped(DropReason::LinkDown)
        );
    }

    #[test]
    fn uniform_loss_rate_is_close() {
        let mut l = link(LinkConfig {
            loss: Loss::Uniform(0.2),
            ..LinkConfig::default()
        });
        let lost = run(&mut l, 10_000)
            .iter()
            .filter(|t| matches!(t, Transit::Dropped(_)))
            .count();
        assert!((1700..2300).contains(&lost), "lost {lost}");
    }

    #[test]
    fn gilbert_elliott_losses_come_in_bursts() {
        let mut l = link(LinkConfig {
            loss: Loss::GilbertElliott {
                p_good_to_bad: 0.01,
                p_bad_to_good: 0.2,
                loss_good: 0.0,
                loss_bad: 1.0,
            },
            ..LinkConfig::default()
        });
        let out = run(&mut l, 20_000);
        let drops: Vec<bool> = out
            .iter()
            .map(|t| matches!(t, Transit::Dropped(_)))
            .collect();
        let lost = drops.iter().filter(|d| **d).count();
        let bursts = drops.windows(2).filter(|w| !w[0] && w[1]).count();
        assert!(lost > 0 && bursts > 0);
        // Mean burst length 1/p_bad_to_good = 5 packets, far above uniform loss's ~1.
        let mean = lost as f64 / bursts as f64;
        assert!(mean > 3.0, "mean burst {mean}");
    }

    #[test]
    fn jitter_keeps_order_reorder_breaks_it_and_duplicates_appear() {
        let mut l = link(LinkConfig {
            jitter: Duration::from_millis(20),
            ..LinkConfig::default()
        });
        let times: Vec<SimTime> = run(&mut l, 500)
            .into_iter()
            .filter_map(|t| match t {
                Transit::Arrives { at, .. } => Some(at),
                Transit::Dropped(_) => None,
            })
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));

        let mut l = link(LinkConfig {
            reorder: 0.3,
            reorder_delay: Duration::from_millis(10),
            duplicate: 0.1,
            ..LinkConfig::default()
        });
        let out = run(&mut l, 500);
        let times: Vec<SimTime> = out
            .iter()
            .filter_map(|t| match t {
                Transit::Arrives { at, .. } => Some(*at),
                Transit::Dropped(_) => None,
            })
            .collect();
        assert!(times.windows(2).any(|w| w[0] > w[1]));
        let dups = out
            .iter()
            .filter(|t| {
                matches!(
                    t,
                    Transit::Arrives {
                        duplicate: Some(_),
                        ..
                    }
                )
            })
            .count();
        assert!((20..90).contains(&dups), "dups {dups}");
    }
}
