//! The CRD manager: starts one watch per CustomResourceDefinition of a managed group (at its
//! storage version, else its first served one), switches it when the CRD changes, stops it
//! when the CRD goes or serves nothing, and marks the custom resources of a gone CRD deleted
//! (only rows not newer than the moment it was seen gone).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Namespaces;
use crate::kubernetes::crd::{CrdSummary, CrdWatch};
use crate::pipeline::supervisor::named;
use crate::pipeline::watch::{run_watch, sweep_scope, CrdEvent, WatchContext, WatchSpec};
use crate::row::routes::ManagedGroups;
use crate::storage::snapshot::Scope;

/// A kind, by API group and plural: what sweeps and duplicate checks compare.
pub type Kind = (String, String);

struct Running {
    watch: CrdWatch,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

pub struct Manager {
    ctx: Arc<WatchContext>,
    groups: ManagedGroups,
    namespaces: Namespaces,
    /// Kinds the static routes already watch: a CRD of one of them gets no second watch
    /// (two watches of one scope would fight over its rows).
    static_kinds: HashSet<Kind>,
    running: HashMap<String, Running>,
    /// CRD names seen since the current list started.
    listing: Option<HashSet<String>>,
    /// Kinds served by a CRD, as of the last complete list and the events since.
    crd_kinds: HashSet<Kind>,
    /// The same, collected while a list is in progress.
    listing_kinds: HashSet<Kind>,
    /// The resourceVersion of the last complete CRD list, while the sweep of kinds whose CRD
    /// is gone is still owed (it failed and is retried).
    orphan_sweep_owed: Option<Option<i64>>,
    cancel: CancellationToken,
}

const ORPHAN_SWEEP_RETRY: Duration = Duration::from_secs(10);
/// A stopped watch whose changes take longer than this to commit says so (the database is
/// slow or unreachable, and the CRD's next watch waits for it).
const SLOW_STOP_NOTICE: Duration = Duration::from_secs(1);

impl Manager {
    pub fn new(
        ctx: Arc<WatchContext>,
        groups: ManagedGroups,
        namespaces: Namespaces,
        static_kinds: HashSet<Kind>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            ctx,
            groups,
            namespaces,
            static_kinds,
            running: HashMap::new(),
            listing: None,
            crd_kinds: HashSet::new(),
            listing_kinds: HashSet::new(),
            orphan_sweep_owed: None,
            cancel,
        }
    }

