//! `BatchWriter`: one transaction per batch: binary `COPY` into the session's staging table,
//! one set-based upsert on `global_uid` guarded by `object_resource_version`, then the
//! tombstones (objects a list no longer has). A batch PostgreSQL rejects for its data is
//! bisected down to the offending record, which is stored as a stub or dropped.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::feed::{self, Change, Operation};
use crate::row::record::Record;
use crate::telemetry::events::{ChangeFeedSkipped, RecordDropped, RecordSanitised};
use crate::telemetry::metrics::Metrics;

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

/// What the writer adds to each batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterOptions {
    /// `HISTORY`: append each new object version to the history table.
    pub history: bool,
    /// `CHANGE_FEED`: notify the changed rows on channel `krateo_resources`.
    pub change_feed: bool,
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
struct Statements {
    upsert: String,
    upsert_returns: Returns,
    tombstone: String,
    tombstone_returns: Returns,
}

impl Statements {
    fn new(o: WriterOptions) -> Statements {
        match (o.history, o.change_feed) {
            (false, false) => Statements {
                upsert: UPSERT_SQL.to_owned(),
                upsert_returns: Returns::Affected,
                tombstone: TOMBSTONE_SQL.to_owned(),
                tombstone_returns: Returns::Affected,
            },
            (false, true) => Statements {
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
                    upsert: history_upsert_sql(feed),
                    upsert_returns: returns,
                    tombstone: history_tombstone_sql(feed),
                    tombstone_returns: returns,
                }
            }
        }
    }
}

/// An object a list no longer had: its row gets `deleted_at`.
#[derive(Clone, Debug)]
pub struct Tombstone {
    pub global_uid: String,
    pub observed_at: DateTime<Utc>,
    /// The resourceVersion of the list (or deletion) that showed the object gone: a row
    /// stored from a newer state is left alone. `None` when that version is not an integer.
    pub not_newer_than: Option<i64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    pub rows_written: u64,
    pub tombstoned: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Connection, pool, server shutting down...: retry the whole batch later.
    #[error("{0}")]
    Transient(String),
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

/// How a `COMMIT` refused for its queued notification is reported (SQLSTATE 54000 at commit).
pub const NOTIFY_QUEUE_FULL: &str = "the NOTIFY queue is full";

/// Where in a batch's transaction an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Getting a connection, `BEGIN`, preparing a statement.
    Open,
    /// `COPY`, the upsert, the tombstones: the statements that read the rows' data.
    Rows,
    /// `pg_notify`, queued in the transaction.
    Notify,
    /// `COMMIT`: every statement succeeded; what fails here is the environment (or the
    /// notification queued for this commit).
    Commit,
}

/// What an error means for the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Some record's data: narrow it down to that record.
    Data,
    /// The change-feed notification could not be queued (the NOTIFY queue is full: a
    /// listener stopped reading or sits in an open transaction): write the batch without it.
    FeedRefused,
    /// The environment (connection, read-only server, a lagging identity sequence, a plan
    /// invalidated by DDL, ...): retry the same batch, drop nothing.
    Transient,
}

/// The pure rule: which server errors are about a row's data. Only errors of the
/// statements that read the rows can be; of those, data exceptions (22: `\u0000` in jsonb),
/// integrity violations (23) other than on the primary key (`id` comes from the table's
/// identity sequence, not from the row: a sequence behind the table's ids, after a restore,
/// fails every insert), program limits (54: a row too big) and unsupported values (0A)
/// other than "cached plan must not change result type" (the owner altered a column under
/// a prepared statement). Errors at `COMMIT` are never the rows': the statements passed.
fn verdict(
    stage: Stage,
    code: Option<&str>,
    constraint: Option<&str>,
    table: Option<&str>,
    message: &str,
) -> Verdict {
    let Some(code) = code else {
        return Verdict::Transient;
    };
    match stage {
        Stage::Open => Verdict::Transient,
        // 54000 "too many notifications in the NOTIFY queue" comes at COMMIT; a payload
        // PostgreSQL refuses (22023) at pg_notify. Neither is worth a row.
        Stage::Notify if code.starts_with("22") || code.starts_with("54") => Verdict::FeedRefused,
        Stage::Commit if code == "54000" => Verdict::FeedRefused,
        Stage::Notify | Stage::Commit => Verdict::Transient,
        Stage::Rows => {
            let primary_key = constraint.is_some_and(|c| c.ends_with("_pkey"));
            // Another table's constraint (the history's day partitions: "no partition of
            // relation found for row" when tomorrow's was not created) is the schema's state.
            let other_table = table.is_some_and(|t| t != "krateo_resources")
                || message.starts_with("no partition of relation");
            let replanned = code == "0A000" && message.contains("cached plan");
            let data = code.starts_with("22")
                || (code.starts_with("23") && !primary_key && !other_table)
                || code.starts_with("54")
                || (code.starts_with("0A") && !replanned);
            if data {
                Verdict::Data
            } else {
                Verdict::Transient
            }
        }
    }
}

