//! One watch: the list-and-watch loop (`listwatch.rs`) over one kind (in one namespace or
//! cluster-wide), turned into lane events. Lists are compared with the table's snapshot of
//! the scope, so unchanged objects are not re-sent and objects a list no longer has are
//! marked deleted (unless their row is newer than the list).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use kube::api::{Api, ApiResource};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::kubernetes::crd::CrdSummary;
use crate::kubernetes::listwatch::{list_watch, Failure, FailureReason, Settings, Start, Step};
use crate::pipeline::health::Health;
use crate::pipeline::lanes::{Lanes, LanesClosed, WatchedEvent};
use crate::row::object::RawObject;
use crate::row::record::{global_uid, EventKind};
use crate::row::routes::Route;
use crate::storage::resume;
use crate::storage::snapshot::{Listed, Scope, ScopeSnapshot};
use crate::storage::Database;
use crate::telemetry::events::{ListCompleted, Relisting, WatchFailed, WatchResumed, WatchSeries};
use crate::telemetry::metrics::Metrics;

/// What every watch shares.
pub struct WatchContext {
    pub client: kube::Client,
    pub lanes: Lanes,
    pub db: Database,
    pub cluster: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Bounds the lists running at once.
    pub list_permits: Arc<Semaphore>,
    pub page_size: u32,
    /// Initial lists as streaming lists (WatchList) instead of pages.
    pub streaming_lists: bool,
    /// Resume watches from their stored resume points (else always list first).
    pub resume: bool,
    pub checkpoint_interval: Duration,
}

/// CRD events forwarded to the manager.
#[derive(Debug)]
pub enum CrdEvent {
    /// A (re)list of CRDs starts.
    ListStarted,
    Applied(CrdSummary),
    Deleted(CrdSummary),
    /// The list is complete: CRDs not applied since `ListStarted` are gone (as of the list's
    /// `resource_version`).
    ListDone {
        resource_version: Option<i64>,
    },
}

/// One watch to run.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub route: Arc<Route>,
    /// `None`: cluster-wide.
    pub namespace: Option<String>,
    /// A static route: its first list gates readiness.
    pub is_static: bool,
}

impl WatchSpec {
    /// The watches a route needs: one per namespace for a namespaced kind when `NAMESPACES`
    /// is set, else one cluster-wide.
    pub fn for_route(
        route: Arc<Route>,
        namespaced: bool,
        namespaces: &[String],
        is_static: bool,
    ) -> Vec<WatchSpec> {
        if namespaced && !namespaces.is_empty() {
            namespaces
                .iter()
                .map(|ns| WatchSpec {
                    route: route.clone(),
                    namespace: Some(ns.clone()),
                    is_static,
                })
                .collect()
        } else {
            vec![WatchSpec {
                route,
                namespace: None,
                is_static,
            }]
        }
    }

