//! What a lane holds between two flushes, and when it flushes: the batch it fills (one
//! record per object, the newest state winning), the acknowledgements that wait for the
//! batch's commit, the flush deadline, and the backoff of a write that failed. No I/O: the
//! worker (`worker.rs`) receives, builds records, writes and answers; these types decide.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::row::record::Record;
use crate::storage::writer::Tombstone;

/// Records of one batch, one per object (the newest state wins), plus tombstones. The writer
/// applies the records before the tombstones, so a batch never holds a record that came after
/// a tombstone of the same object (the lane flushes the batch first).
#[derive(Default)]
pub(super) struct Batch {
    pub(super) records: Vec<Record>,
    index: HashMap<String, usize>,
    pub(super) tombstones: Vec<Tombstone>,
    /// global_uids of `tombstones`.
    tombstoned: HashSet<String>,
    /// JSON bytes of the records pushed (replaced ones included: an upper bound).
    bytes: usize,
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        self.records.len() + self.tombstones.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push(&mut self, record: Record) {
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

    pub(super) fn push_tombstone(&mut self, tombstone: Tombstone) {
        self.tombstoned.insert(tombstone.global_uid.clone());
        self.tombstones.push(tombstone);
    }

    /// Whether this batch must commit before `record` joins a batch: it holds a tombstone of
    /// the record's object, and the writer applies records before tombstones.
    pub(super) fn must_commit_before(&self, record: &Record) -> bool {
        self.tombstoned.contains(&record.global_uid)
    }
}

/// When a lane's batch is full, and how long it may wait for more.
#[derive(Clone, Copy, Debug)]
pub(super) struct FlushLimits {
    pub(super) batch_size: usize,
    pub(super) batch_bytes: usize,
    pub(super) flush_interval: Duration,
}

/// A lane between two flushes: its batch, who waits for the batch's commit, and when the
/// batch is due.
pub(super) struct LaneState {
    limits: FlushLimits,
    pub(super) batch: Batch,
    /// Answered after the next flush, which they force.
    barriers: Vec<oneshot::Sender<()>>,
    /// Answered after the next flush, which they wait for (resume checkpoints must not cost
    /// flushes).
    committed: Vec<oneshot::Sender<()>>,
    /// `flush_interval` after the batch's first item since the last flush.
    deadline: Option<Instant>,
    /// The queue still has senders: once it has none, the lane flushes and stops.
    open: bool,
}

impl LaneState {
    pub(super) fn new(limits: FlushLimits) -> LaneState {
        LaneState {
            limits,
            batch: Batch::default(),
            barriers: Vec::new(),
            committed: Vec::new(),
            deadline: None,
            open: true,
        }
    }

    fn is_full(&self) -> bool {
        self.batch.len() >= self.limits.batch_size || self.batch.bytes >= self.limits.batch_bytes
    }

    /// Whether the lane flushes before it receives anything more: the batch is full or due,
    /// a barrier waits, or the queue has closed.
    pub(super) fn must_flush(&self, now: Instant) -> bool {
        let due = self.deadline.is_some_and(|d| now >= d);
        self.is_full() || due || !self.open || !self.barriers.is_empty()
    }

    /// Whether the lane takes another item that is already queued before it looks at the
    /// deadline again.
    pub(super) fn takes_more(&self) -> bool {
        !self.is_full() && self.barriers.is_empty()
    }

    /// A barrier: answered after the next flush, which it forces.
    pub(super) fn wait_for_flush(&mut self, ack: oneshot::Sender<()>) {
        self.barriers.push(ack);
    }

    /// A request to learn when everything before it is committed: `Some(ack)` (answer it
    /// now) when nothing is pending, else it waits for the next flush.
    pub(super) fn wait_for_commit(
        &mut self,
        ack: oneshot::Sender<()>,
    ) -> Option<oneshot::Sender<()>> {
        if self.batch.is_empty() {
            Some(ack)
        } else {
            self.committed.push(ack);
            None
        }
    }

    /// Items were taken at `now`: a batch that has just begun is due `flush_interval` later
    /// (later items do not push the deadline back).
    pub(super) fn received(&mut self, now: Instant) {
        if self.deadline.is_none() && !self.batch.is_empty() {
            self.deadline = Some(now + self.limits.flush_interval);
        }
    }

    /// When the batch is due, if it has begun.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The queue has no senders left.
    pub(super) fn close(&mut self) {
        self.open = false;
    }

    pub(super) fn is_open(&self) -> bool {
        self.open
    }

    /// The batch was written (and taken): no deadline until the next item; returns the
    /// acknowledgements to answer.
    pub(super) fn flushed(&mut self) -> Vec<oneshot::Sender<()>> {
        self.deadline = None;
        let mut acks = std::mem::take(&mut self.barriers);
        acks.append(&mut self.committed);
        acks
    }
}

/// The waits of a lane that writes a batch again until it commits: 100 ms, doubling up to
/// 5 s.
pub(super) struct Backoff {
    attempt: u32,
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            attempt: 0,
            delay: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    /// A write failed: the number of this attempt and the wait before the next.
    pub(super) fn failed(&mut self) -> (u32, Duration) {
        self.attempt += 1;
        let delay = self.delay;
        self.delay = (delay * 2).min(Duration::from_secs(5));
        (self.attempt, delay)
    }
}

#[cfg(test)]
mod tests;
