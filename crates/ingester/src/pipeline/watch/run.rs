//! The thin I/O loop of one watch: where it starts (the stored resume point, the scope's
//! newest row), then each step of the list-and-watch loop handed to the state
//! (`state.rs`), and what it answers done: lane events, tombstones, CRD events, telemetry,
//! readiness, periodic and final checkpoints.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use kube::api::Api;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::checkpoint::{final_checkpoint, unix_seconds, Checkpoints, Progress};
use super::spec::{api_resource, CrdEvent, CrdEvents, WatchContext, WatchSpec};
use super::state::{self, ListInProgress, WatchState};
use super::sweep::{load_snapshot, send_tombstones};
use crate::kubernetes::listwatch::{list_watch, Failure, Settings, Start, Step};
use crate::pipeline::lanes::{LanesClosed, WatchedEvent};
use crate::row::object::RawObject;
use crate::row::record::EventKind;
use crate::storage::resume;
use crate::storage::snapshot::{Listed, Scope, ScopeSnapshot};
use crate::telemetry::events::{ListCompleted, Relisting, WatchFailed, WatchResumed, WatchSeries};
use crate::telemetry::metrics::Metrics;

/// Keeps `active_watches` honest however the watch ends.
struct ActiveWatch(Arc<Metrics>);
impl ActiveWatch {
    fn new(m: Arc<Metrics>) -> Self {
        m.active_watches.inc();
        Self(m)
    }
}
impl Drop for ActiveWatch {
    fn drop(&mut self) {
        self.0.active_watches.dec();
    }
}

/// Runs one watch until `cancel`; returns early only when the lanes close.
pub async fn run_watch(
    ctx: Arc<WatchContext>,
    spec: WatchSpec,
    cancel: CancellationToken,
    crd_events: Option<mpsc::Sender<CrdEvent>>,
) {
    let _active = ActiveWatch::new(ctx.metrics.clone());
    let mut rewinds = ctx.db.marks.subscribe();
    let mut watch = Watch::new(ctx, spec, CrdEvents(crd_events));
    watch.generation = rewinds.borrow_and_update().generation;
    let Some(start) = watch.start(&cancel).await else {
        return;
    };
    let mut steps = list_watch(watch.api(), watch.settings(), start);
    let mut checkpoints = tokio::time::interval(watch.ctx.checkpoint_interval);
    checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let step = tokio::select! {
            // In this order: a rewind comes before a checkpoint, whose progress it voids.
            biased;
            _ = cancel.cancelled() => break,
            Ok(()) = rewinds.changed() => {
                // The database went back in time: start again as at start-up, from the resume
                // point it still holds.
                let generation = rewinds.borrow_and_update().generation;
                watch.database_rewound(generation).await;
                let Some(start) = watch.start(&cancel).await else { break };
                steps = list_watch(watch.api(), watch.settings(), start);
                continue;
            }
            _ = checkpoints.tick() => {
                watch.checkpoint();
                continue;
            }
            step = steps.next() => step,
        };
        let Some(step) = step else { break };
        if watch.apply(step, &cancel).await.is_err() {
            return;
        }
    }
    watch.stop().await;
}

/// One running watch: turns the list-and-watch loop's steps into lane events, sweeps and
/// resume points.
struct Watch {
    ctx: Arc<WatchContext>,
    /// This watch's lag, listed-objects and committed-version series.
    series: Arc<WatchSeries>,
    spec: WatchSpec,
    label: String,
    namespace: String,
    scope: Scope,
    crd_events: CrdEvents,
    state: WatchState,
    checkpoints: Checkpoints,
    /// The database's rewinds this watch has started again after (`storage::commit_marks`).
    generation: u64,
}

impl Watch {
    fn new(ctx: Arc<WatchContext>, spec: WatchSpec, crd_events: CrdEvents) -> Self {
        let label = spec.label();
        let series = Arc::new(WatchSeries::new(
            ctx.metrics.clone(),
            label.clone(),
            crate::telemetry::metrics::watch_labels(
                &spec.route.group,
                &spec.route.version,
                &spec.route.plural,
                spec.namespace.as_deref(),
            ),
        ));
        let progress = Progress::new(resume::scope_key(
            &spec.route.group,
            &spec.route.version,
            &spec.route.plural,
            spec.namespace.as_deref(),
        ));
        Self {
            series,
            label,
            namespace: spec.namespace.clone().unwrap_or_default(),
            scope: spec.scope(&ctx.cluster),
            state: WatchState::new(spec.is_static, progress),
            checkpoints: Checkpoints::default(),
            generation: 0,
            ctx,
            spec,
            crd_events,
        }
    }

    fn api(&self) -> Api<RawObject> {
        let ar = api_resource(&self.spec.route);
        match &self.spec.namespace {
            Some(ns) => Api::namespaced_with(self.ctx.client.clone(), ns, &ar),
            None => Api::all_with(self.ctx.client.clone(), &ar),
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            streaming: self.ctx.streaming_lists,
            page_size: self.ctx.page_size,
            list_permits: Some(self.ctx.list_permits.clone()),
            type_meta: (self.spec.route.api_version(), self.spec.route.kind.clone()),
        }
    }

