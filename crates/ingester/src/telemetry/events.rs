//! Typed observable events: each emits its log line and moves its metric, in one place.

use std::time::Duration;

use tracing::{debug, info, warn};

use crate::row::record::RecordError;
use crate::telemetry::metrics::Metrics;

fn label(k: &'static str, v: impl Into<String>) -> Vec<(&'static str, String)> {
    vec![(k, v.into())]
}

/// A worker turned a watch event into a record (or failed to).
pub struct EventProcessed {
    pub elapsed: Duration,
    pub ok: bool,
}
impl EventProcessed {
    pub fn emit(&self, m: &Metrics) {
        m.events_processed.inc();
        if !self.ok {
            m.events_errors.inc();
        }
        m.event_duration.observe(self.elapsed.as_secs_f64());
    }
}

/// An object could not become a row at all.
pub struct RecordDropped<'a> {
    pub resource: &'a str,
    pub name: &'a str,
    pub reason: &'a str,
    pub detail: &'a str,
}
impl RecordDropped<'_> {
    pub fn emit(&self, m: &Metrics) {
        warn!(
            resource = self.resource,
            name = self.name,
            reason = self.reason,
            detail = self.detail,
            "record dropped"
        );
        m.records_dropped
            .get_or_create(&label("reason", self.reason))
            .inc();
    }
    pub fn from_error<'a>(resource: &'a str, e: &'a RecordError) -> RecordDropped<'a> {
        let name = match e {
            RecordError::MissingUid { name } => name.as_str(),
            RecordError::MissingName => "",
        };
        RecordDropped {
            resource,
            name,
            reason: e.reason(),
            detail: "",
        }
    }
}

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

/// A record was stored in a cleaned-up form.
pub struct RecordSanitised<'a> {
    pub global_uid: &'a str,
    pub reason: &'a str,
}
impl RecordSanitised<'_> {
    pub fn emit(&self, m: &Metrics) {
        warn!(
            global_uid = self.global_uid,
            reason = self.reason,
            "record sanitised before storing"
        );
        m.records_sanitised
            .get_or_create(&label("reason", self.reason))
            .inc();
    }
}

/// The composition label was not a UUID: composition id left NULL (or the object's own uid).
pub struct InvalidCompositionLabel<'a> {
    pub global_uid: &'a str,
    pub value: &'a str,
}
impl InvalidCompositionLabel<'_> {
    pub fn emit(&self, m: &Metrics) {
        warn!(
            global_uid = self.global_uid,
            value = self.value,
            "label krateo.io/composition-id is not a UUID; ignored"
        );
        m.records_sanitised
            .get_or_create(&label("reason", "invalid_composition_label"))
            .inc();
    }
}

/// An object state whose resourceVersion is not an integer: stored without the ordering
/// guard (a late event could then overwrite a newer state until the next change). Logged
/// once per process, counted every time.
pub struct NonNumericResourceVersion<'a> {
    pub global_uid: &'a str,
    pub value: &'a str,
}
impl NonNumericResourceVersion<'_> {
    pub fn emit(&self, m: &Metrics) {
        static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            warn!(
                global_uid = self.global_uid,
                value = self.value,
                "metadata.resourceVersion is not an integer: rows are stored without the ordering guard (logged once; see ingester_non_numeric_resource_versions_total)"
            );
        }
        m.non_numeric_resource_versions.inc();
    }
}

/// Values of a sensitive kind replaced by `fields::REDACTED` before storing (debug log:
/// every Secret has them, and the count is what matters).
pub struct FieldsRedacted<'a> {
    pub global_uid: &'a str,
    pub count: u64,
}
impl FieldsRedacted<'_> {
    pub fn emit(&self, m: &Metrics) {
        debug!(
            global_uid = self.global_uid,
            fields = self.count,
            "sensitive values redacted before storing"
        );
        m.fields_redacted.inc_by(self.count);
    }
}

/// Bytes of members dropped by `PRUNE_FIELDS` before storing.
pub struct FieldsPruned<'a> {
    pub global_uid: &'a str,
    pub bytes: u64,
}
impl FieldsPruned<'_> {
    pub fn emit(&self, m: &Metrics) {
        debug!(
            global_uid = self.global_uid,
            bytes = self.bytes,
            "fields pruned before storing"
        );
        m.pruned_bytes.inc_by(self.bytes);
    }
}

