//! Real coturn (`turnserver`, STUN only) in the internet namespace, listening on both
//! server addresses and two ports so RFC 5780 CHANGE-REQUESTs work.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::netns::error::LabError;
use crate::netns::lab::Lab;
use crate::netns::probe::stun_query;
use crate::netns::stun::Change;
use crate::netns::topology::{INTERNET, SERVER_A, SERVER_B};

/// coturn's main port.
pub const PORT: u16 = 3478;
/// coturn's alternate port (RFC 5780 change-port answers come from it).
pub const ALT_PORT: u16 = 3479;
/// How long coturn may take to answer its first request.
const READY: Duration = Duration::from_secs(10);

/// The two STUN server endpoints: `[A:3478, B:3478]`.
pub fn servers() -> [SocketAddr; 2] {
    [
        SocketAddr::new(SERVER_A.into(), PORT),
        SocketAddr::new(SERVER_B.into(), PORT),
    ]
}

/// Starts coturn in the internet namespace and waits until it answers.
pub(crate) fn start(lab: &Lab) -> Result<(), LabError> {
    let pidfile = lab.dir().join("turnserver.pid");
    let args = [
        "-n".to_owned(),
        "--stun-only".to_owned(),
        format!("--listening-ip={SERVER_A}"),
        format!("--listening-ip={SERVER_B}"),
        format!("--listening-port={PORT}"),
        format!("--alt-listening-port={ALT_PORT}"),
        "--no-tls".to_owned(),
        "--no-dtls".to_owned(),
        "--no-cli".to_owned(),
        "--log-file=stdout".to_owned(),
        "--simple-log".to_owned(),
        format!("--pidfile={}", pidfile.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let spawned = lab.spawn(INTERNET, "turnserver", &args)?;
    let probe = lab.udp_socket(INTERNET, SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0))?;
    let start = Instant::now();
    while start.elapsed() < READY {
        if stun_query(&probe, servers()[1], Change::default())?.is_some() {
            tracing::debug!(elapsed = ?start.elapsed(), "coturn ready");
            return Ok(());
        }
    }
    Err(LabError::NotReady {
        what: "coturn",
        secs: READY.as_secs(),
        log: spawned.log.display().to_string(),
    })
}
