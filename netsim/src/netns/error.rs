//! Errors of the netns lab: building, running commands, entering namespaces.

use std::io;

/// What can go wrong while building or using a lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A program could not be started at all (not installed?).
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status:?}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit code, if it exited.
        status: Option<i32>,
        /// What it wrote on stderr.
        stderr: String,
    },
    /// No node of that name in the lab.
    #[error("no node `{name}` in this lab")]
    UnknownNode {
        /// The name asked for.
        name: String,
    },
    /// A host was attached to a site that was not declared.
    #[error("host `{host}` names unknown site `{site}`")]
    UnknownSite {
        /// The host.
        host: String,
        /// The site it names.
        site: String,
    },
    /// Two nodes with the same name.
    #[error("node name `{name}` used twice")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A name that is not `[a-z0-9]{1,8}` or is reserved.
    #[error("bad node name `{name}` (want 1-8 of [a-z0-9], not `internet`)")]
    BadName {
        /// The name.
        name: String,
    },
    /// More sites or hosts than the address plan holds.
    #[error("too many {what} (max {max})")]
    TooMany {
        /// Sites or hosts.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A line of a lab description did not parse.
    #[error("lab description line {line}: {reason}")]
    Description {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// setns(2) into a lab namespace failed.
    #[error("cannot enter namespace {ns}: {source}")]
    Setns {
        /// The namespace name.
        ns: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A thread running code inside a namespace panicked.
    #[error("thread inside namespace {ns} panicked")]
    ThreadPanicked {
        /// The namespace name.
        ns: String,
    },
    /// Other IO (sockets, temp files).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A daemon did not become ready in time.
    #[error("{what} not ready after {secs} s (log: {log})")]
    NotReady {
        /// Which daemon.
        what: &'static str,
        /// How long we waited.
        secs: u64,
        /// Its log file.
        log: String,
    },
    /// The operation needs a feature the lab was built without.
    #[error("lab has no {what}")]
    Missing {
        /// What is missing (e.g. "coturn").
        what: &'static str,
    },
}
