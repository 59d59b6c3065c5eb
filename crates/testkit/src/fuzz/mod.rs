//! The seeded randomized convergence run (issue 11): for one seed, the real ingester binary
//! against kube-sim (in-process) and a real PostgreSQL (a database of its own), a random
//! schedule of changes and faults ([`schedule`]), and after each quiet point (faults lifted,
//! every replica ready) the convergence checker with a deadline; the regression monitor samples
//! the table throughout. Used by the `converge-fuzz` binary and by the ingester's
//! `tests/converge_seeds.rs`.

pub mod cluster;
pub mod database;
pub mod deployment;
pub mod schedule;
mod world;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use cluster::RealPlane;
pub use deployment::Deployment;
pub use schedule::Step;

/// How long one phase (changes and faults between two quiet points) lasts, roughly: sets the
/// number of phases from `--duration`, so a seed's schedule does not depend on timing.
pub const PHASE_SECS: u64 = 4;

#[derive(Clone, Debug)]
pub struct FuzzOptions {
    /// Target run time per seed (sets the number of phases).
    pub duration: Duration,
    /// The ingester binary.
    pub ingester: PathBuf,
    /// Check that rows of scopes no longer watched are marked deleted.
    pub retire_check: bool,
    /// How long a quiet point waits for convergence before it reports the verdict.
    pub converge_timeout: Duration,
    /// Where a failing seed leaves its trace and the ingester logs (`None`: nowhere).
    pub artifacts: Option<PathBuf>,
    /// Also inject the faults of real API servers (lagging caches, replicas, replays, late
    /// bookmarks, stalls, silent watches). Off: the schedules of the seeds found before.
    pub api_server_faults: bool,
    /// Play the seeds against this real control plane instead of kube-sim (`--real`): the
    /// changes go to the real API server, the faults are the ones a real control plane
    /// produces on demand ([`schedule::pick_real`]).
    pub real: Option<RealPlane>,
    /// Leave the trace and logs of passing seeds too (under `artifacts`).
    pub keep_artifacts: bool,
    /// Also inject the database's own faults (`--db-faults`): a switchover, a read-only
    /// window, a failover that loses commits, against a private primary and its standby, for
    /// about half the seeds through PgBouncer in transaction mode. Off: the machine's
    /// PostgreSQL and the schedules drawn before these families existed.
    pub db_faults: bool,
}

impl FuzzOptions {
    pub fn new(ingester: PathBuf, duration: Duration) -> FuzzOptions {
        FuzzOptions {
            duration,
            ingester,
            retire_check: true,
            converge_timeout: Duration::from_secs(30),
            artifacts: None,
            api_server_faults: true,
            real: None,
            keep_artifacts: false,
            db_faults: false,
        }
    }

    pub fn phases(&self) -> usize {
        (self.duration.as_secs().div_ceil(PHASE_SECS)).max(1) as usize
    }

    /// The one command that runs this seed again with these options.
    pub fn reproduce(&self, seed: u64) -> String {
        format!(
            "cargo run --release -p testkit --bin converge-fuzz -- {}{}--seed {seed} --duration {}{}{}",
            if self.real.is_some() { "--real " } else { "" },
            if self.db_faults { "--db-faults " } else { "" },
            self.duration.as_secs(),
            if self.retire_check {
                ""
            } else {
                " --no-retire-check"
            },
            if self.api_server_faults {
                ""
            } else {
                " --no-api-server-faults"
            }
        )
    }
}

/// What one seed did and found.
#[derive(Debug, Default)]
pub struct SeedReport {
    pub seed: u64,
    /// The first violation, `None` when the seed passed.
    pub violation: Option<String>,
    /// The phase it was found in (1-based).
    pub phase: usize,
    pub phases: usize,
    /// Steps taken, by name.
    pub steps: BTreeMap<&'static str, u64>,
    /// Changes made to the cluster's objects and CRDs.
    pub changes: u64,
    /// Faults injected (API server, database, processes, redeploys).
    pub faults: u64,
    pub quiet_points: u64,
    pub samples: u64,
    /// Replicas that exited without being told to (restarted, as Kubernetes would).
    pub unexpected_exits: u64,
    /// Real mode: changes the real API server refused (e.g. an object in a namespace being
    /// deleted, a name whose CRD is still terminating).
    pub refused: u64,
    /// The longest a quiet point waited for convergence.
    pub slowest_convergence: Duration,
    pub elapsed: Duration,
    /// Where the trace and logs were left (failing seeds, with `artifacts`).
    pub artifacts: Option<PathBuf>,
    /// `--db-faults`: the ingesters went through PgBouncer in transaction mode.
    pub through_pgbouncer: bool,
}

