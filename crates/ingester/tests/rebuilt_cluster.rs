//! Another resourceVersion history under the same CLUSTER_NAME (issue 19, item 2): a cluster
//! rebuilt under the name (a new kube-system uid; the name moved as docs/operations.md says)
//! and an etcd restore (the same identity, resourceVersions gone back). The stored resume
//! points and the rows' resourceVersions come from the other history: the next start must
//! list, rewrite what the cluster has and mark deleted every row it lacks, whatever version
//! the other history gave it. On kube-sim here; on a real API server at the end of the file.

mod common;

use std::collections::BTreeMap;

use common::real::RealHarness;
use common::*;
use kube_sim::{KubeSim, SimConfig, Store};
use serde_json::{json, Value};
use testkit::pg::TestDb;

const NS: &str = "apps";

/// Another kube-sim (another cluster, or the same one restored) next to the harness.
struct Cluster {
    sim: KubeSim,
    kubeconfig: String,
}

impl Cluster {
    async fn start(h: &Harness, name: &str, store: Store) -> anyhow::Result<Cluster> {
        let sim = KubeSim::start_with_store(SimConfig::default(), store).await?;
        let path = h.dir.path().join(format!("kubeconfig-{name}"));
        sim.write_kubeconfig(&path)?;
        Ok(Cluster {
            sim,
            kubeconfig: path.display().to_string(),
        })
    }

    fn uid(&self) -> String {
        self.sim.system_namespace_uid().expect("kube-system")
    }
}

/// uid -> resourceVersion of the namespaces and ConfigMaps `store` has.
fn objects(store: &Store) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for kind in ["Namespace", "ConfigMap"] {
        for o in store.list("v1", kind, None) {
            out.insert(uid(&o), rv(&o));
        }
    }
    out
}

