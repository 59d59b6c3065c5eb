//! A lane's worker: receives what the watches queue, builds the records, writes the batches
//! on its own connection (retrying until they commit) and answers barriers. When to flush
//! and what a batch holds is decided by `LaneState` and `Batch` (`batch.rs`).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::batch::{Backoff, Batch, FlushLimits, LaneState};
use super::{LaneItem, LaneSettings, WatchedEvent, PERMIT_BYTES};
use crate::pipeline::health::Health;
use crate::row::record::{build_record_with, Notice, Record};
use crate::storage::writer::BatchWriter;
use crate::telemetry::events::{
    BatchFlushed, BatchWriteFailed, EventProcessed, FieldsPruned, FieldsRedacted,
    InvalidCompositionLabel, NonNumericResourceVersion, RecordDropped, RecordSanitised,
};
use crate::telemetry::metrics::Metrics;

pub(super) struct LaneWorker {
    pub(super) idx: usize,
    pub(super) settings: LaneSettings,
    pub(super) cluster: Arc<str>,
    pub(super) writer: BatchWriter,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
}

impl LaneWorker {
    pub(super) async fn run(self, mut rx: mpsc::Receiver<LaneItem>) {
        let mut lane = LaneState::new(FlushLimits {
            batch_size: self.settings.batch_size,
            batch_bytes: self.settings.batch_bytes,
            flush_interval: self.settings.flush_interval,
        });
        loop {
            if lane.must_flush(tokio::time::Instant::now()) {
                self.flush_batch(&mut lane.batch).await;
                for ack in lane.flushed() {
                    let _ = ack.send(());
                }
                if !lane.is_open() {
                    break;
                }
                continue;
            }
            tokio::select! {
                item = rx.recv() => match item {
                    None => lane.close(),
                    Some(item) => {
                        self.accept(item, &mut lane).await;
                        // Take what is already queued without another trip through select!.
                        while lane.takes_more() {
                            match rx.try_recv() {
                                Ok(item) => self.accept(item, &mut lane).await,
                                Err(_) => break,
                            }
                        }
                        lane.received(tokio::time::Instant::now());
                    }
                },
                _ = sleep_until(lane.deadline()) => {}
            }
        }
    }

    /// Writes and empties the batch (nothing when it is empty).
    async fn flush_batch(&self, batch: &mut Batch) {
        if batch.is_empty() {
            return;
        }
        let batch = std::mem::take(batch);
        let n = batch.len() as i64;
        self.flush(batch).await;
        self.metrics.pending_batch.dec_by(n);
    }

    async fn accept(&self, item: LaneItem, lane: &mut LaneState) {
        let mut before = lane.batch.len();
        match item {
            LaneItem::Event(ev, permit) => {
                if let Some(record) = self.take_event(*ev, permit) {
                    if lane.batch.must_commit_before(&record) {
                        // The batch applies records before tombstones: commit the tombstone
                        // of this object first, so the two keep their order.
                        self.flush_batch(&mut lane.batch).await;
                        before = 0;
                    }
                    lane.batch.push(record);
                }
            }
            LaneItem::Tombstone(t) => {
                self.metrics.queue_depth.dec();
                lane.batch.push_tombstone(t);
            }
            LaneItem::Barrier(ack) => lane.wait_for_flush(ack),
            LaneItem::Committed(ack) => {
                if let Some(ack) = lane.wait_for_commit(ack) {
                    let _ = ack.send(());
                }
            }
        }
        self.metrics
            .pending_batch
            .inc_by((lane.batch.len() - before) as i64);
    }

    /// Takes an event off the queue (giving its bytes back) and builds its record.
    fn take_event(&self, ev: WatchedEvent, permit: Option<OwnedSemaphorePermit>) -> Option<Record> {
        if let Some(p) = &permit {
            self.metrics
                .queue_bytes
                .dec_by((p.num_permits() * PERMIT_BYTES) as i64);
        }
        drop(permit);
        self.metrics.queue_depth.dec();
        let started = Instant::now();
        let record = self.build(ev);
        EventProcessed {
            elapsed: started.elapsed(),
            ok: record.is_some(),
        }
        .emit(&self.metrics);
        record
    }

    /// The record of an event (`None`: dropped, counted and logged).
    fn build(&self, ev: WatchedEvent) -> Option<Record> {
        match build_record_with(
            ev.object,
            &ev.route,
            &self.cluster,
            ev.kind,
            ev.observed_at,
            self.settings.composition_fallback,
            &self.settings.fields,
        ) {
            Ok((record, notices)) => {
                for n in &notices {
                    self.report(&record.global_uid, n);
                }
                Some(record)
            }
            Err(e) => {
                RecordDropped::from_error(&ev.route.plural, &e).emit(&self.metrics);
                None
            }
        }
    }

    /// Logs and counts what building the record of `global_uid` changed or found wrong.
    fn report(&self, global_uid: &str, notice: &Notice) {
        match notice {
            Notice::InvalidCompositionLabel(v) => InvalidCompositionLabel {
                global_uid,
                value: v,
            }
            .emit(&self.metrics),
            Notice::NulRemoved => RecordSanitised {
                global_uid,
                reason: "nul_in_string",
            }
            .emit(&self.metrics),
            Notice::NonNumericResourceVersion(v) => NonNumericResourceVersion {
                global_uid,
                value: v,
            }
            .emit(&self.metrics),
            Notice::FieldsRedacted(count) => FieldsRedacted {
                global_uid,
                count: *count,
            }
            .emit(&self.metrics),
            Notice::FieldsPruned(bytes) => FieldsPruned {
                global_uid,
                bytes: *bytes,
            }
            .emit(&self.metrics),
        }
    }

    /// Writes the batch, retrying with backoff until it commits: nothing accepted is dropped.
    async fn flush(&self, batch: Batch) {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            match self.writer.write(&batch.records, &batch.tombstones).await {
                Ok(stats) => {
                    self.health.set_db(true, None);
                    BatchFlushed {
                        lane: self.idx,
                        records: batch.records.len(),
                        rows_written: stats.rows_written,
                        tombstones: stats.tombstoned,
                        elapsed: started.elapsed(),
                    }
                    .emit(&self.metrics);
                    return;
                }
                Err(e) => {
                    let (attempt, delay) = backoff.failed();
                    let msg = e.to_string();
                    self.health.set_db(false, Some(&msg));
                    BatchWriteFailed {
                        lane: self.idx,
                        records: batch.len(),
                        attempt,
                        retry_in: delay,
                        error: &msg,
                    }
                    .emit(&self.metrics);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
