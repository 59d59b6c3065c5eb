//! Dynamic routes: custom resources of managed groups are watched as their CRDs come and go.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

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
        return testkit::missing_tool("kubectl (not on PATH)");
    }
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("apps"))?;
    let group = "composition.krateo.io";
    // A custom resource that exists before the ingester starts.
    store.create(crd_json(
        group,
        "fireworksapps",
        "FireworksApp",
        &[("v1alpha1", true, true)],
        "Namespaced",
    ))?;
    let early = store.create(cr_json(
        group,
        "v1alpha1",
        "FireworksApp",
        Some("apps"),
        "early",
    ))?;

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
        serde_json::to_vec(&crd_json(
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
        serde_json::to_vec(&cr_json(group, "v1", "WidgetApp", Some("apps"), "w1"))?,
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

    let watches_before = ing.read_metric("ingester_active_watches").await?;
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
    store.create(crd_json(
        group,
        "widgetapps",
        "WidgetApp",
        &[("v2", true, true)],
        "Namespaced",
    ))?;
    let w2 = store.create(cr_json(group, "v2", "WidgetApp", Some("apps"), "w2"))?;
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
    let def = store.create(crd_json(
        group,
        "compositiondefinitions",
        "CompositionDefinition",
        &[("v1alpha1", true, false), ("v1alpha2", true, true)],
        "Namespaced",
    ))?;
    let mut objs = Vec::new();
    for i in 0..5 {
        objs.push(store.create(cr_json(
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
    store.create(crd_json(
        "example.other.io",
        "things",
        "Thing",
        &[("v1", true, true)],
        "Namespaced",
    ))?;
    store.create(crd_json(
        "sub.core.krateo.io",
        "subthings",
        "SubThing",
        &[("v1", true, true)],
        "Namespaced",
    ))?;
    store.create(cr_json(
        "example.other.io",
        "v1",
        "Thing",
        Some("apps"),
        "t",
    ))?;
    let last_unmanaged = store.create(cr_json(
        "sub.core.krateo.io",
        "v1",
        "SubThing",
        Some("apps"),
        "s",
    ))?;
    store.create(crd_json(
        "core.krateo.io",
        "markers",
        "Marker",
        &[("v1", true, true)],
        "Cluster",
    ))?;
    let marker = store.create(cr_json("core.krateo.io", "v1", "Marker", None, "m"))?;
    let _ing = h.start_ready(&[FAST_CHECKPOINTS]).await?;
    h.wait_row(&uid(&marker), "managed cluster-scoped CR", |_, d| !d)
        .await?;
    // Every custom resource watch (a wrongly started one for Thing or SubThing too) past the
    // unmanaged objects: had they been let through, they would have rows by now.
    h.wait_watches_past(
        &[
            "example.other.io/",
            "sub.core.krateo.io/",
            "core.krateo.io/",
        ],
        &rv(&last_unmanaged),
        &["core.krateo.io/v1/markers/*"],
    )
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
    let base_watches = ing.read_metric("ingester_active_watches").await?;
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
        store.create(crd_json(
            group,
            &plural,
            &kind,
            &[("v1", true, true)],
            "Namespaced",
        ))?;
        for j in 0..3 {
            store.create(cr_json(group, "v1", &kind, Some("bulk"), &format!("o{j}")))?;
        }
    }
    h.wait_count(
        "resource_kind LIKE 'Kind%' AND deleted_at IS NULL",
        (n * 3) as i64,
    )
    .await?;
    testkit::eventually("one watch per CRD", WAIT, || async {
        let w = ing
            .read_metric("ingester_active_watches")
            .await
            .map_err(|e| format!("{e:#}"))?;
        if w == base_watches + n as f64 {
            Ok(Some(()))
        } else {
            Err(format!("{w} watches"))
        }
    })
    .await?;
    Ok(())
}

/// The lines of `log` after its first `skip` bytes that contain every one of `parts` (the log
/// may carry colour codes between a field's name and its value, so match parts separately).
fn lines_with(log: &str, skip: usize, parts: &[&str]) -> usize {
    log.get(skip..)
        .unwrap_or("")
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_switched_back_while_rows_of_the_other_are_queued_lists_again(
) -> anyhow::Result<()> {
    // The watched version goes A -> B -> A while B's rows cannot be committed yet (a slow
    // database; here a row lock). The watch back at A used to decide whether to resume from
    // A's stored point before B's queued rows were in the table: it saw every row at A,
    // resumed, and B's rows landed afterwards and stayed at B (seed 23 of converge_seeds,
    // which CI hit now and then). The manager now lets a stopped watch's changes commit
    // before the CRD's next watch starts.
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("apps"))?;
    let group = "core.krateo.io";
    let (a, b) = ("v1alpha2", "v1alpha1");
    let def = store.create(crd_json(
        group,
        "compositiondefinitions",
        "CompositionDefinition",
        &[(b, true, false), (a, true, true)],
        "Namespaced",
    ))?;
    let obj = store.create(cr_json(
        group,
        a,
        "CompositionDefinition",
        Some("apps"),
        "d0",
    ))?;
    let ing = h.start_ready(&[FAST_CHECKPOINTS]).await?;
    let a_scope = format!("{group}/{a}/compositiondefinitions/*");
    h.wait_watches_past(&[], "0", &[&a_scope]).await?;
    let at = |v: &'static str| {
        move |raw: &serde_json::Value, deleted: bool| {
            !deleted && raw["apiVersion"] == format!("core.krateo.io/{v}")
        }
    };
    h.wait_row(&uid(&obj), "the row at A", at(a)).await?;

    // Hold the row: B's rewrite of it waits in its lane.
    let mut locker = h.db.client().await?;
    let lock = locker.transaction().await?;
    lock.execute(
        "SELECT 1 FROM krateo_resources WHERE global_uid = $1 FOR UPDATE",
        &[&format!("{CLUSTER}:{}", uid(&obj))],
    )
    .await?;
    let switch_storage = |def: &serde_json::Value, to_b: bool| {
        let mut def = def.clone();
        def["spec"]["versions"][0]["storage"] = json!(to_b);
        def["spec"]["versions"][1]["storage"] = json!(!to_b);
        def
    };
    let def = store.update(switch_storage(&def, true))?;
    testkit::eventually(
        "B's rewrite of the row waiting for the lock",
        WAIT,
        || async {
            let c = h.db.client().await.map_err(|e| e.to_string())?;
            let waiting = ingester_sessions(&c, true)
                .await
                .map_err(|e| e.to_string())?;
            Ok((waiting > 0).then_some(()))
        },
    )
    .await?;

    // Back to A while B's row is still queued. Wait until the watch at A has decided (the
    // code before the fix resumed from A's point) or the manager says it waits for B's rows
    // (the fix), then let the row go.
    let skip = ing.log().len();
    store.update(switch_storage(&def, false))?;
    let a_route = format!("{group}/{a}/");
    testkit::eventually(
        "the watch at A decided, or waits for B's rows",
        WAIT,
        || async {
            let log = ing.log();
            let resumed = lines_with(
                &log,
                skip,
                &["resuming watch from the stored resume point", &a_route],
            );
            let waits = lines_with(
                &log,
                skip,
                &["waiting for the stopped watch's changes to be committed"],
            );
            Ok((resumed + waits > 0).then_some(()))
        },
    )
    .await?;
    lock.rollback().await?;

    h.wait_row(&uid(&obj), "the row back at A", at(a))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\ningester log:\n{}", ing.log()))?;
    assert_eq!(
        h.count("resource_kind = 'CompositionDefinition'").await?,
        1,
        "one row per object"
    );
    Ok(())
}

/// A custom resource listed as a static route (not through a managed group) whose CRD is
/// deleted while the ingester is stopped: the static watch only sees 404s from then on, and
/// the manager skipped static kinds, so its rows stayed live for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_route_whose_crd_went_while_stopped_is_swept() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("a"))?;
    store.create(crd_json(
        "example.io",
        "widgets",
        "Widget",
        &[("v1", true, true)],
        "Namespaced",
    ))?;
    let w = store.create(cr_json("example.io", "v1", "Widget", Some("a"), "w1"))?;
    let builtin = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("router/assets/static"),
    )?;
    let routes = h.dir.path().join("static-routes");
    std::fs::write(
        &routes,
        format!("{builtin}\nexample.io/v1/widgets/Widget\n"),
    )?;
    let routes = routes.display().to_string();
    let env = [("STATIC_ROUTES_FILE", routes.as_str())];
    let mut ing = h.start_ready(&env).await?;
    h.wait_row(&uid(&w), "the static route's custom resource", |_, d| !d)
        .await?;
    let pod = store.create(pod("a", "p"))?;
    h.wait_row(&uid(&pod), "a pod", |_, d| !d).await?;
    ing.terminate(WAIT).await?;
    store.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        "widgets.example.io",
    )?;
    let ing = h.spawn(&env)?;
    h.wait_row(&uid(&w), "swept after the restart", |_, d| d)
        .await?;
    // Built-in static kinds are served: never swept by this.
    assert_eq!(h.row(&uid(&pod)).await?.map(|(_, d)| d), Some(false));
    assert!(ing.log().contains("served no more"), "{}", ing.log());
    Ok(())
}
