//! The faults of real API servers, all settable at once ([`FaultSet`], `PUT /_sim/faults`) or
//! one at a time (the `Store::set_*` methods and the `/_sim/...` endpoints). Faults are
//! independent: setting one leaves the others as they are, so any combination can be active.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a watch cache waits to reach a requested revision before it answers 504 "Too large
/// resource version" (the real server's `blockTimeout`, 3 s).
pub const DEFAULT_FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// How requests are spread over the API servers behind the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReplicaPick {
    /// Replica 0, 1, ..., K-1, 0, ... in request order.
    #[default]
    RoundRobin,
    /// A replica drawn at random for each request, from a generator seeded with `seed`.
    Random { seed: u64 },
}

/// Every fault switch. `FaultSet::default()` is a healthy server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultSet {
    /// The next N API requests answer 500 InternalError.
    pub fail_next: u64,
    /// Milliseconds added before every API response.
    pub delay_ms: u64,
    /// One entry per API server behind the address: how many events its watch cache lags
    /// behind the store. Empty: one server, up to date. `[n]`: one server lagging n events.
    pub replica_lags: Vec<u64>,
    /// How requests are spread over `replica_lags`.
    pub replica_pick: ReplicaPick,
    /// Milliseconds a replica waits to reach a requested revision before 504 (default 3000).
    pub freshness_wait_ms: u64,
    /// A watch resuming from revision X first re-delivers the last N events up to X that it
    /// would have delivered (events the client already saw).
    pub watch_replay: u64,
    /// Milliseconds every BOOKMARK is held back (periodic ones and the initial-events-end one).
    pub bookmark_delay_ms: u64,
    /// Milliseconds a list stalls half-way: between pages of a paged list, after half of the
    /// items of a whole list, after half of the initial events of a streaming list.
    pub list_stall_ms: u64,
    /// Watches go silent (no events, no bookmarks, no close at timeoutSeconds) until the
    /// client gives up or the watches are dropped.
    pub stuck_watches: bool,
    /// New watches end at once (200, no event): a server, or a proxy in between, that will
    /// not hold a watch open.
    pub watches_end_at_once: bool,
}

impl Default for FaultSet {
    fn default() -> Self {
        FaultSet {
            fail_next: 0,
            delay_ms: 0,
            replica_lags: Vec::new(),
            replica_pick: ReplicaPick::RoundRobin,
            freshness_wait_ms: DEFAULT_FRESHNESS_WAIT.as_millis() as u64,
            watch_replay: 0,
            bookmark_delay_ms: 0,
            list_stall_ms: 0,
            stuck_watches: false,
            watches_end_at_once: false,
        }
    }
}

/// The switches read on the request path (all but the atomics `fail` and `delay`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ReadFaults {
    pub replica_lags: Vec<u64>,
    pub replica_pick: ReplicaPick,
    pub freshness_wait: Duration,
    pub watch_replay: u64,
    pub bookmark_delay: Duration,
    pub list_stall: Duration,
    pub stuck_watches: bool,
    pub watches_end_at_once: bool,
}

impl ReadFaults {
    pub fn from_set(f: &FaultSet) -> Self {
        ReadFaults {
            replica_lags: f.replica_lags.clone(),
            replica_pick: f.replica_pick,
            freshness_wait: Duration::from_millis(f.freshness_wait_ms),
            watch_replay: f.watch_replay,
            bookmark_delay: Duration::from_millis(f.bookmark_delay_ms),
            list_stall: Duration::from_millis(f.list_stall_ms),
            stuck_watches: f.stuck_watches,
            watches_end_at_once: f.watches_end_at_once,
        }
    }

    pub fn healthy() -> Self {
        Self::from_set(&FaultSet::default())
    }
}

/// The API server one request landed on: its index and how far its watch cache lags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Replica {
    pub index: usize,
    pub lag: u64,
}
