//! The loop's decisions, without a server: the phase it is in, and for each answer the
//! server gives (a list page, a watch opened or refused, a watch event) the step to say and
//! the phase to go on in. The I/O (`io.rs`) asks what a phase needs and hands the answer
//! here. Generic over the watch stream `S`, so tests need no server.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use kube::api::{WatchEvent, WatchParams};
use kube::core::ObjectList;
use tokio::sync::OwnedSemaphorePermit;

use super::catch_up::{CatchUp, WATCH_TIMEOUT_SECS};
use super::step::{Failure, FailureReason, Step};
use super::Start;
use crate::row::object::RawObject;

/// A watch that ends sooner than this without an event is a failure (backoff), not a
/// server timeout.
const SHORT_WATCH: Duration = Duration::from_secs(1);
/// A watch that sends nothing (not even the end of the stream) this long after the server
/// should have ended it is treated as a dead connection.
const IDLE_GRACE: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The annotation on the bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// The next watch event, or why there is none (a break, a watch gone silent).
pub(super) type Received = Result<Option<WatchEvent<RawObject>>, (FailureReason, String)>;

/// What to say (if anything), and the phase to go on in.
pub(super) type Transition<S> = (Option<Step>, Phase<S>);

/// Where the loop is; each phase needs at most one request (or a sleep) to go on.
pub(super) enum Phase<S> {
    /// Ask for the collection's current resourceVersion; unless it is below `newest`, watch
    /// from `from` (or list when there is none).
    Resume {
        from: Option<i64>,
        newest: i64,
    },
    /// The collection is at `current`, not behind: watch from the resume point `from`.
    ResumeWatch {
        from: i64,
        newest: i64,
        current: Option<i64>,
    },
    /// Start a list (after taking a list permit). `consistent`: a streaming list from the
    /// current state (after 410, or when a list broke); else from whatever state the watch
    /// cache has (`resourceVersion=0`: possibly older, which the sweep's guard and the watch
    /// that follows make safe). Paged lists are always consistent (see `io.rs`).
    List {
        consistent: bool,
    },
    /// Open a streaming list, holding the list permit.
    ListStreaming {
        consistent: bool,
        permit: Option<OwnedSemaphorePermit>,
    },
    /// Ask for the first page of a paged list, holding the list permit.
    ListPaged {
        consistent: bool,
        permit: Option<OwnedSemaphorePermit>,
    },
    /// Hand out the page's items; then the next page, or the end of the list.
    Paging {
        items: VecDeque<RawObject>,
        continue_token: Option<String>,
        resource_version: String,
    },
    /// Ask for the page after `continue_token` of the list taken at `resource_version`.
    NextPage {
        continue_token: String,
        resource_version: String,
    },
    /// A streaming list's initial events.
    StreamingList {
        stream: S,
    },
    /// Open a watch from `from`.
    Watch {
        from: String,
    },
    Watching {
        from: String,
        stream: S,
    },
    /// Sleep the backoff, then go to `next`.
    Backoff {
        next: Box<Phase<S>>,
    },
}

impl<S> Phase<S> {
    /// The first phase for `start`.
    pub(super) fn first(start: Start) -> Self {
        match start {
            Start::List => Phase::List { consistent: false },
            Start::Resume(from) => Phase::Resume {
                from: Some(from),
                newest: from,
            },
            Start::Checked { resume, newest } => Phase::Resume {
                from: resume,
                newest: newest.max(resume.unwrap_or(newest)),
            },
        }
    }
}

/// What the loop keeps between phases.
pub(super) struct Machine {
    /// Lists as streaming lists (turned off when the server refuses one).
    streaming: bool,
    /// The `apiVersion` and `kind` listed items without them are given (the kind as the
    /// server spells it, once a list has said).
    type_meta: (String, String),
    backoff: Duration,
    catch_up: CatchUp,
    /// `timeoutSeconds` of the watch in progress, and when it was asked for.
    watch_timeout: u32,
    watch_started: Instant,
    /// The watch in progress has delivered an event (a bookmark counts).
    watch_saw_event: bool,
}

fn parse_rv(rv: &str) -> Option<i64> {
    rv.parse().ok()
}

/// After a failed request: a 410 means the server no longer has the history to go on from,
/// so list again; anything else retries `same` after the backoff.
fn unless_expired<S>(reason: FailureReason, same: Phase<S>) -> Phase<S> {
    if reason == FailureReason::Expired {
        Phase::List { consistent: true }
    } else {
        same
    }
}

