//! Events of the watches: failures, lists, resumes, and each watch's own series.

use tracing::{debug, info, warn};

use crate::telemetry::metrics::Metrics;

use super::label;

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
