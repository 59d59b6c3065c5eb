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

use crate::events::{RecordDropped, RecordSanitised};
use crate::metrics::Metrics;
use crate::record::Record;

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
/// same state served at another API version (a CRD's watched version switched).
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
               OR t.resource_version IS DISTINCT FROM EXCLUDED.resource_version))";

const TOMBSTONE_SQL: &str = "UPDATE krateo_resources SET deleted_at = $2, updated_at = $2
  WHERE global_uid = ANY($1) AND deleted_at IS NULL";

/// An object a list no longer had: its row gets `deleted_at`.
#[derive(Clone, Debug)]
pub struct Tombstone {
    pub global_uid: String,
    pub observed_at: DateTime<Utc>,
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

/// Is this error about the data of some row (narrow it down) rather than the connection?
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let c = c.code();
        // 22: data exception (e.g. \u0000 in jsonb), 23: integrity, 54: program limit
        // exceeded (row too big), 0A: feature not supported for this value.
        c.starts_with("22") || c.starts_with("23") || c.starts_with("54") || c.starts_with("0A")
    })
}

enum AttemptError {
    Data(String),
    Transient(String),
}

impl From<tokio_postgres::Error> for AttemptError {
    fn from(e: tokio_postgres::Error) -> Self {
        // `Display` of a server error omits the detail; include it (never contains the password).
        let msg = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        if is_data_error(&e) {
            AttemptError::Data(msg)
        } else {
            AttemptError::Transient(msg)
        }
    }
}

#[derive(Clone)]
pub struct BatchWriter {
    pool: Pool,
    metrics: Arc<Metrics>,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl BatchWriter {
    pub fn new(pool: Pool, metrics: Arc<Metrics>) -> Self {
        Self { pool, metrics }
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

    fn write_narrowing<'a>(
        &'a self,
        records: &'a [Record],
        tombstones: &'a [Tombstone],
    ) -> BoxFut<'a, Result<FlushStats, WriteError>> {
        Box::pin(async move {
            match self.attempt(records, tombstones).await {
                Ok(stats) => Ok(stats),
                Err(AttemptError::Transient(e)) => Err(WriteError::Transient(e)),
                Err(AttemptError::Data(e)) => match records.len() {
                    0 => {
                        // Tombstones carry only ids; a data error here is a bug, never retried forever.
                        for t in tombstones {
                            RecordDropped {
                                resource: "tombstone",
                                name: &t.global_uid,
                                reason: "rejected",
                                detail: &e,
                            }
                            .emit(&self.metrics);
                        }
                        Ok(FlushStats::default())
                    }
                    1 => self.store_rejected(&records[0], tombstones, &e).await,
                    n => {
                        let (left, right) = records.split_at(n / 2);
                        let a = self.write_narrowing(left, tombstones).await?;
                        let b = self.write_narrowing(right, &[]).await?;
                        Ok(FlushStats {
                            rows_written: a.rows_written + b.rows_written,
                            tombstoned: a.tombstoned + b.tombstoned,
                        })
                    }
                },
            }
        })
    }

    /// The one record PostgreSQL refused: store its identity as a stub, else drop it.
    async fn store_rejected(
        &self,
        record: &Record,
        tombstones: &[Tombstone],
        error: &str,
    ) -> Result<FlushStats, WriteError> {
        let stub = record.to_stub(error);
        match self.attempt(std::slice::from_ref(&stub), tombstones).await {
            Ok(stats) => {
                RecordSanitised {
                    global_uid: &record.global_uid,
                    reason: "rejected_stored_as_stub",
                }
                .emit(&self.metrics);
                Ok(stats)
            }
            Err(AttemptError::Transient(e)) => Err(WriteError::Transient(e)),
            Err(AttemptError::Data(e2)) => {
                RecordDropped {
                    resource: &record.route.plural,
                    name: &record.name,
                    reason: "rejected",
                    detail: &format!("{error}; stub: {e2}"),
                }
                .emit(&self.metrics);
                match self.attempt(&[], tombstones).await {
                    Ok(stats) => Ok(stats),
                    Err(AttemptError::Transient(e)) => Err(WriteError::Transient(e)),
                    Err(AttemptError::Data(_)) => Ok(FlushStats::default()),
                }
            }
        }
    }

    async fn attempt(
        &self,
        records: &[Record],
        tombstones: &[Tombstone],
    ) -> Result<FlushStats, AttemptError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| AttemptError::Transient(format!("connection pool: {e}")))?;
        let tx = client.transaction().await?;
        let mut stats = FlushStats::default();
        if !records.is_empty() {
            let sink = tx.copy_in(COPY_SQL).await?;
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
                    .await?;
            }
            writer.finish().await?;
            let upsert = tx.prepare_cached(UPSERT_SQL).await?;
            stats.rows_written = tx.execute(&upsert, &[]).await?;
        }
        if !tombstones.is_empty() {
            let ids: Vec<&str> = tombstones.iter().map(|t| t.global_uid.as_str()).collect();
            let at = tombstones
                .iter()
                .map(|t| t.observed_at)
                .max()
                .unwrap_or_else(Utc::now);
            let stmt = tx.prepare_cached(TOMBSTONE_SQL).await?;
            stats.tombstoned = tx.execute(&stmt, &[&ids, &at]).await?;
        }
        tx.commit().await?;
        Ok(stats)
    }
}

/// Measures a flush for the `BatchFlushed` event.
pub fn elapsed_since(start: Instant) -> std::time::Duration {
    start.elapsed()
}
