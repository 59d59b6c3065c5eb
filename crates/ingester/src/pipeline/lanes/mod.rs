//! The bounded queue and the worker pool. The queue is sharded into lanes: an object always
//! goes to the same lane (hash of its uid), so its events stay in order from the watch to the
//! commit, and each lane's worker builds records, coalesces them and writes its batches on its
//! own connection. Full lanes back-pressure the watches; nothing is buffered without limit.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::pipeline::health::Health;
use crate::row::fields::FieldPolicy;
use crate::row::object::RawObject;
use crate::row::record::{build_record_with, CompositionFallback, EventKind, Notice, Record};
use crate::row::routes::Route;
use crate::storage::writer::{BatchWriter, Tombstone};
use crate::telemetry::events::{
    BatchFlushed, BatchWriteFailed, EventProcessed, FieldsPruned, FieldsRedacted,
    InvalidCompositionLabel, NonNumericResourceVersion, RecordDropped, RecordSanitised,
};
use crate::telemetry::metrics::Metrics;

/// One watch event, as the watch saw it.
pub struct WatchedEvent {
    pub object: RawObject,
    pub route: Arc<Route>,
    pub kind: EventKind,
    pub observed_at: DateTime<Utc>,
}

/// Queue budget unit: permits are KiB.
const PERMIT_BYTES: usize = 1024;

enum LaneItem {
    // Boxed: a RawObject carries a full ObjectMeta, and queue slots are sized by the largest item.
    // The permit holds the event's share of `queue_bytes` until a lane takes it into a batch.
    Event(Box<WatchedEvent>, Option<OwnedSemaphorePermit>),
    Tombstone(Tombstone),
    /// Answered once everything queued before it is committed.
    Barrier(oneshot::Sender<()>),
    /// Answered once everything queued before it is committed, without forcing a flush.
    Committed(oneshot::Sender<()>),
}

#[derive(Clone, Debug)]
pub struct LaneSettings {
    pub lanes: usize,
    pub capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    /// Bytes of object JSON the queues may hold, all lanes together (`QUEUE_BYTES`): with
    /// `batch_bytes` this keeps memory independent of object size (counts alone let 16 KiB
    /// objects use 8x the memory of 2 KiB ones). Measured with ingest-bench.
    pub queue_bytes: usize,
    /// A lane flushes once its batch holds this many bytes of object JSON (`BATCH_BYTES`).
    pub batch_bytes: usize,
    /// composition_id of objects without a valid label (`COMPOSITION_ID_FALLBACK`).
    pub composition_fallback: CompositionFallback,
    /// What of an object is redacted or pruned before it is stored (`fields.rs`).
    pub fields: Arc<FieldPolicy>,
}

/// The senders into the lanes; cheap to clone. Lanes stop when every clone is dropped.
#[derive(Clone)]
pub struct Lanes {
    senders: Arc<Vec<mpsc::Sender<LaneItem>>>,
    metrics: Arc<Metrics>,
    queue_bytes: Arc<Semaphore>,
    /// Permits (KiB) in `queue_bytes`: the most one event can take.
    queue_permits: usize,
}

/// The lanes are shutting down.
#[derive(Debug, thiserror::Error)]
#[error("worker lanes are closed")]
pub struct LanesClosed;

impl Lanes {
    /// Starts the lane workers on `tracker`.
    pub fn start(
        settings: LaneSettings,
        cluster: Arc<str>,
        writer: BatchWriter,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        tracker: &TaskTracker,
    ) -> Lanes {
        let mut senders = Vec::with_capacity(settings.lanes);
        for idx in 0..settings.lanes {
            let (tx, rx) = mpsc::channel(settings.capacity);
            senders.push(tx);
            let worker = LaneWorker {
                idx,
                settings: settings.clone(),
                cluster: cluster.clone(),
                writer: writer.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
            };
            tracker.spawn(crate::pipeline::supervisor::named(
                format!("writer lane {idx}"),
                worker.run(rx),
            ));
        }
        let queue_permits = (settings.queue_bytes / PERMIT_BYTES).max(1);
        Lanes {
            senders: Arc::new(senders),
            metrics,
            queue_bytes: Arc::new(Semaphore::new(queue_permits)),
            queue_permits,
        }
    }

