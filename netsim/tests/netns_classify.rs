//! Cross-check of the NAT model against the kernel: every preset is built as a real
//! nftables NAT in a netns lab, classified with the same probes netsim uses (plain UDP
//! sockets on two public addresses and real coturn with RFC 5780 CHANGE-REQUESTs), and
//! the class must equal `Preset::class()`.

use netsim::netns::probe::{self, ProbeResult};
use netsim::netns::{self, Behaviour, Lab, PortPattern, Tool};
use netsim::Preset;

/// What the kernel NAT built for `preset` must look like.
fn expected(preset: Preset) -> (Option<Behaviour>, Option<PortPattern>) {
    let behaviour = match preset {
        Preset::Open => Some(Behaviour::Open),
        Preset::UdpBlocked => Some(Behaviour::Blocked),
        p => p
            .class()
            .map(|(mapping, filtering)| Behaviour::Translated { mapping, filtering }),
    };
    let ports = match preset {
        Preset::UdpBlocked => None,
        Preset::Symmetric => Some(PortPattern::Random),
        Preset::SymmetricSequential => Some(PortPattern::Sequential { max_step: 1 }),
        _ => Some(PortPattern::Preserved),
    };
    (behaviour, ports)
}

fn check(preset: Preset, how: &str, r: &ProbeResult) -> Option<String> {
    let (behaviour, ports) = expected(preset);
    let got = r.behaviour().ok();
    let got_ports = (preset != Preset::UdpBlocked).then(|| r.port_pattern());
    println!(
        "{:<22} {how:<6} {:<70} {:?}",
        preset.name(),
        format!("{got:?}"),
        got_ports
    );
    (got != behaviour || got_ports != ports).then(|| {
        format!(
            "{preset} via {how}: got {got:?} {got_ports:?}, want {behaviour:?} {ports:?} ({r:?})"
        )
    })
}

#[test]
fn kernel_nat_class_matches_the_model_for_every_preset() {
    if !netns::lab_available(
        "kernel_nat_class_matches_the_model_for_every_preset",
        &[Tool::Nft, Tool::Coturn],
    ) {
        return;
    }
    let mut b = Lab::builder().coturn();
    for (i, p) in Preset::ALL.iter().enumerate() {
        b = b
            .site(&format!("s{i}"), *p)
            .host(&format!("h{i}"), &format!("s{i}"));
    }
    let lab = b.build().unwrap();
    // Probe every site at once (each probe owns its sockets); both probe kinds per host.
    let results: Vec<(Preset, ProbeResult, ProbeResult)> = std::thread::scope(|s| {
        let handles: Vec<_> = Preset::ALL
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let lab = &lab;
                s.spawn(move || {
                    let host = format!("h{i}");
                    let direct = probe::probe_direct(lab, &host).unwrap();
                    let stun = probe::probe_stun(lab, &host).unwrap();
                    (*p, direct, stun)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failures = Vec::new();
    for (preset, direct, stun) in &results {
        failures.extend(check(*preset, "direct", direct));
        failures.extend(check(*preset, "stun", stun));
    }
    assert!(
        failures.is_empty(),
        "kernel NAT differs from the model:\n{}",
        failures.join("\n")
    );
}