/// The field policy in force, told once at start-up; a warning when redaction is off.
pub struct FieldPolicyStarted<'a> {
    pub redact: bool,
    pub sensitive_kinds: &'a str,
    pub prune_fields: &'a str,
}
impl FieldPolicyStarted<'_> {
    pub fn emit(&self, m: &Metrics) {
        if self.redact {
            info!(
                sensitive_kinds = self.sensitive_kinds,
                prune_fields = self.prune_fields,
                "field policy: values of sensitive kinds are redacted before storing"
            );
        } else {
            warn!(
                sensitive_kinds = self.sensitive_kinds,
                prune_fields = self.prune_fields,
                "REDACT_SENSITIVE=false: values of sensitive kinds (Secrets' data, stringData and last-applied-configuration) are stored in clear in krateo_resources"
            );
        }
        m.redaction_enabled.set(i64::from(self.redact));
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

/// A watch reported an error; kube-runtime retries it with backoff.
pub struct WatchFailed<'a> {
    pub resource: &'a str,
    pub error: &'a str,
}
impl WatchFailed<'_> {
    pub fn emit(&self, m: &Metrics) {
        warn!(
            resource = self.resource,
            error = self.error,
            "watch error; retrying with backoff"
        );
        m.watch_errors
            .get_or_create(&label("resource", self.resource))
            .inc();
    }
}

/// A scope is being (re)listed.
pub struct Relisting<'a> {
    pub resource: &'a str,
    pub namespace: &'a str,
    pub reason: &'a str,
}
impl Relisting<'_> {
    pub fn emit(&self, m: &Metrics) {
        info!(
            resource = self.resource,
            namespace = self.namespace,
            reason = self.reason,
            "listing"
        );
        m.relists.get_or_create(&label("reason", self.reason)).inc();
    }
}

/// A list completed.
pub struct ListCompleted<'a> {
    pub resource: &'a str,
    pub namespace: &'a str,
    pub listed: u64,
    pub unchanged: u64,
    pub gone: u64,
}
impl ListCompleted<'_> {
    pub fn emit(&self, m: &Metrics) {
        info!(
            resource = self.resource,
            namespace = self.namespace,
            listed = self.listed,
            unchanged_skipped = self.unchanged,
            gone = self.gone,
            "list complete"
        );
        m.rows_unchanged_skipped.inc_by(self.unchanged);
    }
}

/// PostgreSQL reachability changed.
pub struct DatabaseReachability<'a> {
    pub up: bool,
    pub error: Option<&'a str>,
}
impl DatabaseReachability<'_> {
    pub fn emit(&self, m: &Metrics) {
        if self.up {
            info!("PostgreSQL reachable");
        } else {
            warn!(error = self.error.unwrap_or(""), "PostgreSQL unreachable");
        }
        m.db_up.set(i64::from(self.up));
    }
}

/// The database went back in time: commits it acknowledged to this process are gone (a
/// failover to a standby behind the primary, a restore). Every watch starts again from the
/// resume points the database holds; the coverage is stored again.
pub struct DatabaseRewound {
    pub committed_mark: i64,
    pub found_mark: Option<i64>,
}
impl DatabaseRewound {
    pub fn emit(&self, m: &Metrics) {
        warn!(committed_mark = self.committed_mark, found_mark = self.found_mark.unwrap_or(0), "the database went back in time: commits it acknowledged are gone (a failover to a standby behind the primary, a restore); every watch starts again from the resume points it holds");
        m.database_rewinds.inc();
    }
}

/// A watch resumed from its stored resume point instead of listing, or could not (410).
pub struct WatchResumed<'a> {
    pub resource: &'a str,
    pub namespace: &'a str,
    pub from: i64,
    pub outcome: &'a str,
}
impl WatchResumed<'_> {
    pub fn emit(&self, m: &Metrics) {
        info!(
            resource = self.resource,
            namespace = self.namespace,
            from = self.from,
            outcome = self.outcome,
            "resuming watch from the stored resume point"
        );
        m.watch_resumes
            .get_or_create(&label("outcome", self.outcome))
            .inc();
    }
}

