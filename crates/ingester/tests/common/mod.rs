//! Shared set-up for the ingester's end-to-end tests: kube-sim in-process, a private
//! database, the ingester binary as a child process.
#![allow(dead_code)]

pub mod real;

use std::time::Duration;

use kube_sim::{KubeSim, SimConfig, Store};
use serde_json::{json, Value};
use testkit::pg::TestDb;
use testkit::process::IngesterProcess;

pub const CLUSTER: &str = "test-cluster";
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Harness {
    pub sim: KubeSim,
    pub db: TestDb,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub async fn new() -> anyhow::Result<Harness> {
        Self::with_sim(SimConfig::default()).await
    }

    pub async fn with_sim(cfg: SimConfig) -> anyhow::Result<Harness> {
        let sim = KubeSim::start(cfg).await?;
        let db = TestDb::create().await?;
        let dir = tempfile::tempdir()?;
        sim.write_kubeconfig(&dir.path().join("kubeconfig"))?;
        Ok(Harness { sim, db, dir })
    }

    pub fn store(&self) -> Store {
        self.sim.store()
    }

    /// The ingester's environment for this harness plus `extra` (which wins).
    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        ingester_env(&self.db, &self.dir.path().join("kubeconfig"), extra)
    }

    pub fn spawn(&self, extra: &[(&str, &str)]) -> anyhow::Result<IngesterProcess> {
        spawn_ingester(&self.env(extra))
    }

    pub async fn start_ready(&self, extra: &[(&str, &str)]) -> anyhow::Result<IngesterProcess> {
        start_ingester_ready(&self.env(extra)).await
    }

    /// The table of this test's database.
    pub fn table(&self) -> Table<'_> {
        Table(&self.db)
    }

    pub async fn row(&self, uid: &str) -> anyhow::Result<Option<(Value, bool)>> {
        self.table().row(uid).await
    }

    pub async fn wait_row(
        &self,
        uid: &str,
        what: &str,
        pred: impl Fn(&Value, bool) -> bool,
    ) -> anyhow::Result<Value> {
        self.table().wait_row(uid, what, pred).await
    }

    pub async fn count(&self, sql_where: &str) -> anyhow::Result<i64> {
        self.table().count(sql_where).await
    }

    pub async fn wait_count(&self, sql_where: &str, expected: i64) -> anyhow::Result<()> {
        self.table().wait_count(sql_where, expected).await
    }
}

/// `krateo_resources` of a test's database, as the tests read it (rows of [`CLUSTER`]).
pub struct Table<'a>(pub &'a TestDb);

impl Table<'_> {
    /// The row of the object with `uid`: (raw, deleted_at is set).
    pub async fn row(&self, uid: &str) -> anyhow::Result<Option<(Value, bool)>> {
        let c = self.0.client().await?;
        let row = c
            .query_opt(
                "SELECT raw, deleted_at IS NOT NULL FROM krateo_resources WHERE global_uid = $1",
                &[&format!("{CLUSTER}:{uid}")],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Waits until the object's row satisfies `pred`.
    pub async fn wait_row(
        &self,
        uid: &str,
        what: &str,
        pred: impl Fn(&Value, bool) -> bool,
    ) -> anyhow::Result<Value> {
        testkit::eventually(what, WAIT, || async {
            match self.row(uid).await.map_err(|e| e.to_string())? {
                Some((raw, deleted)) if pred(&raw, deleted) => Ok(Some(raw)),
                Some((raw, deleted)) => Err(format!(
                    "row rv {:?} deleted={deleted}",
                    raw.pointer("/metadata/resourceVersion")
                )),
                None => Err("no row".into()),
            }
        })
        .await
    }

    pub async fn count(&self, sql_where: &str) -> anyhow::Result<i64> {
        let c = self.0.client().await?;
        Ok(c.query_one(
            &format!("SELECT count(*) FROM krateo_resources WHERE {sql_where}"),
            &[],
        )
        .await?
        .get(0))
    }

    pub async fn wait_count(&self, sql_where: &str, expected: i64) -> anyhow::Result<()> {
        testkit::eventually(
            &format!("{expected} rows where {sql_where}"),
            WAIT,
            || async {
                let n = self.count(sql_where).await.map_err(|e| e.to_string())?;
                if n == expected {
                    Ok(Some(()))
                } else {
                    Err(format!("{n} rows"))
                }
            },
        )
        .await
    }
}

/// The ingester's environment for database `db` and API server `kubeconfig`, plus `extra`
/// (which wins).
pub fn ingester_env(
    db: &TestDb,
    kubeconfig: &std::path::Path,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = db.ingester_env();
    env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    env.push(("CLUSTER_NAME".into(), CLUSTER.into()));
    env.push(("FLUSH_INTERVAL".into(), "50ms".into()));
    env.push(("DB_READY_TIMEOUT".into(), "20s".into()));
    env.push(("SHUTDOWN_TIMEOUT".into(), "20s".into()));
    for (k, v) in extra {
        env.retain(|(n, _)| n != k);
        env.push(((*k).into(), (*v).into()));
    }
    env
}

/// The ingester's configuration for database `db` (for tests that drive the storage layer
/// in-process), with `extra` flags (`["--history", "true"]`).
pub fn db_config(db: &TestDb, extra: &[&str]) -> resources_ingester::config::Config {
    use clap::Parser;
    let mut args = vec!["resources-ingester".to_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    for (k, v) in db.ingester_env() {
        args.push(format!("--{}", k.to_lowercase().replace('_', "-")));
        args.push(v);
    }
    resources_ingester::config::Config::try_parse_from(args).expect("config")
}

pub fn spawn_ingester(env: &[(String, String)]) -> anyhow::Result<IngesterProcess> {
    IngesterProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_resources-ingester")),
        env,
    )
}

/// [`spawn_ingester`], then waits until `/readyz` answers 200.
pub async fn start_ingester_ready(env: &[(String, String)]) -> anyhow::Result<IngesterProcess> {
    let mut p = spawn_ingester(env)?;
    p.wait_ready(WAIT).await?;
    Ok(p)
}

pub fn uid(v: &Value) -> String {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

pub fn rv(v: &Value) -> String {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

pub fn pod(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]},
        "status": {"phase": "Running"}
    })
}

