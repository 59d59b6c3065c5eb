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

#[test]
fn a_delete_is_stamped_at_its_deletion_timestamp_else_when_observed() {
    let deletion = DateTime::parse_from_rfc3339("2025-05-05T05:00:00Z")
        .expect("time")
        .with_timezone(&Utc);
    assert_eq!(
        deleted_at_of(EventKind::Delete, Some(deletion), now()),
        Some(deletion)
    );
    assert_eq!(deleted_at_of(EventKind::Delete, None, now()), Some(now()));
    assert_eq!(
        deleted_at_of(EventKind::Apply, Some(deletion), now()),
        Some(deletion),
        "a terminating object"
    );
    assert_eq!(deleted_at_of(EventKind::Apply, None, now()), None);
}

#[test]
fn a_composition_label_is_a_uuid_or_a_notice() {
    let mut notices = Vec::new();
    assert_eq!(
        composition_label(Some(LABEL), &mut notices),
        Uuid::parse_str(LABEL).ok()
    );
    assert_eq!(composition_label(None, &mut notices), None);
    assert!(notices.is_empty());
    assert_eq!(composition_label(Some("not-a-uuid"), &mut notices), None);
    assert_eq!(
        notices,
        vec![Notice::InvalidCompositionLabel("not-a-uuid".into())]
    );
}

#[test]
fn the_stored_text_loses_nul_characters_and_what_the_policy_takes() {
    let mut notices = Vec::new();
    let clean = stored_text(
        obj("", r#","status":{"msg":"a\u0000b"}"#),
        &pods(),
        &FieldPolicy::default(),
        &mut notices,
    );
    assert_eq!(notices, vec![Notice::NulRemoved]);
    assert!(!clean.json.contains("\\u0000"));
    let untouched = obj("", "");
    let text = untouched.json.clone();
    let mut notices = Vec::new();
    let same = stored_text(untouched, &pods(), &FieldPolicy::default(), &mut notices);
    assert!(notices.is_empty());
    assert_eq!(same.json, text);
}
