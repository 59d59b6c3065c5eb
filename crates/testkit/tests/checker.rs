//! The convergence checker and the regression monitor catch each kind of divergence: rows are
//! written by hand into a real PostgreSQL database next to a kube-sim store.

use std::time::Duration;

use kube_sim::Store;
use serde_json::{json, Value};
use testkit::converge::{check, CheckScope, RegressionMonitor};
use testkit::pg::TestDb;
use tokio_postgres::Client;

const CLUSTER: &str = "c";

/// The columns the checker and the monitor read (the ingester creates more).
async fn table(db: &TestDb) -> anyhow::Result<Client> {
    let c = db.client().await?;
    c.batch_execute(
        "CREATE TABLE krateo_resources (
            cluster_name text NOT NULL, uid text NOT NULL, global_uid text PRIMARY KEY,
            namespace text NOT NULL, resource_group text NOT NULL, resource_kind text NOT NULL,
            raw jsonb NOT NULL, deleted_at timestamptz NULL, object_resource_version bigint NULL)",
    )
    .await?;
    Ok(c)
}

async fn put_row(c: &Client, obj: &Value, deleted: bool) -> anyhow::Result<()> {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let api_version = s("/apiVersion");
    let group = testkit::converge::group_of(&api_version).to_owned();
    let uid = s("/metadata/uid");
    let rv: i64 = s("/metadata/resourceVersion").parse()?;
    c.execute(
        "INSERT INTO krateo_resources VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8 THEN now() END, $9)
         ON CONFLICT (global_uid) DO UPDATE SET raw = EXCLUDED.raw, deleted_at = EXCLUDED.deleted_at,
            object_resource_version = EXCLUDED.object_resource_version",
        &[
            &CLUSTER,
            &uid,
            &format!("{CLUSTER}:{uid}"),
            &s("/metadata/namespace"),
            &group,
            &s("/kind"),
            obj,
            &deleted,
            &rv,
        ],
    )
    .await?;
    Ok(())
}

fn configmap(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"k": "v"}})
}

fn scope(namespaces: &[&str], unwatched_rows_deleted: bool) -> CheckScope {
    CheckScope {
        cluster: CLUSTER.into(),
        kinds: vec![("v1".into(), "ConfigMap".into())],
        namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
        managed_groups: vec!["g.io".into()],
        unwatched_rows_deleted,
    }
}

