//! Events of turning objects into rows: records built, sanitised, dropped; the field policy.

use std::time::Duration;

use tracing::{debug, info, warn};

use crate::row::record::RecordError;
use crate::telemetry::metrics::Metrics;

use super::label;

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
