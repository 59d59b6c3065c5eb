//! The convergence checker: kube-sim's objects (or a real API server's, [`RealObjects`]) vs.
//! the rows of `krateo_resources`.
//! Every live object of a watched scope must have a live row whose `raw` equals it; every
//! other row of the cluster must have `deleted_at` (rows of scopes nobody watches included,
//! when asked). Reusable by the benchmark and the randomized run: [`check`] for one verdict,
//! [`wait_converged`] to poll with a deadline, [`RegressionMonitor`] to sample the table for a
//! row going back to an older state while faults happen, [`LiveObjectMonitor`] to sample it for
//! a live object's row marked deleted at any moment (a wrong tombstone a later list repairs
//! leaves no trace in the end state).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube_sim::Store;
use tokio_postgres::Client;

/// Which objects and rows to compare: the scopes the ingester watches.
#[derive(Clone, Debug)]
pub struct CheckScope {
    pub cluster: String,
    /// `(apiVersion, kind)` pairs watched, at the version the ingester watches them.
    pub kinds: Vec<(String, String)>,
    /// Namespaces of namespaced objects; empty = all.
    pub namespaces: Vec<String>,
    /// API groups whose custom resources are watched while their CRD exists: a live row of
    /// such a group outside `kinds` (its CRD gone or not served) whose object no longer
    /// exists is a delete the ingester missed (`not_deleted`), whatever
    /// `unwatched_rows_deleted` says.
    pub managed_groups: Vec<String>,
    /// Rows of this cluster outside `kinds` and `namespaces` must be marked deleted too (a
    /// scope no longer watched is retired). Off: such rows are not looked at.
    pub unwatched_rows_deleted: bool,
}

/// The ingester's built-in managed groups.
pub const DEFAULT_MANAGED_GROUPS: &[&str] = &[
    "composition.krateo.io",
    "widgets.templates.krateo.io",
    "core.krateo.io",
    "templates.krateo.io",
    "finops.krateo.io",
    "basic.authn.krateo.io",
    "oidc.authn.krateo.io",
    "oauth.authn.krateo.io",
    "ldap.authn.krateo.io",
    "ai.krateo.io",
];

/// The kinds the ingester's built-in routes and managed groups cover that kube-sim's
/// workload generator creates (the `example.other.io` Thing is deliberately unmanaged).
pub const WORKLOAD_KINDS: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "ReplicaSet"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ("composition.krateo.io/v1alpha2", "FireworksApp"),
    ("widgets.templates.krateo.io/v1beta1", "Panel"),
    ("widgets.templates.krateo.io/v1beta1", "Button"),
    ("core.krateo.io/v1alpha1", "CompositionDefinition"),
];

impl CheckScope {
    /// Every kind of [`WORKLOAD_KINDS`], all namespaces; no other kind may have live rows.
    pub fn workload(cluster: &str) -> CheckScope {
        CheckScope {
            cluster: cluster.to_owned(),
            kinds: WORKLOAD_KINDS
                .iter()
                .map(|(a, k)| ((*a).to_owned(), (*k).to_owned()))
                .collect(),
            namespaces: Vec::new(),
            managed_groups: DEFAULT_MANAGED_GROUPS
                .iter()
                .map(|g| (*g).to_owned())
                .collect(),
            unwatched_rows_deleted: true,
        }
    }

    fn namespace_watched(&self, namespace: &str) -> bool {
        namespace.is_empty()
            || self.namespaces.is_empty()
            || self.namespaces.iter().any(|n| n == namespace)
    }

    /// Whether a row of `group`/`kind` in `namespace` (`""`: cluster-scoped) is watched.
    fn watches(&self, group: &str, kind: &str, namespace: &str) -> bool {
        let kind_watched = self
            .kinds
            .iter()
            .any(|(av, k)| k == kind && group_of(av) == group);
        kind_watched && self.namespace_watched(namespace)
    }

