//! The ingester against a real Kubernetes v1.36.2 API server (etcd, kube-apiserver,
//! kube-controller-manager from `../shared/kube`, objects made with the real kubectl): what
//! kube-sim can only imitate. The watch cache's bookmark timing (readiness after a restart),
//! an API server restart (its watch cache starts empty), etcd compaction while the ingester
//! is stopped, namespace deletion and ownerReference cascades done by the real controllers.
//! Skipped with a message where the binaries are missing; under CI they fail.

mod common;

use std::time::{Duration, Instant};

use common::real::{took, RealHarness};
use common::*;
use serde_json::{json, Value};

fn name(v: &Value) -> &str {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A name no other test of this binary uses on the shared plane.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_changes_and_the_controllers_cascades_reach_the_table() -> anyhow::Result<()> {
    let Some(h) = RealHarness::shared().await? else {
        return Ok(());
    };
    let ns = unique("cascade");
    h.namespace(&ns).await?;
    let parent = h.configmap(&ns, "parent")?;
    let mut child = configmap(&ns, "child", json!({"k": "v"}));
    child["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": uid(&parent)
    }]);
    let child = h.create(&child)?;
    let listed = h.configmap(&ns, "listed")?;

    let ing = h.start_ready(&[("NAMESPACES", &ns)]).await?;
    let t = h.table();
    for o in [&parent, &child, &listed] {
        t.wait_row(&uid(o), "listed at start", |raw, d| !d && rv(raw) == rv(o))
            .await?;
    }

    // Live changes: a create, an update (kubectl replace), a delete.
    let live = h.configmap(&ns, "live")?;
    t.wait_row(&uid(&live), "created live", |raw, d| !d && raw == &live)
        .await?;
    let mut changed = listed.clone();
    changed["data"]["k"] = json!("changed");
    let changed = h.replace(&changed)?;
    t.wait_row(&uid(&listed), "updated live", |raw, d| {
        !d && rv(raw) == rv(&changed) && raw["data"]["k"] == "changed"
    })
    .await?;
    h.delete("configmap", Some(&ns), "live")?;
    t.wait_row(&uid(&live), "deleted live", |_, d| d).await?;

    // The garbage collector deletes the child of a deleted owner.
    h.delete("configmap", Some(&ns), "parent")?;
    t.wait_row(&uid(&parent), "owner deleted", |_, d| d).await?;
    if h.plane.has_controller_manager() {
        t.wait_row(&uid(&child), "dependent deleted by the GC", |_, d| d)
            .await?;
        // The namespace controller deletes what is left, then the namespace.
        let ns_obj: Value =
            serde_json::from_str(&h.plane.kubectl(&["get", "ns", &ns, "-o", "json"])?)?;
        h.plane
            .kubectl(&["delete", "ns", &ns, "--wait=true", "--timeout=60s"])?;
        t.wait_row(&uid(&changed), "deleted with its namespace", |_, d| d)
            .await?;
        t.wait_row(&uid(&ns_obj), "namespace deleted", |_, d| d)
            .await?;
    }
    assert_eq!(
        ing.read_metric("workerpool_events_errors_total").await?,
        0.0
    );
    Ok(())
}

