use super::*;
use serde_json::{json, Value};

fn prune(spec: &str) -> FieldPolicy {
    FieldPolicy::new(
        true,
        &SensitiveKinds::default(),
        &spec.parse().expect("valid PRUNE_FIELDS"),
    )
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).expect("valid JSON")
}

const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"app":"x"},"managedFields":[{"manager":"kubectl","fieldsV1":{"f:metadata":{}}}],"annotations":{"a":"b"}},"spec":{"containers":[{"name":"c","env":[{"name":"A","value":"1"}]},{"name":"d"},"not-an-object"]},"status":{"phase":"Running","podIP":"10.0.0.1"}}"#;

#[test]
fn a_nested_path_is_dropped_and_the_rest_kept_as_text() {
    let a = prune("metadata.managedFields")
        .apply("", "Pod", POD)
        .expect("changed");
    let mut want = parse(POD);
    want["metadata"]
        .as_object_mut()
        .expect("object")
        .remove("managedFields");
    assert_eq!(parse(&a.json), want);
    // Members off the path are copied byte for byte.
    assert!(a.json.contains(
        r#""spec":{"containers":[{"name":"c","env":[{"name":"A","value":"1"}]},{"name":"d"},"not-an-object"]}"#
    ));
    let dropped = r#""managedFields":[{"manager":"kubectl","fieldsV1":{"f:metadata":{}}}]"#;
    assert_eq!(a.pruned_bytes, dropped.len() as u64);
    assert_eq!(a.json.len() + dropped.len() + 1, POD.len(), "and one comma");
    assert_eq!(a.redacted, 0);
    assert_eq!(
        &a.json[a.status.clone().expect("status")],
        r#"{"phase":"Running","podIP":"10.0.0.1"}"#
    );
}

#[test]
fn an_absent_path_changes_nothing() {
    let p = prune("metadata.ownerReferences,spec.nodeSelector.zone,nothing.here");
    assert_eq!(p.apply("", "Pod", POD), None);
    assert_eq!(prune("").apply("", "Pod", POD), None);
}

#[test]
fn arrays_apply_the_rest_of_the_path_to_each_element() {
    let a = prune("spec.containers.env")
        .apply("", "Pod", POD)
        .expect("changed");
    let v = parse(&a.json);
    assert_eq!(
        v["spec"]["containers"],
        json!([{"name": "c"}, {"name": "d"}, "not-an-object"])
    );
}

#[test]
fn the_status_range_follows_a_rewrite_inside_and_before_it() {
    let a = prune("status.podIP,metadata.annotations")
        .apply("", "Pod", POD)
        .expect("changed");
    assert_eq!(
        &a.json[a.status.clone().expect("status")],
        r#"{"phase":"Running"}"#
    );
    let a = prune("status").apply("", "Pod", POD).expect("changed");
    assert_eq!(a.status, None);
    assert!(parse(&a.json).get("status").is_none());
}

#[test]
fn per_kind_paths_apply_to_that_kind_only() {
    let p = prune("apps/Deployment:spec.template.metadata.annotations,/Pod:spec");
    let deploy = r#"{"kind":"Deployment","metadata":{"name":"d","labels":{"l":"1"}},"spec":{"replicas":2,"template":{"metadata":{"annotations":{"x":"y"},"labels":{"l":"1"}}}}}"#;
    let a = p.apply("apps", "Deployment", deploy).expect("changed");
    assert_eq!(
        parse(&a.json)["spec"],
        json!({"replicas": 2, "template": {"metadata": {"labels": {"l": "1"}}}})
    );
    assert_eq!(p.apply("apps", "StatefulSet", deploy), None);
    let a = p.apply("", "Pod", POD).expect("changed");
    assert!(parse(&a.json).get("spec").is_none());
    assert_eq!(
        p.apply("other.io", "Pod", POD),
        None,
        "a group is part of a kind"
    );
}

