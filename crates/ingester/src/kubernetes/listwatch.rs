//! List-then-watch over one kind, as a `Stream` of steps: the loop of client-go's reflector,
//! written here because a correct sweep needs what kube-runtime's `watcher` keeps to itself:
//! the resourceVersion at which a list was taken (a row newer than it must survive the
//! sweep), whether a list ended or broke half-way, and a watch started from a stored resume
//! point. It decides how to go on after each failure (re-watch from where it was, or relist)
//! and backs off; the consumer (`watch.rs`) only turns steps into rows.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::info;

use crate::row::object::RawObject;

/// Server-side watch timeout (`timeoutSeconds`): the server ends the watch after it and the
/// loop re-watches from where it was.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// `timeoutSeconds` of the watches of a resumed scope until the server has confirmed (by an
/// event or a bookmark) that it is past the collection's resourceVersion read at resume. A
/// real API server's watch cache sends the first BOOKMARK of a quiet watch only 2 s before
/// the watch's deadline, or after about a minute: with the normal timeout a quiet scope
/// would keep readiness waiting for a minute after every restart. With this one the
/// bookmark comes after about a second, and the short watches stop once caught up.
const CATCH_UP_TIMEOUT_SECS: u32 = 3;
/// A watch that ends sooner than this without an event is a failure (backoff), not a
/// server timeout.
const SHORT_WATCH: Duration = Duration::from_secs(1);
/// How much earlier than its deadline, by our clock, the server may end a watch.
const CLOCK_SLACK: Duration = Duration::from_millis(500);
/// A watch that sends nothing (not even the end of the stream) this long after the server
/// should have ended it is treated as a dead connection.
const IDLE_GRACE: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The annotation on the bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

pub type ObjectStream = BoxStream<'static, Result<WatchEvent<RawObject>, kube::Error>>;

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

    fn of_code(code: u16) -> FailureReason {
        match code {
            410 => FailureReason::Expired,
            404 => FailureReason::NotFound,
            403 => FailureReason::Forbidden,
            _ => FailureReason::ApiError,
        }
    }

    fn of_error(e: &kube::Error) -> FailureReason {
        match e {
            kube::Error::Api(s) => FailureReason::of_code(s.code),
            _ => FailureReason::Connection,
        }
    }
}

/// How the loop starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    List,
    /// Watch from a stored resume point; a 410 falls back to a list.
    Resume(i64),
    /// First read the collection's current resourceVersion: below `newest` (the newest
    /// resourceVersion stored for the scope) it says `Step::HistoryBehind` and lists
    /// consistently; else it watches from `resume` when set (as `Resume`), or lists.
    Checked {
        resume: Option<i64>,
        newest: i64,
    },
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// Lists as streaming lists (`sendInitialEvents`); falls back to pages when refused.
    pub streaming: bool,
    pub page_size: u32,
    /// Bounds the lists running at once (across watches).
    pub list_permits: Option<Arc<Semaphore>>,
    /// The `apiVersion` and `kind` of the watched resource: a real API server leaves them out
    /// of the items of a list of a built-in kind (they are on the list), and a stored object
    /// must carry them like the watch's objects do.
    pub type_meta: (String, String),
}

enum State {
    /// Ask for the collection's current resourceVersion; unless it is below `newest`, watch
    /// from `from` (or list when there is none).
    Resume {
        from: Option<i64>,
        newest: i64,
    },
    /// Start a list. `consistent`: a streaming list from the current state (after 410, or
    /// when a list broke); else from whatever state the watch cache has (`resourceVersion=0`:
    /// possibly older, which the sweep's guard and the watch that follows make safe). Paged
    /// lists are always consistent (see `start_list`).
    List {
        consistent: bool,
    },
    Paging {
        items: VecDeque<RawObject>,
        continue_token: Option<String>,
        resource_version: String,
    },
    StreamingList {
        stream: ObjectStream,
    },
    Watch {
        from: String,
    },
    Watching {
        from: String,
        stream: ObjectStream,
    },
    /// Emit `step` (if any), sleep, then go to `next`.
    Backoff {
        next: Box<State>,
    },
}

