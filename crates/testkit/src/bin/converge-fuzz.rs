//! `converge-fuzz`: the seeded randomized convergence run (issue 11). For each seed, the real
//! ingester binary against kube-sim and a real PostgreSQL, a random schedule of changes and
//! faults, and the convergence checker at every quiet point. One line per seed, then the
//! totals; exit 1 when any seed failed.
//!
//! `cargo run --release -p testkit --bin converge-fuzz -- --seeds 20`
//!
//! `--real`: the seeds run against a real Kubernetes v1.36.2 control plane
//! (`testkit::realkube`, one plane for the whole run, seeds one at a time) instead of kube-sim.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use testkit::fuzz::{run_seed, FuzzOptions};

#[derive(Parser, Debug)]
#[command(
    name = "converge-fuzz",
    about = "Seeded randomized convergence run of the ingester against kube-sim and PostgreSQL"
)]
struct Args {
    /// Run N seeds: FIRST..FIRST+N-1 (seeds 1..=N by default).
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<u64>,
    /// The first seed of `--seeds`.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Run this one seed (repeatable).
    #[arg(long)]
    seed: Vec<u64>,
    /// Target seconds per seed (sets the number of phases, one per 4 s; same seed and
    /// duration, same schedule).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// The ingester binary (default: resources-ingester next to this binary, i.e.
    /// target/<profile>/resources-ingester).
    #[arg(long)]
    ingester: Option<PathBuf>,
    /// Do not require rows of scopes no longer watched (after a redeploy) to be marked deleted.
    #[arg(long)]
    no_retire_check: bool,
    /// Leave out the faults of real API servers (lagging caches, replicas, replays, late
    /// bookmarks, stalls, silent watches): the schedules seeds played before those existed
    #[arg(long)]
    no_api_server_faults: bool,
    /// Also inject the database's own faults: a switchover, a read-only window (then back, or
    /// the standby promoted), a failover that loses commits. Each seed gets a private primary
    /// and a streaming standby (PostgreSQL binaries with pg_basebackup needed), and about half
    /// the seeds go through PgBouncer in transaction mode (pgbouncer needed). Without it the
    /// seeds play the schedules they played before.
    #[arg(long)]
    db_faults: bool,
    /// Seconds a quiet point waits for convergence.
    #[arg(long, default_value_t = 30)]
    converge_timeout: u64,
    /// Seeds run side by side (each has its own kube-sim, database and ingesters); lines are
    /// printed as seeds finish.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    jobs: u64,
    /// Run against a real Kubernetes control plane (etcd, kube-apiserver,
    /// kube-controller-manager; started once, shared by the seeds, one seed at a time):
    /// changes through the real API server, its faults (apiserver restarts, etcd compaction
    /// with a restart, a lagging second apiserver, namespace deletion) instead of kube-sim's.
    #[arg(long)]
    real: bool,
    /// Also leave the trace and logs of passing seeds.
    #[arg(long)]
    keep_artifacts: bool,
    /// Where failing seeds leave their trace and ingester logs.
    #[arg(long, default_value = "target/converge-fuzz")]
    artifacts: PathBuf,
}

/// SIGINT or SIGTERM.
async fn stop_requested() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn default_ingester() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("resources-ingester")))
        .unwrap_or_else(|| PathBuf::from("resources-ingester"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let seeds: Vec<u64> = match (args.seeds, args.seed.is_empty()) {
        (Some(n), _) => (args.first..args.first.saturating_add(n)).collect(),
        (None, false) => args.seed.clone(),
        (None, true) => (1..=20).collect(),
    };
    let mut opts = FuzzOptions::new(
        args.ingester.clone().unwrap_or_else(default_ingester),
        Duration::from_secs(args.duration),
    );
    opts.retire_check = !args.no_retire_check;
    opts.api_server_faults = !args.no_api_server_faults;
    opts.db_faults = args.db_faults;
    opts.converge_timeout = Duration::from_secs(args.converge_timeout);
    opts.artifacts = Some(args.artifacts.clone());
    opts.keep_artifacts = args.keep_artifacts;
    if !opts.ingester.exists() {
        eprintln!(
            "no ingester binary at {}: build it first (cargo build --release -p resources-ingester) or pass --ingester",
            opts.ingester.display()
        );
        return std::process::ExitCode::from(2);
    }
    let mut jobs = args.jobs as usize;
    if args.real {
        if jobs > 1 {
            eprintln!("--real runs one seed at a time (one control plane): --jobs 1");
            jobs = 1;
        }
        opts.real = match testkit::fuzz::RealPlane::start().await {
            Ok(Some(p)) => Some(p),
            Ok(None) => {
                eprintln!(
                    "--real: no real Kubernetes binaries (see crates/testkit/src/realkube.rs)"
                );
                return std::process::ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("--real: the control plane did not start: {e:#}");
                return std::process::ExitCode::from(2);
            }
        };
    }
    let (mut passed, mut failed) = (0u64, 0u64);
    let (mut changes, mut faults, mut refused) = (0u64, 0u64, 0u64);
    let mut steps: std::collections::BTreeMap<&'static str, u64> =
        std::collections::BTreeMap::new();
    let mut pending = seeds.into_iter();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < jobs {
            let Some(seed) = pending.next() else { break };
            let opts = opts.clone();
            running.spawn(async move { run_seed(seed, &opts).await });
        }
        let done = tokio::select! {
            done = running.join_next() => done,
            _ = stop_requested() => {
                // Dropping the seeds' futures stops their ingesters and kube-sims.
                running.abort_all();
                while running.join_next().await.is_some() {}
                eprintln!("interrupted");
                return std::process::ExitCode::from(130);
            }
        };
        let Some(done) = done else {
            break;
        };
        let report = match done {
            Ok(r) => r,
            Err(e) => {
                println!("a seed's task failed: {e}");
                failed += 1;
                continue;
            }
        };
        println!("{}", report.line(&opts));
        changes += report.changes;
        faults += report.faults;
        refused += report.refused;
        for (step, n) in &report.steps {
            *steps.entry(*step).or_insert(0u64) += *n;
        }
        if report.passed() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    if opts.real.is_some() {
        println!(
            "total: {changes} changes made ({refused} refused by the real server), {faults} faults injected"
        );
    } else {
        println!("total: {changes} changes made, {faults} faults injected");
    }
    let by_kind: Vec<String> = steps.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("steps by kind: {}", by_kind.join(", "));
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
