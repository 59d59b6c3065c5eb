//! What this deployment watches, remembered across runs, so that rows of scopes it no longer
//! watches (a route removed, `NAMESPACES` narrowed, a managed group removed) are retired at
//! start-up instead of staying live forever.
//!
//! Deployments are told apart by `INSTANCE_NAME`: each remembers its own coverage in
//! `krateo_ingester_coverage` under (cluster, instance), and only rows inside what the same
//! instance covered before are ever retired. Two deployments of one cluster that split the
//! kinds between them use two instance names and never retire each other's rows.

use std::collections::BTreeSet;

use deadpool_postgres::{Pool, Transaction};

pub const TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS krateo_ingester_coverage (
    cluster_name text NOT NULL,
    instance text NOT NULL,
    kinds text[] NOT NULL,
    managed_groups text[] NOT NULL,
    namespaces text[] NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_name, instance)
)";

/// The rows a configuration watches: kinds (`group/plural`) of the static routes, every kind
/// of the managed groups, in the namespaces (empty: all; cluster-scoped rows, namespace `''`,
/// are watched whenever their kind is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    pub kinds: BTreeSet<String>,
    pub managed_groups: BTreeSet<String>,
    pub namespaces: BTreeSet<String>,
}

impl Coverage {
    pub fn new<'a>(
        kinds: impl IntoIterator<Item = (&'a str, &'a str)>,
        managed_groups: impl IntoIterator<Item = &'a str>,
        namespaces: impl IntoIterator<Item = &'a str>,
    ) -> Coverage {
        Coverage {
            kinds: kinds.into_iter().map(|(g, p)| kind_key(g, p)).collect(),
            managed_groups: managed_groups.into_iter().map(str::to_owned).collect(),
            namespaces: namespaces.into_iter().map(str::to_owned).collect(),
        }
    }

    /// Whether a row of this group, plural and namespace is watched.
    pub fn covers(&self, group: &str, plural: &str, namespace: &str) -> bool {
        let kind =
            self.kinds.contains(&kind_key(group, plural)) || self.managed_groups.contains(group);
        kind && (self.namespaces.is_empty()
            || namespace.is_empty()
            || self.namespaces.contains(namespace))
    }

    fn arrays(&self) -> [Vec<&str>; 3] {
        [
            self.kinds.iter().map(String::as_str).collect(),
            self.managed_groups.iter().map(String::as_str).collect(),
            self.namespaces.iter().map(String::as_str).collect(),
        ]
    }
}

fn kind_key(group: &str, plural: &str) -> String {
    format!("{group}/{plural}")
}

/// A scope key of the watch-state table (`group/version/plural/namespace-or-*`), parsed.
fn parse_scope_key(key: &str) -> Option<(&str, &str, Option<&str>)> {
    let mut parts = key.split('/');
    let (group, _version, plural, ns) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((group, plural, (ns != "*").then_some(ns)))
}

/// Whether a watch scope is entirely outside `now` but was inside `before`.
fn scope_retired(before: &Coverage, now: &Coverage, key: &str) -> bool {
    let Some((group, plural, ns)) = parse_scope_key(key) else {
        return false;
    };
    let ns = ns.unwrap_or("");
    let was = before.covers(group, plural, ns);
    let is = match ns {
        // A cluster-wide watch scope is still fully watched only with no namespace filter.
        "" => now.covers(group, plural, "") && now.namespaces.is_empty(),
        ns => now.covers(group, plural, ns),
    };
    was && !is
}

/// Rows retired, per kind.
pub type Retired = Vec<(String, u64)>;

fn coverage_of(r: &tokio_postgres::Row) -> Coverage {
    let set = |i: usize| -> BTreeSet<String> {
        r.try_get::<_, Option<Vec<String>>>(i)
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .collect()
    };
    Coverage {
        kinds: set(0),
        managed_groups: set(1),
        namespaces: set(2),
    }
}

/// Marks deleted the live rows this instance covered last time but does not cover now, and
/// that no other instance of the cluster covers; drops the resume points of scopes nobody
/// watches any more; records `now` as this instance's coverage. Run once at start-up, by the
/// replica that writes (after it holds the lease).
///
/// Retiring changes rows like the writer does: with `HISTORY` each retired row's last state is
/// recorded as `deleted` (no resourceVersion of its own, as a sweep), with `CHANGE_FEED` the
/// rows are notified, both in the same transaction.
///
/// A full NOTIFY queue (`COMMIT` refused with 54000: a listener stopped reading) never stops
/// start-up: the same work is committed again without the notification, with a warning.
pub async fn retire_uncovered(
    pool: &Pool,
    cluster: &str,
    instance: &str,
    now: &Coverage,
    options: super::writer::WriterOptions,
) -> Result<Retired, String> {
    match retire_once(pool, cluster, instance, now, options).await {
        Err(e) if options.change_feed && e.starts_with(super::writer::NOTIFY_QUEUE_FULL) => {
            tracing::warn!(error = %e, "change feed notification of the retired rows skipped; retiring without it");
            let options = super::writer::WriterOptions {
                change_feed: false,
                ..options
            };
            retire_once(pool, cluster, instance, now, options).await
        }
        other => other,
    }
}

