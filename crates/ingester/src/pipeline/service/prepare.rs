//! The table before any watch writes to it: today's history partition, the resume points and
//! rows of the cluster name adopted by this cluster's identity, and the rows of scopes no
//! longer watched retired.

use crate::config::Config;
use crate::kubernetes::cluster::ClusterIdentity;
use crate::row::routes::{ManagedGroups, StaticRoutes};
use crate::storage::ownership::{retire_uncovered, Coverage};
use crate::storage::writer::WriterOptions;
use crate::storage::Database;
use crate::telemetry::events::RowsRetired;
use crate::telemetry::metrics::Metrics;

use super::identity::adopt_identity;

/// Readies the table for this run's writes (see the module's comment), in this order.
pub(super) async fn prepare_table(
    config: &Config,
    db: &Database,
    cluster: &str,
    identity: &ClusterIdentity,
    routes: &StaticRoutes,
    groups: &ManagedGroups,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    if config.history {
        // Before any write (retiring included): today's history rows find their partition.
        crate::storage::history::upkeep_once(
            &db.pool,
            crate::storage::history::retention_days(config.history_retention),
            metrics,
        )
        .await;
    }
    adopt_identity(db, cluster, identity).await?;
    if let Err(e) = crate::storage::commit_marks::clean_up(&db.pool).await {
        tracing::warn!(error = %e, "commit marks of processes gone for a week not dropped");
    }
    retire_uncovered_rows(db, cluster, config, routes, groups, metrics).await
}

/// After each time the database went back in time (the watches restart on their own): says
/// so, and stores this run's coverage again (it may be among the lost commits), retiring what
/// the coverage the database went back to says, as at start-up. Retried until done.
pub(super) async fn after_rewinds(
    db: Database,
    cluster: std::sync::Arc<str>,
    config: Config,
    routes: StaticRoutes,
    groups: ManagedGroups,
    metrics: std::sync::Arc<Metrics>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut rewinds = db.marks.subscribe();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = rewinds.changed() => if changed.is_err() { return },
        }
        if let Some(rewind) = rewinds.borrow_and_update().last.clone() {
            crate::telemetry::events::DatabaseRewound {
                committed_mark: rewind.committed,
                found_mark: rewind.found,
            }
            .emit(&metrics);
        }
        let mut delay = std::time::Duration::from_millis(200);
        while let Err(e) =
            retire_uncovered_rows(&db, &cluster, &config, &routes, &groups, &metrics).await
        {
            tracing::warn!(error = %e, "coverage not stored again after the database went back in time; retrying");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
    }
}

/// Rows of scopes this instance watched in an earlier run and no longer watches are marked
/// deleted (logged and counted per kind), and their resume points dropped.
async fn retire_uncovered_rows(
    db: &Database,
    cluster: &str,
    config: &Config,
    routes: &StaticRoutes,
    groups: &ManagedGroups,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let coverage = Coverage::new(
        routes
            .routes
            .iter()
            .map(|r| (r.group.as_str(), r.plural.as_str())),
        groups.iter(),
        config.namespaces.0.iter().map(String::as_str),
    );
    let options = WriterOptions {
        history: config.history,
        change_feed: config.change_feed,
        staging_lz4: db.schema.lz4,
    };
    let retired = retire_uncovered(&db.pool, cluster, &config.instance_name, &coverage, options)
        .await
        .map_err(|e| anyhow::anyhow!("retiring rows of scopes no longer watched: {e}"))?;
    for (scope, rows) in retired {
        RowsRetired {
            scope: &scope,
            rows,
        }
        .emit(metrics);
    }
    Ok(())
}
