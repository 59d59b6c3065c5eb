//! One watch: kube-runtime's `watcher` over one kind (in one namespace or cluster-wide),
//! turned into lane events. Lists are compared with the table's snapshot of the scope, so
//! unchanged objects are not re-sent and objects a list no longer has are marked deleted.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use kube::api::{Api, ApiResource, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::events::{ListCompleted, Relisting, WatchFailed, WatchResumed};
use crate::health::Health;
use crate::lanes::{Lanes, LanesClosed, WatchedEvent};
use crate::metrics::Metrics;
use crate::object::RawObject;
use crate::record::{global_uid, EventKind};
use crate::routes::Route;
use crate::storage::resume;
use crate::storage::snapshot::{Listed, Scope, ScopeSnapshot};
use crate::storage::Database;

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
    Applied(RawObject),
    Deleted(RawObject),
    /// The list is complete: CRDs not applied since `ListStarted` are gone.
    ListDone,
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
    _permit: tokio::sync::OwnedSemaphorePermit,
    listed: u64,
    unchanged: u64,
    /// Highest resourceVersion among the listed objects: a safe resume point once the list
    /// is complete (listed objects arrive in no particular order, so not before).
    max_rv: Option<i64>,
}

/// Runs one watch until `cancel`; returns early only when the lanes close.
pub async fn run_watch(
    ctx: Arc<WatchContext>,
    spec: WatchSpec,
    cancel: CancellationToken,
    crd_events: Option<mpsc::Sender<CrdEvent>>,
) {
    let _active = ActiveWatch::new(ctx.metrics.clone());
    let label = spec.label();
    let ar = api_resource(&spec.route);
    let api: Api<RawObject> = match &spec.namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &ar),
        None => Api::all_with(ctx.client.clone(), &ar),
    };
    let namespace = spec.namespace.clone().unwrap_or_default();
    let scope = spec.scope(&ctx.cluster);
    let mut progress = Progress::new(resume::scope_key(
        &spec.route.group,
        &spec.route.version,
        &spec.route.plural,
        spec.namespace.as_deref(),
    ));
    let mut first_list_done = false;
    let mut last_error: Option<&'static str> = None;

    // CRD watches always list: the manager needs the full set of CRDs to start from.
    if ctx.resume && crd_events.is_none() {
        let stored = tokio::select! {
            _ = cancel.cancelled() => return,
            p = resume::load(&ctx.db.pool, &ctx.cluster, &progress.key) => p,
        };
        match stored {
            Ok(Some(rv)) => {
                progress.committed = Some(rv);
                match resume_watch(
                    &ctx,
                    &api,
                    &spec,
                    rv,
                    &mut progress,
                    &mut first_list_done,
                    &cancel,
                )
                .await
                {
                    Ok(ResumeEnd::Stopped) => {
                        final_checkpoint(&ctx, &progress).await;
                        return;
                    }
                    Ok(ResumeEnd::Expired) => last_error = Some("expired"),
                    Err(LanesClosed) => return,
                }
            }
            Ok(None) => {}
            Err(e) => warn!(resource = %label, error = %e, "cannot read the resume point; listing"),
        }
    }

    let mut streaming = ctx.streaming_lists;
    let mut stream = list_and_watch(&api, ctx.page_size, streaming);
    let mut list: Option<ListInProgress> = None;
    let mut checkpoints = tokio::time::interval(ctx.checkpoint_interval);
    checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = checkpoints.tick() => {
                if list.is_none() {
                    progress.checkpoint(&ctx);
                }
                continue;
            }
            next = stream.next() => next,
        };
        let Some(event) = next else { break };
        if let Err(e) = &event {
            if streaming && refuses_streaming_lists(e) {
                info!(resource = %label, "the API server does not serve streaming lists (WatchList feature gate off); using paged lists");
                streaming = false;
                stream = list_and_watch(&api, ctx.page_size, false);
                list = None;
                continue;
            }
        }
        let observed_at = Utc::now();
        let result: Result<(), LanesClosed> = async {
            match event {
                Ok(Event::Init) => {
                    let reason = if first_list_done {
                        last_error.take().unwrap_or("restart")
                    } else {
                        "initial"
                    };
                    Relisting {
                        resource: &spec.route.plural,
                        namespace: &namespace,
                        reason,
                    }
                    .emit(&ctx.metrics);
                    if let Some(tx) = &crd_events {
                        let _ = tx.send(CrdEvent::ListStarted).await;
                    }
                    let Some(started) = start_list(&ctx, &scope, &cancel).await? else {
                        return Ok(());
                    };
                    list = Some(started);
                }
                Ok(Event::InitApply(obj)) => {
                    if let Some(tx) = &crd_events {
                        let _ = tx.send(CrdEvent::Applied(obj.clone())).await;
                    }
                    let decision = match list.as_mut() {
                        Some(l) => {
                            l.listed += 1;
                            let rv = obj.resource_version_number();
                            l.max_rv = l.max_rv.max(rv);
                            let d = l.snapshot.observe(obj.uid().unwrap_or_default(), rv);
                            if d == Listed::Unchanged {
                                l.unchanged += 1;
                            }
                            d
                        }
                        None => Listed::Changed,
                    };
                    if decision == Listed::Changed {
                        ctx.lanes
                            .send_event(WatchedEvent {
                                object: obj,
                                route: spec.route.clone(),
                                kind: EventKind::Apply,
                                observed_at,
                            })
                            .await?;
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(l) = list.take() {
                        progress.seen(l.max_rv);
                        let gone = send_tombstones(&ctx, l.snapshot, observed_at).await?;
                        ListCompleted {
                            resource: &spec.route.plural,
                            namespace: &namespace,
                            listed: l.listed,
                            unchanged: l.unchanged,
                            gone,
                        }
                        .emit(&ctx.metrics);
                    }
                    if let Some(tx) = &crd_events {
                        let _ = tx.send(CrdEvent::ListDone).await;
                    }
                    if !first_list_done {
                        first_list_done = true;
                        if spec.is_static {
                            ctx.health.static_route_listed();
                        }
                    }
                }
                Ok(Event::Apply(obj)) => {
                    let crd = crd_events.as_ref();
                    forward(
                        &ctx,
                        &spec,
                        &mut progress,
                        crd,
                        obj,
                        EventKind::Apply,
                        observed_at,
                    )
                    .await?;
                }
                Ok(Event::Delete(obj)) => {
                    let crd = crd_events.as_ref();
                    forward(
                        &ctx,
                        &spec,
                        &mut progress,
                        crd,
                        obj,
                        EventKind::Delete,
                        observed_at,
                    )
                    .await?;
                }
                Err(e) => {
                    let text = e.to_string();
                    let (reason, unavailable) = classify(&e);
                    last_error = Some(reason);
                    WatchFailed {
                        resource: &label,
                        error: &text,
                    }
                    .emit(&ctx.metrics);
                    // A list that failed half-way starts over with a fresh snapshot.
                    list = None;
                    if unavailable && !first_list_done && spec.is_static {
                        // The server lacks the kind (or RBAC forbids it): keep retrying, but do
                        // not hold readiness hostage to it.
                        first_list_done = true;
                        ctx.health.static_route_listed();
                    }
                }
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            return;
        }
    }
    if list.is_none() {
        final_checkpoint(&ctx, &progress).await;
    }
}

