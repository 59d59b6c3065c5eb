//! Start-up order, the running service and graceful shutdown (spec section 5), and the
//! supervision that keeps a broken process from staying up: a panic in any task, or a server
//! task that ends, stops the service and the process exits non-zero naming the task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::pipeline::health::{self, Health};
use crate::pipeline::lanes::{LaneSettings, Lanes};
use crate::pipeline::manager::Manager;
use crate::pipeline::supervisor::{first_panic, install_panic_reporter, named, task_panicked};
use crate::pipeline::watch::{run_watch, WatchContext, WatchSpec};
use crate::row::routes::{
    ManagedGroups, Route, StaticRoutes, BUILTIN_MANAGED_GROUPS, BUILTIN_STATIC_ROUTES,
};
use crate::storage::ownership::{retire_uncovered, Coverage};
use crate::storage::writer::{BatchWriter, WriterOptions};
use crate::storage::Database;
use crate::telemetry::events::RowsRetired;
use crate::telemetry::metrics::Metrics;

/// Reads a route file (or the built-in text) and logs every skipped line.
fn load_list<T>(
    what: &str,
    path: Option<&std::path::Path>,
    builtin: &str,
    parse: impl Fn(&str) -> (T, Vec<crate::row::routes::SkippedLine>),
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

/// Why the service stopped; every reason but a requested stop ends in a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("lost the leader lease: stopped at once without draining, so this replica writes nothing a new leader could race; exiting so that it restarts as a standby")]
    LeaseLost,
    #[error("{0}; stopped the service")]
    TaskFailed(String),
    #[error("shutdown timed out after {0:?} (SHUTDOWN_TIMEOUT) with changes not committed")]
    ShutdownTimedOut(Duration),
}

/// Timeouts of the Kubernetes client. Watches ask the server to end them after 290 s
/// (`timeoutSeconds`), so a read that waits longer than that means a dead connection.
const KUBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KUBE_READ_TIMEOUT: Duration = Duration::from_secs(295);

/// The static routes and managed groups of this configuration (skipped lines logged); two
/// routes for one kind stop start-up.
pub fn load_routes(config: &Config) -> anyhow::Result<(StaticRoutes, ManagedGroups)> {
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
    routes
        .check_one_route_per_kind()
        .map_err(|e| anyhow::anyhow!("STATIC_ROUTES_FILE: {e}"))?;
    Ok((routes, groups))
}

/// The Kubernetes client configuration (in-cluster, KUBECONFIG or ~/.kube/config) with the
/// service's timeouts.
pub async fn kube_config() -> anyhow::Result<kube::Config> {
    let mut kube_config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!(
            "Kubernetes client configuration (in-cluster, KUBECONFIG or ~/.kube/config): {e}"
        )
    })?;
    // Without a read timeout a request to an API server that stopped answering waits forever
    // (discovery, the Lease); counted from when the request was sent, not from when its
    // pooled connection went idle.
    kube_config.connect_timeout = Some(KUBE_CONNECT_TIMEOUT);
    kube_config.read_timeout = Some(KUBE_READ_TIMEOUT);
    kube_config.reset_reader_on_write = true;
    Ok(kube_config)
}

