//! Convergence holes found by review (issue 10): each test plays the sequence that used to
//! leave the table wrong, against the real binary, kube-sim and PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const GROUP: &str = "composition.krateo.io";

/// A static routes file watching pods only; its path.
fn pods_only(h: &Harness) -> anyhow::Result<String> {
    let routes = h.dir.path().join("pods-only");
    std::fs::write(&routes, "/v1/pods/Pod\n")?;
    Ok(routes.display().to_string())
}

async fn exec(h: &Harness, sql: &str) -> anyhow::Result<u64> {
    Ok(h.db.client().await?.execute(sql, &[]).await?)
}

/// A row marked deleted while its object lives (a wrong sweep, a hand edit) is repaired by
/// the next list even though the object did not change: before, the guard refused the same
/// resourceVersion and the row stayed deleted until the object changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_repairs_a_row_wrongly_marked_deleted() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("a"))?;
    let p = store.create(pod("a", "p"))?;
    let env = [("WATCH_RESUME", "false")];
    let mut ing = h.start_ready(&env).await?;
    h.wait_row(&uid(&p), "pod row", |_, d| !d).await?;
    ing.terminate(WAIT).await?;
    assert_eq!(
        exec(
            &h,
            "UPDATE krateo_resources SET deleted_at = now() WHERE resource_plural = 'pods'"
        )
        .await?,
        1
    );
    let _ing = h.start_ready(&env).await?;
    h.wait_row(&uid(&p), "the relist brings the row back", |raw, d| {
        !d && rv(raw) == rv(&p)
    })
    .await?;
    Ok(())
}

/// Cluster-scoped custom resources of a CRD deleted while the service was stopped are swept
/// even when `NAMESPACES` is set (the orphan sweep used to build per-namespace scopes only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scoped_resources_of_a_crd_deleted_while_stopped_are_swept_with_namespaces_set(
) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("a"))?;
    store.create(crd_json(
        GROUP,
        "clusterthings",
        "ClusterThing",
        &[("v1", true, true)],
        "Cluster",
    ))?;
    let c = store.create(cr_json(GROUP, "v1", "ClusterThing", None, "c1"))?;
    let env = [("NAMESPACES", "a")];
    let mut ing = h.start_ready(&env).await?;
    h.wait_row(&uid(&c), "cluster-scoped custom resource", |_, d| !d)
        .await?;
    ing.terminate(WAIT).await?;
    store.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        &format!("clusterthings.{GROUP}"),
    )?;
    let _ing = h.start_ready(&env).await?;
    h.wait_row(&uid(&c), "swept after the restart", |_, d| d)
        .await?;
    Ok(())
}