struct Machine {
    api: Api<RawObject>,
    settings: Settings,
    backoff: Duration,
    /// Resumed, and the server has not yet shown it is past this resourceVersion (the
    /// collection's when the watch resumed): watches are short until it has.
    catch_up_to: Option<i64>,
    /// `timeoutSeconds` of the watch in progress, and when it was asked for.
    watch_timeout: u32,
    watch_started: std::time::Instant,
    /// The watch in progress has delivered an event (a bookmark counts).
    watch_saw_event: bool,
}

/// The list-and-watch loop as a stream of steps (cancel-safe: drop it to stop).
pub fn list_watch(
    api: Api<RawObject>,
    settings: Settings,
    start: Start,
) -> BoxStream<'static, Step> {
    let state = match start {
        Start::List => State::List { consistent: false },
        Start::Resume(from) => State::Resume {
            from: Some(from),
            newest: from,
        },
        Start::Checked { resume, newest } => State::Resume {
            from: resume,
            newest: newest.max(resume.unwrap_or(newest)),
        },
    };
    let machine = Machine {
        api,
        settings,
        backoff: BACKOFF_MIN,
        catch_up_to: None,
        watch_timeout: WATCH_TIMEOUT_SECS,
        watch_started: std::time::Instant::now(),
        watch_saw_event: false,
    };
    futures::stream::unfold((machine, state), |(mut m, mut state)| async move {
        loop {
            let (step, next) = m.step(state).await;
            state = next;
            if let Some(step) = step {
                return Some((step, (m, state)));
            }
        }
    })
    .boxed()
}

fn parse_rv(rv: &str) -> Option<i64> {
    rv.parse().ok()
}