    pub fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} in {ns}", self.route),
            None => self.route.to_string(),
        }
    }

    fn scope(&self, cluster: &str) -> Scope {
        Scope {
            cluster: cluster.to_owned(),
            group: self.route.group.clone(),
            plural: self.route.plural.clone(),
            version: self.route.version.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

pub fn api_resource(route: &Route) -> ApiResource {
    ApiResource {
        group: route.group.clone(),
        version: route.version.clone(),
        api_version: route.api_version(),
        kind: route.kind.clone(),
        plural: route.plural.clone(),
    }
}

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

/// State of the list in progress.
struct ListInProgress {
    snapshot: ScopeSnapshot,
    _permit: Option<OwnedSemaphorePermit>,
    listed: u64,
    unchanged: u64,
    /// Highest resourceVersion among the listed objects: the resume point once the list is
    /// complete when the list's own version is not an integer.
    max_rv: Option<i64>,
}

impl ListInProgress {
    /// Ticks a listed object off the snapshot; says whether it must be written.
    fn observe(&mut self, obj: &RawObject) -> Listed {
        self.listed += 1;
        let rv = obj.resource_version_number();
        self.max_rv = self.max_rv.max(rv);
        let decision = self.snapshot.observe(obj.uid().unwrap_or_default(), rv);
        if decision == Listed::Unchanged {
            self.unchanged += 1;
        }
        decision
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
    let ar = api_resource(&spec.route);
    let api: Api<RawObject> = match &spec.namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &ar),
        None => Api::all_with(ctx.client.clone(), &ar),
    };
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
    let mut watch = Watch {
        series,
        label,
        namespace: spec.namespace.clone().unwrap_or_default(),
        scope: spec.scope(&ctx.cluster),
        progress: Progress::new(resume::scope_key(
            &spec.route.group,
            &spec.route.version,
            &spec.route.plural,
            spec.namespace.as_deref(),
        )),
        ctx,
        spec,
        crd_events,
        list: None,
        first_list_done: false,
        catching_up_to: None,
        resuming_from: None,
        last_error: None,
    };

    // CRD watches always list: the manager needs the full set of CRDs to start from.
    let mut resume_from = None;
    if watch.ctx.resume && watch.crd_events.is_none() {
        let stored = tokio::select! {
            _ = cancel.cancelled() => return,
            p = async {
                // Rows at another version (a CRD's watched version switched, even by a watch
                // that never stored a point): a resume point of this version predates them,
                // and only a list rewrites them.
                if ScopeSnapshot::has_rows_at_other_versions(&watch.ctx.db.pool, &watch.scope).await? {
                    return Ok(None);
                }
                resume::load(&watch.ctx.db.pool, &watch.ctx.cluster, &watch.progress.key).await
            } => p,
        };
        match stored {
            Ok(Some(rv)) => {
                watch.progress.committed = Some(rv);
                watch.progress.queued = Some(rv);
                watch.resuming_from = Some(rv);
                resume_from = Some(rv);
            }
            Ok(None) => {}
            Err(e) => {
                warn!(resource = %watch.label, error = %e, "cannot read the resume point; listing")
            }
        }
    }

    // The newest resourceVersion the table holds for the scope: the server's history must
    // have reached it (and the resume point), else it is another history (checked first).
    let newest = tokio::select! {
        _ = cancel.cancelled() => return,
        n = ScopeSnapshot::newest_version(&watch.ctx.db.pool, &watch.scope) => n,
    };
    let newest = match newest {
        Ok(n) => n,
        Err(e) => {
            warn!(resource = %watch.label, error = %e, "cannot read the scope's newest resourceVersion; not checking the server's history against it");
            None
        }
    };
    let start = match (resume_from, newest) {
        (None, None) => Start::List,
        (resume, Some(newest)) => Start::Checked { resume, newest },
        (Some(rv), None) => Start::Resume(rv),
    };

    let settings = Settings {
        streaming: watch.ctx.streaming_lists,
        page_size: watch.ctx.page_size,
        list_permits: Some(watch.ctx.list_permits.clone()),
        type_meta: (
            watch.spec.route.api_version(),
            watch.spec.route.kind.clone(),
        ),
    };
    let mut steps = list_watch(api, settings, start);
    let mut checkpoints = tokio::time::interval(watch.ctx.checkpoint_interval);
    checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let step = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = checkpoints.tick() => {
                if watch.list.is_none() {
                    watch.progress.checkpoint(&watch.ctx, &watch.series);
                }
                continue;
            }
            step = steps.next() => step,
        };
        let Some(step) = step else { break };
        if watch.apply(step, &cancel).await.is_err() {
            return;
        }
    }
    // A checkpoint still in flight must not store its point after this watch has ended: the
    // manager sweeps a stopped CRD's scopes and forgets their points right after, and a
    // point stored later would make the next start resume instead of listing. Stopped, it may
    // not have stored what `committed` says: the final checkpoint stores it again.
    if let Some(in_flight) = watch.progress.in_flight.take() {
        in_flight.abort();
        let _ = in_flight.await;
        watch.progress.committed = None;
    }
    if watch.list.is_none() {
        final_checkpoint(&watch.ctx, &watch.progress).await;
    }
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
    progress: Progress,
    crd_events: Option<mpsc::Sender<CrdEvent>>,
    /// The list in progress, if any.
    list: Option<ListInProgress>,
    /// Readiness has been told about this watch.
    first_list_done: bool,
    /// Resumed without a list: readiness waits until the replayed backlog, which ends at
    /// this resourceVersion, is committed.
    catching_up_to: Option<i64>,
    /// Started from this stored resume point and has not listed since.
    resuming_from: Option<i64>,
    /// Why the last attempt failed: the reason of the next relist.
    last_error: Option<&'static str>,
}