async fn retire_once(
    pool: &Pool,
    cluster: &str,
    instance: &str,
    now: &Coverage,
    options: super::writer::WriterOptions,
) -> Result<Retired, String> {
    let mut client = pool.get().await.map_err(|e| super::error_chain(&e))?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| super::error_chain(&e))?;
    let before = record_coverage(&tx, cluster, instance, now)
        .await
        .map_err(|e| super::error_chain(&e))?;
    let mut retired = Retired::new();
    if let Some(before) = before.filter(|b| b != now) {
        retired = retire_rows(&tx, cluster, &before, options)
            .await
            .map_err(|e| super::error_chain(&e))?;
        forget_watch_states(&tx, cluster, instance, &before, now)
            .await
            .map_err(|e| super::error_chain(&e))?;
    }
    tx.commit().await.map_err(|e| match e.code() {
        Some(c) if c.code() == "54000" => format!(
            "{}: {}",
            super::writer::NOTIFY_QUEUE_FULL,
            super::error_chain(&e)
        ),
        _ => super::error_chain(&e),
    })?;
    Ok(retired)
}

/// Stores this instance's coverage and returns the one it had before (locked until commit,
/// so two replicas starting at once retire in turn).
async fn record_coverage(
    tx: &Transaction<'_>,
    cluster: &str,
    instance: &str,
    now: &Coverage,
) -> Result<Option<Coverage>, tokio_postgres::Error> {
    let before = tx
        .query_opt(
            "SELECT kinds, managed_groups, namespaces FROM krateo_ingester_coverage
              WHERE cluster_name = $1 AND instance = $2 FOR UPDATE",
            &[&cluster, &instance],
        )
        .await?
        .map(|r| coverage_of(&r));
    let [nk, ng, nn] = now.arrays();
    tx.execute(
        "INSERT INTO krateo_ingester_coverage (cluster_name, instance, kinds, managed_groups, namespaces)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (cluster_name, instance) DO UPDATE SET kinds = EXCLUDED.kinds,
           managed_groups = EXCLUDED.managed_groups, namespaces = EXCLUDED.namespaces, updated_at = now()",
        &[&cluster, &instance, &nk, &ng, &nn],
    )
    .await?;
    Ok(before)
}

/// Marks deleted the rows inside the old coverage that no instance of the cluster (this one's
/// new coverage included) covers now; records them in the history and the change feed when
/// those are on. Returns how many rows per kind.
async fn retire_rows(
    tx: &Transaction<'_>,
    cluster: &str,
    before: &Coverage,
    options: super::writer::WriterOptions,
) -> Result<Retired, tokio_postgres::Error> {
    let [bk, bg, bn] = before.arrays();
    let history = if options.history {
        ", recorded AS (
               INSERT INTO krateo_resource_history (observed_at, cluster_name, global_uid,
                 resource_group, resource_version, resource_kind, resource_plural, namespace,
                 resource_name, operation, object_resource_version, raw)
               SELECT updated_at, cluster_name, global_uid, resource_group, resource_version,
                 resource_kind, resource_plural, namespace, resource_name, 'deleted', NULL, raw
                 FROM gone)"
    } else {
        ""
    };
    let rows = tx
        .query(
            &format!("WITH gone AS (
               UPDATE krateo_resources AS r SET deleted_at = now(), updated_at = now()
                WHERE r.cluster_name = $1 AND r.deleted_at IS NULL
                  AND ((r.resource_group || '/' || r.resource_plural) = ANY($2) OR r.resource_group = ANY($3))
                  AND (cardinality($4::text[]) = 0 OR r.namespace = '' OR r.namespace = ANY($4))
                  AND NOT EXISTS (
                    SELECT 1 FROM krateo_ingester_coverage c
                     WHERE c.cluster_name = $1
                       AND ((r.resource_group || '/' || r.resource_plural) = ANY(c.kinds) OR r.resource_group = ANY(c.managed_groups))
                       AND (cardinality(c.namespaces) = 0 OR r.namespace = '' OR r.namespace = ANY(c.namespaces)))
               RETURNING r.resource_group || '/' || r.resource_plural AS kind, r.global_uid,
                 r.updated_at, r.cluster_name, r.resource_group, r.resource_version,
                 r.resource_kind, r.resource_plural, r.namespace, r.resource_name, r.raw){history}
             SELECT kind, global_uid, updated_at FROM gone ORDER BY kind"),
            &[&cluster, &bk, &bg, &bn],
        )
        .await?;
    let mut retired = Retired::new();
    let mut changes = Vec::with_capacity(rows.len());
    for r in &rows {
        let kind: String = r
            .try_get::<_, Option<String>>(0)
            .ok()
            .flatten()
            .unwrap_or_default();
        match retired.last_mut() {
            Some((k, n)) if *k == kind => *n += 1,
            _ => retired.push((kind, 1)),
        }
        if let (Ok(global_uid), Ok(updated_at)) = (r.try_get(1), r.try_get(2)) {
            changes.push(super::feed::Change {
                global_uid,
                operation: super::feed::Operation::Deleted,
                resource_version: None,
                updated_at,
            });
        }
    }
    if options.change_feed {
        if let Some(payload) = super::feed::payload(&changes) {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&super::feed::CHANNEL, &payload],
            )
            .await?;
        }
    }
    Ok(retired)
}

