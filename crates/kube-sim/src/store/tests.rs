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