impl Watch {
    async fn apply(&mut self, step: Step, cancel: &CancellationToken) -> Result<(), LanesClosed> {
        let observed_at = Utc::now();
        match step {
            Step::ListStarted { permit } => self.list_started(permit, cancel).await?,
            Step::Listed(obj) => self.listed(obj, observed_at).await?,
            Step::ListDone { resource_version } => {
                self.list_done(resource_version, observed_at).await?
            }
            Step::Resumed { from, current } => {
                WatchResumed {
                    resource: &self.label,
                    namespace: &self.namespace,
                    from,
                    outcome: "resumed",
                }
                .emit(&self.ctx.metrics);
                self.catching_up_to = Some(current.unwrap_or(from));
                self.caught_up_at(from).await?;
            }
            Step::HistoryBehind { newest, current } => {
                self.history_behind(newest, current, cancel).await
            }
            Step::Applied(obj) => self.forward(obj, EventKind::Apply, observed_at).await?,
            Step::Deleted(obj) => self.forward(obj, EventKind::Delete, observed_at).await?,
            Step::Progress(rv) => {
                self.progress.seen(Some(rv), unix_seconds(observed_at));
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
        let reason = if self.first_list_done || self.catching_up_to.is_some() {
            self.last_error.take().unwrap_or("restart")
        } else {
            "initial"
        };
        Relisting {
            resource: &self.spec.route.plural,
            namespace: &self.namespace,
            reason,
        }
        .emit(&self.ctx.metrics);
        self.catching_up_to = None;
        self.resuming_from = None;
        self.send_crd(CrdEvent::ListStarted).await;
        self.list = start_list(&self.ctx, &self.scope, cancel, permit).await?;
        Ok(())
    }

    /// A listed object goes to its lane unless its row already holds this version.
    async fn listed(
        &mut self,
        obj: RawObject,
        observed_at: chrono::DateTime<Utc>,
    ) -> Result<(), LanesClosed> {
        if self.crd_events.is_some() {
            self.send_crd_object(&obj, false).await;
        }
        let decision = match self.list.as_mut() {
            Some(l) => l.observe(&obj),
            None => Listed::Changed,
        };
        if decision == Listed::Changed {
            self.ctx
                .lanes
                .send_event(WatchedEvent {
                    object: obj,
                    route: self.spec.route.clone(),
                    kind: EventKind::Apply,
                    observed_at,
                })
                .await?;
        }
        Ok(())
    }

    /// A list is complete: rows it did not have are marked deleted (unless newer than it).
    async fn list_done(
        &mut self,
        resource_version: Option<i64>,
        observed_at: chrono::DateTime<Utc>,
    ) -> Result<(), LanesClosed> {
        if let Some(l) = self.list.take() {
            // The list shows the scope as of its resourceVersion: everything up to
            // there is queued (a non-integer one falls back to the newest object).
            self.progress
                .seen(resource_version.or(l.max_rv), unix_seconds(observed_at));
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
        self.send_crd(CrdEvent::ListDone { resource_version }).await;
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
        if let Some(from) = self.resuming_from.take() {
            WatchResumed {
                resource: &self.label,
                namespace: &self.namespace,
                from,
                outcome: "history_behind",
            }
            .emit(&self.ctx.metrics);
        }
        self.catching_up_to = None;
        self.progress.committed = None;
        self.progress.queued = None;
        let mut delay = Duration::from_millis(200);
        loop {
            let cleared = async {
                resume::forget(&self.ctx.db.pool, &self.ctx.cluster, &self.progress.key).await?;
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
        if f.reason == FailureReason::Expired {
            if let Some(from) = self.resuming_from.take() {
                WatchResumed {
                    resource: &self.label,
                    namespace: &self.namespace,
                    from,
                    outcome: "expired",
                }
                .emit(&self.ctx.metrics);
            }
        }
        self.last_error = Some(f.reason.as_str());
        WatchFailed {
            resource: &self.label,
            error: &f.message,
        }
        .emit(&self.ctx.metrics);
        if f.relist {
            // A list that broke half-way is void: no sweep, no resume point from it.
            self.list = None;
        }
        if f.reason.kind_unavailable() && self.spec.is_static && !self.first_list_done {
            // The server lacks the kind (or RBAC forbids it): keep retrying, but do not hold
            // readiness hostage to it. Any other failure is passing: readiness waits.
            self.first_list_done = true;
            self.ctx.health.static_route_listed();
        }
    }

    /// A resumed watch counts as listed once the backlog it replays is committed.
    async fn caught_up_at(&mut self, rv: i64) -> Result<(), LanesClosed> {
        if self.catching_up_to.is_some_and(|target| rv >= target) {
            self.catching_up_to = None;
            if !self.first_list_done {
                self.ctx.lanes.committed().await?;
                self.mark_listed();
            }
        }
        Ok(())
    }

    fn mark_listed(&mut self) {
        if !self.first_list_done {
            self.first_list_done = true;
            if self.spec.is_static {
                self.ctx.health.static_route_listed();
            }
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
        self.progress.seen(rv, unix_seconds(observed_at));
        if self.crd_events.is_some() {
            self.send_crd_object(&object, kind == EventKind::Delete)
                .await;
        }
        self.ctx
            .lanes
            .send_event(WatchedEvent {
                object,
                route: self.spec.route.clone(),
                kind,
                observed_at,
            })
            .await?;
        if let Some(rv) = rv {
            self.caught_up_at(rv).await?;
        }
        Ok(())
    }

    async fn send_crd(&self, event: CrdEvent) {
        if let Some(tx) = &self.crd_events {
            let _ = tx.send(event).await;
        }
    }

    /// Only the few fields the manager needs travel to it, never the whole CRD.
    async fn send_crd_object(&self, obj: &RawObject, deleted: bool) {
        match CrdSummary::from_json(&obj.json) {
            Ok(crd) => {
                let event = if deleted {
                    CrdEvent::Deleted(crd)
                } else {
                    CrdEvent::Applied(crd)
                };
                self.send_crd(event).await;
            }
            Err(e) => {
                warn!(crd = ?obj.metadata.name, error = %e, "cannot read CustomResourceDefinition; ignored")
            }
        }
    }
}

fn unix_seconds(at: chrono::DateTime<Utc>) -> f64 {
    at.timestamp_micros() as f64 / 1e6
}

/// How far a watch has got, the resume point stored for it, and what its lag series last said.
struct Progress {
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
    in_flight: Option<tokio::task::JoinHandle<()>>,
}

/// What one checkpoint does once everything queued so far is committed.
#[derive(Debug, PartialEq)]
struct CheckpointPlan {
    /// Store this resume point.
    store: Option<i64>,
    /// Tell the lag series: the changes read up to this time (unix seconds), through this
    /// resourceVersion, are committed.
    report: Option<(f64, Option<i64>)>,
}

impl Progress {
    fn new(key: String) -> Self {
        Self {
            key,
            queued: None,
            queued_at: None,
            committed: None,
            reported_at: None,
            in_flight: None,
        }
    }

    fn seen(&mut self, rv: Option<i64>, read_at: f64) {
        self.queued = self.queued.max(rv);
        self.queued_at = Some(self.queued_at.map_or(read_at, |q| q.max(read_at)));
    }

    fn ahead(&self) -> Option<i64> {
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

    /// Stores the resume point and reports the committed changes in the background once the
    /// lanes have committed everything queued so far (one checkpoint at a time; never forces
    /// a flush).
    fn checkpoint(&mut self, ctx: &Arc<WatchContext>, series: &Arc<WatchSeries>) {
        if self.in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Some(plan) = self.plan(ctx.resume) else {
            return;
        };
        if let Some(rv) = plan.store {
            self.committed = Some(rv);
        }
        if let Some((at, _)) = plan.report {
            self.reported_at = Some(at);
        }
        let ctx = ctx.clone();
        let series = series.clone();
        let key = self.key.clone();
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
                    if let Err(e) = resume::save(&ctx.db.pool, &ctx.cluster, &key, rv).await {
                        debug!(scope = %key, error = %e, "resume point not stored; a restart lists from an older one");
                    }
                }
            },
        )));
    }
}

/// On shutdown: flush what this watch queued and store how far it got.
async fn final_checkpoint(ctx: &WatchContext, progress: &Progress) {
    let Some(rv) = progress.ahead().filter(|_| ctx.resume) else {
        return;
    };
    if ctx.lanes.barrier().await.is_ok() {
        if let Err(e) = resume::save(&ctx.db.pool, &ctx.cluster, &progress.key, rv).await {
            warn!(scope = %progress.key, error = %e, "resume point not stored at shutdown");
        }
    }
}

/// Lets every queued change commit, then loads the scope's rows. `None` when cancelled
/// meanwhile.
async fn start_list(
    ctx: &WatchContext,
    scope: &Scope,
    cancel: &CancellationToken,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<Option<ListInProgress>, LanesClosed> {
    // Rows of changes still queued must be in the table before we read it, or a delete the
    // list reveals could be missed (the row would appear after the snapshot).
    ctx.lanes.barrier().await?;
    let mut delay = Duration::from_millis(200);
    loop {
        match ScopeSnapshot::load(&ctx.db.pool, scope).await {
            Ok(snapshot) => {
                return Ok(Some(ListInProgress {
                    snapshot,
                    _permit: permit,
                    listed: 0,
                    unchanged: 0,
                    max_rv: None,
                }));
            }
            Err(e) => {
                ctx.health.set_db(false, Some(&e));
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Marks the live rows of `scope` deleted (those not newer than `not_newer_than`, the
/// resourceVersion at which the kind was seen gone), in order with anything still queued for
/// those objects (tombstones go through the objects' lanes after a barrier). Its resume point
/// is dropped: a later watch of the scope lists, and that list repairs any row marked here
/// whose object is in fact alive. Takes no list permit: it lists nothing from the server.
pub async fn sweep_scope(
    ctx: &WatchContext,
    scope: &Scope,
    not_newer_than: Option<i64>,
    cancel: &CancellationToken,
) -> Result<(), LanesClosed> {
    let Some(list) = start_list(ctx, scope, cancel, None).await? else {
        return Ok(());
    };
    let gone = send_tombstones(ctx, list.snapshot, Utc::now(), not_newer_than).await?;
    ListCompleted {
        resource: &scope.plural,
        namespace: scope.namespace.as_deref().unwrap_or(""),
        listed: 0,
        unchanged: 0,
        gone,
    }
    .emit(&ctx.metrics);
    if let Err(e) =
        resume::forget_kind(&ctx.db.pool, &ctx.cluster, &scope.group, &scope.plural).await
    {
        warn!(group = %scope.group, plural = %scope.plural, error = %e, "resume points of a swept kind not dropped; a restart may resume instead of listing");
    }
    Ok(())
}

/// Queues a tombstone for every live row the list did not have; returns how many.
async fn send_tombstones(
    ctx: &WatchContext,
    snapshot: ScopeSnapshot,
    at: chrono::DateTime<Utc>,
    not_newer_than: Option<i64>,
) -> Result<u64, LanesClosed> {
    let mut gone = 0u64;
    for uid in snapshot.into_missing() {
        gone += 1;
        let g = global_uid(&ctx.cluster, &uid);
        ctx.lanes
            .send_tombstone(&uid, g, at, not_newer_than)
            .await?;
    }
    Ok(gone)
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
}