    /// Where the loop starts: the stored resume point (when resuming), checked against the
    /// newest resourceVersion the table holds for the scope. `None` when cancelled.
    async fn start(&mut self, cancel: &CancellationToken) -> Option<Start> {
        // CRD watches always list: the manager needs the full set of CRDs to start from.
        let mut resume_from = None;
        if self.ctx.resume && !self.crd_events.wanted() {
            let stored = tokio::select! {
                _ = cancel.cancelled() => return None,
                p = self.stored_point() => p,
            };
            match stored {
                Ok(Some(rv)) => {
                    self.state.stored_point(rv);
                    resume_from = Some(rv);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(resource = %self.label, error = %e, "cannot read the resume point; listing")
                }
            }
        }
        // The newest resourceVersion the table holds for the scope: the server's history must
        // have reached it (and the resume point), else it is another history (checked first).
        let newest = tokio::select! {
            _ = cancel.cancelled() => return None,
            n = ScopeSnapshot::newest_version(&self.ctx.db.pool, &self.scope) => n,
        };
        let newest = match newest {
            Ok(n) => n,
            Err(e) => {
                warn!(resource = %self.label, error = %e, "cannot read the scope's newest resourceVersion; not checking the server's history against it");
                None
            }
        };
        Some(state::start(resume_from, newest))
    }

    /// The stored resume point, unless rows of the scope are at another version (a CRD's
    /// watched version switched, even by a watch that never stored a point): a resume point
    /// of this version predates them, and only a list rewrites them.
    async fn stored_point(&self) -> Result<Option<i64>, String> {
        if ScopeSnapshot::has_rows_at_other_versions(&self.ctx.db.pool, &self.scope).await? {
            return Ok(None);
        }
        resume::load(
            &self.ctx.db.pool,
            &self.ctx.cluster,
            self.state.progress.key(),
        )
        .await
    }

    /// A periodic checkpoint, unless a list is in progress.
    fn checkpoint(&mut self) {
        if !self.state.listing() {
            self.checkpoints.tick(
                &mut self.state.progress,
                &self.ctx,
                &self.series,
                self.generation,
            );
        }
    }

    /// The watch has ended: no checkpoint may store a point after this, then the final one.
    async fn stop(mut self) {
        self.checkpoints.stop(&mut self.state.progress).await;
        if !self.state.listing() {
            final_checkpoint(&self.ctx, &self.state.progress, self.generation).await;
        }
    }

    /// The database went back in time (rewind `generation`): no checkpoint in flight may
    /// store a point counted before it, and the watch forgets how far it got.
    async fn database_rewound(&mut self, generation: u64) {
        self.checkpoints.stop(&mut self.state.progress).await;
        self.generation = generation;
        self.state.database_rewound();
        debug!(resource = %self.label, "the database went back in time; watching again from the resume point it holds");
    }

    async fn apply(&mut self, step: Step, cancel: &CancellationToken) -> Result<(), LanesClosed> {
        let observed_at = Utc::now();
        match step {
            Step::ListStarted { permit } => self.list_started(permit, cancel).await?,
            Step::Listed(obj) => self.listed(obj, observed_at).await?,
            Step::ListDone { resource_version } => {
                self.list_done(resource_version, observed_at).await?
            }
            Step::Resumed { from, current } => {
                self.resume_outcome(from, "resumed");
                self.state.resumed(from, current);
                self.caught_up_at(from).await?;
            }
            Step::HistoryBehind { newest, current } => {
                self.history_behind(newest, current, cancel).await
            }
            Step::Applied(obj) => self.forward(obj, EventKind::Apply, observed_at).await?,
            Step::Deleted(obj) => self.forward(obj, EventKind::Delete, observed_at).await?,
            Step::Progress(rv) => {
                self.state.seen(Some(rv), unix_seconds(observed_at));
                self.caught_up_at(rv).await?;
            }
            Step::Failed(f) => self.failed(f),
        }
        Ok(())
    }

    /// A list starts: say why, and take the table's snapshot of the scope to compare it with.
    async fn list_started(
        &mut self,
        permit: Option<OwnedSemaphorePermit>,
        cancel: &CancellationToken,
    ) -> Result<(), LanesClosed> {
        let reason = self.state.list_started();
        Relisting {
            resource: &self.spec.route.plural,
            namespace: &self.namespace,
            reason,
        }
        .emit(&self.ctx.metrics);
        self.crd_events.send(CrdEvent::ListStarted).await;
        let snapshot = load_snapshot(&self.ctx, &self.scope, cancel).await?;
        self.state
            .list_loaded(snapshot.map(|s| ListInProgress::new(s, permit)));
        Ok(())
    }

