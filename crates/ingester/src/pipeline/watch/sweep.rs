//! The table's side of a list: the snapshot of a scope's live rows taken before it, the
//! tombstones of the rows it lacked after it, and the sweep of a whole scope (a kind seen
//! gone), which marks every live row deleted without listing anything.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::spec::WatchContext;
use crate::pipeline::lanes::LanesClosed;
use crate::row::record::global_uid;
use crate::storage::resume;
use crate::storage::snapshot::{Scope, ScopeSnapshot};
use crate::telemetry::events::ListCompleted;

/// Lets every queued change commit, then loads the scope's rows (retried until it can).
/// `None` when cancelled meanwhile.
pub(super) async fn load_snapshot(
    ctx: &WatchContext,
    scope: &Scope,
    cancel: &CancellationToken,
) -> Result<Option<ScopeSnapshot>, LanesClosed> {
    // Rows of changes still queued must be in the table before we read it, or a delete the
    // list reveals could be missed (the row would appear after the snapshot).
    ctx.lanes.barrier().await?;
    let mut delay = Duration::from_millis(200);
    loop {
        match ScopeSnapshot::load(&ctx.db.pool, scope).await {
            Ok(snapshot) => return Ok(Some(snapshot)),
            Err(e) => {
                ctx.health.set_db(false, Some(&e));
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Marks the live rows of `scope` deleted (those not newer than `not_newer_than`, the
/// resourceVersion at which the kind was seen gone), in order with anything still queued for
/// those objects (tombstones go through the objects' lanes after a barrier). Its resume point
/// is dropped: a later watch of the scope lists, and that list repairs any row marked here
/// whose object is in fact alive. Takes no list permit: it lists nothing from the server.
pub async fn sweep_scope(
    ctx: &WatchContext,
    scope: &Scope,
    not_newer_than: Option<i64>,
    cancel: &CancellationToken,
) -> Result<(), LanesClosed> {
    let Some(snapshot) = load_snapshot(ctx, scope, cancel).await? else {
        return Ok(());
    };
    let gone = send_tombstones(ctx, snapshot, Utc::now(), not_newer_than).await?;
    ListCompleted {
        resource: &scope.plural,
        namespace: scope.namespace.as_deref().unwrap_or(""),
        listed: 0,
        unchanged: 0,
        gone,
    }
    .emit(&ctx.metrics);
    if let Err(e) =
        resume::forget_kind(&ctx.db.pool, &ctx.cluster, &scope.group, &scope.plural).await
    {
        warn!(group = %scope.group, plural = %scope.plural, error = %e, "resume points of a swept kind not dropped; a restart may resume instead of listing");
    }
    Ok(())
}

/// Queues a tombstone for every live row the list did not have; returns how many.
pub(super) async fn send_tombstones(
    ctx: &WatchContext,
    snapshot: ScopeSnapshot,
    at: chrono::DateTime<Utc>,
    not_newer_than: Option<i64>,
) -> Result<u64, LanesClosed> {
    let mut gone = 0u64;
    for uid in snapshot.into_missing() {
        gone += 1;
        let g = global_uid(&ctx.cluster, &uid);
        ctx.lanes
            .send_tombstone(&uid, g, at, not_newer_than)
            .await?;
    }
    Ok(gone)
}
