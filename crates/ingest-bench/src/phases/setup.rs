//! Setup: the header line, kube-sim preloaded with the workload, and the rows as the ingester
//! would write them (prepared outside every timed window, for the COPY and row-wise baselines).

use std::time::Instant;

use crate::harness::{field_policy, ingester_bin, static_routes, Sim, CLUSTER};
use crate::phases::Bench;
use crate::report::{fmt1, Report, Summary};
use crate::{procfs, rows, Args};
use kube_sim::workload::reference;

pub async fn run(args: Args) -> anyhow::Result<(Bench, Sim)> {
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
    let preload_secs = t.elapsed().as_secs_f64();
    rep.add("setup", "kube-sim preload seconds", fmt1(preload_secs));

    // The rows, as the ingester would write them (prepared outside every timed window), for
    // the baselines only: at a million objects the file alone is 10 GB.
    let work = tempfile::tempdir()?;
    let rows_path = work.path().join("rows.pgcopy");
    let rows = if ["copy", "rowwise", "multirow"].iter().any(|p| args.runs(p)) {
        let prepared = rows::prepare(
            &sim.sim.base_url(),
            &static_routes(),
            CLUSTER,
            500,
            &rows_path,
            &field_policy(&args)?,
        )
        .await?;
        rep.add(
            "setup",
            "mean object JSON bytes",
            prepared.raw_bytes / prepared.rows.max(1),
        );
        prepared.rows
    } else {
        (n + reference::namespaces_for(n)) as u64
    };
    rep.add("setup", "rows (pods + namespaces)", rows);
    let mut summary = Summary::new(n);
    summary.preload_secs = preload_secs;
    let bench = Bench {
        args,
        bin,
        n,
        rep,
        summary,
        rows_path,
        rows,
        _work: work,
    };
    Ok((bench, sim))
}
