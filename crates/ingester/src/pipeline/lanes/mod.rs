//! The bounded queue and the worker pool. The queue is sharded into lanes: an object always
//! goes to the same lane (hash of its uid), so its events stay in order from the watch to the
//! commit, and each lane's worker builds records, coalesces them and writes its batches on its
//! own connection. Full lanes back-pressure the watches; nothing is buffered without limit.
//!
//! Here: the senders (`Lanes`). `worker.rs`: a lane's loop (receive, build, write, answer).
//! `batch.rs`: what a lane holds between flushes and when it flushes (no I/O).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::pipeline::health::Health;
use crate::row::fields::FieldPolicy;
use crate::row::object::RawObject;
use crate::row::record::{CompositionFallback, EventKind};
use crate::row::routes::Route;
use crate::storage::writer::{BatchWriter, Tombstone};
use crate::telemetry::metrics::Metrics;

mod batch;
mod worker;

use worker::LaneWorker;

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