/// Runs the service until SIGTERM/SIGINT (or `shutdown` is cancelled).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    install_panic_reporter();
    let stop = stop_on_signal(&shutdown);
    let (routes, groups) = load_routes(&config)?;
    info!(static_routes = routes.routes.len(), managed_groups = groups.iter().count(), namespaces = ?config.namespaces.0, "starting");

    let metrics = Arc::new(Metrics::new());
    let field_policy = field_policy(&config, &metrics);
    let connect = Database::connect(&config, config.workers as usize + 3);
    let Some(db) = unless_stopped(&stop, async { Ok(connect.await?) }).await? else {
        return Ok(());
    };
    metrics.db_up.set(1);

    let kube_config = kube_config().await?;
    let cluster: Arc<str> = Arc::from(crate::kubernetes::cluster::resolve(
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
    let mut server_tasks = health::serve(
        SocketAddr::from(([0, 0, 0, 0], config.port)),
        SocketAddr::from(([0, 0, 0, 0], config.metrics_port)),
        health.clone(),
        metrics.clone(),
        servers.clone(),
    )
    .await?;

    let client =
        crate::kubernetes::client::build(kube_config, metrics.clone(), config.api_compression)?;
    // Before the Lease, retiring and any watch: a name another cluster owns writes nothing.
    let claim = claim_cluster_name(&db, &cluster, &config, &client);
    let Some(identity) = unless_stopped(&stop, claim).await? else {
        servers.cancel();
        return Ok(());
    };

    let lease_lost = CancellationToken::new();
    let leadership = if config.leader_election {
        let stopped = stop_or_failure(&stop, &mut server_tasks);
        match stand_by(&config, &client, &metrics, &lease_lost, stopped).await {
            Standby::Leads(leadership) => {
                health.add_static_routes(routes.routes.len());
                Some(leadership)
            }
            Standby::Stopped => {
                servers.cancel();
                info!("stopped while standing by; bye");
                return Ok(());
            }
            Standby::Failed(failure) => {
                servers.cancel();
                crate::telemetry::events::ServiceFailed { failure: &failure }.emit();
                return Err(Stopped::TaskFailed(failure).into());
            }
        }
    } else {
        None
    };
    metrics.is_leader.set(1);

    let prepare_table = async {
        if config.history {
            // Before any write (retiring included): today's history rows find their partition.
            crate::storage::history::upkeep_once(
                &db.pool,
                crate::storage::history::retention_days(config.history_retention),
                &metrics,
            )
            .await;
        }
        adopt_identity(&db, &cluster, &identity).await?;
        retire_uncovered_rows(&db, &cluster, &config, &routes, &groups, &metrics).await
    };
    let prepared = tokio::select! {
        prepared = unless_stopped(&stop, prepare_table) => prepared,
        // A leader that loses the Lease stops writing at once, retiring included.
        _ = lease_lost.cancelled() => return Err(lease_lost_now(&servers, &metrics)),
    };
    if !matches!(prepared, Ok(Some(()))) {
        // Stopped or failed before running: a leader hands the Lease on at once.
        if let Some(leadership) = leadership {
            let deadline = Instant::now() + config.shutdown_timeout;
            leadership.release(&lease_lost, deadline, &metrics).await;
        }
        servers.cancel();
        return prepared.map(|_| ());
    }

    let (lanes, lane_tracker) =
        start_lanes(&config, &db, &cluster, &metrics, &health, field_policy);
    let ctx = Arc::new(WatchContext {
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
    });
    // The context (and with it the lanes' senders) lives on in the watch tasks only: the
    // lanes end once every watch has ended.
    let (watches, watch_tracker) = start_watches(&config, ctx, &routes, groups);
    let pipeline = Pipeline {
        watches,
        watch_tracker,
        lane_tracker,
    };

    info!(cluster = %cluster, "running");
    crate::pipeline::supervisor::debug_hooks::spawn_unnamed_panic_if_requested();
    let failure = tokio::select! {
        failure = stop_or_failure(&stop, &mut server_tasks) => failure,
        _ = lease_lost.cancelled() => return Err(lease_lost_now(&servers, &metrics)),
    };
    pipeline
        .shut_down(
            failure,
            leadership,
            &lease_lost,
            &servers,
            &metrics,
            config.shutdown_timeout,
        )
        .await
}

/// The field policies of this configuration (redaction, pruning), announced once.
fn field_policy(config: &Config, metrics: &Metrics) -> Arc<crate::row::fields::FieldPolicy> {
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

/// What ends the service from outside the pipeline: a requested stop (`None`: `shutdown`
/// cancelled, SIGTERM or SIGINT), or a failure named (a task that panicked, a probe or
/// metrics server that ended).
async fn stop_or_failure(
    stop: &CancellationToken,
    server_tasks: &mut Vec<health::ServerTask>,
) -> Option<String> {
    tokio::select! {
        _ = stop.cancelled() => None,
        report = task_panicked() => Some(report),
        server = server_ended(server_tasks) => Some(server),
    }
}

/// The Lease this replica holds, renewed by a background keeper until `stop`.
struct Leadership {
    keeper: tokio::task::JoinHandle<crate::kubernetes::lease::LeaderElector>,
    stop: CancellationToken,
}

impl Leadership {
    /// Stops renewing and releases the Lease, by `deadline` (see `release_lease`).
    async fn release(self, lease_lost: &CancellationToken, deadline: Instant, metrics: &Metrics) {
        self.stop.cancel();
        release_lease(self.keeper, lease_lost, deadline).await;
        metrics.is_leader.set(0);
    }
}

/// How standing by for the Lease ended.
enum Standby {
    Leads(Leadership),
    /// A requested stop came first.
    Stopped,
    Failed(String),
}

/// Leader election: a standby waits here (ready, no watch, no write) until it holds the
/// Lease or `stop` ends the wait; the leader then keeps renewing it in the background (see
/// leader.rs) and cancels `lease_lost` when it cannot.
async fn stand_by(
    config: &Config,
    client: &kube::Client,
    metrics: &Metrics,
    lease_lost: &CancellationToken,
    stop: impl std::future::Future<Output = Option<String>>,
) -> Standby {
    metrics.is_leader.set(0);
    let mut elector = crate::kubernetes::lease::LeaderElector::new(
        client.clone(),
        crate::kubernetes::lease::LeaseSettings::from_config(config),
    );
    info!(identity = elector.identity(), lease = %config.lease_name, "leader election on: waiting for the lease");
    tokio::select! {
        stopped = stop => return stopped.map_or(Standby::Stopped, Standby::Failed),
        () = elector.acquire() => {}
    }
    let stop = CancellationToken::new();
    let (keeper_stop, lost) = (stop.clone(), lease_lost.clone());
    // A keeper that panics renews no more: the lease counts as lost at once.
    let lost_unless_returned = lease_lost.clone().drop_guard();
    let keeper = tokio::spawn(named("lease keeper", async move {
        let elector = elector.keep(keeper_stop, lost).await;
        lost_unless_returned.disarm();
        elector
    }));
    Standby::Leads(Leadership { keeper, stop })
}

/// The lanes that write the table, with the tracker that says when they have ended.
fn start_lanes(
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
            },
        ),
        metrics.clone(),
        health.clone(),
        &tracker,
    );
    tracker.close();
    (lanes, tracker)
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

