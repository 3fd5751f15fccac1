//! Cross-check of the NAT model against the kernel: every preset is built as a real
//! nftables NAT in a netns lab, classified with the same probes netsim uses (plain UDP
//! sockets on two public addresses and real coturn with RFC 5780 CHANGE-REQUESTs), and
//! the class must equal `Preset::class()`.

use netsim::classify::ProbeOutcome;
use netsim::netns::probe::{self, ProbeResult};
use netsim::netns::{self, Lab, PortPattern, Tool};
use netsim::Preset;

/// What the kernel NAT built for `preset` must look like.
fn expected(preset: Preset) -> (Option<ProbeOutcome>, Option<PortPattern>) {
    let behaviour = match preset {
        Preset::Open => Some(ProbeOutcome::NoNat),
        Preset::UdpBlocked => Some(ProbeOutcome::NoUdp),
        p => p
            .class()
            .map(|(mapping, filtering)| ProbeOutcome::Nat(mapping, filtering)),
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
    let started = std::time::Instant::now();
    let lab = b.build().unwrap();
    println!(
        "lab: 7 sites, 7 hosts, coturn, built in {:?}",
        started.elapsed()
    );
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

/// What stun-client (RFC 3489, an independent implementation) prints for each preset.
/// It tells only "Dependent Mapping" for any non-EIM NAT and no filtering then, and calls
/// sequential ports "random".
fn stun_client_expects(preset: Preset) -> &'static str {
    match preset {
        Preset::Open => "Primary: Open",
        Preset::FullCone => "Primary: Independent Mapping, Independent Filter, preserves ports",
        Preset::RestrictedCone => {
            "Primary: Independent Mapping, Address Dependent Filter, preserves ports"
        }
        Preset::PortRestrictedCone => {
            "Primary: Independent Mapping, Port Dependent Filter, preserves ports"
        }
        Preset::Symmetric | Preset::SymmetricSequential => "Primary: Dependent Mapping",
        Preset::UdpBlocked => "Primary: Blocked",
    }
}

#[test]
fn stun_client_agrees_with_every_preset() {
    let tools = [Tool::Nft, Tool::Coturn, Tool::StunClient];
    if !netns::lab_available("stun_client_agrees_with_every_preset", &tools) {
        return;
    }
    let mut b = Lab::builder().coturn();
    for (i, p) in Preset::ALL.iter().enumerate() {
        b = b
            .site(&format!("s{i}"), *p)
            .host(&format!("h{i}"), &format!("s{i}"));
    }
    let lab = b.build().unwrap();
    let verdicts: Vec<(Preset, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = Preset::ALL
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let lab = &lab;
                s.spawn(move || {
                    let out = lab
                        .output(&format!("h{i}"), "stun", &["203.0.113.1"])
                        .unwrap();
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    let line = text
                        .lines()
                        .find(|l| l.starts_with("Primary:"))
                        .unwrap_or("")
                        .to_owned();
                    (*p, line)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failures = Vec::new();
    for (preset, line) in &verdicts {
        println!("{:<22} {line}", preset.name());
        if !line.starts_with(stun_client_expects(*preset)) {
            failures.push(format!("{preset}: stun-client says {line:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "stun-client disagrees:\n{}",
        failures.join("\n")
    );
}
