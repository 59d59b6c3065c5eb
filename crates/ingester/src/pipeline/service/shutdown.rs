//! Graceful shutdown: the watches stop, the lanes commit what was queued (up to
//! SHUTDOWN_TIMEOUT), then the Lease is handed on and the servers stop; the result says why
//! the service stopped.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::leadership::{lease_lost_now, Leadership};
use super::running::Pipeline;
use super::servers::Servers;
use super::Stopped;
use crate::pipeline::supervisor::first_panic;
use crate::telemetry::metrics::Metrics;

/// Stopped or failed before running: a leader hands the Lease on at once (no lane runs yet,
/// there is nothing to drain), by SHUTDOWN_TIMEOUT; then the servers stop.
pub(super) async fn end_before_running(
    leadership: Option<Leadership>,
    lease_lost: &CancellationToken,
    servers: &Servers,
    metrics: &Metrics,
    timeout: Duration,
) {
    if let Some(leadership) = leadership {
        let deadline = Instant::now() + timeout;
        leadership.release(lease_lost, deadline, metrics).await;
    }
    servers.stop();
}

impl Pipeline {
    /// Stops the watches and waits, up to SHUTDOWN_TIMEOUT, for the lanes to commit what was
    /// queued; then releases the Lease (after the last commit, so the next leader never
    /// writes alongside this one's tail) and stops the servers. The result says why the
    /// service stopped: `failure` (or a panic while draining), a lost Lease, a timeout.
    pub(super) async fn shut_down(
        self,
        failure: Option<String>,
        leadership: Option<Leadership>,
        lease_lost: &CancellationToken,
        servers: &Servers,
    ) -> anyhow::Result<()> {
        let (metrics, timeout) = (&*self.metrics, self.shutdown_timeout);
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
        servers.stop();
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
