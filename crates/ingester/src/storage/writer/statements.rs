//! The statements of a batch's transaction: the binary `COPY` into the staging table, the
//! upsert and the tombstones (each feeding the history and the change feed when asked), and
//! how each is run and what it gives back.
//!
//! Nothing outlives the transaction, so a transaction pooler (PgBouncer `pool_mode =
//! transaction`) may run each batch on another server connection: the staging table is
//! created in the transaction when that server session lacks it, and the upsert and the
//! tombstones run as unnamed statements (parsed, bound and executed in one round trip, never
//! a prepared statement cached on the client that the next server connection would not know).

use std::error::Error as StdError;

use bytes::{BufMut, Bytes, BytesMut};
use chrono::Utc;
use deadpool_postgres::Transaction;
use futures::{pin_mut, SinkExt};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::copy_rows::CopyRows;
use super::verdict::{AttemptError, Stage};
use super::{Tombstone, WriterOptions};
use crate::row::record::Record;
use crate::storage::feed::{Change, Operation};

const COPY_SQL: &str = "COPY ingester_staging (global_uid, cluster_name, uid, namespace, resource_group, resource_version, resource_kind, resource_plural, resource_name, composition_id, created_at, updated_at, deleted_at, raw, status_raw, object_resource_version) FROM STDIN (FORMAT binary)";

const COPY_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::JSONB,
    Type::JSONB,
    Type::INT8,
];

/// Refreshes every mutable column; never lets an older object state overwrite a newer one.
/// A delete carrying the same resourceVersion as the live row still applies, and so does the
/// same state served at another API version (a CRD's watched version switched). A live state
/// at the same resourceVersion as a row marked deleted brings the row back: no delete shares
/// a resourceVersion with a live state (a DELETED event carries the deletion's own version),
/// so such a row was marked by a sweep or by hand, and the object is alive.
const UPSERT_SQL: &str = "INSERT INTO krateo_resources AS t
    (created_at, updated_at, deleted_at, cluster_name, uid, namespace, global_uid, resource_group,
     resource_version, resource_kind, resource_plural, resource_name, composition_id, raw, status_raw,
     object_resource_version)
  SELECT created_at, updated_at, deleted_at, cluster_name, uid, namespace, global_uid, resource_group,
     resource_version, resource_kind, resource_plural, resource_name, composition_id, raw, status_raw,
     object_resource_version
    FROM ingester_staging
  ON CONFLICT (global_uid) DO UPDATE SET
     updated_at = EXCLUDED.updated_at,
     deleted_at = EXCLUDED.deleted_at,
     namespace = EXCLUDED.namespace,
     resource_version = EXCLUDED.resource_version,
     resource_kind = EXCLUDED.resource_kind,
     resource_plural = EXCLUDED.resource_plural,
     composition_id = EXCLUDED.composition_id,
     raw = EXCLUDED.raw,
     status_raw = EXCLUDED.status_raw,
     object_resource_version = EXCLUDED.object_resource_version
   WHERE t.object_resource_version IS NULL
      OR EXCLUDED.object_resource_version IS NULL
      OR t.object_resource_version < EXCLUDED.object_resource_version
      OR (t.object_resource_version = EXCLUDED.object_resource_version
          AND ((EXCLUDED.deleted_at IS NOT NULL AND t.deleted_at IS NULL)
               OR (EXCLUDED.deleted_at IS NULL AND t.deleted_at IS NOT NULL)
               OR t.resource_version IS DISTINCT FROM EXCLUDED.resource_version))";

/// Marks rows deleted, but only rows not newer than the list that found them missing: a row
/// written from a newer state (another replica, a live event, a list answered from a lagging
/// cache) is the truth of a moment that list did not see.
const TOMBSTONE_SQL: &str = "UPDATE krateo_resources AS t SET deleted_at = $3, updated_at = $3
  FROM unnest($1::text[], $2::int8[]) AS s(global_uid, not_newer_than)
  WHERE t.global_uid = s.global_uid AND t.deleted_at IS NULL
    AND (s.not_newer_than IS NULL OR t.object_resource_version IS NULL
         OR t.object_resource_version <= s.not_newer_than)";

/// The operation a changed row went through, from the row after the change (`xmax = 0`: the
/// upsert inserted it).
const OPERATION_SQL: &str =
    "CASE WHEN deleted_at IS NOT NULL THEN 'deleted' WHEN xmax = 0 THEN 'created' ELSE 'updated' END";

/// The history columns, in the order the statements below fill them.
const HISTORY_COLUMNS: &str = "(observed_at, cluster_name, global_uid, resource_group, resource_version, resource_kind, resource_plural, namespace, resource_name, operation, object_resource_version, raw)";

