//! The background loops of the running service: the database ping that keeps readiness
//! following the database, and the periodic status log line.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::pipeline::health::Health;
use crate::storage::Database;
use crate::telemetry::metrics::Metrics;

/// Keeps readiness following the database while no batch is being written.
pub(super) async fn db_pinger(db: Database, health: Arc<Health>, cancel: CancellationToken) {
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

/// Logs the pipeline's status (lag, queue, watches, readiness) every `every`.
pub(super) async fn status_loop(
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
