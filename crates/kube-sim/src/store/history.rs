//! The event history and the watch fan-out: every write becomes one event in a bounded history
//! (the source of watches and of consistent paged lists); watchers are woken on each new
//! revision, and revisions that fell out of the history answer 410 Expired.

use super::{Inner, Obj, Store};
use crate::error::ApiError;
use serde_json::json;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write. `prev` is the state before it, which lets watches with selectors turn a change
/// into ADDED/DELETED and lets paged lists rebuild the state at an older revision.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub ty: EventType,
    pub res: Arc<str>,
    pub obj: Arc<Obj>,
    pub prev: Option<Arc<Obj>>,
}

impl Inner {
    /// Stores (or, for `Deleted`, removes) `obj` of resource `res`, moves the revision to its
    /// one and appends the event, dropping the oldest events beyond the history's capacity.
    pub(super) fn record(&mut self, res: &Arc<str>, ty: EventType, obj: Arc<Obj>) {
        let map = self.objects.entry(res.clone()).or_default();
        let prev = if ty == EventType::Deleted {
            map.remove(&obj.key())
        } else {
            map.insert(obj.key(), obj.clone())
        };
        self.rv = obj.rv;
        self.history.push_back(Arc::new(Event {
            rv: obj.rv,
            ty,
            res: res.clone(),
            obj,
            prev,
        }));
        while self.history.len() > self.history_cap.max(1) {
            if let Some(e) = self.history.pop_front() {
                self.compacted_rv = e.rv;
            }
        }
    }

    /// The revision of a watch cache `lag` events behind: the state before the last `lag`
    /// events, never older than what the history can rebuild.
    pub fn cache_rv(&self, lag: u64) -> u64 {
        let n = self.history.len();
        match usize::try_from(lag) {
            Ok(0) => self.rv,
            Ok(lag) if n > lag => self.history[n - lag - 1].rv,
            _ => self.compacted_rv,
        }
    }

    pub(super) fn too_old(&self, rv: u64) -> ApiError {
        ApiError::expired(format!(
            "too old resource version: {rv} ({})",
            self.compacted_rv
        ))
    }

    /// Events for `res` after `pos`, and the revision they bring the reader to;
    /// Err when `pos` fell out of the history.
    pub fn events_after(
        &self,
        pos: u64,
        res: &Arc<str>,
    ) -> Result<(Vec<Arc<Event>>, u64), ApiError> {
        self.check_watch_rv(pos)?;
        let start = self.history.partition_point(|e| e.rv <= pos);
        let evs = self
            .history
            .range(start..)
            .filter(|e| &e.res == res)
            .cloned()
            .collect();
        Ok((evs, self.rv.max(pos)))
    }

    pub fn check_watch_rv(&self, pos: u64) -> Result<(), ApiError> {
        if pos < self.compacted_rv {
            Err(self.too_old(pos))
        } else {
            Ok(())
        }
    }
}

/// The watch cache has not reached a requested revision (yet): worth waiting for.
pub(crate) fn is_too_large(e: &ApiError) -> bool {
    e.code == 504
        && e.details
            .as_ref()
            .is_some_and(|d| d["causes"][0]["reason"].as_str() == Some("ResourceVersionTooLarge"))
}

pub(crate) fn too_large(asked: u64, current: u64) -> ApiError {
    let mut e = ApiError::new(
        504,
        "Timeout",
        format!("Timeout: Too large resource version: {asked}, current: {current}"),
    );
    e.details = Some(json!({"causes": [{"reason": "ResourceVersionTooLarge",
        "message": "Too large resource version"}], "retryAfterSeconds": 1}));
    e
}

impl Store {
    /// Wakes the watchers when a write moved the revision to `rv`.
    pub(super) fn wake_watchers(&self, rv: u64) {
        self.shared.rv_tx.send_if_modified(|cur| {
            let changed = *cur != rv;
            *cur = rv;
            changed
        });
    }

    /// Closes every open watch (clients resume from their last revision).
    pub fn drop_watches(&self) {
        self.shared.drop_tx.send_modify(|g| *g += 1);
    }

    /// Forgets the event history: every watch, resume or paged list from a revision older than
    /// now gets 410 Expired. Burns one revision so that "older than now" includes the current one.
    pub fn compact(&self) {
        self.write(|i| {
            i.rv += 1;
            i.compacted_rv = i.rv;
            i.history.clear();
        });
    }
}
