//! The CRD manager: starts one watch per CustomResourceDefinition of a managed group (at its
//! storage version, else its first served one), switches it when the CRD changes, stops it
//! when the CRD goes or serves nothing, and marks the custom resources of a gone CRD deleted
//! (only rows not newer than the moment it was seen gone).
//!
//! The decisions are `CrdWatches`'s (state.rs: pure, tested without a server); `Manager` is
//! the loop that performs them.

mod state;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::Type;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Namespaces;
use crate::kubernetes::crd::CrdWatch;
use crate::pipeline::supervisor::named;
use crate::pipeline::watch::{run_watch, sweep_scope, CrdEvent, WatchContext, WatchSpec};
use crate::row::routes::{ManagedGroups, Route};
use crate::storage::snapshot::Scope;

pub use state::Kind;
use state::{Action, CrdWatches, LiveKind, OrphanSweep};

/// The tasks of one CRD's watch (one per namespace when `NAMESPACES` is set).
struct WatchTasks {
    route: Arc<Route>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// The loop that performs what `CrdWatches` decides: starts and stops the watches, sweeps.
pub struct Manager {
    ctx: Arc<WatchContext>,
    state: CrdWatches,
    running: HashMap<String, WatchTasks>,
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
            state: CrdWatches::new(groups, namespaces, static_kinds),
            running: HashMap::new(),
            cancel,
        }
    }

    pub async fn run(mut self, mut events: mpsc::Receiver<CrdEvent>) {
        loop {
            let retry = async {
                match self.state.orphan_sweep_owed() {
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
            for action in self.state.next(event) {
                self.perform(action).await;
            }
        }
        for (_, r) in self.running.drain() {
            r.cancel.cancel();
            for t in r.tasks {
                let _ = t.await;
            }
        }
    }

    async fn perform(&mut self, action: Action) {
        match action {
            Action::Stop { crd } => self.stop(&crd).await,
            Action::Start { crd, watch } => self.start(crd, watch),
            Action::Sweep {
                kind,
                namespace,
                seen_gone_at,
            } => self.sweep_kind(&kind, namespace, seen_gone_at).await,
            Action::SweepOrphans => self.sweep_orphans().await,
            Action::LeftToStaticRoute { crd } => {
                warn!(crd = %crd, "this kind is also a static route: the static route watches it; no second watch");
            }
        }
    }

    fn start(&mut self, crd: String, watch: CrdWatch) {
        let cancel = self.cancel.child_token();
        let route = Arc::new(watch.route);
        let specs = WatchSpec::for_route(
            route.clone(),
            watch.namespaced,
            &self.state.namespaces().0,
            false,
        );
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
            WatchTasks {
                route,
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
        info!(crd = %crd, route = %r.route, "stopping custom resource watch");
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
            info!(crd = %crd, route = %r.route, "waiting for the stopped watch's changes to be committed before this CRD is watched again");
            stopped.await;
        }
    }

    /// Marks the rows of a kind whose CRD is gone deleted (see `Action::Sweep`).
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

    /// Performs the owed orphan sweep (see `CrdWatches::orphan_sweeps`); retried until it
    /// succeeds.
    async fn sweep_orphans(&mut self) {
        let Some(list_rv) = self.state.orphan_sweep_owed() else {
            return;
        };
        let live = match live_kinds(&self.ctx, &self.state.orphan_groups()).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, retry_in = ?ORPHAN_SWEEP_RETRY, "cannot look for custom resources of deleted CRDs; retrying");
                return;
            }
        };
        for sweep in self.state.orphan_sweeps(live) {
            match sweep {
                OrphanSweep::StaticKindIfNotServed { kind, api_version } => {
                    if not_served(&self.ctx.client, &kind, &api_version).await {
                        info!(group = %kind.0, plural = %kind.1, "a static route's kind is served no more (its CRD is gone): marking its objects deleted");
                        self.sweep_kind(&kind, None, list_rv).await;
                    }
                }
                OrphanSweep::Unwatched(kind) => {
                    info!(group = %kind.0, plural = %kind.1, "no CRD serves this kind: marking its objects deleted");
                    self.sweep_kind(&kind, None, list_rv).await;
                }
                OrphanSweep::ClusterScopedRows(kind) => {
                    info!(group = %kind.0, plural = %kind.1, "this kind is namespaced now: marking its cluster-scoped objects deleted");
                    self.sweep_kind(&kind, Some(String::new()), list_rv).await;
                }
            }
        }
        self.state.orphans_swept();
    }
}

/// Kinds of `groups` with live rows.
async fn live_kinds(ctx: &WatchContext, groups: &[String]) -> Result<Vec<LiveKind>, String> {
    let client = ctx
        .db
        .pool
        .get()
        .await
        .map_err(|e| crate::storage::error_chain(&e))?;
    let rows = client
        .query_typed(
            "SELECT resource_group, resource_plural, bool_or(namespace = ''), min(resource_version)
               FROM krateo_resources
              WHERE cluster_name = $1 AND deleted_at IS NULL AND resource_group = ANY($2)
                AND resource_plural IS NOT NULL
              GROUP BY resource_group, resource_plural",
            &[
                (&ctx.cluster.to_string(), Type::TEXT),
                (&groups, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(|e| crate::storage::error_chain(&e))?;
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
