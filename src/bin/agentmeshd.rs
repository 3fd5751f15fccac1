//! `agentmeshd`: the per-host agentmesh daemon. Serves the local API on a Unix socket.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use tracing::info;

use agentmesh::config::DaemonConfig;
use agentmesh::daemon::Daemon;

/// The agentmesh daemon: lets local agents (any language, JSON lines over a Unix socket)
/// register, discover each other, request, respond, stream, emit and subscribe.
#[derive(Debug, Parser)]
#[command(
    name = "agentmeshd",
    version,
    after_help = "Configuration: TOML (default /etc/agentmesh/agentmeshd.toml; a missing default file means all defaults).\nFlags override the file. See docs/local-api.md for the socket protocol."
)]
struct Args {
    /// Configuration file.
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
    /// Local API socket path (overrides the config and $AGENTMESH_SOCKET).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory (node key, agent keys).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Log level or tracing filter, e.g. info, debug, agentmesh=trace.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut config = DaemonConfig::load(args.config.as_deref())?;
    if let Some(s) = args.socket {
        config.socket = s;
    }
    if let Some(d) = args.state_dir {
        config.state_dir = d;
    }
    if let Some(l) = args.log_level {
        config.log_level = l;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log_level)
                .context("invalid log level")?,
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = config.runtime().context("starting the async runtime")?;
    runtime.block_on(async {
        let daemon = Daemon::start(&config)?;
        info!(node_id = %daemon.node_id(), socket = %config.socket.display(), "agentmeshd ready");
        daemon.run(shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupt: shutting down"),
    }
}
