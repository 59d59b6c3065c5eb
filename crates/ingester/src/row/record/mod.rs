//! Record building: a pure function from (object, route, cluster, event kind, observation
//! time) to the row written into `krateo_resources`. No I/O here.

use std::ops::Range;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::row::fields::FieldPolicy;
use crate::row::object::RawObject;
use crate::row::routes::Route;

/// The API group whose objects are compositions: their own UID is their composition id.
pub const COMPOSITION_GROUP: &str = "composition.krateo.io";

/// What the watch said happened to the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Added or modified (including objects of an initial list).
    Apply,
    /// Deleted.
    Delete,
}

/// One row of `krateo_resources`.
#[derive(Clone, Debug)]
pub struct Record {
    pub global_uid: String,
    pub cluster_name: Arc<str>,
    pub uid: String,
    /// `''` for cluster-scoped objects.
    pub namespace: String,
    /// Group, API version, kind and plural of the watch that saw the object.
    pub route: Arc<Route>,
    pub name: String,
    pub composition_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// The full object as JSON text.
    pub raw: String,
    /// Byte range of `.status` inside `raw`.
    pub status: Option<Range<usize>>,
    /// `metadata.resourceVersion` when it is an integer: orders the states of one object.
    pub object_resource_version: Option<i64>,
}

impl Record {
    pub fn status_json(&self) -> Option<&str> {
        self.status.clone().and_then(|r| self.raw.get(r))
    }

    /// A metadata-only stand-in for an object PostgreSQL refused, so the object's existence
    /// and identity still reach the table.
    pub fn to_stub(&self, reason: &str) -> Record {
        let stub = serde_json::json!({
            "apiVersion": self.route.api_version(),
            "kind": self.route.kind,
            "metadata": {
                "name": self.name,
                "namespace": if self.namespace.is_empty() { None } else { Some(&self.namespace) },
                "uid": self.uid,
                "resourceVersion": self.object_resource_version.map(|v| v.to_string()),
            },
            "ingester": { "storedAsStub": true, "reason": reason },
        });
        Record {
            raw: stub.to_string(),
            status: None,
            composition_id: None,
            ..self.clone()
        }
    }
}

/// Something about the record worth counting and logging that did not stop it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The composition label was present but not a UUID; the value is kept for the log.
    InvalidCompositionLabel(String),
    /// `\u0000` removed from strings: PostgreSQL's jsonb rejects it.
    NulRemoved,
    /// `metadata.resourceVersion` is not an integer (it is opaque by contract): the row is
    /// stored without the ordering guard. The value is kept for the log.
    NonNumericResourceVersion(String),
    /// The field policy replaced this many values with `fields::REDACTED` (sensitive kinds).
    FieldsRedacted(u64),
    /// The field policy dropped this many bytes of members (`PRUNE_FIELDS`).
    FieldsPruned(u64),
}

/// A record could not be built at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Carries the name, so the drop can be logged without keeping a copy of it per event.
    #[error("object {name:?} has no metadata.uid")]
    MissingUid { name: String },
    #[error("object has no metadata.name")]
    MissingName,
}

impl RecordError {
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::MissingUid { .. } => "missing_uid",
            RecordError::MissingName => "missing_name",
        }
    }
}

/// composition_id of an object without a valid `krateo.io/composition-id` label (objects of
/// [`COMPOSITION_GROUP`] always get their own UID: they are the composition).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CompositionFallback {
    /// The object's own UID, as the original ingester: the presenter never sees NULL.
    #[default]
    Uid,
    /// NULL.
    Null,
}

/// The label's UUID; else the object's own UID for a composition (it is one) and, with the
/// `Uid` fallback, for every other object; else NULL.
fn composition_id_of(
    label_id: Option<Uuid>,
    group: &str,
    uid: &str,
    fallback: CompositionFallback,
) -> Option<Uuid> {
    label_id.or_else(|| {
        let own_uid = group == COMPOSITION_GROUP || fallback == CompositionFallback::Uid;
        own_uid.then(|| Uuid::parse_str(uid).ok()).flatten()
    })
}

pub fn global_uid(cluster: &str, uid: &str) -> String {
    format!("{cluster}:{uid}")
}

/// Builds the row for one observed object state, with the default composition fallback and
/// the default field policy (Secrets redacted, nothing pruned).
pub fn build_record(
    obj: RawObject,
    route: &Arc<Route>,
    cluster: &Arc<str>,
    kind: EventKind,
    observed_at: DateTime<Utc>,
) -> Result<(Record, Vec<Notice>), RecordError> {
    build_record_with(
        obj,
        route,
        cluster,
        kind,
        observed_at,
        CompositionFallback::default(),
        default_policy(),
    )
}

fn default_policy() -> &'static FieldPolicy {
    static DEFAULT: std::sync::OnceLock<FieldPolicy> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(FieldPolicy::default)
}

