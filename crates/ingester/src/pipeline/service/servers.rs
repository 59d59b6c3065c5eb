//! The probe and metrics servers: up from before the cluster's identity is claimed until the
//! run ends; one that ends earlier is a failure that stops the service.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::health::{self, Health};
use crate::telemetry::metrics::Metrics;

/// The running probe and metrics servers.
pub(super) struct Servers {
    stop: CancellationToken,
    tasks: Vec<health::ServerTask>,
}

impl Servers {
    pub(super) async fn start(
        config: &Config,
        health: &Arc<Health>,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Servers> {
        let stop = CancellationToken::new();
        let tasks = health::serve(
            SocketAddr::from(([0, 0, 0, 0], config.port)),
            SocketAddr::from(([0, 0, 0, 0], config.metrics_port)),
            health.clone(),
            metrics.clone(),
            stop.clone(),
        )
        .await?;
        Ok(Servers { stop, tasks })
    }

    /// Stops both servers (the last thing a run does).
    pub(super) fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until one of the HTTP servers stops (they only stop on shutdown); names it.
    pub(super) async fn ended(&mut self) -> String {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let (outcome, index, _) =
            futures::future::select_all(self.tasks.iter_mut().map(|s| &mut s.handle)).await;
        let name = self.tasks.remove(index).name;
        match outcome {
            Ok(Ok(())) => format!("the {name} stopped"),
            Ok(Err(e)) => format!("the {name} failed: {e}"),
            Err(e) => format!("the {name} ended: {e}"),
        }
    }
}