    fn lane_of(&self, uid: &str) -> usize {
        // SipHash with fixed keys: stable for the life of the process, which is all that
        // per-object ordering needs.
        let mut h = std::hash::DefaultHasher::new();
        uid.hash(&mut h);
        (h.finish() % self.senders.len() as u64) as usize
    }

    async fn send(&self, lane: usize, item: LaneItem) -> Result<(), LanesClosed> {
        self.metrics.queue_depth.inc();
        let r = self.senders[lane].send(item).await.map_err(|_| LanesClosed);
        if r.is_err() {
            self.metrics.queue_depth.dec();
        }
        r
    }

    /// Queues an event; waits while the object's lane is full.
    pub async fn send_event(&self, event: WatchedEvent) -> Result<(), LanesClosed> {
        let lane = self.lane_of(event.object.uid().unwrap_or_default());
        // Waits while the queues hold `queue_bytes` (an object bigger than that waits for all).
        let kib = (event.object.json.len() / PERMIT_BYTES).clamp(1, self.queue_permits);
        let permit = self
            .queue_bytes
            .clone()
            .acquire_many_owned(kib as u32)
            .await
            .ok();
        if let Some(p) = &permit {
            self.metrics
                .queue_bytes
                .inc_by((p.num_permits() * PERMIT_BYTES) as i64);
        }
        self.send(lane, LaneItem::Event(Box::new(event), permit))
            .await
    }

    /// Queues "this object is gone" for the row of `uid`, unless its row is newer than
    /// `not_newer_than` (the resourceVersion of the list that found it missing).
    pub async fn send_tombstone(
        &self,
        uid: &str,
        global_uid: String,
        observed_at: DateTime<Utc>,
        not_newer_than: Option<i64>,
    ) -> Result<(), LanesClosed> {
        self.send(
            self.lane_of(uid),
            LaneItem::Tombstone(Tombstone {
                global_uid,
                observed_at,
                not_newer_than,
            }),
        )
        .await
    }

    /// Returns once everything queued before this call is committed (flushing now).
    pub async fn barrier(&self) -> Result<(), LanesClosed> {
        self.acknowledged_by_all(LaneItem::Barrier).await
    }

    /// Returns once everything queued before this call is committed, letting the lanes
    /// flush on their own schedule (for resume checkpoints, which must not cost flushes).
    pub async fn committed(&self) -> Result<(), LanesClosed> {
        self.acknowledged_by_all(LaneItem::Committed).await
    }

    /// Queues `item(ack)` in every lane and waits for every acknowledgement.
    async fn acknowledged_by_all(
        &self,
        item: fn(oneshot::Sender<()>) -> LaneItem,
    ) -> Result<(), LanesClosed> {
        let mut acks = Vec::with_capacity(self.senders.len());
        for tx in self.senders.iter() {
            let (ack, wait) = oneshot::channel();
            tx.send(item(ack)).await.map_err(|_| LanesClosed)?;
            acks.push(wait);
        }
        for wait in acks {
            wait.await.map_err(|_| LanesClosed)?;
        }
        Ok(())
    }
}

/// Records of one batch, one per object (the newest state wins), plus tombstones. The writer
/// applies the records before the tombstones, so a batch never holds a record that came after
/// a tombstone of the same object (the lane flushes the batch first).
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    index: HashMap<String, usize>,
    tombstones: Vec<Tombstone>,
    /// global_uids of `tombstones`.
    tombstoned: HashSet<String>,
    /// JSON bytes of the records pushed (replaced ones included: an upper bound).
    bytes: usize,
}

impl Batch {
    fn len(&self) -> usize {
        self.records.len() + self.tombstones.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, record: Record) {
        self.bytes += record.raw.len();
        match self.index.get(&record.global_uid) {
            Some(&i) => {
                let older = matches!(
                    (record.object_resource_version, self.records[i].object_resource_version),
                    (Some(new), Some(old)) if new < old
                );
                if !older {
                    self.records[i] = record;
                }
            }
            None => {
                self.index
                    .insert(record.global_uid.clone(), self.records.len());
                self.records.push(record);
            }
        }
    }

    fn push_tombstone(&mut self, tombstone: Tombstone) {
        self.tombstoned.insert(tombstone.global_uid.clone());
        self.tombstones.push(tombstone);
    }
}

