use super::*;
use serde_json::{json, Value};

fn cm(ns: &str, name: &str, v: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"v": v}}, "data": {"v": v}})
}

#[test]
fn revisions_and_conflicts() {
    let s = Store::new(100);
    let a = s.create(cm("a", "x", "1")).unwrap();
    assert_eq!(a["metadata"]["resourceVersion"], "1");
    assert_eq!(a["apiVersion"], "v1");
    assert_eq!(s.create(cm("a", "x", "1")).unwrap_err().code, 409);
    let mut b = a.clone();
    b["data"]["v"] = "2".into();
    let b = s.update(b).unwrap();
    assert_eq!(b["metadata"]["resourceVersion"], "2");
    assert_eq!(b["metadata"]["uid"], a["metadata"]["uid"]);
    // stale update
    let mut c = a.clone();
    c["data"]["v"] = "3".into();
    let e = s.update(c).unwrap_err();
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    // no-op update: no new revision
    let same = s.update(b.clone()).unwrap();
    assert_eq!(same["metadata"]["resourceVersion"], "2");
    let d = s.delete("v1", "ConfigMap", Some("a"), "x").unwrap();
    assert_eq!(d["metadata"]["resourceVersion"], "3");
    assert!(s.get("v1", "ConfigMap", Some("a"), "x").is_none());
}

#[test]
fn paged_list_is_consistent() {
    let s = Store::new(1000);
    for i in 0..10 {
        s.create(cm("a", &format!("o{i}"), "1")).unwrap();
    }
    let def = s.def_for("v1", "ConfigMap").unwrap();
    let q = ListQuery {
        limit: 4,
        ..Default::default()
    };
    let p1 = s.list_in(&def, &q).unwrap();
    assert_eq!(p1.items.len(), 4);
    // writes after the first page must not show in later pages
    s.delete("v1", "ConfigMap", Some("a"), "o5").unwrap();
    s.create(cm("a", "o55", "1")).unwrap();
    let mut o7 = s.get("v1", "ConfigMap", Some("a"), "o7").unwrap();
    o7["data"]["v"] = "2".into();
    s.update(o7).unwrap();
    let mut names: Vec<String> = p1.items.iter().map(|o| o.name.to_string()).collect();
    let mut cont = p1.cont;
    while let Some(c) = cont {
        let p = s
            .list_in(
                &def,
                &ListQuery {
                    limit: 4,
                    cont: Some(c),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(p.rv, p1.rv);
        for o in &p.items {
            if &*o.name == "o7" {
                assert_eq!(o.to_value()["data"]["v"], "1");
            }
        }
        names.extend(p.items.iter().map(|o| o.name.to_string()));
        cont = p.cont;
    }
    let want: Vec<String> = (0..10).map(|i| format!("o{i}")).collect();
    assert_eq!(names, want);
    s.compact();
    let p = s.list_in(&def, &q).unwrap();
    let e = s
        .list_in(
            &def,
            &ListQuery {
                limit: 4,
                cont: p.cont.clone(),
                ..Default::default()
            },
        )
        .map(|_| ());
    assert!(e.is_ok());
    s.compact();
    let e = s
        .list_in(
            &def,
            &ListQuery {
                limit: 4,
                cont: p.cont,
                ..Default::default()
            },
        )
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code, 410);
}

#[test]
fn finalizers_and_namespace_cascade() {
    let s = Store::new(100);
    s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}))
        .unwrap();
    let mut f = cm("a", "f", "1");
    f["metadata"]["finalizers"] = json!(["x/y"]);
    s.create(f).unwrap();
    let d = s.delete("v1", "ConfigMap", Some("a"), "f").unwrap();
    assert!(d["metadata"]["deletionTimestamp"].is_string());
    let mut d2 = d.clone();
    d2["metadata"]["finalizers"] = json!([]);
    s.update(d2).unwrap();
    assert!(s.get("v1", "ConfigMap", Some("a"), "f").is_none());
    s.create(cm("a", "g", "1")).unwrap();
    s.create(cm("b", "g", "1")).unwrap();
    s.delete("v1", "Namespace", None, "a").unwrap();
    assert_eq!(s.len(), 1);
}

