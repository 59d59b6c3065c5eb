//! Start-up order, the running service and graceful shutdown (spec section 5).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::health::{self, Health};
use crate::lanes::{LaneSettings, Lanes};
use crate::manager::Manager;
use crate::metrics::Metrics;
use crate::routes::{
    ManagedGroups, Route, StaticRoutes, BUILTIN_MANAGED_GROUPS, BUILTIN_STATIC_ROUTES,
};
use crate::storage::writer::BatchWriter;
use crate::storage::Database;
use crate::watch::{run_watch, WatchContext, WatchSpec};

/// Reads a route file (or the built-in text) and logs every skipped line.
fn load_list<T>(
    what: &str,
    path: Option<&std::path::Path>,
    builtin: &str,
    parse: impl Fn(&str) -> (T, Vec<crate::routes::SkippedLine>),
) -> anyhow::Result<T> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("{what}: cannot read {}: {e}", p.display()))?,
        None => builtin.to_owned(),
    };
    let (parsed, skipped) = parse(&text);
    for s in skipped {
        warn!(file = what, "skipping {s}");
    }
    Ok(parsed)
}

/// Runs the service until SIGTERM/SIGINT (or `shutdown` is cancelled).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let routes = load_list(
        "STATIC_ROUTES_FILE",
        config.static_routes_file.as_deref(),
        BUILTIN_STATIC_ROUTES,
        StaticRoutes::parse,
    )?;
    let groups = load_list(
        "MANAGED_GROUPS_FILE",
        config.managed_groups_file.as_deref(),
        BUILTIN_MANAGED_GROUPS,
        ManagedGroups::parse,
    )?;
    info!(static_routes = routes.routes.len(), managed_groups = groups.iter().count(), namespaces = ?config.namespaces.0, "starting");

    let metrics = Arc::new(Metrics::new());
    let lanes_n = config.workers as usize;
    let db = Database::connect(&config, lanes_n + 3).await?;
    metrics.db_up.set(1);

    let kube_config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!(
            "Kubernetes client configuration (in-cluster, KUBECONFIG or ~/.kube/config): {e}"
        )
    })?;
    let cluster: Arc<str> = Arc::from(crate::cluster::resolve(
        config.cluster_name.as_deref(),
        &kube_config,
    ));

    let health = Arc::new(Health::new(metrics.clone()));
    // Counted before the probe server starts, so /readyz never says ready before the lists
    // (a standby under leader election is ready: it counts them once it leads).
    if !config.leader_election {
        health.add_static_routes(routes.routes.len());
    }
    let servers = CancellationToken::new();
    health::serve(
        SocketAddr::from(([0, 0, 0, 0], config.port)),
        SocketAddr::from(([0, 0, 0, 0], config.metrics_port)),
        health.clone(),
        metrics.clone(),
        servers.clone(),
    )
    .await?;

    let client = kube::Client::try_from(kube_config)
        .map_err(|e| anyhow::anyhow!("Kubernetes client: {e}"))?;

    // One SIGTERM/SIGINT listener for the whole run (a standby may get it while waiting).
    let term = shutdown_signal();
    tokio::pin!(term);
    // Leader election: a standby waits here (ready, no watch, no write) until it holds the
    // Lease; the leader keeps renewing it in the background (see leader.rs).
    let lease_stop = CancellationToken::new();
    let lease_lost = CancellationToken::new();
    let mut lease_keeper = None;
    if config.leader_election {
        metrics.is_leader.set(0);
        let mut elector = crate::leader::LeaderElector::new(
            client.clone(),
            crate::leader::LeaseSettings::from_config(&config),
        );
        info!(identity = elector.identity(), lease = %config.lease_name, "leader election on: waiting for the lease");
        let stop_waiting = CancellationToken::new();
        let acquired = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = &mut term => false,
            ok = elector.acquire(&stop_waiting) => ok,
        };
        if !acquired {
            info!("stopped while standing by; bye");
            servers.cancel();
            return Ok(());
        }
        lease_keeper = Some(tokio::spawn(
            elector.keep(lease_stop.clone(), lease_lost.clone()),
        ));
        health.add_static_routes(routes.routes.len());
    }
    metrics.is_leader.set(1);

    let lane_tracker = TaskTracker::new();
    let lanes = Lanes::start(
        LaneSettings {
            lanes: lanes_n,
            capacity: config.queue_capacity as usize,
            batch_size: config.batch_size as usize,
            flush_interval: config.flush_interval,
            queue_bytes: config.queue_bytes,
            batch_bytes: config.batch_bytes,
        },
        cluster.clone(),
        BatchWriter::new(db.pool.clone(), metrics.clone()),
        metrics.clone(),
        health.clone(),
        &lane_tracker,
    );
    lane_tracker.close();

    let ctx = Arc::new(WatchContext {
        client: client.clone(),
        lanes: lanes.clone(),
        db: db.clone(),
        cluster: cluster.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        list_permits: Arc::new(Semaphore::new(config.list_concurrency as usize)),
        page_size: config.list_page_size,
        streaming_lists: config.streaming_lists,
        resume: config.watch_resume,
        checkpoint_interval: config.checkpoint_interval,
    });

    let watches = CancellationToken::new();
    let watch_tracker = TaskTracker::new();
    let (crd_tx, crd_rx) = mpsc::channel(256);
    for route in &routes.routes {
        let crd_events = route.is_crd().then(|| crd_tx.clone());
        watch_tracker.spawn(run_static_route(
            ctx.clone(),
            route.clone(),
            config.namespaces.0.clone(),
            watches.clone(),
            crd_events,
        ));
    }
    drop(crd_tx);
    let manager = Manager::new(
        ctx.clone(),
        groups,
        config.namespaces.clone(),
        watches.clone(),
    );
    watch_tracker.spawn(manager.run(crd_rx));
    watch_tracker.close();

    watch_tracker.spawn(db_pinger(db.clone(), health.clone(), watches.clone()));
    tokio::spawn(status_loop(
        metrics.clone(),
        health.clone(),
        config.status_interval,
        watches.clone(),
    ));
    drop(ctx);
    drop(lanes);

    info!(cluster = %cluster, "running");
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = &mut term => {}
        _ = lease_lost.cancelled() => {}
    }
    info!("shutting down: stopping watches, draining the queue");
    watches.cancel();
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        watch_tracker.wait().await;
        lane_tracker.wait().await;
    })
    .await;
    // Release the lease only after the last commit, so the next leader never writes
    // alongside this one's tail.
    if let Some(keeper) = lease_keeper {
        lease_stop.cancel();
        if let Ok(mut elector) = keeper.await {
            if !lease_lost.is_cancelled() {
                elector.release().await;
            }
        }
        metrics.is_leader.set(0);
    }
    servers.cancel();
    if lease_lost.is_cancelled() {
        anyhow::bail!("lost the leader lease: stopped watching and writing; exiting so that this replica restarts as a standby");
    }
    match drained {
        Ok(()) => {
            info!("queue drained and flushed; bye");
            Ok(())
        }
        Err(_) => {
            error!(timeout = ?config.shutdown_timeout, "shutdown timed out before every change was committed");
            anyhow::bail!(
                "shutdown timed out after {:?} (SHUTDOWN_TIMEOUT) with changes not committed",
                config.shutdown_timeout
            )
        }
    }
}