/// Drops the resume points of scopes this instance no longer watches and no other instance
/// of the cluster does: were they watched again later, they must relist, not resume.
async fn forget_watch_states(
    tx: &Transaction<'_>,
    cluster: &str,
    instance: &str,
    before: &Coverage,
    now: &Coverage,
) -> Result<(), tokio_postgres::Error> {
    let others: Vec<Coverage> = tx
        .query(
            "SELECT kinds, managed_groups, namespaces FROM krateo_ingester_coverage
              WHERE cluster_name = $1 AND instance <> $2",
            &[&cluster, &instance],
        )
        .await?
        .iter()
        .map(coverage_of)
        .collect();
    let keys: Vec<String> = tx
        .query(
            "SELECT scope FROM krateo_ingester_watch_state WHERE cluster_name = $1",
            &[&cluster],
        )
        .await?
        .iter()
        .filter_map(|r| r.try_get::<_, Option<String>>(0).ok().flatten())
        .filter(|k| scope_retired(before, now, k) && !others.iter().any(|o| scope_watched_by(o, k)))
        .collect();
    tx.execute(
        "DELETE FROM krateo_ingester_watch_state WHERE cluster_name = $1 AND scope = ANY($2)",
        &[&cluster, &keys],
    )
    .await?;
    Ok(())
}

fn scope_watched_by(coverage: &Coverage, key: &str) -> bool {
    parse_scope_key(key)
        .is_some_and(|(group, plural, ns)| coverage.covers(group, plural, ns.unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cov(kinds: &[(&str, &str)], groups: &[&str], ns: &[&str]) -> Coverage {
        Coverage::new(
            kinds.iter().copied(),
            groups.iter().copied(),
            ns.iter().copied(),
        )
    }

    #[test]
    fn cluster_scoped_rows_follow_their_kind_whatever_the_namespaces() {
        let c = cov(
            &[("", "pods"), ("", "namespaces")],
            &["composition.krateo.io"],
            &["a"],
        );
        assert!(c.covers("", "pods", "a"));
        assert!(!c.covers("", "pods", "b"));
        assert!(c.covers("", "namespaces", ""));
        assert!(c.covers("composition.krateo.io", "anything", ""));
        assert!(c.covers("composition.krateo.io", "anything", "a"));
        assert!(!c.covers("composition.krateo.io", "anything", "b"));
        assert!(!c.covers("apps", "deployments", "a"));
        assert!(cov(&[("", "pods")], &[], &[]).covers("", "pods", "zzz"));
    }

    #[test]
    fn scopes_left_behind_by_a_narrower_configuration() {
        let before = cov(&[("", "pods"), ("apps", "deployments")], &["g.io"], &[]);
        let now = cov(&[("", "pods")], &[], &["a"]);
        assert!(
            scope_retired(&before, &now, "apps/v1/deployments/*"),
            "route removed"
        );
        assert!(
            scope_retired(&before, &now, "/v1/pods/*"),
            "all namespaces -> one"
        );
        assert!(!scope_retired(&before, &now, "/v1/pods/a"));
        assert!(
            scope_retired(&before, &now, "g.io/v1/things/*"),
            "group removed"
        );
        assert!(
            !scope_retired(&before, &now, "other.io/v1/x/*"),
            "never ours"
        );
        assert!(!scope_retired(&before, &now, "not a key"));
    }
}