/// How far a watch has got, and the resume point stored for it.
struct Progress {
    key: String,
    /// Highest resourceVersion up to which every change of the scope is queued.
    queued: Option<i64>,
    /// Highest resume point stored (or being stored).
    committed: Option<i64>,
    in_flight: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn new(key: String) -> Self {
        Self {
            key,
            queued: None,
            committed: None,
            in_flight: None,
        }
    }

    fn seen(&mut self, rv: Option<i64>) {
        self.queued = self.queued.max(rv);
    }

    fn ahead(&self) -> Option<i64> {
        self.queued
            .filter(|q| self.committed.is_none_or(|c| c < *q))
    }

    /// Stores the resume point in the background once the lanes have committed everything
    /// queued so far (one store at a time; never forces a flush).
    fn checkpoint(&mut self, ctx: &Arc<WatchContext>) {
        if !ctx.resume || self.in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Some(rv) = self.ahead() else { return };
        self.committed = Some(rv);
        let ctx = ctx.clone();
        let key = self.key.clone();
        self.in_flight = Some(tokio::spawn(async move {
            if ctx.lanes.committed().await.is_ok() {
                if let Err(e) = resume::save(&ctx.db.pool, &ctx.cluster, &key, rv).await {
                    debug!(scope = %key, error = %e, "resume point not stored; a restart lists from an older one");
                }
            }
        }));
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

enum ResumeEnd {
    Stopped,
    /// The server no longer has the history: list instead.
    Expired,
}

/// Watches from a stored resume point instead of listing (a restart inside the server's
/// history window). Ends when cancelled, or when the server answers 410 Gone.
async fn resume_watch(
    ctx: &Arc<WatchContext>,
    api: &Api<RawObject>,
    spec: &WatchSpec,
    from: i64,
    progress: &mut Progress,
    first_list_done: &mut bool,
    cancel: &CancellationToken,
) -> Result<ResumeEnd, LanesClosed> {
    let label = spec.label();
    let namespace = spec.namespace.as_deref().unwrap_or("");
    let mut delay = Duration::from_millis(500);
    let mut announced = false;
    let mut checkpoints = tokio::time::interval(ctx.checkpoint_interval);
    checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let expired = |metrics: &Metrics| {
        WatchResumed {
            resource: &label,
            namespace,
            from,
            outcome: "expired",
        }
        .emit(metrics);
        Ok(ResumeEnd::Expired)
    };
    loop {
        let params = WatchParams::default().timeout(290);
        // Re-watch from the newest resourceVersion seen (events and bookmarks).
        let from_rv = progress.queued.map_or(from, |q| q.max(from)).to_string();
        let started = tokio::select! {
            _ = cancel.cancelled() => return Ok(ResumeEnd::Stopped),
            s = api.watch(&params, &from_rv) => s,
        };
        let stream = match started {
            Ok(s) => s,
            Err(kube::Error::Api(status)) if status.code == 410 => return expired(&ctx.metrics),
            Err(e) => {
                WatchFailed {
                    resource: &label,
                    error: &e.to_string(),
                }
                .emit(&ctx.metrics);
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(ResumeEnd::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if !announced {
            announced = true;
            WatchResumed {
                resource: &label,
                namespace,
                from,
                outcome: "resumed",
            }
            .emit(&ctx.metrics);
            if spec.is_static && !*first_list_done {
                *first_list_done = true;
                ctx.health.static_route_listed();
            }
        }
        futures::pin_mut!(stream);
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return Ok(ResumeEnd::Stopped),
                _ = checkpoints.tick() => {
                    progress.checkpoint(ctx);
                    continue;
                }
                item = stream.next() => item,
            };
            let observed_at = Utc::now();
            let (object, kind) = match item {
                None => break,
                Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => (o, EventKind::Apply),
                Some(Ok(WatchEvent::Deleted(o))) => (o, EventKind::Delete),
                Some(Ok(WatchEvent::Bookmark(b))) => {
                    progress.seen(b.metadata.resource_version.parse().ok());
                    continue;
                }
                Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                    return expired(&ctx.metrics)
                }
                Some(Ok(WatchEvent::Error(status))) => {
                    WatchFailed {
                        resource: &label,
                        error: &status.message,
                    }
                    .emit(&ctx.metrics);
                    break;
                }
                Some(Err(e)) => {
                    WatchFailed {
                        resource: &label,
                        error: &e.to_string(),
                    }
                    .emit(&ctx.metrics);
                    break;
                }
            };
            delay = Duration::from_millis(500);
            forward(ctx, spec, progress, None, object, kind, observed_at).await?;
        }
    }
}

type EventStream = futures::stream::BoxStream<'static, watcher::Result<Event<RawObject>>>;

/// kube-runtime's watcher with its default backoff; initial lists as streaming lists (one
/// object per event) or as pages of `page_size`.
fn list_and_watch(api: &Api<RawObject>, page_size: u32, streaming: bool) -> EventStream {
    let config = watcher::Config::default().page_size(page_size);
    let config = if streaming {
        config.streaming_lists()
    } else {
        config
    };
    watcher::watcher(api.clone(), config)
        .default_backoff()
        .boxed()
}

/// A server with the WatchList feature gate off refuses `sendInitialEvents` as invalid.
fn refuses_streaming_lists(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 422 || s.code == 400)
}

/// Waits for a list permit, lets every queued change commit, then loads the scope's rows.
/// `None` when cancelled meanwhile.
async fn start_list(
    ctx: &WatchContext,
    scope: &Scope,
    cancel: &CancellationToken,
) -> Result<Option<ListInProgress>, LanesClosed> {
    let permit = tokio::select! {
        _ = cancel.cancelled() => return Ok(None),
        p = ctx.list_permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return Ok(None) },
    };
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

/// A short reason for the relists metric, and whether the kind is unavailable on the server.
fn classify(e: &watcher::Error) -> (&'static str, bool) {
    let api_code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    match api_code {
        Some(410) => ("expired", false),
        Some(404) => ("not_found", true),
        Some(403) => ("forbidden", true),
        Some(_) => ("api_error", false),
        None => ("connection", false),
    }
}

/// Marks every live row of `scope` deleted, in order with anything still queued for those
/// objects (tombstones go through the objects' lanes after a barrier).
pub async fn sweep_scope(
    ctx: &WatchContext,
    scope: &Scope,
    cancel: &CancellationToken,
) -> Result<(), LanesClosed> {
    let Some(list) = start_list(ctx, scope, cancel).await? else {
        return Ok(());
    };
    let gone = send_tombstones(ctx, list.snapshot, Utc::now()).await?;
    ListCompleted {
        resource: &scope.plural,
        namespace: scope.namespace.as_deref().unwrap_or(""),
        listed: 0,
        unchanged: 0,
        gone,
    }
    .emit(&ctx.metrics);
    Ok(())
}

/// Queues a tombstone for every live row the list did not have; returns how many.
async fn send_tombstones(
    ctx: &WatchContext,
    snapshot: ScopeSnapshot,
    at: chrono::DateTime<Utc>,
) -> Result<u64, LanesClosed> {
    let mut gone = 0u64;
    for uid in snapshot.into_missing() {
        gone += 1;
        let g = global_uid(&ctx.cluster, &uid);
        ctx.lanes.send_tombstone(&uid, g, at).await?;
    }
    Ok(gone)
}

/// A live (not listed) change: it moves the resume point, goes to the manager when this is
/// the CRD watch, and to its lane. (Live changes arrive in resourceVersion order.)
async fn forward(
    ctx: &WatchContext,
    spec: &WatchSpec,
    progress: &mut Progress,
    crd_events: Option<&mpsc::Sender<CrdEvent>>,
    object: RawObject,
    kind: EventKind,
    observed_at: chrono::DateTime<Utc>,
) -> Result<(), LanesClosed> {
    progress.seen(object.resource_version_number());
    if let Some(tx) = crd_events {
        let event = match kind {
            EventKind::Apply => CrdEvent::Applied(object.clone()),
            EventKind::Delete => CrdEvent::Deleted(object.clone()),
        };
        let _ = tx.send(event).await;
    }
    ctx.lanes
        .send_event(WatchedEvent {
            object,
            route: spec.route.clone(),
            kind,
            observed_at,
        })
        .await
}
