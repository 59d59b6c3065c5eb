//! The cluster identity: two clusters under one CLUSTER_NAME in one database. The second
//! ingester stops before writing, naming both identities; the first keeps its rows; moving
//! the name to the new identity (docs/operations.md) lets the rebuilt cluster in.

mod common;

use common::*;
use kube_sim::{DenyRule, KubeSim, SimConfig};

/// A second cluster (its own kube-sim, its own kube-system uid) next to the harness.
struct Second {
    sim: KubeSim,
    kubeconfig: String,
}

impl Second {
    async fn start(h: &Harness) -> anyhow::Result<Second> {
        let sim = KubeSim::start(SimConfig::default()).await?;
        let path = h.dir.path().join("kubeconfig-second");
        sim.write_kubeconfig(&path)?;
        Ok(Second {
            sim,
            kubeconfig: path.display().to_string(),
        })
    }

    fn uid(&self) -> String {
        self.sim.system_namespace_uid().expect("kube-system")
    }
}

async fn owners(h: &Harness) -> anyhow::Result<Vec<(String, String)>> {
    let c = h.db.client().await?;
    Ok(c.query(
        "SELECT cluster_name, cluster_id FROM krateo_ingester_clusters ORDER BY 1",
        &[],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

/// Every row with its row version (`xmin`): any write shows.
async fn table_content(h: &Harness) -> anyhow::Result<Vec<(String, String)>> {
    let c = h.db.client().await?;
    Ok(c.query(
        "SELECT global_uid, xmin::text FROM krateo_resources ORDER BY 1",
        &[],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cluster_under_the_same_name_is_refused_and_writes_nothing() -> anyhow::Result<()>
{
    let h = Harness::new().await?;
    let first_uid = h.sim.system_namespace_uid().expect("kube-system");
    h.store().create(namespace("team-a"))?;
    let mut first_pods = Vec::new();
    for i in 0..5 {
        first_pods.push(uid(&h.store().create(pod("team-a", &format!("p{i}")))?));
    }
    let first = h.start_ready(&[]).await?;
    // Five pods, namespaces team-a and kube-system: all in before the second starts.
    h.wait_count("deleted_at IS NULL", 7).await?;
    assert_eq!(
        owners(&h).await?,
        vec![(CLUSTER.to_owned(), first_uid.clone())]
    );

    let second = Second::start(&h).await?;
    second.sim.store().create(namespace("team-b"))?;
    let other = uid(&second.sim.store().create(pod("team-b", "other"))?);
    let rows_before = table_content(&h).await?;

    let mut refused = h.spawn(&[("KUBECONFIG", &second.kubeconfig)])?;
    let status = refused.wait_exit(WAIT).await?;
    let log = refused.log();
    assert!(!status.success(), "{log}");
    for named in [
        "CLUSTER_NAME \"test-cluster\" belongs to another cluster".to_owned(),
        first_uid.clone(),
        second.uid(),
        "UPDATE krateo_ingester_clusters SET cluster_id".to_owned(),
    ] {
        assert!(log.contains(&named), "{named:?} not in:\n{log}");
    }
    // Nothing written by the refused one: no row of its objects, none changed or retired.
    assert_eq!(h.row(&other).await?, None);
    assert_eq!(table_content(&h).await?, rows_before);
    assert_eq!(h.count("deleted_at IS NOT NULL").await?, 0);
    assert_eq!(
        owners(&h).await?,
        vec![(CLUSTER.to_owned(), first_uid.clone())]
    );

    // The first keeps its rows, and keeps ingesting.
    let late = h.store().create(pod("team-a", "late"))?;
    h.wait_row(&uid(&late), "late pod of the first cluster", |_, d| !d)
        .await?;
    for p in &first_pods {
        let (_, deleted) = h.row(p).await?.expect("row of the first cluster");
        assert!(!deleted, "{p}");
    }
    assert!(first.log().contains("cluster name owned by this cluster"));
    Ok(())
}

/// The procedure of docs/operations.md ("Renaming or rebuilding a cluster"): the rebuilt cluster
/// is refused until the name moves; then its objects arrive and the rows of the old cluster's
/// objects (its kube-system, a namespace, a pod of the same name as one of the new cluster's)
/// are marked deleted, so the presenter never shows an object twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_cluster_takes_the_name_once_it_is_moved() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let old_uid = h.sim.system_namespace_uid().expect("kube-system");
    let store = h.store();
    store.create(namespace("team-a"))?;
    let mut old_objects = vec![
        old_uid.clone(),
        uid(&store
            .get("v1", "Namespace", None, "team-a")
            .expect("team-a")),
        uid(&store.create(pod("team-a", "p0"))?),
        uid(&store.create(pod("default", "new-life"))?),
    ];
    // More changes, so the old cluster's resourceVersions are ahead of the rebuilt one's, as
    // a long-lived cluster's are.
    for i in 0..10 {
        let cm = store.create(configmap("team-a", &format!("c{i}"), serde_json::json!({})))?;
        old_objects.push(uid(&cm));
    }
    let mut old = h.start_ready(&[]).await?;
    for o in &old_objects {
        h.wait_row(o, "a row of the old cluster", |_, d| !d).await?;
    }
    assert!(old.terminate(WAIT).await?.success());

    // The cluster is rebuilt: same name, new kube-system uid. Refused until the name moves.
    let rebuilt = Second::start(&h).await?;
    let mut refused = h.spawn(&[("KUBECONFIG", &rebuilt.kubeconfig)])?;
    assert!(!refused.wait_exit(WAIT).await?.success());

    // The operation docs/operations.md documents.
    let c = h.db.client().await?;
    let moved = c
        .execute(
            "UPDATE krateo_ingester_clusters SET cluster_id = $1 WHERE cluster_name = $2 AND cluster_id = $3",
            &[&rebuilt.uid(), &CLUSTER, &old_uid],
        )
        .await?;
    assert_eq!(moved, 1);
    // Issue 19 item 2 (fixed by 043c763): from here on this failed on the code before, e.g.
    // cdf25b3. The rebuilt cluster's watches resumed from the old cluster's points, which are
    // ahead of its resourceVersions, and declared themselves caught up, so the new pod never
    // got a row; with WATCH_RESUME=false its sweep spared the old rows whose resourceVersions
    // are above its list's, so the old cluster's rows stayed live next to the new ones.
    let pod = uid(&rebuilt.sim.store().create(pod("default", "new-life"))?);
    let new = h
        .start_ready(&[("KUBECONFIG", &rebuilt.kubeconfig)])
        .await?;
    h.wait_row(&pod, "a pod of the rebuilt cluster", |_, d| !d)
        .await?;
    h.wait_row(
        &rebuilt.uid(),
        "the rebuilt cluster's kube-system",
        |_, d| !d,
    )
    .await?;
    assert_eq!(owners(&h).await?, vec![(CLUSTER.to_owned(), rebuilt.uid())]);

    // The old cluster's rows: every one marked deleted (issue 19 item 2, above).
    for o in &old_objects {
        h.wait_row(o, "the old cluster's row marked deleted", |_, d| d)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", new.log()))?;
    }
    // One live pod named default/new-life: the rebuilt cluster's.
    assert_eq!(
        h.count("resource_plural = 'pods' AND deleted_at IS NULL")
            .await?,
        1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_readable_kube_system_start_up_names_the_rule_or_takes_cluster_id(
) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    h.sim.deny(DenyRule::new("get", "", "namespaces"));
    let mut refused = h.spawn(&[])?;
    let status = refused.wait_exit(WAIT).await?;
    let log = refused.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("may not read namespace kube-system")
            && log.contains("resourceNames: [\"kube-system\"], verbs: [\"get\"]")
            && log.contains("CLUSTER_ID"),
        "{log}"
    );
    assert_eq!(h.count("true").await.unwrap_or(0), 0);

    let _ing = h.start_ready(&[("CLUSTER_ID", "prod-eu-1")]).await?;
    assert_eq!(
        owners(&h).await?,
        vec![(CLUSTER.to_owned(), "prod-eu-1".to_owned())]
    );
    Ok(())
}
