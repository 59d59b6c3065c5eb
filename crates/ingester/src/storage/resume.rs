//! Resume points: per watch scope, the resourceVersion up to which every change is committed
//! in `krateo_resources`. Written only after the lanes committed everything the watch had
//! queued before it, so a restart that resumes from it never skips a change; a restart inside
//! the server's history window then watches from there instead of relisting.

use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

pub const TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS krateo_ingester_watch_state (
    cluster_name text NOT NULL,
    scope text NOT NULL,
    resource_version bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_name, scope)
)";

/// The key of a watch scope: its group, API version, plural and namespace (`*` for all). The
/// API version is part of it because rows carry it: a new version must relist to rewrite them.
pub fn scope_key(group: &str, version: &str, plural: &str, namespace: Option<&str>) -> String {
    format!("{group}/{version}/{plural}/{}", namespace.unwrap_or("*"))
}

pub async fn load(pool: &Pool, cluster: &str, scope: &str) -> Result<Option<i64>, String> {
    let client = pool.get().await.map_err(|e| super::error_chain(&e))?;
    let row = client
        .query_typed_opt(
            "SELECT resource_version FROM krateo_ingester_watch_state WHERE cluster_name = $1 AND scope = $2",
            &[(&cluster, Type::TEXT), (&scope, Type::TEXT)],
        )
        .await
        .map_err(|e| super::error_chain(&e))?;
    // A NULL (a table changed by hand) reads as no resume point: the watch lists.
    Ok(row.and_then(|r| r.try_get::<_, Option<i64>>(0).ok().flatten()))
}

/// Drops the resume points of every scope of a kind (its CRD is gone): a later watch of it
/// lists, and that list repairs rows a sweep marked deleted whose object is alive.
pub async fn forget_kind(
    pool: &Pool,
    cluster: &str,
    group: &str,
    plural: &str,
) -> Result<u64, String> {
    let client = pool.get().await.map_err(|e| super::error_chain(&e))?;
    client
        .execute_typed(
            "DELETE FROM krateo_ingester_watch_state
              WHERE cluster_name = $1 AND split_part(scope, '/', 1) = $2 AND split_part(scope, '/', 3) = $3",
            &[(&cluster, Type::TEXT), (&group, Type::TEXT), (&plural, Type::TEXT)],
        )
        .await
        .map_err(|e| super::error_chain(&e))
}

/// Drops the resume point of one scope (its history is not the server's any more).
pub async fn forget(pool: &Pool, cluster: &str, scope: &str) -> Result<u64, String> {
    let client = pool.get().await.map_err(|e| super::error_chain(&e))?;
    client
        .execute_typed(
            "DELETE FROM krateo_ingester_watch_state WHERE cluster_name = $1 AND scope = $2",
            &[(&cluster, Type::TEXT), (&scope, Type::TEXT)],
        )
        .await
        .map_err(|e| super::error_chain(&e))
}

/// The key under which the cluster identity the resume points and rows of a cluster name come
/// from is recorded, next to the points (resource_version 0; never a scope key: those have
/// four `/`-separated parts and no `:` in their group).
pub fn identity_key(cluster_id: &str) -> String {
    format!("{IDENTITY_PREFIX}{cluster_id}")
}

const IDENTITY_PREFIX: &str = "cluster-identity:";

/// What [`adopt_identity`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adopted {
    /// The points and rows already come from this identity, or nothing recorded which one
    /// (a first start, or one by a version that did not record it): recorded now.
    Same,
    /// They come from another identity (the name was moved to a rebuilt cluster): every
    /// resume point of the name is dropped and the resourceVersions of its rows cleared.
    Changed { previous: String, rows_cleared: u64 },
}

