//! `kube-sim` binary: flags, optional preload/churn, serve until SIGTERM/SIGINT.

use clap::Parser;
use kube_sim::{KubeSim, SimConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "kube-sim",
    about = "A Kubernetes API server for tests, demos and benchmarks"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at the server to this file.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Serve HTTPS with generated certificates; require a client certificate or bearer token.
    #[arg(long)]
    tls: bool,
    /// Events kept for watches and paged lists (older revisions get 410 Expired).
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Interval between watch BOOKMARK events, e.g. 1s, 60s.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    bookmark_interval: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = SimConfig {
        listen: args.listen,
        history: args.history,
        bookmark_interval: args.bookmark_interval,
        tls: args.tls,
    };
    let sim = KubeSim::start(cfg).await?;
    if let Some(p) = &args.kubeconfig_out {
        sim.write_kubeconfig(p)?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "kube-sim listening on {}", sim.base_url())?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sim.shutdown().await;
    Ok(())
}
