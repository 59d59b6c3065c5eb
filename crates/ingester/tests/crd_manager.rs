//! Dynamic routes: custom resources of managed groups are watched as their CRDs come and go.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn crd(
    group: &str,
    plural: &str,
    kind: &str,
    versions: &[(&str, bool, bool)],
    scope: &str,
) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|(name, served, storage)| {
            json!({"name": name, "served": served, "storage": storage,
                   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {"group": group, "scope": scope,
                 "names": {"plural": plural, "singular": plural.trim_end_matches('s'), "kind": kind, "listKind": format!("{kind}List")},
                 "versions": versions}
    })
}

fn cr(group: &str, version: &str, kind: &str, ns: Option<&str>, name: &str) -> Value {
    let mut v = json!({"apiVersion": format!("{group}/{version}"), "kind": kind,
                       "metadata": {"name": name}, "spec": {"replicas": 1}});
    if let Some(ns) = ns {
        v["metadata"]["namespace"] = json!(ns);
    }
    v
}

fn kubectl(
    h: &Harness,
    args: &[&str],
    stdin_file: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", h.dir.path().join("kubeconfig"))
        .args(args);
    if let Some(f) = stdin_file {
        cmd.arg("-f").arg(f);
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have_kubectl() -> bool {
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_life_cycle_applied_with_kubectl() -> anyhow::Result<()> {
    if !have_kubectl() {
        eprintln!("SKIPPED: kubectl not on PATH");
        return Ok(());
    }
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("apps"))?;
    let group = "composition.krateo.io";
    // A custom resource that exists before the ingester starts.
    store.create(crd(
        group,
        "fireworksapps",
        "FireworksApp",
        &[("v1alpha1", true, true)],
        "Namespaced",
    ))?;
    let early = store.create(cr(group, "v1alpha1", "FireworksApp", Some("apps"), "early"))?;

    let ing = h.start_ready(&[]).await?;
    h.wait_row(&uid(&early), "CR created before start", |raw, d| {
        !d && raw == &early
    })
    .await?;
    // The CRD itself is a row (a static kind).
    h.wait_count("resource_plural = 'customresourcedefinitions' AND resource_name = 'fireworksapps.composition.krateo.io'", 1).await?;

    // A second CRD applied with kubectl, then a custom resource applied with kubectl.
    let file = h.dir.path().join("crd.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&crd(
            group,
            "widgetapps",
            "WidgetApp",
            &[("v1", true, true)],
            "Namespaced",
        ))?,
    )?;
    kubectl(&h, &["apply"], Some(&file))?;
    let file = h.dir.path().join("cr.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&cr(group, "v1", "WidgetApp", Some("apps"), "w1"))?,
    )?;
    // The resource is served as soon as the CRD exists; kubectl may need its discovery refreshed.
    testkit::eventually("kubectl apply of the custom resource", WAIT, || async {
        Ok(kubectl(&h, &["apply"], Some(&file)).ok().map(|_| ()))
    })
    .await?;
    h.wait_count(
        "resource_kind = 'WidgetApp' AND resource_name = 'w1' AND deleted_at IS NULL",
        1,
    )
    .await?;
    let row_cid: i64 = h
        .count("resource_kind = 'WidgetApp' AND composition_id::text = uid")
        .await?;
    assert_eq!(
        row_cid, 1,
        "composition.krateo.io objects get their own uid as composition id"
    );

    let watches_before = ing.metric("ingester_active_watches").await.unwrap_or(0.0);
    // Delete the CRD with kubectl: the watch stops and its objects are marked deleted.
    kubectl(
        &h,
        &["delete", "crd", "widgetapps.composition.krateo.io"],
        None,
    )?;
    h.wait_count("resource_kind = 'WidgetApp' AND deleted_at IS NULL", 0)
        .await?;
    testkit::eventually("the active watch count to drop", WAIT, || async {
        let now = ing
            .metric("ingester_active_watches")
            .await
            .unwrap_or(f64::MAX);
        Ok((now == watches_before - 1.0).then_some(()))
    })
    .await?;

    // Re-created with a new version: new objects land at that version.
    store.create(crd(
        group,
        "widgetapps",
        "WidgetApp",
        &[("v2", true, true)],
        "Namespaced",
    ))?;
    let w2 = store.create(cr(group, "v2", "WidgetApp", Some("apps"), "w2"))?;
    h.wait_row(&uid(&w2), "CR of the re-created CRD", |raw, d| {
        !d && raw == &w2
    })
    .await?;
    assert_eq!(
        h.count("resource_kind = 'WidgetApp' AND resource_name = 'w2' AND resource_version = 'v2'")
            .await?,
        1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_row_per_object_at_the_storage_version_and_switches_without_duplicates(
) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("apps"))?;
    let group = "core.krateo.io";
    let def = store.create(crd(
        group,
        "compositiondefinitions",
        "CompositionDefinition",
        &[("v1alpha1", true, false), ("v1alpha2", true, true)],
        "Namespaced",
    ))?;
    let mut objs = Vec::new();
    for i in 0..5 {
        objs.push(store.create(cr(
            group,
            "v1alpha2",
            "CompositionDefinition",
            Some("apps"),
            &format!("d{i}"),
        ))?);
    }
    let _ing = h.start_ready(&[]).await?;
    h.wait_count("resource_kind = 'CompositionDefinition' AND resource_version = 'v1alpha2' AND deleted_at IS NULL", 5).await?;
    assert_eq!(
        h.count("resource_kind = 'CompositionDefinition'").await?,
        5,
        "no row per version"
    );

    // Switch the storage version to v1alpha1: rows move to it, still one per object.
    let mut def = def;
    def["spec"]["versions"][0]["storage"] = json!(true);
    def["spec"]["versions"][1]["storage"] = json!(false);
    store.update(def)?;
    h.wait_count("resource_kind = 'CompositionDefinition' AND resource_version = 'v1alpha1' AND deleted_at IS NULL", 5).await?;
    assert_eq!(h.count("resource_kind = 'CompositionDefinition'").await?, 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanaged_groups_are_ignored() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("apps"))?;
    store.create(crd(
        "example.other.io",
        "things",
        "Thing",
        &[("v1", true, true)],
        "Namespaced",
    ))?;
    store.create(crd(
        "sub.core.krateo.io",
        "subthings",
        "SubThing",
        &[("v1", true, true)],
        "Namespaced",
    ))?;
    store.create(cr("example.other.io", "v1", "Thing", Some("apps"), "t"))?;
    store.create(cr(
        "sub.core.krateo.io",
        "v1",
        "SubThing",
        Some("apps"),
        "s",
    ))?;
    store.create(crd(
        "core.krateo.io",
        "markers",
        "Marker",
        &[("v1", true, true)],
        "Cluster",
    ))?;
    let marker = store.create(cr("core.krateo.io", "v1", "Marker", None, "m"))?;
    let _ing = h.start_ready(&[]).await?;
    // The managed CRD's object landing proves the manager has handled the whole list.
    h.wait_row(&uid(&marker), "managed cluster-scoped CR", |_, d| !d)
        .await?;
    assert_eq!(h.count("resource_kind IN ('Thing', 'SubThing')").await?, 0);
    assert_eq!(
        h.count("resource_kind = 'Marker' AND namespace = ''")
            .await?,
        1
    );
    // Their CRDs are still rows: CRDs are a static kind.
    h.wait_count("resource_plural = 'customresourcedefinitions'", 3)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_crds_at_once() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("bulk"))?;
    let ing = h.start_ready(&[]).await?;
    let base_watches = ing.metric("ingester_active_watches").await.unwrap_or(0.0);
    let n = 200;
    let groups = [
        "composition.krateo.io",
        "widgets.templates.krateo.io",
        "core.krateo.io",
    ];
    for i in 0..n {
        let group = groups[i % groups.len()];
        let plural = format!("kind{i}s");
        let kind = format!("Kind{i}");
        store.create(crd(
            group,
            &plural,
            &kind,
            &[("v1", true, true)],
            "Namespaced",
        ))?;
        for j in 0..3 {
            store.create(cr(group, "v1", &kind, Some("bulk"), &format!("o{j}")))?;
        }
    }
    h.wait_count(
        "resource_kind LIKE 'Kind%' AND deleted_at IS NULL",
        (n * 3) as i64,
    )
    .await?;
    testkit::eventually("one watch per CRD", WAIT, || async {
        let w = ing.metric("ingester_active_watches").await.unwrap_or(0.0);
        if w == base_watches + n as f64 {
            Ok(Some(()))
        } else {
            Err(format!("{w} watches"))
        }
    })
    .await?;
    Ok(())
}
