//! What the table already holds for one list scope: the `(uid, resourceVersion)` pairs of
//! its live rows, loaded once per (re)list so unchanged objects are never re-sent and
//! objects the list no longer has can be marked deleted. Only ids and numbers are held.

use std::collections::HashMap;
use tokio_postgres::types::Type;

use deadpool_postgres::Pool;
use futures::{pin_mut, TryStreamExt};

/// One list's scope: a kind in one cluster, optionally one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub cluster: String,
    pub group: String,
    pub plural: String,
    /// API version the watch serves: rows stored at another version are rewritten.
    pub version: String,
    pub namespace: Option<String>,
}

/// Live rows of a scope: uid -> resourceVersion of the stored state (`None` when the row was
/// stored at another API version or without a numeric resourceVersion: always rewritten).
#[derive(Debug, Default)]
pub struct ScopeSnapshot {
    rows: HashMap<String, Option<i64>>,
}

/// What to do with a listed object.
#[derive(Debug, PartialEq, Eq)]
pub enum Listed {
    /// The table holds exactly this state.
    Unchanged,
    /// New or changed: write it.
    Changed,
}

impl ScopeSnapshot {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, Option<i64>)>) -> Self {
        Self {
            rows: pairs.into_iter().collect(),
        }
    }

    /// Marks `uid` as seen by the list and says whether it must be written.
    pub fn observe(&mut self, uid: &str, resource_version: Option<i64>) -> Listed {
        match (self.rows.remove(uid), resource_version) {
            (Some(Some(stored)), Some(listed)) if stored == listed => Listed::Unchanged,
            _ => Listed::Changed,
        }
    }

    /// The uids of live rows the list did not have: their objects are gone.
    pub fn into_missing(self) -> impl Iterator<Item = String> {
        self.rows.into_keys()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether live rows of the scope are stored at another API version than the one it is
    /// watched at: then only a list rewrites them (a resume point of this version, stored
    /// before another version was watched, would leave them there).
    pub async fn has_rows_at_other_versions(pool: &Pool, scope: &Scope) -> Result<bool, String> {
        let client = pool.get().await.map_err(|e| super::error_chain(&e))?;
        let row = client
            .query_typed_opt(
                "SELECT 1 FROM krateo_resources
                  WHERE cluster_name = $1 AND resource_group = $2 AND resource_plural = $3
                    AND resource_version <> $4 AND deleted_at IS NULL
                    AND ($5::text IS NULL OR namespace = $5)
                  LIMIT 1",
                &[
                    (&scope.cluster, Type::TEXT),
                    (&scope.group, Type::TEXT),
                    (&scope.plural, Type::TEXT),
                    (&scope.version, Type::TEXT),
                    (&scope.namespace, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| super::error_chain(&e))?;
        Ok(row.is_some())
    }

    /// The highest object resourceVersion among the scope's live rows: within one history the
    /// collection's current resourceVersion is never below it. (Live rows only: they are what
    /// the presenter's partial indexes cover, and a list reads them anyway; a deleted row's
    /// version is covered by the resume point stored after it.)
    pub async fn newest_version(pool: &Pool, scope: &Scope) -> Result<Option<i64>, String> {
        let client = pool.get().await.map_err(|e| super::error_chain(&e))?;
        let row = client
            .query_typed_one(
                "SELECT max(object_resource_version) FROM krateo_resources
                  WHERE cluster_name = $1 AND resource_group = $2 AND resource_plural = $3
                    AND deleted_at IS NULL AND ($4::text IS NULL OR namespace = $4)",
                &[
                    (&scope.cluster, Type::TEXT),
                    (&scope.group, Type::TEXT),
                    (&scope.plural, Type::TEXT),
                    (&scope.namespace, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| super::error_chain(&e))?;
        Ok(row.try_get::<_, Option<i64>>(0).ok().flatten())
    }

    /// The server's history is not the one the scope's rows come from: their resourceVersions
    /// compare with nothing the server says any more. Cleared (live and deleted rows), they
    /// let the next list rewrite every object it has (the upsert guard lets any state over a
    /// row without one) and its sweep mark deleted every row it lacks (the tombstone guard
    /// spares only rows newer than the list). Returns how many rows were cleared.
    pub async fn forget_versions(pool: &Pool, scope: &Scope) -> Result<u64, String> {
        let client = pool.get().await.map_err(|e| super::error_chain(&e))?;
        client
            .execute_typed(
                "UPDATE krateo_resources SET object_resource_version = NULL
                  WHERE cluster_name = $1 AND resource_group = $2 AND resource_plural = $3
                    AND ($4::text IS NULL OR namespace = $4) AND object_resource_version IS NOT NULL",
                &[(&scope.cluster, Type::TEXT), (&scope.group, Type::TEXT), (&scope.plural, Type::TEXT), (&scope.namespace, Type::TEXT)],
            )
            .await
            .map_err(|e| super::error_chain(&e))
    }

    /// Loads the live rows of a scope (streamed, so only the pairs are held).
    pub async fn load(pool: &Pool, scope: &Scope) -> Result<ScopeSnapshot, String> {
        let client = pool.get().await.map_err(|e| super::error_chain(&e))?;
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 5] = [
            (&scope.cluster, Type::TEXT),
            (&scope.group, Type::TEXT),
            (&scope.plural, Type::TEXT),
            (&scope.version, Type::TEXT),
            (&scope.namespace, Type::TEXT),
        ];
        let stream = client
            .query_typed_raw(
                "SELECT uid, CASE WHEN resource_version = $4 THEN object_resource_version END
                   FROM krateo_resources
                  WHERE cluster_name = $1 AND resource_group = $2 AND resource_plural = $3
                    AND deleted_at IS NULL AND ($5::text IS NULL OR namespace = $5)",
                params,
            )
            .await
            .map_err(|e| super::error_chain(&e))?;
        pin_mut!(stream);
        let mut rows = HashMap::new();
        while let Some(row) = stream
            .try_next()
            .await
            .map_err(|e| super::error_chain(&e))?
        {
            // A row without a uid (a table written by someone else) cannot be an object's
            // row: it is neither compared nor swept.
            if let Ok(Some(uid)) = row.try_get::<_, Option<String>>(0) {
                rows.insert(uid, row.try_get::<_, Option<i64>>(1).ok().flatten());
            }
        }
        Ok(ScopeSnapshot { rows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_only_when_the_same_numeric_version_is_stored() {
        let mut s = ScopeSnapshot::from_pairs([
            ("a".to_owned(), Some(5)),
            ("b".to_owned(), Some(5)),
            ("c".to_owned(), None),
            ("gone".to_owned(), Some(1)),
        ]);
        assert_eq!(s.observe("a", Some(5)), Listed::Unchanged);
        assert_eq!(s.observe("b", Some(6)), Listed::Changed);
        assert_eq!(s.observe("c", Some(5)), Listed::Changed);
        assert_eq!(s.observe("new", Some(1)), Listed::Changed);
        assert_eq!(
            s.observe("a", None),
            Listed::Changed,
            "seen twice: no longer in the set"
        );
        let missing: Vec<String> = s.into_missing().collect();
        assert_eq!(missing, vec!["gone".to_owned()]);
    }
}