    /// A listed object goes to its lane unless its row already holds this version.
    async fn listed(
        &mut self,
        obj: RawObject,
        observed_at: chrono::DateTime<Utc>,
    ) -> Result<(), LanesClosed> {
        if self.crd_events.wanted() {
            self.crd_events.send_object(&obj, false).await;
        }
        if self.state.listed(&obj) == Listed::Changed {
            self.send(obj, EventKind::Apply, observed_at).await?;
        }
        Ok(())
    }

    /// A list is complete: rows it did not have are marked deleted (unless newer than it).
    async fn list_done(
        &mut self,
        resource_version: Option<i64>,
        observed_at: chrono::DateTime<Utc>,
    ) -> Result<(), LanesClosed> {
        if let Some(l) = self
            .state
            .list_done(resource_version, unix_seconds(observed_at))
        {
            self.series.listed(l.listed);
            let gone =
                send_tombstones(&self.ctx, l.snapshot, observed_at, resource_version).await?;
            ListCompleted {
                resource: &self.spec.route.plural,
                namespace: &self.namespace,
                listed: l.listed,
                unchanged: l.unchanged,
                gone,
            }
            .emit(&self.ctx.metrics);
        }
        self.crd_events
            .send(CrdEvent::ListDone { resource_version })
            .await;
        self.mark_listed();
        Ok(())
    }

    /// The server's history is behind what the table holds for the scope (an etcd restore,
    /// a cluster rebuilt under the name): the resume point is forgotten and the rows'
    /// resourceVersions cleared before the list that follows, so the list rewrites every
    /// object it has and its sweep marks deleted every row it lacks, whatever version the
    /// other history gave it. Retried until done (or cancelled): a list before it would
    /// spare the other history's rows.
    async fn history_behind(&mut self, newest: i64, current: i64, cancel: &CancellationToken) {
        warn!(
            resource = %self.label,
            newest_stored = newest,
            server = current,
            "the API server's resourceVersion is below the one stored for this scope: its history is not the one the rows and resume point come from (an etcd restore, or a cluster rebuilt under this name); relisting, and the rows it lacks are marked deleted whatever their resourceVersion"
        );
        if let Some(from) = self.state.history_behind() {
            self.resume_outcome(from, "history_behind");
        }
        let mut delay = Duration::from_millis(200);
        loop {
            let cleared = async {
                resume::forget(
                    &self.ctx.db.pool,
                    &self.ctx.cluster,
                    self.state.progress.key(),
                )
                .await?;
                ScopeSnapshot::forget_versions(&self.ctx.db.pool, &self.scope).await
            };
            match cleared.await {
                Ok(rows) => {
                    debug!(resource = %self.label, rows, "resourceVersions of the other history cleared");
                    return;
                }
                Err(e) => {
                    self.ctx.health.set_db(false, Some(&e));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn failed(&mut self, f: Failure) {
        let after = self.state.failed(&f);
        if let Some(from) = after.resume_expired {
            self.resume_outcome(from, "expired");
        }
        WatchFailed {
            resource: &self.label,
            error: &f.message,
        }
        .emit(&self.ctx.metrics);
        if after.ready_anyway {
            self.ctx.health.static_route_listed();
        }
    }

    /// What became of the watch's start from the stored resume point `from`.
    fn resume_outcome(&self, from: i64, outcome: &'static str) {
        WatchResumed {
            resource: &self.label,
            namespace: &self.namespace,
            from,
            outcome,
        }
        .emit(&self.ctx.metrics);
    }

    /// A resumed watch counts as listed once the backlog it replays is committed.
    async fn caught_up_at(&mut self, rv: i64) -> Result<(), LanesClosed> {
        if self.state.caught_up_at(rv) {
            self.ctx.lanes.committed().await?;
            self.mark_listed();
        }
        Ok(())
    }

    fn mark_listed(&mut self) {
        if self.state.mark_listed() {
            self.ctx.health.static_route_listed();
        }
    }

    /// A live (not listed) change: it moves the resume point, goes to the manager when this
    /// is the CRD watch, and to its lane. (Live changes arrive in resourceVersion order.)
    async fn forward(
        &mut self,
        object: RawObject,
        kind: EventKind,
        observed_at: chrono::DateTime<Utc>,
    ) -> Result<(), LanesClosed> {
        let rv = object.resource_version_number();
        self.state.seen(rv, unix_seconds(observed_at));
        if self.crd_events.wanted() {
            self.crd_events
                .send_object(&object, kind == EventKind::Delete)
                .await;
        }
        self.send(object, kind, observed_at).await?;
        if let Some(rv) = rv {
            self.caught_up_at(rv).await?;
        }
        Ok(())
    }

    /// To the object's lane.
    async fn send(
        &self,
        object: RawObject,
        kind: EventKind,
        observed_at: chrono::DateTime<Utc>,
    ) -> Result<(), LanesClosed> {
        self.ctx
            .lanes
            .send_event(WatchedEvent {
                object,
                route: self.spec.route.clone(),
                kind,
                observed_at,
            })
            .await
    }
}