impl SeedReport {
    pub fn passed(&self) -> bool {
        self.violation.is_none()
    }

    /// `seed=N PASS` or `seed=N FAIL <first violation>`, plus the reproducing command.
    pub fn line(&self, opts: &FuzzOptions) -> String {
        match &self.violation {
            None => format!(
                "seed={} PASS ({} phases, {} changes{}, {} faults{}, {:.0?})",
                self.seed,
                self.phases,
                self.changes,
                if opts.real.is_some() {
                    format!(" ({} refused by the server)", self.refused)
                } else {
                    String::new()
                },
                self.faults,
                if self.through_pgbouncer {
                    ", through PgBouncer"
                } else {
                    ""
                },
                self.elapsed
            ),
            Some(v) => format!(
                "seed={} FAIL {v} (phase {}/{}) -- reproduce: {}{}",
                self.seed,
                self.phase,
                self.phases,
                opts.reproduce(self.seed),
                self.artifacts
                    .as_ref()
                    .map(|a| format!(" -- trace and logs: {}", a.display()))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Runs one seed to its end or its first violation. Set-up failures (no database, no
/// binary) are violations too: a seed that could not run did not pass.
pub async fn run_seed(seed: u64, opts: &FuzzOptions) -> SeedReport {
    let started = Instant::now();
    let mut report = SeedReport {
        seed,
        phases: opts.phases(),
        ..SeedReport::default()
    };
    let mut world = match world::World::new(seed, opts).await {
        Ok(w) => w,
        Err(e) => {
            report.violation = Some(format!("set-up failed: {e:#}"));
            report.elapsed = started.elapsed();
            return report;
        }
    };
    report.through_pgbouncer = world.through_pgbouncer();
    let mut rng = SmallRng::seed_from_u64(seed);
    let outcome = play(&mut world, &mut rng, opts, &mut report).await;
    if let Err(v) = outcome {
        report.violation = Some(v);
        report.artifacts = world.save_artifacts(opts);
    } else if opts.keep_artifacts {
        report.artifacts = world.save_artifacts(opts);
    }
    report.refused = world.refused;
    report.samples = world.monitor_samples();
    report.unexpected_exits = world.unexpected_exits;
    report.slowest_convergence = world.slowest_convergence;
    world.shutdown().await;
    report.elapsed = started.elapsed();
    report
}

/// The phases: random steps, then a quiet point with the checks. `Err` is the first
/// violation.
async fn play(
    world: &mut world::World,
    rng: &mut SmallRng,
    opts: &FuzzOptions,
    report: &mut SeedReport,
) -> Result<(), String> {
    world
        .start_deployment()
        .await
        .map_err(|e| format!("start: {e:#}"))?;
    world.quiet_point(opts).await?;
    report.quiet_points += 1;
    for phase in 1..=report.phases {
        report.phase = phase;
        let steps = rng.random_range(20..80);
        for _ in 0..steps {
            let step = if opts.real.is_some() {
                schedule::pick_real(rng, &world.store(), &world.deployment)
            } else {
                schedule::pick(
                    rng,
                    &world.store(),
                    &world.deployment,
                    opts.api_server_faults,
                    opts.db_faults,
                )
            };
            *report.steps.entry(step.name()).or_default() += 1;
            report.changes += u64::from(step.is_change());
            report.faults += u64::from(step.is_fault());
            world.apply(&step).await?;
        }
        world.quiet_point(opts).await?;
        report.quiet_points += 1;
    }
    Ok(())
}