/// uid -> resourceVersion of the live rows of namespaces and ConfigMaps.
async fn live_rows(db: &TestDb) -> anyhow::Result<BTreeMap<String, String>> {
    let c = db.client().await?;
    Ok(c.query(
        "SELECT uid, raw->'metadata'->>'resourceVersion' FROM krateo_resources
          WHERE cluster_name = $1 AND deleted_at IS NULL
            AND resource_plural IN ('namespaces', 'configmaps')",
        &[&CLUSTER],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
    .collect())
}

/// Waits until the live rows are exactly the objects of `store`, each at its version.
async fn converged(h: &Harness, store: &Store, what: &str) -> anyhow::Result<()> {
    converged_to(&h.db, || Ok(objects(store)), what).await
}

/// Waits until the live rows of namespaces and ConfigMaps are exactly `want()`.
async fn converged_to(
    db: &TestDb,
    want: impl Fn() -> anyhow::Result<BTreeMap<String, String>>,
    what: &str,
) -> anyhow::Result<()> {
    testkit::eventually(what, WAIT, || async {
        let rows = live_rows(db).await.map_err(|e| e.to_string())?;
        let want = want().map_err(|e| e.to_string())?;
        if rows == want {
            return Ok(Some(()));
        }
        let stale: Vec<_> = rows.iter().filter(|(u, v)| want.get(*u) != Some(v)).collect();
        let missing: Vec<_> = want.iter().filter(|(u, v)| rows.get(*u) != Some(v)).collect();
        Err(format!(
            "rows not in the cluster (or at another version): {stale:?}; objects without their row: {missing:?}"
        ))
    })
    .await
}

/// Live rows named `name` in namespace `ns` (the presenter would show each).
async fn live_named(h: &Harness, ns: &str, name: &str) -> anyhow::Result<i64> {
    live_named_in(&h.db, ns, name).await
}

async fn live_named_in(db: &TestDb, ns: &str, name: &str) -> anyhow::Result<i64> {
    Table(db)
        .count(&format!(
            "deleted_at IS NULL AND namespace = '{ns}' AND resource_name = '{name}' AND resource_plural = 'configmaps'"
        ))
        .await
}

fn cm(name: &str, v: &str) -> Value {
    configmap(NS, name, json!({ "v": v }))
}

fn env(resume: bool) -> Vec<(&'static str, &'static str)> {
    vec![
        FAST_CHECKPOINTS,
        ("WATCH_RESUME", if resume { "true" } else { "false" }),
    ]
}

/// The old cluster: objects and many changes (a resourceVersion far ahead), all ingested,
/// then the ingester stopped (its resume points stored at shutdown).
async fn ingest_old_cluster(h: &Harness, resume: bool) -> anyhow::Result<()> {
    let s = h.store();
    s.create(namespace(NS))?;
    for i in 0..10 {
        s.create(cm(&format!("c{i}"), "old"))?;
    }
    for round in 0..30 {
        let mut o = s.get("v1", "ConfigMap", Some(NS), "c9").expect("c9");
        o["data"]["v"] = json!(format!("old-{round}"));
        s.update(o)?;
    }
    let mut ing = h.start_ready(&env(resume)).await?;
    converged(h, &s, "the old cluster ingested").await?;
    anyhow::ensure!(ing.terminate(WAIT).await?.success(), "{}", ing.log());
    if resume {
        let points = h.resume_points().await?;
        anyhow::ensure!(
            points.get("/v1/configmaps/*").is_some_and(|p| *p >= 30),
            "resume points of the old cluster: {points:?}"
        );
    }
    Ok(())
}

/// A cluster rebuilt under the name: new kube-system uid, the name moved with the statement
/// of docs/operations.md. `ahead`: the new cluster's resourceVersion is past the old one's
/// (then only the identity tells the histories apart).
async fn rebuilt_cluster_converges(resume: bool, ahead: bool) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let old_uid = h.sim.system_namespace_uid().expect("kube-system");
    ingest_old_cluster(&h, resume).await?;
    let old_rv = h.store().resource_version();

    let rebuilt = Cluster::start(&h, "rebuilt", Store::new(10_000)).await?;
    let s = rebuilt.sim.store();
    s.create(namespace(NS))?;
    s.create(cm("c0", "new"))?;
    s.create(cm("fresh", "new"))?;
    if ahead {
        for round in 0..(old_rv + 20) {
            let mut o = s.get("v1", "ConfigMap", Some(NS), "fresh").expect("fresh");
            o["data"]["v"] = json!(format!("new-{round}"));
            s.update(o)?;
        }
        assert!(s.resource_version() > old_rv);
    } else {
        assert!(s.resource_version() < old_rv);
    }

    // The statement docs/operations.md gives (and the refused ingester prints).
    let c = h.db.client().await?;
    let moved = c
        .execute(
            "UPDATE krateo_ingester_clusters SET cluster_id = $1, claimed_at = now() WHERE cluster_name = $2 AND cluster_id = $3",
            &[&rebuilt.uid(), &CLUSTER, &old_uid],
        )
        .await?;
    assert_eq!(moved, 1);

    let mut env = env(resume);
    env.push(("KUBECONFIG", &rebuilt.kubeconfig));
    let ing = h.start_ready(&env).await?;
    converged(
        &h,
        &s,
        "the table shows the rebuilt cluster, nothing of the old one",
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", ing.log()))?;
    assert_eq!(live_named(&h, NS, "c0").await?, 1, "c0 shown once");
    // Live changes of the rebuilt cluster keep arriving.
    let late = s.create(cm("late", "new"))?;
    h.wait_row(&uid(&late), "a change after the start", |_, d| !d)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_cluster_behind_the_old_one_converges_from_resume_points() -> anyhow::Result<()> {
    rebuilt_cluster_converges(true, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_cluster_behind_the_old_one_converges_without_resume_points() -> anyhow::Result<()>
{
    rebuilt_cluster_converges(false, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_cluster_ahead_of_the_old_one_converges() -> anyhow::Result<()> {
    rebuilt_cluster_converges(true, true).await
}

/// An etcd restore: the same cluster (same kube-system uid) back at a backup taken before
/// later changes (a delete, updates, a create), all ingested before the restore.
async fn restore_converges(resume: bool) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let s = h.store();
    s.create(namespace(NS))?;
    for i in 0..5 {
        s.create(cm(&format!("c{i}"), "backed-up"))?;
    }
    let mut ing = h.start_ready(&env(resume)).await?;
    converged(&h, &s, "ingested before the backup").await?;
    let backup = s.list_all();

    // After the backup: a delete, updates, a create, all ingested.
    s.delete("v1", "ConfigMap", Some(NS), "c0")?;
    for round in 0..30 {
        let mut o = s.get("v1", "ConfigMap", Some(NS), "c1").expect("c1");
        o["data"]["v"] = json!(format!("lost-{round}"));
        s.update(o)?;
    }
    s.create(cm("lost", "lost"))?;
    converged(&h, &s, "ingested after the backup").await?;
    anyhow::ensure!(ing.terminate(WAIT).await?.success(), "{}", ing.log());
    let before_rv = s.resource_version();

    // The restore: the backup's objects (uids kept, kube-system's too) at their
    // resourceVersions (created again in their order: no update came between them).
    let restored = Store::new(10_000);
    let mut backup = backup;
    backup.sort_by_key(|o| rv(o).parse::<u64>().unwrap_or(0));
    for o in backup {
        let again = restored.create_preserving(o.clone())?;
        assert_eq!(rv(&again), rv(&o), "restored at its resourceVersion");
    }
    let restored = Cluster::start(&h, "restored", restored).await?;
    assert_eq!(restored.uid(), h.sim.system_namespace_uid().expect("uid"));
    let s = restored.sim.store();
    let after = s.create(cm("after-restore", "new"))?;
    assert!(s.resource_version() < before_rv);

    let mut env = env(resume);
    env.push(("KUBECONFIG", &restored.kubeconfig));
    let ing = h.start_ready(&env).await?;
    converged(&h, &s, "the table shows the restored cluster")
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", ing.log()))?;
    let c1 = s.get("v1", "ConfigMap", Some(NS), "c1").expect("c1");
    let (raw, deleted) = h.row(&uid(&c1)).await?.expect("row of c1");
    assert!(!deleted);
    assert_eq!(raw["data"]["v"], "backed-up", "c1 as restored");
    assert_eq!(live_named(&h, NS, "lost").await?, 0);
    assert!(h.row(&uid(&after)).await?.is_some_and(|(_, d)| !d));
    // Live changes of the restored cluster keep arriving.
    let late = s.create(cm("late", "new"))?;
    h.wait_row(&uid(&late), "a change after the start", |_, d| !d)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restore_converges_from_resume_points() -> anyhow::Result<()> {
    restore_converges(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restore_converges_without_resume_points() -> anyhow::Result<()> {
    restore_converges(false).await
}

// On a real API server (Kubernetes v1.36.2, `testkit::realkube`; skipped without its
// binaries, failing under CI).

/// uid -> resourceVersion of the namespaces and ConfigMaps of the real cluster.
fn real_objects(h: &RealHarness) -> anyhow::Result<BTreeMap<String, String>> {
    let out = h
        .plane
        .kubectl(&["get", "namespaces,configmaps", "-A", "-o", "json"])?;
    let list: Value = serde_json::from_str(&out)?;
    Ok(list["items"]
        .as_array()
        .map(|items| items.iter().map(|o| (uid(o), rv(o))).collect())
        .unwrap_or_default())
}

/// `n` ConfigMaps in one `kubectl create` (one resourceVersion each, quickly).
fn create_many(h: &RealHarness, prefix: &str, n: usize) -> anyhow::Result<()> {
    let items: Vec<Value> = (0..n)
        .map(|i| cm(&format!("{prefix}{i}"), prefix))
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    h.plane.kubectl_stdin(
        &["create", "-o", "name", "-f", "-"],
        Some(&list.to_string()),
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_an_etcd_restore_converges() -> anyhow::Result<()> {
    let Some(h) = RealHarness::own().await? else {
        return Ok(());
    };
    h.namespace(NS).await?;
    for i in 0..3 {
        h.create(&cm(&format!("c{i}"), "backed-up"))?;
    }
    let backup = h.plane.backup_etcd("etcd-backup").await?;
    let env = [FAST_CHECKPOINTS];

    // After the backup, ingested: a delete, an update, many creates (the lost history
    // reaches far past what the restored cluster will have at the next start).
    let mut ing = h.start_ready(&env).await?;
    converged_to(&h.db, || real_objects(&h), "ingested").await?;
    h.delete("configmap", Some(NS), "c0")?;
    let mut c1: Value = serde_json::from_str(&h.plane.kubectl(&[
        "-n",
        NS,
        "get",
        "configmap",
        "c1",
        "-o",
        "json",
    ])?)?;
    c1["data"]["v"] = json!("lost");
    h.replace(&c1)?;
    create_many(&h, "lost", 300)?;
    converged_to(&h.db, || real_objects(&h), "the lost history ingested").await?;
    anyhow::ensure!(ing.terminate(WAIT).await?.success(), "{}", ing.log());
    let lost_rv = h.plane.etcd_revision().await?;

    h.plane.restore_etcd(&backup).await?;
    let restored_rv = h.plane.etcd_revision().await?;
    anyhow::ensure!(
        restored_rv < lost_rv,
        "the restore must go back: {restored_rv} >= {lost_rv}"
    );
    let ing = h.start_ready(&env).await?;
    converged_to(
        &h.db,
        || real_objects(&h),
        "the table shows the restored cluster",
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", ing.log()))?;
    assert_eq!(live_named_in(&h.db, NS, "c0").await?, 1, "c0 is back");
    assert_eq!(live_named_in(&h.db, NS, "lost0").await?, 0);
    let c1 = h
        .table()
        .count(&format!(
            "deleted_at IS NULL AND namespace = '{NS}' AND resource_name = 'c1' AND raw->'data'->>'v' = 'backed-up'"
        ))
        .await?;
    assert_eq!(c1, 1, "c1 as restored");
    // Live changes keep arriving.
    let late = h.create(&cm("late", "new"))?;
    h.table()
        .wait_row(&uid(&late), "a change after the start", |_, d| !d)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_a_rebuilt_cluster_converges() -> anyhow::Result<()> {
    let Some(old) = RealHarness::own().await? else {
        return Ok(());
    };
    let kube_system_uid = |h: &RealHarness| -> anyhow::Result<String> {
        h.plane.kubectl(&[
            "get",
            "namespace",
            "kube-system",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
    };
    let old_uid = kube_system_uid(&old)?;
    old.namespace(NS).await?;
    create_many(&old, "c", 200)?;
    let env = [FAST_CHECKPOINTS];
    let mut ing = old.start_ready(&env).await?;
    converged_to(&old.db, || real_objects(&old), "the old cluster ingested").await?;
    anyhow::ensure!(ing.terminate(WAIT).await?.success(), "{}", ing.log());
    old.plane.stop().await?;

    // The rebuilt cluster: a fresh etcd, a new kube-system uid, the same database and name.
    let Some(plane) = testkit::realkube::ControlPlane::start().await? else {
        return Ok(());
    };
    let new = RealHarness {
        plane: std::sync::Arc::new(plane),
        db: old.db,
    };
    let new_uid = kube_system_uid(&new)?;
    assert_ne!(new_uid, old_uid);
    new.namespace(NS).await?;
    new.create(&cm("c0", "new"))?;
    let c = new.db.client().await?;
    let moved = c
        .execute(
            "UPDATE krateo_ingester_clusters SET cluster_id = $1, claimed_at = now() WHERE cluster_name = $2 AND cluster_id = $3",
            &[&new_uid, &CLUSTER, &old_uid],
        )
        .await?;
    assert_eq!(moved, 1);
    let ing = new.start_ready(&env).await?;
    converged_to(
        &new.db,
        || real_objects(&new),
        "the table shows the rebuilt cluster only",
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", ing.log()))?;
    assert_eq!(live_named_in(&new.db, NS, "c0").await?, 1, "c0 shown once");
    let late = new.create(&cm("late", "new"))?;
    new.table()
        .wait_row(&uid(&late), "a change after the start", |_, d| !d)
        .await?;
    Ok(())
}