#[test]
fn keys_and_values_with_escapes_and_unicode_survive() {
    let text = r#"{"metadata":{"name":"n","annotations":{"é\"q":"line\nbreak \u00e9 \ud83d\ude00 \\ end","example.com/x":"y"},"managedFields":[]},"ünï":"\u2028"}"#;
    let a = prune(r"metadata.managedFields,metadata.annotations.example\.com/x")
        .apply("", "Pod", text)
        .expect("changed");
    let mut want = parse(text);
    let meta = want["metadata"].as_object_mut().expect("object");
    meta.remove("managedFields");
    meta["annotations"]
        .as_object_mut()
        .expect("object")
        .remove("example.com/x");
    assert_eq!(parse(&a.json), want);
    // A value off the path keeps its escapes as written.
    assert!(a.json.contains(r#""ünï":"\u2028""#));
    // A key escaped in the source matches its decoded name.
    let a = prune("metadata.annotations.é\"q")
        .apply("", "Pod", text)
        .expect("changed");
    assert!(parse(&a.json)["metadata"]["annotations"]
        .get("é\"q")
        .is_none());
}

fn secret(extra: &str) -> String {
    let last_applied = json!({"apiVersion":"v1","kind":"Secret","data":{"password":"czNjcjN0"},"stringData":{"token":"plain-token"}}).to_string();
    format!(
        r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"s","labels":{{"app":"x"}},"annotations":{{"keep":"me",{}:{}}}}},"type":"Opaque"{extra}}}"#,
        serde_json::to_string(LAST_APPLIED).expect("json"),
        serde_json::to_string(&last_applied).expect("json"),
    )
}

#[test]
fn secrets_keep_their_keys_and_lose_their_values() {
    let text = secret(
        r#","data":{"password":"czNjcjN0","empty":"","nul":null},"stringData":{"token":"plain-token"}"#,
    );
    let a = FieldPolicy::default()
        .apply("", "Secret", &text)
        .expect("changed");
    let v = parse(&a.json);
    assert_eq!(
        v["data"],
        json!({"password": REDACTED, "empty": REDACTED, "nul": null})
    );
    assert_eq!(v["stringData"], json!({"token": REDACTED}));
    assert_eq!(v["metadata"]["annotations"][LAST_APPLIED], json!(REDACTED));
    assert_eq!(v["metadata"]["annotations"]["keep"], "me");
    assert_eq!(v["metadata"]["labels"], json!({"app": "x"}));
    assert_eq!(v["type"], "Opaque");
    assert_eq!(a.redacted, 4);
    for secret in ["czNjcjN0", "plain-token", "s3cr3t"] {
        assert!(!a.json.contains(secret), "{secret} in {}", a.json);
    }
}

#[test]
fn a_secret_without_data_loses_only_the_annotation() {
    let a = FieldPolicy::default()
        .apply("", "Secret", &secret(""))
        .expect("changed");
    assert_eq!(a.redacted, 1);
    assert!(parse(&a.json).get("data").is_none());
    let bare = r#"{"kind":"Secret","metadata":{"name":"s"},"type":"Opaque"}"#;
    assert_eq!(FieldPolicy::default().apply("", "Secret", bare), None);
    let null_data = r#"{"kind":"Secret","metadata":{"name":"s"},"data":null}"#;
    assert_eq!(FieldPolicy::default().apply("", "Secret", null_data), None);
}

