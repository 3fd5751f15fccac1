//! `agentmesh-relay`: the blind relay server. Reads a TOML config, serves UDP and TCP/TLS,
//! exposes `/metrics` and `/status` on loopback, drains gracefully on SIGTERM/SIGINT.

use std::path::PathBuf;

use agentmesh_proto::keyfile;
use agentmesh_relay::server::BoxStore;
use agentmesh_relay::{Config, MemStore, SqliteStore, StartOptions};
use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

/// agentmesh blind relay: forwards ciphertext between daemons by node id, over UDP and
/// TCP/TLS, and keeps sealed mail for offline nodes.
#[derive(Debug, Parser)]
#[command(name = "agentmesh-relay", version)]
struct Args {
    /// TOML config file (see dist/relay.example.toml); defaults apply without one.
    #[arg(short, long, env = "AGENTMESH_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Print the relay's node id (creating the key if needed) and exit.
    #[arg(long)]
    print_id: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let key = keyfile::load_or_create(&cfg.key_file)
        .with_context(|| format!("relay key {}", cfg.key_file.display()))?;
    if args.print_id {
        println!("{}", key.node_id());
        return Ok(());
    }
    let store: BoxStore = match &cfg.store_path {
        Some(p) => {
            Box::new(SqliteStore::open(p).with_context(|| format!("mail store {}", p.display()))?)
        }
        None => Box::new(MemStore::default()),
    };
    let handle = agentmesh_relay::start(&cfg, key, store, StartOptions::default()).await?;
    tracing::info!(
        relay_id = %handle.relay_id,
        udp = ?handle.udp_addr,
        tls = ?handle.tls_addr,
        admin = ?handle.admin_addr,
        "agentmesh-relay serving"
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(timeout_secs = cfg.drain_timeout_secs, "draining");
    handle.drain(cfg.drain_timeout()).await;
    tracing::info!("stopped");
    Ok(())
}
