//! `ingest-bench`: the ingester against a bare single-stream COPY and row-wise upserts of the
//! same rows, side by side on one machine, plus churn latency, restart cost and memory.
//! See docs/benchmarks.md for what each phase measures and how.

mod churn;
mod procfs;
mod rows;
mod workload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use kube_sim::{KubeSim, SimConfig};
use resources_ingester::routes::{Route, StaticRoutes, BUILTIN_STATIC_ROUTES};
use testkit::pg::TestDb;
use testkit::process::IngesterProcess;
use tokio_postgres::Client;

use crate::rows::{RawParam, RowReader, COLUMNS, NCOLS};
use crate::workload::Size;

pub const CLUSTER: &str = "bench";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ingest-bench",
    about = "Benchmarks the ingester against a bare COPY and row-wise upserts of the same rows"
)]
pub struct Args {
    /// 10,000 objects and short churn steps: a few minutes.
    #[arg(long)]
    pub quick: bool,
    /// Objects (pods) to sync; default 100,000 (10,000 with --quick).
    #[arg(long)]
    pub objects: Option<usize>,
    /// Changes per second of the steady churn.
    #[arg(long, default_value_t = 500.0)]
    pub churn_rate: f64,
    /// Seconds of steady churn (and of each step of the highest-rate search); default 30 (10 with --quick).
    #[arg(long)]
    pub churn_seconds: Option<u64>,
    /// Phases to skip, comma-separated: copy, rowwise, multirow, churn, maxrate, restart, sizes.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// The ingester binary (default: `resources-ingester` next to this executable).
    #[arg(long, env = "INGESTER_BIN")]
    pub ingester_bin: Option<PathBuf>,
    /// Extra ingester environment, `KEY=VALUE` (repeatable), e.g. `--ingester-env WORKERS=2`.
    #[arg(long = "ingester-env")]
    pub ingester_env: Vec<String>,
    /// Size of the objects of the main run: small (~2 KiB), realistic (~10 KiB), large (~16 KiB).
    #[arg(long, default_value = "realistic")]
    pub size: String,
}

impl Args {
    fn objects(&self) -> usize {
        self.objects
            .unwrap_or(if self.quick { 10_000 } else { 100_000 })
    }
    fn churn_seconds(&self) -> u64 {
        self.churn_seconds
            .unwrap_or(if self.quick { 10 } else { 30 })
    }
    fn runs(&self, phase: &str) -> bool {
        !self.skip.iter().any(|s| s == phase)
    }
    fn size(&self) -> anyhow::Result<Size> {
        Ok(match self.size.as_str() {
            "small" => Size::Small,
            "realistic" => Size::Realistic,
            "large" => Size::Large,
            s => anyhow::bail!("unknown --size {s}"),
        })
    }
}

/// Uses `DB_*` when set (the machine's PostgreSQL on 127.0.0.1:5432 as postgres otherwise):
/// testkit's `TestDb` reads `TEST_PG_*`, so map them before any thread starts.
fn map_db_env() {
    for (from, to) in [
        ("DB_HOST", "TEST_PG_HOST"),
        ("DB_PORT", "TEST_PG_PORT"),
        ("DB_USER", "TEST_PG_USER"),
        ("DB_PASS", "TEST_PG_PASSWORD"),
    ] {
        if let Ok(v) = std::env::var(from) {
            std::env::set_var(to, v);
        }
    }
}

