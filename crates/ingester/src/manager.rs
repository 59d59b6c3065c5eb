//! The CRD manager: starts one watch per CustomResourceDefinition of a managed group (at its
//! storage version, else its first served one), switches it when the CRD changes, stops it
//! when the CRD goes, and marks the custom resources of a gone CRD deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Namespaces;
use crate::object::RawObject;
use crate::routes::{ManagedGroups, Route};
use crate::storage::snapshot::Scope;
use crate::watch::{run_watch, sweep_scope, CrdEvent, WatchContext, WatchSpec};

/// The watch a CRD calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrdWatch {
    pub route: Route,
    pub namespaced: bool,
}

#[derive(Deserialize)]
struct Crd {
    metadata: CrdMeta,
    spec: CrdSpec,
}
#[derive(Deserialize)]
struct CrdMeta {
    name: String,
}
#[derive(Deserialize)]
struct CrdSpec {
    group: String,
    names: CrdNames,
    scope: String,
    #[serde(default)]
    versions: Vec<CrdVersion>,
}
#[derive(Deserialize)]
struct CrdNames {
    plural: String,
    kind: String,
}
#[derive(Deserialize)]
struct CrdVersion {
    name: String,
    #[serde(default)]
    served: bool,
    #[serde(default)]
    storage: bool,
}

/// Pure: the CRD's name and the watch it needs (`None`: not managed, or nothing served).
pub fn desired_watch(
    crd_json: &str,
    groups: &ManagedGroups,
) -> Result<(String, Option<CrdWatch>), serde_json::Error> {
    let crd: Crd = serde_json::from_str(crd_json)?;
    if !groups.contains(&crd.spec.group) {
        return Ok((crd.metadata.name, None));
    }
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.storage && v.served)
        .or_else(|| crd.spec.versions.iter().find(|v| v.served));
    let watch = version.map(|v| CrdWatch {
        route: Route::new(
            &crd.spec.group,
            &v.name,
            &crd.spec.names.plural,
            &crd.spec.names.kind,
        ),
        namespaced: crd.spec.scope == "Namespaced",
    });
    Ok((crd.metadata.name, watch))
}

struct Running {
    watch: CrdWatch,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

pub struct Manager {
    ctx: Arc<WatchContext>,
    groups: ManagedGroups,
    namespaces: Namespaces,
    running: HashMap<String, Running>,
    /// CRD names seen since the current list started.
    listing: Option<HashSet<String>>,
    orphans_swept: bool,
    cancel: CancellationToken,
}

impl Manager {
    pub fn new(
        ctx: Arc<WatchContext>,
        groups: ManagedGroups,
        namespaces: Namespaces,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            ctx,
            groups,
            namespaces,
            running: HashMap::new(),
            listing: None,
            orphans_swept: false,
            cancel,
        }
    }

    pub async fn run(mut self, mut events: mpsc::Receiver<CrdEvent>) {
        loop {
            let event = tokio::select! {
                _ = self.cancel.cancelled() => break,
                e = events.recv() => e,
            };
            let Some(event) = event else { break };
            match event {
                CrdEvent::ListStarted => self.listing = Some(HashSet::new()),
                CrdEvent::Applied(obj) => self.applied(&obj).await,
                CrdEvent::Deleted(obj) => {
                    if let Some(name) = obj.metadata.name.clone() {
                        self.stop(&name, true).await;
                    }
                }
                CrdEvent::ListDone => self.list_done().await,
            }
        }
        for (_, r) in self.running.drain() {
            r.cancel.cancel();
            for t in r.tasks {
                let _ = t.await;
            }
        }
    }

    async fn applied(&mut self, obj: &RawObject) {
        let (name, desired) = match desired_watch(&obj.json, &self.groups) {
            Ok(x) => x,
            Err(e) => {
                warn!(crd = ?obj.metadata.name, error = %e, "cannot read CustomResourceDefinition; ignored");
                return;
            }
        };
        if let Some(seen) = self.listing.as_mut() {
            seen.insert(name.clone());
        }
        // A terminating CRD still serves until its objects are gone; keep watching so their
        // DELETED events land, and sweep when the CRD itself is deleted.
        match (self.running.get(&name), desired) {
            (Some(r), Some(w)) if r.watch == w => {}
            (_, Some(w)) => {
                self.stop(&name, false).await;
                self.start(name, w);
            }
            (Some(_), None) => self.stop(&name, false).await,
            (None, None) => {}
        }
    }

    fn start(&mut self, crd: String, watch: CrdWatch) {
        let cancel = self.cancel.child_token();
        let route = Arc::new(watch.route.clone());
        let specs =
            WatchSpec::for_route(route.clone(), watch.namespaced, &self.namespaces.0, false);
        info!(crd = %crd, route = %route, watches = specs.len(), "starting custom resource watch");
        let tasks = specs
            .into_iter()
            .map(|spec| tokio::spawn(run_watch(self.ctx.clone(), spec, cancel.clone(), None)))
            .collect();
        self.running.insert(
            crd,
            Running {
                watch,
                cancel,
                tasks,
            },
        );
    }

