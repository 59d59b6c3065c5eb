//! `BatchWriter`: one transaction per batch: binary `COPY` into a temporary staging table,
//! one set-based upsert on `global_uid` guarded by `object_resource_version`, then the
//! tombstones (objects a list no longer has). A batch PostgreSQL rejects for its data is
//! bisected down to the offending record, which is stored as a stub or dropped.
//!
//! The statements (and how each is run) are in statements.rs, the classification of errors
//! into "the rows' fault", "the feed's" or "the environment's" in verdict.rs; here is the flush
//! loop: the transaction, the retry without the feed, the narrowing.

mod copy_rows;
mod statements;
mod verdict;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

use super::commit_marks::{self, CommitMarks};
use super::feed::{self, Change};
use crate::row::record::Record;
use crate::telemetry::events::{ChangeFeedSkipped, RecordDropped, RecordSanitised};
use crate::telemetry::metrics::Metrics;
use statements::Statements;
pub use verdict::NOTIFY_QUEUE_FULL;
use verdict::{AttemptError, Stage};

/// What the writer adds to each batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterOptions {
    /// `HISTORY`: append each new object version to the history table.
    pub history: bool,
    /// `CHANGE_FEED`: notify the changed rows on channel `krateo_resources`.
    pub change_feed: bool,
    /// The server compresses with lz4 ([`crate::storage::SchemaInfo::lz4`]): the staging
    /// table's values are compressed with it too.
    pub staging_lz4: bool,
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

#[derive(Clone)]
pub struct BatchWriter {
    pool: Pool,
    metrics: Arc<Metrics>,
    options: WriterOptions,
    statements: Arc<Statements>,
    /// Where each batch stores its commit mark (the cluster of the rows, the marks).
    marks: Option<(Arc<str>, Arc<CommitMarks>)>,
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
            marks: None,
        }
    }

    /// Every batch also stores a commit mark (`storage::commit_marks`), so that a database
    /// that went back in time is noticed.
    pub fn with_commit_marks(mut self, cluster: Arc<str>, marks: Arc<CommitMarks>) -> Self {
        self.marks = Some((cluster, marks));
        self
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
        let mut client = self.pool.get().await.map_err(|e| {
            AttemptError::Transient(format!(
                "connection pool: {}",
                crate::storage::error_chain(&e)
            ))
        })?;
        let result = self
            .transaction(&mut client, records, tombstones, change_feed)
            .await;
        if let Err(e) = &result {
            if e.is_read_only() {
                // A standby or demoted primary behind the address: the next attempt connects
                // afresh, through the address, and may reach the primary again.
                drop(deadpool_postgres::Object::take(client));
            }
        }
        result
    }

    /// The batch's transaction: its rows (COPY and upsert), its tombstones, the change-feed
    /// notification; each error classified by the stage it came from.
    async fn transaction(
        &self,
        client: &mut deadpool_postgres::Client,
        records: &[Record],
        tombstones: &[Tombstone],
        change_feed: bool,
    ) -> Result<FlushStats, AttemptError> {
        let tx = client
            .transaction()
            .await
            .map_err(AttemptError::at(Stage::Open))?;
        let mut stats = FlushStats::default();
        let mut changes: Vec<Change> = Vec::new();
        if !records.is_empty() {
            // Inside the transaction, so whichever server connection a transaction pooler
            // gives this transaction has the table: created there the first time (it then
            // stays with that server session, emptied at each commit), a no-op after.
            tx.batch_execute(&self.statements.staging)
                .await
                .map_err(AttemptError::at(Stage::Open))?;
            statements::copy_records(&tx, records).await?;
            stats.rows_written = self.statements.upsert(&tx, &mut changes).await?;
        }
        if !tombstones.is_empty() {
            stats.tombstoned = self
                .statements
                .tombstone(&tx, tombstones, &mut changes)
                .await?;
        }
        let notified = change_feed && !changes.is_empty();
        if change_feed {
            if let Some(payload) = feed::payload(&changes) {
                // Inside the transaction: PostgreSQL delivers it only if the batch commits.
                tx.execute_typed(
                    "SELECT pg_notify($1, $2)",
                    &[(&feed::CHANNEL, Type::TEXT), (&payload, Type::TEXT)],
                )
                .await
                .map_err(AttemptError::at(Stage::Notify))?;
            }
        }
        let mark = match &self.marks {
            Some((cluster, marks)) => {
                let mark = marks.next_mark();
                let before = marks.before();
                let [cluster_type, prefix_type, mark_type] = commit_marks::STORE_TYPES;
                let held = tx
                    .query_typed_one(
                        commit_marks::STORE_SQL,
                        &[
                            (&&**cluster, cluster_type),
                            (&marks.prefix(), prefix_type),
                            (&mark, mark_type),
                        ],
                    )
                    .await
                    .map_err(AttemptError::at(Stage::Open))?;
                // Whatever this batch's fate, the database told what it holds.
                marks.observed(before, held.try_get(0).ok().flatten());
                Some((marks, mark))
            }
            None => None,
        };
        let commit = if notified { Stage::Commit } else { Stage::Open };
        tx.commit().await.map_err(AttemptError::at(commit))?;
        if let Some((marks, mark)) = mark {
            marks.committed(mark);
        }
        Ok(stats)
    }
}

/// Measures a flush for the `BatchFlushed` event.
pub fn elapsed_since(start: Instant) -> std::time::Duration {
    start.elapsed()
}
