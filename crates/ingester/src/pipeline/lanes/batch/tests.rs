use std::sync::Arc;

use chrono::Utc;

use super::*;
use crate::row::routes::Route;

fn record(uid: &str, resource_version: Option<i64>, raw: &str) -> Record {
    Record {
        global_uid: uid.into(),
        cluster_name: "c".into(),
        uid: uid.into(),
        namespace: String::new(),
        route: Arc::new(Route::new("", "v1", "pods", "Pod")),
        name: uid.into(),
        composition_id: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        deleted_at: None,
        raw: raw.into(),
        status: None,
        object_resource_version: resource_version,
    }
}

fn tombstone(uid: &str) -> Tombstone {
    Tombstone {
        global_uid: uid.into(),
        observed_at: Utc::now(),
        not_newer_than: None,
    }
}

const LIMITS: FlushLimits = FlushLimits {
    batch_size: 3,
    batch_bytes: 100,
    flush_interval: Duration::from_secs(1),
};

fn raws(batch: &Batch) -> Vec<&str> {
    batch.records.iter().map(|r| r.raw.as_str()).collect()
}

#[test]
fn one_record_per_object_and_the_newest_resource_version_wins() {
    let mut batch = Batch::default();
    batch.push(record("a", Some(5), "a5"));
    batch.push(record("b", Some(1), "b1"));
    batch.push(record("a", Some(4), "a4")); // older: ignored
    assert_eq!(raws(&batch), ["a5", "b1"]);
    batch.push(record("a", Some(5), "a5'")); // same version: the later one wins
    batch.push(record("b", None, "b?")); // no version to compare: the later one wins
    assert_eq!(raws(&batch), ["a5'", "b?"]);
    assert_eq!(batch.len(), 2);
    // Bytes count every record pushed, replaced or ignored ones too (an upper bound).
    assert_eq!(batch.bytes, 2 + 2 + 2 + 3 + 2);
}

#[test]
fn a_record_after_a_tombstone_of_its_object_waits_for_the_batch_to_commit() {
    let mut batch = Batch::default();
    batch.push(record("a", Some(1), "a1"));
    assert!(!batch.must_commit_before(&record("a", Some(2), "a2")));
    batch.push_tombstone(tombstone("a"));
    assert_eq!(batch.len(), 2);
    assert!(batch.must_commit_before(&record("a", Some(3), "a3")));
    assert!(!batch.must_commit_before(&record("b", Some(3), "b3")));
}

#[test]
fn a_lane_flushes_when_its_batch_is_full_by_count_or_bytes() {
    let now = Instant::now();
    let mut lane = LaneState::new(LIMITS);
    assert!(!lane.must_flush(now) && lane.takes_more());
    lane.batch.push(record("a", None, "a"));
    lane.batch.push_tombstone(tombstone("b"));
    assert!(!lane.must_flush(now) && lane.takes_more());
    lane.batch.push(record("c", None, "c"));
    assert!(lane.must_flush(now) && !lane.takes_more());

    let mut lane = LaneState::new(LIMITS);
    lane.batch.push(record("a", None, &"x".repeat(100)));
    assert!(lane.must_flush(now) && !lane.takes_more());
}

#[test]
fn a_batch_is_due_a_flush_interval_after_its_first_item() {
    let start = Instant::now();
    let mut lane = LaneState::new(LIMITS);
    lane.received(start);
    assert_eq!(lane.deadline(), None, "an empty batch is never due");
    lane.batch.push(record("a", None, "a"));
    lane.received(start);
    lane.batch.push(record("b", None, "b"));
    lane.received(start + Duration::from_millis(900));
    assert_eq!(lane.deadline(), Some(start + LIMITS.flush_interval));
    assert!(!lane.must_flush(start + Duration::from_millis(999)));
    assert!(lane.must_flush(start + LIMITS.flush_interval));
    assert!(
        lane.takes_more(),
        "the deadline does not stop taking what is queued"
    );

    lane.batch = Batch::default();
    assert!(lane.flushed().is_empty());
    assert_eq!(lane.deadline(), None);
    assert!(!lane.must_flush(start + LIMITS.flush_interval));
}

#[test]
fn a_barrier_forces_a_flush_and_a_commit_request_waits_for_one() {
    let now = Instant::now();
    let mut lane = LaneState::new(LIMITS);
    // Nothing pending: answered at once, and no flush.
    let (ack, mut answered) = oneshot::channel();
    let ack = lane.wait_for_commit(ack).expect("answered at once");
    ack.send(()).unwrap();
    assert!(answered.try_recv().is_ok());
    assert!(!lane.must_flush(now));

    lane.batch.push(record("a", None, "a"));
    let (commit, mut committed) = oneshot::channel();
    assert!(lane.wait_for_commit(commit).is_none());
    assert!(!lane.must_flush(now), "a commit request costs no flush");
    let (barrier, mut flushed) = oneshot::channel();
    lane.wait_for_flush(barrier);
    assert!(lane.must_flush(now) && !lane.takes_more());

    lane.batch = Batch::default();
    for ack in lane.flushed() {
        ack.send(()).unwrap();
    }
    assert!(flushed.try_recv().is_ok() && committed.try_recv().is_ok());
    assert!(
        !lane.must_flush(now),
        "answered barriers force no more flushes"
    );
}

#[test]
fn a_closed_queue_flushes_and_stops() {
    let mut lane = LaneState::new(LIMITS);
    assert!(lane.is_open());
    lane.close();
    assert!(lane.must_flush(Instant::now()) && !lane.is_open());
}

#[test]
fn failed_writes_wait_longer_each_time_up_to_five_seconds() {
    let mut backoff = Backoff::default();
    let waits: Vec<(u32, u64)> = (0..8)
        .map(|_| backoff.failed())
        .map(|(attempt, wait)| (attempt, wait.as_millis() as u64))
        .collect();
    assert_eq!(
        waits,
        [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1600),
            (6, 3200),
            (7, 5000),
            (8, 5000)
        ]
    );
}