    /// Stops the CRD's watch; with `sweep`, marks the rows of its resources deleted.
    async fn stop(&mut self, crd: &str, sweep: bool) {
        let Some(r) = self.running.remove(crd) else {
            return;
        };
        info!(crd = %crd, route = %r.watch.route, "stopping custom resource watch");
        r.cancel.cancel();
        for t in r.tasks {
            let _ = t.await;
        }
        if sweep {
            for scope in self.scopes(&r.watch.route, r.watch.namespaced) {
                if sweep_scope(&self.ctx, &scope, &self.cancel).await.is_err() {
                    return;
                }
            }
        }
    }

    fn scopes(&self, route: &Route, namespaced: bool) -> Vec<Scope> {
        let base = Scope {
            cluster: self.ctx.cluster.to_string(),
            group: route.group.clone(),
            plural: route.plural.clone(),
            version: route.version.clone(),
            namespace: None,
        };
        if namespaced && !self.namespaces.is_all() {
            self.namespaces
                .0
                .iter()
                .map(|ns| Scope {
                    namespace: Some(ns.clone()),
                    ..base.clone()
                })
                .collect()
        } else {
            vec![base]
        }
    }

    async fn list_done(&mut self) {
        let Some(seen) = self.listing.take() else {
            return;
        };
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.stop(&name, true).await;
        }
        if !self.orphans_swept {
            self.orphans_swept = true;
            self.sweep_orphans().await;
        }
    }

    /// Rows of managed groups whose CRD is no longer there (deleted while we were not
    /// running) are marked deleted once, after the first CRD list.
    async fn sweep_orphans(&mut self) {
        let groups: Vec<String> = self.groups.iter().map(str::to_owned).collect();
        let live = match live_kinds(&self.ctx, &groups).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot look for custom resources of deleted CRDs; will not sweep them now");
                return;
            }
        };
        let watched: HashSet<(String, String)> = self
            .running
            .values()
            .map(|r| (r.watch.route.group.clone(), r.watch.route.plural.clone()))
            .collect();
        for (group, plural) in live {
            if watched.contains(&(group.clone(), plural.clone())) {
                continue;
            }
            info!(group = %group, plural = %plural, "CRD gone while not watched: marking its objects deleted");
            let route = Route::new(&group, "", &plural, "");
            for scope in self.scopes(&route, true) {
                if sweep_scope(&self.ctx, &scope, &self.cancel).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn live_kinds(
    ctx: &WatchContext,
    groups: &[String],
) -> Result<Vec<(String, String)>, String> {
    let client = ctx.db.pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "SELECT DISTINCT resource_group, resource_plural FROM krateo_resources
              WHERE cluster_name = $1 AND deleted_at IS NULL AND resource_group = ANY($2)",
            &[&ctx.cluster.to_string(), &groups],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> ManagedGroups {
        ManagedGroups::parse("composition.krateo.io\n").0
    }

    fn crd(group: &str, versions: &str, scope: &str) -> String {
        format!(
            r#"{{"metadata":{{"name":"fireworksapps.{group}"}},"spec":{{"group":"{group}","scope":"{scope}","names":{{"plural":"fireworksapps","kind":"FireworksApp"}},"versions":[{versions}]}}}}"#
        )
    }

    #[test]
    fn storage_version_is_watched() {
        let json = crd(
            "composition.krateo.io",
            r#"{"name":"v1alpha1","served":true,"storage":false},{"name":"v1alpha2","served":true,"storage":true}"#,
            "Namespaced",
        );
        let (name, w) = desired_watch(&json, &groups()).expect("ok");
        assert_eq!(name, "fireworksapps.composition.krateo.io");
        let w = w.expect("managed");
        assert_eq!(
            w.route,
            Route::new(
                "composition.krateo.io",
                "v1alpha2",
                "fireworksapps",
                "FireworksApp"
            )
        );
        assert!(w.namespaced);
    }

    #[test]
    fn first_served_version_when_storage_is_not_served() {
        let json = crd(
            "composition.krateo.io",
            r#"{"name":"v1","served":false,"storage":true},{"name":"v2","served":true,"storage":false},{"name":"v3","served":true,"storage":false}"#,
            "Cluster",
        );
        let w = desired_watch(&json, &groups())
            .expect("ok")
            .1
            .expect("managed");
        assert_eq!(w.route.version, "v2");
        assert!(!w.namespaced);
    }

    #[test]
    fn nothing_served_means_no_watch() {
        let json = crd(
            "composition.krateo.io",
            r#"{"name":"v1","served":false,"storage":true}"#,
            "Cluster",
        );
        assert!(desired_watch(&json, &groups()).expect("ok").1.is_none());
    }

    #[test]
    fn unmanaged_groups_are_ignored_exactly() {
        for g in [
            "other.io",
            "krateo.io",
            "sub.composition.krateo.io",
            "composition.krateo.io.x",
        ] {
            let json = crd(
                g,
                r#"{"name":"v1","served":true,"storage":true}"#,
                "Cluster",
            );
            assert!(
                desired_watch(&json, &groups()).expect("ok").1.is_none(),
                "{g}"
            );
        }
    }
}