/// The running pipeline: the watches and the lanes they feed.
struct Pipeline {
    watches: CancellationToken,
    watch_tracker: TaskTracker,
    lane_tracker: TaskTracker,
}

impl Pipeline {
    /// Stops the watches and waits, up to `timeout`, for the lanes to commit what was
    /// queued; then releases the Lease (after the last commit, so the next leader never
    /// writes alongside this one's tail) and stops the servers. The result says why the
    /// service stopped: `failure` (or a panic while draining), a lost Lease, a timeout.
    async fn shut_down(
        self,
        failure: Option<String>,
        leadership: Option<Leadership>,
        lease_lost: &CancellationToken,
        servers: &CancellationToken,
        metrics: &Metrics,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        match &failure {
            None => info!("shutting down: stopping watches, draining the queue"),
            Some(failure) => crate::telemetry::events::ServiceFailed { failure }.emit(),
        }
        self.watches.cancel();
        let deadline = Instant::now() + timeout;
        let drained = tokio::select! {
            drained = tokio::time::timeout_at(deadline, async {
                self.watch_tracker.wait().await;
                self.lane_tracker.wait().await;
            }) => drained.is_ok(),
            // A leader that loses the Lease while draining stops writing at once as well.
            _ = lease_lost.cancelled() => return Err(lease_lost_now(servers, metrics)),
        };
        if let Some(leadership) = leadership {
            leadership.release(lease_lost, deadline, metrics).await;
            if lease_lost.is_cancelled() {
                return Err(lease_lost_now(servers, metrics));
            }
        }
        servers.cancel();
        // A panic while draining counts as well.
        if let Some(failure) = failure.or_else(first_panic) {
            return Err(Stopped::TaskFailed(failure).into());
        }
        if drained {
            info!("queue drained and flushed; bye");
            Ok(())
        } else {
            error!(
                ?timeout,
                "shutdown timed out before every change was committed"
            );
            Err(Stopped::ShutdownTimedOut(timeout).into())
        }
    }
}

