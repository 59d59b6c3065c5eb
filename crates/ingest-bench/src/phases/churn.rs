//! Phase 4, steady churn: `--churn-rate` changes per second for `--churn-seconds` against the main
//! run's ingester; event-to-committed-row latency (see `crate::churn`), table growth and the
//! ingester's CPU per change.

use tokio_postgres::Client;

use crate::churn::{self, ChurnResult};
use crate::harness::table_mib;
use crate::phases::{Bench, MainRun};
use crate::procfs;
use crate::report::fmt1;

/// Runs the steady churn; its result tells maxrate whether to search higher rates.
pub async fn run(b: &mut Bench, main: &MainRun, client: &Client) -> anyhow::Result<ChurnResult> {
    let (args, rep) = (&b.args, &mut b.rep);
    println!(
        "[4] steady churn at {}/s for {}s",
        args.churn_rate,
        args.churn_seconds()
    );
    let cpu_before = procfs::cpu_seconds(main.ing.proc.pid()).map_or(0.0, |(_, c)| c);
    let r = churn::run(
        &main.sim,
        client,
        &main.ing.proc,
        args.churn_rate,
        args.churn_seconds(),
    )
    .await?;
    let churn_cpu = procfs::cpu_seconds(main.ing.proc.pid()).map_or(0.0, |(_, c)| c) - cpu_before;
    b.summary.p99_ms = r.p99_ms;
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
    rep.add("churn", "stamped annotation checked in raw", &r.stamp_check);
    let (table, history) = table_mib(&main.db).await?;
    rep.add("churn", "krateo_resources MiB after", fmt1(table));
    rep.add("churn", "krateo_resource_history MiB after", fmt1(history));
    // The window includes churn's 30 s grace for late rows: an upper bound per change.
    rep.add("churn", "ingester CPU seconds", format!("{churn_cpu:.2}"));
    rep.add(
        "churn",
        "ingester CPU % of a core per 100 changes/s",
        format!(
            "{:.2}",
            100.0 * churn_cpu / args.churn_seconds() as f64 / (r.achieved_rate / 100.0).max(0.01)
        ),
    );
    Ok(r)
}
