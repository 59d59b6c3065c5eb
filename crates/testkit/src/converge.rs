//! The convergence checker: kube-sim's objects vs. the rows of `krateo_resources`.
//! Every live object must have a live row whose `raw` equals it; every other row of the
//! checked kinds must have `deleted_at`.

use std::collections::HashMap;

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

#[derive(Debug, Default)]
pub struct Verdict {
    pub objects: usize,
    pub live_rows: usize,
    pub missing: Vec<String>,
    pub stale: Vec<String>,
    pub not_deleted: Vec<String>,
}

impl Verdict {
    pub fn converged(&self) -> bool {
        self.missing.is_empty() && self.stale.is_empty() && self.not_deleted.is_empty()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "objects={} live_rows={} missing={} stale={} not_deleted={}",
            self.objects,
            self.live_rows,
            self.missing.len(),
            self.stale.len(),
            self.not_deleted.len()
        )?;
        for (what, list) in [
            ("missing", &self.missing),
            ("stale", &self.stale),
            ("not_deleted", &self.not_deleted),
        ] {
            if let Some(first) = list.first() {
                write!(f, "; first {what}: {first}")?;
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
            "SELECT uid, raw, deleted_at IS NULL FROM krateo_resources WHERE cluster_name = $1 AND resource_kind = ANY($2)",
            &[&scope.cluster, &kinds],
        )
        .await?;
    let mut v = Verdict {
        objects: objects.len(),
        ..Verdict::default()
    };
    let mut seen = std::collections::HashSet::new();
    for row in rows {
        let uid: String = row.get(0);
        let raw: serde_json::Value = row.get(1);
        let live: bool = row.get(2);
        if live {
            v.live_rows += 1;
        }
        match objects.get(&uid) {
            Some(obj) => {
                seen.insert(uid.clone());
                if !live {
                    v.missing.push(format!("{uid} (row deleted, object live)"));
                } else if raw != *obj {
                    v.stale.push(format!(
                        "{uid} row rv {:?} object rv {:?}",
                        raw.pointer("/metadata/resourceVersion"),
                        obj.pointer("/metadata/resourceVersion")
                    ));
                }
            }
            None if live => v.not_deleted.push(uid),
            None => {}
        }
    }
    for uid in objects.keys() {
        if !seen.contains(uid) {
            v.missing.push(uid.clone());
        }
    }
    Ok(v)
}
