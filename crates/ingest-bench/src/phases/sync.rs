//! Phase 1, initial sync: the ingester starts against an empty database and a kube-sim holding the
//! workload; timed until `/readyz` is 200 and every row is written. `sync` is also the measurement
//! of the sizes phase.

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::pg::TestDb;
use testkit::process::IngesterProcess;

use crate::harness::{
    ingester_env, metric, pg_cpu_split, really_ready, received_mib, table_mib, Ingester, Sim,
};
use crate::phases::{Bench, MainRun};
use crate::report::{fmt1, Report};
use crate::{procfs, Args};

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

/// Starts the ingester against `db`, waits until `expected` rows are committed.
pub async fn sync(
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
        // `/metrics` only once ready: rendering it is the ingester's own work, and a scrape
        // every 20 ms (50 a second; Prometheus scrapes every 15-30 s) was a sizeable part of
        // the CPU measured for a sync (docs/benchmarks.md, "CPU per object").
        let w = match ready_at {
            Some(_) => metric(&proc, "ingester_rows_written_total").await,
            None => 0.0,
        };
        if ready_at.is_some() && w as u64 >= expected {
            written = w as u64;
            break;
        }
        if Instant::now() > deadline {
            let log = proc.log();
            let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
            let state = match ready_at {
                Some(_) => format!("{w} of {expected} rows written"),
                None => "not ready".to_owned(),
            };
            anyhow::bail!("sync not done: {state}; ingester log (last lines, reversed):\n{tail}");
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

/// The initial sync of the main run; the ingester keeps running for the phases after it.
pub async fn run(b: &mut Bench, sim: Sim) -> anyhow::Result<MainRun> {
    println!("[1] initial sync through kube-sim -> ingester -> PostgreSQL");
    let db = TestDb::create().await?;
    let (ing, s) = sync(&b.args, &b.bin, &sim, &db, b.rows).await?;
    let sync_rps = s.rows as f64 / s.seconds;
    report(&mut b.rep, &s, sync_rps);
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.rep.add(
        "sync",
        "ingester RSS MiB 2 s after",
        fmt1(procfs::rss_mib(ing.proc.pid()).unwrap_or(0.0)),
    );
    let (table, history) = table_mib(&db).await?;
    b.rep.add("sync", "krateo_resources MiB", fmt1(table));
    b.rep
        .add("sync", "krateo_resource_history MiB", fmt1(history));
    b.summary.sync_rps = sync_rps;
    b.summary.peak_rss = s.peak_rss_mib;
    b.summary.sync_secs = s.seconds;
    b.summary.ingester_cpu_secs = s.ingester_cpu;
    b.summary.pg_cpu_secs = s.pg_cpu_ours;
    b.summary.table_mib = table;
    Ok(MainRun {
        sim,
        db,
        ing,
        sync_seconds: s.seconds,
    })
}

/// The sync's figures, as measured (before the 2 s wait).
fn report(rep: &mut Report, s: &SyncResult, sync_rps: f64) {
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
}
