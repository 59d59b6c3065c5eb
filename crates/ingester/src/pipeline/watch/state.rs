//! What one watch knows between the loop's steps, and what each step makes of it, without a
//! server, a table or lanes: the list in progress, readiness (a static route's first list,
//! or the backlog of a resumed watch), the stored resume point it started from, the reason of
//! the next relist, and how far it has got (`Progress`). The I/O loop (`run.rs`) does what
//! these answers say.

use tokio::sync::OwnedSemaphorePermit;

use super::checkpoint::Progress;
use crate::kubernetes::listwatch::{Failure, FailureReason, Start};
use crate::row::object::RawObject;
use crate::storage::snapshot::{Listed, ScopeSnapshot};

/// How the list-and-watch loop starts: from the stored resume point (if any), checked against
/// the newest resourceVersion the table holds for the scope (if any): the server's history
/// must have reached it, else it is another history.
pub(super) fn start(resume_from: Option<i64>, newest: Option<i64>) -> Start {
    match (resume_from, newest) {
        (None, None) => Start::List,
        (resume, Some(newest)) => Start::Checked { resume, newest },
        (Some(rv), None) => Start::Resume(rv),
    }
}

/// State of the list in progress.
pub(super) struct ListInProgress {
    pub(super) snapshot: ScopeSnapshot,
    _permit: Option<OwnedSemaphorePermit>,
    pub(super) listed: u64,
    pub(super) unchanged: u64,
    /// Highest resourceVersion among the listed objects: the resume point once the list is
    /// complete when the list's own version is not an integer.
    max_rv: Option<i64>,
}

impl ListInProgress {
    /// A list compared with `snapshot`, the table's rows of the scope; holds the list permit.
    pub(super) fn new(snapshot: ScopeSnapshot, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            snapshot,
            _permit: permit,
            listed: 0,
            unchanged: 0,
            max_rv: None,
        }
    }

    /// Ticks a listed object off the snapshot; says whether it must be written.
    fn observe(&mut self, obj: &RawObject) -> Listed {
        self.listed += 1;
        let rv = obj.resource_version_number();
        self.max_rv = self.max_rv.max(rv);
        let decision = self.snapshot.observe(obj.uid().unwrap_or_default(), rv);
        if decision == Listed::Unchanged {
            self.unchanged += 1;
        }
        decision
    }
}

/// What a failure asks of the I/O beyond the state.
#[derive(Debug, PartialEq)]
pub(super) struct AfterFailure {
    /// The watch had resumed from this stored point and the server no longer has the
    /// history after it (410): the resume failed.
    pub(super) resume_expired: Option<i64>,
    /// The kind cannot be watched (404, 403): readiness stops waiting for this static route.
    pub(super) ready_anyway: bool,
}

pub(super) struct WatchState {
    /// A static route: its first list gates readiness.
    is_static: bool,
    pub(super) progress: Progress,
    /// The list in progress, if any.
    list: Option<ListInProgress>,
    /// Readiness has been told about this watch.
    first_list_done: bool,
    /// Resumed without a list: readiness waits until the replayed backlog, which ends at
    /// this resourceVersion, is committed.
    catching_up_to: Option<i64>,
    /// Started from this stored resume point and has not listed since.
    resuming_from: Option<i64>,
    /// Why the last attempt failed: the reason of the next relist.
    last_error: Option<&'static str>,
}

impl WatchState {
    pub(super) fn new(is_static: bool, progress: Progress) -> Self {
        Self {
            is_static,
            progress,
            list: None,
            first_list_done: false,
            catching_up_to: None,
            resuming_from: None,
            last_error: None,
        }
    }

    /// The stored resume point `rv` was read: the watch starts from it.
    pub(super) fn stored_point(&mut self, rv: i64) {
        self.progress.resumed_from(rv);
        self.resuming_from = Some(rv);
    }

    /// A list is in progress (no checkpoint then: the list's changes are not all queued).
    pub(super) fn listing(&self) -> bool {
        self.list.is_some()
    }