/// After a failed request: a 410 means the server no longer has the history to go on from,
/// so list again; anything else retries `same` after the backoff.
fn unless_expired(reason: FailureReason, same: State) -> State {
    if reason == FailureReason::Expired {
        State::List { consistent: true }
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
    fn fail(
        &mut self,
        reason: FailureReason,
        message: String,
        next: State,
    ) -> (Option<Step>, State) {
        let relist = matches!(next, State::List { .. });
        (
            Some(Step::Failed(Failure {
                reason,
                message,
                relist,
            })),
            State::Backoff {
                next: Box::new(next),
            },
        )
    }

    /// One transition of the loop: each state's decision lives in its own method.
    async fn step(&mut self, state: State) -> (Option<Step>, State) {
        match state {
            State::Backoff { next } => {
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                (None, *next)
            }
            State::Resume { from, newest } => self.resume(from, newest).await,
            State::List { consistent } => self.start_list(consistent).await,
            State::Paging {
                items,
                continue_token,
                resource_version,
            } => {
                self.next_listed(items, continue_token, resource_version)
                    .await
            }
            State::StreamingList { stream } => self.next_streamed(stream).await,
            State::Watch { from } => match self.start_watch(&from, false).await {
                Ok(stream) => (None, State::Watching { from, stream }),
                Err(e) => {
                    let reason = FailureReason::of_error(&e);
                    self.fail(
                        reason,
                        e.to_string(),
                        unless_expired(reason, State::Watch { from }),
                    )
                }
            },
            State::Watching { from, stream } => self.next_watched(from, stream).await,
        }
    }

    /// Watch on from a stored resume point, after reading where the collection is now: the
    /// backlog the watch replays ends there (readiness waits for it). That read is
    /// consistent (no resourceVersion): within one history no stored resourceVersion can be
    /// above it, so one that is proves the server's history is another (`HistoryBehind`).
    async fn resume(&mut self, from: Option<i64>, newest: i64) -> (Option<Step>, State) {
        let current = match self.api.list(&ListParams::default().limit(1)).await {
            Ok(list) => list.metadata.resource_version.as_deref().and_then(parse_rv),
            Err(e) => {
                let reason = FailureReason::of_error(&e);
                return self.fail(reason, e.to_string(), State::Resume { from, newest });
            }
        };
        if let Some(current) = current.filter(|c| *c < newest) {
            return (
                Some(Step::HistoryBehind { newest, current }),
                State::List { consistent: true },
            );
        }
        let Some(from) = from else {
            return (None, State::List { consistent: false });
        };
        self.catch_up_to = current.filter(|c| *c > from);
        match self.start_watch(&from.to_string(), false).await {
            Ok(stream) => (
                Some(Step::Resumed { from, current }),
                State::Watching {
                    from: from.to_string(),
                    stream,
                },
            ),
            Err(e) => {
                let reason = FailureReason::of_error(&e);
                self.fail(
                    reason,
                    e.to_string(),
                    unless_expired(
                        reason,
                        State::Resume {
                            from: Some(from),
                            newest,
                        },
                    ),
                )
            }
        }
    }

    /// A paged list: hand out the page's items, then fetch the next page, then watch from the
    /// list's resourceVersion. A page that fails breaks the list: relist consistently.
    async fn next_listed(
        &mut self,
        mut items: VecDeque<RawObject>,
        continue_token: Option<String>,
        resource_version: String,
    ) -> (Option<Step>, State) {
        if let Some(mut obj) = items.pop_front() {
            if obj.api_version.is_none() {
                let (api_version, kind) = &self.settings.type_meta;
                obj.set_type_meta(api_version, kind);
            }
            return (
                Some(Step::Listed(obj)),
                State::Paging {
                    items,
                    continue_token,
                    resource_version,
                },
            );
        }
        let Some(token) = continue_token else {
            self.backoff = BACKOFF_MIN;
            return (
                Some(Step::ListDone {
                    resource_version: parse_rv(&resource_version),
                }),
                State::Watch {
                    from: resource_version,
                },
            );
        };
        let params = ListParams {
            limit: Some(self.settings.page_size),
            continue_token: Some(token),
            ..ListParams::default()
        };
        match self.api.list(&params).await {
            Ok(page) => {
                self.take_served_kind(&page);
                (
                    None,
                    State::Paging {
                        items: page.items.into(),
                        continue_token: page.metadata.continue_.filter(|c| !c.is_empty()),
                        resource_version,
                    },
                )
            }
            Err(e) => {
                let reason = FailureReason::of_error(&e);
                self.fail(reason, e.to_string(), State::List { consistent: true })
            }
        }
    }

    /// A streaming list: initial events until the bookmark that ends them, whose
    /// resourceVersion the same stream then watches from. Anything that ends it early breaks
    /// the list: relist consistently.
    async fn next_streamed(&mut self, mut stream: ObjectStream) -> (Option<Step>, State) {
        match self.next_event(&mut stream).await {
            Ok(Some(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                (Some(Step::Listed(o)), State::StreamingList { stream })
            }
            Ok(Some(WatchEvent::Bookmark(b))) => {
                if !b.metadata.annotations.contains_key(INITIAL_EVENTS_END) {
                    return (None, State::StreamingList { stream });
                }
                let rv = b.metadata.resource_version;
                if rv.is_empty() {
                    return self.fail(
                        FailureReason::ApiError,
                        "the streaming list ended without a resourceVersion".into(),
                        State::List { consistent: true },
                    );
                }
                self.backoff = BACKOFF_MIN;
                (
                    Some(Step::ListDone {
                        resource_version: parse_rv(&rv),
                    }),
                    State::Watching { from: rv, stream },
                )
            }
            // The server never sends deletes among initial events; ignore one if it does.
            Ok(Some(WatchEvent::Deleted(_))) => (None, State::StreamingList { stream }),
            Ok(Some(WatchEvent::Error(s))) => self.fail(
                FailureReason::of_code(s.code),
                s.message,
                State::List { consistent: true },
            ),
            Ok(None) => self.fail(
                FailureReason::Incomplete,
                "the streaming list ended before its initial events did".into(),
                State::List { consistent: true },
            ),
            Err((reason, message)) => self.fail(reason, message, State::List { consistent: true }),
        }
    }

    /// A watch: changes move the resume point to their resourceVersion, bookmarks report
    /// progress; an end or a break watches again from there (a 410 relists).
    async fn next_watched(
        &mut self,
        from: String,
        mut stream: ObjectStream,
    ) -> (Option<Step>, State) {
        let event = self.next_event(&mut stream).await;
        if matches!(event, Ok(Some(_))) {
            self.watch_saw_event = true;
        }
        match event {
            Ok(Some(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                self.backoff = BACKOFF_MIN;
                self.reached(o.resource_version_number());
                let from = next_from(&o, from);
                (Some(Step::Applied(o)), State::Watching { from, stream })
            }
            Ok(Some(WatchEvent::Deleted(o))) => {
                self.backoff = BACKOFF_MIN;
                self.reached(o.resource_version_number());
                let from = next_from(&o, from);
                (Some(Step::Deleted(o)), State::Watching { from, stream })
            }
            Ok(Some(WatchEvent::Bookmark(b))) => {
                let rv = b.metadata.resource_version;
                if rv.is_empty() {
                    // Watching again from "" would mean "from now": keep where we are.
                    return (None, State::Watching { from, stream });
                }
                self.reached(parse_rv(&rv));
                let step = parse_rv(&rv).map(Step::Progress);
                (step, State::Watching { from: rv, stream })
            }
            Ok(Some(WatchEvent::Error(s))) => {
                let reason = FailureReason::of_code(s.code);
                self.fail(
                    reason,
                    s.message,
                    unless_expired(reason, State::Watch { from }),
                )
            }
            // The server ended the watch (its timeout): watch again from where it was.
            Ok(None) => self.watch_ended(from),
            Err((reason, message)) => self.fail(reason, message, State::Watch { from }),
        }
    }

    /// The server ended the watch: watch again from where it was. One that ended at once
    /// without a single event (a server, or something in between, that will not hold a watch
    /// open) is a failure and waits for the backoff, as client-go's reflector does, instead
    /// of asking again in a tight loop.
    fn watch_ended(&mut self, from: String) -> (Option<Step>, State) {
        if !self.watch_saw_event && self.watch_started.elapsed() < SHORT_WATCH {
            return self.fail(
                FailureReason::Connection,
                "the watch ended at once without an event".into(),
                State::Watch { from },
            );
        }
        (self.ended_without_bookmark(), State::Watch { from })
    }

    /// A catching-up watch the server ended at its deadline without a bookmark. A real API
    /// server's watch cache sends a BOOKMARK 2 s before a watch's deadline whenever it holds
    /// a newer resourceVersion than the last event the watch has processed, events it
    /// filtered out (other namespaces) included; none means the watch has processed
    /// everything the cache had, which is at least the collection's resourceVersion read
    /// (consistently) before the watch started. Without this a scope whose newest changes
    /// were all filtered out would wait for the next change of its kind anywhere in the
    /// cluster. A watch that ended before its deadline (a server going away) proves nothing.
    fn ended_without_bookmark(&mut self) -> Option<Step> {
        let deadline = Duration::from_secs(u64::from(CATCH_UP_TIMEOUT_SECS));
        if self.watch_timeout != CATCH_UP_TIMEOUT_SECS
            || self.watch_started.elapsed() + CLOCK_SLACK < deadline
        {
            return None;
        }
        self.catch_up_to.take().map(Step::Progress)
    }

    /// Takes the items' kind from the list's (`SecretList`: `Secret`), as the server spells
    /// it: the items of a real server's list come without one, and field policies (Secret
    /// redaction) match the served kind, not the routes file's spelling.
    fn take_served_kind(&mut self, page: &kube::core::ObjectList<RawObject>) {
        if let Some(kind) = page
            .types
            .kind
            .strip_suffix("List")
            .filter(|k| !k.is_empty())
        {
            if self.settings.type_meta.1 != kind {
                self.settings.type_meta.1 = kind.to_owned();
            }
        }
    }

    /// The first page's resourceVersion (the list's), when it has one; takes the served kind.
    fn first_page_version(&mut self, page: &kube::core::ObjectList<RawObject>) -> Option<String> {
        self.take_served_kind(page);
        page.metadata
            .resource_version
            .clone()
            .filter(|rv| !rv.is_empty())
    }

    /// The server has shown every change up to `rv`: a resumed scope may be caught up.
    fn reached(&mut self, rv: Option<i64>) {
        if self
            .catch_up_to
            .is_some_and(|target| rv.is_some_and(|rv| rv >= target))
        {
            self.catch_up_to = None;
        }
    }

    async fn start_list(&mut self, consistent: bool) -> (Option<Step>, State) {
        // A list shows everything up to its own resourceVersion: no catching up after it.
        self.catch_up_to = None;
        let permit = match &self.settings.list_permits {
            Some(permits) => permits.clone().acquire_owned().await.ok(),
            None => None,
        };
        let rv = if consistent { "" } else { "0" };
        if self.settings.streaming {
            match self.start_watch(rv, true).await {
                Ok(stream) => {
                    return (
                        Some(Step::ListStarted { permit }),
                        State::StreamingList { stream },
                    )
                }
                Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                    info!(resource = %self.api.resource_url(), "the API server does not serve streaming lists (WatchList feature gate off); using paged lists");
                    self.settings.streaming = false;
                }
                Err(e) => {
                    let reason = FailureReason::of_error(&e);
                    return self.fail(reason, e.to_string(), State::List { consistent });
                }
            }
        }
        // Pages are always consistent reads (no resourceVersion): a real API server answers
        // `resourceVersion=0` from its watch cache whole, ignoring `limit` (one body of every
        // object, built at once, restarted from zero when the connection breaks), while a
        // list without one is paged with continue tokens (served from the watch cache's
        // snapshots since Kubernetes 1.34, from etcd before). Measured in docs/benchmarks.md.
        let params = ListParams {
            limit: Some(self.settings.page_size),
            ..ListParams::default()
        };
        match self.api.list(&params).await {
            Ok(page) => match self.first_page_version(&page) {
                Some(resource_version) => (
                    Some(Step::ListStarted { permit }),
                    State::Paging {
                        items: page.items.into(),
                        continue_token: page.metadata.continue_.filter(|c| !c.is_empty()),
                        resource_version,
                    },
                ),
                None => self.fail(
                    FailureReason::ApiError,
                    "the list carried no resourceVersion".into(),
                    State::List { consistent: true },
                ),
            },
            Err(e) => {
                let reason = FailureReason::of_error(&e);
                self.fail(reason, e.to_string(), State::List { consistent })
            }
        }
    }

    async fn start_watch(
        &mut self,
        from: &str,
        initial_events: bool,
    ) -> Result<ObjectStream, kube::Error> {
        self.watch_timeout = if self.catch_up_to.is_some() {
            CATCH_UP_TIMEOUT_SECS
        } else {
            WATCH_TIMEOUT_SECS
        };
        self.watch_started = std::time::Instant::now();
        self.watch_saw_event = false;
        let params = WatchParams {
            timeout: Some(self.watch_timeout),
            bookmarks: true,
            send_initial_events: initial_events,
            ..WatchParams::default()
        };
        Ok(self.api.watch(&params, from).await?.boxed())
    }

    /// The next watch event, or why there is none: a watch silent for longer than the
    /// server's own timeout is a dead connection.
    async fn next_event(
        &self,
        stream: &mut ObjectStream,
    ) -> Result<Option<WatchEvent<RawObject>>, (FailureReason, String)> {
        let idle = Duration::from_secs(u64::from(self.watch_timeout)) + IDLE_GRACE;
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => Err((
                FailureReason::Connection,
                format!("the watch sent nothing for {}s", idle.as_secs()),
            )),
            Ok(None) => Ok(None),
            Ok(Some(Ok(event))) => Ok(Some(event)),
            Ok(Some(Err(e))) => Err((FailureReason::of_error(&e), e.to_string())),
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