/// Finds the route's scope by discovery (retrying while the server lacks the kind), then
/// runs its watch: one cluster-wide, or one per namespace for namespaced kinds.
async fn run_static_route(
    ctx: Arc<WatchContext>,
    route: Arc<Route>,
    namespaces: Vec<String>,
    cancel: CancellationToken,
    crd_events: Option<mpsc::Sender<crate::watch::CrdEvent>>,
) {
    let mut delay = Duration::from_secs(1);
    let mut reported_unavailable = false;
    let namespaced = loop {
        match discover_scope(&ctx.client, &route).await {
            Ok(n) => break n,
            Err(e) => {
                crate::events::WatchFailed {
                    resource: &route.to_string(),
                    error: &e,
                }
                .emit(&ctx.metrics);
                if !reported_unavailable {
                    // Readiness must not wait forever on a kind this server does not have.
                    reported_unavailable = true;
                    ctx.health.static_route_listed();
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    };
    let specs = WatchSpec::for_route(route.clone(), namespaced, &namespaces, true);
    if !reported_unavailable && specs.len() > 1 {
        // Readiness counts one per route; every namespace watch reports its first list.
        ctx.health.add_static_routes(specs.len() - 1);
    }
    let is_static = !reported_unavailable;
    let tasks: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            tokio::spawn(run_watch(
                ctx.clone(),
                WatchSpec { is_static, ..spec },
                cancel.clone(),
                crd_events.clone(),
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Whether the route's resource is namespaced, from the server's discovery document.
async fn discover_scope(client: &kube::Client, route: &Route) -> Result<bool, String> {
    let list = if route.group.is_empty() {
        client.list_core_api_resources(&route.version).await
    } else {
        client.list_api_group_resources(&route.api_version()).await
    }
    .map_err(|e| format!("discovery of {}: {e}", route.api_version()))?;
    list.resources
        .iter()
        .find(|r| r.name == route.plural)
        .map(|r| r.namespaced)
        .ok_or_else(|| {
            format!(
                "the server has no resource {} in {}",
                route.plural,
                route.api_version()
            )
        })
}

/// Keeps readiness following the database while no batch is being written.
async fn db_pinger(db: Database, health: Arc<Health>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        match tokio::time::timeout(Duration::from_secs(5), db.ping()).await {
            Ok(Ok(())) => health.set_db(true, None),
            Ok(Err(e)) => health.set_db(false, Some(&e)),
            Err(_) => health.set_db(false, Some("ping timed out")),
        }
    }
}

async fn status_loop(
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    every: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let runtime = tokio::runtime::Handle::current().metrics();
        info!(
            queue_depth = metrics.queue_depth.get(),
            pending_batch = metrics.pending_batch.get(),
            active_watches = metrics.active_watches.get(),
            rows_written = metrics.rows_written.get(),
            db_up = health.db_up(),
            ready = health.ready(),
            runtime_tasks = runtime.num_alive_tasks(),
            "pipeline status"
        );
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