/// The upsert, feeding the history (`HISTORY`) in the same statement. `old` is read from the
/// statement's snapshot, i.e. before the upsert: every row the guard let through is compared
/// with its previous state (`deleted` NULL: there was none), and only a new object version is
/// recorded as one:
/// - a row inserted, or whose resourceVersion grew (or had none before): the version, with
///   its resourceVersion;
/// - the same resourceVersion going from live to deleted (a DELETED event carrying the last
///   state's version) or back (a live state reviving a row a sweep marked deleted wrongly):
///   recorded with a NULL resourceVersion, since the version itself is recorded already;
/// - the same resourceVersion at another API version (a CRD's watched version switched):
///   the same object version, not recorded;
/// - a state without an integer resourceVersion (no guard): recorded when its JSON or its
///   deleted state differs from the stored one, with a NULL resourceVersion.
///
/// The previous state is looked up per staged row through the unique index on `global_uid`
/// (scalar subqueries): the staging table has no statistics, and a join planned from them
/// scanned the whole table for every batch (ingest-bench, 40k objects: +60% PostgreSQL CPU
/// over history off with the join, +17% with the lookups).
///
/// So a replay, a relist, a restart or a second replica, which the guard lets through only
/// in those cases, never records one (global_uid, resourceVersion) twice. The final query gives
/// the changed rows for the change feed, or their count.
fn history_upsert_sql(feed: bool) -> String {
    let select = if feed {
        "SELECT global_uid, operation, object_resource_version, updated_at FROM changed"
    } else {
        "SELECT count(*) FROM changed"
    };
    format!(
        "WITH old AS (
  SELECT s.global_uid,
    (SELECT t.deleted_at IS NOT NULL FROM krateo_resources t WHERE t.global_uid = s.global_uid) AS deleted,
    (SELECT t.object_resource_version FROM krateo_resources t WHERE t.global_uid = s.global_uid) AS rv,
    CASE WHEN s.object_resource_version IS NULL THEN
      (SELECT t.raw FROM krateo_resources t WHERE t.global_uid = s.global_uid) END AS unversioned_raw
    FROM ingester_staging s
), up AS (
  {UPSERT_SQL}
  RETURNING updated_at, cluster_name, global_uid, resource_group, resource_version, resource_kind,
     resource_plural, namespace, resource_name, object_resource_version, raw,
     {OPERATION_SQL} AS operation, deleted_at IS NOT NULL AS deleted
), changed AS (
  SELECT up.*,
    CASE
      WHEN up.operation = 'created' OR o.deleted IS NULL THEN 'version'
      WHEN up.object_resource_version IS NULL THEN
        CASE WHEN o.deleted <> up.deleted OR o.unversioned_raw IS DISTINCT FROM up.raw THEN 'transition' END
      WHEN o.rv IS NULL OR o.rv < up.object_resource_version THEN 'version'
      WHEN o.deleted <> up.deleted THEN 'transition'
    END AS recorded_as
    FROM up LEFT JOIN old o ON o.global_uid = up.global_uid
), recorded AS (
  INSERT INTO krateo_resource_history {HISTORY_COLUMNS}
  SELECT updated_at, cluster_name, global_uid, resource_group, resource_version, resource_kind,
     resource_plural, namespace, resource_name, operation,
     CASE WHEN recorded_as = 'version' THEN object_resource_version END, raw
    FROM changed WHERE recorded_as IS NOT NULL
)
{select}"
    )
}

/// The tombstones, feeding the history: a sweep has no object version of its own, so the
/// row's last state is recorded as `deleted` with a NULL resourceVersion. A row already marked
/// deleted is not swept again, so a relist records nothing twice.
fn history_tombstone_sql(feed: bool) -> String {
    let select = if feed {
        "SELECT global_uid FROM swept"
    } else {
        "SELECT count(*) FROM swept"
    };
    format!(
        "WITH swept AS (
  {TOMBSTONE_SQL}
  RETURNING t.cluster_name, t.global_uid, t.resource_group, t.resource_version, t.resource_kind,
     t.resource_plural, t.namespace, t.resource_name, t.raw
), recorded AS (
  INSERT INTO krateo_resource_history {HISTORY_COLUMNS}
  SELECT $3, cluster_name, global_uid, resource_group, resource_version, resource_kind,
     resource_plural, namespace, resource_name, 'deleted', NULL, raw
    FROM swept
)
{select}"
    )
}

/// What a statement gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Returns {
    /// The affected-row count of a plain statement (the fastest path: no rows come back).
    Affected,
    /// One row with the count of changed rows.
    Count,
    /// One row per changed row, for the change feed.
    Changes,
}

/// The statements for a set of options, built once.
#[derive(Debug)]
pub(super) struct Statements {
    /// `CREATE TEMP TABLE IF NOT EXISTS` of the staging table.
    pub(super) staging: String,
    upsert: String,
    upsert_returns: Returns,
    tombstone: String,
    tombstone_returns: Returns,
}

impl Statements {
    pub(super) fn new(o: WriterOptions) -> Statements {
        let staging = crate::storage::schema::staging_ddl(o.staging_lz4);
        match (o.history, o.change_feed) {
            (false, false) => Statements {
                staging,
                upsert: UPSERT_SQL.to_owned(),
                upsert_returns: Returns::Affected,
                tombstone: TOMBSTONE_SQL.to_owned(),
                tombstone_returns: Returns::Affected,
            },
            (false, true) => Statements {
                staging,
                upsert: format!(
                    "{UPSERT_SQL}\n  RETURNING global_uid, {OPERATION_SQL}, object_resource_version, updated_at"
                ),
                upsert_returns: Returns::Changes,
                tombstone: format!("{TOMBSTONE_SQL}\n  RETURNING t.global_uid"),
                tombstone_returns: Returns::Changes,
            },
            (true, feed) => {
                let returns = if feed { Returns::Changes } else { Returns::Count };
                Statements {
                    staging,
                    upsert: history_upsert_sql(feed),
                    upsert_returns: returns,
                    tombstone: history_tombstone_sql(feed),
                    tombstone_returns: returns,
                }
            }
        }
    }
}

