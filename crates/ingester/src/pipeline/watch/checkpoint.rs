//! Resume points: how far a watch has got (`Progress`, pure), the periodic checkpoint that
//! stores it once the lanes have committed everything queued (and reports the committed
//! changes to the lag series), and the final one at shutdown.

use std::sync::Arc;

use chrono::Utc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::spec::WatchContext;
use crate::storage::resume;
use crate::telemetry::events::WatchSeries;

/// `at` as unix seconds, the clock of `Progress`.
pub(super) fn unix_seconds(at: chrono::DateTime<Utc>) -> f64 {
    at.timestamp_micros() as f64 / 1e6
}

/// How far a watch has got, the resume point stored for it, and what its lag series last said.
pub(super) struct Progress {
    key: String,
    /// Highest resourceVersion up to which every change of the scope is queued.
    queued: Option<i64>,
    /// When the newest change counted in `queued` (event, bookmark, completed list) was read
    /// (unix seconds).
    queued_at: Option<f64>,
    /// Highest resume point stored (or being stored).
    committed: Option<i64>,
    /// `queued_at` of the newest checkpoint reported (or being reported) committed.
    reported_at: Option<f64>,
}

/// What one checkpoint does once everything queued so far is committed.
#[derive(Debug, PartialEq)]
pub(super) struct CheckpointPlan {
    /// Store this resume point.
    store: Option<i64>,
    /// Tell the lag series: the changes read up to this time (unix seconds), through this
    /// resourceVersion, are committed.
    report: Option<(f64, Option<i64>)>,
}

impl Progress {
    pub(super) fn new(key: String) -> Self {
        Self {
            key,
            queued: None,
            queued_at: None,
            committed: None,
            reported_at: None,
        }
    }

    /// The scope's key among the stored resume points.
    pub(super) fn key(&self) -> &str {
        &self.key
    }

    /// Started from the stored resume point `rv`: queued and committed up to there.
    pub(super) fn resumed_from(&mut self, rv: i64) {
        self.committed = Some(rv);
        self.queued = Some(rv);
    }

    /// The stored resume point is forgotten, and nothing queued counts any more (the
    /// server's history is another).
    pub(super) fn forget(&mut self) {
        self.committed = None;
        self.queued = None;
    }

    /// Every change up to `rv` (when it is an integer) is queued, read at `read_at`.
    pub(super) fn seen(&mut self, rv: Option<i64>, read_at: f64) {
        self.queued = self.queued.max(rv);
        self.queued_at = Some(self.queued_at.map_or(read_at, |q| q.max(read_at)));
    }

    /// The queued resourceVersion, when it is past the stored resume point.
    pub(super) fn ahead(&self) -> Option<i64> {
        self.queued
            .filter(|q| self.committed.is_none_or(|c| c < *q))
    }

    /// What the next checkpoint has to do, if anything: store a newer resume point (when
    /// resuming is on), report newer committed changes (always: the lag series use the same
    /// signal as the resume points, the lanes' "everything queued so far is committed").
    fn plan(&self, resume: bool) -> Option<CheckpointPlan> {
        let store = self.ahead().filter(|_| resume);
        let report = self
            .queued_at
            .filter(|at| self.reported_at.is_none_or(|r| r < *at))
            .map(|at| (at, self.queued));
        (store.is_some() || report.is_some()).then_some(CheckpointPlan { store, report })
    }

    /// The next checkpoint's plan, counted as done (stored and reported) from now on.
    fn begin(&mut self, resume: bool) -> Option<CheckpointPlan> {
        let plan = self.plan(resume)?;
        if let Some(rv) = plan.store {
            self.committed = Some(rv);
        }
        if let Some((at, _)) = plan.report {
            self.reported_at = Some(at);
        }
        Some(plan)
    }

    /// A checkpoint was stopped half-way: it may not have stored its point.
    fn checkpoint_aborted(&mut self) {
        self.committed = None;
    }
}

/// The checkpoint running in the background, if any (one at a time).
#[derive(Default)]
pub(super) struct Checkpoints {
    in_flight: Option<JoinHandle<()>>,
}

