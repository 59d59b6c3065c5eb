//! The catch-up after a resume: a watch started from a stored resume point replays the
//! changes made since, up to the collection's resourceVersion read when it resumed. Until the
//! server has shown it is past that one (by an event or a bookmark) the scope is catching up,
//! and its watches are short so that a quiet scope learns it is caught up in seconds.

use std::time::Duration;

/// Server-side watch timeout (`timeoutSeconds`): the server ends the watch after it and the
/// loop re-watches from where it was.
pub(super) const WATCH_TIMEOUT_SECS: u32 = 290;
/// `timeoutSeconds` of the watches of a resumed scope until the server has confirmed (by an
/// event or a bookmark) that it is past the collection's resourceVersion read at resume. A
/// real API server's watch cache sends the first BOOKMARK of a quiet watch only 2 s before
/// the watch's deadline, or after about a minute: with the normal timeout a quiet scope
/// would keep readiness waiting for a minute after every restart. With this one the
/// bookmark comes after about a second, and the short watches stop once caught up.
pub(super) const CATCH_UP_TIMEOUT_SECS: u32 = 3;
/// How much earlier than its deadline, by our clock, the server may end a watch.
const CLOCK_SLACK: Duration = Duration::from_millis(500);

/// The resourceVersion a resumed scope has yet to be shown, if any.
#[derive(Debug, Default)]
pub(super) struct CatchUp {
    /// Resumed, and the server has not yet shown it is past this resourceVersion (the
    /// collection's when the watch resumed): watches are short until it has.
    target: Option<i64>,
}

impl CatchUp {
    /// A watch resumes from `from` with the collection at `current`: there is a backlog to
    /// catch up with only when the collection is past the resume point.
    pub(super) fn resumed(&mut self, from: i64, current: Option<i64>) {
        self.target = current.filter(|c| *c > from);
    }

    /// A list shows everything up to its own resourceVersion: no catching up after it.
    pub(super) fn listed(&mut self) {
        self.target = None;
    }

    /// The server has shown every change up to `rv`: a resumed scope may be caught up.
    pub(super) fn reached(&mut self, rv: Option<i64>) {
        if self
            .target
            .is_some_and(|target| rv.is_some_and(|rv| rv >= target))
        {
            self.target = None;
        }
    }

    /// `timeoutSeconds` of the next watch: short while catching up.
    pub(super) fn watch_timeout(&self) -> u32 {
        if self.target.is_some() {
            CATCH_UP_TIMEOUT_SECS
        } else {
            WATCH_TIMEOUT_SECS
        }
    }

    /// A watch asked for with `timeout` the server ended after `ran_for` without a bookmark.
    /// A real API server's watch cache sends a BOOKMARK 2 s before a watch's deadline
    /// whenever it holds a newer resourceVersion than the last event the watch has
    /// processed, events it filtered out (other namespaces) included; none means the watch
    /// has processed everything the cache had, which is at least the collection's
    /// resourceVersion read (consistently) before the watch started: the scope is caught up
    /// to the target, which this returns. Without this a scope whose newest changes were all
    /// filtered out would wait for the next change of its kind anywhere in the cluster. A
    /// watch that ended before its deadline (a server going away) proves nothing.
    pub(super) fn ended_without_bookmark(
        &mut self,
        timeout: u32,
        ran_for: Duration,
    ) -> Option<i64> {
        let deadline = Duration::from_secs(u64::from(CATCH_UP_TIMEOUT_SECS));
        if timeout != CATCH_UP_TIMEOUT_SECS || ran_for + CLOCK_SLACK < deadline {
            return None;
        }
        self.target.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_collection_past_the_resume_point_leaves_a_backlog() {
        let mut c = CatchUp::default();
        c.resumed(10, Some(10));
        assert_eq!(c.watch_timeout(), WATCH_TIMEOUT_SECS, "nothing to replay");
        c.resumed(10, None);
        assert_eq!(
            c.watch_timeout(),
            WATCH_TIMEOUT_SECS,
            "unknown: nothing to wait for"
        );
        c.resumed(10, Some(15));
        assert_eq!(c.watch_timeout(), CATCH_UP_TIMEOUT_SECS);
    }

    #[test]
    fn caught_up_once_the_server_shows_the_target() {
        let mut c = CatchUp::default();
        c.resumed(10, Some(15));
        c.reached(Some(14));
        c.reached(None);
        assert_eq!(c.watch_timeout(), CATCH_UP_TIMEOUT_SECS);
        c.reached(Some(15));
        assert_eq!(c.watch_timeout(), WATCH_TIMEOUT_SECS);

        c.resumed(10, Some(15));
        c.listed();
        assert_eq!(c.watch_timeout(), WATCH_TIMEOUT_SECS, "a list catches up");
    }

    #[test]
    fn a_short_watch_ended_at_its_deadline_is_caught_up() {
        let mut c = CatchUp::default();
        c.resumed(10, Some(15));
        let deadline = Duration::from_secs(u64::from(CATCH_UP_TIMEOUT_SECS));
        assert_eq!(
            c.ended_without_bookmark(CATCH_UP_TIMEOUT_SECS, Duration::from_secs(1)),
            None,
            "ended early: proves nothing"
        );
        assert_eq!(
            c.ended_without_bookmark(WATCH_TIMEOUT_SECS, Duration::from_secs(300)),
            None,
            "not a catching-up watch"
        );
        assert_eq!(
            c.ended_without_bookmark(CATCH_UP_TIMEOUT_SECS, deadline - CLOCK_SLACK),
            Some(15),
            "within the clock's slack of the deadline"
        );
        assert_eq!(
            c.ended_without_bookmark(CATCH_UP_TIMEOUT_SECS, deadline),
            None,
            "once"
        );
    }
}