/// Where to watch from after `o`: its resourceVersion (an empty one would mean "from now").
fn next_from(o: &RawObject, from: String) -> String {
    match o.resource_version() {
        Some(rv) if !rv.is_empty() => rv.to_owned(),
        _ => from,
    }
}

impl Machine {
    pub(super) fn new(streaming: bool, type_meta: (String, String)) -> Self {
        Self {
            streaming,
            type_meta,
            backoff: BACKOFF_MIN,
            catch_up: CatchUp::default(),
            watch_timeout: WATCH_TIMEOUT_SECS,
            watch_started: Instant::now(),
            watch_saw_event: false,
        }
    }

    /// How long the `Backoff` phase sleeps.
    pub(super) fn backoff(&self) -> Duration {
        self.backoff
    }

    /// The backoff has been slept: the next one is longer.
    pub(super) fn backed_off<S>(&mut self, next: Phase<S>) -> Transition<S> {
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        (None, next)
    }

    fn fail<S>(&mut self, reason: FailureReason, message: String, next: Phase<S>) -> Transition<S> {
        let relist = matches!(next, Phase::List { .. });
        (
            Some(Step::Failed(Failure {
                reason,
                message,
                relist,
            })),
            Phase::Backoff {
                next: Box::new(next),
            },
        )
    }

    /// A request failed: retry `next` after the backoff.
    fn refused<S>(&mut self, e: kube::Error, next: Phase<S>) -> Transition<S> {
        self.fail(FailureReason::of_error(&e), e.to_string(), next)
    }

    /// A request failed: retry `same` after the backoff, or list again after a 410.
    fn refused_unless_expired<S>(&mut self, e: kube::Error, same: Phase<S>) -> Transition<S> {
        let reason = FailureReason::of_error(&e);
        self.fail(reason, e.to_string(), unless_expired(reason, same))
    }

    /// `Resume`: the collection's current resourceVersion has been read. The read is
    /// consistent (no resourceVersion): within one history no stored resourceVersion can be
    /// above it, so one that is proves the server's history is another (`HistoryBehind`).
    /// Else the watch resumes, and the backlog it replays ends there (readiness waits for it).
    pub(super) fn on_current<S>(
        &mut self,
        from: Option<i64>,
        newest: i64,
        read: Result<Option<String>, kube::Error>,
    ) -> Transition<S> {
        let current = match read {
            Ok(rv) => rv.as_deref().and_then(parse_rv),
            Err(e) => return self.refused(e, Phase::Resume { from, newest }),
        };
        if let Some(current) = current.filter(|c| *c < newest) {
            return (
                Some(Step::HistoryBehind { newest, current }),
                Phase::List { consistent: true },
            );
        }
        let Some(from) = from else {
            return (None, Phase::List { consistent: false });
        };
        self.catch_up.resumed(from, current);
        (
            None,
            Phase::ResumeWatch {
                from,
                newest,
                current,
            },
        )
    }

    /// `ResumeWatch`: the watch from the resume point opened (or not: a 410 lists).
    pub(super) fn on_resumed_watch<S>(
        &mut self,
        from: i64,
        newest: i64,
        current: Option<i64>,
        opened: Result<S, kube::Error>,
    ) -> Transition<S> {
        match opened {
            Ok(stream) => (
                Some(Step::Resumed { from, current }),
                Phase::Watching {
                    from: from.to_string(),
                    stream,
                },
            ),
            Err(e) => self.refused_unless_expired(
                e,
                Phase::Resume {
                    from: Some(from),
                    newest,
                },
            ),
        }
    }

    /// `List`: the list permit is taken.
    pub(super) fn on_permit<S>(
        &mut self,
        consistent: bool,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Transition<S> {
        self.catch_up.listed();
        let next = if self.streaming {
            Phase::ListStreaming { consistent, permit }
        } else {
            Phase::ListPaged { consistent, permit }
        };
        (None, next)
    }

    /// The resourceVersion a streaming list is asked from.
    pub(super) fn streaming_list_from(consistent: bool) -> &'static str {
        if consistent {
            ""
        } else {
            "0"
        }
    }