impl Checkpoints {
    /// Stores the resume point and reports the committed changes in the background once the
    /// lanes have committed everything queued so far (one checkpoint at a time; never forces
    /// a flush). `generation`: the database's rewinds the watch's progress already accounts
    /// for; a rewind found meanwhile voids the point.
    pub(super) fn tick(
        &mut self,
        progress: &mut Progress,
        ctx: &Arc<WatchContext>,
        series: &Arc<WatchSeries>,
        generation: u64,
    ) {
        if self.in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Some(plan) = progress.begin(ctx.resume) else {
            return;
        };
        let ctx = ctx.clone();
        let series = series.clone();
        let key = progress.key.clone();
        let name = format!("checkpoint {key}");
        self.in_flight = Some(tokio::spawn(crate::pipeline::supervisor::named(
            name,
            async move {
                if ctx.lanes.committed().await.is_err() {
                    return;
                }
                if let Some((at, rv)) = plan.report {
                    series.committed(at, rv);
                }
                if let Some(rv) = plan.store {
                    if let Err(e) = resume::save(&ctx.db, &ctx.cluster, &key, rv, generation).await
                    {
                        debug!(scope = %key, error = %e, "resume point not stored; a restart lists from an older one");
                    }
                }
            },
        )));
    }

    /// A checkpoint still in flight must not store its point after this watch has ended: the
    /// manager sweeps a stopped CRD's scopes and forgets their points right after, and a
    /// point stored later would make the next start resume instead of listing. Stopped, it
    /// may not have stored what `committed` says: the final checkpoint stores it again.
    pub(super) async fn stop(&mut self, progress: &mut Progress) {
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.abort();
            let _ = in_flight.await;
            progress.checkpoint_aborted();
        }
    }
}

/// On shutdown: flush what this watch queued and store how far it got (unless the database
/// went back in time since: see [`Checkpoints::tick`]).
pub(super) async fn final_checkpoint(ctx: &WatchContext, progress: &Progress, generation: u64) {
    let Some(rv) = progress.ahead().filter(|_| ctx.resume) else {
        return;
    };
    if ctx.lanes.barrier().await.is_ok() {
        if let Err(e) = resume::save(&ctx.db, &ctx.cluster, &progress.key, rv, generation).await {
            warn!(scope = %progress.key, error = %e, "resume point not stored at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reports_what_was_read_since_the_last_one() {
        let mut p = Progress::new("k".into());
        assert_eq!(p.plan(true), None, "nothing read, nothing to do");
        p.seen(Some(10), 100.0);
        assert_eq!(
            p.plan(true),
            Some(CheckpointPlan {
                store: Some(10),
                report: Some((100.0, Some(10)))
            })
        );
        // Without resume points the lag is still reported.
        assert_eq!(
            p.plan(false),
            Some(CheckpointPlan {
                store: None,
                report: Some((100.0, Some(10)))
            })
        );
        p.committed = Some(10);
        p.reported_at = Some(100.0);
        assert_eq!(p.plan(true), None, "already reported");
        // A bookmark at the same resourceVersion: nothing new to store, but the scope is
        // known complete up to a later time.
        p.seen(Some(10), 130.0);
        assert_eq!(
            p.plan(true),
            Some(CheckpointPlan {
                store: None,
                report: Some((130.0, Some(10)))
            })
        );
        // An event with a non-integer resourceVersion still counts as read.
        p.reported_at = Some(130.0);
        p.seen(None, 140.0);
        assert_eq!(
            p.plan(false),
            Some(CheckpointPlan {
                store: None,
                report: Some((140.0, Some(10)))
            })
        );
        // Time never goes back (a late step with an older clock reading).
        p.seen(Some(11), 120.0);
        assert_eq!(p.queued_at, Some(140.0));
        assert_eq!(p.queued, Some(11));
    }

    #[test]
    fn a_begun_checkpoint_counts_as_done_until_it_is_aborted() {
        let mut p = Progress::new("k".into());
        p.seen(Some(10), 100.0);
        assert_eq!(
            p.begin(true),
            Some(CheckpointPlan {
                store: Some(10),
                report: Some((100.0, Some(10)))
            })
        );
        assert_eq!(p.begin(true), None, "one checkpoint per change");
        assert_eq!(p.ahead(), None, "nothing left for the final checkpoint");
        // Aborted, it may not have stored its point: the final checkpoint stores it again.
        p.checkpoint_aborted();
        assert_eq!(p.ahead(), Some(10));
    }

    #[test]
    fn a_resumed_watch_has_nothing_to_store_until_it_moves_on() {
        let mut p = Progress::new("k".into());
        p.resumed_from(10);
        assert_eq!(p.ahead(), None);
        p.seen(Some(12), 100.0);
        assert_eq!(p.ahead(), Some(12));
        // Another history: nothing queued counts.
        p.forget();
        assert_eq!(p.ahead(), None);
        assert_eq!(
            p.plan(true),
            Some(CheckpointPlan {
                store: None,
                report: Some((100.0, None))
            }),
            "what was read is still reported"
        );
    }
}
