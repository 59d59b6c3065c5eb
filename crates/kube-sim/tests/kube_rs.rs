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

/// A correct client converges through the faults of real API servers: kube-rs' reflector, with
/// lists that land on lagging replicas (resourceVersion=0), resumed watches that replay events
/// and watches dropped between bursts of writes, ends with the store's exact state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_converges_through_lagging_replicas_and_replays() {
    use kube::runtime::reflector;
    use kube_sim::{FaultSet, ReplicaPick};

    let sim = start().await;
    let store = sim.store();
    for i in 0..20 {
        store
            .create(cm("default", &format!("c{i}"), json!({})))
            .unwrap();
    }
    store.set_faults(&FaultSet {
        replica_lags: vec![0, 4, 9],
        replica_pick: ReplicaPick::Random { seed: 11 },
        freshness_wait_ms: 200,
        watch_replay: 3,
        ..Default::default()
    });
    let api: Api<ConfigMap> = Api::all(kube_client(&sim).await);
    for semantic in ["any", "streaming"] {
        let cfg = match semantic {
            "any" => watcher::Config::default().any_semantic(),
            _ => watcher::Config::default().streaming_lists(),
        };
        let (reader, writer) = reflector::store();
        let task = tokio::spawn(
            reflector::reflector(writer, watcher::watcher(api.clone(), cfg)).for_each(|_| async {}),
        );
        reader.wait_until_ready().await.expect("reflector ready");
        let started = store.stats().watches_started;
        for round in 0..4 {
            for i in 0..10 {
                let name = format!("c{}", (round * 7 + i) % 25);
                let exists = store.get("v1", "ConfigMap", Some("default"), &name);
                match (exists, i % 3) {
                    (None, _) => drop(store.create(cm("default", &name, json!({})))),
                    (Some(_), 0) => drop(store.delete("v1", "ConfigMap", Some("default"), &name)),
                    (Some(_), _) => drop(store.merge_patch(
                        "v1",
                        "ConfigMap",
                        Some("default"),
                        &name,
                        &json!({"data": {"round": round.to_string(), "i": i.to_string()}}),
                    )),
                }
            }
            store.drop_watches();
            let st = store.clone();
            wait_for("the watch to be resumed", || {
                let st = st.clone();
                async move {
                    let s = st.stats();
                    (s.watches_started > started + round && s.open_watches == 1).then_some(())
                }
            })
            .await;
        }
        let want = || {
            let mut v: Vec<(String, String)> = store
                .list("v1", "ConfigMap", None)
                .iter()
                .map(|o| {
                    (
                        o["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        o["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let have = || {
            let mut v: Vec<(String, String)> = reader
                .state()
                .iter()
                .map(|c| {
                    (
                        c.metadata.name.clone().unwrap_or_default(),
                        c.metadata.resource_version.clone().unwrap_or_default(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        wait_for(&format!("the {semantic} reflector to converge"), || {
            let (w, h) = (want(), have());
            async move { (w == h).then_some(()) }
        })
        .await;
        task.abort();
    }
    sim.shutdown().await;
}
