//! What ends the run from outside the pipeline: a requested stop (SIGTERM, SIGINT, or the
//! caller's token), which cuts a start-up step short, or a failure (a panicked task, a server
//! that ended).

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::servers::Servers;
use crate::pipeline::supervisor::task_panicked;

/// What ends the service from outside the pipeline: a requested stop (`None`: `shutdown`
/// cancelled, SIGTERM or SIGINT), or a failure named (a task that panicked, a probe or
/// metrics server that ended).
pub(super) async fn stop_or_failure(
    stop: &CancellationToken,
    servers: &mut Servers,
) -> Option<String> {
    tokio::select! {
        _ = stop.cancelled() => None,
        report = task_panicked() => Some(report),
        server = servers.ended() => Some(server),
    }
}

/// A token (a child of `shutdown`) cancelled on SIGTERM or SIGINT. The handlers are
/// registered here, synchronously, at the start of the run: a signal that arrives while the
/// service still starts (waiting for the database, reading the cluster's identity, standing
/// by for the Lease) stops it gracefully instead of killing it by the signal's default
/// action.
pub(super) fn stop_on_signal(shutdown: &CancellationToken) -> CancellationToken {
    let stop = shutdown.child_token();
    let cancel = stop.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind)
                .inspect_err(|e| warn!("cannot listen to {name}: {e}"))
                .ok()
        };
        async fn received(signal: Option<Signal>) {
            match signal {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let term = listen(SignalKind::terminate(), "SIGTERM");
        let int = listen(SignalKind::interrupt(), "SIGINT");
        tokio::spawn(async move {
            tokio::select! {
                _ = received(term) => {}
                _ = received(int) => {}
            }
            cancel.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    stop
}

/// A start-up step that a stop (SIGTERM, SIGINT) cuts short: `Ok(None)` then, and the run
/// ends with exit 0 (a step cut short has committed nothing a later start does not redo).
pub(super) async fn unless_stopped<T>(
    stop: &CancellationToken,
    step: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Option<T>> {
    match stop.run_until_cancelled(step).await {
        Some(done) => done.map(Some),
        None => {
            info!("stopped while starting; bye");
            Ok(None)
        }
    }
}
