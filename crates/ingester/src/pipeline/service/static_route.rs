//! One static route's task: its resource found by discovery (retried while the server lacks
//! it), then its watch, one cluster-wide or one per namespace for namespaced kinds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::api_server::{discover_scope, Served};
use crate::pipeline::supervisor::named;
use crate::pipeline::watch::{run_watch, CrdEvent, WatchContext, WatchSpec};
use crate::row::routes::Route;

/// Finds the route's scope by discovery (retrying while the server lacks the kind), then
/// runs its watch: one cluster-wide, or one per namespace for namespaced kinds.
pub(super) async fn run_static_route(
    ctx: Arc<WatchContext>,
    route: Arc<Route>,
    namespaces: Vec<String>,
    cancel: CancellationToken,
    crd_events: Option<mpsc::Sender<CrdEvent>>,
) {
    let Some((served, reported_unavailable)) = discover(&ctx, &route, &cancel).await else {
        return;
    };
    // The kind as the server spells it: rows carry it (`resource_kind`) and field policies
    // match it, whatever the routes file says.
    let route = if served.kind != route.kind {
        warn!(route = %route, served_kind = %served.kind, "the routes file names this resource's kind otherwise than the server; using the server's");
        Arc::new(Route {
            kind: served.kind,
            ..(*route).clone()
        })
    } else {
        route
    };
    let specs = WatchSpec::for_route(route.clone(), served.namespaced, &namespaces, true);
    if !reported_unavailable && specs.len() > 1 {
        // Readiness counts one per route; every namespace watch reports its first list.
        ctx.health.add_static_routes(specs.len() - 1);
    }
    let is_static = !reported_unavailable;
    let tasks: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            tokio::spawn(named(
                format!("watch {}", spec.label()),
                run_watch(
                    ctx.clone(),
                    WatchSpec { is_static, ..spec },
                    cancel.clone(),
                    crd_events.clone(),
                ),
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// The route's resource as discovery finds it, retried (backing off up to a minute) until it
/// does or `cancel` (`None`); and whether readiness was told meanwhile that the server does
/// not serve the kind.
async fn discover(
    ctx: &WatchContext,
    route: &Route,
    cancel: &CancellationToken,
) -> Option<(Served, bool)> {
    let mut delay = Duration::from_secs(1);
    let mut reported_unavailable = false;
    loop {
        // An API server that stopped answering holds discovery until the client's read
        // timeout: shutdown must not wait for it.
        let discovered = tokio::select! {
            _ = cancel.cancelled() => return None,
            discovered = discover_scope(&ctx.client, route) => discovered,
        };
        match discovered {
            Ok(served) => return Some((served, reported_unavailable)),
            Err(e) => {
                crate::telemetry::events::WatchFailed {
                    resource: &route.to_string(),
                    error: &e.message,
                }
                .emit(&ctx.metrics);
                if e.kind_unavailable && !reported_unavailable {
                    // Readiness must not wait forever on a kind this server does not have
                    // (or this identity may not read). A passing fault (500, timeout,
                    // refused connection) keeps readiness waiting.
                    reported_unavailable = true;
                    ctx.health.static_route_listed();
                }
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}
