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
    pub relists: Family<Labels, Counter>,
    pub watch_resumes: Family<Labels, Counter>,
    pub sweep_deletes: Counter,
    pub watch_errors: Family<Labels, Counter>,
    pub last_flush_timestamp: Gauge<f64, AtomicU64>,
    pub db_up: Gauge,
    pub is_leader: Gauge,
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
            relists: Family::default(),
            watch_resumes: Family::default(),
            sweep_deletes: Counter::default(),
            watch_errors: Family::default(),
            last_flush_timestamp: Gauge::default(),
            db_up: Gauge::default(),
            is_leader: Gauge::default(),
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
            "ingester_relists",
            "Full lists of a watched scope, by reason",
            m.relists.clone(),
        );
        r.register(
            "ingester_watch_resumes",
            "Watches started from a stored resume point instead of a list, by outcome (resumed, expired)",
            m.watch_resumes.clone(),
        );
        r.register(
            "ingester_sweep_deletes",
            "Rows marked deleted because a list no longer had their object",
            m.sweep_deletes.clone(),
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
            "ingester_last_flush_timestamp_seconds",
            "ingester_db_up",
            "ingester_leader",
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
}