/// Run once at start-up by the replica that writes, before any watch. Another cluster's
/// resourceVersions compare with nothing in this one: its resume points would resume watches
/// in the wrong history and its rows' versions would make the sweep's guard spare them. So
/// when the name's recorded identity changed, every resume point of the name goes (each
/// watch lists) and every row's `object_resource_version` is cleared (each list rewrites what
/// it has and its sweep marks the rest deleted), in one transaction with the new record.
pub async fn adopt_identity(
    pool: &Pool,
    cluster: &str,
    cluster_id: &str,
) -> Result<Adopted, String> {
    let mut client = pool.get().await.map_err(|e| super::error_chain(&e))?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| super::error_chain(&e))?;
    let ours = identity_key(cluster_id);
    // Two replicas starting at once adopt in turn.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('krateo_ingester_watch_state'), hashtext($1))",
        &[&cluster],
    )
    .await
    .map_err(|e| super::error_chain(&e))?;
    let recorded: Vec<String> = tx
        .query(
            "SELECT scope FROM krateo_ingester_watch_state WHERE cluster_name = $1 AND starts_with(scope, $2)",
            &[&cluster, &IDENTITY_PREFIX],
        )
        .await
        .map_err(|e| super::error_chain(&e))?
        .iter()
        .filter_map(|r| r.try_get::<_, Option<String>>(0).ok().flatten())
        .collect();
    let previous = recorded.iter().find(|k| **k != ours).cloned();
    let adopted = match previous {
        None if recorded.contains(&ours) => return Ok(Adopted::Same),
        None => Adopted::Same,
        Some(previous) => {
            tx.execute(
                "DELETE FROM krateo_ingester_watch_state WHERE cluster_name = $1",
                &[&cluster],
            )
            .await
            .map_err(|e| super::error_chain(&e))?;
            let rows_cleared = tx
                .execute(
                    "UPDATE krateo_resources SET object_resource_version = NULL
                      WHERE cluster_name = $1 AND object_resource_version IS NOT NULL",
                    &[&cluster],
                )
                .await
                .map_err(|e| super::error_chain(&e))?;
            Adopted::Changed {
                previous: previous
                    .strip_prefix(IDENTITY_PREFIX)
                    .unwrap_or(&previous)
                    .to_owned(),
                rows_cleared,
            }
        }
    };
    tx.execute(
        "INSERT INTO krateo_ingester_watch_state (cluster_name, scope, resource_version) VALUES ($1, $2, 0)
         ON CONFLICT (cluster_name, scope) DO NOTHING",
        &[&cluster, &ours],
    )
    .await
    .map_err(|e| super::error_chain(&e))?;
    tx.commit().await.map_err(|e| super::error_chain(&e))?;
    Ok(adopted)
}

/// Stores `rv` unless a newer point is already stored (resourceVersions only grow), and
/// unless the database went back in time since the watch counted `rv` as committed (the
/// commit marks' `generation` moved on): the point could cover changes the database lost.
/// Checked after taking the connection, whose set-up is where a rewind is found. Returns
/// whether the point was stored.
pub async fn save(
    db: &super::Database,
    cluster: &str,
    scope: &str,
    rv: i64,
    generation: u64,
) -> Result<bool, String> {
    let client = db.pool.get().await.map_err(|e| super::error_chain(&e))?;
    if db.marks.generation() != generation {
        return Ok(false);
    }
    client
        .execute_typed(
            "INSERT INTO krateo_ingester_watch_state (cluster_name, scope, resource_version) VALUES ($1, $2, $3)
             ON CONFLICT (cluster_name, scope) DO UPDATE SET resource_version = EXCLUDED.resource_version, updated_at = now()
              WHERE krateo_ingester_watch_state.resource_version < EXCLUDED.resource_version",
            &[(&cluster, Type::TEXT), (&scope, Type::TEXT), (&rv, Type::INT8)],
        )
        .await
        .map_err(|e| super::error_chain(&e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_keys_separate_versions_and_namespaces() {
        assert_eq!(scope_key("", "v1", "pods", None), "/v1/pods/*");
        assert_eq!(
            scope_key("apps", "v1", "deployments", Some("a")),
            "apps/v1/deployments/a"
        );
        assert_ne!(
            scope_key("g", "v1", "x", None),
            scope_key("g", "v2", "x", None)
        );
    }
}