/// The leader lost the Lease: it returns at once, without waiting for the lanes, and the
/// process exits (dropping every connection, so a transaction in flight never commits):
/// a standby may take the Lease once the renew deadline has passed.
/// (`main` logs the returned error.)
fn lease_lost_now(servers: &CancellationToken, metrics: &Metrics) -> anyhow::Error {
    metrics.is_leader.set(0);
    servers.cancel();
    // The lease keeper's panic ends here too: name it.
    if let Some(failure) = first_panic() {
        crate::telemetry::events::ServiceFailed { failure: &failure }.emit();
    }
    Stopped::LeaseLost.into()
}

/// Stops the lease keeper and releases the Lease, both by `deadline` (at least one second
/// for the release itself): an API server that does not answer must not hold up the exit;
/// the Lease then expires on its own.
async fn release_lease(
    keeper: tokio::task::JoinHandle<crate::kubernetes::lease::LeaderElector>,
    lease_lost: &CancellationToken,
    deadline: Instant,
) {
    let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
    let mut elector = match tokio::time::timeout_at(deadline, keeper).await {
        Ok(Ok(elector)) => elector,
        Ok(Err(_)) => return, // the keeper panicked: reported by the panic hook
        Err(_) => {
            warn!("the lease keeper did not stop in time; the lease expires on its own");
            return;
        }
    };
    if lease_lost.is_cancelled() {
        return;
    }
    if tokio::time::timeout_at(deadline, elector.release())
        .await
        .is_err()
    {
        warn!("releasing the leader lease timed out (SHUTDOWN_TIMEOUT); it expires on its own");
    }
}

/// Waits until one of the HTTP servers stops (they only stop on shutdown); names it.
async fn server_ended(servers: &mut Vec<health::ServerTask>) -> String {
    if servers.is_empty() {
        return std::future::pending().await;
    }
    let (outcome, index, _) =
        futures::future::select_all(servers.iter_mut().map(|s| &mut s.handle)).await;
    let name = servers.remove(index).name;
    match outcome {
        Ok(Ok(())) => format!("the {name} stopped"),
        Ok(Err(e)) => format!("the {name} failed: {e}"),
        Err(e) => format!("the {name} ended: {e}"),
    }
}

/// Records this cluster's identity as the owner of its name, or stops when another cluster
/// owns it (see storage/clusters.rs).
async fn claim_cluster_name(
    db: &Database,
    cluster: &str,
    config: &Config,
    client: &kube::Client,
) -> anyhow::Result<crate::kubernetes::cluster::ClusterIdentity> {
    let identity =
        crate::kubernetes::cluster::identify(config.cluster_id.as_deref(), client).await?;
    let conn = db
        .pool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!("recording the owner of CLUSTER_NAME: {e}"))?;
    let outcome = crate::storage::clusters::claim(&conn, cluster, &identity).await?;
    crate::telemetry::events::ClusterNameOwned {
        cluster,
        identity: &identity,
        claimed_now: outcome == crate::storage::clusters::Ownership::Free,
    }
    .emit();
    Ok(identity)
}