#[test]
fn redaction_off_and_other_kinds_leave_secrets_alone() {
    let text = secret(r#","data":{"password":"czNjcjN0"}"#);
    let off = FieldPolicy::new(false, &SensitiveKinds::default(), &PruneFields::default());
    assert_eq!(off.apply("", "Secret", &text), None);
    assert_eq!(FieldPolicy::default().apply("", "ConfigMap", &text), None);
    let custom = FieldPolicy::new(
        true,
        &"example.io/Credential".parse().expect("valid"),
        &PruneFields::default(),
    );
    assert!(custom.apply("example.io", "Credential", &text).is_some());
    assert_eq!(custom.apply("", "Secret", &text), None);
}

#[test]
fn a_secret_is_redacted_and_pruned_together() {
    let text = secret(r#","data":{"password":"czNjcjN0"}"#);
    let p = prune("metadata.annotations");
    let a = p.apply("", "Secret", &text).expect("changed");
    let v = parse(&a.json);
    assert!(v["metadata"].get("annotations").is_none(), "drop wins");
    assert_eq!(v["data"]["password"], REDACTED);
    assert_eq!(a.redacted, 1);
    assert!(a.pruned_bytes > 0);
}

#[test]
fn a_pruned_key_of_a_redacted_object_is_dropped() {
    let text = secret(r#","data":{"password":"czNjcjN0","ca.crt":"Y2E="}"#);
    let a = prune(r"/Secret:data.ca\.crt")
        .apply("", "Secret", &text)
        .expect("changed");
    assert_eq!(parse(&a.json)["data"], json!({"password": REDACTED}));
    assert_eq!(a.pruned_bytes, r#""ca.crt":"Y2E=""#.len() as u64);
}

#[test]
fn labels_and_identity_are_never_prunable() {
    for bad in [
        "metadata.labels",
        "metadata",
        "metadata.labels.app",
        "apps/Deployment:metadata.labels",
        "metadata.name",
        "metadata.uid",
        "kind",
    ] {
        let e = bad
            .parse::<PruneFields>()
            .expect_err(&format!("{bad} must be refused"));
        assert!(e.contains("never pruned"), "{bad}: {e} should say why");
    }
    let e = "metadata.labels"
        .parse::<PruneFields>()
        .expect_err("refused");
    assert!(e.contains("raw->'metadata'->'labels'"), "{e}");
    // Labels of a template are not the object's labels.
    "spec.template.metadata.labels"
        .parse::<PruneFields>()
        .expect("allowed");
}

#[test]
fn malformed_settings_are_refused() {
    for bad in [
        "metadata..managedFields",
        ".x",
        "x.",
        "Deployment:spec",
        "apps/:spec",
        "apps/Deploy ment:spec",
        r"a\b",
    ] {
        assert!(bad.parse::<PruneFields>().is_err(), "{bad}");
    }
    let many = vec!["a"; MAX_PRUNE_ENTRIES + 1].join(",");
    assert!(many.parse::<PruneFields>().is_err());
    let deep = vec!["a"; MAX_PATH_DEPTH + 1].join(".");
    assert!(deep.parse::<PruneFields>().is_err());
    assert!("Secret".parse::<SensitiveKinds>().is_err());
    assert_eq!(
        " /Secret, example.io/Token ,/Secret"
            .parse::<SensitiveKinds>()
            .expect("valid")
            .0,
        vec![
            KindRef::new("", "Secret"),
            KindRef::new("example.io", "Token")
        ]
    );
    assert!("".parse::<SensitiveKinds>().expect("valid").0.is_empty());
    let p: PruneFields = r"metadata.managedFields, apps/Deployment:metadata.annotations.a\.b"
        .parse()
        .expect("valid");
    assert_eq!(
        p.all,
        vec![FieldPath(vec!["metadata".into(), "managedFields".into()])]
    );
    assert_eq!(
        p.by_kind,
        vec![(
            KindRef::new("apps", "Deployment"),
            FieldPath(vec!["metadata".into(), "annotations".into(), "a.b".into()])
        )]
    );
}

#[test]
fn settings_print_as_they_parse() {
    let text = r"metadata.managedFields,metadata.annotations.a\.b\\c,apps/Deployment:spec";
    let p: PruneFields = text.parse().expect("valid");
    assert_eq!(p.all[1].0[2], r"a.b\c");
    assert_eq!(p.to_string(), text);
    assert_eq!(p.to_string().parse::<PruneFields>(), Ok(p));
    assert_eq!(SensitiveKinds::default().to_string(), "/Secret");
}

#[test]
fn text_that_is_not_an_object_is_left_alone() {
    let p = prune("metadata.managedFields");
    assert_eq!(p.apply("", "Pod", "[1,2]"), None);
    assert_eq!(p.apply("", "Pod", "{not json"), None);
}
