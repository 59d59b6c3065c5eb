//! The convergence checker: kube-sim's objects vs. the rows of `krateo_resources`.
//! Every live object must have a live row whose `raw` equals it; every other row of the
//! checked kinds must have `deleted_at`. Reusable by the benchmark: [`check`] for one
//! verdict, [`wait_converged`] to poll with a deadline, [`RegressionMonitor`] to watch the
//! table for a row going back to an older state while faults happen.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube_sim::Store;
use tokio_postgres::Client;

/// Which objects and rows to compare.
#[derive(Clone, Debug)]
pub struct CheckScope {
    pub cluster: String,
    /// `(apiVersion, kind)` pairs to compare.
    pub kinds: Vec<(String, String)>,
    /// Namespaces of namespaced objects; empty = all.
    pub namespaces: Vec<String>,
}

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
    /// Every kind of [`WORKLOAD_KINDS`], all namespaces.
    pub fn workload(cluster: &str) -> CheckScope {
        CheckScope {
            cluster: cluster.to_owned(),
            kinds: WORKLOAD_KINDS
                .iter()
                .map(|(a, k)| ((*a).to_owned(), (*k).to_owned()))
                .collect(),
            namespaces: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub objects: usize,
    pub live_rows: usize,
    pub deleted_rows: usize,
    /// Live objects without a live row.
    pub missing: Vec<String>,
    /// Live rows whose `raw` differs from the object.
    pub stale: Vec<String>,
    /// Live rows of objects that are gone.
    pub not_deleted: Vec<String>,
    /// Rows whose `object_resource_version` column disagrees with their `raw`.
    pub inconsistent: Vec<String>,
}

impl Verdict {
    pub fn converged(&self) -> bool {
        self.missing.is_empty()
            && self.stale.is_empty()
            && self.not_deleted.is_empty()
            && self.inconsistent.is_empty()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} objects={} live_rows={} deleted_rows={} missing={} stale={} not_deleted={} inconsistent={}",
            if self.converged() { "CONVERGED" } else { "NOT CONVERGED" },
            self.objects,
            self.live_rows,
            self.deleted_rows,
            self.missing.len(),
            self.stale.len(),
            self.not_deleted.len(),
            self.inconsistent.len(),
        )?;
        for (what, list) in [
            ("missing", &self.missing),
            ("stale", &self.stale),
            ("not_deleted", &self.not_deleted),
            ("inconsistent", &self.inconsistent),
        ] {
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

pub async fn check(store: &Store, db: &Client, scope: &CheckScope) -> anyhow::Result<Verdict> {
    let mut objects: HashMap<String, serde_json::Value> = HashMap::new();
    for (api_version, kind) in &scope.kinds {
        for obj in store.list(api_version, kind, None) {
            let ns = obj.pointer("/metadata/namespace").and_then(|n| n.as_str());
            if let Some(ns) = ns {
                if !scope.namespaces.is_empty() && !scope.namespaces.iter().any(|n| n == ns) {
                    continue;
                }
            }
            if let Some(uid) = uid_of(&obj) {
                objects.insert(uid, obj);
            }
        }
    }
    let kinds: Vec<String> = scope.kinds.iter().map(|(_, k)| k.clone()).collect();
    let rows = db
        .query(
            "SELECT uid, raw, deleted_at IS NULL, object_resource_version,
                    (raw->'metadata'->>'resourceVersion')
               FROM krateo_resources WHERE cluster_name = $1 AND resource_kind = ANY($2)",
            &[&scope.cluster, &kinds],
        )
        .await?;
    let mut v = Verdict {
        objects: objects.len(),
        ..Verdict::default()
    };
    let mut seen = HashSet::new();
    for row in rows {
        let uid: String = row.get(0);
        let raw: serde_json::Value = row.get(1);
        let live: bool = row.get(2);
        let orv: Option<i64> = row.get(3);
        let raw_rv: Option<String> = row.get(4);
        if live {
            v.live_rows += 1;
        } else {
            v.deleted_rows += 1;
        }
        if let (Some(orv), Some(Ok(rrv))) = (orv, raw_rv.as_deref().map(str::parse::<i64>)) {
            if orv != rrv {
                v.inconsistent
                    .push(format!("{uid} object_resource_version {orv} raw rv {rrv}"));
            }
        }
        match objects.get(&uid) {
            Some(obj) => {
                seen.insert(uid.clone());
                if !live {
                    v.missing
                        .push(format!("{} (row deleted, object live)", describe(obj)));
                } else if raw != *obj {
                    v.stale.push(format!(
                        "{} row rv {} object rv {}",
                        describe(obj),
                        raw_rv.as_deref().unwrap_or("?"),
                        obj.pointer("/metadata/resourceVersion")
                            .and_then(|r| r.as_str())
                            .unwrap_or("?")
                    ));
                }
            }
            None if live => v.not_deleted.push(describe(&raw)),
            None => {}
        }
    }
    for (uid, obj) in &objects {
        if !seen.contains(uid) {
            v.missing.push(format!("{} (no row)", describe(obj)));
        }
    }
    Ok(v)
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

/// Samples the table while a test runs and records every row that went back in time: its
/// `object_resource_version` decreased, or a deleted row came back to life without a newer
/// state. Stop it with [`RegressionMonitor::finish`].
pub struct RegressionMonitor {
    violations: Arc<Mutex<Vec<String>>>,
    samples: Arc<Mutex<u64>>,
    stop: tokio_util_like::Stop,
    task: tokio::task::JoinHandle<()>,
}

mod tokio_util_like {
    /// A tiny stop flag (testkit does not depend on tokio-util).
    #[derive(Clone, Default)]
    pub struct Stop(
        std::sync::Arc<tokio::sync::Notify>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    );
    impl Stop {
        pub fn fire(&self) {
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
            self.0.notify_waiters();
        }
        pub fn fired(&self) -> bool {
            self.1.load(std::sync::atomic::Ordering::SeqCst)
        }
        pub async fn wait(&self, d: std::time::Duration) {
            let _ = tokio::time::timeout(d, self.0.notified()).await;
        }
    }
}

impl RegressionMonitor {
    pub fn start(db: Client, cluster: &str, every: Duration) -> RegressionMonitor {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(0u64));
        let stop = tokio_util_like::Stop::default();
        let (v2, s2, stop2, cluster) = (
            violations.clone(),
            samples.clone(),
            stop.clone(),
            cluster.to_owned(),
        );
        let task = tokio::spawn(async move {
            // global_uid -> (highest rv seen, deleted at that rv)
            let mut seen: HashMap<String, (i64, bool)> = HashMap::new();
            while !stop2.fired() {
                if let Ok(rows) = db
                    .query(
                        "SELECT global_uid, object_resource_version, deleted_at IS NOT NULL
                           FROM krateo_resources WHERE cluster_name = $1",
                        &[&cluster],
                    )
                    .await
                {
                    for r in rows {
                        let g: String = r.get(0);
                        let Some(rv): Option<i64> = r.get(1) else {
                            continue;
                        };
                        let deleted: bool = r.get(2);
                        match seen.get(&g).copied() {
                            Some((old, _)) if rv < old => v2
                                .lock()
                                .unwrap()
                                .push(format!("{g}: resourceVersion {old} -> {rv}")),
                            Some((old, true)) if rv == old && !deleted => v2.lock().unwrap().push(
                                format!("{g}: deleted at rv {old}, then live again at the same rv"),
                            ),
                            _ => {}
                        }
                        let e = seen.entry(g).or_insert((rv, deleted));
                        if rv >= e.0 {
                            *e = (rv, deleted || (rv == e.0 && e.1));
                        }
                    }
                    *s2.lock().unwrap() += 1;
                }
                stop2.wait(every).await;
            }
        });
        RegressionMonitor {
            violations,
            samples,
            stop,
            task,
        }
    }

    /// Stops sampling; returns (samples taken, violations).
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.fire();
        let _ = self.task.await;
        let samples = *self.samples.lock().unwrap();
        let v = self.violations.lock().unwrap().clone();
        (samples, v)
    }
}
