//! What every phase shares: the kube-sim with the preloaded workload, the ingester process
//! (binary, environment, readiness, metrics), the field policy of the baselines and the
//! PostgreSQL measurements (CPU from /proc, table sizes).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use kube_sim::workload::reference::{self, Size};
use kube_sim::{KubeSim, SimConfig};
use resources_ingester::row::routes::{Route, StaticRoutes, BUILTIN_STATIC_ROUTES};
use testkit::pg::TestDb;
use testkit::process::IngesterProcess;
use tokio_postgres::Client;

use crate::procfs;
use crate::Args;

pub const CLUSTER: &str = "bench";

pub fn static_routes() -> Vec<Route> {
    StaticRoutes::parse(BUILTIN_STATIC_ROUTES)
        .0
        .routes
        .iter()
        .map(|r| (**r).clone())
        .collect()
}

pub fn ingester_bin(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.ingester_bin {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let p = me
        .parent()
        .context("executable has no directory")?
        .join("resources-ingester");
    anyhow::ensure!(
        p.exists(),
        "{} not found: build it (cargo build --release -p resources-ingester) or pass --ingester-bin",
        p.display()
    );
    Ok(p)
}

/// A kube-sim with a preloaded workload and a kubeconfig.
pub struct Sim {
    pub sim: KubeSim,
    pub dir: tempfile::TempDir,
    pub pods: usize,
    pub namespaces: usize,
}

impl Sim {
    pub async fn start(n: usize, size: Size) -> anyhow::Result<Sim> {
        let store = kube_sim::Store::new(100_000);
        reference::preload(&store, n, size)?;
        let sim = KubeSim::start_with_store(SimConfig::default(), store).await?;
        let dir = tempfile::tempdir()?;
        sim.write_kubeconfig(&dir.path().join("kubeconfig"))?;
        Ok(Sim {
            sim,
            dir,
            pods: n,
            namespaces: reference::namespaces_for(n),
        })
    }
    pub fn kubeconfig(&self) -> String {
        self.dir.path().join("kubeconfig").display().to_string()
    }
}

pub struct Ingester {
    pub proc: IngesterProcess,
}

pub fn ingester_env(args: &Args, db: &TestDb, sim: &Sim) -> Vec<(String, String)> {
    let mut env = db.ingester_env();
    env.push(("KUBECONFIG".into(), sim.kubeconfig()));
    env.push(("CLUSTER_NAME".into(), CLUSTER.into()));
    env.push(("RUST_LOG".into(), "info".into()));
    env.push(("SHUTDOWN_TIMEOUT".into(), "60s".into()));
    for kv in &args.ingester_env {
        if let Some((k, v)) = kv.split_once('=') {
            env.retain(|(n, _)| n != k);
            env.push((k.into(), v.into()));
        }
    }
    env
}

/// The ingester's field policy under this run's `--ingester-env` (`REDACT_SENSITIVE`,
/// `SENSITIVE_KINDS`, `PRUNE_FIELDS`), parsed as the ingester parses them, so the COPY
/// baseline writes the same (pruned) rows as the ingester.
pub fn field_policy(args: &Args) -> anyhow::Result<resources_ingester::row::fields::FieldPolicy> {
    let env = |key: &str| {
        args.ingester_env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
            .next_back()
    };
    let redact = match env("REDACT_SENSITIVE").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => anyhow::bail!("--ingester-env REDACT_SENSITIVE={v}: expected true or false"),
    };
    let sensitive = match env("SENSITIVE_KINDS") {
        Some(v) => v
            .parse()
            .map_err(|e| anyhow::anyhow!("--ingester-env SENSITIVE_KINDS: {e}"))?,
        None => Default::default(),
    };
    let prune = env("PRUNE_FIELDS")
        .unwrap_or_default()
        .parse()
        .map_err(|e| anyhow::anyhow!("--ingester-env PRUNE_FIELDS: {e}"))?;
    Ok(resources_ingester::row::fields::FieldPolicy::new(
        redact, &sensitive, &prune,
    ))
}

/// Ready: `/readyz` is 200 (the ingester counts its static routes before the probe server
/// starts, so this means every first list, or resume, is done).
pub async fn really_ready(p: &IngesterProcess) -> bool {
    p.readyz().await == Ok(200)
}

/// Waits until `really_ready`; fails early when the process exits.
pub async fn wait_really_ready(p: &mut IngesterProcess, timeout: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while !really_ready(p).await {
        if t0.elapsed() > timeout {
            anyhow::bail!("ingester not ready after {timeout:?}");
        }
        if p.livez().await.is_err() && t0.elapsed() > Duration::from_secs(20) {
            p.wait_ready(Duration::from_millis(1)).await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub async fn metric(p: &IngesterProcess, series: &str) -> f64 {
    p.metric(series).await.unwrap_or(0.0)
}

/// PostgreSQL CPU: all postgres processes, and only those of our database plus the
/// background processes (other engineers' databases excluded).
pub async fn pg_cpu_split(
    admin: &Client,
    db: &str,
    before: &HashMap<u32, f64>,
) -> anyhow::Result<(f64, f64)> {
    let after = procfs::postgres_cpu();
    let all = procfs::postgres_cpu_delta(before, &after);
    let ours: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 OR backend_type <> 'client backend'",
            &[&db],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mine: HashMap<u32, f64> = after
        .into_iter()
        .filter(|(pid, _)| ours.contains(&(*pid as i32)))
        .collect();
    Ok((all, procfs::postgres_cpu_delta(before, &mine)))
}

/// The sum of every watch's `ingester_watch_received_bytes_total`, in MiB.
pub async fn received_mib(p: &IngesterProcess) -> f64 {
    let text = p.metrics().await.unwrap_or_default();
    let bytes: f64 = text
        .lines()
        .filter(|l| l.starts_with("ingester_watch_received_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    bytes / (1024.0 * 1024.0)
}

pub async fn wait_quiet(p: &IngesterProcess, max: Duration) -> f64 {
    // Until the queue is empty and the written counter stood still for a second.
    let t0 = Instant::now();
    let mut last = -1.0;
    let mut still_since = Instant::now();
    loop {
        let w = metric(p, "ingester_rows_written_total").await;
        let q = metric(p, "ingester_queue_depth").await;
        if w != last || q > 0.0 {
            last = w;
            still_since = Instant::now();
        }
        if still_since.elapsed() >= Duration::from_secs(1) || t0.elapsed() > max {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// MiB on disk (heap, TOAST, indexes) of `krateo_resources` and of the change history (all
/// its partitions; 0 when the table does not exist).
pub async fn table_mib(db: &TestDb) -> anyhow::Result<(f64, f64)> {
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT pg_total_relation_size('krateo_resources')::float8,
                    coalesce((SELECT sum(pg_total_relation_size(relid))
                                FROM pg_partition_tree(to_regclass('krateo_resource_history'))), 0)::float8",
            &[],
        )
        .await?;
    let mib = |b: f64| b / (1024.0 * 1024.0);
    Ok((mib(row.get(0)), mib(row.get(1))))
}