#[derive(Debug)]
enum AttemptError {
    Data(String),
    FeedRefused(String),
    Transient(String),
}

impl AttemptError {
    /// Classifies `e` from `stage` (see [`verdict`]).
    fn at(stage: Stage) -> impl Fn(tokio_postgres::Error) -> AttemptError {
        move |e| {
            let db = e.as_db_error();
            // `Display` of a server error omits the detail; the code and message name it (never
            // a password; a row's data only in the detail, which is not kept).
            let msg = match db {
                Some(db) => format!("{}: {}", db.code().code(), db.message()),
                None => e.to_string(),
            };
            match verdict(
                stage,
                db.map(|d| d.code().code()),
                db.and_then(|d| d.constraint()),
                db.and_then(|d| d.table()),
                db.map(|d| d.message()).unwrap_or_default(),
            ) {
                Verdict::Data => AttemptError::Data(msg),
                Verdict::FeedRefused => AttemptError::FeedRefused(msg),
                Verdict::Transient => AttemptError::Transient(msg),
            }
        }
    }
}

#[derive(Clone)]
pub struct BatchWriter {
    pool: Pool,
    metrics: Arc<Metrics>,
    options: WriterOptions,
    statements: Arc<Statements>,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl BatchWriter {
    /// A writer without history and change feed (as before both existed).
    pub fn new(pool: Pool, metrics: Arc<Metrics>) -> Self {
        Self::with_options(pool, metrics, WriterOptions::default())
    }

    pub fn with_options(pool: Pool, metrics: Arc<Metrics>, options: WriterOptions) -> Self {
        Self {
            pool,
            metrics,
            options,
            statements: Arc::new(Statements::new(options)),
        }
    }

    /// Writes one batch. `Err` means nothing could be decided (the database is unreachable):
    /// the caller retries the same batch. Records PostgreSQL refuses are handled here.
    pub async fn write(
        &self,
        records: &[Record],
        tombstones: &[Tombstone],
    ) -> Result<FlushStats, WriteError> {
        self.write_narrowing(records, tombstones).await
    }

    /// Writes the batch; when PostgreSQL refuses it for some row's data, narrows the refusal
    /// down: records and tombstones apart (records first, as in the batch's own transaction),
    /// then halves, down to the one record (stored as a stub, else dropped) or the one
    /// tombstone (dropped) it was about. Nothing next to it is lost.
    fn write_narrowing<'a>(
        &'a self,
        records: &'a [Record],
        tombstones: &'a [Tombstone],
    ) -> BoxFut<'a, Result<FlushStats, WriteError>> {
        Box::pin(async move {
            let e = match self.attempt(records, tombstones).await {
                Ok(stats) => return Ok(stats),
                Err(AttemptError::Transient(e) | AttemptError::FeedRefused(e)) => {
                    return Err(WriteError::Transient(e))
                }
                Err(AttemptError::Data(e)) => e,
            };
            match (records, tombstones) {
                ([record], []) => self.store_rejected(record, &e).await,
                ([], [tombstone]) => {
                    RecordDropped {
                        resource: "tombstone",
                        name: &tombstone.global_uid,
                        reason: "rejected",
                        detail: &e,
                    }
                    .emit(&self.metrics);
                    Ok(FlushStats::default())
                }
                ([], _) => {
                    let (left, right) = tombstones.split_at(tombstones.len() / 2);
                    self.write_both((&[], left), (&[], right)).await
                }
                (_, []) => {
                    let (left, right) = records.split_at(records.len() / 2);
                    self.write_both((left, &[]), (right, &[])).await
                }
                _ => self.write_both((records, &[]), (&[], tombstones)).await,
            }
        })
    }

    /// Two narrowed batches of (records, tombstones), the first written before the second.
    async fn write_both(
        &self,
        (r1, t1): (&[Record], &[Tombstone]),
        (r2, t2): (&[Record], &[Tombstone]),
    ) -> Result<FlushStats, WriteError> {
        let a = self.write_narrowing(r1, t1).await?;
        let b = self.write_narrowing(r2, t2).await?;
        Ok(FlushStats {
            rows_written: a.rows_written + b.rows_written,
            tombstoned: a.tombstoned + b.tombstoned,
        })
    }

    /// The one record PostgreSQL refused: store its identity as a stub, else drop it.
    async fn store_rejected(&self, record: &Record, error: &str) -> Result<FlushStats, WriteError> {
        let stub = record.to_stub(error);
        match self.attempt(std::slice::from_ref(&stub), &[]).await {
            Ok(stats) => {
                RecordSanitised {
                    global_uid: &record.global_uid,
                    reason: "rejected_stored_as_stub",
                }
                .emit(&self.metrics);
                Ok(stats)
            }
            Err(AttemptError::Transient(e) | AttemptError::FeedRefused(e)) => {
                Err(WriteError::Transient(e))
            }
            Err(AttemptError::Data(e2)) => {
                RecordDropped {
                    resource: &record.route.plural,
                    name: &record.name,
                    reason: "rejected",
                    detail: &format!("{error}; stub: {e2}"),
                }
                .emit(&self.metrics);
                Ok(FlushStats::default())
            }
        }
    }

    /// One transaction for the batch; without the change feed when the NOTIFY queue refused
    /// it (the rows matter more than the notification).
    async fn attempt(
        &self,
        records: &[Record],
        tombstones: &[Tombstone],
    ) -> Result<FlushStats, AttemptError> {
        match self
            .attempt_once(records, tombstones, self.options.change_feed)
            .await
        {
            Err(AttemptError::FeedRefused(e)) => {
                let stats = self.attempt_once(records, tombstones, false).await?;
                ChangeFeedSkipped {
                    rows: stats.rows_written + stats.tombstoned,
                    error: &e,
                }
                .emit(&self.metrics);
                Ok(stats)
            }
            other => other,
        }
    }

    async fn attempt_once(
        &self,
        records: &[Record],
        tombstones: &[Tombstone],
        change_feed: bool,
    ) -> Result<FlushStats, AttemptError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| AttemptError::Transient(format!("connection pool: {e}")))?;
        let result = self
            .transaction(&mut client, records, tombstones, change_feed)
            .await;
        if let Err(AttemptError::Transient(e)) = &result {
            if e.contains("cached plan") {
                // The owner changed the table under our prepared statements: prepare anew.
                client.statement_cache.clear();
            }
        }
        result
    }

    async fn transaction(
        &self,
        client: &mut deadpool_postgres::Client,
        records: &[Record],
        tombstones: &[Tombstone],
        change_feed: bool,
    ) -> Result<FlushStats, AttemptError> {
        let rows = AttemptError::at(Stage::Rows);
        let open = AttemptError::at(Stage::Open);
        let tx = client.transaction().await.map_err(&open)?;
        let mut stats = FlushStats::default();
        let mut changes: Vec<Change> = Vec::new();
        if !records.is_empty() {
            let sink = tx.copy_in(COPY_SQL).await.map_err(&rows)?;
            let writer = BinaryCopyInWriter::new(sink, COPY_TYPES);
            pin_mut!(writer);
            for r in records {
                let status = r.status_json().map(Jsonb);
                writer
                    .as_mut()
                    .write(&[
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
                    ])
                    .await
                    .map_err(&rows)?;
            }
            writer.finish().await.map_err(&rows)?;
            let upsert = tx
                .prepare_cached(&self.statements.upsert)
                .await
                .map_err(&open)?;
            stats.rows_written = match self.statements.upsert_returns {
                Returns::Affected => tx.execute(&upsert, &[]).await.map_err(&rows)?,
                Returns::Count => count_of(&tx.query_one(&upsert, &[]).await.map_err(&rows)?),
                Returns::Changes => {
                    let changed = tx.query(&upsert, &[]).await.map_err(&rows)?;
                    changes.extend(changed.iter().map(|r| Change {
                        global_uid: r.get(0),
                        operation: Operation::parse(r.get(1)).unwrap_or(Operation::Updated),
                        resource_version: r.get(2),
                        updated_at: r.get(3),
                    }));
                    changed.len() as u64
                }
            };
        }
        if !tombstones.is_empty() {
            let ids: Vec<&str> = tombstones.iter().map(|t| t.global_uid.as_str()).collect();
            let guards: Vec<Option<i64>> = tombstones.iter().map(|t| t.not_newer_than).collect();
            let at = tombstones
                .iter()
                .map(|t| t.observed_at)
                .max()
                .unwrap_or_else(Utc::now);
            let stmt = tx
                .prepare_cached(&self.statements.tombstone)
                .await
                .map_err(&open)?;
            let params: [&(dyn ToSql + Sync); 3] = [&ids, &guards, &at];
            stats.tombstoned = match self.statements.tombstone_returns {
                Returns::Affected => tx.execute(&stmt, &params).await.map_err(&rows)?,
                Returns::Count => count_of(&tx.query_one(&stmt, &params).await.map_err(&rows)?),
                Returns::Changes => {
                    let swept = tx.query(&stmt, &params).await.map_err(&rows)?;
                    changes.extend(swept.iter().map(|r| Change {
                        global_uid: r.get(0),
                        operation: Operation::Deleted,
                        resource_version: None,
                        updated_at: at,
                    }));
                    swept.len() as u64
                }
            };
        }
        let notified = change_feed && !changes.is_empty();
        if change_feed {
            if let Some(payload) = feed::payload(&changes) {
                // Inside the transaction: PostgreSQL delivers it only if the batch commits.
                tx.execute("SELECT pg_notify($1, $2)", &[&feed::CHANNEL, &payload])
                    .await
                    .map_err(AttemptError::at(Stage::Notify))?;
            }
        }
        let commit = if notified { Stage::Commit } else { Stage::Open };
        tx.commit().await.map_err(AttemptError::at(commit))?;
        Ok(stats)
    }
}