#[tokio::test]
async fn each_divergence_is_named() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let c = table(&db).await?;
    let store = Store::new(1000);
    let good = store.create(configmap("a", "good"))?;
    put_row(&c, &good, false).await?;
    let v = check(&store, &c, &scope(&[], true)).await?;
    assert!(v.converged(), "{v}");

    // A live object whose row is marked deleted.
    let tomb = store.create(configmap("a", "tombstoned"))?;
    put_row(&c, &tomb, true).await?;
    let v = check(&store, &c, &scope(&[], true)).await?;
    assert_eq!(v.wrongly_deleted.len(), 1, "{v}");
    assert!(v
        .first_violation()
        .is_some_and(|f| f.starts_with("wrongly_deleted: ConfigMap a/tombstoned")));
    put_row(&c, &tomb, false).await?;

    // A deleted object whose row is live.
    let gone = store.create(configmap("a", "gone"))?;
    put_row(&c, &gone, false).await?;
    store.delete("v1", "ConfigMap", Some("a"), "gone")?;
    let v = check(&store, &c, &scope(&[], true)).await?;
    assert_eq!(v.not_deleted.len(), 1, "{v}");
    put_row(&c, &gone, true).await?;

    // A live object without a row; a row older than its object.
    let new = store.create(configmap("a", "new"))?;
    let mut changed = good.clone();
    changed["data"]["k"] = json!("w");
    store.update(changed)?;
    let v = check(&store, &c, &scope(&[], true)).await?;
    assert_eq!((v.missing.len(), v.stale.len()), (1, 1), "{v}");
    put_row(&c, &new, false).await?;
    put_row(
        &c,
        &store
            .list("v1", "ConfigMap", Some("a"))
            .into_iter()
            .find(|o| o["metadata"]["name"] == "good")
            .unwrap_or_default(),
        false,
    )
    .await?;
    let v = check(&store, &c, &scope(&[], true)).await?;
    assert!(v.converged(), "{v}");

    // Rows of scopes nobody watches: another namespace, another kind.
    let other_ns = store.create(configmap("b", "elsewhere"))?;
    put_row(&c, &other_ns, false).await?;
    let secret = store.create(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "a"}}),
    )?;
    put_row(&c, &secret, false).await?;
    let v = check(&store, &c, &scope(&["a"], true)).await?;
    assert_eq!(v.unwatched_live.len(), 2, "{v}");
    assert!(v.missing.is_empty() && v.not_deleted.is_empty(), "{v}");
    // Switched off, they are not looked at.
    let v = check(&store, &c, &scope(&["a"], false)).await?;
    assert!(v.converged(), "{v}");
    // Retired (marked deleted), they pass.
    put_row(&c, &other_ns, true).await?;
    put_row(&c, &secret, true).await?;
    let v = check(&store, &c, &scope(&["a"], true)).await?;
    assert!(v.converged(), "{v}");

    // A custom resource of a managed group whose CRD is gone (objects deleted with it): its
    // row is a missed delete even when unwatched rows are not looked at.
    let crd = store.create(json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.g.io"},
        "spec": {"group": "g.io", "scope": "Namespaced", "names": {"plural": "things", "singular": "thing", "kind": "Thing", "listKind": "ThingList"},
            "versions": [{"name": "v1", "served": true, "storage": true}]}}))?;
    let thing = store.create(json!({"apiVersion": "g.io/v1", "kind": "Thing", "metadata": {"name": "t", "namespace": "a"}}))?;
    put_row(&c, &thing, false).await?;
    let v = check(&store, &c, &scope(&["a"], false)).await?;
    assert!(v.converged(), "an unwatched object that still exists: {v}");
    store.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        "things.g.io",
    )?;
    let v = check(&store, &c, &scope(&["a"], false)).await?;
    assert_eq!(v.not_deleted.len(), 1, "{v}");
    assert!(v.not_deleted[0].contains("kind no longer watched"), "{v}");
    drop(crd);
    Ok(())
}

#[tokio::test]
async fn the_monitor_sees_a_row_go_back_to_an_older_state() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let c = table(&db).await?;
    let store = Store::new(1000);
    let old = store.create(configmap("a", "x"))?;
    let mut next = old.clone();
    next["data"]["k"] = json!("newer");
    let newer = store.update(next)?;
    let monitor = RegressionMonitor::start(db.client().await?, CLUSTER, Duration::from_millis(20));
    put_row(&c, &newer, false).await?;
    testkit::eventually(
        "two samples of the newer row",
        Duration::from_secs(10),
        || async { Ok((monitor.samples() >= 2).then_some(())) },
    )
    .await?;
    // Deleted and live again at one resourceVersion is not a regression.
    put_row(&c, &newer, true).await?;
    put_row(&c, &newer, false).await?;
    let at = monitor.samples();
    testkit::eventually("another sample", Duration::from_secs(10), || async {
        Ok((monitor.samples() > at + 1).then_some(()))
    })
    .await?;
    assert!(monitor.violations().is_empty());
    put_row(&c, &old, false).await?;
    testkit::eventually(
        "the regression to be seen",
        Duration::from_secs(10),
        || async { Ok((!monitor.violations().is_empty()).then_some(())) },
    )
    .await?;
    let (samples, violations) = monitor.finish().await;
    assert!(samples >= 3);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].contains(&format!(
            "{} -> {}",
            newer["metadata"]["resourceVersion"].as_str().unwrap_or("?"),
            old["metadata"]["resourceVersion"].as_str().unwrap_or("?")
        )),
        "{violations:?}"
    );
    Ok(())
}