    /// Whether a row outside the watched kinds belongs to a managed group (a custom resource
    /// whose CRD is gone or not served) in a watched namespace.
    fn managed_but_unwatched(&self, group: &str, namespace: &str) -> bool {
        self.managed_groups.iter().any(|g| g == group) && self.namespace_watched(namespace)
    }
}

/// The group of an apiVersion (`""` for the core group).
pub fn group_of(api_version: &str) -> &str {
    api_version
        .rsplit_once('/')
        .map(|(g, _)| g)
        .unwrap_or_default()
}

#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub objects: usize,
    pub live_rows: usize,
    pub deleted_rows: usize,
    /// Live objects without a row.
    pub missing: Vec<String>,
    /// Live objects whose row is marked deleted.
    pub wrongly_deleted: Vec<String>,
    /// Live rows whose `raw` differs from the object.
    pub stale: Vec<String>,
    /// Live rows of objects that are gone.
    pub not_deleted: Vec<String>,
    /// Live rows of scopes not watched (a kind, a namespace) when the scope asks for them.
    pub unwatched_live: Vec<String>,
    /// Rows whose `object_resource_version` column disagrees with their `raw`.
    pub inconsistent: Vec<String>,
}

impl Verdict {
    fn lists(&self) -> [(&'static str, &Vec<String>); 6] {
        [
            ("missing", &self.missing),
            ("wrongly_deleted", &self.wrongly_deleted),
            ("stale", &self.stale),
            ("not_deleted", &self.not_deleted),
            ("unwatched_live", &self.unwatched_live),
            ("inconsistent", &self.inconsistent),
        ]
    }

    pub fn converged(&self) -> bool {
        self.lists().iter().all(|(_, l)| l.is_empty())
    }

    /// The first violation, e.g. `wrongly_deleted: Pod ns-0/p (uid)`; `None` when converged.
    pub fn first_violation(&self) -> Option<String> {
        self.lists()
            .iter()
            .find_map(|(what, l)| l.first().map(|v| format!("{what}: {v}")))
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} objects={} live_rows={} deleted_rows={}",
            if self.converged() {
                "CONVERGED"
            } else {
                "NOT CONVERGED"
            },
            self.objects,
            self.live_rows,
            self.deleted_rows,
        )?;
        for (what, list) in self.lists() {
            write!(f, " {what}={}", list.len())?;
        }
        for (what, list) in self.lists() {
            if !list.is_empty() {
                let first: Vec<&str> = list.iter().take(5).map(String::as_str).collect();
                write!(f, "\n  {what}: {}", first.join(", "))?;
                if list.len() > 5 {
                    write!(f, " (+{} more)", list.len() - 5)?;
                }
            }
        }
        Ok(())
    }
}

fn uid_of(v: &serde_json::Value) -> Option<String> {
    v.pointer("/metadata/uid")
        .and_then(|u| u.as_str())
        .map(str::to_owned)
}

fn describe(obj: &serde_json::Value) -> String {
    let s = |p: &str| obj.pointer(p).and_then(|v| v.as_str()).unwrap_or("");
    let ns = s("/metadata/namespace");
    format!(
        "{} {}{}{} ({})",
        s("/kind"),
        ns,
        if ns.is_empty() { "" } else { "/" },
        s("/metadata/name"),
        s("/metadata/uid")
    )
}

/// The live objects of the watched scopes, by uid.
fn watched_objects(store: &Store, scope: &CheckScope) -> HashMap<String, serde_json::Value> {
    let mut objects = HashMap::new();
    for (api_version, kind) in &scope.kinds {
        for mut obj in store.list(api_version, kind, None) {
            // As the server serves it at the watched version (the store keeps the version it
            // was written at; versions of one kind share the objects).
            obj["apiVersion"] = serde_json::Value::from(api_version.as_str());
            let ns = obj
                .pointer("/metadata/namespace")
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            if !scope.watches(group_of(api_version), kind, ns) {
                continue;
            }
            if let Some(uid) = uid_of(&obj) {
                objects.insert(uid, obj);
            }
        }
    }
    objects
}

