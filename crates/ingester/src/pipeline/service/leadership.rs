//! Leader election: a standby waits (ready, no watch, no write) until it holds the Lease; the
//! leader keeps renewing it in the background, stops writing at once when it loses it, and
//! hands it on (releases it) when it stops.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::servers::Servers;
use super::stopping::stop_or_failure;
use super::{Ended, Stopped};
use crate::config::Config;
use crate::kubernetes::lease::{LeaderElector, LeaseSettings};
use crate::pipeline::supervisor::{first_panic, named};
use crate::telemetry::metrics::Metrics;

/// The Lease this replica holds, renewed by a background keeper until `stop`.
pub(super) struct Leadership {
    keeper: tokio::task::JoinHandle<LeaderElector>,
    stop: CancellationToken,
}

impl Leadership {
    /// Stops renewing and releases the Lease, by `deadline` (see `release_lease`).
    pub(super) async fn release(
        self,
        lease_lost: &CancellationToken,
        deadline: Instant,
        metrics: &Metrics,
    ) {
        self.stop.cancel();
        release_lease(self.keeper, lease_lost, deadline).await;
        metrics.is_leader.set(0);
    }
}

/// Leader election: a standby waits here (ready, no watch, no write) until it holds the
/// Lease, or a requested stop or a failure (see `stop_or_failure`) ends the wait and with it
/// the run (the servers stopped); the leader then keeps renewing it in the background (see
/// leader.rs) and cancels `lease_lost` when it cannot.
pub(super) async fn stand_by(
    config: &Config,
    client: &kube::Client,
    metrics: &Metrics,
    lease_lost: &CancellationToken,
    stop: &CancellationToken,
    servers: &mut Servers,
) -> Result<Leadership, Ended> {
    metrics.is_leader.set(0);
    let mut elector = LeaderElector::new(client.clone(), LeaseSettings::from_config(config));
    info!(identity = elector.identity(), lease = %config.lease_name, "leader election on: waiting for the lease");
    tokio::select! {
        stopped = stop_or_failure(stop, servers) => return Err(standby_ended(stopped, servers)),
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
    Ok(Leadership { keeper, stop })
}

/// How the run ends when standing by ended without the Lease: `failure`, or a requested stop.
fn standby_ended(failure: Option<String>, servers: &Servers) -> Ended {
    servers.stop();
    match failure {
        None => {
            info!("stopped while standing by; bye");
            Ok(())
        }
        Some(failure) => {
            crate::telemetry::events::ServiceFailed { failure: &failure }.emit();
            Err(Stopped::TaskFailed(failure).into())
        }
    }
}

/// The leader lost the Lease: it returns at once, without waiting for the lanes, and the
/// process exits (dropping every connection, so a transaction in flight never commits):
/// a standby may take the Lease once the renew deadline has passed.
/// (`main` logs the returned error.)
pub(super) fn lease_lost_now(servers: &Servers, metrics: &Metrics) -> anyhow::Error {
    metrics.is_leader.set(0);
    servers.stop();
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
    keeper: tokio::task::JoinHandle<LeaderElector>,
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
