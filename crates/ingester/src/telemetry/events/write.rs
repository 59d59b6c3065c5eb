//! Events of writing batches: flushed, failed and retried, retired rows, a skipped change feed.

use std::time::Duration;

use tracing::{debug, warn};

use crate::telemetry::metrics::Metrics;

/// A batch was committed without its change-feed notification: PostgreSQL's NOTIFY queue
/// was full (a listener stopped reading, or sits in an open transaction). The rows are
/// written; listeners miss this notification (they re-read what changed since their last one).
pub struct ChangeFeedSkipped<'a> {
    pub rows: u64,
    pub error: &'a str,
}
impl ChangeFeedSkipped<'_> {
    pub fn emit(&self, m: &Metrics) {
        warn!(
            rows = self.rows,
            error = self.error,
            "change feed notification skipped; the batch was written without it"
        );
        m.change_feed_skipped.inc();
    }
}

/// Rows of a scope this deployment no longer watches, marked deleted at start-up.
pub struct RowsRetired<'a> {
    pub scope: &'a str,
    pub rows: u64,
}
impl RowsRetired<'_> {
    pub fn emit(&self, m: &Metrics) {
        if self.rows > 0 {
            warn!(
                scope = self.scope,
                rows = self.rows,
                "no longer watched by this deployment: its rows are marked deleted"
            );
        }
        m.rows_retired.inc_by(self.rows);
    }
}

/// A batch committed.
pub struct BatchFlushed {
    pub lane: usize,
    pub records: usize,
    pub rows_written: u64,
    pub tombstones: u64,
    pub elapsed: Duration,
}
impl BatchFlushed {
    pub fn emit(&self, m: &Metrics) {
        debug!(
            lane = self.lane,
            records = self.records,
            rows = self.rows_written,
            tombstones = self.tombstones,
            ms = self.elapsed.as_millis() as u64,
            "batch committed"
        );
        m.flush_rows.observe(self.records as f64);
        m.flush_duration.observe(self.elapsed.as_secs_f64());
        m.rows_written.inc_by(self.rows_written);
        m.sweep_deletes.inc_by(self.tombstones);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        m.last_flush_timestamp.set(now);
    }
}

/// A batch write attempt failed and will be retried.
pub struct BatchWriteFailed<'a> {
    pub lane: usize,
    pub records: usize,
    pub attempt: u32,
    pub retry_in: Duration,
    pub error: &'a str,
}
impl BatchWriteFailed<'_> {
    pub fn emit(&self, m: &Metrics) {
        warn!(
            lane = self.lane,
            records = self.records,
            attempt = self.attempt,
            retry_in_ms = self.retry_in.as_millis() as u64,
            error = self.error,
            "batch write failed; retrying"
        );
        m.write_failures.inc();
    }
}