struct LaneWorker {
    idx: usize,
    settings: LaneSettings,
    cluster: Arc<str>,
    writer: BatchWriter,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl LaneWorker {
    async fn run(self, mut rx: mpsc::Receiver<LaneItem>) {
        let mut batch = Batch::default();
        let mut barriers: Vec<oneshot::Sender<()>> = Vec::new();
        let mut committed: Vec<oneshot::Sender<()>> = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut open = true;
        loop {
            let due = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            let must_flush = batch.len() >= self.settings.batch_size
                || batch.bytes >= self.settings.batch_bytes
                || due
                || !open
                || !barriers.is_empty();
            if must_flush {
                self.flush_batch(&mut batch).await;
                deadline = None;
                for ack in barriers.drain(..).chain(committed.drain(..)) {
                    let _ = ack.send(());
                }
                if !open {
                    break;
                }
                continue;
            }
            tokio::select! {
                item = rx.recv() => match item {
                    None => open = false,
                    Some(item) => {
                        self.accept(item, &mut batch, &mut barriers, &mut committed).await;
                        // Take what is already queued without another trip through select!.
                        while batch.len() < self.settings.batch_size
                            && batch.bytes < self.settings.batch_bytes
                            && barriers.is_empty()
                        {
                            match rx.try_recv() {
                                Ok(item) => self.accept(item, &mut batch, &mut barriers, &mut committed).await,
                                Err(_) => break,
                            }
                        }
                        if deadline.is_none() && !batch.is_empty() {
                            deadline = Some(tokio::time::Instant::now() + self.settings.flush_interval);
                        }
                    }
                },
                _ = sleep_until(deadline) => {}
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

    async fn accept(
        &self,
        item: LaneItem,
        batch: &mut Batch,
        barriers: &mut Vec<oneshot::Sender<()>>,
        committed: &mut Vec<oneshot::Sender<()>>,
    ) {
        let mut before = batch.len();
        match item {
            LaneItem::Event(ev, permit) => {
                if let Some(p) = &permit {
                    self.metrics
                        .queue_bytes
                        .dec_by((p.num_permits() * PERMIT_BYTES) as i64);
                }
                drop(permit);
                self.metrics.queue_depth.dec();
                let started = Instant::now();
                let record = self.build(*ev);
                EventProcessed {
                    elapsed: started.elapsed(),
                    ok: record.is_some(),
                }
                .emit(&self.metrics);
                if let Some(record) = record {
                    if batch.tombstoned.contains(&record.global_uid) {
                        // The batch applies records before tombstones: commit the tombstone
                        // of this object first, so the two keep their order.
                        self.flush_batch(batch).await;
                        before = 0;
                    }
                    batch.push(record);
                }
            }
            LaneItem::Tombstone(t) => {
                self.metrics.queue_depth.dec();
                batch.push_tombstone(t);
            }
            LaneItem::Barrier(ack) => barriers.push(ack),
            LaneItem::Committed(ack) => {
                if batch.is_empty() {
                    let _ = ack.send(());
                } else {
                    committed.push(ack);
                }
            }
        }
        self.metrics
            .pending_batch
            .inc_by((batch.len() - before) as i64);
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
                    match n {
                        Notice::InvalidCompositionLabel(v) => InvalidCompositionLabel {
                            global_uid: &record.global_uid,
                            value: v,
                        }
                        .emit(&self.metrics),
                        Notice::NulRemoved => RecordSanitised {
                            global_uid: &record.global_uid,
                            reason: "nul_in_string",
                        }
                        .emit(&self.metrics),
                        Notice::NonNumericResourceVersion(v) => NonNumericResourceVersion {
                            global_uid: &record.global_uid,
                            value: v,
                        }
                        .emit(&self.metrics),
                        Notice::FieldsRedacted(count) => FieldsRedacted {
                            global_uid: &record.global_uid,
                            count: *count,
                        }
                        .emit(&self.metrics),
                        Notice::FieldsPruned(bytes) => FieldsPruned {
                            global_uid: &record.global_uid,
                            bytes: *bytes,
                        }
                        .emit(&self.metrics),
                    }
                }
                Some(record)
            }
            Err(e) => {
                RecordDropped::from_error(&ev.route.plural, &e).emit(&self.metrics);
                None
            }
        }
    }

    /// Writes the batch, retrying with backoff until it commits: nothing accepted is dropped.
    async fn flush(&self, batch: Batch) {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
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
                    attempt += 1;
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
                    delay = (delay * 2).min(Duration::from_secs(5));
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