pub fn configmap(ns: &str, name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data})
}

/// Namespace `ns` with ConfigMaps `cm-0` … `cm-{n-1}` (data `i`: their number).
pub fn seed_configmaps(store: &Store, ns: &str, n: usize) -> anyhow::Result<()> {
    store.create(namespace(ns))?;
    for i in 0..n {
        store.create(configmap(
            ns,
            &format!("cm-{i}"),
            json!({"i": i.to_string()}),
        ))?;
    }
    Ok(())
}

/// A CustomResourceDefinition with the given versions (name, served, storage) and scope
/// (`Namespaced` or `Cluster`).
pub fn crd_json(
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

/// A custom resource (cluster-scoped when `ns` is `None`).
pub fn cr_json(group: &str, version: &str, kind: &str, ns: Option<&str>, name: &str) -> Value {
    let mut v = json!({"apiVersion": format!("{group}/{version}"), "kind": kind,
                       "metadata": {"name": name}, "spec": {"replicas": 1}});
    if let Some(ns) = ns {
        v["metadata"]["namespace"] = json!(ns);
    }
    v
}

/// Fast resume points, for tests that wait on [`Harness::wait_watches_past`].
pub const FAST_CHECKPOINTS: (&str, &str) = ("CHECKPOINT_INTERVAL", "100ms");

impl Harness {
    /// The stored resume points: scope -> resourceVersion.
    pub async fn resume_points(&self) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
        let c = self.db.client().await?;
        let rows = c
            .query(
                "SELECT scope, resource_version FROM krateo_ingester_watch_state WHERE cluster_name = $1",
                &[&CLUSTER],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Waits until every stored resume point of a scope starting with one of `prefixes` is
    /// past `rv`, and each of `required` has one. A resume point is stored only once the lanes
    /// committed everything its watch delivered before it, so with a marker object created
    /// after the object at `rv` in every scope that should be watched, an object at `rv` that
    /// is still without a row was filtered, not "not yet written": a watch that let it through
    /// (a wrong scope, or one shared with the marker) has either committed it or is stuck
    /// at it. (Points move on a scope's own events: the list-and-watch path does not see
    /// bookmarks.) Needs [`FAST_CHECKPOINTS`] in the ingester's environment.
    pub async fn wait_watches_past(
        &self,
        prefixes: &[&str],
        rv: &str,
        required: &[&str],
    ) -> anyhow::Result<()> {
        let rv: i64 = rv.parse()?;
        testkit::eventually(
            &format!("resume points of {prefixes:?} past {rv}, {required:?} among them"),
            WAIT,
            || async {
                let points = self.resume_points().await.map_err(|e| e.to_string())?;
                let missing: Vec<&&str> = required
                    .iter()
                    .filter(|s| !points.contains_key(**s))
                    .collect();
                let behind: Vec<(&String, &i64)> = points
                    .iter()
                    .filter(|(s, p)| prefixes.iter().any(|x| s.starts_with(x)) && **p <= rv)
                    .collect();
                if missing.is_empty() && behind.is_empty() {
                    Ok(Some(()))
                } else {
                    Err(format!(
                        "no resume point: {missing:?}; not past: {behind:?}"
                    ))
                }
            },
        )
        .await
    }
}

/// Sessions of the ingester in this test's database (in a lock wait when `waiting`).
pub async fn ingester_sessions(c: &tokio_postgres::Client, waiting: bool) -> anyhow::Result<i64> {
    Ok(c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'resources-ingester' AND (NOT $1 OR wait_event_type = 'Lock')",
        &[&waiting],
    )
    .await?
    .get(0))
}

/// The environment of one leader-election replica: renew deadline 4 s, retry every 500 ms,
/// and `lease_duration` (how long after its last renewal a standby may take the Lease).
pub fn leader_env<'a>(name: &'a str, lease_duration: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("LEADER_ELECTION", "true"),
        ("POD_NAME", name),
        ("LEASE_NAMESPACE", "default"),
        ("LEASE_DURATION", lease_duration),
        ("LEASE_RENEW_DEADLINE", "4s"),
        ("LEASE_RETRY_PERIOD", "500ms"),
    ]
}

/// The ingester's Lease spec as kube-sim stores it (null when there is none).
pub fn lease_spec(store: &Store) -> Value {
    store
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("default"),
            "resources-ingester",
        )
        .map(|l| l["spec"].clone())
        .unwrap_or_default()
}

/// The `holderIdentity` of the ingester's Lease (empty when there is none).
pub fn lease_holder(store: &Store) -> String {
    lease_spec(store)["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