/// A CRD that stops serving every version: its objects can no longer be read, the same as
/// gone; when it is deleted later its rows must not stay live (they used to: the stopped
/// watch was never swept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_that_stops_serving_then_is_deleted_leaves_no_live_rows() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("a"))?;
    let crd = crd_json(
        GROUP,
        "gadgets",
        "Gadget",
        &[("v1", true, true)],
        "Namespaced",
    );
    store.create(crd.clone())?;
    let g = store.create(cr_json(GROUP, "v1", "Gadget", Some("a"), "g1"))?;
    let _ing = h.start_ready(&[]).await?;
    h.wait_row(&uid(&g), "custom resource", |_, d| !d).await?;
    let name = format!("gadgets.{GROUP}");
    store.merge_patch(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        &name,
        &json!({"spec": {"versions": [{"name": "v1", "served": false, "storage": true,
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}),
    )?;
    h.wait_row(&uid(&g), "unserved: marked deleted", |_, d| d)
        .await?;
    store.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        &name,
    )?;
    // A marker proves the manager handled the deletion: the CRD's own row is deleted.
    h.wait_count(
        &format!("resource_plural = 'customresourcedefinitions' AND resource_name = '{name}' AND deleted_at IS NOT NULL"),
        1,
    )
    .await?;
    h.wait_row(&uid(&g), "still deleted after the CRD is gone", |_, d| d)
        .await?;
    Ok(())
}

/// Rows of scopes this deployment no longer watches are retired at start-up: a route
/// removed, `NAMESPACES` narrowed. Another instance's rows (INSTANCE_NAME) are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_scopes_no_longer_watched_are_retired_but_never_another_instances(
) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    for ns in ["a", "b"] {
        store.create(namespace(ns))?;
    }
    let pa = store.create(pod("a", "pa"))?;
    let pb = store.create(pod("b", "pb"))?;
    let ca = store.create(configmap("a", "ca", json!({"k": "v"})))?;
    let before = h.dir.path().join("before");
    std::fs::write(
        &before,
        "/v1/pods/Pod\n/v1/configmaps/ConfigMap\n/v1/namespaces/Namespace\n",
    )?;
    let after = h.dir.path().join("after");
    std::fs::write(&after, "/v1/pods/Pod\n/v1/namespaces/Namespace\n")?;
    let (before, after) = (before.display().to_string(), after.display().to_string());

    // Another deployment of the same cluster watching configmaps in `a` only.
    let other_env = [
        ("INSTANCE_NAME", "configmaps-only"),
        ("STATIC_ROUTES_FILE", "/dev/null"),
        ("NAMESPACES", "a"),
    ];
    let other_routes = h.dir.path().join("other");
    std::fs::write(&other_routes, "/v1/configmaps/ConfigMap\n")?;
    let other_routes = other_routes.display().to_string();
    let other_env: Vec<(&str, &str)> = other_env
        .iter()
        .map(|(k, v)| {
            if *k == "STATIC_ROUTES_FILE" {
                (*k, other_routes.as_str())
            } else {
                (*k, *v)
            }
        })
        .collect();

    let mut ing = h
        .start_ready(&[
            ("STATIC_ROUTES_FILE", &before),
            ("MANAGED_GROUPS_FILE", "/dev/null"),
        ])
        .await?;
    for o in [&pa, &pb, &ca] {
        h.wait_row(&uid(o), "first run", |_, d| !d).await?;
    }
    ing.terminate(WAIT).await?;
    let mut other = h.start_ready(&other_env).await?;
    other.terminate(WAIT).await?;

    let ing = h
        .start_ready(&[
            ("STATIC_ROUTES_FILE", &after),
            ("MANAGED_GROUPS_FILE", "/dev/null"),
            ("NAMESPACES", "a"),
        ])
        .await?;
    h.wait_row(&uid(&pb), "pod of a namespace no longer watched", |_, d| d)
        .await?;
    h.wait_row(&uid(&pa), "pod still watched", |_, d| !d)
        .await?;
    assert_eq!(
        ing.metric("ingester_rows_retired_total").await,
        Some(1.0),
        "only the pod in b: the configmap in a is the other instance's: {}",
        ing.log()
    );
    assert!(
        ing.log().contains("no longer watched by this deployment"),
        "{}",
        ing.log()
    );
    h.wait_row(
        &uid(&ca),
        "the other instance's configmap stays live",
        |_, d| !d,
    )
    .await?;
    // The other instance, narrowed to a namespace without configmaps, retires its own rows
    // and never this one's.
    let mut other_env = other_env.clone();
    other_env.retain(|(k, _)| *k != "NAMESPACES");
    other_env.push(("NAMESPACES", "b"));
    let mut other = h.start_ready(&other_env).await?;
    h.wait_row(&uid(&ca), "retired by its own instance", |_, d| d)
        .await?;
    assert_eq!(other.metric("ingester_rows_retired_total").await, Some(1.0));
    other.terminate(WAIT).await?;
    h.wait_row(
        &uid(&pa),
        "the other instance never retires this one's rows",
        |_, d| !d,
    )
    .await?;
    drop(ing);
    Ok(())
}

/// Two static routes for one kind are refused at start-up; a managed CRD whose kind is also a
/// static route gets no second watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_watch_per_kind() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    let dup = h.dir.path().join("dup");
    std::fs::write(
        &dup,
        "/v1/pods/Pod\n/v1/namespaces/Namespace\n/v1beta1/pods/Pod\n",
    )?;
    let mut refused = h.spawn(&[("STATIC_ROUTES_FILE", &dup.display().to_string())])?;
    let status = refused.wait_exit(WAIT).await?;
    assert!(!status.success());
    let log = refused.log();
    assert!(
        log.contains("STATIC_ROUTES_FILE") && log.contains("/v1beta1/pods/Pod"),
        "{log}"
    );

    store.create(namespace("a"))?;
    store.create(crd_json(
        GROUP,
        "widgets",
        "Widget",
        &[("v1", true, true)],
        "Namespaced",
    ))?;
    let w = store.create(cr_json(GROUP, "v1", "Widget", Some("a"), "w1"))?;
    let routes = h.dir.path().join("routes");
    std::fs::write(
        &routes,
        format!("apiextensions.k8s.io/v1/customresourcedefinitions/CustomResourceDefinition\n{GROUP}/v1/widgets/Widget\n"),
    )?;
    let ing = h
        .start_ready(&[("STATIC_ROUTES_FILE", &routes.display().to_string())])
        .await?;
    h.wait_row(&uid(&w), "widget through its static route", |_, d| !d)
        .await?;
    testkit::eventually("the manager to see the CRD", WAIT, || async {
        Ok(ing.log().contains("also a static route").then_some(()))
    })
    .await?;
    assert_eq!(
        ing.metric("ingester_active_watches").await,
        Some(2.0),
        "{}",
        ing.log()
    );
    Ok(())
}

