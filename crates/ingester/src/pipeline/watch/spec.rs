//! What a watch is given: the context every watch shares, the watch to run (a route, in one
//! namespace or cluster-wide), and the CRD events the CRD watch forwards to the manager.

use std::sync::Arc;
use std::time::Duration;

use kube::api::ApiResource;
use tokio::sync::{mpsc, Semaphore};
use tracing::warn;

use crate::kubernetes::crd::CrdSummary;
use crate::pipeline::health::Health;
use crate::pipeline::lanes::Lanes;
use crate::row::object::RawObject;
use crate::row::routes::Route;
use crate::storage::snapshot::Scope;
use crate::storage::Database;
use crate::telemetry::metrics::Metrics;

/// What every watch shares.
pub struct WatchContext {
    pub client: kube::Client,
    pub lanes: Lanes,
    pub db: Database,
    pub cluster: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Bounds the lists running at once.
    pub list_permits: Arc<Semaphore>,
    pub page_size: u32,
    /// Initial lists as streaming lists (WatchList) instead of pages.
    pub streaming_lists: bool,
    /// Resume watches from their stored resume points (else always list first).
    pub resume: bool,
    pub checkpoint_interval: Duration,
}

/// CRD events forwarded to the manager.
#[derive(Debug)]
pub enum CrdEvent {
    /// A (re)list of CRDs starts.
    ListStarted,
    Applied(CrdSummary),
    Deleted(CrdSummary),
    /// The list is complete: CRDs not applied since `ListStarted` are gone (as of the list's
    /// `resource_version`).
    ListDone {
        resource_version: Option<i64>,
    },
}

/// Where the CRD watch sends its events (`None` for every other watch).
pub(super) struct CrdEvents(pub(super) Option<mpsc::Sender<CrdEvent>>);

impl CrdEvents {
    /// This is the CRD watch.
    pub(super) fn wanted(&self) -> bool {
        self.0.is_some()
    }

    pub(super) async fn send(&self, event: CrdEvent) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(event).await;
        }
    }

    /// Only the few fields the manager needs travel to it, never the whole CRD.
    pub(super) async fn send_object(&self, obj: &RawObject, deleted: bool) {
        match CrdSummary::from_json(&obj.json) {
            Ok(crd) => {
                let event = if deleted {
                    CrdEvent::Deleted(crd)
                } else {
                    CrdEvent::Applied(crd)
                };
                self.send(event).await;
            }
            Err(e) => {
                warn!(crd = ?obj.metadata.name, error = %e, "cannot read CustomResourceDefinition; ignored")
            }
        }
    }
}

/// One watch to run.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub route: Arc<Route>,
    /// `None`: cluster-wide.
    pub namespace: Option<String>,
    /// A static route: its first list gates readiness.
    pub is_static: bool,
}

impl WatchSpec {
    /// The watches a route needs: one per namespace for a namespaced kind when `NAMESPACES`
    /// is set, else one cluster-wide.
    pub fn for_route(
        route: Arc<Route>,
        namespaced: bool,
        namespaces: &[String],
        is_static: bool,
    ) -> Vec<WatchSpec> {
        if namespaced && !namespaces.is_empty() {
            namespaces
                .iter()
                .map(|ns| WatchSpec {
                    route: route.clone(),
                    namespace: Some(ns.clone()),
                    is_static,
                })
                .collect()
        } else {
            vec![WatchSpec {
                route,
                namespace: None,
                is_static,
            }]
        }
    }

    pub fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} in {ns}", self.route),
            None => self.route.to_string(),
        }
    }

    pub(super) fn scope(&self, cluster: &str) -> Scope {
        Scope {
            cluster: cluster.to_owned(),
            group: self.route.group.clone(),
            plural: self.route.plural.clone(),
            version: self.route.version.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

pub fn api_resource(route: &Route) -> ApiResource {
    ApiResource {
        group: route.group.clone(),
        version: route.version.clone(),
        api_version: route.api_version(),
        kind: route.kind.clone(),
        plural: route.plural.clone(),
    }
}