/// JSON text sent as binary jsonb (version byte 1 + text): no re-serialisation.
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_u8(1);
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
    to_sql_checked!();
}

/// Sends the records into the staging table (binary `COPY`, in pieces of
/// [`copy_rows::SEND_AT`](super::copy_rows::SEND_AT) bytes).
pub(super) async fn copy_records(
    tx: &Transaction<'_>,
    records: &[Record],
) -> Result<(), AttemptError> {
    let rows = AttemptError::at(Stage::Rows);
    let sink = tx.copy_in::<_, Bytes>(COPY_SQL).await.map_err(&rows)?;
    pin_mut!(sink);
    let mut copy = CopyRows::new();
    for r in records {
        let status = r.status_json().map(Jsonb);
        copy.row(
            &[
                &r.global_uid,
                &&*r.cluster_name,
                &r.uid,
                &r.namespace,
                &r.route.group,
                &r.route.version,
                &r.route.kind,
                &r.route.plural,
                &r.name,
                &r.composition_id,
                &r.created_at,
                &r.updated_at,
                &r.deleted_at,
                &Jsonb(&r.raw),
                &status,
                &r.object_resource_version,
            ],
            COPY_TYPES,
        )
        .map_err(|e| {
            AttemptError::Data(format!(
                "a value of {}/{} cannot be encoded (column {}): {}",
                r.namespace, r.name, e.column, e.error
            ))
        })?;
        if let Some(piece) = copy.take_full() {
            // `feed`, not `send`: the connection writes it without a flush of its own.
            sink.feed(piece).await.map_err(&rows)?;
        }
    }
    sink.send(copy.finish()).await.map_err(&rows)?;
    sink.finish().await.map_err(&rows)?;
    Ok(())
}

impl Statements {
    /// Upserts the staged rows; the rows changed (counted, and added to `changes` for the
    /// change feed when it is on).
    pub(super) async fn upsert(
        &self,
        tx: &Transaction<'_>,
        changes: &mut Vec<Change>,
    ) -> Result<u64, AttemptError> {
        let rows = AttemptError::at(Stage::Rows);
        let upsert = self.upsert.as_str();
        Ok(match self.upsert_returns {
            Returns::Affected => tx.execute_typed(upsert, &[]).await.map_err(&rows)?,
            Returns::Count => count_of(&tx.query_typed_one(upsert, &[]).await.map_err(&rows)?),
            Returns::Changes => {
                let changed = tx.query_typed(upsert, &[]).await.map_err(&rows)?;
                changes.extend(changed.iter().map(|r| Change {
                    global_uid: r.get(0),
                    operation: Operation::parse(r.get(1)).unwrap_or(Operation::Updated),
                    resource_version: r.get(2),
                    updated_at: r.get(3),
                }));
                changed.len() as u64
            }
        })
    }

    /// Marks the tombstones' rows deleted; the rows swept (counted, and added to `changes`).
    pub(super) async fn tombstone(
        &self,
        tx: &Transaction<'_>,
        tombstones: &[Tombstone],
        changes: &mut Vec<Change>,
    ) -> Result<u64, AttemptError> {
        let rows = AttemptError::at(Stage::Rows);
        let ids: Vec<&str> = tombstones.iter().map(|t| t.global_uid.as_str()).collect();
        let guards: Vec<Option<i64>> = tombstones.iter().map(|t| t.not_newer_than).collect();
        let at = tombstones
            .iter()
            .map(|t| t.observed_at)
            .max()
            .unwrap_or_else(Utc::now);
        let stmt = self.tombstone.as_str();
        let params: [(&(dyn ToSql + Sync), Type); 3] = [
            (&ids, Type::TEXT_ARRAY),
            (&guards, Type::INT8_ARRAY),
            (&at, Type::TIMESTAMPTZ),
        ];
        Ok(match self.tombstone_returns {
            Returns::Affected => tx.execute_typed(stmt, &params).await.map_err(&rows)?,
            Returns::Count => count_of(&tx.query_typed_one(stmt, &params).await.map_err(&rows)?),
            Returns::Changes => {
                let swept = tx.query_typed(stmt, &params).await.map_err(&rows)?;
                changes.extend(swept.iter().map(|r| Change {
                    global_uid: r.get(0),
                    operation: Operation::Deleted,
                    resource_version: None,
                    updated_at: at,
                }));
                swept.len() as u64
            }
        })
    }
}

/// The count a `Returns::Count` statement answers.
fn count_of(row: &tokio_postgres::Row) -> u64 {
    u64::try_from(row.get::<_, i64>(0)).unwrap_or_default()
}
