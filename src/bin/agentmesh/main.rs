//! `agentmesh`: the command-line client of agentmeshd (status, discover, request, emit,
//! subscribe, ping, keygen) and the self-contained demo.

mod commands;
mod demo;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Talk to the local agentmeshd: find agents by capability, call them, publish and watch
/// events. Every command speaks the daemon's JSON-lines API on its Unix socket.
#[derive(Debug, Parser)]
#[command(
    name = "agentmesh",
    version,
    after_help = "Examples:\n  agentmesh demo\n  agentmesh status\n  agentmesh discover --capability echo\n  agentmesh request --capability echo --skill echo --input '{\"text\":\"hi\"}'\n  agentmesh subscribe 'mesh.event.>'\n  agentmesh emit mesh.event.user.login --data '{\"user\":\"ada\"}'"
)]
struct Cli {
    /// The daemon's socket (default: $AGENTMESH_SOCKET, $XDG_RUNTIME_DIR/agentmesh/agentmeshd.sock,
    /// /run/agentmesh/agentmeshd.sock).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon's node id, its agents, tasks and peers.
    Status,
    /// Find agents; all given filters must match.
    Discover(DiscoverArgs),
    /// Call a skill on an agent (by id) or on any agent with a capability, and print the result.
    Request(RequestArgs),
    /// Publish an event on a subject such as mesh.event.user.login.
    Emit(EmitArgs),
    /// Print events matching a pattern (`*` = one token, `>` = the rest) as they arrive.
    Subscribe(SubscribeArgs),
    /// Measure round trips to the daemon hosting an agent (A…) or to a node (N…).
    Ping(PingArgs),
    /// Create an Ed25519 key file (mode 0600) and print its node and agent ids.
    Keygen(KeygenArgs),
    /// Run a self-contained demo: a daemon and agents in this process, no setup needed.
    Demo,
}

#[derive(Debug, Args)]
struct DiscoverArgs {
    /// Required capability (repeat for several; all must match).
    #[arg(long = "capability", short = 'c')]
    capabilities: Vec<String>,
    /// Required skill id.
    #[arg(long)]
    skill: Option<String>,
    /// Skill tag (repeat; any may match).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Substring of the agent's name.
    #[arg(long)]
    name: Option<String>,
    /// online, busy, degraded or offline.
    #[arg(long)]
    availability: Option<String>,
    /// Most results.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Debug, Args)]
struct RequestArgs {
    /// Target agent id (A…).
    #[arg(
        long,
        conflicts_with = "capability",
        required_unless_present = "capability"
    )]
    to: Option<String>,
    /// Any agent offering this capability.
    #[arg(long, short = 'c')]
    capability: Option<String>,
    /// Skill to call.
    #[arg(long, short = 's')]
    skill: String,
    /// Input as JSON (a bare word is sent as a string).
    #[arg(long, short = 'i', default_value = "null")]
    input: String,
    /// Give up after this many milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Ask for streamed chunks and print them as they come.
    #[arg(long)]
    stream: bool,
    /// Session id grouping related tasks.
    #[arg(long)]
    context_id: Option<String>,
}

#[derive(Debug, Args)]
struct EmitArgs {
    /// Subject, e.g. mesh.event.user.login.
    topic: String,
    /// Event data as JSON (a bare word is sent as a string).
    #[arg(long, short = 'd', default_value = "null")]
    data: String,
}

#[derive(Debug, Args)]
struct SubscribeArgs {
    /// Pattern, e.g. 'mesh.event.>' or 'mesh.event.*.login'.
    pattern: String,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Debug, Args)]
struct PingArgs {
    /// Agent id (A…) or node id (N…).
    target: String,
    /// Round trips.
    #[arg(long, short = 'c', default_value_t = 4)]
    count: u32,
    /// Pause between round trips, in milliseconds.
    #[arg(long, short = 'i', default_value_t = 1000)]
    interval_ms: u64,
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Where to write the key (must not exist).
    #[arg(long, short = 'o', default_value = "agentmesh.key")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