/// The service stops because a task panicked or a server ended; the process exits non-zero.
pub struct ServiceFailed<'a> {
    pub failure: &'a str,
}
impl ServiceFailed<'_> {
    pub fn emit(&self) {
        tracing::error!(
            failure = self.failure,
            "a task failed: stopping the service and exiting non-zero"
        );
    }
}

/// The history's partition maintenance ran in the service (its role owns the table).
pub struct HistoryMaintained<'a> {
    pub created: &'a [String],
    pub dropped: &'a [String],
    pub expired_default_rows: u64,
}
impl HistoryMaintained<'_> {
    pub fn emit(&self, m: &Metrics) {
        if !self.created.is_empty() || !self.dropped.is_empty() || self.expired_default_rows > 0 {
            info!(
                created = ?self.created,
                dropped = ?self.dropped,
                expired_default_rows = self.expired_default_rows,
                "history partitions maintained"
            );
        }
        m.history_partitions_dropped
            .inc_by(self.dropped.len() as u64);
    }
}

/// The history's partition maintenance failed (it is tried again later).
pub struct HistoryMaintenanceFailed<'a> {
    pub error: &'a str,
}
impl HistoryMaintenanceFailed<'_> {
    pub fn emit(&self, m: &Metrics) {
        warn!(error = self.error, "history partition maintenance failed");
        m.history_maintenance_failures.inc();
    }
}

/// Whether tomorrow's history partition exists. Missing, tomorrow's rows would land in the
/// default partition (kept, but not dropped by day): the owner must run maintenance.
pub struct HistoryPartitionCheck<'a> {
    /// `YYYY-MM-DD` of the missing day, `None` when it exists.
    pub missing_day: Option<&'a str>,
}
impl HistoryPartitionCheck<'_> {
    pub fn emit(&self, m: &Metrics) {
        if let Some(day) = self.missing_day {
            warn!(
                day,
                "tomorrow's partition of krateo_resource_history is missing and this role may not create it: run `resources-ingester history maintain` with the table owner's credentials (the chart's history-maintain CronJob); until then rows land in its default partition"
            );
        }
        m.history_partition_missing
            .set(i64::from(self.missing_day.is_some()));
    }
}

/// This cluster owns its cluster name (claimed at this first start, or confirmed); a name
/// owned by another cluster stops start-up with an error instead (storage/clusters.rs).
pub struct ClusterNameOwned<'a> {
    pub cluster: &'a str,
    /// The identity's id and where it came from (`CLUSTER_ID` or kube-system's uid).
    pub cluster_id: &'a str,
    pub id_source: &'a str,
    pub claimed_now: bool,
}
impl ClusterNameOwned<'_> {
    pub fn emit(&self) {
        info!(
            cluster = self.cluster,
            cluster_id = self.cluster_id,
            id_source = self.id_source,
            claimed_now = self.claimed_now,
            "cluster name owned by this cluster"
        );
    }
}

/// How the connection to PostgreSQL is protected, told once at start-up: a warning when TLS
/// is on but nobody checked the server's certificate (libpq's `prefer`/`require`: anyone
/// between the ingester and the database can read and change the rows), an error-level line
/// when nothing is encrypted while a password is used.
pub struct DatabaseTransport<'a> {
    pub sslmode: &'a str,
    pub encrypted: bool,
    pub certificate_verified: bool,
    pub password_used: bool,
}
impl DatabaseTransport<'_> {
    pub fn emit(&self) {
        match (self.encrypted, self.certificate_verified) {
            (true, true) => info!(
                sslmode = self.sslmode,
                "PostgreSQL connection encrypted, server certificate verified"
            ),
            (true, false) => warn!(
                sslmode = self.sslmode,
                "PostgreSQL connection encrypted but the server certificate is not verified: set DB_PARAMS sslmode=verify-full&sslrootcert=<CA file>"
            ),
            (false, _) if self.password_used => tracing::error!(
                sslmode = self.sslmode,
                "PostgreSQL connection is not encrypted while a password is used: set DB_PARAMS sslmode=verify-full&sslrootcert=<CA file> (or require)"
            ),
            (false, _) => info!(sslmode = self.sslmode, "PostgreSQL connection not encrypted"),
        }
    }
}

