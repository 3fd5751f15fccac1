//! `agentmesh-rendezvous`: the rendezvous service binary (registry, discovery,
//! introductions, STUN). Reads a TOML file, serves until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use agentmesh_proto::keyfile;
use agentmesh_rendezvous::config::Config;
use agentmesh_rendezvous::server;
use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

/// agentmesh rendezvous: knows who is online and what they can do, introduces daemons to
/// each other, answers STUN. Never sees agent traffic.
#[derive(Debug, Parser)]
#[command(name = "agentmesh-rendezvous", version)]
struct Args {
    /// Configuration file (TOML; see dist/rendezvous.example.toml).
    #[arg(
        short,
        long,
        env = "AGENTMESH_RV_CONFIG",
        default_value = "/etc/agentmesh/rendezvous.toml"
    )]
    config: PathBuf,
    /// Print the rendezvous node id (creating the key if needed) and exit.
    #[arg(long)]
    print_id: bool,
    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(&args.log_format);
    let cfg = Config::load(&args.config)?;
    let key = keyfile::load_or_create(&cfg.key_file)
        .with_context(|| format!("node key {}", cfg.key_file.display()))?;
    if args.print_id {
        println!("{}", key.node_id());
        return Ok(());
    }
    let running = server::start(cfg, key)
        .await
        .context("starting the rendezvous")?;
    println!(
        "{} udp={} admin={}",
        running.id, running.udp_addr, running.admin_addr
    );
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    running.shutdown().await;
    Ok(())
}
