//! The daemon's STUN prober against real coturn STUN servers on loopback.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentmesh::net::stun::{MappingObservation, StunProbe};

use crate::daemon_process::Killed;

fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn coturn(ip: &str, dir: &std::path::Path) -> Option<(Killed, SocketAddr)> {
    let port = free_udp_port(ip);
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--stun-only",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--simple-log",
        ])
        .arg(format!("--listening-ip={ip}"))
        .arg(format!("--listening-port={port}"))
        .arg(format!(
            "--pidfile={}",
            dir.join(format!("{ip}.pid")).display()
        ))
        .arg("--log-file=stdout")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some((Killed(child), format!("{ip}:{port}").parse().unwrap()))
}

#[tokio::test]
async fn two_real_coturn_observers_see_no_nat_on_loopback() {
    if Command::new("turnserver").arg("--help").output().is_err() {
        assert!(
            std::env::var("AGENTMESH_REQUIRE_NETNS").is_err(),
            "coturn (turnserver) is required here; scripts/test installs it as root"
        );
        eprintln!("SKIPPED: coturn (turnserver) is not installed; run scripts/test as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_c1, s1) = coturn("127.0.0.1", dir.path()).unwrap();
    let (_c2, s2) = coturn("127.0.0.2", dir.path()).unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = sock.local_addr().unwrap();
    // coturn needs a moment to bind; the prober's own retries cover it, and we start
    // fresh rounds until both answer (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut probe = StunProbe::new(Instant::now(), &[s1, s2], 0x5eed);
    while Instant::now() < deadline && probe.answers().len() < 2 {
        while let Some(t) = probe.poll_transmit() {
            sock.send_to(&t.data, t.dst).await.unwrap();
        }
        let mut buf = [0u8; 1500];
        match tokio::time::timeout(Duration::from_millis(100), sock.recv_from(&mut buf)).await {
            Ok(Ok((n, src))) => probe.handle_response(src, &buf[..n]),
            _ => probe.handle_timeout(Instant::now()),
        }
        if probe.is_done() && probe.answers().len() < 2 {
            probe = StunProbe::new(Instant::now(), &[s1, s2], 0x5eed + 1);
        }
    }
    assert_eq!(probe.answers(), vec![(s1, local), (s2, local)]);
    assert_eq!(probe.observation(local), MappingObservation::NoNat);
}
