//! The phases of a run, in the order `main` runs them (docs/benchmarks.md, "Phases"): each
//! prints its `[n]` header, measures, and adds its lines to the report. `--skip` names a
//! phase by its module: copy, rowwise, multirow, churn, maxrate, restart, sizes; setup and
//! sync always run.

pub mod churn;
pub mod copy;
pub mod maxrate;
pub mod multirow;
pub mod restart;
pub mod rowwise;
pub mod setup;
pub mod sizes;
pub mod sync;

use std::path::PathBuf;
use std::time::Duration;

use testkit::pg::TestDb;

use crate::harness::{Ingester, Sim};
use crate::report::{Report, Summary};
use crate::Args;

/// What the whole run shares: its options, the ingester binary, the report, and the rows
/// file `setup` prepares for the baselines.
pub struct Bench {
    pub args: Args,
    pub bin: PathBuf,
    /// Objects (pods) of the main run.
    pub n: usize,
    pub rep: Report,
    pub summary: Summary,
    /// The rows as the ingester writes them, in PostgreSQL binary COPY format.
    pub rows_path: PathBuf,
    pub rows: u64,
    /// Holds `rows_path` until the run ends.
    pub _work: tempfile::TempDir,
}

impl Bench {
    pub fn runs(&self, phase: &str) -> bool {
        self.args.runs(phase)
    }

    /// The final table and the `RESULT` line.
    pub fn finish(mut self) {
        self.rep
            .add("end", "load average", crate::procfs::loadavg());
        self.rep.print();
        self.summary.print();
    }
}

/// The main run's kube-sim, its database and the running ingester: made by the initial sync,
/// used by churn, maxrate and restart.
pub struct MainRun {
    pub sim: Sim,
    pub db: TestDb,
    pub ing: Ingester,
    /// Wall seconds of the initial sync.
    pub sync_seconds: f64,
}

impl MainRun {
    /// Stops the ingester, then drops the database and the kube-sim.
    pub async fn stop(self) {
        let MainRun {
            sim, db, mut ing, ..
        } = self;
        let _ = ing.proc.terminate(Duration::from_secs(60)).await;
        drop(ing);
        drop(db);
        drop(sim);
    }
}