/// The resume points and rows of the name come from the cluster identity that runs now;
/// after the name was moved to a rebuilt cluster, they are made to compare with nothing
/// (see `resume::adopt_identity`): every watch lists, and each list's sweep marks deleted
/// the rows of the old cluster's objects.
async fn adopt_identity(
    db: &Database,
    cluster: &str,
    identity: &crate::kubernetes::cluster::ClusterIdentity,
) -> anyhow::Result<()> {
    use crate::storage::resume::{adopt_identity, Adopted};
    match adopt_identity(&db.pool, cluster, &identity.id)
        .await
        .map_err(|e| anyhow::anyhow!("recording the cluster identity of the resume points: {e}"))?
    {
        Adopted::Same => {}
        Adopted::Changed {
            previous,
            rows_cleared,
        } => warn!(
            cluster = %cluster,
            previous_identity = %previous,
            identity = %identity,
            rows_cleared,
            "the cluster name moved to another cluster identity: its resume points are dropped and its rows' resourceVersions cleared; every watch lists, and the lists mark deleted the rows of objects this cluster does not have"
        ),
    }
    Ok(())
}

/// Rows of scopes this instance watched in an earlier run and no longer watches are marked
/// deleted (logged and counted per kind), and their resume points dropped.
async fn retire_uncovered_rows(
    db: &Database,
    cluster: &str,
    config: &Config,
    routes: &StaticRoutes,
    groups: &ManagedGroups,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let coverage = Coverage::new(
        routes
            .routes
            .iter()
            .map(|r| (r.group.as_str(), r.plural.as_str())),
        groups.iter(),
        config.namespaces.0.iter().map(String::as_str),
    );
    let options = WriterOptions {
        history: config.history,
        change_feed: config.change_feed,
    };
    let retired = retire_uncovered(&db.pool, cluster, &config.instance_name, &coverage, options)
        .await
        .map_err(|e| anyhow::anyhow!("retiring rows of scopes no longer watched: {e}"))?;
    for (scope, rows) in retired {
        RowsRetired {
            scope: &scope,
            rows,
        }
        .emit(metrics);
    }
    Ok(())
}