/// Builds the row for one observed object state; `fallback` decides the composition id of an
/// object without a valid label (`COMPOSITION_ID_FALLBACK`); `fields` is what of the object is
/// redacted or pruned before it is stored (`REDACT_SENSITIVE`, `SENSITIVE_KINDS`,
/// `PRUNE_FIELDS`). This is the one place the policy applies: `raw`, `status_raw` and
/// everything derived from the record see the same text.
pub fn build_record_with(
    obj: RawObject,
    route: &Arc<Route>,
    cluster: &Arc<str>,
    kind: EventKind,
    observed_at: DateTime<Utc>,
    fallback: CompositionFallback,
    fields: &FieldPolicy,
) -> Result<(Record, Vec<Notice>), RecordError> {
    let mut notices = Vec::new();
    let mut obj = stored_text(obj, route, fields, &mut notices);
    let name = obj.metadata.name.take().ok_or(RecordError::MissingName)?;
    let Some(uid) = obj.metadata.uid.take() else {
        return Err(RecordError::MissingUid { name });
    };

    let label_id = composition_label(obj.composition_label.as_deref(), &mut notices);
    let composition_id = composition_id_of(label_id, &route.group, &uid, fallback);

    let deletion = obj.deletion_timestamp.as_deref().and_then(parse_time);
    let deleted_at = deleted_at_of(kind, deletion, observed_at);
    let created_at = obj
        .creation_timestamp
        .as_deref()
        .and_then(parse_time)
        .unwrap_or(observed_at);

    let object_resource_version = obj.resource_version_number();
    if object_resource_version.is_none() {
        if let Some(rv) = obj.resource_version() {
            notices.push(Notice::NonNumericResourceVersion(rv.to_owned()));
        }
    }
    let record = Record {
        global_uid: global_uid(cluster, &uid),
        cluster_name: cluster.clone(),
        uid,
        namespace: obj.metadata.namespace.unwrap_or_default(),
        route: route.clone(),
        name,
        composition_id,
        created_at,
        updated_at: observed_at,
        deleted_at,
        raw: obj.json,
        status: obj.status,
        object_resource_version,
    };
    Ok((record, notices))
}

/// The object's text as it is stored: without NUL characters, with the field policy applied.
fn stored_text(
    obj: RawObject,
    route: &Route,
    fields: &FieldPolicy,
    notices: &mut Vec<Notice>,
) -> RawObject {
    let mut obj = match sanitise_nul(&obj.json) {
        Some(clean) => match RawObject::from_json(clean) {
            Ok(clean) => {
                notices.push(Notice::NulRemoved);
                clean
            }
            Err(_) => obj,
        },
        None => obj,
    };
    // Identity fields are never pruned, so only the text and the status range change. The
    // policy follows the kind the server says the object is, whatever the routes file says.
    let served_kind = obj.kind().unwrap_or(&route.kind);
    if let Some(applied) = fields.apply(&route.group, served_kind, &obj.json) {
        if applied.redacted > 0 {
            notices.push(Notice::FieldsRedacted(applied.redacted));
        }
        if applied.pruned_bytes > 0 {
            notices.push(Notice::FieldsPruned(applied.pruned_bytes));
        }
        obj.set_text(applied.json, applied.status);
    }
    obj
}

/// The composition label's UUID; a label that is not one is a notice, not an error.
fn composition_label(label: Option<&str>, notices: &mut Vec<Notice>) -> Option<Uuid> {
    let label = label?;
    match Uuid::parse_str(label) {
        Ok(id) => Some(id),
        Err(_) => {
            notices.push(Notice::InvalidCompositionLabel(label.to_owned()));
            None
        }
    }
}

/// A delete is stamped at the object's deletion timestamp, else when it was observed; a live
/// state keeps the deletion timestamp it carries (a terminating object).
fn deleted_at_of(
    kind: EventKind,
    deletion: Option<DateTime<Utc>>,
    observed_at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match kind {
        EventKind::Delete => Some(deletion.unwrap_or(observed_at)),
        EventKind::Apply => deletion,
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Returns the JSON with every NUL character removed from strings and keys, or `None` when
/// there is none. A cheap byte search guards the (rare) re-serialisation: each backslash is
/// looked at (objects have few; a substring search for the escape paid for JSON's many `0`s
/// and `u`s, 4 % of the ingester's CPU in a sync).
pub fn sanitise_nul(json: &str) -> Option<String> {
    let bytes = json.as_bytes();
    memchr::memchr_iter(b'\\', bytes).find(|&at| bytes[at + 1..].starts_with(b"u0000"))?;
    let mut value: serde_json::Value = serde_json::from_str(json).ok()?;
    if !strip_nul(&mut value) {
        return None;
    }
    serde_json::to_string(&value).ok()
}

fn strip_nul(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => {
            s.retain(|c| c != '\0');
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |acc, i| strip_nul(i) | acc),
        Value::Object(map) => {
            let mut changed = false;
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(k.replace('\0', ""), v);
                }
                changed = true;
            }
            map.values_mut().fold(changed, |acc, i| strip_nul(i) | acc)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