/// The count a `Returns::Count` statement answers.
fn count_of(row: &tokio_postgres::Row) -> u64 {
    u64::try_from(row.get::<_, i64>(0)).unwrap_or_default()
}

/// Measures a flush for the `BatchFlushed` event.
pub fn elapsed_since(start: Instant) -> std::time::Duration {
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_of_the_statements_that_read_rows_are_the_rows_fault() {
        use Stage::*;
        use Verdict::*;
        let v = |stage, code, constraint, message| {
            verdict(
                stage,
                Some(code),
                constraint,
                Some("krateo_resources"),
                message,
            )
        };
        // The rows' data: narrow down.
        assert_eq!(
            v(Rows, "22P05", None, "unsupported Unicode escape sequence"),
            Data
        );
        assert_eq!(
            v(
                Rows,
                "54000",
                None,
                "total size of jsonb object elements exceeds"
            ),
            Data
        );
        assert_eq!(v(Rows, "23505", Some("deviser_unique_name"), ""), Data);
        assert_eq!(v(Rows, "0A000", None, "unsupported value"), Data);
        // The environment: retry the same batch.
        assert_eq!(
            v(Rows, "23505", Some("krateo_resources_pkey"), ""),
            Transient
        );
        assert_eq!(
            v(
                Rows,
                "0A000",
                None,
                "cached plan must not change result type"
            ),
            Transient
        );
        assert_eq!(
            v(
                Rows,
                "25006",
                None,
                "cannot execute INSERT in a read-only transaction"
            ),
            Transient
        );
        assert_eq!(v(Open, "22023", None, ""), Transient);
        assert_eq!(
            verdict(Rows, None, None, None, ""),
            Transient,
            "no answer at all"
        );
        assert_eq!(
            verdict(
                Rows,
                Some("23514"),
                None,
                Some("krateo_resource_history"),
                "no partition of relation \"krateo_resource_history\" found for row"
            ),
            Transient,
            "a day partition of the history not created yet"
        );
        // COMMIT: never the rows; a full NOTIFY queue refuses only the feed.
        assert_eq!(
            v(
                Commit,
                "54000",
                None,
                "too many notifications in the NOTIFY queue"
            ),
            FeedRefused
        );
        assert_eq!(v(Commit, "40001", None, ""), Transient);
        assert_eq!(v(Commit, "23505", None, ""), Transient);
        assert_eq!(
            v(Notify, "22023", None, "payload string too long"),
            FeedRefused
        );
        assert_eq!(v(Notify, "57P01", None, ""), Transient);
    }
}