/// Readiness means every static route completed its first list: a passing discovery fault
/// (500) must not release it (only 404/403 may).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_through_passing_discovery_faults() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("a"))?;
    let routes = pods_only(&h)?;
    store.fail_next(2);
    let ing = h.spawn(&[
        ("STATIC_ROUTES_FILE", &routes),
        ("MANAGED_GROUPS_FILE", "/dev/null"),
    ])?;
    let deadline = Instant::now() + WAIT;
    loop {
        anyhow::ensure!(Instant::now() < deadline, "never ready: {}", ing.log());
        if ing.readyz().await == Ok(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.stats().pending_failures,
        0,
        "ready while discovery was failing"
    );
    assert!(
        ing.log().contains("listing"),
        "ready before the pods were listed: {}",
        ing.log()
    );
    Ok(())
}

/// 300 CRDs with one list at a time: the CRD watch and the manager never wait on each other
/// for the list permit, and the CRD events queued for the manager are small summaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_crds_with_one_list_at_a_time() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("a"))?;
    for i in 0..300 {
        let kind = format!("Thing{i}");
        let plural = format!("things{i}");
        store.create(crd_json(
            GROUP,
            &plural,
            &kind,
            &[("v1", true, true)],
            "Namespaced",
        ))?;
        store.create(cr_json(GROUP, "v1", &kind, Some("a"), "x"))?;
    }
    let _ing = h.start_ready(&[("LIST_CONCURRENCY", "1")]).await?;
    testkit::eventually(
        "300 custom resource rows",
        Duration::from_secs(120),
        || async {
            let n = h
                .count(&format!(
                    "resource_group = '{GROUP}' AND deleted_at IS NULL"
                ))
                .await
                .map_err(|e| e.to_string())?;
            if n == 300 {
                Ok(Some(()))
            } else {
                Err(format!("{n} rows"))
            }
        },
    )
    .await?;
    Ok(())
}

/// A restart that resumes from its stored point (no list) is ready only once the backlog the
/// watch replays is committed: at the first 200, every change made while it was down is in
/// the table (it used to report ready as soon as the watch started).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_watch_is_ready_only_after_its_backlog_is_committed() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("a"))?;
    let mut pods = Vec::new();
    for i in 0..40 {
        pods.push(store.create(pod("a", &format!("p{i}")))?);
    }
    let routes = pods_only(&h)?;
    let env = [
        ("STATIC_ROUTES_FILE", routes.as_str()),
        ("MANAGED_GROUPS_FILE", "/dev/null"),
        ("CHECKPOINT_INTERVAL", "200ms"),
    ];
    let mut ing = h.start_ready(&env).await?;
    h.wait_count("resource_plural = 'pods' AND deleted_at IS NULL", 40)
        .await?;
    ing.terminate(WAIT).await?;
    let mut updated = Vec::new();
    for p in &pods {
        let mut p = p.clone();
        p["metadata"]["labels"]["round"] = json!("2");
        updated.push(store.update(p)?);
    }
    let ing = h.spawn(&env)?;
    let deadline = Instant::now() + WAIT;
    while ing.readyz().await != Ok(200) {
        anyhow::ensure!(Instant::now() < deadline, "never ready: {}", ing.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = h.db.client().await?;
    let behind: i64 = c
        .query_one(
            "SELECT count(*) FROM krateo_resources WHERE resource_plural = 'pods'
               AND raw->'metadata'->'labels'->>'round' IS DISTINCT FROM '2'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(behind, 0, "ready with changes not committed: {}", ing.log());
    assert!(
        ing.log().contains("resuming watch"),
        "it resumed: {}",
        ing.log()
    );
    Ok(())
}

/// How often the tests below read the table for a live object marked deleted: often enough to
/// see a wrong tombstone in the moment before the watch's events repair it.
const MONITOR_EVERY: Duration = Duration::from_millis(20);

/// A list answered from a lagging watch cache (`resourceVersion=0`, as a real API server
/// replica may serve it) lacks the newest objects; their rows, written from newer states,
/// must survive its sweep. They used to be tombstoned, and the watch's ADDED events at the
/// same version were then refused: live objects stayed marked deleted. Since a row revived by
/// a later event at the same version ends right, the end state proves nothing: the monitor
/// fails the test if any live pod's row is marked deleted at any moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_from_a_lagging_watch_cache_never_tombstones_newer_rows() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    let monitor = testkit::converge::LiveObjectMonitor::start(
        store.clone(),
        h.db.client().await?,
        CLUSTER,
        MONITOR_EVERY,
    );
    store.create(namespace("a"))?;
    let routes = pods_only(&h)?;
    let env = [
        ("STATIC_ROUTES_FILE", routes.as_str()),
        ("MANAGED_GROUPS_FILE", "/dev/null"),
        ("WATCH_RESUME", "false"),
    ];
    let old = store.create(pod("a", "old"))?;
    let mut ing = h.start_ready(&env).await?;
    let mut newest = Vec::new();
    for i in 0..5 {
        newest.push(store.create(pod("a", &format!("new{i}")))?);
    }
    for p in &newest {
        h.wait_row(&uid(p), "row of a new pod", |_, d| !d).await?;
    }
    ing.terminate(WAIT).await?;
    // The API server's cache is now 5 events behind: its lists lack the five new pods.
    store.set_watch_cache_lag(5);
    let ing = h.start_ready(&env).await?;
    let marker = store.create(pod("a", "marker"))?;
    h.wait_row(&uid(&marker), "a change after the stale list", |_, d| !d)
        .await?;
    for p in newest.iter().chain([&old]) {
        let (_, deleted) = h.row(&uid(p)).await?.expect("row");
        assert!(
            !deleted,
            "live pod {} marked deleted: {}",
            p["metadata"]["name"],
            ing.log()
        );
    }
    monitor.assert_clean().await?;
    Ok(())
}

