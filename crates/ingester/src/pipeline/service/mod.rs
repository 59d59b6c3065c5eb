//! Start-up order, the running service and graceful shutdown (spec section 5), and the
//! supervision that keeps a broken process from staying up: a panic in any task, or a server
//! task that ends, stops the service and the process exits non-zero naming the task.
//!
//! `run` lists the steps in their order; each part holds one decision: routes.rs (which
//! routes and groups), api_server.rs (the client's timeouts, discovery), stopping.rs (what
//! ends the run from outside: signals, failures), servers.rs (the probe and metrics
//! servers), identity.rs (whose cluster name this is), leadership.rs (standing by for,
//! holding and handing on the Lease), prepare.rs (the table before any watch), running.rs
//! and static_route.rs and background.rs (the running pipeline), shutdown.rs (the drain).

mod api_server;
mod background;
mod identity;
mod leadership;
mod prepare;
mod routes;
mod running;
mod servers;
mod shutdown;
mod static_route;
mod stopping;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::pipeline::health::Health;
use crate::pipeline::supervisor::install_panic_reporter;
use crate::storage::Database;
use crate::telemetry::metrics::Metrics;

pub(crate) use api_server::discover_scope;
pub use api_server::kube_config;
pub use routes::load_routes;

use identity::{claim_cluster_name, cluster_name};
use leadership::{lease_lost_now, stand_by};
use prepare::prepare_table;
use running::{field_policy, start_lanes, watch_context, Pipeline};
use servers::Servers;
use shutdown::end_before_running;
use stopping::{stop_on_signal, stop_or_failure, unless_stopped};

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

/// How a run cut short by a start-up step ends: `Ok(())` after a requested stop, else why.
type Ended = anyhow::Result<()>;

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
    let cluster = cluster_name(&config, &kube_config);

    let health = Arc::new(Health::new(metrics.clone()));
    // Counted before the probe server starts, so /readyz never says ready before the lists
    // (a standby under leader election is ready: it counts them once it leads).
    if !config.leader_election {
        health.add_static_routes(routes.routes.len());
    }
    let mut servers = Servers::start(&config, &health, &metrics).await?;

    let client =
        crate::kubernetes::client::build(kube_config, metrics.clone(), config.api_compression)?;
    // Before the Lease, retiring and any watch: a name another cluster owns writes nothing.
    let claim = claim_cluster_name(&db, &cluster, &config, &client);
    let Some(identity) = unless_stopped(&stop, claim).await? else {
        servers.stop();
        return Ok(());
    };

    let lease_lost = CancellationToken::new();
    let leadership = if config.leader_election {
        match stand_by(&config, &client, &metrics, &lease_lost, &stop, &mut servers).await {
            Ok(leadership) => {
                health.add_static_routes(routes.routes.len());
                Some(leadership)
            }
            Err(ended) => return ended,
        }
    } else {
        None
    };
    metrics.is_leader.set(1);

    let prepare = prepare_table(
        &config, &db, &cluster, &identity, &routes, &groups, &metrics,
    );
    let prepared = tokio::select! {
        prepared = unless_stopped(&stop, prepare) => prepared,
        // A leader that loses the Lease stops writing at once, retiring included.
        _ = lease_lost.cancelled() => return Err(lease_lost_now(&servers, &metrics)),
    };
    if !matches!(prepared, Ok(Some(()))) {
        let timeout = config.shutdown_timeout;
        end_before_running(leadership, &lease_lost, &servers, &metrics, timeout).await;
        return prepared.map(|_| ());
    }

    let (lanes, lane_tracker) =
        start_lanes(&config, &db, &cluster, &metrics, &health, field_policy);
    let ctx = watch_context(&config, client, lanes, db, &cluster, &metrics, health);
    let pipeline = Pipeline::start(&config, ctx, lane_tracker, &routes, groups);

    info!(cluster = %cluster, "running");
    crate::pipeline::supervisor::debug_hooks::spawn_unnamed_panic_if_requested();
    let failure = tokio::select! {
        failure = stop_or_failure(&stop, &mut servers) => failure,
        _ = lease_lost.cancelled() => return Err(lease_lost_now(&servers, &metrics)),
    };
    pipeline
        .shut_down(failure, leadership, &lease_lost, &servers)
        .await
}
