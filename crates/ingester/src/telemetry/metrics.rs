//! Prometheus metrics. Every family lives here; the typed events in `events` are the only
//! code that touches them, so a log line and its metric never drift apart.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    pub events_processed: Counter,
    pub events_errors: Counter,
    pub event_duration: Histogram,
    pub queue_depth: Gauge,
    pub pending_batch: Gauge,
    pub active_watches: Gauge,
    pub flush_rows: Histogram,
    pub flush_duration: Histogram,
    pub rows_written: Counter,
    pub rows_unchanged_skipped: Counter,
    pub write_failures: Counter,
    pub records_sanitised: Family<Labels, Counter>,
    pub records_dropped: Family<Labels, Counter>,
    pub change_feed_skipped: Counter,
    pub relists: Family<Labels, Counter>,
    pub watch_resumes: Family<Labels, Counter>,
    pub sweep_deletes: Counter,
    pub rows_retired: Counter,
    pub non_numeric_resource_versions: Counter,
    pub watch_errors: Family<Labels, Counter>,
    pub last_flush_timestamp: Gauge<f64, AtomicU64>,
    pub db_up: Gauge,
    pub is_leader: Gauge,
    // Change history (HISTORY).
    pub history_partition_missing: Gauge,
    pub history_partitions_dropped: Counter,
    pub history_maintenance_failures: Counter,
    pub fields_redacted: Counter,
    pub pruned_bytes: Counter,
    pub redaction_enabled: Gauge,
    /// JSON bytes of the events waiting in the lanes' queues (whole KiB, at least 1 each).
    pub queue_bytes: Gauge,
    /// 1 when /readyz answers 200.
    pub ready: Gauge,
    // Per watch (labels from `watch_labels`); removed when the watch stops.
    pub watch_committed_timestamp: Family<Labels, Gauge<f64, AtomicU64>>,
    pub watch_committed_resource_version: Family<Labels, Gauge>,
    pub watch_listed_objects: Family<Labels, Gauge>,
    pub watch_received_bytes: Family<Labels, Counter>,
    /// The newest committed change's time per watch (by label), for the status line's
    /// worst lag (a Family cannot be read back).
    pub committed_at_by_watch: std::sync::Mutex<std::collections::BTreeMap<String, f64>>,
    /// Running watches per label: a watch restarted on the same scope may start before the old
    /// one has finished; the series go only when the last of them stops.
    pub watches_by_label: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            events_processed: Counter::default(),
            events_errors: Counter::default(),
            event_duration: Histogram::new(exponential_buckets(0.000_005, 4.0, 10)),
            queue_depth: Gauge::default(),
            pending_batch: Gauge::default(),
            active_watches: Gauge::default(),
            flush_rows: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            flush_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            rows_written: Counter::default(),
            rows_unchanged_skipped: Counter::default(),
            write_failures: Counter::default(),
            records_sanitised: Family::default(),
            records_dropped: Family::default(),
            change_feed_skipped: Counter::default(),
            relists: Family::default(),
            watch_resumes: Family::default(),
            sweep_deletes: Counter::default(),
            rows_retired: Counter::default(),
            non_numeric_resource_versions: Counter::default(),
            watch_errors: Family::default(),
            last_flush_timestamp: Gauge::default(),
            db_up: Gauge::default(),
            is_leader: Gauge::default(),
            history_partition_missing: Gauge::default(),
            history_partitions_dropped: Counter::default(),
            history_maintenance_failures: Counter::default(),
            fields_redacted: Counter::default(),
            pruned_bytes: Counter::default(),
            redaction_enabled: Gauge::default(),
            queue_bytes: Gauge::default(),
            ready: Gauge::default(),
            watch_committed_timestamp: Family::default(),
            watch_committed_resource_version: Family::default(),
            watch_listed_objects: Family::default(),
            watch_received_bytes: Family::default(),
            committed_at_by_watch: Default::default(),
            watches_by_label: Default::default(),
            registry: Registry::default(),
        };
        // prometheus-client appends `_total` to counters itself.
        let r = &mut registry;
        r.register(
            "workerpool_events_processed",
            "Watch events processed by the worker pool",
            m.events_processed.clone(),
        );
        r.register(
            "workerpool_events_errors",
            "Watch events the worker pool could not turn into a row",
            m.events_errors.clone(),
        );
        r.register(
            "workerpool_event_duration_seconds",
            "Time a worker spends on one event",
            m.event_duration.clone(),
        );
        r.register(
            "ingester_queue_depth",
            "Events waiting in the worker queues",
            m.queue_depth.clone(),
        );
        r.register(
            "ingester_pending_batch_rows",
            "Records built and waiting in lane batches for their flush",
            m.pending_batch.clone(),
        );
        r.register(
            "ingester_active_watches",
            "Watches currently running",
            m.active_watches.clone(),
        );
        r.register(
            "ingester_batch_flush_rows",
            "Rows per committed batch",
            m.flush_rows.clone(),
        );
        r.register(
            "ingester_batch_flush_duration_seconds",
            "Time to commit one batch",
            m.flush_duration.clone(),
        );
        r.register(
            "ingester_rows_written",
            "Rows inserted or updated in krateo_resources",
            m.rows_written.clone(),
        );
        r.register(
            "ingester_rows_unchanged_skipped",
            "Listed objects skipped because the table already holds that state",
            m.rows_unchanged_skipped.clone(),
        );
        r.register(
            "ingester_write_failures",
            "Failed batch write attempts (retried)",
            m.write_failures.clone(),
        );
        r.register(
            "ingester_records_sanitised",
            "Records stored in a sanitised form, by reason",
            m.records_sanitised.clone(),
        );
        r.register(
            "ingester_records_dropped",
            "Records that could not be stored at all, by reason",
            m.records_dropped.clone(),
        );
        r.register(
            "ingester_change_feed_skipped",
            "Batches committed without their change-feed notification (the NOTIFY queue was full)",
            m.change_feed_skipped.clone(),
        );
        r.register(
            "ingester_relists",
            "Full lists of a watched scope, by reason",
            m.relists.clone(),
        );
        r.register(
            "ingester_watch_resumes",
            "Watches started from a stored resume point instead of a list, by outcome (resumed, expired, history_behind: the server's resourceVersion was below the point, another history)",
            m.watch_resumes.clone(),
        );
        r.register(
            "ingester_sweep_deletes",
            "Rows marked deleted because a list no longer had their object",
            m.sweep_deletes.clone(),
        );
        r.register(
            "ingester_rows_retired",
            "Rows marked deleted at start-up because this deployment no longer watches their scope",
            m.rows_retired.clone(),
        );
        r.register(
            "ingester_non_numeric_resource_versions",
            "Object states whose metadata.resourceVersion is not an integer (stored without the ordering guard)",
            m.non_numeric_resource_versions.clone(),
        );
        r.register(
            "ingester_watch_errors",
            "Watch errors (retried with backoff), by resource",
            m.watch_errors.clone(),
        );
        r.register(
            "ingester_last_flush_timestamp_seconds",
            "Unix time of the last committed batch",
            m.last_flush_timestamp.clone(),
        );
        r.register(
            "ingester_db_up",
            "1 when PostgreSQL answered the last check",
            m.db_up.clone(),
        );
        r.register(
            "ingester_leader",
            "1 when this replica holds the lease (or leader election is off)",
            m.is_leader.clone(),
        );
        r.register(
            "ingester_history_partition_missing",
            "1 when tomorrow's partition of krateo_resource_history is missing (HISTORY=true; run `resources-ingester history maintain`)",
            m.history_partition_missing.clone(),
        );
        r.register(
            "ingester_history_partitions_dropped",
            "Day partitions of krateo_resource_history dropped past HISTORY_RETENTION by this process",
            m.history_partitions_dropped.clone(),
        );
        r.register(
            "ingester_history_maintenance_failures",
            "History partition maintenance runs that failed",
            m.history_maintenance_failures.clone(),
        );
        r.register(
            "ingester_fields_redacted",
            "Values of sensitive kinds replaced by the redaction marker before storing (REDACT_SENSITIVE)",
            m.fields_redacted.clone(),
        );
        r.register(
            "ingester_pruned_bytes",
            "Bytes of object JSON dropped by PRUNE_FIELDS before storing",
            m.pruned_bytes.clone(),
        );
        r.register(
            "ingester_redaction_enabled",
            "1 when values of sensitive kinds are redacted before storing (REDACT_SENSITIVE)",
            m.redaction_enabled.clone(),
        );
        r.register(
            "ingester_queue_bytes",
            "JSON bytes of the events waiting in the worker queues (whole KiB, at least 1 KiB an event; bounded by QUEUE_BYTES)",
            m.queue_bytes.clone(),
        );
        r.register(
            "ingester_ready",
            "1 when /readyz answers 200 (database reachable, every static route listed)",
            m.ready.clone(),
        );
        r.register(
            "ingester_watch_last_committed_change_timestamp_seconds",
            "Unix time at which the watch read its newest change (event, bookmark or completed list) whose rows are committed; lag = time() - value",
            m.watch_committed_timestamp.clone(),
        );
        r.register(
            "ingester_watch_committed_resource_version",
            "resourceVersion up to which every change of the watch's scope is committed",
            m.watch_committed_resource_version.clone(),
        );
        r.register(
            "ingester_watch_listed_objects",
            "Objects in the watch's last complete list of its scope",
            m.watch_listed_objects.clone(),
        );
        r.register(
            "ingester_watch_received_bytes",
            "Response bytes received from the API server for the watch's scope (lists and watches), as sent on the wire (compressed when API_COMPRESSION is on)",
            m.watch_received_bytes.clone(),
        );
        // Known label values start at 0, so alerts and dashboards using `increase()` see the
        // first occurrence (a series that appears at 1 shows no increase) and the families are
        // exported before anything happened.
        let at_zero = |family: &Family<Labels, Counter>, key: &'static str, values: &[&str]| {
            for v in values {
                family
                    .get_or_create(&vec![(key, (*v).to_owned())])
                    .inc_by(0);
            }
        };
        at_zero(
            &m.records_dropped,
            "reason",
            &["missing_uid", "missing_name", "rejected"],
        );
        at_zero(
            &m.records_sanitised,
            "reason",
            &[
                "nul_in_string",
                "rejected_stored_as_stub",
                "invalid_composition_label",
            ],
        );
        at_zero(
            &m.watch_resumes,
            "outcome",
            &["resumed", "expired", "history_behind"],
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The labels of a watch's series: group, version, plural and `watch_namespace` (`""` for a
/// cluster-wide watch). Not `namespace`: Prometheus attaches the scraped pod's own `namespace`
/// label, and a clash would rename ours to `exported_namespace`.
pub fn watch_labels(group: &str, version: &str, plural: &str, namespace: Option<&str>) -> Labels {
    vec![
        ("group", group.to_owned()),
        ("version", version.to_owned()),
        ("plural", plural.to_owned()),
        ("watch_namespace", namespace.unwrap_or_default().to_owned()),
    ]
}

/// The watch lagging most: its label and the age in seconds of its newest committed change.
pub fn worst_lag<'a>(
    now: f64,
    committed_at: impl IntoIterator<Item = (&'a String, &'a f64)>,
) -> Option<(&'a str, f64)> {
    committed_at
        .into_iter()
        .map(|(watch, at)| (watch.as_str(), (now - at).max(0.0)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_workerpool_names_exactly() {
        let m = Metrics::new();
        m.events_processed.inc();
        m.event_duration.observe(0.001);
        let text = m.encode();
        assert!(
            text.contains("workerpool_events_processed_total 1"),
            "{text}"
        );
        assert!(text.contains("workerpool_events_errors_total 0"));
        assert!(text.contains("workerpool_event_duration_seconds_bucket"));
        for name in [
            "ingester_queue_depth",
            "ingester_pending_batch_rows",
            "ingester_active_watches",
            "ingester_batch_flush_rows",
            "ingester_batch_flush_duration_seconds",
            "ingester_rows_written_total",
            "ingester_rows_unchanged_skipped_total",
            "ingester_write_failures_total",
            "ingester_sweep_deletes_total",
            "ingester_rows_retired_total",
            "ingester_non_numeric_resource_versions_total",
            "ingester_last_flush_timestamp_seconds",
            "ingester_db_up",
            "ingester_leader",
            "ingester_fields_redacted_total",
            "ingester_pruned_bytes_total",
            "ingester_redaction_enabled",
        ] {
            assert!(text.contains(&format!("\n{name}")), "{name} missing");
        }
        // Families appear once they have a labelled series.
        for family in [
            &m.records_sanitised,
            &m.records_dropped,
            &m.relists,
            &m.watch_resumes,
            &m.watch_errors,
        ] {
            family
                .get_or_create(&vec![("reason", "x".to_owned())])
                .inc();
        }
        let text = m.encode();
        for name in [
            "ingester_records_sanitised_total{",
            "ingester_records_dropped_total{",
            "ingester_relists_total{",
            "ingester_watch_resumes_total{",
            "ingester_watch_errors_total{",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }

    #[test]
    fn worst_lag_is_the_oldest_committed_change() {
        let mut at = std::collections::BTreeMap::new();
        assert_eq!(worst_lag(100.0, &at), None);
        at.insert("pods".to_owned(), 95.0);
        at.insert("configmaps in a".to_owned(), 40.0);
        at.insert("deployments".to_owned(), 99.5);
        assert_eq!(worst_lag(100.0, &at), Some(("configmaps in a", 60.0)));
        // A clock step backwards never shows a negative lag.
        at.clear();
        at.insert("pods".to_owned(), 101.0);
        assert_eq!(worst_lag(100.0, &at), Some(("pods", 0.0)));
    }
}