    pub async fn run(mut self, mut events: mpsc::Receiver<CrdEvent>) {
        loop {
            let retry = async {
                match self.orphan_sweep_owed {
                    Some(_) => tokio::time::sleep(ORPHAN_SWEEP_RETRY).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = retry => {
                    self.sweep_orphans().await;
                    continue;
                }
                e = events.recv() => e,
            };
            let Some(event) = event else { break };
            match event {
                CrdEvent::ListStarted => {
                    self.listing = Some(HashSet::new());
                    self.listing_kinds.clear();
                }
                CrdEvent::Applied(crd) => self.applied(crd).await,
                CrdEvent::Deleted(crd) => self.deleted(crd).await,
                CrdEvent::ListDone { resource_version } => self.list_done(resource_version).await,
            }
        }
        for (_, r) in self.running.drain() {
            r.cancel.cancel();
            for t in r.tasks {
                let _ = t.await;
            }
        }
    }

    async fn applied(&mut self, crd: CrdSummary) {
        let kind = (crd.group.clone(), crd.plural.clone());
        if let Some(seen) = self.listing.as_mut() {
            seen.insert(crd.name.clone());
            self.listing_kinds.insert(kind.clone());
        }
        self.crd_kinds.insert(kind.clone());
        if crd.is_managed(&self.groups) && self.static_kinds.contains(&kind) {
            if !self.running.contains_key(&crd.name) {
                warn!(crd = %crd.name, "this kind is also a static route: the static route watches it; no second watch");
            }
            return;
        }
        // A terminating CRD still serves until its objects are gone; keep watching so their
        // DELETED events land, and sweep when the CRD itself is deleted.
        match (self.running.get(&crd.name), crd.desired_watch(&self.groups)) {
            (Some(r), Some(w)) if r.watch == w => {}
            (_, Some(w)) => {
                self.stop(&crd.name).await;
                self.start(crd.name, w);
            }
            (Some(_), None) => {
                // No version served any more: its objects cannot be read, the same as gone.
                self.stop(&crd.name).await;
                self.sweep_kind(&kind, None, crd.resource_version).await;
            }
            (None, None) => {}
        }
    }

    async fn deleted(&mut self, crd: CrdSummary) {
        self.stop(&crd.name).await;
        let kind = (crd.group.clone(), crd.plural.clone());
        self.crd_kinds.remove(&kind);
        // Swept even when not running (a CRD that had stopped serving, then was deleted).
        if crd.is_managed(&self.groups) && !self.static_kinds.contains(&kind) {
            self.sweep_kind(&kind, None, crd.resource_version).await;
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
            .map(|spec| {
                tokio::spawn(named(
                    format!("watch {}", spec.label()),
                    run_watch(self.ctx.clone(), spec, cancel.clone(), None),
                ))
            })
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

    /// Stops the CRD's watch, if any, and returns once its tasks ended and what it queued is
    /// committed: a watch of this CRD at another version starts next and reads the table to
    /// decide whether it may resume; rows still queued at the old version would be written
    /// after that decision and stay at the old version (the resumed watch has nothing to
    /// rewrite them with).
    async fn stop(&mut self, crd: &str) {
        let Some(r) = self.running.remove(crd) else {
            return;
        };
        info!(crd = %crd, route = %r.watch.route, "stopping custom resource watch");
        r.cancel.cancel();
        let stopped = async {
            for t in r.tasks {
                let _ = t.await;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => {}
                _ = self.ctx.lanes.barrier() => {}
            }
        };
        tokio::pin!(stopped);
        if tokio::time::timeout(SLOW_STOP_NOTICE, &mut stopped)
            .await
            .is_err()
        {
            info!(crd = %crd, route = %r.watch.route, "waiting for the stopped watch's changes to be committed before this CRD is watched again");
            stopped.await;
        }
    }

    /// Marks the rows of a kind whose CRD is gone deleted, in every namespace (`None`: the
    /// objects of a gone CRD are gone everywhere) or in one, but only rows not newer than
    /// `seen_gone_at`.
    async fn sweep_kind(&self, kind: &Kind, namespace: Option<String>, seen_gone_at: Option<i64>) {
        let scope = Scope {
            cluster: self.ctx.cluster.to_string(),
            group: kind.0.clone(),
            plural: kind.1.clone(),
            version: String::new(),
            namespace,
        };
        // Err only when the lanes are closed: the process is stopping.
        let _ = sweep_scope(&self.ctx, &scope, seen_gone_at, &self.cancel).await;
    }

    async fn list_done(&mut self, resource_version: Option<i64>) {
        let Some(seen) = self.listing.take() else {
            return;
        };
        self.crd_kinds = std::mem::take(&mut self.listing_kinds);
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = self.running.get(&name) {
                let kind = (r.watch.route.group.clone(), r.watch.route.plural.clone());
                self.stop(&name).await;
                self.sweep_kind(&kind, None, resource_version).await;
            }
        }
        self.orphan_sweep_owed = Some(resource_version);
        self.sweep_orphans().await;
    }

    /// Rows of managed groups whose kind nobody watches (its CRD deleted while we were not
    /// running, or no longer served) are marked deleted after every complete CRD list,
    /// retried until it succeeds.
    async fn sweep_orphans(&mut self) {
        let Some(list_rv) = self.orphan_sweep_owed else {
            return;
        };
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(str::to_owned)
            .chain(self.static_kinds.iter().map(|k| k.0.clone()))
            .filter(|g| !g.is_empty())
            .collect();
        let live = match live_kinds(&self.ctx, &groups).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, retry_in = ?ORPHAN_SWEEP_RETRY, "cannot look for custom resources of deleted CRDs; retrying");
                return;
            }
        };
        let watched: HashSet<Kind> = self
            .running
            .values()
            .map(|r| (r.watch.route.group.clone(), r.watch.route.plural.clone()))
            .chain(self.static_kinds.iter().cloned())
            .collect();
        // A namespaced kind watched per namespace (`NAMESPACES` set) never lists rows
        // without a namespace: those are objects of an earlier, cluster-scoped CRD of the
        // same kind, gone with it.
        let watched_per_namespace: HashSet<Kind> = self
            .running
            .values()
            .filter(|r| r.watch.namespaced && !self.namespaces.is_all())
            .map(|r| (r.watch.route.group.clone(), r.watch.route.plural.clone()))
            .collect();
        for LiveKind {
            kind,
            has_cluster_scoped_rows,
            api_version,
        } in live
        {
            if self.static_kinds.contains(&kind) {
                // A static route of a custom resource whose CRD went while the ingester was
                // not watching: its watch only sees 404s, its rows would stay live.
                if !self.crd_kinds.contains(&kind)
                    && not_served(&self.ctx.client, &kind, &api_version).await
                {
                    info!(group = %kind.0, plural = %kind.1, "a static route's kind is served no more (its CRD is gone): marking its objects deleted");
                    self.sweep_kind(&kind, None, list_rv).await;
                }
                continue;
            }
            if !self.groups.iter().any(|g| g == kind.0) {
                continue;
            }
            if !watched.contains(&kind) {
                info!(group = %kind.0, plural = %kind.1, "no CRD serves this kind: marking its objects deleted");
                self.sweep_kind(&kind, None, list_rv).await;
            } else if has_cluster_scoped_rows && watched_per_namespace.contains(&kind) {
                info!(group = %kind.0, plural = %kind.1, "this kind is namespaced now: marking its cluster-scoped objects deleted");
                self.sweep_kind(&kind, Some(String::new()), list_rv).await;
            }
        }
        self.orphan_sweep_owed = None;
    }
}