/// The scopes a run with `NAMESPACES` set to two namespaces watches: the two cluster-scoped
/// static routes plus eight namespaced ones per namespace.
const SCOPES_TWO_NAMESPACES: i64 = 2 + 8 * 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_resume_points_is_ready_in_seconds_with_the_changes_made_while_stopped(
) -> anyhow::Result<()> {
    let Some(h) = RealHarness::shared().await? else {
        return Ok(());
    };
    let (a, b) = (unique("quiet-a"), unique("quiet-b"));
    h.namespace(&a).await?;
    h.namespace(&b).await?;
    let cms: Vec<Value> = (0..3)
        .map(|i| h.configmap(&a, &format!("cm{i}")))
        .collect::<anyhow::Result<_>>()?;
    let namespaces = format!("{a},{b}");
    let env = [("NAMESPACES", namespaces.as_str()), FAST_CHECKPOINTS];
    let mut ing = h.start_ready(&env).await?;
    let t = h.table();
    for o in &cms {
        t.wait_row(&uid(o), "listed", |_, d| !d).await?;
    }
    let db = h.db.client().await?;
    testkit::eventually("a resume point for every scope", WAIT, || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM krateo_ingester_watch_state", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        Ok((n >= SCOPES_TWO_NAMESPACES).then_some(()))
    })
    .await?;
    let status = ing.terminate(Duration::from_secs(30)).await?;
    anyhow::ensure!(status.success(), "first run: {status}\n{}", ing.log());

    // While it is stopped: a delete, an update, a create in one scope; the 17 others stay
    // quiet (their resume points fall behind the cluster's resourceVersion all the same).
    h.delete("configmap", Some(&a), "cm0")?;
    let mut updated = cms[1].clone();
    updated["data"]["k"] = json!("while stopped");
    let updated = h.replace(&updated)?;
    let created = h.configmap(&a, "created-while-stopped")?;

    let started = Instant::now();
    let mut ing = h.spawn(&env)?;
    ing.wait_ready(Duration::from_secs(50)).await?;
    let ready_after = took("restart to /readyz on a real API server", started);
    // Ready means the changes made while stopped are committed: read once, no waiting.
    let row = |o: &Value| {
        let t = h.table();
        let u = uid(o);
        async move { t.row(&u).await }
    };
    assert!(
        matches!(row(&cms[0]).await?, Some((_, true))),
        "deleted while stopped, not marked deleted when ready"
    );
    assert!(
        matches!(row(&updated).await?, Some((raw, false)) if rv(&raw) == rv(&updated)),
        "updated while stopped, not committed when ready"
    );
    let created_row = row(&created).await?;
    assert!(
        matches!(&created_row, Some((raw, false)) if raw == &created),
        "created while stopped, no row when ready: {created_row:?} vs {created}"
    );
    // The watch cache's first bookmark on a quiet watch comes about a minute after it
    // starts; ready must not wait for it.
    assert!(
        ready_after < Duration::from_secs(20),
        "ready only after {ready_after:?}: waited for the watch cache's periodic bookmark"
    );
    let resumed = ing
        .read_metric("ingester_watch_resumes_total{outcome=\"resumed\"}")
        .await?;
    assert!(
        resumed >= SCOPES_TWO_NAMESPACES as f64 - 1.0,
        "the watches resumed (the CRD watch always lists): {resumed}"
    );
    assert_eq!(
        ing.read_metric("ingester_sweep_deletes_total").await?,
        0.0,
        "the delete came as an event of the resumed watch, not from a list"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_apiserver_restarts_lose_nothing() -> anyhow::Result<()> {
    let Some(h) = RealHarness::own().await? else {
        return Ok(());
    };
    let ns = "compacted";
    h.namespace(ns).await?;
    let cms: Vec<Value> = (0..4)
        .map(|i| h.configmap(ns, &format!("cm{i}")))
        .collect::<anyhow::Result<_>>()?;
    let env = [("NAMESPACES", ns), FAST_CHECKPOINTS];
    let mut ing = h.start_ready(&env).await?;
    let t = h.table();
    for o in &cms {
        t.wait_row(&uid(o), "listed", |_, d| !d).await?;
    }
    configmaps_resume_point_past(&h, rv(&cms[3]).parse()?).await?;
    let status = ing.terminate(Duration::from_secs(30)).await?;
    anyhow::ensure!(status.success(), "first run: {status}");

    // While stopped: deletes and a create, then etcd compacts its history and the API
    // server restarts (its watch cache starts empty at the current revision): the stored
    // resume points are too old to watch from (410 Gone).
    h.delete("configmap", Some(ns), "cm0")?;
    h.delete("configmap", Some(ns), "cm1")?;
    let created = h.configmap(ns, "created-while-stopped")?;
    let compacted_at = h.plane.compact().await?;
    h.plane.restart().await?;
    eprintln!("compacted at {compacted_at}, API server restarted");

    let mut ing = h.spawn(&env)?;
    ing.wait_ready(WAIT).await?;
    for o in &cms[..2] {
        t.wait_row(
            &uid(o),
            "deleted while stopped, found by the list",
            |_, d| d,
        )
        .await?;
    }
    t.wait_row(&uid(&created), "created while stopped", |raw, d| {
        !d && raw == &created
    })
    .await?;
    let expired = ing
        .read_metric("ingester_watch_resumes_total{outcome=\"expired\"}")
        .await?;
    assert!(
        expired >= 1.0,
        "the configmaps' resume point was past the compaction: 410, then a list ({expired})"
    );
    let swept = ing.read_metric("ingester_sweep_deletes_total").await?;
    assert!(swept >= 2.0, "sweep deletes: {swept}");

    // The API server restarts under a running ingester: its watches break and the new
    // server's cache starts empty. Changes after the restart still arrive.
    h.plane.restart().await?;
    let after = h.configmap(ns, "after-restart")?;
    t.wait_row(
        &uid(&after),
        "created after the API server restart",
        |raw, d| !d && raw == &after,
    )
    .await?;
    h.delete("configmap", Some(ns), "cm2")?;
    t.wait_row(
        &uid(&cms[2]),
        "deleted after the API server restart",
        |_, d| d,
    )
    .await?;
    ing.wait_ready(WAIT).await?;
    let live: i64 = t
        .count(&format!(
            "resource_plural = 'configmaps' AND namespace = '{ns}' AND deleted_at IS NULL"
        ))
        .await?;
    let listed: Value =
        serde_json::from_str(&h.plane.kubectl(&["-n", ns, "get", "cm", "-o", "json"])?)?;
    let names: Vec<&str> = listed["items"]
        .as_array()
        .map(|a| a.iter().map(name).collect())
        .unwrap_or_default();
    assert_eq!(
        live,
        names.len() as i64,
        "live rows vs the cluster's {names:?}"
    );

    // The control plane goes away for good: SIGTERM still ends the ingester, exit 0, within
    // its shutdown budget (SHUTDOWN_TIMEOUT 20 s), everything it had committed.
    h.plane.stop().await?;
    let stopped = Instant::now();
    let status = ing.terminate(Duration::from_secs(40)).await?;
    assert!(status.success(), "exit {status}\n{}", ing.log());
    assert!(
        stopped.elapsed() < Duration::from_secs(25),
        "shutdown took {:?}",
        stopped.elapsed()
    );
    Ok(())
}

/// Waits until the configmaps' resume point is at `newest` or past it (needs
/// `FAST_CHECKPOINTS`).
async fn configmaps_resume_point_past(h: &RealHarness, newest: i64) -> anyhow::Result<()> {
    let db = h.db.client().await?;
    testkit::eventually("the configmaps' resume point", WAIT, || async {
        let p: Option<i64> = db
            .query_opt(
                "SELECT resource_version FROM krateo_ingester_watch_state WHERE scope LIKE '/v1/configmaps/%'",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .map(|r| r.get(0));
        Ok(p.filter(|p| *p >= newest))
    })
    .await
    .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_with_the_charts_rbac_and_a_service_account_token() -> anyhow::Result<()> {
    let Some(h) = RealHarness::own().await? else {
        return Ok(());
    };
    // The manifests as a user applies them (namespace, ServiceAccount, ClusterRole from
    // gen-rbac.py, bindings, the leader-election Role, Service, Deployment, PDB): the real
    // server validates them; nothing runs the Deployment (no scheduler, no kubelet).
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/manifests");
    h.plane
        .kubectl(&["apply", "-f", &manifests.display().to_string()])?;
    let token = h
        .plane
        .service_account_token("resources-ingester", "resources-ingester")?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("sa.kubeconfig");
    h.plane.write_token_kubeconfig(&token, &kubeconfig)?;
    let kubeconfig = kubeconfig.display().to_string();
    h.namespace("team").await?;
    let before = h.configmap("team", "before")?;

    let replica = |name: &'static str| {
        let mut env = leader_env(name, "6s");
        env.extend([
            ("KUBECONFIG", kubeconfig.as_str()),
            ("LEASE_NAMESPACE", "resources-ingester"),
            ("POD_NAMESPACE", "resources-ingester"),
        ]);
        env
    };
    let mut a = h.start_ready(&replica("replica-a")).await?;
    testkit::eventually("replica-a leads", WAIT, || async {
        Ok((a.read_metric("ingester_leader").await.ok() == Some(1.0)).then_some(()))
    })
    .await?;
    let b = h.start_ready(&replica("replica-b")).await?;
    let t = h.table();
    t.wait_row(&uid(&before), "listed by the leader", |_, d| !d)
        .await?;
    let during = h.configmap("team", "during")?;
    t.wait_row(&uid(&during), "written by the leader", |raw, d| {
        !d && raw == &during
    })
    .await?;
    assert_eq!(b.read_metric("ingester_leader").await?, 0.0, "b stands by");
    assert_eq!(
        b.read_metric("ingester_rows_written_total").await?,
        0.0,
        "the standby writes nothing"
    );
    let holder = |h: &RealHarness| {
        h.plane.kubectl(&[
            "-n",
            "resources-ingester",
            "get",
            "lease",
            "resources-ingester",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    assert_eq!(holder(&h)?, "replica-a");

    let st = a.terminate(WAIT).await?;
    assert!(
        st.success(),
        "the leader exits 0 on SIGTERM: {st}\n{}",
        a.log()
    );
    testkit::eventually("replica-b takes over", WAIT, || async {
        Ok((b.read_metric("ingester_leader").await.ok() == Some(1.0)).then_some(()))
    })
    .await?;
    assert_eq!(holder(&h)?, "replica-b");
    let after = h.configmap("team", "after")?;
    t.wait_row(&uid(&after), "written by the new leader", |raw, d| {
        !d && raw == &after
    })
    .await?;
    // The ServiceAccount may not write anything the ingester does not need: a denied
    // request is what the real RBAC answers.
    let denied = h.plane.kubectl(&[
        "auth",
        "can-i",
        "delete",
        "pods",
        "--as=system:serviceaccount:resources-ingester:resources-ingester",
    ]);
    assert!(denied.is_err() || denied.is_ok_and(|s| s.trim() == "no"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_api_server_whose_watch_cache_lags_loses_nothing() -> anyhow::Result<()> {
    let Some(h) = RealHarness::own().await? else {
        return Ok(());
    };
    // A second kube-apiserver on the same etcd, every byte from etcd held back 1.5 s.
    let lagging = h
        .plane
        .add_lagging_apiserver(Duration::from_millis(1500))
        .await?;
    let dir = tempfile::tempdir()?;
    let lagging_kubeconfig = dir.path().join("lagging.kubeconfig");
    h.plane
        .write_kubeconfig_for_port(lagging.port, &lagging_kubeconfig)?;
    let lagging_kubeconfig = lagging_kubeconfig.display().to_string();
    let ns = "lag";
    h.namespace(ns).await?;
    let first: Vec<Value> = (0..3)
        .map(|i| h.configmap(ns, &format!("cm{i}")))
        .collect::<anyhow::Result<_>>()?;
    let t = h.table();

    // Run 1 on the up-to-date server, with changes until the moment it stops: its resume
    // points are ahead of the lagging server's cache when run 2 starts there at once.
    let env = [("NAMESPACES", ns), FAST_CHECKPOINTS];
    let mut ing = h.start_ready(&env).await?;
    let mut last = first[2].clone();
    for i in 0..5 {
        last["data"]["k"] = json!(format!("v{i}"));
        last = h.replace(&last)?;
    }
    configmaps_resume_point_past(&h, rv(&last).parse()?).await?;
    let st = ing.terminate(WAIT).await?;
    anyhow::ensure!(st.success(), "run 1: {st}");
    h.delete("configmap", Some(ns), "cm0")?;
    let created = h.configmap(ns, "created-between")?;

    // Run 2 on the lagging server; changes keep coming through the other one.
    let mut env2 = env.to_vec();
    env2.push(("KUBECONFIG", lagging_kubeconfig.as_str()));
    let ing = h.start_ready(&env2).await?;
    let live = h.configmap(ns, "while-lagging")?;
    for (o, what) in [
        (&created, "created between the runs"),
        (&live, "created while running"),
    ] {
        t.wait_row(&uid(o), what, |raw, d| !d && raw == o).await?;
    }
    t.wait_row(&uid(&first[0]), "deleted between the runs", |_, d| d)
        .await?;
    t.wait_row(&uid(&last), "the newest state of cm2", |raw, d| {
        !d && rv(raw) == rv(&last)
    })
    .await?;
    h.delete("configmap", Some(ns), "cm1")?;
    t.wait_row(&uid(&first[1]), "deleted while lagging", |_, d| d)
        .await?;
    // The fault was real: the second server's watch cache began after some resume points
    // (quiet scopes: 410 "too old resource version", a list and a sweep) and behind others
    // ("Too large resource version", retried); either way its watches were refused first.
    let m = ing.metrics().await.map_err(anyhow::Error::msg)?;
    let refused: f64 = m
        .lines()
        .filter(|l| l.starts_with("ingester_watch_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        refused >= 1.0,
        "no watch was refused by the lagging server: {m}"
    );
    Ok(())
}

/// The CRD manager on a real API server: a managed CRD created while the ingester runs is
/// served (the real server takes a moment to establish it) and watched; its storage version
/// switch moves the watch without a second row per object; its deletion makes the real
/// server delete the custom resources (DELETED events, asynchronously) and the rows follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_manager_follows_a_real_crd_life_cycle() -> anyhow::Result<()> {
    let Some(h) = RealHarness::shared().await? else {
        return Ok(());
    };
    let ns = unique("crds");
    h.namespace(&ns).await?;
    let group = "composition.krateo.io";
    let plural = format!("{}s", unique("app").replace('-', ""));
    let kind = format!("App{}", &plural[3..plural.len() - 1]);
    let ing = h.start_ready(&[("NAMESPACES", &ns)]).await?;

    let crd = crd_json(group, &plural, &kind, &[("v1", true, true)], "Namespaced");
    h.plane.apply(&crd)?;
    h.plane.kubectl(&[
        "wait",
        "--for=condition=Established",
        &format!("crd/{plural}.{group}"),
        "--timeout=60s",
    ])?;
    let cr = h.create(&cr_json(group, "v1", &kind, Some(&ns), "one"))?;
    let t = h.table();
    t.wait_row(
        &uid(&cr),
        "a custom resource of a CRD made while running",
        |raw, d| !d && raw == &cr,
    )
    .await?;

    // A second version becomes the storage version: the watch switches to it.
    let crd2 = crd_json(
        group,
        &plural,
        &kind,
        &[("v1", true, false), ("v2", true, true)],
        "Namespaced",
    );
    h.plane.apply(&crd2)?;
    let two = h.create(&cr_json(group, "v2", &kind, Some(&ns), "two"))?;
    t.wait_row(&uid(&two), "created at v2", |raw, d| {
        !d && raw["apiVersion"] == format!("{group}/v2")
    })
    .await?;
    t.wait_row(&uid(&cr), "the first one, now read at v2", |raw, d| {
        !d && raw["apiVersion"] == format!("{group}/v2")
    })
    .await?;
    let rows = t
        .count(&format!(
            "resource_plural = '{plural}' AND deleted_at IS NULL"
        ))
        .await?;
    assert_eq!(rows, 2, "one row per object, not one per version");

    // Deleting the CRD: the real server deletes its objects, then the CRD.
    h.plane.kubectl(&[
        "delete",
        "crd",
        &format!("{plural}.{group}"),
        "--wait=true",
        "--timeout=60s",
    ])?;
    for o in [&cr, &two] {
        t.wait_row(&uid(o), "deleted with its CRD", |_, d| d)
            .await?;
    }
    assert_eq!(
        ing.read_metric("workerpool_events_errors_total").await?,
        0.0
    );
    Ok(())
}

/// The configmaps of `ns` on the real server: uid -> resourceVersion.
async fn live_configmaps(
    http: &reqwest::Client,
    server: &str,
    ns: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let list: Value = http
        .get(format!("{server}/api/v1/namespaces/{ns}/configmaps"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(list["items"]
        .as_array()
        .map(|items| items.iter().map(|o| (uid(o), rv(o))).collect())
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_writing_at_once_converge_and_never_mark_a_live_object_deleted(
) -> anyhow::Result<()> {
    let Some(h) = RealHarness::shared().await? else {
        return Ok(());
    };
    let ns = unique("replicas");
    h.namespace(&ns).await?;
    let http = h.plane.http()?;
    let server = h.plane.server();
    let post = |name: String| {
        let http = http.clone();
        let url = format!("{server}/api/v1/namespaces/{ns}/configmaps");
        let body = configmap(&ns, &name, json!({"k": "0"}));
        async move { http.post(url).json(&body).send().await?.error_for_status() }
    };
    for i in 0..10 {
        post(format!("cm{i}")).await?;
    }
    // Two replicas without leader election, the same configuration: both list, sweep and
    // write every change.
    let env = [("NAMESPACES", ns.as_str())];
    let a = h.start_ready(&env).await?;
    let b = h.start_ready(&env).await?;

    // The monitor: a row marked deleted whose object the server still has (same uid) is a
    // live object marked deleted, whatever comes later.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (stop, http, server, ns) = (stop.clone(), http.clone(), server.clone(), ns.clone());
        let db = h.db.client().await?;
        tokio::spawn(async move {
            let mut samples = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let deleted: Vec<String> = db
                    .query(
                        "SELECT uid FROM krateo_resources WHERE namespace = $1 AND resource_plural = 'configmaps' AND deleted_at IS NOT NULL",
                        &[&ns],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let live = live_configmaps(&http, &server, &ns).await?;
                if let Some(u) = deleted.iter().find(|u| live.contains_key(*u)) {
                    anyhow::bail!("a live object was marked deleted: uid {u} (sample {samples})");
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(samples)
        })
    };

    // Churn through the API server: updates, deletes, creates.
    for round in 0..6 {
        for i in 0..10 {
            let url = format!("{server}/api/v1/namespaces/{ns}/configmaps/cm{i}");
            match (round + i) % 3 {
                0 => {
                    let patch = json!({"data": {"k": format!("{round}")}});
                    http.patch(&url)
                        .header("Content-Type", "application/merge-patch+json")
                        .body(patch.to_string())
                        .send()
                        .await?;
                }
                1 => {
                    http.delete(&url).send().await?;
                }
                _ => {
                    post(format!("cm{i}")).await.ok();
                }
            }
        }
        h.plane.kubectl(&["-n", &ns, "get", "cm", "-o", "name"])?;
    }
    let t = h.table();
    let live = live_configmaps(&http, &server, &ns).await?;
    testkit::eventually("the table converged to the server's configmaps", WAIT, || async {
        let rows: std::collections::BTreeMap<String, String> = h
            .db
            .client()
            .await
            .map_err(|e| e.to_string())?
            .query(
                "SELECT uid, raw->'metadata'->>'resourceVersion' FROM krateo_resources WHERE namespace = $1 AND resource_plural = 'configmaps' AND deleted_at IS NULL",
                &[&ns],
            )
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if rows == live {
            Ok(Some(()))
        } else {
            Err(format!("rows {rows:?} vs server {live:?}"))
        }
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = monitor.await??;
    assert!(samples > 0, "the monitor never sampled");
    assert!(
        t.count(&format!("namespace = '{ns}' AND deleted_at IS NOT NULL"))
            .await?
            > 0
    );
    for ing in [&a, &b] {
        let processed = ing.read_metric("workerpool_events_processed_total").await?;
        assert!(
            processed >= 20.0,
            "both replicas processed the churn: {processed}"
        );
    }
    Ok(())
}
