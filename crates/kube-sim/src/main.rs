//! `kube-sim` binary: flags, optional preload/load/churn, serve until SIGTERM/SIGINT.

use clap::Parser;
use kube_sim::workload::reference::{self, Size};
use kube_sim::workload::{self, WorkloadConfig};
use kube_sim::{BookmarkTiming, KubeSim, SimConfig, Store};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    /// Refuse streaming lists (sendInitialEvents) with 422, like a server whose WatchList
    /// feature gate is off.
    #[arg(long)]
    no_watch_list: bool,
    /// Events kept for watches and paged lists (older revisions get 410 Expired).
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// A watch BOOKMARK every interval (e.g. 1s) for tests that want them fast; default:
    /// as the real server (deadline - 2 s, else about once a minute).
    #[arg(long, value_parser = humantime::parse_duration)]
    bookmark_interval: Option<Duration>,
    /// Load objects from a `kubectl get -A -o json` List or a JSON-lines file.
    #[arg(long)]
    load: Option<PathBuf>,
    /// Generate this many pods (with their Deployments/ReplicaSets/Services/ConfigMaps).
    #[arg(long, default_value_t = 0)]
    pods: usize,
    /// Namespaces the generated objects spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Approximate JSON size of each generated pod, bytes.
    #[arg(long, default_value_t = 6144)]
    object_bytes: usize,
    /// Also generate the Krateo CRDs and custom resources.
    #[arg(long)]
    krateo: bool,
    /// Number of Krateo custom resources (with --krateo).
    #[arg(long, default_value_t = 100)]
    custom_resources: usize,
    /// Seed of the generator and of the churn.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Changes per second applied to pods and custom resources (0 = none).
    #[arg(long, default_value_t = 0.0)]
    churn_rate: f64,
    /// Measure the cost of serving the list of all pods (a child server with --pods) against
    /// decoding it, print the figures as JSON lines, and exit.
    #[arg(long)]
    bench_list: bool,
    /// Stop the churn after this long (default: until exit).
    #[arg(long, value_parser = humantime::parse_duration)]
    churn_duration: Option<Duration>,
    /// Preload this many of the benchmark's reference pods (ingest-bench's objects) and their
    /// namespaces, and log objects, JSON bytes, load seconds, objects/s and peak RSS.
    #[arg(long, default_value_t = 0)]
    reference_pods: usize,
    /// Size of the reference pods: small (~2 KiB), realistic (~10 KiB), large (~16 KiB).
    #[arg(long, default_value = "realistic")]
    reference_size: Size,
    /// Exit after preloading (and logging the figures) instead of serving.
    #[arg(long)]
    exit_after_load: bool,
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
    if args.bench_list {
        let exe = std::env::current_exe()?;
        let pods = if args.pods == 0 { 100_000 } else { args.pods };
        for r in kube_sim::bench::run(&exe, pods, args.object_bytes, 3).await? {
            println!("{}", serde_json::to_string(&r)?);
        }
        return Ok(());
    }
    let store = Store::new(args.history);
    if let Some(path) = &args.load {
        let r = kube_sim::load::load_file(&store, path)?;
        tracing::info!(loaded = r.loaded, skipped = r.skipped, errors = ?r.errors, "loaded {}", path.display());
    }
    if args.pods > 0 || args.krateo {
        let cfg = WorkloadConfig {
            seed: args.seed,
            namespaces: args.namespaces,
            pods: args.pods,
            target_bytes: args.object_bytes,
            apps: args.pods > 0,
            krateo: args.krateo,
            custom_resources: args.custom_resources,
        };
        let r = workload::preload(&store, &cfg);
        tracing::info!(
            objects = r.objects,
            pods = r.pods,
            custom_resources = r.custom_resources,
            pod_mean_bytes = r.pod_mean_bytes,
            elapsed_ms = r.elapsed_ms as u64,
            "workload preloaded"
        );
    }
    if args.reference_pods > 0 {
        preload_reference(&store, args.reference_pods, args.reference_size)?;
    }
    if args.exit_after_load {
        return Ok(());
    }
    let cfg = SimConfig {
        listen: args.listen,
        history: args.history,
        bookmarks: match args.bookmark_interval {
            Some(every) => BookmarkTiming::Every(every),
            None => BookmarkTiming::AsRealServer,
        },
        tls: args.tls,
        watch_list: !args.no_watch_list,
        system_namespace: true,
    };
    let sim = KubeSim::start_with_store(cfg, store).await?;
    if let Some(p) = &args.kubeconfig_out {
        sim.write_kubeconfig(p)?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "kube-sim listening on {}", sim.base_url())?;
        out.flush()?;
    }
    let cancel = CancellationToken::new();
    let churn = (args.churn_rate > 0.0).then(|| {
        tokio::spawn(workload::churn(
            sim.store(),
            args.churn_rate,
            args.churn_duration,
            args.seed,
            cancel.clone(),
        ))
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    cancel.cancel();
    if let Some(c) = churn {
        if let Ok(r) = c.await {
            tracing::info!(?r, "churn stopped");
        }
    }
    sim.shutdown().await;
    Ok(())
}

/// Preloads the reference pods and logs what the load cost: the figures of docs/kube-sim.md,
/// "Scale: memory and load rate".
fn preload_reference(store: &Store, pods: usize, size: Size) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    reference::preload(store, pods, size)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let json_bytes = store.stored_bytes("v1", "Pod") + store.stored_bytes("v1", "Namespace");
    let peak_rss_bytes = proc_status_bytes("VmHWM:");
    let rss_bytes = proc_status_bytes("VmRSS:");
    tracing::info!(
        objects = store.len(),
        pods,
        size = size.label(),
        json_bytes,
        load_seconds = format!("{load_seconds:.2}"),
        objects_per_second = (store.len() as f64 / load_seconds.max(1e-9)).round() as u64,
        peak_rss_bytes,
        rss_bytes,
        peak_rss_per_json_byte = format!("{:.3}", peak_rss_bytes as f64 / json_bytes.max(1) as f64),
        "reference pods preloaded"
    );
    Ok(())
}

/// A `/proc/self/status` memory figure (`VmHWM:` is the peak RSS) in bytes; 0 where there is no
/// procfs.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}
