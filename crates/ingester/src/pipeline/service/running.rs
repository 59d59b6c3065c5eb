//! The running pipeline: the lanes that write the table, the watches of the static routes,
//! the CRD manager and the background loops, started together once the table is prepared.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::background::{db_pinger, status_loop};
use super::static_route::run_static_route;
use crate::config::Config;
use crate::pipeline::health::Health;
use crate::pipeline::lanes::{LaneSettings, Lanes};
use crate::pipeline::manager::Manager;
use crate::pipeline::supervisor::named;
use crate::pipeline::watch::WatchContext;
use crate::row::routes::{ManagedGroups, StaticRoutes};
use crate::storage::writer::{BatchWriter, WriterOptions};
use crate::storage::Database;
use crate::telemetry::metrics::Metrics;

/// The field policies of this configuration (redaction, pruning), announced once.
pub(super) fn field_policy(
    config: &Config,
    metrics: &Metrics,
) -> Arc<crate::row::fields::FieldPolicy> {
    crate::telemetry::events::FieldPolicyStarted {
        redact: config.redact_sensitive,
        sensitive_kinds: &config.sensitive_kinds.to_string(),
        prune_fields: &config.prune_fields.to_string(),
    }
    .emit(metrics);
    Arc::new(crate::row::fields::FieldPolicy::new(
        config.redact_sensitive,
        &config.sensitive_kinds,
        &config.prune_fields,
    ))
}

/// The lanes that write the table, with the tracker that says when they have ended.
pub(super) fn start_lanes(
    config: &Config,
    db: &Database,
    cluster: &Arc<str>,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    fields: Arc<crate::row::fields::FieldPolicy>,
) -> (Lanes, TaskTracker) {
    let tracker = TaskTracker::new();
    let lanes = Lanes::start(
        LaneSettings {
            lanes: config.workers as usize,
            capacity: config.queue_capacity as usize,
            batch_size: config.batch_size as usize,
            flush_interval: config.flush_interval,
            queue_bytes: config.queue_bytes,
            batch_bytes: config.batch_bytes,
            composition_fallback: config.composition_id_fallback,
            fields,
        },
        cluster.clone(),
        BatchWriter::with_options(
            db.pool.clone(),
            metrics.clone(),
            WriterOptions {
                history: config.history,
                change_feed: config.change_feed,
                staging_lz4: db.schema.lz4,
            },
        )
        .with_commit_marks(cluster.clone(), db.marks.clone()),
        metrics.clone(),
        health.clone(),
        &tracker,
    );
    tracker.close();
    (lanes, tracker)
}

/// What every watch shares: the client, the lanes, the database and the settings of lists.
pub(super) fn watch_context(
    config: &Config,
    client: kube::Client,
    lanes: Lanes,
    db: Database,
    cluster: &Arc<str>,
    metrics: &Arc<Metrics>,
    health: Arc<Health>,
) -> Arc<WatchContext> {
    Arc::new(WatchContext {
        client,
        lanes,
        db,
        cluster: cluster.clone(),
        metrics: metrics.clone(),
        health,
        list_permits: Arc::new(Semaphore::new(config.list_concurrency as usize)),
        page_size: config.list_page_size,
        streaming_lists: config.streaming_lists,
        resume: config.watch_resume,
        checkpoint_interval: config.checkpoint_interval,
    })
}

/// The running pipeline: the watches and the lanes they feed.
pub(super) struct Pipeline {
    pub(super) watches: CancellationToken,
    pub(super) watch_tracker: TaskTracker,
    pub(super) lane_tracker: TaskTracker,
    pub(super) metrics: Arc<Metrics>,
    /// How long the lanes have to commit what was queued (SHUTDOWN_TIMEOUT).
    pub(super) shutdown_timeout: Duration,
}

impl Pipeline {
    /// Starts the watches of `ctx`'s lanes, tracked by `lane_tracker`.
    pub(super) fn start(
        config: &Config,
        ctx: Arc<WatchContext>,
        lane_tracker: TaskTracker,
        routes: &StaticRoutes,
        groups: ManagedGroups,
    ) -> Pipeline {
        // The context (and with it the lanes' senders) lives on in the watch tasks only: the
        // lanes end once every watch has ended.
        let metrics = ctx.metrics.clone();
        let (watches, watch_tracker) = start_watches(config, ctx, routes, groups);
        Pipeline {
            watches,
            watch_tracker,
            lane_tracker,
            metrics,
            shutdown_timeout: config.shutdown_timeout,
        }
    }
}

/// The watches of the static routes, the CRD manager and the background loops (database
/// ping, history upkeep, status log), all stopped by the returned token; the tracker says
/// when the tracked ones have ended.
fn start_watches(
    config: &Config,
    ctx: Arc<WatchContext>,
    routes: &StaticRoutes,
    groups: ManagedGroups,
) -> (CancellationToken, TaskTracker) {
    let watches = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (crd_tx, crd_rx) = mpsc::channel(256);
    for route in &routes.routes {
        let crd_events = route.is_crd().then(|| crd_tx.clone());
        tracker.spawn(named(
            format!("static route {route}"),
            run_static_route(
                ctx.clone(),
                route.clone(),
                config.namespaces.0.clone(),
                watches.clone(),
                crd_events,
            ),
        ));
    }
    drop(crd_tx);
    tracker.spawn(named(
        "database rewinds",
        super::prepare::after_rewinds(
            ctx.db.clone(),
            ctx.cluster.clone(),
            config.clone(),
            routes.clone(),
            groups.clone(),
            ctx.metrics.clone(),
            watches.clone(),
        ),
    ));
    let manager = Manager::new(
        ctx.clone(),
        groups,
        config.namespaces.clone(),
        routes.kinds(),
        watches.clone(),
    );
    tracker.spawn(named("CRD manager", manager.run(crd_rx)));
    tracker.close();

    tracker.spawn(named(
        "database pinger",
        db_pinger(ctx.db.clone(), ctx.health.clone(), watches.clone()),
    ));
    if config.history {
        tracker.spawn(named(
            "history upkeep",
            crate::storage::history::upkeep(
                ctx.db.pool.clone(),
                crate::storage::history::retention_days(config.history_retention),
                ctx.metrics.clone(),
                watches.clone(),
            ),
        ));
    }
    tokio::spawn(named(
        "status log",
        status_loop(
            ctx.metrics.clone(),
            ctx.health.clone(),
            config.status_interval,
            watches.clone(),
        ),
    ));
    (watches, tracker)
}
