//! Liveness and readiness state, and the probe and metrics HTTP servers.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::telemetry::events::DatabaseReachability;
use crate::telemetry::metrics::Metrics;

/// What readiness depends on: PostgreSQL reachable, every static route listed once, and
/// (with leader election) nothing else: a standby replica is ready to take over.
pub struct Health {
    db_up: AtomicBool,
    /// Why the last database round trip failed (SQLSTATE and message): `/readyz` says it.
    db_error: std::sync::Mutex<String>,
    static_routes_pending: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let health = Self {
            db_up: AtomicBool::new(true),
            db_error: std::sync::Mutex::new(String::new()),
            static_routes_pending: AtomicUsize::new(0),
            metrics,
        };
        health.update_ready_metric();
        health
    }

    /// Records the outcome of a database round trip; logs transitions only.
    pub fn set_db(&self, up: bool, error: Option<&str>) {
        if let Ok(mut last) = self.db_error.lock() {
            last.clear();
            last.push_str(error.unwrap_or_default());
        }
        let was = self.db_up.swap(up, Ordering::SeqCst);
        if was != up {
            DatabaseReachability { up, error }.emit(&self.metrics);
        } else {
            self.metrics.db_up.set(i64::from(up));
        }
        self.update_ready_metric();
    }

    /// `ingester_ready` follows what /readyz would answer.
    fn update_ready_metric(&self) {
        self.metrics.ready.set(i64::from(self.ready()));
    }

    pub fn db_up(&self) -> bool {
        self.db_up.load(Ordering::SeqCst)
    }

    /// The last database error (empty while the database answers).
    pub fn db_error(&self) -> String {
        self.db_error.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn add_static_routes(&self, n: usize) {
        self.static_routes_pending.fetch_add(n, Ordering::SeqCst);
        self.update_ready_metric();
    }

    /// A static route completed its first list (or turned out not to exist on the server).
    pub fn static_route_listed(&self) {
        let _ = self
            .static_routes_pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        self.update_ready_metric();
    }

    pub fn static_routes_pending(&self) -> usize {
        self.static_routes_pending.load(Ordering::SeqCst)
    }

    pub fn ready(&self) -> bool {
        self.db_up() && self.static_routes_pending() == 0
    }
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.ready() {
        (StatusCode::OK, "ok".to_owned())
    } else {
        let mut why = Vec::new();
        if !health.db_up() {
            let error = health.db_error();
            why.push(if error.is_empty() {
                "database unreachable".to_owned()
            } else {
                format!("database unreachable: {error}")
            });
        }
        let pending = health.static_routes_pending();
        if pending > 0 {
            why.push(format!("{pending} static routes not listed yet"));
        }
        (StatusCode::SERVICE_UNAVAILABLE, why.join("; "))
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// A running HTTP server task; it ends only when the service shuts it down.
pub struct ServerTask {
    pub name: &'static str,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds both servers (so a taken port fails start-up) and serves them until `cancel`.
pub async fn serve(
    probe_addr: SocketAddr,
    metrics_addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> anyhow::Result<Vec<ServerTask>> {
    let probes = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(health);
    let metrics_app = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    let probe_listener = tokio::net::TcpListener::bind(probe_addr)
        .await
        .map_err(|e| anyhow::anyhow!("PORT: cannot listen on {probe_addr}: {e}"))?;
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .map_err(|e| anyhow::anyhow!("METRICS_PORT: cannot listen on {metrics_addr}: {e}"))?;
    let c1 = cancel.clone();
    let probe_server = tokio::spawn(crate::pipeline::supervisor::named(
        "probe server",
        axum::serve(probe_listener, probes)
            .with_graceful_shutdown(c1.cancelled_owned())
            .into_future(),
    ));
    let metrics_server = tokio::spawn(crate::pipeline::supervisor::named(
        "metrics server",
        axum::serve(metrics_listener, metrics_app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .into_future(),
    ));
    Ok(vec![
        ServerTask {
            name: "probe server",
            handle: probe_server,
        },
        ServerTask {
            name: "metrics server",
            handle: metrics_server,
        },
    ])
}
