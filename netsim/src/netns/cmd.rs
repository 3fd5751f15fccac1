//! Running the helper programs (`ip`, `nft`, `tc`) and reporting their failures.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::netns::error::LabError;
use crate::netns::gate;

/// Runs `program args…`, feeding `stdin` if given; fails on a non-zero exit.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, LabError> {
    let out = output(program, args, stdin)?;
    if !out.status.success() {
        return Err(LabError::CommandFailed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// Runs `program args…`, feeding `stdin` if given; any exit status is returned.
pub(crate) fn output(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, LabError> {
    tracing::trace!(program, ?args, "lab command");
    let path = gate::find_program(program).unwrap_or_else(|| program.into());
    let mut child = Command::new(path)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| LabError::Io {
                what: "writing command stdin",
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| LabError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    Ok(out)
}

/// `ip args…`.
pub(crate) fn ip(args: &[&str]) -> Result<(), LabError> {
    run("ip", args, None).map(drop)
}

/// `ip -n ns args…`.
pub(crate) fn ip_in(ns: &str, args: &[&str]) -> Result<(), LabError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// `ip netns exec ns program args…` (stdin optional), failing on non-zero exit.
pub(crate) fn exec_in(
    ns: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, LabError> {
    let exe = program_path(program);
    let mut all = vec!["netns", "exec", ns, &exe];
    all.extend_from_slice(args);
    run("ip", &all, stdin)
}

/// `ip netns exec ns program args…`, returning the output whatever the exit status.
pub(crate) fn output_in(ns: &str, program: &str, args: &[&str]) -> Result<Output, LabError> {
    let exe = program_path(program);
    let mut all = vec!["netns", "exec", ns, &exe];
    all.extend_from_slice(args);
    output("ip", &all, None)
}

/// The full path of `program` where found (sbin may be missing from `PATH`).
fn program_path(program: &str) -> String {
    gate::find_program(program).map_or_else(|| program.to_owned(), |p| p.display().to_string())
}

/// Writes a sysctl inside a namespace (`/proc/sys/net` is per namespace).
pub(crate) fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    exec_in(ns, "sh", &["-c", &format!("echo {value} > {path}")], None).map(drop)
}