/// A CRD missing from a stale CRD list (a lagging cache) used to make the manager sweep all its
/// custom resources, and the restarted watch resumed from its stored point without listing, so
/// the rows stayed deleted. The sweep now spares rows newer than the list. The monitor fails
/// the test if the custom resource's row is marked deleted at any moment, even if a later
/// list or event revives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_missing_from_a_stale_crd_list_does_not_delete_its_resources() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    let monitor = testkit::converge::LiveObjectMonitor::start(
        store.clone(),
        h.db.client().await?,
        CLUSTER,
        MONITOR_EVERY,
    );
    store.create(namespace("a"))?;
    let mut ing = h.start_ready(&[]).await?;
    store.create(crd_json(
        GROUP,
        "lamps",
        "Lamp",
        &[("v1", true, true)],
        "Namespaced",
    ))?;
    let x = store.create(cr_json(GROUP, "v1", "Lamp", Some("a"), "x"))?;
    h.wait_row(&uid(&x), "custom resource", |_, d| !d).await?;
    ing.terminate(WAIT).await?;
    // The cache is behind the CRD's creation: the CRD list lacks it.
    store.set_watch_cache_lag(2);
    let ing = h.start_ready(&[]).await?;
    let y = store.create(cr_json(GROUP, "v1", "Lamp", Some("a"), "y"))?;
    h.wait_row(&uid(&y), "the custom resource watch runs", |_, d| !d)
        .await?;
    let (_, deleted) = h.row(&uid(&x)).await?.expect("row");
    assert!(
        !deleted,
        "live custom resource marked deleted: {}",
        ing.log()
    );
    monitor.assert_clean().await?;
    Ok(())
}

/// A streaming list that breaks half-way is void: the next list starts over and its sweep
/// finds the delete that happened while the service was stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_broken_half_way_is_listed_again_and_swept() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("a"))?;
    let mut pods = Vec::new();
    for i in 0..20 {
        pods.push(store.create(pod("a", &format!("p{i}")))?);
    }
    let routes = pods_only(&h)?;
    let env = [
        ("STATIC_ROUTES_FILE", routes.as_str()),
        ("MANAGED_GROUPS_FILE", "/dev/null"),
        ("WATCH_RESUME", "false"),
    ];
    let mut ing = h.start_ready(&env).await?;
    h.wait_count("resource_plural = 'pods' AND deleted_at IS NULL", 20)
        .await?;
    ing.terminate(WAIT).await?;
    store.delete("v1", "Pod", Some("a"), "p0")?;
    store.set_list_stall(Duration::from_secs(3));
    let ing = h.spawn(&env)?;
    testkit::eventually("the list to start", WAIT, || async {
        Ok((store.stats().open_watches > 0).then_some(()))
    })
    .await?;
    // Half of the initial events are out; break the stream.
    store.set_list_stall(Duration::ZERO);
    store.drop_watches();
    h.wait_row(
        &uid(&pods[0]),
        "the delete found by the next list",
        |_, d| d,
    )
    .await?;
    h.wait_count("resource_plural = 'pods' AND deleted_at IS NULL", 19)
        .await?;
    drop(ing);
    Ok(())
}