/// One watch's own series (labels group/version/plural/namespace): how fresh its committed
/// rows are, how many objects its last list had, the last committed resourceVersion. Created
/// when the watch starts; dropping it (the watch stopped: CRD deleted, shutdown) removes the
/// series, so dashboards show no ghosts of watches that no longer exist.
pub struct WatchSeries {
    metrics: std::sync::Arc<Metrics>,
    labels: crate::telemetry::metrics::Labels,
    watch: String,
}
impl WatchSeries {
    pub fn new(
        metrics: std::sync::Arc<Metrics>,
        watch: String,
        labels: crate::telemetry::metrics::Labels,
    ) -> Self {
        if let Ok(mut running) = metrics.watches_by_label.lock() {
            *running.entry(watch.clone()).or_default() += 1;
        }
        // Its error counter exists from the start (at 0: `increase()` then sees the first
        // error) and goes with the watch.
        metrics
            .watch_errors
            .get_or_create(&label("resource", watch.as_str()))
            .inc_by(0);
        Self {
            metrics,
            labels,
            watch,
        }
    }

    /// A list of the scope completed with `objects` objects.
    pub fn listed(&self, objects: u64) {
        self.metrics
            .watch_listed_objects
            .get_or_create(&self.labels)
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    /// Every change the watch read up to `read_at` (unix seconds), through `resource_version`,
    /// is committed.
    pub fn committed(&self, read_at: f64, resource_version: Option<i64>) {
        debug!(watch = %self.watch, read_at, resource_version, "watch changes committed");
        self.metrics
            .watch_committed_timestamp
            .get_or_create(&self.labels)
            .set(read_at);
        if let Some(rv) = resource_version {
            self.metrics
                .watch_committed_resource_version
                .get_or_create(&self.labels)
                .set(rv);
        }
        if let Ok(mut board) = self.metrics.committed_at_by_watch.lock() {
            board.insert(self.watch.clone(), read_at);
        }
    }
}
impl Drop for WatchSeries {
    fn drop(&mut self) {
        let m = &self.metrics;
        if let Ok(mut running) = m.watches_by_label.lock() {
            let left = running.get(&self.watch).map_or(0, |n| n.saturating_sub(1));
            if left > 0 {
                // Another watch of the same scope runs on: its series stay.
                running.insert(self.watch.clone(), left);
                return;
            }
            running.remove(&self.watch);
        }
        debug!(watch = %self.watch, "watch stopped: its series are removed");
        m.watch_committed_timestamp.remove(&self.labels);
        m.watch_committed_resource_version.remove(&self.labels);
        m.watch_listed_objects.remove(&self.labels);
        m.watch_received_bytes.remove(&self.labels);
        m.watch_errors
            .remove(&label("resource", self.watch.as_str()));
        if let Ok(mut board) = m.committed_at_by_watch.lock() {
            board.remove(&self.watch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_series_goes_with_the_last_watch_of_its_scope() {
        let m = std::sync::Arc::new(Metrics::new());
        let labels = crate::telemetry::metrics::watch_labels("", "v1", "pods", None);
        let series = "ingester_watch_listed_objects{group=\"\",version=\"v1\",plural=\"pods\",watch_namespace=\"\"} 3";
        let old = WatchSeries::new(m.clone(), "pods".into(), labels.clone());
        old.listed(3);
        old.committed(100.0, Some(7));
        // The same scope watched again before the old watch is gone (a restart).
        let new = WatchSeries::new(m.clone(), "pods".into(), labels);
        drop(old);
        let text = m.encode();
        assert!(text.contains(series), "{text}");
        assert!(m.committed_at_by_watch.lock().is_ok_and(|b| b.len() == 1));
        drop(new);
        let text = m.encode();
        assert!(!text.contains("plural=\"pods\""), "{text}");
        assert!(!text.contains("resource=\"pods\""), "{text}");
        assert!(m.committed_at_by_watch.lock().is_ok_and(|b| b.is_empty()));
    }
}
