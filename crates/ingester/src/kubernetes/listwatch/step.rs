//! What the loop says: its steps, in the order the server said them, and why it failed.

use tokio::sync::OwnedSemaphorePermit;

use crate::row::object::RawObject;

/// What happened, in the order the server said it.
#[derive(Debug)]
pub enum Step {
    /// A (re)list begins; its objects follow as `Listed`. Holds the list permit (lists running
    /// at once are bounded) until the list is done or abandoned.
    ListStarted {
        permit: Option<OwnedSemaphorePermit>,
    },
    Listed(RawObject),
    /// Every object of the list has been sent. `resource_version` is the list's own
    /// resourceVersion (the state it shows), `None` when it is not an integer.
    ListDone {
        resource_version: Option<i64>,
    },
    /// A watch started from a stored resume point (no list). `current` is the collection's
    /// resourceVersion when it started: the replayed backlog ends there.
    Resumed {
        from: i64,
        current: Option<i64>,
    },
    /// The collection's current resourceVersion is below `newest`, the newest one the table
    /// or the resume point holds for the scope: the server's history is not the one they
    /// come from (an etcd restore, a cluster rebuilt). The loop lists (consistently) next;
    /// no resourceVersion stored before compares with the server's any more.
    HistoryBehind {
        newest: i64,
        current: i64,
    },
    Applied(RawObject),
    Deleted(RawObject),
    /// The server has sent every change up to this resourceVersion (a bookmark).
    Progress(i64),
    /// A failure; the loop goes on by itself after a backoff. A list in progress is void
    /// (`relist`: the next list starts over; no sweep may use a partial list).
    Failed(Failure),
}

#[derive(Debug)]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
    /// The loop lists again next (a list in progress is abandoned).
    pub relist: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// 410 Gone: the server no longer has the history to watch from.
    Expired,
    /// 404: the server does not serve this kind.
    NotFound,
    /// 403: this identity may not list or watch it.
    Forbidden,
    /// Any other answer of the API server (500, 504 "too large resource version", ...).
    ApiError,
    /// No answer: connection refused or reset, timeout, a watch gone silent.
    Connection,
    /// A list that ended before it was complete.
    Incomplete,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Expired => "expired",
            FailureReason::NotFound => "not_found",
            FailureReason::Forbidden => "forbidden",
            FailureReason::ApiError => "api_error",
            FailureReason::Connection => "connection",
            FailureReason::Incomplete => "incomplete",
        }
    }

    /// The kind cannot be watched at all (not a passing fault): readiness must not wait for it.
    pub fn kind_unavailable(self) -> bool {
        matches!(self, FailureReason::NotFound | FailureReason::Forbidden)
    }

    pub(super) fn of_code(code: u16) -> FailureReason {
        match code {
            410 => FailureReason::Expired,
            404 => FailureReason::NotFound,
            403 => FailureReason::Forbidden,
            _ => FailureReason::ApiError,
        }
    }

    pub(super) fn of_error(e: &kube::Error) -> FailureReason {
        match e {
            kube::Error::Api(s) => FailureReason::of_code(s.code),
            _ => FailureReason::Connection,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_kinds_and_refusals_are_unavailable() {
        for (code, unavailable) in [
            (404, true),
            (403, true),
            (410, false),
            (500, false),
            (504, false),
        ] {
            assert_eq!(
                FailureReason::of_code(code).kind_unavailable(),
                unavailable,
                "{code}"
            );
        }
        assert!(!FailureReason::Connection.kind_unavailable());
        assert!(!FailureReason::Incomplete.kind_unavailable());
    }
}
