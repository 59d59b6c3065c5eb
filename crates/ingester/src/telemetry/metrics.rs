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

/// The value a family starts with: its own constructor when the table gives one.
macro_rules! initial {
    () => {
        Default::default()
    };
    ($init:expr) => {
        $init
    };
}

/// Declares every family once: the struct field the events move, the exposed name (counters
/// get `_total` from prometheus-client), the help text, an optional constructor (histogram
/// buckets), and the label values a family exports at 0 from the start.
macro_rules! metric_families {
    ($(
        $(#[$doc:meta])*
        $field:ident: $ty:ty = $name:literal, $help:literal
        $(, new $init:expr)?
        $(, zero $key:literal [$($value:literal),*])?;
    )*) => {
        pub struct Metrics {
            registry: Registry,
            $($(#[$doc])* pub $field: $ty,)*
            /// The newest committed change's time per watch (by label), for the status line's
            /// worst lag (a Family cannot be read back).
            pub committed_at_by_watch: std::sync::Mutex<std::collections::BTreeMap<String, f64>>,
            /// Running watches per label: a watch restarted on the same scope may start before
            /// the old one has finished; the series go only when the last of them stops.
            pub watches_by_label: std::sync::Mutex<std::collections::HashMap<String, usize>>,
        }

        impl Metrics {
            pub fn new() -> Self {
                let mut registry = Registry::default();
                $(
                    let $field: $ty = initial!($($init)?);
                    registry.register($name, $help, $field.clone());
                    $(start_at_zero(&$field, $key, &[$($value),*]);)?
                )*
                Metrics {
                    registry,
                    $($field,)*
                    committed_at_by_watch: Default::default(),
                    watches_by_label: Default::default(),
                }
            }
        }
    };
}

metric_families! {
    events_processed: Counter = "workerpool_events_processed",
        "Watch events processed by the worker pool";
    events_errors: Counter = "workerpool_events_errors",
        "Watch events the worker pool could not turn into a row";
    event_duration: Histogram = "workerpool_event_duration_seconds",
        "Time a worker spends on one event",
        new Histogram::new(exponential_buckets(0.000_005, 4.0, 10));
    queue_depth: Gauge = "ingester_queue_depth",
        "Events waiting in the worker queues";
    pending_batch: Gauge = "ingester_pending_batch_rows",
        "Records built and waiting in lane batches for their flush";
    active_watches: Gauge = "ingester_active_watches",
        "Watches currently running";
    flush_rows: Histogram = "ingester_batch_flush_rows",
        "Rows per committed batch",
        new Histogram::new(exponential_buckets(1.0, 2.0, 14));
    flush_duration: Histogram = "ingester_batch_flush_duration_seconds",
        "Time to commit one batch",
        new Histogram::new(exponential_buckets(0.001, 2.0, 15));
    rows_written: Counter = "ingester_rows_written",
        "Rows inserted or updated in krateo_resources";
    rows_unchanged_skipped: Counter = "ingester_rows_unchanged_skipped",
        "Listed objects skipped because the table already holds that state";
    write_failures: Counter = "ingester_write_failures",
        "Failed batch write attempts (retried)";
    records_sanitised: Family<Labels, Counter> = "ingester_records_sanitised",
        "Records stored in a sanitised form, by reason",
        zero "reason" ["nul_in_string", "rejected_stored_as_stub", "invalid_composition_label"];
    records_dropped: Family<Labels, Counter> = "ingester_records_dropped",
        "Records that could not be stored at all, by reason",
        zero "reason" ["missing_uid", "missing_name", "rejected"];
    change_feed_skipped: Counter = "ingester_change_feed_skipped",
        "Batches committed without their change-feed notification (the NOTIFY queue was full)";
    relists: Family<Labels, Counter> = "ingester_relists",
        "Full lists of a watched scope, by reason";
    watch_resumes: Family<Labels, Counter> = "ingester_watch_resumes",
        "Watches started from a stored resume point instead of a list, by outcome (resumed, expired, history_behind: the server's resourceVersion was below the point, another history)",
        zero "outcome" ["resumed", "expired", "history_behind"];
    database_rewinds: Counter = "ingester_database_rewinds",
        "Times the database went back in time (commits it had acknowledged were gone: a failover to a standby behind the primary, a restore); each restarts every watch from the resume points the database holds";
    sweep_deletes: Counter = "ingester_sweep_deletes",
        "Rows marked deleted because a list no longer had their object";
    rows_retired: Counter = "ingester_rows_retired",
        "Rows marked deleted at start-up because this deployment no longer watches their scope";
    non_numeric_resource_versions: Counter = "ingester_non_numeric_resource_versions",
        "Object states whose metadata.resourceVersion is not an integer (stored without the ordering guard)";
    watch_errors: Family<Labels, Counter> = "ingester_watch_errors",
        "Watch errors (retried with backoff), by resource";
    last_flush_timestamp: Gauge<f64, AtomicU64> = "ingester_last_flush_timestamp_seconds",
        "Unix time of the last committed batch";
    db_up: Gauge = "ingester_db_up",
        "1 when PostgreSQL answered the last check";
    is_leader: Gauge = "ingester_leader",
        "1 when this replica holds the lease (or leader election is off)";
    // Change history (HISTORY).
    // Change history (HISTORY).
    history_partition_missing: Gauge = "ingester_history_partition_missing",
        "1 when tomorrow's partition of krateo_resource_history is missing (HISTORY=true; run `resources-ingester history maintain`)";
    history_partitions_dropped: Counter = "ingester_history_partitions_dropped",
        "Day partitions of krateo_resource_history dropped past HISTORY_RETENTION by this process";
    history_maintenance_failures: Counter = "ingester_history_maintenance_failures",
        "History partition maintenance runs that failed";
    fields_redacted: Counter = "ingester_fields_redacted",
        "Values of sensitive kinds replaced by the redaction marker before storing (REDACT_SENSITIVE)";
    pruned_bytes: Counter = "ingester_pruned_bytes",
        "Bytes of object JSON dropped by PRUNE_FIELDS before storing";
    redaction_enabled: Gauge = "ingester_redaction_enabled",
        "1 when values of sensitive kinds are redacted before storing (REDACT_SENSITIVE)";
    /// JSON bytes of the events waiting in the lanes' queues (whole KiB, at least 1 each).
    queue_bytes: Gauge = "ingester_queue_bytes",
        "JSON bytes of the events waiting in the worker queues (whole KiB, at least 1 KiB an event; bounded by QUEUE_BYTES)";
    /// 1 when /readyz answers 200.
    ready: Gauge = "ingester_ready",
        "1 when /readyz answers 200 (database reachable, every static route listed)";
    // Per watch (labels from `watch_labels`); removed when the watch stops.
    // Per watch (labels from `watch_labels`); removed when the watch stops.
    watch_committed_timestamp: Family<Labels, Gauge<f64, AtomicU64>> = "ingester_watch_last_committed_change_timestamp_seconds",
        "Unix time at which the watch read its newest change (event, bookmark or completed list) whose rows are committed; lag = time() - value";
    watch_committed_resource_version: Family<Labels, Gauge> = "ingester_watch_committed_resource_version",
        "resourceVersion up to which every change of the watch's scope is committed";
    watch_listed_objects: Family<Labels, Gauge> = "ingester_watch_listed_objects",
        "Objects in the watch's last complete list of its scope";
    watch_received_bytes: Family<Labels, Counter> = "ingester_watch_received_bytes",
        "Response bytes received from the API server for the watch's scope (lists and watches), as sent on the wire (compressed when API_COMPRESSION is on)";
}

/// Known label values start at 0, so alerts and dashboards using `increase()` see the first
/// occurrence (a series that appears at 1 shows no increase) and the families are exported
/// before anything happened.
fn start_at_zero(family: &Family<Labels, Counter>, key: &'static str, values: &[&str]) {
    for v in values {
        family
            .get_or_create(&vec![(key, (*v).to_owned())])
            .inc_by(0);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
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