/// Finds the route's scope by discovery (retrying while the server lacks the kind), then
/// runs its watch: one cluster-wide, or one per namespace for namespaced kinds.
async fn run_static_route(
    ctx: Arc<WatchContext>,
    route: Arc<Route>,
    namespaces: Vec<String>,
    cancel: CancellationToken,
    crd_events: Option<mpsc::Sender<crate::pipeline::watch::CrdEvent>>,
) {
    let mut delay = Duration::from_secs(1);
    let mut reported_unavailable = false;
    let served = loop {
        // An API server that stopped answering holds discovery until the client's read
        // timeout: shutdown must not wait for it.
        let discovered = tokio::select! {
            _ = cancel.cancelled() => return,
            discovered = discover_scope(&ctx.client, &route) => discovered,
        };
        match discovered {
            Ok(served) => break served,
            Err(e) => {
                crate::telemetry::events::WatchFailed {
                    resource: &route.to_string(),
                    error: &e.message,
                }
                .emit(&ctx.metrics);
                if e.kind_unavailable && !reported_unavailable {
                    // Readiness must not wait forever on a kind this server does not have
                    // (or this identity may not read). A passing fault (500, timeout,
                    // refused connection) keeps readiness waiting.
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
    // The kind as the server spells it: rows carry it (`resource_kind`) and field policies
    // match it, whatever the routes file says.
    let route = if served.kind != route.kind {
        warn!(route = %route, served_kind = %served.kind, "the routes file names this resource's kind otherwise than the server; using the server's");
        Arc::new(Route {
            kind: served.kind,
            ..(*route).clone()
        })
    } else {
        route
    };
    let specs = WatchSpec::for_route(route.clone(), served.namespaced, &namespaces, true);
    if !reported_unavailable && specs.len() > 1 {
        // Readiness counts one per route; every namespace watch reports its first list.
        ctx.health.add_static_routes(specs.len() - 1);
    }
    let is_static = !reported_unavailable;
    let tasks: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            tokio::spawn(named(
                format!("watch {}", spec.label()),
                run_watch(
                    ctx.clone(),
                    WatchSpec { is_static, ..spec },
                    cancel.clone(),
                    crd_events.clone(),
                ),
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Why discovery of a route failed.
pub(crate) struct DiscoveryError {
    pub(crate) message: String,
    /// The server does not serve the kind (404, or absent from its group version), or this
    /// identity may not read it (403): not a passing fault.
    pub(crate) kind_unavailable: bool,
}

/// A route's resource as the server's discovery document describes it.
pub(crate) struct Served {
    pub(crate) namespaced: bool,
    /// The kind, as the server spells it.
    pub(crate) kind: String,
}

/// Whether the route's resource is namespaced, and its kind, from the server's discovery
/// document.
pub(crate) async fn discover_scope(
    client: &kube::Client,
    route: &Route,
) -> Result<Served, DiscoveryError> {
    let list = if route.group.is_empty() {
        client.list_core_api_resources(&route.version).await
    } else {
        client.list_api_group_resources(&route.api_version()).await
    }
    .map_err(|e| DiscoveryError {
        kind_unavailable: matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 403),
        message: format!("discovery of {}: {e}", route.api_version()),
    })?;
    list.resources
        .iter()
        .find(|r| r.name == route.plural)
        .map(|r| Served {
            namespaced: r.namespaced,
            kind: r.kind.clone(),
        })
        .ok_or_else(|| DiscoveryError {
            message: format!(
                "the server has no resource {} in {}",
                route.plural,
                route.api_version()
            ),
            kind_unavailable: true,
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
        // The watch whose newest committed change is oldest (see docs/operations.md, lag).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let (worst_lag_watch, worst_lag_seconds) = match metrics.committed_at_by_watch.lock() {
            Ok(board) => crate::telemetry::metrics::worst_lag(now, board.iter())
                .map(|(w, lag)| (w.to_owned(), (lag * 10.0).round() / 10.0))
                .unwrap_or_default(),
            Err(_) => Default::default(),
        };
        info!(
            worst_lag_seconds,
            worst_lag_watch = %worst_lag_watch,
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

/// A token (a child of `shutdown`) cancelled on SIGTERM or SIGINT. The handlers are
/// registered here, synchronously, at the start of the run: a signal that arrives while the
/// service still starts (waiting for the database, reading the cluster's identity, standing
/// by for the Lease) stops it gracefully instead of killing it by the signal's default
/// action.
fn stop_on_signal(shutdown: &CancellationToken) -> CancellationToken {
    let stop = shutdown.child_token();
    let cancel = stop.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind)
                .inspect_err(|e| warn!("cannot listen to {name}: {e}"))
                .ok()
        };
        async fn received(signal: Option<Signal>) {
            match signal {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let term = listen(SignalKind::terminate(), "SIGTERM");
        let int = listen(SignalKind::interrupt(), "SIGINT");
        tokio::spawn(async move {
            tokio::select! {
                _ = received(term) => {}
                _ = received(int) => {}
            }
            cancel.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    stop
}

/// A start-up step that a stop (SIGTERM, SIGINT) cuts short: `Ok(None)` then, and the run
/// ends with exit 0 (a step cut short has committed nothing a later start does not redo).
async fn unless_stopped<T>(
    stop: &CancellationToken,
    step: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Option<T>> {
    match stop.run_until_cancelled(step).await {
        Some(done) => done.map(Some),
        None => {
            info!("stopped while starting; bye");
            Ok(None)
        }
    }
}