    /// `ListStreaming`: the streaming list opened; a server that does not serve them (the
    /// WatchList feature gate off: 422 or 400) gets paged lists from now on.
    pub(super) fn on_streaming_list<S>(
        &mut self,
        consistent: bool,
        permit: Option<OwnedSemaphorePermit>,
        opened: Result<S, kube::Error>,
    ) -> Transition<S> {
        match opened {
            Ok(stream) => (
                Some(Step::ListStarted { permit }),
                Phase::StreamingList { stream },
            ),
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                self.streaming = false;
                (None, Phase::ListPaged { consistent, permit })
            }
            Err(e) => self.refused(e, Phase::List { consistent }),
        }
    }

    /// `ListPaged`: the first page, whose resourceVersion is the list's.
    pub(super) fn on_first_page<S>(
        &mut self,
        consistent: bool,
        permit: Option<OwnedSemaphorePermit>,
        page: Result<ObjectList<RawObject>, kube::Error>,
    ) -> Transition<S> {
        let page = match page {
            Ok(page) => page,
            Err(e) => return self.refused(e, Phase::List { consistent }),
        };
        match self.first_page_version(&page) {
            Some(resource_version) => (
                Some(Step::ListStarted { permit }),
                Phase::Paging {
                    items: page.items.into(),
                    continue_token: page.metadata.continue_.filter(|c| !c.is_empty()),
                    resource_version,
                },
            ),
            None => self.fail(
                FailureReason::ApiError,
                "the list carried no resourceVersion".into(),
                Phase::List { consistent: true },
            ),
        }
    }

    /// `Paging`: hand out the page's items, then fetch the next page, then watch from the
    /// list's resourceVersion.
    pub(super) fn on_paging<S>(
        &mut self,
        mut items: VecDeque<RawObject>,
        continue_token: Option<String>,
        resource_version: String,
    ) -> Transition<S> {
        if let Some(mut obj) = items.pop_front() {
            if obj.api_version.is_none() {
                let (api_version, kind) = &self.type_meta;
                obj.set_type_meta(api_version, kind);
            }
            return (
                Some(Step::Listed(obj)),
                Phase::Paging {
                    items,
                    continue_token,
                    resource_version,
                },
            );
        }
        let Some(continue_token) = continue_token else {
            self.backoff = BACKOFF_MIN;
            return (
                Some(Step::ListDone {
                    resource_version: parse_rv(&resource_version),
                }),
                Phase::Watch {
                    from: resource_version,
                },
            );
        };
        (
            None,
            Phase::NextPage {
                continue_token,
                resource_version,
            },
        )
    }

    /// `NextPage`: a page that fails breaks the list: relist consistently.
    pub(super) fn on_next_page<S>(
        &mut self,
        resource_version: String,
        page: Result<ObjectList<RawObject>, kube::Error>,
    ) -> Transition<S> {
        match page {
            Ok(page) => {
                self.take_served_kind(&page);
                (
                    None,
                    Phase::Paging {
                        items: page.items.into(),
                        continue_token: page.metadata.continue_.filter(|c| !c.is_empty()),
                        resource_version,
                    },
                )
            }
            Err(e) => self.refused(e, Phase::List { consistent: true }),
        }
    }

    /// The parameters of a watch (or streaming list) asked for at `now`: short while
    /// catching up after a resume.
    pub(super) fn watch_params(&mut self, initial_events: bool, now: Instant) -> WatchParams {
        self.watch_timeout = self.catch_up.watch_timeout();
        self.watch_started = now;
        self.watch_saw_event = false;
        WatchParams {
            timeout: Some(self.watch_timeout),
            bookmarks: true,
            send_initial_events: initial_events,
            ..WatchParams::default()
        }
    }

    /// A watch silent for longer than this (the server's own timeout, and some grace) is a
    /// dead connection.
    pub(super) fn idle_limit(&self) -> Duration {
        Duration::from_secs(u64::from(self.watch_timeout)) + IDLE_GRACE
    }

    /// `StreamingList`: initial events until the bookmark that ends them, whose
    /// resourceVersion the same stream then watches from. Anything that ends it early breaks
    /// the list: relist consistently.
    pub(super) fn on_streamed<S>(&mut self, stream: S, event: Received) -> Transition<S> {
        match event {
            Ok(Some(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                (Some(Step::Listed(o)), Phase::StreamingList { stream })
            }
            Ok(Some(WatchEvent::Bookmark(b))) => {
                if !b.metadata.annotations.contains_key(INITIAL_EVENTS_END) {
                    return (None, Phase::StreamingList { stream });
                }
                let rv = b.metadata.resource_version;
                if rv.is_empty() {
                    return self.fail(
                        FailureReason::ApiError,
                        "the streaming list ended without a resourceVersion".into(),
                        Phase::List { consistent: true },
                    );
                }
                self.backoff = BACKOFF_MIN;
                (
                    Some(Step::ListDone {
                        resource_version: parse_rv(&rv),
                    }),
                    Phase::Watching { from: rv, stream },
                )
            }
            // The server never sends deletes among initial events; ignore one if it does.
            Ok(Some(WatchEvent::Deleted(_))) => (None, Phase::StreamingList { stream }),
            Ok(Some(WatchEvent::Error(s))) => self.fail(
                FailureReason::of_code(s.code),
                s.message,
                Phase::List { consistent: true },
            ),
            Ok(None) => self.fail(
                FailureReason::Incomplete,
                "the streaming list ended before its initial events did".into(),
                Phase::List { consistent: true },
            ),
            Err((reason, message)) => self.fail(reason, message, Phase::List { consistent: true }),
        }
    }

    /// `Watch`: the watch opened (or not: a 410 lists).
    pub(super) fn on_watch_opened<S>(
        &mut self,
        from: String,
        opened: Result<S, kube::Error>,
    ) -> Transition<S> {
        match opened {
            Ok(stream) => (None, Phase::Watching { from, stream }),
            Err(e) => self.refused_unless_expired(e, Phase::Watch { from }),
        }
    }

    /// `Watching`, an event received at `now`: changes move the resume point to their
    /// resourceVersion, bookmarks report progress; an end or a break watches again from
    /// there (a 410 relists).
    pub(super) fn on_watched<S>(
        &mut self,
        from: String,
        stream: S,
        event: Received,
        now: Instant,
    ) -> Transition<S> {
        if matches!(event, Ok(Some(_))) {
            self.watch_saw_event = true;
        }
        match event {
            Ok(Some(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                self.backoff = BACKOFF_MIN;
                self.catch_up.reached(o.resource_version_number());
                let from = next_from(&o, from);
                (Some(Step::Applied(o)), Phase::Watching { from, stream })
            }
            Ok(Some(WatchEvent::Deleted(o))) => {
                self.backoff = BACKOFF_MIN;
                self.catch_up.reached(o.resource_version_number());
                let from = next_from(&o, from);
                (Some(Step::Deleted(o)), Phase::Watching { from, stream })
            }
            Ok(Some(WatchEvent::Bookmark(b))) => {
                let rv = b.metadata.resource_version;
                if rv.is_empty() {
                    // Watching again from "" would mean "from now": keep where we are.
                    return (None, Phase::Watching { from, stream });
                }
                self.catch_up.reached(parse_rv(&rv));
                let step = parse_rv(&rv).map(Step::Progress);
                (step, Phase::Watching { from: rv, stream })
            }
            Ok(Some(WatchEvent::Error(s))) => {
                let reason = FailureReason::of_code(s.code);
                self.fail(
                    reason,
                    s.message,
                    unless_expired(reason, Phase::Watch { from }),
                )
            }
            // The server ended the watch (its timeout): watch again from where it was.
            Ok(None) => self.watch_ended(from, now),
            Err((reason, message)) => self.fail(reason, message, Phase::Watch { from }),
        }
    }

    /// The server ended the watch: watch again from where it was. One that ended at once
    /// without a single event (a server, or something in between, that will not hold a watch
    /// open) is a failure and waits for the backoff, as client-go's reflector does, instead
    /// of asking again in a tight loop. A catching-up watch that ended at its deadline
    /// without a bookmark is caught up (`CatchUp::ended_without_bookmark`).
    fn watch_ended<S>(&mut self, from: String, now: Instant) -> Transition<S> {
        let ran_for = now.saturating_duration_since(self.watch_started);
        if !self.watch_saw_event && ran_for < SHORT_WATCH {
            return self.fail(
                FailureReason::Connection,
                "the watch ended at once without an event".into(),
                Phase::Watch { from },
            );
        }
        let step = self
            .catch_up
            .ended_without_bookmark(self.watch_timeout, ran_for)
            .map(Step::Progress);
        (step, Phase::Watch { from })
    }

    /// Takes the items' kind from the list's (`SecretList`: `Secret`), as the server spells
    /// it: the items of a real server's list come without one, and field policies (Secret
    /// redaction) match the served kind, not the routes file's spelling.
    fn take_served_kind(&mut self, page: &ObjectList<RawObject>) {
        if let Some(kind) = page
            .types
            .kind
            .strip_suffix("List")
            .filter(|k| !k.is_empty())
        {
            if self.type_meta.1 != kind {
                self.type_meta.1 = kind.to_owned();
            }
        }
    }

    /// The first page's resourceVersion (the list's), when it has one; takes the served kind.
    fn first_page_version(&mut self, page: &ObjectList<RawObject>) -> Option<String> {
        self.take_served_kind(page);
        page.metadata
            .resource_version
            .clone()
            .filter(|rv| !rv.is_empty())
    }
}

#[cfg(test)]
mod tests;
