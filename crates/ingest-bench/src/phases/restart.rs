//! Phase 5, restart over unchanged objects: the ingester is stopped once quiet and started again
//! against the same database and objects; how long until ready, and how many rows it rewrote
//! (metric and xmin) or skipped as unchanged.

use std::time::{Duration, Instant};

use testkit::process::IngesterProcess;

use crate::harness::{ingester_env, metric, pg_cpu_split, wait_quiet, wait_really_ready};
use crate::phases::{Bench, MainRun};
use crate::procfs;
use crate::report::fmt1;

/// Restarts the main run's ingester; the new process replaces it in `main`.
pub async fn run(b: &mut Bench, main: &mut MainRun) -> anyhow::Result<()> {
    println!("[5] restart over unchanged objects");
    wait_quiet(&main.ing.proc, Duration::from_secs(60)).await;
    main.ing.proc.terminate(Duration::from_secs(90)).await?;
    let client = main.db.client().await?;
    let xid: i64 = client.query_one("SELECT txid_current()", &[]).await?.get(0);
    let xid32 = xid & 0xffff_ffff;
    let pg_before = procfs::postgres_cpu();
    let t0 = Instant::now();
    let mut p = IngesterProcess::start(&b.bin, &ingester_env(&b.args, &main.db, &main.sim))?;
    wait_really_ready(&mut p, Duration::from_secs(600)).await?;
    let restart_secs = t0.elapsed().as_secs_f64();
    let written = wait_quiet(&p, Duration::from_secs(60)).await;
    let (_, pg_cpu) = pg_cpu_split(&client, &main.db.name, &pg_before).await?;
    let skipped = metric(&p, "ingester_rows_unchanged_skipped_total").await;
    let xmin_changed: i64 = client
        .query_one(
            "SELECT count(*) FROM krateo_resources WHERE xmin::text::bigint > $1",
            &[&xid32],
        )
        .await?
        .get(0);
    b.summary.restart_rows = written;
    b.summary.restart_secs = restart_secs;
    let rep = &mut b.rep;
    rep.add(
        "restart",
        "seconds to /readyz 200",
        format!("{restart_secs:.2}"),
    );
    rep.add(
        "restart",
        "vs initial sync time",
        format!("{:.1}%", 100.0 * restart_secs / main.sync_seconds),
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
    main.ing.proc = p;
    Ok(())
}
