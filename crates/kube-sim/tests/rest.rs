//! The REST protocol over plain HTTP: paging, selectors, errors, watches, faults, cascades, auth.

mod common;

use common::*;
use kube_sim::{KubeSim, SimConfig};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn get(sim: &KubeSim, path: &str) -> (u16, Value) {
    let r = http()
        .get(format!("{}{path}", sim.base_url()))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

async fn send(
    sim: &KubeSim,
    method: reqwest::Method,
    path: &str,
    ct: &str,
    body: Value,
) -> (u16, Value) {
    let r = http()
        .request(method, format!("{}{path}", sim.base_url()))
        .header("content-type", ct)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn assert_status(v: &Value, code: u16, reason: &str) {
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1", "{v}");
    assert_eq!(v["status"], "Failure", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert!(v["message"].is_string(), "{v}");
}

/// An open watch as a stream of parsed events.
struct Watch {
    buf: Vec<u8>,
    body: reqwest::Response,
}

impl Watch {
    async fn open(sim: &KubeSim, path: &str) -> Watch {
        let r = http()
            .get(format!("{}{path}", sim.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        Watch {
            buf: Vec::new(),
            body: r,
        }
    }

    /// Next event, or None when the server closed the stream.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("event is JSON"));
            }
            match tokio::time::timeout(DEADLINE, self.body.chunk())
                .await
                .expect("watch stalled")
            {
                Ok(Some(b)) => self.buf.extend_from_slice(&b),
                _ => return None,
            }
        }
    }

    async fn next_non_bookmark(&mut self) -> Option<Value> {
        loop {
            let e = self.next().await?;
            if e["type"] != "BOOKMARK" {
                return Some(e);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_is_consistent_while_writes_happen() {
    let sim = start().await;
    let store = sim.store();
    for i in 0..50 {
        store
            .create(cm("a", &format!("cm-{i:02}"), json!({})))
            .unwrap();
    }
    let (code, p1) = get(&sim, "/api/v1/configmaps?limit=10").await;
    assert_eq!(code, 200);
    assert_eq!(p1["kind"], "ConfigMapList");
    let rv = p1["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut all = names(&p1);
    // writes between pages
    store.delete("v1", "ConfigMap", Some("a"), "cm-30").unwrap();
    store.create(cm("a", "cm-31b", json!({}))).unwrap();
    store
        .merge_patch(
            "v1",
            "ConfigMap",
            Some("a"),
            "cm-40",
            &json!({"data": {"k": "new"}}),
        )
        .unwrap();
    let mut cont = p1["metadata"]["continue"].as_str().map(String::from);
    while let Some(c) = cont {
        let (code, p) = get(
            &sim,
            &format!("/api/v1/namespaces/a/configmaps?limit=10&continue={c}"),
        )
        .await;
        assert_eq!(code, 200, "{p}");
        assert_eq!(p["metadata"]["resourceVersion"], rv.as_str());
        for item in p["items"].as_array().unwrap() {
            if item["metadata"]["name"] == "cm-40" {
                assert_eq!(
                    item["data"]["k"], "v",
                    "page must show the state at the list's revision"
                );
            }
        }
        all.extend(names(&p));
        cont = p["metadata"]["continue"].as_str().map(String::from);
    }
    let want: Vec<String> = (0..50).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(all, want);
    // a fresh list sees the writes
    let (_, now) = get(&sim, "/api/v1/namespaces/a/configmaps").await;
    assert_eq!(now["items"].as_array().unwrap().len(), 50);
    assert!(names(&now).contains(&"cm-31b".to_string()));

    // an expired continue token: 410 Expired
    let (_, p) = get(&sim, "/api/v1/configmaps?limit=5").await;
    let c = p["metadata"]["continue"].as_str().unwrap().to_string();
    http()
        .post(format!("{}/_sim/compact", sim.base_url()))
        .send()
        .await
        .unwrap();
    let (code, s) = get(&sim, &format!("/api/v1/configmaps?limit=5&continue={c}")).await;
    assert_eq!(code, 410);
    assert_status(&s, 410, "Expired");
    let (code, s) = get(&sim, "/api/v1/configmaps?continue=garbage").await;
    assert_eq!(code, 400);
    assert_status(&s, 400, "BadRequest");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_field_selectors() {
    let sim = start().await;
    let s = sim.store();
    s.create(cm("a", "p1", json!({"env": "prod", "tier": "web"})))
        .unwrap();
    s.create(cm("a", "p2", json!({"env": "dev", "tier": "db"})))
        .unwrap();
    s.create(cm("b", "p3", json!({"env": "staging"}))).unwrap();
    s.create(cm("b", "p4", json!({}))).unwrap();
    let cases = [
        ("labelSelector=env%3Dprod", vec!["p1"]),
        ("labelSelector=env%3D%3Dprod", vec!["p1"]),
        ("labelSelector=env!%3Dprod", vec!["p2", "p3", "p4"]),
        ("labelSelector=env%20in%20(dev,staging)", vec!["p2", "p3"]),
        (
            "labelSelector=env%20notin%20(dev,staging)",
            vec!["p1", "p4"],
        ),
        ("labelSelector=tier", vec!["p1", "p2"]),
        ("labelSelector=!tier", vec!["p3", "p4"]),
        ("labelSelector=env,tier%3Ddb", vec!["p2"]),
        ("fieldSelector=metadata.name%3Dp3", vec!["p3"]),
        ("fieldSelector=metadata.namespace%3Da", vec!["p1", "p2"]),
        (
            "fieldSelector=metadata.namespace!%3Da,metadata.name!%3Dp3",
            vec!["p4"],
        ),
    ];
    for (q, want) in cases {
        let (code, l) = get(&sim, &format!("/api/v1/configmaps?{q}")).await;
        assert_eq!(code, 200, "{q}: {l}");
        assert_eq!(names(&l), want, "{q}");
    }
    let (code, e) = get(&sim, "/api/v1/configmaps?labelSelector=env%20in%20(a").await;
    assert_eq!(code, 400);
    assert_status(&e, 400, "BadRequest");
    let (code, e) = get(&sim, "/api/v1/configmaps?fieldSelector=spec.nodeName%3Dx").await;
    assert_eq!(code, 400);
    assert_status(&e, 400, "BadRequest");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_conflicts_and_error_shapes() {
    let sim = start().await;
    let base = "/api/v1/namespaces/a/configmaps";
    let (code, created) = send(
        &sim,
        reqwest::Method::POST,
        base,
        "application/json",
        cm("a", "x", json!({})),
    )
    .await;
    assert_eq!(code, 201);
    for f in ["uid", "creationTimestamp", "resourceVersion"] {
        assert!(created["metadata"][f].is_string(), "{f}: {created}");
    }
    // a ConfigMap has no generation on the real server
    assert!(created["metadata"].get("generation").is_none(), "{created}");
    let (code, e) = send(
        &sim,
        reqwest::Method::POST,
        base,
        "application/json",
        cm("a", "x", json!({})),
    )
    .await;
    assert_eq!(code, 409);
    assert_status(&e, 409, "AlreadyExists");
    assert_eq!(e["details"]["name"], "x");

    // generateName
    let gen = json!({"metadata": {"generateName": "job-"}, "data": {}});
    let (code, g) = send(&sim, reqwest::Method::POST, base, "application/json", gen).await;
    assert_eq!(code, 201);
    let gname = g["metadata"]["name"].as_str().unwrap();
    assert!(gname.starts_with("job-") && gname.len() == 9, "{gname}");

    // PUT with the current resourceVersion, then a stale one
    let mut upd = created.clone();
    upd["data"]["k"] = "2".into();
    let (code, updated) = send(
        &sim,
        reqwest::Method::PUT,
        &format!("{base}/x"),
        "application/json",
        upd.clone(),
    )
    .await;
    assert_eq!(code, 200);
    assert_ne!(
        updated["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    let (code, e) = send(
        &sim,
        reqwest::Method::PUT,
        &format!("{base}/x"),
        "application/json",
        upd,
    )
    .await;
    assert_eq!(code, 409);
    assert_status(&e, 409, "Conflict");

    // merge patch, JSON patch, apply
    let (code, p) = send(
        &sim,
        reqwest::Method::PATCH,
        &format!("{base}/x"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"a": "1"}}}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(p["metadata"]["labels"]["a"], "1");
    let (code, p) = send(
        &sim,
        reqwest::Method::PATCH,
        &format!("{base}/x"),
        "application/json-patch+json",
        json!([{"op": "replace", "path": "/data/k", "value": "3"}]),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(p["data"]["k"], "3");
    let (code, p) = send(&sim, reqwest::Method::PATCH, &format!("{base}/applied?fieldManager=t"), "application/apply-patch+yaml",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "b"}})).await;
    assert_eq!(code, 201, "{p}");
    assert_eq!(p["metadata"]["namespace"], "a");

    // 404, 422, 400, 405-ish
    let (code, e) = get(&sim, &format!("{base}/nope")).await;
    assert_eq!(code, 404);
    assert_status(&e, 404, "NotFound");
    assert_eq!(e["message"], "configmaps \"nope\" not found");
    let (code, e) = send(
        &sim,
        reqwest::Method::POST,
        base,
        "application/json",
        json!({"data": {}}),
    )
    .await;
    assert_eq!(code, 422);
    assert_status(&e, 422, "Invalid");
    let (code, e) = send(
        &sim,
        reqwest::Method::POST,
        base,
        "application/json",
        json!("not an object"),
    )
    .await;
    assert_eq!(code, 400);
    assert_status(&e, 400, "BadRequest");
    let (code, e) = get(&sim, "/apis/nope.io/v1/things").await;
    assert_eq!(code, 404);
    assert_status(&e, 404, "NotFound");

    // DELETE returns the object with the deletion revision
    let before = sim.store().resource_version();
    let (code, d) = send(
        &sim,
        reqwest::Method::DELETE,
        &format!("{base}/x"),
        "application/json",
        json!({}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(d["kind"], "ConfigMap");
    assert_eq!(d["metadata"]["resourceVersion"], (before + 1).to_string());

    // finalizers: delete marks, removing the last finalizer removes
    let mut f = cm("a", "fin", json!({}));
    f["metadata"]["finalizers"] = json!(["example.com/hold"]);
    send(&sim, reqwest::Method::POST, base, "application/json", f).await;
    let (code, d) = send(
        &sim,
        reqwest::Method::DELETE,
        &format!("{base}/fin"),
        "application/json",
        json!({}),
    )
    .await;
    assert_eq!(code, 200);
    assert!(d["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(get(&sim, &format!("{base}/fin")).await.0, 200);
    send(
        &sim,
        reqwest::Method::PATCH,
        &format!("{base}/fin"),
        "application/merge-patch+json",
        json!({"metadata": {"finalizers": null}}),
    )
    .await;
    assert_eq!(get(&sim, &format!("{base}/fin")).await.0, 404);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_protocol() {
    let sim = start().await;
    let s = sim.store();
    let c0 = s.create(cm("a", "w0", json!({"app": "x"}))).unwrap();
    let rv0 = c0["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    s.create(cm("a", "w1", json!({"app": "x"}))).unwrap();

    // from a revision: strictly later events only, with bookmarks
    let mut w = Watch::open(&sim, &format!("/api/v1/namespaces/a/configmaps?watch=true&resourceVersion={rv0}&allowWatchBookmarks=true")).await;
    let e = w.next_non_bookmark().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("w1"))
    );
    assert_eq!(e["object"]["apiVersion"], "v1");
    assert_eq!(e["object"]["kind"], "ConfigMap");
    let b = loop {
        let e = w.next().await.unwrap();
        if e["type"] == "BOOKMARK" {
            break e;
        }
    };
    assert_eq!(b["object"]["kind"], "ConfigMap");
    assert_eq!(
        b["object"]["metadata"]["resourceVersion"],
        s.resource_version().to_string()
    );
    let d = s.delete("v1", "ConfigMap", Some("a"), "w0").unwrap();
    let e = w.next_non_bookmark().await.unwrap();
    assert_eq!(e["type"], "DELETED");
    assert_eq!(
        e["object"]["metadata"]["resourceVersion"],
        d["metadata"]["resourceVersion"]
    );

    // no revision: synthetic ADDED for the current state first
    let mut w2 = Watch::open(&sim, "/api/v1/configmaps?watch=1").await;
    let e = w2.next().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("w1"))
    );

    // streaming list: ADDED then the initial-events-end bookmark
    let mut w3 = Watch::open(&sim, "/api/v1/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true").await;
    assert_eq!(w3.next().await.unwrap()["type"], "ADDED");
    let b = w3.next().await.unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(
        b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // selectors on events: leaving the selection is DELETED
    let mut w4 = Watch::open(
        &sim,
        &format!(
            "/api/v1/configmaps?watch=1&labelSelector=app%3Dx&resourceVersion={}",
            s.resource_version()
        ),
    )
    .await;
    s.merge_patch(
        "v1",
        "ConfigMap",
        Some("a"),
        "w1",
        &json!({"metadata": {"labels": {"app": "y"}}}),
    )
    .unwrap();
    let e = w4.next().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("w1"))
    );

    // timeoutSeconds closes the stream
    let t = Instant::now();
    let mut w5 = Watch::open(
        &sim,
        &format!(
            "/api/v1/configmaps?watch=1&timeoutSeconds=1&resourceVersion={}",
            s.resource_version()
        ),
    )
    .await;
    assert!(w5.next().await.is_none());
    assert!(t.elapsed() >= Duration::from_millis(900));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_revision_gets_410_error_event() {
    let sim = start_with(SimConfig {
        history: 3,
        // the revisions are named below: h0..h5 at 1..6
        system_namespace: false,
        ..Default::default()
    })
    .await;
    let s = sim.store();
    for i in 0..6 {
        s.create(cm("a", &format!("h{i}"), json!({}))).unwrap();
    }
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&resourceVersion=1").await;
    let e = w.next().await.unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_status(&e["object"], 410, "Expired");
    assert_eq!(e["object"]["message"], "too old resource version: 1 (3)");
    assert!(
        w.next().await.is_none(),
        "the stream closes after the ERROR event"
    );
    // within the history it works
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&resourceVersion=4").await;
    assert_eq!(w.next().await.unwrap()["object"]["metadata"]["name"], "h4");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_endpoints() {
    let sim = start().await;
    let s = sim.store();
    let url = |p: &str| format!("{}{p}", sim.base_url());
    let c = http();
    // fail: the next N API requests get 500
    assert_eq!(
        c.post(url("/_sim/fail?count=2"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for _ in 0..2 {
        let (code, e) = get(&sim, "/api/v1/pods").await;
        assert_eq!(code, 500);
        assert_status(&e, 500, "InternalError");
    }
    assert_eq!(get(&sim, "/api/v1/pods").await.0, 200);

    // delay
    c.post(url("/_sim/delay?ms=300")).send().await.unwrap();
    let t = Instant::now();
    assert_eq!(get(&sim, "/api/v1/pods").await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    c.post(url("/_sim/delay?ms=0")).send().await.unwrap();
    assert_eq!(s.stats().delay_ms, 0);

    // drop-watches closes open watches
    let rv = s.resource_version();
    let mut w = Watch::open(&sim, &format!("/api/v1/pods?watch=1&resourceVersion={rv}")).await;
    let st = s.clone();
    wait_for("the watch to open", || {
        let st = st.clone();
        async move { (st.stats().open_watches == 1).then_some(()) }
    })
    .await;
    let r: Value = c
        .post(url("/_sim/drop-watches"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["dropped"], 1);
    assert!(w.next().await.is_none());

    // compact: resuming from the old revision gets 410, lists keep working
    s.create(cm("a", "x", json!({}))).unwrap();
    let old = s.resource_version();
    c.post(url("/_sim/compact")).send().await.unwrap();
    let mut w = Watch::open(
        &sim,
        &format!("/api/v1/configmaps?watch=1&resourceVersion={old}"),
    )
    .await;
    let e = w.next().await.unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_status(&e["object"], 410, "Expired");
    let (code, l) = get(&sim, "/api/v1/configmaps").await;
    assert_eq!(code, 200);
    assert_eq!(names(&l), ["x"]);
    let stats: Value = c
        .get(url("/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["objects"], 2, "x and namespace kube-system");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_and_namespace_delete_cascade() {
    let sim = start().await;
    let s = sim.store();
    let crd = kube_sim::workload::krateo_crds().remove(0);
    let (code, created) = send(
        &sim,
        reqwest::Method::POST,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "application/json",
        crd,
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(created["status"]["conditions"][1]["type"], "Established");
    let (code, disc) = get(&sim, "/apis/composition.krateo.io/v1alpha2").await;
    assert_eq!(code, 200);
    assert_eq!(disc["resources"][0]["kind"], "FireworksApp");
    let (_, groups) = get(&sim, "/apis").await;
    let g = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "composition.krateo.io")
        .unwrap()
        .clone();
    assert_eq!(g["preferredVersion"]["version"], "v1alpha2");
    for i in 0..3 {
        let cr = json!({"apiVersion": "composition.krateo.io/v1alpha2", "kind": "FireworksApp",
            "metadata": {"name": format!("f{i}"), "namespace": "demo"}, "spec": {}});
        let (code, _) = send(
            &sim,
            reqwest::Method::POST,
            "/apis/composition.krateo.io/v1alpha2/namespaces/demo/fireworksapps",
            "application/json",
            cr,
        )
        .await;
        assert_eq!(code, 201);
    }
    let mut w = Watch::open(
        &sim,
        &format!(
            "/apis/composition.krateo.io/v1alpha2/fireworksapps?watch=1&resourceVersion={}",
            s.resource_version()
        ),
    )
    .await;
    let (code, _) = send(&sim, reqwest::Method::DELETE, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/fireworksapps.composition.krateo.io", "application/json", json!({})).await;
    assert_eq!(code, 200);
    let mut deleted = Vec::new();
    for _ in 0..3 {
        let e = w.next().await.unwrap();
        assert_eq!(e["type"], "DELETED");
        deleted.push(
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(deleted, ["f0", "f1", "f2"]);
    assert_eq!(
        get(&sim, "/apis/composition.krateo.io/v1alpha2").await.0,
        404
    );
    let (_, groups) = get(&sim, "/apis").await;
    assert!(!groups.to_string().contains("composition.krateo.io"));
    assert_eq!(
        get(&sim, "/apis/composition.krateo.io/v1alpha2/fireworksapps")
            .await
            .0,
        404
    );

    // namespace cascade
    s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gone"}}))
        .unwrap();
    s.create(cm("gone", "a", json!({}))).unwrap();
    s.create(cm("gone", "b", json!({}))).unwrap();
    s.create(cm("kept", "c", json!({}))).unwrap();
    let mut w = Watch::open(
        &sim,
        &format!(
            "/api/v1/configmaps?watch=1&resourceVersion={}",
            s.resource_version()
        ),
    )
    .await;
    let (code, ns) = send(
        &sim,
        reqwest::Method::DELETE,
        "/api/v1/namespaces/gone",
        "application/json",
        json!({}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(ns["kind"], "Namespace");
    for want in ["a", "b"] {
        let e = w.next().await.unwrap();
        assert_eq!(
            (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
            (Some("DELETED"), Some(want))
        );
    }
    assert_eq!(names(&get(&sim, "/api/v1/configmaps").await.1), ["c"]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_requires_authentication() {
    let sim = start_with(SimConfig {
        tls: true,
        ..Default::default()
    })
    .await;
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().unwrap().as_bytes()).unwrap();
    let url = format!("{}/api/v1/pods", sim.base_url());
    let anon = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    let r = anon.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_status(&r.json().await.unwrap(), 401, "Unauthorized");
    let r = anon.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = anon
        .get(&url)
        .bearer_auth(sim.token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (cert, key) = sim.client_identity_pem().unwrap();
    let id = reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap();
    let with_cert = reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(id)
        .build()
        .unwrap();
    assert_eq!(with_cert.get(&url).send().await.unwrap().status(), 200);
    // and kube-rs with the kubeconfig (client certificate)
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(kube_client(&sim).await);
    assert!(pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_lists_stream_and_workload_churns() {
    let sim = start().await;
    let s = sim.store();
    let cfg = kube_sim::workload::WorkloadConfig {
        pods: 400,
        custom_resources: 40,
        ..Default::default()
    };
    let r = kube_sim::workload::preload(&s, &cfg);
    assert_eq!(r.errors, 0);
    let (code, l) = get(&sim, "/api/v1/pods").await;
    assert_eq!(code, 200);
    assert_eq!(l["items"].as_array().unwrap().len(), 400);
    assert!(l["items"]
        .as_array()
        .unwrap()
        .iter()
        // a typed list's items carry no kind, as on the real server
        .all(|p| p.get("kind").is_none() && p["metadata"]["name"].is_string()));
    // churn stamps changed-at on what it touches
    let rv = s.resource_version();
    let cancel = tokio_util::sync::CancellationToken::new();
    let rep = kube_sim::workload::churn(
        s.clone(),
        200.0,
        Some(Duration::from_millis(500)),
        7,
        cancel,
    )
    .await;
    assert!(rep.updates > 0 && rep.errors == 0, "{rep:?}");
    let mut w = Watch::open(&sim, &format!("/api/v1/pods?watch=1&resourceVersion={rv}")).await;
    let e = w.next().await.unwrap();
    let stamp = e["object"]["metadata"]["annotations"][kube_sim::workload::CHANGED_AT]
        .as_str()
        .unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
        "{stamp}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_refused_when_the_watch_list_gate_is_off() {
    let sim = start_with(SimConfig {
        watch_list: false,
        ..Default::default()
    })
    .await;
    let (code, body) = get(
        &sim,
        "/api/v1/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
    )
    .await;
    assert_eq!(code, 422);
    assert_status(&body, 422, "Invalid");
    // Plain watches and lists are unaffected.
    let (code, _) = get(&sim, "/api/v1/configmaps").await;
    assert_eq!(code, 200);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_has_kube_system_with_a_uid_of_its_own() {
    let (a, b) = (start().await, start().await);
    let (code, ns) = get(&a, "/api/v1/namespaces/kube-system").await;
    assert_eq!(code, 200);
    assert_eq!(ns["status"]["phase"], "Active");
    let uid = a.system_namespace_uid().expect("kube-system");
    assert_eq!(ns["metadata"]["uid"], uid.as_str());
    assert_ne!(Some(uid), b.system_namespace_uid());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_reviews_and_requests_follow_the_deny_list() {
    let sim = start().await;
    let url = |p: &str| format!("{}{p}", sim.base_url());
    let c = http();
    let review = |verb: &str, resource: &str, ns: Option<&str>| {
        let mut attrs = json!({"verb": verb, "group": "", "resource": resource});
        if let Some(ns) = ns {
            attrs["namespace"] = json!(ns);
        }
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs}})
    };
    let ask = |body: Value| {
        let c = c.clone();
        let u = url("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews");
        async move {
            let r = c.post(u).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // Discovery serves the group.
    let (code, d) = get(&sim, "/apis/authorization.k8s.io/v1").await;
    assert_eq!(code, 200);
    assert_eq!(d["resources"][0]["name"], "selfsubjectaccessreviews");
    let (_, groups) = get(&sim, "/apis").await;
    assert!(groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "authorization.k8s.io"));

    let (code, r) = ask(review("watch", "pods", None)).await;
    assert_eq!(code, 201);
    assert_eq!(r["kind"], "SelfSubjectAccessReview");
    assert_eq!(r["status"]["allowed"], true);

    // Deny watching pods in namespace a, over the admin endpoint.
    let d: Value = c
        .post(url(
            "/_sim/deny?verb=watch&group=&resource=pods&namespace=a",
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["denies"][0]["verb"], "watch");
    let (_, r) = ask(review("watch", "pods", Some("a"))).await;
    assert_eq!(r["status"]["allowed"], false);
    assert_eq!(r["status"]["denied"], true);
    let (_, r) = ask(review("watch", "pods", Some("b"))).await;
    assert_eq!(r["status"]["allowed"], true);
    let (_, r) = ask(review("list", "pods", Some("a"))).await;
    assert_eq!(r["status"]["allowed"], true);

    // The requests themselves: 403 with a Status, as the review said.
    let (code, st) = get(&sim, "/api/v1/namespaces/a/pods?watch=true").await;
    assert_eq!(code, 403);
    assert_status(&st, 403, "Forbidden");
    assert_eq!(
        st["message"],
        "pods is forbidden: User \"kube-sim\" cannot watch resource \"pods\" in API group \"\" in the namespace \"a\""
    );
    let (code, _) = get(&sim, "/api/v1/namespaces/a/pods").await;
    assert_eq!(code, 200, "list stays allowed");
    // A cluster-wide watch covers namespace a too.
    let (code, _) = get(&sim, "/api/v1/pods?watch=true").await;
    assert_eq!(code, 403);

    // A review without attributes is invalid; clearing the list allows everything again.
    let (code, st) = ask(json!({"spec": {}})).await;
    assert_eq!(code, 422);
    assert_status(&st, 422, "Invalid");
    c.delete(url("/_sim/deny")).send().await.unwrap();
    let (code, _) = get(
        &sim,
        "/api/v1/namespaces/a/pods?watch=true&timeoutSeconds=1",
    )
    .await;
    assert_eq!(code, 200);
    sim.shutdown().await;
}