/// What the checker compares the table with: the live objects of the watched scopes (by uid,
/// as the server serves them at the watched version) and the uids of every object that
/// exists, watched or not.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub watched: HashMap<String, serde_json::Value>,
    pub existing: HashSet<String>,
}

impl Snapshot {
    /// kube-sim's objects.
    pub fn of_store(store: &Store, scope: &CheckScope) -> Snapshot {
        Snapshot {
            watched: watched_objects(store, scope),
            existing: store.list_all().iter().filter_map(uid_of).collect(),
        }
    }
}

/// A real API server's objects, read over HTTP (`converge-fuzz --real`): each kind listed
/// with one request (all namespaces), items completed with `apiVersion` and `kind` as a watch
/// serves them.
#[derive(Clone)]
pub struct RealObjects {
    pub http: reqwest::Client,
    /// `https://127.0.0.1:PORT`
    pub server: String,
}

/// The REST collection path of `api_version` `plural`, all namespaces.
pub fn collection_path(api_version: &str, plural: &str) -> String {
    if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    }
}

/// The plural of a built-in kind the routes know, else the Kubernetes default (lowercase + s).
pub fn builtin_plural(kind: &str) -> String {
    crate::fuzz::deployment::DEFAULT_ROUTES
        .lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.trim().split('/').collect();
            match parts[..] {
                [_, _, plural, k] if k == kind => Some(plural.to_owned()),
                _ => None,
            }
        })
        .next()
        .unwrap_or_else(|| format!("{}s", kind.to_lowercase()))
}

impl RealObjects {
    /// Every object of `api_version` `plural` (`None`: the kind is not served: 404), typed.
    pub async fn list(
        &self,
        api_version: &str,
        kind: &str,
        plural: &str,
    ) -> anyhow::Result<Option<Vec<serde_json::Value>>> {
        let url = format!("{}{}", self.server, collection_path(api_version, plural));
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(20))
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
        let mut list: serde_json::Value = resp.json().await?;
        let items = match list.get_mut("items").map(serde_json::Value::take) {
            Some(serde_json::Value::Array(items)) => items,
            _ => Vec::new(),
        };
        Ok(Some(
            items
                .into_iter()
                .map(|mut o| {
                    o["apiVersion"] = api_version.into();
                    o["kind"] = kind.into();
                    o
                })
                .collect(),
        ))
    }

    /// The CRDs the server has.
    pub async fn crds(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self
            .list(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
            )
            .await?
            .unwrap_or_default())
    }

    /// `(apiVersion, kind, plural)` of every served version of every CRD in `crds`.
    fn crd_kinds(crds: &[serde_json::Value]) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for crd in crds {
            let spec = &crd["spec"];
            let (Some(group), Some(kind), Some(plural)) = (
                spec["group"].as_str(),
                spec["names"]["kind"].as_str(),
                spec["names"]["plural"].as_str(),
            ) else {
                continue;
            };
            for v in spec["versions"].as_array().into_iter().flatten() {
                if v["served"].as_bool().unwrap_or(false) {
                    if let Some(name) = v["name"].as_str() {
                        out.push((
                            format!("{group}/{name}"),
                            kind.to_owned(),
                            plural.to_owned(),
                        ));
                    }
                }
            }
        }
        out
    }

    /// The plural of `api_version` `kind`: a CRD's, else a built-in's.
    fn plural(crds: &[(String, String, String)], api_version: &str, kind: &str) -> String {
        crds.iter()
            .find(|(av, k, _)| av == api_version && k == kind)
            .map(|(_, _, p)| p.clone())
            .unwrap_or_else(|| builtin_plural(kind))
    }

    /// What the server has now: the scope's kinds, and for `existing` also every served
    /// version of every CRD (a custom resource of a kind no longer watched still exists).
    pub async fn snapshot(&self, scope: &CheckScope) -> anyhow::Result<Snapshot> {
        let crds = Self::crd_kinds(&self.crds().await?);
        let mut snap = Snapshot::default();
        for (api_version, kind) in &scope.kinds {
            let plural = Self::plural(&crds, api_version, kind);
            for obj in self
                .list(api_version, kind, &plural)
                .await?
                .unwrap_or_default()
            {
                let Some(uid) = uid_of(&obj) else { continue };
                snap.existing.insert(uid.clone());
                let ns = obj
                    .pointer("/metadata/namespace")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default();
                if scope.watches(group_of(api_version), kind, ns) {
                    snap.watched.insert(uid, obj);
                }
            }
        }
        for (api_version, kind, plural) in &crds {
            if scope
                .kinds
                .iter()
                .any(|(a, k)| a == api_version && k == kind)
            {
                continue;
            }
            for obj in self
                .list(api_version, kind, plural)
                .await?
                .unwrap_or_default()
            {
                snap.existing.extend(uid_of(&obj));
            }
        }
        Ok(snap)
    }

    /// The uids of every object of `kinds` (`(apiVersion, kind)`) and of every served custom
    /// resource: the live side of a [`LiveObjectMonitor`] on a real server.
    pub async fn live_uids(&self, kinds: &[(String, String)]) -> anyhow::Result<HashSet<String>> {
        let crds = Self::crd_kinds(&self.crds().await?);
        let mut wanted: Vec<(String, String, String)> = kinds
            .iter()
            .map(|(a, k)| (a.clone(), k.clone(), Self::plural(&crds, a, k)))
            .collect();
        wanted.extend(crds);
        wanted.sort();
        wanted.dedup();
        let mut uids = HashSet::new();
        for (a, k, p) in &wanted {
            for obj in self.list(a, k, p).await?.unwrap_or_default() {
                uids.extend(uid_of(&obj));
            }
        }
        Ok(uids)
    }
}