/// A kind with live rows.
struct LiveKind {
    kind: Kind,
    /// Some of its rows have no namespace.
    has_cluster_scoped_rows: bool,
    /// The API version of one of its rows.
    api_version: String,
}

/// Kinds of `groups` with live rows.
async fn live_kinds(ctx: &WatchContext, groups: &[String]) -> Result<Vec<LiveKind>, String> {
    let client = ctx.db.pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "SELECT resource_group, resource_plural, bool_or(namespace = ''), min(resource_version)
               FROM krateo_resources
              WHERE cluster_name = $1 AND deleted_at IS NULL AND resource_group = ANY($2)
                AND resource_plural IS NOT NULL
              GROUP BY resource_group, resource_plural",
            &[&ctx.cluster.to_string(), &groups],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(LiveKind {
                kind: (r.try_get(0).ok()?, r.try_get(1).ok()?),
                has_cluster_scoped_rows: r.try_get::<_, Option<bool>>(2).ok()?.unwrap_or(false),
                api_version: r.try_get::<_, Option<String>>(3).ok()?.unwrap_or_default(),
            })
        })
        .collect())
}

/// The server's discovery says it does not serve `kind` at `version` (its group version is
/// unknown, or lists no such resource). Any other answer (403, 500, no answer) is not proof.
async fn not_served(client: &kube::Client, kind: &Kind, version: &str) -> bool {
    match client
        .list_api_group_resources(&format!("{}/{version}", kind.0))
        .await
    {
        Ok(list) => !list.resources.iter().any(|r| r.name == kind.1),
        Err(kube::Error::Api(s)) => s.code == 404,
        Err(_) => false,
    }
}
