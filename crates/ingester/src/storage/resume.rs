//! Resume points: per watch scope, the resourceVersion up to which every change is committed
//! in `krateo_resources`. Written only after the lanes committed everything the watch had
//! queued before it, so a restart that resumes from it never skips a change; a restart inside
//! the server's history window then watches from there instead of relisting.

use deadpool_postgres::Pool;

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
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let row = client
        .query_opt(
            "SELECT resource_version FROM krateo_ingester_watch_state WHERE cluster_name = $1 AND scope = $2",
            &[&cluster, &scope],
        )
        .await
        .map_err(|e| e.to_string())?;
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
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .execute(
            "DELETE FROM krateo_ingester_watch_state
              WHERE cluster_name = $1 AND split_part(scope, '/', 1) = $2 AND split_part(scope, '/', 3) = $3",
            &[&cluster, &group, &plural],
        )
        .await
        .map_err(|e| e.to_string())
}

/// Stores `rv` unless a newer point is already stored (resourceVersions only grow).
pub async fn save(pool: &Pool, cluster: &str, scope: &str, rv: i64) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .execute(
            "INSERT INTO krateo_ingester_watch_state (cluster_name, scope, resource_version) VALUES ($1, $2, $3)
             ON CONFLICT (cluster_name, scope) DO UPDATE SET resource_version = EXCLUDED.resource_version, updated_at = now()
              WHERE krateo_ingester_watch_state.resource_version < EXCLUDED.resource_version",
            &[&cluster, &scope, &rv],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
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