/// Every stored object of `s`: (resource, key) → the object.
fn stored(s: &Store) -> Vec<(Arc<str>, Key, Arc<Obj>)> {
    let g = s.read();
    let mut out: Vec<_> = g
        .objects
        .iter()
        .flat_map(|(res, m)| m.iter().map(|(k, o)| (res.clone(), k.clone(), o.clone())))
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// `b`'s body with its uid and creationTimestamp (the server's random and clock fields) replaced
/// by `a`'s, so two creates of one object compare byte for byte.
fn with_server_fields_of(a: &Obj, b: &Obj) -> Vec<u8> {
    let (ma, mb) = (a.body_value(), b.body_value());
    let mut text = String::from_utf8(b.body.to_vec()).expect("utf-8");
    for f in ["uid", "creationTimestamp"] {
        if let (Some(x), Some(y)) = (ma["metadata"][f].as_str(), mb["metadata"][f].as_str()) {
            text = text.replace(&format!("\"{y}\""), &format!("\"{x}\""));
        }
    }
    text.into_bytes()
}

/// Loads `objs` through `create_many` and through `create_many_json` and checks both stores
/// hold the same objects, byte for byte, and report the same outcome.
fn assert_both_paths_store_the_same(objs: &[Value], preserve: bool) {
    let by_value = Store::new(100_000);
    let by_json = Store::new(100_000);
    let a = by_value.create_many(objs.iter().cloned(), preserve);
    let bytes: Vec<Vec<u8>> = objs
        .iter()
        .map(|o| serde_json::to_vec(o).unwrap())
        .collect();
    let b = by_json.create_many_json(&bytes, preserve);
    assert_eq!(a.0, b.0, "created");
    assert_eq!(
        a.1.map(|e| e.message),
        b.1.map(|e| e.message),
        "first error"
    );
    let (sa, sb) = (stored(&by_value), stored(&by_json));
    assert_eq!(sa.len(), sb.len());
    for ((ra, ka, oa), (rb, kb, ob)) in sa.iter().zip(&sb) {
        assert_eq!((ra, ka), (rb, kb));
        let body = with_server_fields_of(oa, ob);
        assert!(
            oa.body[..] == body[..],
            "{ka:?}:\n{}\n{}",
            String::from_utf8_lossy(&oa.body),
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            (
                &oa.ns,
                &oa.name,
                &oa.labels,
                oa.rv,
                &oa.api_version,
                &oa.kind
            ),
            (
                &ob.ns,
                &ob.name,
                &ob.labels,
                ob.rv,
                &ob.api_version,
                &ob.kind
            )
        );
    }
    assert_eq!(by_value.resource_version(), by_json.resource_version());
}

#[test]
fn reference_pods_from_bytes_are_stored_as_from_values() {
    use crate::workload::reference::{namespace, PodGen, Size};
    for size in [Size::Small, Size::Realistic, Size::Large] {
        let gen = PodGen::new(size);
        let objs: Vec<Value> = (0..2)
            .map(namespace)
            .chain((990..1010).map(|i| gen.pod(i)))
            .collect();
        assert_both_paths_store_the_same(&objs, false);
    }
}

#[test]
fn objects_the_byte_path_hands_on_are_stored_as_from_values() {
    let ns = |n: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}});
    let objs = vec![
        ns("a"),
        // a member before metadata, empty labels and annotations (left out when stored)
        json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"},
               "metadata": {"name": "c1", "namespace": "a", "labels": {}, "annotations": {}, "finalizers": []}}),
        // no namespace (the default one), a given uid and generation the create replaces
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "c2", "uid": "given", "generation": 7, "resourceVersion": "99"}}),
        // escapes (the Value path), a generated name, a Secret (a kind with defaults)
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c3", "namespace": "a"},
               "data": {"q": "say \"hi\"\n"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "g-", "namespace": "a"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "a"}}),
        // cluster-scoped: its namespace goes; a deployment gets a generation
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "r", "namespace": "a", "labels": {"x": "1"}}, "rules": []}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "a",
               "deletionTimestamp": "2025-01-01T00:00:00Z"}, "spec": {"replicas": 1}}),
        // errors: a duplicate, a bad name, an unknown kind
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "namespace": "a"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a/b", "namespace": "a"}}),
        json!({"apiVersion": "example.com/v1", "kind": "Nope", "metadata": {"name": "n"}}),
    ];
    // generateName picks a random suffix: compare the rest
    let fixed: Vec<Value> = objs
        .iter()
        .filter(|o| o["metadata"]["generateName"].is_null())
        .cloned()
        .collect();
    assert_both_paths_store_the_same(&fixed, false);
    assert_both_paths_store_the_same(&fixed, true);
    let made = Store::new(100);
    let bytes: Vec<Vec<u8>> = objs
        .iter()
        .map(|o| serde_json::to_vec(o).unwrap())
        .collect();
    assert_eq!(made.create_many_json(&bytes, false).0, objs.len() - 3);
    assert_eq!(made.names("v1", "ConfigMap").len(), 4);
}