/// One row of `krateo_resources`, as the checker reads it.
struct Row {
    uid: String,
    group: String,
    kind: String,
    namespace: String,
    raw: serde_json::Value,
    live: bool,
    object_rv: Option<i64>,
    raw_rv: Option<String>,
}

async fn rows(db: &Client, cluster: &str) -> anyhow::Result<Vec<Row>> {
    let rows = db
        .query(
            "SELECT uid, resource_group, resource_kind, namespace, raw, deleted_at IS NULL,
                    object_resource_version, (raw->'metadata'->>'resourceVersion')
               FROM krateo_resources WHERE cluster_name = $1",
            &[&cluster],
        )
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Row {
                uid: r.try_get(0)?,
                group: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                kind: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                namespace: r.try_get::<_, Option<String>>(3)?.unwrap_or_default(),
                raw: r.try_get(4)?,
                live: r.try_get(5)?,
                object_rv: r.try_get(6)?,
                raw_rv: r.try_get(7)?,
            })
        })
        .collect()
}

pub async fn check(store: &Store, db: &Client, scope: &CheckScope) -> anyhow::Result<Verdict> {
    check_snapshot(&Snapshot::of_store(store, scope), db, scope).await
}

/// [`check`] against a snapshot of the objects (kube-sim's or a real server's).
pub async fn check_snapshot(
    snapshot: &Snapshot,
    db: &Client,
    scope: &CheckScope,
) -> anyhow::Result<Verdict> {
    let objects = &snapshot.watched;
    // Every object the server still has, watched or not (any kind, any version).
    let existing = &snapshot.existing;
    let mut v = Verdict {
        objects: objects.len(),
        ..Verdict::default()
    };
    let mut seen = HashSet::new();
    for row in rows(db, &scope.cluster).await? {
        if row.live {
            v.live_rows += 1;
        } else {
            v.deleted_rows += 1;
        }
        if let (Some(orv), Some(Ok(rrv))) =
            (row.object_rv, row.raw_rv.as_deref().map(str::parse::<i64>))
        {
            if orv != rrv {
                v.inconsistent.push(format!(
                    "{} object_resource_version {orv} raw rv {rrv}",
                    row.uid
                ));
            }
        }
        if !scope.watches(&row.group, &row.kind, &row.namespace) {
            if !row.live {
                continue;
            }
            if scope.managed_but_unwatched(&row.group, &row.namespace)
                && !existing.contains(&row.uid)
            {
                v.not_deleted.push(format!(
                    "{} (kind no longer watched: CRD gone or not served)",
                    describe(&row.raw)
                ));
            } else if scope.unwatched_rows_deleted {
                v.unwatched_live.push(describe(&row.raw));
            }
            continue;
        }
        match objects.get(&row.uid) {
            Some(obj) => {
                seen.insert(row.uid.clone());
                if !row.live {
                    v.wrongly_deleted.push(format!(
                        "{} row rv {} object rv {}",
                        describe(obj),
                        row.raw_rv.as_deref().unwrap_or("?"),
                        rv_of(obj)
                    ));
                } else if row.raw != *obj {
                    let av =
                        |o: &serde_json::Value| o["apiVersion"].as_str().unwrap_or("?").to_owned();
                    let versions = if av(&row.raw) == av(obj) {
                        String::new()
                    } else {
                        format!(" (row {} object {})", av(&row.raw), av(obj))
                    };
                    v.stale.push(format!(
                        "{} row rv {} object rv {}{versions}",
                        describe(obj),
                        row.raw_rv.as_deref().unwrap_or("?"),
                        rv_of(obj)
                    ));
                }
            }
            None if row.live => v.not_deleted.push(describe(&row.raw)),
            None => {}
        }
    }
    for (uid, obj) in objects.iter() {
        if !seen.contains(uid) {
            v.missing.push(format!("{} (no row)", describe(obj)));
        }
    }
    // Deterministic output: the first violation of a seed is the same on every run.
    for list in [
        &mut v.missing,
        &mut v.wrongly_deleted,
        &mut v.stale,
        &mut v.not_deleted,
        &mut v.unwatched_live,
        &mut v.inconsistent,
    ] {
        list.sort();
    }
    Ok(v)
}