fn main() -> anyhow::Result<()> {
    map_db_env();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// One row of the printed table.
struct Line {
    phase: String,
    metric: String,
    value: String,
}

#[derive(Default)]
struct Report {
    lines: Vec<Line>,
}

impl Report {
    fn add(&mut self, phase: &str, metric: &str, value: impl std::fmt::Display) {
        let value = value.to_string();
        println!("  {phase:<10} {metric:<44} {value}");
        self.lines.push(Line {
            phase: phase.into(),
            metric: metric.into(),
            value,
        });
    }
    fn print(&self) {
        println!();
        println!("| phase | metric | value |");
        println!("|---|---|---|");
        for l in &self.lines {
            println!("| {} | {} | {} |", l.phase, l.metric, l.value);
        }
        println!();
    }
}

pub fn static_routes() -> Vec<Route> {
    StaticRoutes::parse(BUILTIN_STATIC_ROUTES)
        .0
        .routes
        .iter()
        .map(|r| (**r).clone())
        .collect()
}

fn ingester_bin(args: &Args) -> anyhow::Result<PathBuf> {
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
    async fn start(n: usize, size: Size) -> anyhow::Result<Sim> {
        let store = kube_sim::Store::new(100_000);
        workload::preload(&store, n, size)?;
        let sim = KubeSim::start_with_store(SimConfig::default(), store).await?;
        let dir = tempfile::tempdir()?;
        sim.write_kubeconfig(&dir.path().join("kubeconfig"))?;
        Ok(Sim {
            sim,
            dir,
            pods: n,
            namespaces: workload::namespaces_for(n),
        })
    }
    fn kubeconfig(&self) -> String {
        self.dir.path().join("kubeconfig").display().to_string()
    }
}

pub struct Ingester {
    pub proc: IngesterProcess,
}

fn ingester_env(args: &Args, db: &TestDb, sim: &Sim) -> Vec<(String, String)> {
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
fn field_policy(args: &Args) -> anyhow::Result<resources_ingester::fields::FieldPolicy> {
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
    Ok(resources_ingester::fields::FieldPolicy::new(
        redact, &sensitive, &prune,
    ))
}

/// Ready: `/readyz` is 200 (the ingester counts its static routes before the probe server
/// starts, so this means every first list, or resume, is done).
async fn really_ready(p: &IngesterProcess) -> bool {
    p.readyz().await == Ok(200)
}

/// Waits until `really_ready`; fails early when the process exits.
async fn wait_really_ready(p: &mut IngesterProcess, timeout: Duration) -> anyhow::Result<()> {
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

async fn metric(p: &IngesterProcess, series: &str) -> f64 {
    p.metric(series).await.unwrap_or(0.0)
}

/// PostgreSQL CPU: all postgres processes, and only those of our database plus the
/// background processes (other engineers' databases excluded).
async fn pg_cpu_split(
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

/// Result of one full sync through the ingester.
pub struct SyncResult {
    pub rows: u64,
    pub seconds: f64,
    pub ready_seconds: f64,
    pub ingester_cpu: f64,
    pub peak_rss_mib: f64,
    pub pg_cpu_all: f64,
    pub pg_cpu_ours: f64,
    pub harness_cpu: f64,
    /// Response bytes from the API server, all watches (compressed when API_COMPRESSION is on).
    pub received_mib: f64,
}

/// The sum of every watch's `ingester_watch_received_bytes_total`, in MiB.
async fn received_mib(p: &IngesterProcess) -> f64 {
    let text = p.metrics().await.unwrap_or_default();
    let bytes: f64 = text
        .lines()
        .filter(|l| l.starts_with("ingester_watch_received_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    bytes / (1024.0 * 1024.0)
}

/// Starts the ingester against `db`, waits until `expected` rows are committed.
async fn sync(
    args: &Args,
    bin: &Path,
    sim: &Sim,
    db: &TestDb,
    expected: u64,
) -> anyhow::Result<(Ingester, SyncResult)> {
    let admin = db.client().await?;
    let pg_before = procfs::postgres_cpu();
    let self_before = procfs::self_cpu();
    let t0 = Instant::now();
    let mut proc = IngesterProcess::start(bin, &ingester_env(args, db, sim))?;
    let pid = proc.pid();
    let mut ready_at: Option<f64> = None;
    let deadline = t0 + Duration::from_secs(60 + expected / 100);
    let written;
    loop {
        if ready_at.is_none() && really_ready(&proc).await {
            ready_at = Some(t0.elapsed().as_secs_f64());
        }
        let w = metric(&proc, "ingester_rows_written_total").await;
        if ready_at.is_some() && w as u64 >= expected {
            written = w as u64;
            break;
        }
        if Instant::now() > deadline {
            let log = proc.log();
            let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
            anyhow::bail!("sync not done: {w} of {expected} rows; ingester log (last lines, reversed):\n{tail}");
        }
        if proc.livez().await.is_err() && Instant::now() > t0 + Duration::from_secs(20) {
            proc.wait_ready(Duration::from_millis(1)).await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let ingester_cpu = procfs::cpu_seconds(pid).map_or(0.0, |(_, c)| c);
    let harness_cpu = procfs::self_cpu() - self_before;
    let (pg_cpu_all, pg_cpu_ours) = pg_cpu_split(&admin, &db.name, &pg_before).await?;
    let peak_rss_mib = procfs::peak_rss_mib(pid).unwrap_or(0.0);
    let received_mib = received_mib(&proc).await;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM krateo_resources WHERE deleted_at IS NULL",
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(
        n as u64 >= expected,
        "metrics say {written} rows written but the table has {n} live rows (expected {expected})"
    );
    Ok((
        Ingester { proc },
        SyncResult {
            rows: expected,
            seconds,
            ready_seconds: ready_at.unwrap_or(seconds),
            ingester_cpu,
            peak_rss_mib,
            pg_cpu_all,
            pg_cpu_ours,
            harness_cpu,
            received_mib,
        },
    ))
}

/// A fresh database with the ingester's table: its own settings (lz4) or, with `defaults`,
/// the presenter's DDL with PostgreSQL's default TOAST compression.
async fn fresh_table(defaults: bool) -> anyhow::Result<(TestDb, Client)> {
    let db = TestDb::create().await?;
    let c = db.client().await?;
    let info = resources_ingester::storage::schema::ensure_schema(&c)
        .await
        .map_err(|e| anyhow::anyhow!("schema: {e}"))?;
    if defaults {
        c.batch_execute("ALTER TABLE krateo_resources ALTER COLUMN raw SET COMPRESSION default, ALTER COLUMN status_raw SET COMPRESSION default")
            .await?;
    } else {
        anyhow::ensure!(
            info.lz4,
            "this PostgreSQL has no lz4: the ingester's settings equal the defaults"
        );
    }
    Ok((db, c))
}

struct WriteResult {
    rows: u64,
    seconds: f64,
    pg_cpu_ours: f64,
}

/// One single-stream binary COPY of the prepared file.
async fn bulk_copy(path: &Path, defaults: bool) -> anyhow::Result<WriteResult> {
    use futures::SinkExt;
    let (db, c) = fresh_table(defaults).await?;
    let admin = db.client().await?;
    let pg_before = procfs::postgres_cpu();
    let t0 = Instant::now();
    let sink = c
        .copy_in(&format!(
            "COPY krateo_resources ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    futures::pin_mut!(sink);
    let mut f = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        use tokio::io::AsyncReadExt;
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        sink.send(bytes::Bytes::copy_from_slice(&buf[..n])).await?;
    }
    let rows = sink.as_mut().finish().await?;
    let seconds = t0.elapsed().as_secs_f64();
    let (_, pg_cpu_ours) = pg_cpu_split(&admin, &db.name, &pg_before).await?;
    Ok(WriteResult {
        rows,
        seconds,
        pg_cpu_ours,
    })
}

const UPSERT_SET: &str = "ON CONFLICT (global_uid) DO UPDATE SET updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at, namespace = EXCLUDED.namespace, resource_version = EXCLUDED.resource_version, resource_kind = EXCLUDED.resource_kind, resource_plural = EXCLUDED.resource_plural, composition_id = EXCLUDED.composition_id, raw = EXCLUDED.raw, status_raw = EXCLUDED.status_raw, object_resource_version = EXCLUDED.object_resource_version";

fn values_clause(rows: usize) -> String {
    (0..rows)
        .map(|r| {
            let ps: Vec<String> = (1..=NCOLS).map(|c| format!("${}", r * NCOLS + c)).collect();
            format!("({})", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Upserts of `per_stmt` rows per statement, each statement its own transaction, into a table
/// with the presenter's DDL and PostgreSQL's defaults.
async fn upserts(path: &Path, per_stmt: usize) -> anyhow::Result<WriteResult> {
    let (db, c) = fresh_table(true).await?;
    let admin = db.client().await?;
    let sql = |n| {
        format!(
            "INSERT INTO krateo_resources ({COLUMNS}) VALUES {} {UPSERT_SET}",
            values_clause(n)
        )
    };
    let full = c.prepare(&sql(per_stmt)).await?;
    let mut reader = RowReader::open(path)?;
    let pg_before = procfs::postgres_cpu();
    let t0 = Instant::now();
    let mut rows = 0u64;
    let mut batch = Vec::with_capacity(per_stmt);
    loop {
        let row = reader.next_row()?;
        let done = row.is_none();
        if let Some(r) = row {
            batch.push(r);
        }
        if batch.len() == per_stmt || (done && !batch.is_empty()) {
            let params: Vec<RawParam<'_>> = batch
                .iter()
                .flat_map(|r| r.fields.iter().map(|f| RawParam(f.as_deref())))
                .collect();
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p as _).collect();
            if batch.len() == per_stmt {
                c.execute(&full, &refs).await?;
            } else {
                let stmt = c.prepare(&sql(batch.len())).await?;
                c.execute(&stmt, &refs).await?;
            }
            rows += batch.len() as u64;
            batch.clear();
        }
        if done {
            break;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let (_, pg_cpu_ours) = pg_cpu_split(&admin, &db.name, &pg_before).await?;
    Ok(WriteResult {
        rows,
        seconds,
        pg_cpu_ours,
    })
}

async fn wait_quiet(p: &IngesterProcess, max: Duration) -> f64 {
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
async fn table_mib(db: &TestDb) -> anyhow::Result<(f64, f64)> {
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

fn fmt1(x: f64) -> String {
    format!("{x:.1}")
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bin = ingester_bin(&args)?;
    let n = args.objects();
    let size = args.size()?;
    let mut rep = Report::default();
    let host = std::env::var("TEST_PG_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    println!(
        "ingest-bench: objects={n} size={} churn={}/s x {}s; ingester {}; PostgreSQL {host}; cores={}; load before: {}",
        size.label(),
        args.churn_rate,
        args.churn_seconds(),
        bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        procfs::loadavg()
    );
    if !args.ingester_env.is_empty() {
        println!("ingester env overrides: {}", args.ingester_env.join(" "));
    }

    // Workload.
    let t = Instant::now();
    let sim = Sim::start(n, size).await?;
    rep.add(
        "setup",
        "kube-sim preload seconds",
        fmt1(t.elapsed().as_secs_f64()),
    );

    // The rows, as the ingester would write them (prepared outside every timed window).
    let work = tempfile::tempdir()?;
    let rows_path = work.path().join("rows.pgcopy");
    let prepared = rows::prepare(
        &sim.sim.base_url(),
        &static_routes(),
        CLUSTER,
        500,
        &rows_path,
        &field_policy(&args)?,
    )
    .await?;
    rep.add("setup", "rows (pods + namespaces)", prepared.rows);
    rep.add(
        "setup",
        "mean object JSON bytes",
        prepared.raw_bytes / prepared.rows.max(1),
    );

    // 1. Initial sync.
    println!("[1] initial sync through kube-sim -> ingester -> PostgreSQL");
    let db = TestDb::create().await?;
    let (mut ing, s) = sync(&args, &bin, &sim, &db, prepared.rows).await?;
    let sync_rps = s.rows as f64 / s.seconds;
    rep.add("sync", "wall seconds", format!("{:.2}", s.seconds));
    rep.add("sync", "rows/s", format!("{sync_rps:.0}"));
    rep.add(
        "sync",
        "seconds to /readyz 200",
        format!("{:.2}", s.ready_seconds),
    );
    rep.add(
        "sync",
        "ingester CPU seconds",
        format!("{:.2}", s.ingester_cpu),
    );
    rep.add(
        "sync",
        "ingester peak RSS MiB (VmHWM)",
        fmt1(s.peak_rss_mib),
    );
    rep.add(
        "sync",
        "PostgreSQL CPU s (our db + bg)",
        format!("{:.2}", s.pg_cpu_ours),
    );
    rep.add(
        "sync",
        "PostgreSQL CPU s (all postgres)",
        format!("{:.2}", s.pg_cpu_all),
    );
    rep.add(
        "sync",
        "harness+kube-sim CPU seconds",
        format!("{:.2}", s.harness_cpu),
    );
    rep.add(
        "sync",
        "MiB received from the API server",
        format!("{:.2}", s.received_mib),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    rep.add(
        "sync",
        "ingester RSS MiB 2 s after",
        fmt1(procfs::rss_mib(ing.proc.pid()).unwrap_or(0.0)),
    );
    let (table, history) = table_mib(&db).await?;
    rep.add("sync", "krateo_resources MiB", fmt1(table));
    rep.add("sync", "krateo_resource_history MiB", fmt1(history));
    let mut peak_rss = s.peak_rss_mib;

    // 2. Naive bulk load.
    let mut copy_rps = f64::NAN;
    if args.runs("copy") {
        println!("[2] single-stream binary COPY of the same rows");
        let c = bulk_copy(&rows_path, true).await?;
        copy_rps = c.rows as f64 / c.seconds;
        rep.add(
            "copy",
            "default table: seconds",
            format!("{:.2}", c.seconds),
        );
        rep.add(
            "copy",
            "default table: rows/s (copy_rows_per_s)",
            format!("{copy_rps:.0}"),
        );
        rep.add(
            "copy",
            "default table: PostgreSQL CPU s",
            format!("{:.2}", c.pg_cpu_ours),
        );
        let l = bulk_copy(&rows_path, false).await?;
        let lz4_rps = l.rows as f64 / l.seconds;
        rep.add("copy", "lz4 table: rows/s", format!("{lz4_rps:.0}"));
        rep.add(
            "copy",
            "lz4 table: PostgreSQL CPU s",
            format!("{:.2}", l.pg_cpu_ours),
        );
        rep.add(
            "copy",
            "sync vs lz4 COPY",
            format!("{:.2}", sync_rps / lz4_rps),
        );
    }

    // 3. Row-wise upserts.
    let mut rowwise_rps = f64::NAN;
    if args.runs("rowwise") {
        println!("[3] row-wise upserts, one row per transaction");
        let r = upserts(&rows_path, 1).await?;
        rowwise_rps = r.rows as f64 / r.seconds;
        rep.add(
            "rowwise",
            "1 row/tx: rows/s (rowwise_rows_per_s)",
            format!("{rowwise_rps:.0}"),
        );
        rep.add(
            "rowwise",
            "1 row/tx: PostgreSQL CPU s",
            format!("{:.2}", r.pg_cpu_ours),
        );
    }
    if args.runs("multirow") {
        println!("[3b] 50-row multi-row upserts per transaction");
        let r = upserts(&rows_path, 50).await?;
        rep.add(
            "rowwise",
            "50 rows/tx: rows/s",
            format!("{:.0}", r.rows as f64 / r.seconds),
        );
        rep.add(
            "rowwise",
            "50 rows/tx: PostgreSQL CPU s",
            format!("{:.2}", r.pg_cpu_ours),
        );
    }
    drop(rows_path);

    // 4. Churn.
    let mut p99_ms = f64::NAN;
    if args.runs("churn") {
        println!(
            "[4] steady churn at {}/s for {}s",
            args.churn_rate,
            args.churn_seconds()
        );
        let client = db.client().await?;
        let cpu_before = procfs::cpu_seconds(ing.proc.pid()).map_or(0.0, |(_, c)| c);
        let r = churn::run(
            &sim,
            &client,
            &ing.proc,
            args.churn_rate,
            args.churn_seconds(),
        )
        .await?;
        let churn_cpu = procfs::cpu_seconds(ing.proc.pid()).map_or(0.0, |(_, c)| c) - cpu_before;
        p99_ms = r.p99_ms;
        rep.add("churn", "changes issued", r.issued);
        rep.add(
            "churn",
            "achieved change rate /s",
            format!("{:.0}", r.achieved_rate),
        );
        rep.add("churn", "latency p50 ms", fmt1(r.p50_ms));
        rep.add("churn", "latency p99 ms", fmt1(r.p99_ms));
        rep.add("churn", "latency max ms", fmt1(r.max_ms));
        rep.add("churn", "changes never seen (30 s grace)", r.unresolved);
        rep.add("churn", "max ingester_queue_depth", r.max_queue);
        rep.add("churn", "stamped annotation checked in raw", r.stamp_check);
        let (table, history) = table_mib(&db).await?;
        rep.add("churn", "krateo_resources MiB after", fmt1(table));
        rep.add("churn", "krateo_resource_history MiB after", fmt1(history));
        // The window includes churn's 30 s grace for late rows: an upper bound per change.
        rep.add("churn", "ingester CPU seconds", format!("{churn_cpu:.2}"));
        rep.add(
            "churn",
            "ingester CPU % of a core per 100 changes/s",
            format!(
                "{:.2}",
                100.0 * churn_cpu
                    / args.churn_seconds() as f64
                    / (r.achieved_rate / 100.0).max(0.01)
            ),
        );
        if args.runs("maxrate") {
            println!("[4b] highest sustained rate");
            let mut rate = args.churn_rate * 2.0;
            let mut best = if r.sustained { args.churn_rate } else { 0.0 };
            let mut note = String::new();
            while r.sustained && rate <= 16_000.0 {
                let s = churn::run(&sim, &client, &ing.proc, rate, args.churn_seconds()).await?;
                println!(
                    "    {rate}/s: achieved {:.0}/s p99 {:.0} ms, pending at end {}, queue {:.0} -> {:.0}: {}",
                    s.achieved_rate, s.p99_ms, s.pending_at_end, s.queue_first, s.queue_last,
                    if s.sustained { "sustained" } else { "not sustained" }
                );
                rep.add(
                    "maxrate",
                    &format!("{rate}/s p99 ms (sustained?)"),
                    format!("{:.0} ({})", s.p99_ms, s.sustained),
                );
                if s.achieved_rate < 0.95 * rate {
                    note = format!(" (harness could only issue {:.0}/s)", s.achieved_rate);
                    if s.sustained {
                        best = s.achieved_rate;
                    }
                    break;
                }
                if !s.sustained {
                    break;
                }
                best = rate;
                rate *= 2.0;
            }
            rep.add(
                "maxrate",
                "highest sustained changes/s",
                format!("{best:.0}{note}"),
            );
        }
    }

    // 5. Restart over unchanged objects.
    let mut restart_rows = f64::NAN;
    let mut restart_secs = f64::NAN;
    if args.runs("restart") {
        println!("[5] restart over unchanged objects");
        wait_quiet(&ing.proc, Duration::from_secs(60)).await;
        ing.proc.terminate(Duration::from_secs(90)).await?;
        let client = db.client().await?;
        let xid: i64 = client.query_one("SELECT txid_current()", &[]).await?.get(0);
        let xid32 = xid & 0xffff_ffff;
        let pg_before = procfs::postgres_cpu();
        let t0 = Instant::now();
        let mut p = IngesterProcess::start(&bin, &ingester_env(&args, &db, &sim))?;
        wait_really_ready(&mut p, Duration::from_secs(600)).await?;
        restart_secs = t0.elapsed().as_secs_f64();
        let written = wait_quiet(&p, Duration::from_secs(60)).await;
        let (_, pg_cpu) = pg_cpu_split(&client, &db.name, &pg_before).await?;
        let skipped = metric(&p, "ingester_rows_unchanged_skipped_total").await;
        let xmin_changed: i64 = client
            .query_one(
                "SELECT count(*) FROM krateo_resources WHERE xmin::text::bigint > $1",
                &[&xid32],
            )
            .await?
            .get(0);
        restart_rows = written;
        rep.add(
            "restart",
            "seconds to /readyz 200",
            format!("{restart_secs:.2}"),
        );
        rep.add(
            "restart",
            "vs initial sync time",
            format!("{:.1}%", 100.0 * restart_secs / s.seconds),
        );
        rep.add("restart", "rows rewritten (metric)", written);
        rep.add("restart", "rows whose xmin changed", xmin_changed);
        rep.add("restart", "rows skipped as unchanged", skipped);
        rep.add(
            "restart",
            "ingester CPU seconds",
            format!(
                "{:.2}",
                procfs::cpu_seconds(p.pid()).map_or(0.0, |(_, c)| c)
            ),
        );
        rep.add(
            "restart",
            "ingester peak RSS MiB",
            fmt1(procfs::peak_rss_mib(p.pid()).unwrap_or(0.0)),
        );
        rep.add(
            "restart",
            "PostgreSQL CPU s (our db + bg)",
            format!("{pg_cpu:.2}"),
        );
        ing.proc = p;
    }
    let _ = ing.proc.terminate(Duration::from_secs(60)).await;
    drop(ing);
    drop(db);
    drop(sim);

    // 6. Peak RSS vs object size.
    if args.runs("sizes") {
        println!("[6] peak RSS with ~2 KiB vs ~16 KiB objects");
        let mut peaks = Vec::new();
        for sz in [Size::Small, Size::Large] {
            let sim = Sim::start(n, sz).await?;
            let db = TestDb::create().await?;
            let expected = (sim.pods + sim.namespaces) as u64;
            let (mut ing, r) = sync(&args, &bin, &sim, &db, expected).await?;
            rep.add(
                "sizes",
                &format!("{}: sync rows/s", sz.label()),
                format!("{:.0}", r.rows as f64 / r.seconds),
            );
            rep.add(
                "sizes",
                &format!("{}: peak RSS MiB", sz.label()),
                fmt1(r.peak_rss_mib),
            );
            peaks.push(r.peak_rss_mib);
            peak_rss = peak_rss.max(r.peak_rss_mib);
            let _ = ing.proc.terminate(Duration::from_secs(60)).await;
        }
        rep.add(
            "sizes",
            "16KiB vs 2KiB peak RSS",
            format!("{:+.1}%", 100.0 * (peaks[1] / peaks[0] - 1.0)),
        );
    }

    rep.add("end", "load average", procfs::loadavg());
    rep.print();
    println!(
        "RESULT objects={n} sync_rows_per_s={sync_rps:.0} copy_rows_per_s={copy_rps:.0} rowwise_rows_per_s={rowwise_rps:.0} ratio_vs_copy={:.2} ratio_vs_rowwise={:.2} peak_rss_mib={peak_rss:.1} p99_latency_ms={p99_ms:.0} restart_rows_rewritten={restart_rows:.0} restart_seconds={restart_secs:.2}",
        sync_rps / copy_rps,
        sync_rps / rowwise_rps
    );
    Ok(())
}
