//! The fault switches: injected failures and delays, lagging replicas and their choice, and
//! the other read faults watches and lists consult on every request.

use super::Store;
use crate::faults::{FaultSet, ReadFaults, Replica, ReplicaPick};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// Fault switches, shared by the HTTP endpoints and the in-process API.
#[derive(Debug)]
pub(crate) struct Faults {
    pub fail: AtomicU64,
    pub delay_ms: AtomicU64,
    /// Extra delays of requests to one exact path (e.g. a discovery document).
    pub path_delays: RwLock<HashMap<String, u64>>,
    pub read: RwLock<ReadFaults>,
    /// Requests so far, for round-robin replica choice.
    next_replica: AtomicU64,
    /// For random replica choice; reseeded whenever the replicas are set.
    rng: Mutex<SmallRng>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            path_delays: RwLock::new(HashMap::new()),
            read: RwLock::new(ReadFaults::healthy()),
            next_replica: AtomicU64::new(0),
            rng: Mutex::new(SmallRng::seed_from_u64(0)),
        }
    }
}

impl Store {
    /// The next `n` API requests fail with 500.
    pub fn fail_next(&self, n: u64) {
        self.shared.faults.fail.store(n, Ordering::SeqCst);
    }

    /// Adds `ms` of latency to every API response (0 turns it off).
    pub fn set_delay(&self, ms: u64) {
        self.shared.faults.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Delays every request to exactly `path` (e.g. `/apis/apps/v1`, a discovery document) by
    /// `ms` on top of `set_delay`; 0 removes it. An API server that stops answering one kind
    /// of request while others still flow.
    pub fn set_path_delay(&self, path: &str, ms: u64) {
        if let Ok(mut delays) = self.shared.faults.path_delays.write() {
            if ms == 0 {
                delays.remove(path);
            } else {
                delays.insert(path.to_owned(), ms);
            }
        }
    }

    /// Every fault switch as it is now.
    pub fn faults(&self) -> FaultSet {
        let r = self.read_faults();
        FaultSet {
            fail_next: self.shared.faults.fail.load(Ordering::SeqCst),
            delay_ms: self.shared.faults.delay_ms.load(Ordering::SeqCst),
            replica_lags: r.replica_lags,
            replica_pick: r.replica_pick,
            freshness_wait_ms: r.freshness_wait.as_millis() as u64,
            watch_replay: r.watch_replay,
            bookmark_delay_ms: r.bookmark_delay.as_millis() as u64,
            list_stall_ms: r.list_stall.as_millis() as u64,
            stuck_watches: r.stuck_watches,
            watches_end_at_once: r.watches_end_at_once,
        }
    }

    /// Sets every fault switch at once (several faults together); `FaultSet::default()` heals.
    pub fn set_faults(&self, f: &FaultSet) {
        self.fail_next(f.fail_next);
        self.set_delay(f.delay_ms);
        self.change_read_faults(|r| *r = ReadFaults::from_set(f));
        self.reset_replica_choice(f.replica_pick);
    }

    /// Turns every fault off.
    pub fn clear_faults(&self) {
        self.set_faults(&FaultSet::default());
    }

    /// One API server whose watch cache lags `events` events behind: lists and streaming lists
    /// with resourceVersion "0" (and watches without a revision) get the state of `events`
    /// events ago, with that revision. 0 turns it off. Same as `set_replicas(&[events], ..)`.
    pub fn set_watch_cache_lag(&self, events: u64) {
        let lags = if events == 0 {
            Vec::new()
        } else {
            vec![events]
        };
        self.set_replicas(&lags, ReplicaPick::RoundRobin);
    }

    /// Several API servers behind the address, replica i lagging `lags[i]` events; each request
    /// lands on the next one (`RoundRobin`) or a random one (`Random { seed }`). Empty: one
    /// up-to-date server.
    pub fn set_replicas(&self, lags: &[u64], pick: ReplicaPick) {
        self.change_read_faults(|r| {
            r.replica_lags = lags.to_vec();
            r.replica_pick = pick;
        });
        self.reset_replica_choice(pick);
    }

    /// How long a watch cache waits to reach a requested revision before answering 504
    /// "Too large resource version" (default 3 s, as on a real server).
    pub fn set_freshness_wait(&self, wait: Duration) {
        self.change_read_faults(|r| r.freshness_wait = wait);
    }

    /// A watch resuming from a revision first re-delivers the last `events` events up to that
    /// revision (ones the client already saw). 0 turns it off.
    pub fn set_watch_replay(&self, events: u64) {
        self.change_read_faults(|r| r.watch_replay = events);
    }

    /// Holds every BOOKMARK back by `delay` (never sent out of order: a late bookmark carries
    /// the revision of the moment it is sent). Zero turns it off.
    pub fn set_bookmark_delay(&self, delay: Duration) {
        self.change_read_faults(|r| r.bookmark_delay = delay);
    }

    /// Lists stall half-way for `stall`: between the pages of a paged list, after half of the
    /// items of a whole list or of the initial events of a streaming list. Zero turns it off.
    pub fn set_list_stall(&self, stall: Duration) {
        self.change_read_faults(|r| r.list_stall = stall);
    }

    /// New watches end at once, without an event (open ones go on).
    pub fn set_watches_end_at_once(&self, on: bool) {
        self.change_read_faults(|r| r.watches_end_at_once = on);
    }

    /// Open and new watches go silent: no events, no bookmarks, no close at timeoutSeconds,
    /// until the client closes them or `drop_watches`. A watch that went silent stays silent.
    pub fn set_stuck_watches(&self, stuck: bool) {
        self.change_read_faults(|r| r.stuck_watches = stuck);
        // wake the open watches so they notice
        self.shared.rv_tx.send_modify(|_| {});
    }

    pub(crate) fn read_faults(&self) -> ReadFaults {
        self.shared
            .faults
            .read
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn change_read_faults(&self, f: impl FnOnce(&mut ReadFaults)) {
        let mut g = self
            .shared
            .faults
            .read
            .write()
            .unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    fn reset_replica_choice(&self, pick: ReplicaPick) {
        let faults = &self.shared.faults;
        faults.next_replica.store(0, Ordering::SeqCst);
        if let ReplicaPick::Random { seed } = pick {
            *faults.rng.lock().unwrap_or_else(|e| e.into_inner()) = SmallRng::seed_from_u64(seed);
        }
    }

    /// The API server the next request lands on.
    pub(crate) fn pick_replica(&self) -> Replica {
        let faults = &self.shared.faults;
        let (lags, pick) = {
            let r = faults.read.read().unwrap_or_else(|e| e.into_inner());
            if r.replica_lags.is_empty() {
                return Replica::default();
            }
            (r.replica_lags.clone(), r.replica_pick)
        };
        let index = match pick {
            ReplicaPick::RoundRobin => {
                (faults.next_replica.fetch_add(1, Ordering::SeqCst) % lags.len() as u64) as usize
            }
            ReplicaPick::Random { .. } => faults
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .random_range(0..lags.len()),
        };
        Replica {
            index,
            lag: lags[index],
        }
    }

    /// Takes one pending failure, if any.
    pub(crate) fn take_failure(&self) -> bool {
        self.shared
            .faults
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The delay of a request to `path`: the global one plus the path's own.
    pub(crate) fn delay(&self, path: &str) -> u64 {
        let own = self
            .shared
            .faults
            .path_delays
            .read()
            .ok()
            .and_then(|d| d.get(path).copied())
            .unwrap_or(0);
        self.shared.faults.delay_ms.load(Ordering::SeqCst) + own
    }
}
