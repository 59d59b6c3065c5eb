//! Typed observable events: each emits its log line and moves its metric, in one place.

use std::time::Duration;

use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::record::RecordError;

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
