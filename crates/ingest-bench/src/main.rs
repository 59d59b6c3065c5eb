//! `ingest-bench`: the ingester against a bare single-stream COPY and row-wise upserts of the
//! same rows, side by side on one machine, plus churn latency, restart cost and memory.
//! See docs/benchmarks.md for what each phase measures and how; each phase is a module of
//! `phases`, run in order by `run`.

// Functions stay short (crates/ingest-bench/clippy.toml).
#![warn(clippy::too_many_lines)]

mod churn;
mod harness;
mod phases;
mod procfs;
mod report;
mod rows;

use std::path::PathBuf;

use clap::Parser;
use kube_sim::workload::reference::Size;

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
    pub fn objects(&self) -> usize {
        self.objects
            .unwrap_or(if self.quick { 10_000 } else { 100_000 })
    }
    pub fn churn_seconds(&self) -> u64 {
        self.churn_seconds
            .unwrap_or(if self.quick { 10 } else { 30 })
    }
    pub fn runs(&self, phase: &str) -> bool {
        !self.skip.iter().any(|s| s == phase)
    }
    pub fn size(&self) -> anyhow::Result<Size> {
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
async fn run(args: Args) -> anyhow::Result<()> {
    let (mut b, sim) = phases::setup::run(args).await?;
    let mut main = phases::sync::run(&mut b, sim).await?;
    if b.runs("copy") {
        phases::copy::run(&mut b).await?;
    }
    if b.runs("rowwise") {
        phases::rowwise::run(&mut b).await?;
    }
    if b.runs("multirow") {
        phases::multirow::run(&mut b).await?;
    }
    if b.runs("churn") {
        let client = main.db.client().await?;
        let steady = phases::churn::run(&mut b, &main, &client).await?;
        if b.runs("maxrate") {
            phases::maxrate::run(&mut b, &main, &client, &steady).await?;
        }
    }
    if b.runs("restart") {
        phases::restart::run(&mut b, &mut main).await?;
    }
    main.stop().await;
    if b.runs("sizes") {
        phases::sizes::run(&mut b).await?;
    }
    b.finish();
    Ok(())
}