fn rv_of(obj: &serde_json::Value) -> &str {
    obj.pointer("/metadata/resourceVersion")
        .and_then(|r| r.as_str())
        .unwrap_or("?")
}

/// Polls [`check`] until it is green; on timeout the error carries the last verdict.
pub async fn wait_converged(
    store: &Store,
    db: &Client,
    scope: &CheckScope,
    timeout: Duration,
) -> anyhow::Result<Verdict> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check(store, db, scope).await {
            Ok(v) if v.converged() => return Ok(v),
            Ok(v) => v.to_string(),
            Err(e) => format!("check failed: {e:#}"),
        };
        if Instant::now() >= deadline {
            anyhow::bail!("not converged after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What a table monitor folds its samples into: how many it took, what it found.
pub trait Findings: Default + Send + 'static {
    fn samples(&self) -> u64;
    fn violations(&self) -> &[String];
}

/// A task that samples the table every `every` until stopped, folding each sample into `F`:
/// the one loop behind [`RegressionMonitor`] and [`LiveObjectMonitor`].
pub struct TableMonitor<F: Findings> {
    shared: Arc<Mutex<F>>,
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl<F: Findings> TableMonitor<F> {
    /// Runs `sample` (one read of the table and whatever it is checked against, folded into
    /// the findings) every `every` until [`Self::finish`].
    fn spawn<S, Fut>(every: Duration, findings: F, mut sample: S) -> Self
    where
        S: FnMut(Arc<Mutex<F>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let shared = Arc::new(Mutex::new(findings));
        let stop = Arc::new(tokio::sync::Notify::new());
        let (shared2, stop2) = (shared.clone(), stop.clone());
        let task = tokio::spawn(async move {
            loop {
                sample(shared2.clone()).await;
                if tokio::time::timeout(every, stop2.notified()).await.is_ok() {
                    return;
                }
            }
        });
        TableMonitor { shared, stop, task }
    }

    /// Violations so far (the monitor keeps sampling).
    pub fn violations(&self) -> Vec<String> {
        self.shared
            .lock()
            .map(|s| s.violations().to_vec())
            .unwrap_or_default()
    }

    /// Samples taken so far.
    pub fn samples(&self) -> u64 {
        self.shared.lock().map(|s| s.samples()).unwrap_or_default()
    }

    /// Stops sampling; returns (samples taken, violations).
    pub async fn finish(self) -> (u64, Vec<String>) {
        let findings = self.stop_with_findings().await;
        (findings.samples(), findings.violations().to_vec())
    }

    /// Stops sampling; returns everything it folded in, to go on from elsewhere (e.g. the
    /// same table on another server: [`RegressionMonitor::resume`]).
    pub async fn stop_with_findings(self) -> F {
        self.stop.notify_one();
        let TableMonitor { shared, task, .. } = self;
        let _ = task.await;
        shared
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

/// Samples the table while a test runs (every `every`, ~100 ms) and records every row that went
/// back in time: per `global_uid` the highest `object_resource_version` seen so far; any
/// later sample with a lower one is a violation (a newer state was overwritten by an older
/// one). A row that changes only between deleted and live at one resourceVersion is not a
/// regression here (a wrong sweep tombstone repaired by a relist looks like that); whether
/// it ends in the right state is the checker's verdict. Stop it with
/// [`RegressionMonitor::finish`].
pub type RegressionMonitor = TableMonitor<Regressions>;

/// The findings of a [`RegressionMonitor`].
#[derive(Default)]
pub struct Regressions {
    samples: u64,
    violations: Vec<String>,
    /// global_uid -> highest resourceVersion seen.
    highest: HashMap<String, i64>,
    /// (global_uid, lower resourceVersion) already reported: one violation, not one per sample.
    reported: HashSet<(String, i64)>,
}

impl Findings for Regressions {
    fn samples(&self) -> u64 {
        self.samples
    }
    fn violations(&self) -> &[String] {
        &self.violations
    }
}

impl Regressions {
    /// Folds one sample in; returns nothing, records violations.
    fn observe(&mut self, global_uid: String, rv: i64) {
        match self.highest.get_mut(&global_uid) {
            Some(old) if rv < *old => {
                let msg = format!("{global_uid}: resourceVersion {old} -> {rv}");
                if self.reported.insert((global_uid, rv)) {
                    self.violations.push(msg);
                }
            }
            Some(old) => *old = rv,
            None => {
                self.highest.insert(global_uid, rv);
            }
        }
    }
}

impl Regressions {
    /// Forgets the versions seen: the database went back in time by the test's own hand (a
    /// failover that lost commits), so the rows it holds now are the new reference. Samples
    /// and violations are kept.
    pub fn forget_versions(&mut self) {
        self.highest.clear();
        self.reported.clear();
    }
}

impl RegressionMonitor {
    pub fn start(db: Client, cluster: &str, every: Duration) -> RegressionMonitor {
        Self::resume(db, cluster, every, Regressions::default())
    }

    /// [`Self::start`] going on from `findings` (of a monitor stopped with
    /// [`TableMonitor::stop_with_findings`]): the same table read on another server, e.g. a
    /// promoted standby, where a row older than one seen before is still a regression.
    pub fn resume(
        db: Client,
        cluster: &str,
        every: Duration,
        findings: Regressions,
    ) -> RegressionMonitor {
        let db = Arc::new(db);
        let cluster = cluster.to_owned();
        TableMonitor::spawn(every, findings, move |shared: Arc<Mutex<Regressions>>| {
            let (db, cluster) = (db.clone(), cluster.clone());
            async move {
                // The table may not exist yet, or the query may fail: sample again later.
                let Ok(rows) = db
                    .query(
                        "SELECT global_uid, object_resource_version
                           FROM krateo_resources WHERE cluster_name = $1",
                        &[&cluster],
                    )
                    .await
                else {
                    return;
                };
                let Ok(mut s) = shared.lock() else { return };
                for r in rows {
                    let (Ok(g), Ok(Some(rv))) =
                        (r.try_get::<_, String>(0), r.try_get::<_, Option<i64>>(1))
                    else {
                        continue;
                    };
                    s.observe(g, rv);
                }
                s.samples += 1;
            }
        })
    }
}

/// Samples the table while a test runs (every `every`; 20-50 ms catches a tombstone that a
/// watch event repairs a moment later) and records every row marked deleted whose object is
/// live in kube-sim at that moment: a wrong sweep or tombstone, even one a later list or event
/// repairs. One sample reads the deleted rows first and the store after: an object the store
/// still has after the row was read deleted was live when it was read (a uid never comes
/// back), so an object deleted meanwhile is never reported. Every row of `cluster` is looked
/// at, whatever its kind: use it only where no object is meant to lose its row while it exists
/// (a CRD that stops serving a version, a namespace or route no longer watched, a scope another
/// instance retires do that by design). Stop it with [`LiveObjectMonitor::finish`].
pub type LiveObjectMonitor = TableMonitor<LiveDeletions>;

/// The findings of a [`LiveObjectMonitor`].
#[derive(Default)]
pub struct LiveDeletions {
    samples: u64,
    violations: Vec<String>,
    /// uids already reported: one violation per object, not one per sample.
    reported: HashSet<String>,
}

impl Findings for LiveDeletions {
    fn samples(&self) -> u64 {
        self.samples
    }
    fn violations(&self) -> &[String] {
        &self.violations
    }
}

impl LiveDeletions {
    /// Folds one sample in: `deleted` rows (uid, description) against the uids live in the
    /// store, read after them.
    fn observe(&mut self, deleted: Vec<(String, String)>, live: &HashSet<String>) {
        for (uid, what) in deleted {
            if live.contains(&uid) && self.reported.insert(uid) {
                self.violations
                    .push(format!("{what} marked deleted while the object is live"));
            }
        }
        self.samples += 1;
    }
}

/// Where a [`LiveObjectMonitor`] reads which objects are live.
#[derive(Clone)]
pub enum LiveSource {
    /// kube-sim's store: every object of any kind.
    Store(Store),
    /// A real API server: every object of these `(apiVersion, kind)` and every served custom
    /// resource, listed over HTTP at each sample (a sample takes a few requests, so sample
    /// every 100 ms or more). A sample whose lists fail is skipped.
    Real {
        objects: RealObjects,
        kinds: Vec<(String, String)>,
    },
}

impl LiveSource {
    async fn live_uids(&self) -> Option<HashSet<String>> {
        match self {
            LiveSource::Store(store) => Some(store.list_all().iter().filter_map(uid_of).collect()),
            LiveSource::Real { objects, kinds } => objects.live_uids(kinds).await.ok(),
        }
    }
}

/// A row marked deleted: its uid, and how a violation names it.
fn deleted_row(r: &tokio_postgres::Row) -> Option<(String, String)> {
    let uid: String = r.try_get(0).ok()?;
    let s = |i| r.try_get::<_, Option<String>>(i).ok().flatten();
    let ns = s(2).unwrap_or_default();
    let what = format!(
        "{} {}{}{} ({uid}) row rv {} at {}",
        s(1).unwrap_or_default(),
        ns,
        if ns.is_empty() { "" } else { "/" },
        s(3).unwrap_or_default(),
        r.try_get::<_, Option<i64>>(4)
            .ok()
            .flatten()
            .map_or("?".to_owned(), |v| v.to_string()),
        s(5).unwrap_or_default(),
    );
    Some((uid, what))
}

impl LiveObjectMonitor {
    pub fn start(store: Store, db: Client, cluster: &str, every: Duration) -> LiveObjectMonitor {
        Self::start_on(LiveSource::Store(store), db, cluster, every)
    }

    /// [`Self::start`] against any [`LiveSource`] (a real API server too).
    pub fn start_on(
        source: LiveSource,
        db: Client,
        cluster: &str,
        every: Duration,
    ) -> LiveObjectMonitor {
        let (db, cluster) = (Arc::new(db), cluster.to_owned());
        TableMonitor::spawn(
            every,
            LiveDeletions::default(),
            move |shared: Arc<Mutex<LiveDeletions>>| {
                let (db, cluster, source) = (db.clone(), cluster.clone(), source.clone());
                async move {
                    // The table may not exist yet, or the query may fail: sample again later.
                    let Ok(rows) = db
                        .query(
                            "SELECT uid, resource_kind, namespace, resource_name,
                                object_resource_version, deleted_at::text
                           FROM krateo_resources
                          WHERE cluster_name = $1 AND deleted_at IS NOT NULL",
                            &[&cluster],
                        )
                        .await
                    else {
                        return;
                    };
                    let deleted: Vec<(String, String)> =
                        rows.iter().filter_map(deleted_row).collect();
                    // Read after the rows: see the type's comment.
                    if let Some(live) = source.live_uids().await {
                        let Ok(mut s) = shared.lock() else { return };
                        s.observe(deleted, &live);
                    }
                }
            },
        )
    }

    /// Stops sampling and fails with every violation, or when it never sampled.
    pub async fn assert_clean(self) -> anyhow::Result<u64> {
        let (samples, violations) = self.finish().await;
        anyhow::ensure!(
            violations.is_empty(),
            "live objects marked deleted while the test ran ({samples} samples):\n  {}",
            violations.join("\n  ")
        );
        anyhow::ensure!(samples > 0, "the monitor never read the table");
        Ok(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_resource_version_after_a_higher_one_is_a_regression() {
        let mut s = Regressions::default();
        s.observe("c:a".into(), 5);
        s.observe("c:a".into(), 7);
        s.observe("c:a".into(), 7);
        s.observe("c:b".into(), 3);
        assert!(s.violations.is_empty());
        s.observe("c:a".into(), 6);
        assert_eq!(s.violations, vec!["c:a: resourceVersion 7 -> 6"]);
        // Seen again in the next sample: still one finding; the highest stays the reference.
        s.observe("c:a".into(), 6);
        assert_eq!(s.violations.len(), 1);
        s.observe("c:a".into(), 5);
        assert_eq!(s.violations.len(), 2);
        // A database the test itself took back in time: older rows are the new reference,
        // what was found before stays found.
        s.forget_versions();
        s.observe("c:a".into(), 4);
        assert_eq!(s.violations.len(), 2);
        s.observe("c:a".into(), 3);
        assert_eq!(s.violations.len(), 3);
    }

    #[test]
    fn a_deleted_row_of_a_live_object_is_reported_once() {
        let mut s = LiveDeletions::default();
        let live: HashSet<String> = ["a".to_owned(), "b".to_owned()].into();
        let row = |uid: &str| (uid.to_owned(), format!("Pod ns/{uid} ({uid})"));
        // A deleted row whose object is gone is right.
        s.observe(vec![row("gone")], &live);
        assert!(s.violations.is_empty());
        s.observe(vec![row("a"), row("gone")], &live);
        assert_eq!(
            s.violations,
            vec!["Pod ns/a (a) marked deleted while the object is live"]
        );
        // Still deleted in the next sample: one finding.
        s.observe(vec![row("a"), row("b")], &live);
        assert_eq!(s.violations.len(), 2);
        s.observe(vec![row("a"), row("b")], &live);
        assert_eq!(s.violations.len(), 2);
        assert_eq!(s.samples, 4);
    }

    #[test]
    fn scopes_match_rows_by_group_kind_and_namespace() {
        let scope = CheckScope {
            cluster: "c".into(),
            kinds: vec![
                ("v1".into(), "Pod".into()),
                (
                    "composition.krateo.io/v1alpha2".into(),
                    "FireworksApp".into(),
                ),
            ],
            namespaces: vec!["a".into()],
            managed_groups: Vec::new(),
            unwatched_rows_deleted: true,
        };
        assert!(scope.watches("", "Pod", "a"));
        assert!(!scope.watches("", "Pod", "b"));
        assert!(scope.watches("composition.krateo.io", "FireworksApp", "a"));
        assert!(!scope.watches("other.io", "FireworksApp", "a"));
        assert!(!scope.watches("", "ConfigMap", "a"));
        assert_eq!(group_of("v1"), "");
        assert_eq!(group_of("apps/v1"), "apps");
    }
}
