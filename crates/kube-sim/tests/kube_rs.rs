//! kube-rs' own `watcher` against kube-sim: initial list, events, bookmark resume without a
//! relist, 410 Gone leading to a relist, streaming lists; and TLS with the kubeconfig identity.

mod common;

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use kube::runtime::watcher::{self, Event};
use kube_sim::SimConfig;
use serde_json::json;
use tokio::sync::mpsc;

/// What the test reads from a watcher: a compact form of each event.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String),
    Delete(String),
    Error(String),
}

fn spawn_watcher(api: Api<ConfigMap>, cfg: watcher::Config) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = watcher::watcher(api, cfg).boxed();
        while let Some(ev) = s.next().await {
            let name = |c: &ConfigMap| c.metadata.name.clone().unwrap_or_default();
            let seen = match ev {
                Ok(Event::Init) => Seen::Init,
                Ok(Event::InitApply(c)) => Seen::InitApply(name(&c)),
                Ok(Event::InitDone) => Seen::InitDone,
                Ok(Event::Apply(c)) => Seen::Apply(name(&c)),
                Ok(Event::Delete(c)) => Seen::Delete(name(&c)),
                Err(e) => Seen::Error(e.to_string()),
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads events until `until` matches one; returns everything read (including it).
async fn read_until(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    until: impl Fn(&Seen) -> bool,
) -> Vec<Seen> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(DEADLINE, async {
        while let Some(s) = rx.recv().await {
            let stop = until(&s);
            got.push(s);
            if stop {
                return;
            }
        }
    })
    .await;
    assert!(r.is_ok(), "timed out; events so far: {got:?}");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_list_events_resume_and_relist() {
    let sim = start().await;
    let store = sim.store();
    for i in 0..5 {
        store
            .create(cm("default", &format!("c{i}"), json!({})))
            .unwrap();
    }
    let api: Api<ConfigMap> = Api::all(kube_client(&sim).await);
    let mut rx = spawn_watcher(api, watcher::Config::default().page_size(2));

    let init = read_until(&mut rx, |s| *s == Seen::InitDone).await;
    assert_eq!(init.first(), Some(&Seen::Init));
    let names: Vec<_> = init
        .iter()
        .filter(|s| matches!(s, Seen::InitApply(_)))
        .collect();
    assert_eq!(names.len(), 5, "{init:?}");

    // live events
    store.create(cm("default", "c5", json!({}))).unwrap();
    let ev = read_until(&mut rx, |s| matches!(s, Seen::Apply(_))).await;
    assert_eq!(ev.last(), Some(&Seen::Apply("c5".into())));
    store
        .delete("v1", "ConfigMap", Some("default"), "c1")
        .unwrap();
    read_until(&mut rx, |s| *s == Seen::Delete("c1".into())).await;

    // dropped watches resume from the last revision: no relist
    let started = store.stats().watches_started;
    let r = http()
        .post(format!("{}/_sim/drop-watches", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let st = store.clone();
    wait_for("the watcher to reconnect", || {
        let st = st.clone();
        async move {
            (st.stats().watches_started > started && st.stats().open_watches == 1).then_some(())
        }
    })
    .await;
    store
        .merge_patch(
            "v1",
            "ConfigMap",
            Some("default"),
            "c2",
            &json!({"data": {"k": "changed"}}),
        )
        .unwrap();
    let ev = read_until(&mut rx, |s| matches!(s, Seen::Apply(_))).await;
    assert!(!ev.contains(&Seen::Init), "resume must not relist: {ev:?}");
    assert_eq!(ev.last(), Some(&Seen::Apply("c2".into())));

    // history compacted + watch dropped: the resume gets 410 and the watcher relists
    let http = http();
    http.post(format!("{}/_sim/compact", sim.base_url()))
        .send()
        .await
        .unwrap();
    http.post(format!("{}/_sim/drop-watches", sim.base_url()))
        .send()
        .await
        .unwrap();
    let ev = read_until(&mut rx, |s| *s == Seen::InitDone).await;
    assert!(
        ev.contains(&Seen::Init),
        "expected a relist after 410: {ev:?}"
    );
    let relisted = ev
        .iter()
        .filter(|s| matches!(s, Seen::InitApply(_)))
        .count();
    assert_eq!(relisted, 5, "{ev:?}");
    // and it keeps following changes afterwards
    store.create(cm("default", "c6", json!({}))).unwrap();
    read_until(&mut rx, |s| *s == Seen::Apply("c6".into())).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_streaming_list() {
    let sim = start().await;
    let store = sim.store();
    for i in 0..7 {
        store
            .create(cm("ns1", &format!("s{i}"), json!({"app": "a"})))
            .unwrap();
    }
    store
        .create(cm("ns1", "other", json!({"app": "b"})))
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(kube_client(&sim).await, "ns1");
    let mut rx = spawn_watcher(
        api,
        watcher::Config::default().streaming_lists().labels("app=a"),
    );
    let init = read_until(&mut rx, |s| *s == Seen::InitDone).await;
    assert_eq!(init.first(), Some(&Seen::Init));
    assert_eq!(
        init.iter()
            .filter(|s| matches!(s, Seen::InitApply(_)))
            .count(),
        7,
        "{init:?}"
    );
    assert!(!init.contains(&Seen::InitApply("other".into())));
    store.create(cm("ns1", "s7", json!({"app": "a"}))).unwrap();
    read_until(&mut rx, |s| *s == Seen::Apply("s7".into())).await;
    // an object leaving the selection is a deletion for this watcher
    store
        .merge_patch(
            "v1",
            "ConfigMap",
            Some("ns1"),
            "s0",
            &json!({"metadata": {"labels": {"app": "z"}}}),
        )
        .unwrap();
    read_until(&mut rx, |s| *s == Seen::Delete("s0".into())).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_objects_of_a_crd_over_tls() {
    let sim = start_with(SimConfig {
        tls: true,
        ..Default::default()
    })
    .await;
    let store = sim.store();
    for crd in kube_sim::workload::krateo_crds() {
        store.create(crd).unwrap();
    }
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
    for i in 0..3 {
        let mut cr = kube_sim::workload::custom_resource(&mut rng, "demo", i * 20);
        cr["metadata"]["name"] = format!("app-{i}").into();
        store.create(cr).unwrap();
    }
    // the kubeconfig authenticates with its client certificate
    let client = kube_client(&sim).await;
    let ar = ApiResource {
        group: "composition.krateo.io".into(),
        version: "v1alpha2".into(),
        api_version: "composition.krateo.io/v1alpha2".into(),
        kind: "FireworksApp".into(),
        plural: "fireworksapps".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let list = api
        .list(&ListParams::default())
        .await
        .expect("list over TLS");
    assert_eq!(list.items.len(), 3);
    let labels = list.items[0].metadata.labels.clone().unwrap_or_default();
    assert!(labels.contains_key("krateo.io/composition-id"));
    // discovery through kube-rs finds the CRD's kind
    let d = kube::Discovery::new(client).run().await.expect("discovery");
    assert!(d
        .groups()
        .any(|g| g.name() == "widgets.templates.krateo.io"));
    sim.shutdown().await;
}
