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
    let name = obj.metadata.name.take().ok_or(RecordError::MissingName)?;
    let Some(uid) = obj.metadata.uid.take() else {
        return Err(RecordError::MissingUid { name });
    };

    let label_id = match obj.composition_label.as_deref() {
        Some(label) => match Uuid::parse_str(label) {
            Ok(id) => Some(id),
            Err(_) => {
                notices.push(Notice::InvalidCompositionLabel(label.to_owned()));
                None
            }
        },
        None => None,
    };
    let composition_id = composition_id_of(label_id, &route.group, &uid, fallback);

    let deletion = obj.deletion_timestamp.as_deref().and_then(parse_time);
    let deleted_at = match kind {
        EventKind::Delete => Some(deletion.unwrap_or(observed_at)),
        EventKind::Apply => deletion,
    };
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

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Returns the JSON with every NUL character removed from strings and keys, or `None` when
/// there is none. A cheap byte search guards the (rare) re-serialisation.
pub fn sanitise_nul(json: &str) -> Option<String> {
    memchr::memmem::find(json.as_bytes(), b"\\u0000")?;
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
mod tests {
    use super::*;

    const UID: &str = "6a1c6a5e-9a3b-4c9e-8f6e-2b8e7c1d0a11";
    const LABEL: &str = "0f9e2c4c-3c1d-4b8e-9a51-1a2b3c4d5e6f";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-05-05T05:05:05Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn obj(extra_meta: &str, status: &str) -> RawObject {
        RawObject::from_json(format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"web","uid":"{UID}","resourceVersion":"17","creationTimestamp":"2024-01-02T03:04:05Z"{extra_meta}}}{status}}}"#
        ))
        .expect("valid")
    }

    fn build(o: RawObject, route: Route, kind: EventKind) -> (Record, Vec<Notice>) {
        build_record(o, &Arc::new(route), &Arc::from("c1"), kind, now()).expect("record")
    }

    fn pods() -> Route {
        Route::new("", "v1", "pods", "Pod")
    }

    #[test]
    fn every_field_of_a_namespaced_object() {
        let (r, notices) = build(
            obj(
                r#","namespace":"team-a""#,
                r#","status":{"phase":"Running"}"#,
            ),
            pods(),
            EventKind::Apply,
        );
        assert!(notices.is_empty());
        assert_eq!(r.global_uid, format!("c1:{UID}"));
        assert_eq!(&*r.cluster_name, "c1");
        assert_eq!(r.uid, UID);
        assert_eq!(r.namespace, "team-a");
        assert_eq!(r.route.group, "");
        assert_eq!(r.route.version, "v1");
        assert_eq!(r.route.kind, "Pod");
        assert_eq!(r.route.plural, "pods");
        assert_eq!(r.name, "web");
        assert_eq!(
            r.composition_id,
            Some(Uuid::parse_str(UID).expect("uuid")),
            "no label: its own UID"
        );
        assert_eq!(r.created_at.to_rfc3339(), "2024-01-02T03:04:05+00:00");
        assert_eq!(r.updated_at, now());
        assert_eq!(r.deleted_at, None);
        assert!(r.raw.contains(r#""name":"web""#));
        assert_eq!(r.status_json(), Some(r#"{"phase":"Running"}"#));
        assert_eq!(r.object_resource_version, Some(17));
    }

    #[test]
    fn cluster_scoped_objects_have_an_empty_namespace_and_no_status() {
        let (r, _) = build(
            obj("", ""),
            Route::new("", "v1", "namespaces", "Namespace"),
            EventKind::Apply,
        );
        assert_eq!(r.namespace, "");
        assert_eq!(r.status_json(), None);
    }

    #[test]
    fn composition_label_uuid_wins() {
        let meta = format!(r#","labels":{{"krateo.io/composition-id":"{LABEL}"}}"#);
        let (r, notices) = build(obj(&meta, ""), pods(), EventKind::Apply);
        assert_eq!(
            r.composition_id,
            Some(Uuid::parse_str(LABEL).expect("uuid"))
        );
        assert!(notices.is_empty());
    }

    #[test]
    fn composition_group_objects_fall_back_to_their_own_uid() {
        let route = Route::new(
            COMPOSITION_GROUP,
            "v1alpha1",
            "fireworksapps",
            "FireworksApp",
        );
        let (r, _) = build(obj("", ""), route.clone(), EventKind::Apply);
        assert_eq!(r.composition_id, Some(Uuid::parse_str(UID).expect("uuid")));
        let meta = format!(r#","labels":{{"krateo.io/composition-id":"{LABEL}"}}"#);
        let (r, _) = build(obj(&meta, ""), route, EventKind::Apply);
        assert_eq!(
            r.composition_id,
            Some(Uuid::parse_str(LABEL).expect("uuid"))
        );
    }

    #[test]
    fn a_non_uuid_label_is_a_notice_not_an_error() {
        let meta = r#","labels":{"krateo.io/composition-id":"not-a-uuid"}"#;
        let (r, notices) = build(obj(meta, ""), pods(), EventKind::Apply);
        assert_eq!(r.composition_id, Some(Uuid::parse_str(UID).expect("uuid")));
        assert_eq!(
            notices,
            vec![Notice::InvalidCompositionLabel("not-a-uuid".into())]
        );
        let route = Route::new(COMPOSITION_GROUP, "v1", "fireworksapps", "FireworksApp");
        let (r, _) = build(obj(meta, ""), route, EventKind::Apply);
        assert_eq!(r.composition_id, Some(Uuid::parse_str(UID).expect("uuid")));
    }

    #[test]
    fn without_a_valid_label_the_fallback_decides_outside_compositions() {
        let own = Uuid::parse_str(UID).ok();
        let label = Uuid::parse_str(LABEL).ok();
        for (label_id, group, fallback, expected) in [
            (None, "core.krateo.io", CompositionFallback::Uid, own),
            (None, "core.krateo.io", CompositionFallback::Null, None),
            (None, "", CompositionFallback::Null, None),
            (None, COMPOSITION_GROUP, CompositionFallback::Null, own),
            (label, "", CompositionFallback::Null, label),
            (label, COMPOSITION_GROUP, CompositionFallback::Uid, label),
        ] {
            assert_eq!(
                composition_id_of(label_id, group, UID, fallback),
                expected,
                "{label_id:?} {group:?} {fallback:?}"
            );
        }
        assert_eq!(
            composition_id_of(None, "", "not-a-uuid", CompositionFallback::Uid),
            None,
            "a UID that is no UUID stays NULL"
        );
    }

    #[test]
    fn terminating_objects_are_deleted_at_their_deletion_timestamp() {
        let meta = r#","deletionTimestamp":"2025-01-01T00:00:00Z""#;
        let (r, _) = build(obj(meta, ""), pods(), EventKind::Apply);
        assert_eq!(
            r.deleted_at.map(|t| t.to_rfc3339()),
            Some("2025-01-01T00:00:00+00:00".to_owned())
        );
        let (r, _) = build(obj(meta, ""), pods(), EventKind::Delete);
        assert_eq!(
            r.deleted_at.map(|t| t.to_rfc3339()),
            Some("2025-01-01T00:00:00+00:00".to_owned())
        );
    }

    #[test]
    fn deletes_without_deletion_timestamp_use_the_observation_time() {
        let (r, _) = build(obj("", ""), pods(), EventKind::Delete);
        assert_eq!(r.deleted_at, Some(now()));
    }

    #[test]
    fn missing_creation_timestamp_falls_back_to_observation() {
        let o = RawObject::from_json(format!(r#"{{"metadata":{{"name":"x","uid":"{UID}"}}}}"#))
            .expect("ok");
        let (r, _) = build(o, pods(), EventKind::Apply);
        assert_eq!(r.created_at, now());
        assert_eq!(r.object_resource_version, None);
    }

    #[test]
    fn non_integer_resource_versions_are_none() {
        let o = RawObject::from_json(format!(
            r#"{{"metadata":{{"name":"x","uid":"{UID}","resourceVersion":"abc"}}}}"#
        ))
        .expect("ok");
        let (r, _) = build(o, pods(), EventKind::Apply);
        assert_eq!(r.object_resource_version, None);
    }

    #[test]
    fn objects_without_uid_or_name_are_errors() {
        let o = RawObject::from_json(r#"{"metadata":{"name":"x"}}"#.into()).expect("ok");
        let e = build_record(
            o,
            &Arc::new(pods()),
            &Arc::from("c"),
            EventKind::Apply,
            now(),
        );
        assert_eq!(e.err(), Some(RecordError::MissingUid { name: "x".into() }));
        let o = RawObject::from_json(r#"{"metadata":{"uid":"x"}}"#.into()).expect("ok");
        let e = build_record(
            o,
            &Arc::new(pods()),
            &Arc::from("c"),
            EventKind::Apply,
            now(),
        );
        assert_eq!(e.err(), Some(RecordError::MissingName));
    }

    #[test]
    fn nul_characters_are_removed_from_strings_and_keys() {
        let meta = r#","annotations":{"a\u0000b":"x\u0000y"}"#;
        let (r, notices) = build(
            obj(meta, r#","status":{"m":"\u0000"}"#),
            pods(),
            EventKind::Apply,
        );
        assert_eq!(notices, vec![Notice::NulRemoved]);
        assert!(!r.raw.contains("\\u0000"));
        assert!(r.raw.contains(r#""ab":"xy""#));
        assert_eq!(r.status_json(), Some(r#"{"m":""}"#));
    }

    #[test]
    fn an_escaped_backslash_before_u0000_is_not_a_nul() {
        assert_eq!(sanitise_nul(r#"{"a":"\\u0000"}"#), None);
    }

    #[test]
    fn secrets_are_redacted_by_default_and_keep_their_status_range() {
        let o = RawObject::from_json(format!(
            r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"s","uid":"{UID}","resourceVersion":"3","annotations":{{"kubectl.kubernetes.io/last-applied-configuration":"{{\"data\":{{\"k\":\"dmFsdWU=\"}}}}"}}}},"data":{{"k":"dmFsdWU=","n\u0000ul":"eA=="}},"status":{{"x":1}}}}"#
        ))
        .expect("valid");
        let (r, notices) = build(
            o,
            Route::new("", "v1", "secrets", "Secret"),
            EventKind::Apply,
        );
        assert_eq!(notices, vec![Notice::NulRemoved, Notice::FieldsRedacted(3)]);
        assert!(!r.raw.contains("dmFsdWU="), "{}", r.raw);
        assert!(!r.raw.contains("eA=="), "{}", r.raw);
        let v: serde_json::Value = serde_json::from_str(&r.raw).expect("json");
        assert_eq!(v["data"]["k"], crate::row::fields::REDACTED);
        assert_eq!(v["data"]["nul"], crate::row::fields::REDACTED);
        assert_eq!(r.status_json(), Some(r#"{"x":1}"#));
        assert_eq!(r.name, "s");
        assert_eq!(r.object_resource_version, Some(3));
    }

    #[test]
    fn pruning_drops_the_path_and_moves_the_status_range() {
        let policy = FieldPolicy::new(
            true,
            &crate::row::fields::SensitiveKinds::default(),
            &"metadata.managedFields".parse().expect("valid"),
        );
        let meta = r#","labels":{"app":"web"},"managedFields":[{"manager":"kubectl"}]"#;
        let (r, notices) = build_record_with(
            obj(meta, r#","status":{"phase":"Running"}"#),
            &Arc::new(pods()),
            &Arc::from("c1"),
            EventKind::Apply,
            now(),
            CompositionFallback::Uid,
            &policy,
        )
        .expect("record");
        let dropped = r#""managedFields":[{"manager":"kubectl"}]"#.len() as u64;
        assert_eq!(notices, vec![Notice::FieldsPruned(dropped)]);
        assert!(!r.raw.contains("managedFields"));
        assert!(r.raw.contains(r#""labels":{"app":"web"}"#));
        assert_eq!(r.status_json(), Some(r#"{"phase":"Running"}"#));
        // Without a policy for the kind the text is kept as it came.
        let (r, notices) = build(obj(meta, ""), pods(), EventKind::Apply);
        assert!(notices.is_empty());
        assert!(r.raw.contains("managedFields"));
    }

    #[test]
    fn stubs_keep_identity_and_drop_content() {
        let (r, _) = build(
            obj(r#","namespace":"n""#, r#","status":{"big":1}"#),
            pods(),
            EventKind::Apply,
        );
        let s = r.to_stub("rejected");
        let v: serde_json::Value = serde_json::from_str(&s.raw).expect("json");
        assert_eq!(v["metadata"]["uid"], UID);
        assert_eq!(v["metadata"]["namespace"], "n");
        assert_eq!(v["ingester"]["reason"], "rejected");
        assert!(s.status.is_none());
        assert_eq!(s.global_uid, r.global_uid);
    }
}
