//! Commit marks: how a running service notices that the database went back in time (a
//! failover to a standby that had not received its last commits, a restore).
//!
//! Every batch transaction stores a mark, a number this process increases per batch, in a row
//! of its own connection (`krateo_ingester_watch_state`, scope `commit-mark:<process>:<backend
//! pid>`: one row per connection, so lanes never wait on each other's row). Once `COMMIT`
//! returned, the process remembers the mark as committed. The same statement returns the
//! highest mark the database held for this process before it, and the readiness ping (every
//! 2 s) reads it too: below the one remembered, commits the server acknowledged are gone, and
//! with them rows, tombstones and the resume points stored after them. Checked by statements
//! rather than when a connection opens, so a failover behind a pooler (whose client
//! connections survive it) is noticed as well. A promotion that lost nothing (a switchover)
//! shows every mark and costs nothing.
//!
//! What was lost is a suffix of the history: a standby replays WAL in order, so whatever it
//! holds is everything committed up to some point. A resume point stored after its changes
//! committed therefore never covers a lost change; the watches restart from the points the
//! database still holds (`pipeline::watch`), exactly as a restart of the process would.

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::watch;
use tokio_postgres::types::Type;

/// The prefix of the marks' keys among the resume points (never a scope key: those have
/// four `/`-separated parts and no `:` in their group).
pub const KEY_PREFIX: &str = "commit-mark:";

/// Stores a batch's mark in its transaction, in the row of the transaction's connection, and
/// returns the highest mark of this process the database held before (the CTE reads the
/// statement's snapshot, taken before the insert).
pub const STORE_SQL: &str = "WITH held AS (
         SELECT max(resource_version) AS mark FROM krateo_ingester_watch_state
          WHERE starts_with(scope, $2)),
     stored AS (
         INSERT INTO krateo_ingester_watch_state (cluster_name, scope, resource_version)
         VALUES ($1, $2 || pg_backend_pid(), $3)
         ON CONFLICT (cluster_name, scope)
         DO UPDATE SET resource_version = EXCLUDED.resource_version, updated_at = now())
     SELECT mark FROM held";

/// The parameter types of [`STORE_SQL`]: sent with it as an unnamed statement (nothing
/// prepared outlives the transaction behind a transaction pooler).
pub const STORE_TYPES: [Type; 3] = [Type::TEXT, Type::TEXT, Type::INT8];

const READ_SQL: &str =
    "SELECT max(resource_version) FROM krateo_ingester_watch_state WHERE starts_with(scope, $1)";

/// Marks of processes gone for a week: no process compares with them any more.
const CLEAN_UP_SQL: &str = "DELETE FROM krateo_ingester_watch_state
     WHERE starts_with(scope, 'commit-mark:') AND updated_at < now() - interval '7 days'";

/// What a check found: the database holds less than this process saw committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewind {
    /// The highest mark this process saw committed.
    pub committed: i64,
    /// The highest the database holds (`None`: not one of this process's marks).
    pub found: Option<i64>,
}

/// The database went back in time when it lacks a mark this process saw committed.
pub fn rewound(committed: i64, found: Option<i64>) -> Option<Rewind> {
    (committed > found.unwrap_or(0)).then_some(Rewind { committed, found })
}

/// What the watches follow: how many times the database went back in time, and the last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewinds {
    pub generation: u64,
    pub last: Option<Rewind>,
}

/// This process's marks: the next one, the highest committed, and the rewinds found.
pub struct CommitMarks {
    /// This process's prefix: `commit-mark:<uuid>:`.
    prefix: String,
    next: AtomicI64,
    committed: AtomicI64,
    rewinds: watch::Sender<Rewinds>,
}

impl Default for CommitMarks {
    fn default() -> Self {
        Self::new()
    }
}

impl CommitMarks {
    pub fn new() -> Self {
        Self {
            prefix: format!("{KEY_PREFIX}{}:", uuid::Uuid::new_v4()),
            next: AtomicI64::new(0),
            committed: AtomicI64::new(0),
            rewinds: watch::Sender::new(Rewinds::default()),
        }
    }

    /// The key prefix of this process's rows (the statement appends the backend pid).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The mark of the next batch.
    pub fn next_mark(&self) -> i64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The batch with `mark` committed (`COMMIT` returned).
    pub fn committed(&self, mark: i64) {
        self.committed.fetch_max(mark, Ordering::SeqCst);
    }