    /// A list starts: says why (`initial`, `restart`, or why the last attempt failed).
    pub(super) fn list_started(&mut self) -> &'static str {
        let reason = if self.first_list_done || self.catching_up_to.is_some() {
            self.last_error.take().unwrap_or("restart")
        } else {
            "initial"
        };
        self.catching_up_to = None;
        self.resuming_from = None;
        reason
    }

    /// The table's snapshot of the scope is loaded (`None`: cancelled meanwhile).
    pub(super) fn list_loaded(&mut self, list: Option<ListInProgress>) {
        self.list = list;
    }

    /// A listed object: whether it must be written (its row does not already hold it).
    pub(super) fn listed(&mut self, obj: &RawObject) -> Listed {
        match self.list.as_mut() {
            Some(l) => l.observe(obj),
            None => Listed::Changed,
        }
    }

    /// The list, read at `read_at`, is complete: it shows the scope as of its
    /// resourceVersion, so everything up to there is queued (a non-integer one falls back to
    /// the newest object). Returns the list, whose snapshot holds the rows it lacked.
    pub(super) fn list_done(
        &mut self,
        resource_version: Option<i64>,
        read_at: f64,
    ) -> Option<ListInProgress> {
        let list = self.list.take()?;
        self.progress
            .seen(resource_version.or(list.max_rv), read_at);
        Some(list)
    }

    /// Resumed from the stored point `from` with the collection at `current`: the replayed
    /// backlog ends there.
    pub(super) fn resumed(&mut self, from: i64, current: Option<i64>) {
        self.catching_up_to = Some(current.unwrap_or(from));
    }

    /// A change (or a bookmark, or a list) read at `read_at` moves the resume point.
    pub(super) fn seen(&mut self, rv: Option<i64>, read_at: f64) {
        self.progress.seen(rv, read_at);
    }

    /// The server has shown every change up to `rv`. True when that ends the backlog of a
    /// resumed watch not yet counted ready: it counts as listed once the lanes have committed
    /// the backlog (then `mark_listed`).
    pub(super) fn caught_up_at(&mut self, rv: i64) -> bool {
        if self.catching_up_to.is_some_and(|target| rv >= target) {
            self.catching_up_to = None;
            return !self.first_list_done;
        }
        false
    }

    /// The watch has listed (or caught up). True the first time for a static route:
    /// readiness is to be told.
    pub(super) fn mark_listed(&mut self) -> bool {
        if self.first_list_done {
            return false;
        }
        self.first_list_done = true;
        self.is_static
    }

    /// The server's history is behind what the table holds: the resume point and what was
    /// queued no longer count. Returns the stored point the watch had resumed from, if any.
    pub(super) fn history_behind(&mut self) -> Option<i64> {
        self.catching_up_to = None;
        self.progress.forget();
        self.resuming_from.take()
    }

    /// The database went back in time: what the watch counted as committed (its progress, a
    /// list's snapshot, a backlog) may be gone. It starts again as at start-up, from the
    /// resume point the database still holds, keeping only what readiness was told; a list
    /// that follows says why (`database_rewound`).
    pub(super) fn database_rewound(&mut self) {
        let key = self.progress.key().to_owned();
        self.progress = Progress::new(key);
        self.list = None;
        self.catching_up_to = None;
        self.resuming_from = None;
        self.last_error = Some("database_rewound");
    }

    pub(super) fn failed(&mut self, f: &Failure) -> AfterFailure {
        let resume_expired = if f.reason == FailureReason::Expired {
            self.resuming_from.take()
        } else {
            None
        };
        self.last_error = Some(f.reason.as_str());
        if f.relist {
            // A list that broke half-way is void: no sweep, no resume point from it.
            self.list = None;
        }
        // The server lacks the kind (or RBAC forbids it): keep retrying, but do not hold
        // readiness hostage to it. Any other failure is passing: readiness waits.
        let ready_anyway = f.reason.kind_unavailable() && self.is_static && !self.first_list_done;
        if ready_anyway {
            self.first_list_done = true;
        }
        AfterFailure {
            resume_expired,
            ready_anyway,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(is_static: bool) -> WatchState {
        WatchState::new(is_static, Progress::new("k".into()))
    }

    fn object(uid: &str, rv: &str) -> RawObject {
        RawObject::from_json(format!(
            r#"{{"metadata":{{"name":"{uid}","uid":"{uid}","resourceVersion":"{rv}"}}}}"#
        ))
        .expect("json")
    }

    fn failure(reason: FailureReason, relist: bool) -> Failure {
        Failure {
            reason,
            message: "m".into(),
            relist,
        }
    }

    fn snapshot(rows: &[(&str, i64)]) -> ScopeSnapshot {
        ScopeSnapshot::from_pairs(rows.iter().map(|(u, rv)| (u.to_string(), Some(*rv))))
    }

    #[test]
    fn the_start_checks_the_servers_history_when_the_table_has_rows() {
        assert!(matches!(start(None, None), Start::List));
        assert!(matches!(start(Some(4), None), Start::Resume(4)));
        assert!(matches!(
            start(Some(4), Some(9)),
            Start::Checked {
                resume: Some(4),
                newest: 9
            }
        ));
        assert!(matches!(
            start(None, Some(9)),
            Start::Checked {
                resume: None,
                newest: 9
            }
        ));
    }

    #[test]
    fn a_list_compares_with_the_table_and_leaves_the_rows_it_lacked() {
        let mut s = state(true);
        assert_eq!(
            s.listed(&object("a", "1")),
            Listed::Changed,
            "no list: write"
        );
        assert_eq!(s.list_started(), "initial");
        s.list_loaded(Some(ListInProgress::new(
            snapshot(&[("a", 5), ("b", 6), ("c", 7)]),
            None,
        )));
        assert!(s.listing());
        assert_eq!(s.listed(&object("a", "5")), Listed::Unchanged);
        assert_eq!(s.listed(&object("b", "8")), Listed::Changed);
        let done = s.list_done(None, 100.0).expect("a list");
        assert!(!s.listing());
        assert_eq!((done.listed, done.unchanged), (2, 1));
        let missing: Vec<String> = done.snapshot.into_missing().collect();
        assert_eq!(missing, vec!["c".to_owned()]);
        assert_eq!(
            s.progress.ahead(),
            Some(8),
            "without an integer list version, the newest listed object is the resume point"
        );
        assert!(
            s.mark_listed(),
            "a static route's first list: readiness is told"
        );
        assert!(!s.mark_listed(), "once");
        assert_eq!(
            s.list_done(Some(9), 101.0).map(|l| l.listed),
            None,
            "no list"
        );
    }

    #[test]
    fn a_relist_says_why() {
        let mut s = state(false);
        assert_eq!(s.list_started(), "initial");
        let after = s.failed(&failure(FailureReason::Connection, true));
        assert_eq!(
            after,
            AfterFailure {
                resume_expired: None,
                ready_anyway: false
            }
        );
        assert_eq!(s.list_started(), "initial", "still the first list");
        assert!(!s.mark_listed(), "not a static route");
        assert_eq!(s.list_started(), "connection", "the last failure");
        assert_eq!(s.list_started(), "restart");
        s.failed(&failure(FailureReason::Expired, true));
        assert_eq!(s.list_started(), "expired");
        assert_eq!(s.list_started(), "restart", "the error is used once");
    }

    #[test]
    fn a_failure_voids_a_list_only_when_the_loop_relists() {
        let mut s = state(false);
        s.list_started();
        s.list_loaded(Some(ListInProgress::new(snapshot(&[]), None)));
        s.failed(&failure(FailureReason::Connection, false));
        assert!(s.listing());
        s.failed(&failure(FailureReason::Incomplete, true));
        assert!(!s.listing(), "a list broken half-way is void");
        assert!(s.list_done(Some(5), 1.0).is_none(), "no sweep from it");
    }

    #[test]
    fn a_resumed_watch_is_ready_once_its_backlog_is_committed() {
        let mut s = state(true);
        s.stored_point(10);
        s.resumed(10, Some(15));
        assert!(!s.caught_up_at(12));
        assert!(
            s.caught_up_at(15),
            "the backlog ends here: commit, then ready"
        );
        assert!(s.mark_listed());
        assert!(!s.caught_up_at(20), "once");

        // Nothing to replay: ready at the resume point itself.
        let mut s = state(true);
        s.stored_point(10);
        s.resumed(10, None);
        assert!(s.caught_up_at(10));

        // A relist during the catch-up: the list decides readiness, and says why it ran.
        let mut s = state(true);
        s.stored_point(10);
        s.resumed(10, Some(15));
        s.failed(&failure(FailureReason::Expired, true));
        assert_eq!(s.list_started(), "expired");
        assert!(!s.caught_up_at(15));
    }

    #[test]
    fn a_resume_that_expires_is_reported_once() {
        let mut s = state(false);
        s.stored_point(10);
        s.resumed(10, Some(15));
        let after = s.failed(&failure(FailureReason::Expired, true));
        assert_eq!(after.resume_expired, Some(10));
        let after = s.failed(&failure(FailureReason::Expired, true));
        assert_eq!(after.resume_expired, None);

        let mut s = state(false);
        s.stored_point(10);
        let after = s.failed(&failure(FailureReason::Connection, false));
        assert_eq!(after.resume_expired, None, "not an expiry");
        s.list_started();
        let after = s.failed(&failure(FailureReason::Expired, true));
        assert_eq!(after.resume_expired, None, "listed since");
    }

    #[test]
    fn a_kind_the_server_lacks_does_not_hold_readiness() {
        let mut s = state(true);
        let after = s.failed(&failure(FailureReason::NotFound, true));
        assert!(after.ready_anyway);
        assert!(
            !s.failed(&failure(FailureReason::Forbidden, true))
                .ready_anyway,
            "once"
        );
        assert!(!s.mark_listed(), "readiness was already told");

        let mut s = state(true);
        assert!(
            !s.failed(&failure(FailureReason::ApiError, true))
                .ready_anyway
        );
        let mut s = state(false);
        assert!(
            !s.failed(&failure(FailureReason::NotFound, true))
                .ready_anyway
        );
    }

    #[test]
    fn a_database_rewind_starts_the_watch_afresh_but_keeps_readiness() {
        let mut s = state(true);
        s.stored_point(10);
        s.resumed(10, Some(15));
        s.seen(Some(20), 1.0);
        s.list_loaded(Some(ListInProgress::new(snapshot(&[]), None)));
        s.database_rewound();
        assert!(!s.listing(), "a list in progress is void");
        assert_eq!(s.progress.ahead(), None, "nothing counts as queued");
        assert!(!s.caught_up_at(15), "no backlog to wait for");
        assert_eq!(s.list_started(), "initial", "readiness not told yet");
        assert!(s.mark_listed());
        // Once ready, a rewind keeps it so and says why the watch lists again.
        s.database_rewound();
        assert!(!s.mark_listed(), "readiness was already told");
        assert_eq!(s.list_started(), "database_rewound");
        // Resuming from the database's point: an expiry is reported against it.
        s.database_rewound();
        s.stored_point(7);
        assert_eq!(
            s.failed(&failure(FailureReason::Expired, true))
                .resume_expired,
            Some(7)
        );
    }

    #[test]
    fn another_history_forgets_the_resume_point() {
        let mut s = state(true);
        s.stored_point(10);
        assert_eq!(s.history_behind(), Some(10));
        assert_eq!(s.history_behind(), None);
        // The list that follows is the first.
        assert_eq!(s.list_started(), "initial");

        let mut s = state(true);
        s.stored_point(10);
        s.resumed(10, Some(15));
        s.history_behind();
        assert!(!s.caught_up_at(15), "no backlog to wait for any more");
    }
}
