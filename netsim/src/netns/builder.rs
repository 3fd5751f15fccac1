//! Describing a lab: sites with a NAT preset, hosts, coturn, miniupnpd, netem; in code
//! or from the small text format that `netsim/lab/lab.sh` also reads.

use crate::behavior::Preset;
use crate::netns::error::LabError;
use crate::netns::lab::Lab;
use crate::netns::netem::Netem;
use crate::netns::topology::{INTERNET, MAX_HOSTS, MAX_SITES};

/// A lab description; [`LabBuilder::build`] makes it real.
///
/// ```text
/// # lab description: one statement per line
/// site a symmetric        # site NAME PRESET (a router, unless the preset is open)
/// host a1 a               # host NAME SITE
/// coturn                  # coturn on 203.0.113.1 and 198.51.100.1, ports 3478/3479
/// miniupnpd a             # miniupnpd on site a's router (implies coturn)
/// netem a1 delay=20 loss=1  # netem on a node's uplink, both directions
/// ```
#[derive(Debug, Clone, Default)]
pub struct LabBuilder {
    pub(crate) sites: Vec<(String, Preset)>,
    pub(crate) hosts: Vec<(String, String)>,
    pub(crate) coturn: bool,
    pub(crate) miniupnpd: Vec<String>,
    pub(crate) netem: Vec<(String, Netem)>,
}

impl LabBuilder {
    /// An empty description (just the internet).
    pub fn new() -> Self {
        LabBuilder::default()
    }

    /// Adds a site: a router doing `preset` (none for [`Preset::Open`]).
    pub fn site(mut self, name: &str, preset: Preset) -> Self {
        self.sites.push((name.to_owned(), preset));
        self
    }

    /// Adds a host on `site`'s LAN (or on the internet for an open site).
    pub fn host(mut self, name: &str, site: &str) -> Self {
        self.hosts.push((name.to_owned(), site.to_owned()));
        self
    }

    /// Runs coturn (STUN only) in the internet namespace on both server addresses.
    pub fn coturn(mut self) -> Self {
        self.coturn = true;
        self
    }

    /// Runs miniupnpd (UPnP IGD + NAT-PMP) on `site`'s router; implies coturn.
    pub fn miniupnpd(mut self, site: &str) -> Self {
        self.miniupnpd.push(site.to_owned());
        self.coturn = true;
        self
    }

    /// Puts `netem` on `node`'s uplink, both directions.
    pub fn netem(mut self, node: &str, netem: Netem) -> Self {
        self.netem.push((node.to_owned(), netem));
        self
    }

    /// Parses the text format (see the type's doc).
    pub fn from_description(text: &str) -> Result<Self, LabError> {
        let mut b = LabBuilder::new();
        for (i, raw) in text.lines().enumerate() {
            let words: Vec<&str> = raw
                .split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let bad = |reason: &str| LabError::Description {
                line: i + 1,
                reason: reason.to_owned(),
            };
            b = match words.as_slice() {
                [] => b,
                ["site", name, preset] => {
                    let p = Preset::from_name(preset).ok_or_else(|| bad("unknown preset"))?;
                    b.site(name, p)
                }
                ["host", name, site] => b.host(name, site),
                ["coturn"] => b.coturn(),
                ["miniupnpd", site] => b.miniupnpd(site),
                ["netem", node, rest @ ..] => {
                    let n = Netem::parse(rest.iter().copied()).ok_or_else(|| bad("bad netem"))?;
                    b.netem(node, n)
                }
                _ => return Err(bad("unknown statement")),
            };
        }
        Ok(b)
    }

    /// Checks names, references and limits.
    pub fn validate(&self) -> Result<(), LabError> {
        let mut seen = vec![INTERNET.to_owned()];
        let names = self
            .sites
            .iter()
            .map(|s| &s.0)
            .chain(self.hosts.iter().map(|h| &h.0));
        for name in names {
            let ok = (1..=8).contains(&name.len())
                && name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            if !ok || name == INTERNET {
                return Err(LabError::BadName { name: name.clone() });
            }
            if seen.contains(name) {
                return Err(LabError::DuplicateName { name: name.clone() });
            }
            seen.push(name.clone());
        }
        for (host, site) in &self.hosts {
            if !self.sites.iter().any(|s| &s.0 == site) {
                return Err(LabError::UnknownSite {
                    host: host.clone(),
                    site: site.clone(),
                });
            }
        }
        self.validate_refs(&seen)?;
        self.validate_limits()
    }

    fn validate_refs(&self, seen: &[String]) -> Result<(), LabError> {
        for site in &self.miniupnpd {
            let is_router = self
                .sites
                .iter()
                .any(|s| &s.0 == site && s.1 != Preset::Open);
            if !is_router {
                return Err(LabError::UnknownNode { name: site.clone() });
            }
        }
        for (node, _) in &self.netem {
            let open_site = self
                .sites
                .iter()
                .any(|s| &s.0 == node && s.1 == Preset::Open);
            if node == INTERNET || open_site || !seen.contains(node) {
                return Err(LabError::UnknownNode { name: node.clone() });
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), LabError> {
        if self.sites.len() > MAX_SITES {
            return Err(LabError::TooMany {
                what: "sites",
                max: MAX_SITES,
            });
        }
        if self.hosts.len() > MAX_HOSTS {
            return Err(LabError::TooMany {
                what: "hosts",
                max: MAX_HOSTS,
            });
        }
        Ok(())
    }

    /// Builds the lab (needs root; see [`crate::netns::gate::lab_available`]).
    pub fn build(self) -> Result<Lab, LabError> {
        self.validate()?;
        Lab::create(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_parses() {
        let b = LabBuilder::from_description(
            "# demo\nsite a symmetric\nhost a1 a  # one host\nminiupnpd a\nnetem a1 delay=20\n",
        )
        .unwrap();
        assert_eq!(b.sites, [("a".to_owned(), Preset::Symmetric)]);
        assert_eq!(b.hosts, [("a1".to_owned(), "a".to_owned())]);
        assert!(b.coturn);
        b.validate().unwrap();
    }

    #[test]
    fn bad_descriptions_fail() {
        assert!(LabBuilder::from_description("site a cone").is_err());
        assert!(LabBuilder::from_description("router a").is_err());
        let dup = LabBuilder::new().site("a", Preset::FullCone).host("a", "a");
        assert!(matches!(
            dup.validate(),
            Err(LabError::DuplicateName { .. })
        ));
        let orphan = LabBuilder::new().host("h", "nowhere");
        assert!(matches!(
            orphan.validate(),
            Err(LabError::UnknownSite { .. })
        ));
        let long = LabBuilder::new().site("waytoolongname", Preset::Open);
        assert!(matches!(long.validate(), Err(LabError::BadName { .. })));
        let upnp_open = LabBuilder::new().site("o", Preset::Open).miniupnpd("o");
        assert!(upnp_open.validate().is_err());
    }
}