    /// Follows the rewinds found.
    pub fn subscribe(&self) -> watch::Receiver<Rewinds> {
        self.rewinds.subscribe()
    }

    /// How many rewinds were found so far.
    pub fn generation(&self) -> u64 {
        self.rewinds.borrow().generation
    }

    /// What a check compares with, taken before the database is read: a commit acknowledged
    /// before this is visible to a statement that starts after it.
    pub fn before(&self) -> Before {
        Before {
            generation: self.generation(),
            committed: self.committed.load(Ordering::SeqCst),
        }
    }

    /// The database held `found` as this process's highest mark, read after `before`: a
    /// rewind is published, once however many lanes and pings saw it.
    pub fn observed(&self, before: Before, found: Option<i64>) {
        let Some(rewind) = rewound(before.committed, found) else {
            return;
        };
        self.rewinds.send_if_modified(|r| {
            if r.generation != before.generation {
                // Another check reported this rewind since `before`.
                return false;
            }
            // From now on compare with what the database holds (later commits raise it).
            self.committed
                .fetch_min(found.unwrap_or(0), Ordering::SeqCst);
            r.generation += 1;
            r.last = Some(rewind);
            true
        });
    }

    /// Reads this process's highest mark from the database behind `client` (the readiness
    /// ping: a quiet service notices a rewind too).
    pub async fn check(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        let before = self.before();
        if before.committed == 0 {
            return Ok(());
        }
        let found: Option<i64> = client
            .query_typed(READ_SQL, &[(&self.prefix.as_str(), Type::TEXT)])
            .await?
            .first()
            .and_then(|row| row.try_get(0).ok())
            .flatten();
        self.observed(before, found);
        Ok(())
    }
}

/// What this process knew before reading the database ([`CommitMarks::before`]).
#[derive(Clone, Copy, Debug)]
pub struct Before {
    generation: u64,
    committed: i64,
}

/// Drops the marks of processes gone for a week (at start-up, by the replica that writes).
pub async fn clean_up(pool: &deadpool_postgres::Pool) -> Result<u64, String> {
    let client = pool.get().await.map_err(|e| super::error_chain(&e))?;
    client
        .execute_typed(CLEAN_UP_SQL, &[])
        .await
        .map_err(|e| super::error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_database_behind_what_was_committed_went_back() {
        assert_eq!(rewound(0, None), None, "nothing committed yet");
        assert_eq!(rewound(5, Some(5)), None, "every commit is there");
        assert_eq!(
            rewound(5, Some(9)),
            None,
            "later commits (in flight when read)"
        );
        assert_eq!(
            rewound(5, Some(3)),
            Some(Rewind {
                committed: 5,
                found: Some(3)
            })
        );
        assert_eq!(
            rewound(2, None),
            Some(Rewind {
                committed: 2,
                found: None
            }),
            "even the first mark is gone"
        );
    }

    #[test]
    fn marks_grow_and_keys_are_never_scope_keys() {
        let marks = CommitMarks::new();
        assert_eq!(marks.next_mark(), 1);
        assert_eq!(marks.next_mark(), 2);
        marks.committed(2);
        marks.committed(1);
        assert_eq!(marks.committed.load(Ordering::SeqCst), 2);
        assert!(!marks.prefix().contains('/'));
        assert_eq!(marks.generation(), 0);
    }

    #[test]
    fn a_rewind_seen_by_two_checks_is_reported_once() {
        let marks = CommitMarks::new();
        marks.committed(10);
        let (lane, ping) = (marks.before(), marks.before());
        marks.observed(lane, Some(10));
        assert_eq!(marks.generation(), 0, "every mark is there");
        marks.observed(lane, Some(7));
        marks.observed(ping, Some(7));
        assert_eq!(marks.generation(), 1, "one rewind, seen twice");
        assert_eq!(
            marks.subscribe().borrow().last,
            Some(Rewind {
                committed: 10,
                found: Some(7)
            })
        );
        // Later commits on the promoted server raise the mark again; a later loss is a new rewind.
        marks.committed(12);
        let after = marks.before();
        marks.observed(after, Some(12));
        assert_eq!(marks.generation(), 1);
        marks.observed(after, Some(11));
        assert_eq!(marks.generation(), 2);
    }
}
