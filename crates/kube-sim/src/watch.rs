//! Watch streams: newline-delimited JSON events read from the store's history, with bookmarks,
//! timeouts, initial events and the 410 ERROR event for revisions that fell out of the history.

use crate::error::ApiError;
use crate::faults::{ReadFaults, Replica};
use crate::resources::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{too_large, Event, EventType, ListQuery, Obj, Store};
use crate::BookmarkTiming;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A watch request after query parsing.
#[derive(Debug, Default, Clone)]
pub(crate) struct WatchQuery {
    pub ns: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub rv: Option<String>,
    pub rv_match: Option<String>,
    pub send_initial: Option<bool>,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
}

impl WatchQuery {
    fn wants(&self, o: &Obj) -> bool {
        self.ns.as_deref().is_none_or(|ns| *o.ns == *ns) && o.matches(&self.labels, &self.fields)
    }

    /// What a client filtering with this query sees of one write: an object entering the
    /// selection is ADDED, one leaving it is DELETED (as the real server's watch cache does).
    fn translate<'a>(&self, e: &'a Event) -> Option<(&'static str, &'a Obj)> {
        let now = self.wants(&e.obj);
        let before = e.prev.as_deref().is_some_and(|p| self.wants(p));
        let ty = match (e.ty, before, now) {
            (EventType::Deleted, b, n) if b || n => EventType::Deleted,
            (EventType::Deleted, ..) => return None,
            (_, false, true) => EventType::Added,
            (_, true, true) => EventType::Modified,
            (_, true, false) => EventType::Deleted,
            (_, false, false) => return None,
        };
        Some((ty.as_str(), &e.obj))
    }
}

fn frame(out: &mut Vec<u8>, ty: &str, obj: &Obj, api_version: &str) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    obj.render_into(out, Some(api_version));
    out.extend_from_slice(b"}\n");
}

fn bookmark(def: &ResourceDef, rv: u64, initial_end: bool) -> Bytes {
    let annotations = if initial_end {
        ",\"annotations\":{\"k8s.io/initial-events-end\":\"true\"}"
    } else {
        ""
    };
    Bytes::from(format!(
        "{{\"type\":\"BOOKMARK\",\"object\":{{\"kind\":{},\"apiVersion\":{},\"metadata\":{{\"resourceVersion\":\"{rv}\"{annotations}}}}}}}\n",
        serde_json::Value::from(def.kind.as_str()),
        serde_json::Value::from(def.api_version()),
    ))
}

fn error_event(e: &ApiError) -> Bytes {
    let mut s = serde_json::json!({"type": "ERROR", "object": e.status()}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// The real watch cache's heartbeat: a bookmark about once a minute on a watch without an
/// earlier deadline.
const BOOKMARK_HEARTBEAT: Duration = Duration::from_secs(60);
/// How long before a watch's deadline the real watch cache sends its bookmark.
const BOOKMARK_BEFORE_DEADLINE: Duration = Duration::from_secs(2);
/// The real watch cache dispatches due bookmarks on a timer ticking about every second.
const BOOKMARK_TICK: Duration = Duration::from_secs(1);

/// When the real watch cache (v1.36) sends a watcher's next bookmark, counted from `now`: at
/// the deadline minus 2 s if that is within the heartbeat, the next tick once that moment has
/// passed, else a heartbeat from now.
fn real_bookmark_due(
    now: tokio::time::Instant,
    deadline: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let heartbeat = now + BOOKMARK_HEARTBEAT;
    match deadline.map(|d| d.checked_sub(BOOKMARK_BEFORE_DEADLINE).unwrap_or(d)) {
        Some(before) if before <= now => now + BOOKMARK_TICK,
        Some(before) if before < heartbeat => before,
        _ => heartbeat,
    }
}

/// Keeps `open_watches` accurate however the task ends.
struct OpenGuard(Store);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.shared.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a watch starts.
enum Start {
    /// Synthetic ADDED events for the state at a revision first (a streaming list, or a watch
    /// without a revision); `fresh_from`: the revision the replica must have reached.
    Initial {
        at: InitialAt,
        fresh_from: Option<u64>,
    },
    /// Events strictly after a revision.
    After(u64),
    /// Events from now on (sendInitialEvents=false without a revision).
    Now,
}

#[derive(Clone, Copy)]
enum InitialAt {
    /// A consistent read: the current state.
    Current,
    /// The serving replica's watch cache state.
    Cache,
}

/// How a watch request asks for its start, as the real server's watch cache reads it.
fn start_of(q: &WatchQuery) -> Result<Start, ApiError> {
    let asked: Option<u64> = match q.rv.as_deref() {
        None | Some("") => None,
        Some(x) => Some(
            x.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version \"{x}\"")))?,
        ),
    };
    match (q.send_initial, asked) {
        (Some(_), _) if q.rv_match.as_deref() != Some("NotOlderThan") => {
            Err(ApiError::list_options_forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ))
        }
        // a streaming list without a revision is a consistent read
        (Some(true), None) => Ok(Start::Initial {
            at: InitialAt::Current,
            fresh_from: None,
        }),
        (Some(true), Some(0)) => Ok(Start::Initial {
            at: InitialAt::Cache,
            fresh_from: None,
        }),
        (Some(true), Some(x)) => Ok(Start::Initial {
            at: InitialAt::Cache,
            fresh_from: Some(x),
        }),
        (Some(false), None | Some(0)) => Ok(Start::Now),
        // unset/"0" revision: the cache's state as synthetic ADDED events, then changes
        (None, None | Some(0)) => Ok(Start::Initial {
            at: InitialAt::Cache,
            fresh_from: None,
        }),
        (_, Some(x)) => Ok(Start::After(x)),
    }
}

/// Ends when the client goes away, the watches are dropped or the server stops.
async fn closed(
    tx: &mpsc::Sender<Bytes>,
    drop_rx: &mut tokio::sync::watch::Receiver<u64>,
    shutdown: &CancellationToken,
) {
    tokio::select! {
        _ = tx.closed() => {}
        _ = drop_rx.changed() => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Sleeps `d` unless the watch closes first; false when it closed.
async fn pause(
    d: Duration,
    tx: &mpsc::Sender<Bytes>,
    drop_rx: &mut tokio::sync::watch::Receiver<u64>,
    shutdown: &CancellationToken,
) -> bool {
    if d.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = closed(tx, drop_rx, shutdown) => false,
    }
}

/// The revision a resumed watch starts after when it replays `k` events the client saw: just
/// before the k-th last event up to `from` that this watch delivers.
fn replay_start(store: &Store, def: &ResourceDef, q: &WatchQuery, from: u64, k: u64) -> u64 {
    let g = store.read();
    let end = g.history.partition_point(|e| e.rv <= from);
    g.history
        .range(..end)
        .rev()
        .filter(|e| e.res == def.key && q.translate(e).is_some())
        .take(usize::try_from(k).unwrap_or(usize::MAX))
        .last()
        .map_or(from, |e| e.rv - 1)
}

/// Waits until the replica's watch cache reaches `want` (as a real cache blocks up to 3 s);
/// Err(504 Too large resource version) when it does not in time.
async fn wait_fresh(
    store: &Store,
    replica: Replica,
    want: u64,
    wait: Duration,
    rv_rx: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        rv_rx.borrow_and_update();
        let have = store.read().cache_rv(replica.lag);
        if have >= want {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err(too_large(want, have)),
            changed = rv_rx.changed() => if changed.is_err() { return Err(too_large(want, have)) },
        }
    }
}

/// One open watch: what it was asked, where it is served, and its ways to end.
struct WatchTask {
    store: Store,
    def: Arc<ResourceDef>,
    q: WatchQuery,
    replica: Replica,
    /// The fault switches as they were when the watch opened.
    faults: ReadFaults,
    bookmarks: BookmarkTiming,
    tx: mpsc::Sender<Bytes>,
    drop_rx: tokio::sync::watch::Receiver<u64>,
    rv_rx: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
}

impl WatchTask {
    async fn run(mut self, start: Start) {
        if self.faults.watches_end_at_once {
            return;
        }
        if self.faults.stuck_watches {
            closed(&self.tx, &mut self.drop_rx, &self.shutdown).await;
            return;
        }
        let initial = matches!(start, Start::Initial { .. });
        let pos = match self.begin(start).await {
            Ok(Some(pos)) => pos,
            Ok(None) => return,
            Err(e) => {
                let _ = self.tx.send(error_event(&e)).await;
                return;
            }
        };
        // The real watch cache ends initial events (a streaming list, or a watch without a
        // revision) with the initial-events-end BOOKMARK when the client allows bookmarks.
        if initial && self.q.bookmarks && !self.initial_events_end(pos).await {
            return;
        }
        self.follow(pos).await;
    }

    /// The revision events are delivered after, once the initial events (if any) are sent;
    /// Ok(None) when the client went away meanwhile; Err for an ERROR event.
    async fn begin(&mut self, start: Start) -> Result<Option<u64>, ApiError> {
        match start {
            Start::Now => Ok(Some(self.store.read().rv)),
            Start::After(x) => {
                self.store.read().check_watch_rv(x)?;
                Ok(Some(match self.faults.watch_replay {
                    0 => x,
                    k => replay_start(&self.store, &self.def, &self.q, x, k),
                }))
            }
            Start::Initial { at, fresh_from } => {
                if let Some(want) = fresh_from {
                    let wait = self.faults.freshness_wait;
                    wait_fresh(&self.store, self.replica, want, wait, &mut self.rv_rx).await?;
                }
                let initial = {
                    let g = self.store.read();
                    let at = match at {
                        InitialAt::Current => g.rv,
                        InitialAt::Cache => g.cache_rv(self.replica.lag),
                    };
                    let lq = ListQuery {
                        ns: self.q.ns.clone(),
                        labels: self.q.labels.clone(),
                        fields: self.q.fields.clone(),
                        rv: Some(at.to_string()),
                        rv_match: Some("Exact".into()),
                        ..Default::default()
                    };
                    g.list(&self.def, &lq)?
                };
                Ok(self.send_added(&initial.items).await.then_some(initial.rv))
            }
        }
    }

    /// The initial state as ADDED events, stalling half-way when lists stall; false when the
    /// client went away.
    async fn send_added(&mut self, items: &[Arc<Obj>]) -> bool {
        let av = self.def.api_version();
        let (first, second) = items.split_at(items.len() / 2);
        for (part, items) in [first, second].into_iter().enumerate() {
            if part == 1
                && !pause(
                    self.faults.list_stall,
                    &self.tx,
                    &mut self.drop_rx,
                    &self.shutdown,
                )
                .await
            {
                return false;
            }
            for chunk in items.chunks(128) {
                let mut out = Vec::with_capacity(chunk.iter().map(|o| o.body.len() + 96).sum());
                for o in chunk {
                    frame(&mut out, "ADDED", o, &av);
                }
                if self.tx.send(Bytes::from(out)).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// The BOOKMARK that ends a streaming list's initial events, late when bookmarks are
    /// delayed; false when the client went away.
    async fn initial_events_end(&mut self, pos: u64) -> bool {
        let delay = self.store.read_faults().bookmark_delay;
        pause(delay, &self.tx, &mut self.drop_rx, &self.shutdown).await
            && self.tx.send(bookmark(&self.def, pos, true)).await.is_ok()
    }

    /// When the next periodic BOOKMARK is due, counted from `now`, for a watch that closes at
    /// `deadline`.
    fn next_bookmark(
        &self,
        now: tokio::time::Instant,
        deadline: Option<tokio::time::Instant>,
    ) -> tokio::time::Instant {
        let due = match self.bookmarks {
            BookmarkTiming::Every(every) => now + every,
            BookmarkTiming::AsRealServer => real_bookmark_due(now, deadline),
        };
        due + self.store.read_faults().bookmark_delay
    }

    /// Events after `pos` as they happen, with bookmarks, until the watch ends.
    async fn follow(mut self, mut pos: u64) {
        let av = self.def.api_version();
        let deadline = self.q.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut bookmark_at = self.next_bookmark(tokio::time::Instant::now(), deadline);
        // the real watch cache sends a bookmark only when it is newer than what the watcher
        // has (its start, its last event)
        let mut last_sent = pos;
        loop {
            if self.store.read_faults().stuck_watches {
                // a dead stream: nothing more, not even the close at timeoutSeconds
                closed(&self.tx, &mut self.drop_rx, &self.shutdown).await;
                return;
            }
            self.rv_rx.borrow_and_update();
            let read = self.store.read().events_after(pos, &self.def.key);
            match read {
                Err(e) => {
                    let _ = self.tx.send(error_event(&e)).await;
                    return;
                }
                Ok((events, next)) => {
                    let mut out = Vec::new();
                    for e in &events {
                        if let Some((ty, obj)) = self.q.translate(e) {
                            frame(&mut out, ty, obj, &av);
                            last_sent = last_sent.max(e.rv);
                        }
                    }
                    if !out.is_empty() && self.tx.send(Bytes::from(out)).await.is_err() {
                        return;
                    }
                    pos = next;
                }
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = self.drop_rx.changed() => return,
                _ = self.tx.closed() => return,
                _ = async { match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    } } => return,
                changed = self.rv_rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(bookmark_at) => {
                    let newer =
                        pos > last_sent || matches!(self.bookmarks, BookmarkTiming::Every(_));
                    if self.q.bookmarks
                        && newer
                        && !self.store.read_faults().stuck_watches
                        && self.tx.send(bookmark(&self.def, pos, false)).await.is_err()
                    {
                        return;
                    }
                    bookmark_at = self.next_bookmark(tokio::time::Instant::now(), deadline);
                }
            }
        }
    }
}

/// Starts a watch; the receiver yields the chunks of the response body. Parameter errors come
/// back as Err (an HTTP error); a too-old or not-yet-reached revision is an ERROR event inside a
/// 200 stream, as the real server's watch cache answers.
pub(crate) fn start(
    store: &Store,
    def: Arc<ResourceDef>,
    q: WatchQuery,
    replica: Replica,
    bookmarks: BookmarkTiming,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let start = start_of(&q)?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let task = WatchTask {
        store: store.clone(),
        def,
        q,
        replica,
        faults: store.read_faults(),
        bookmarks,
        tx,
        drop_rx: store.shared.drop_tx.subscribe(),
        rv_rx: store.shared.rv_tx.subscribe(),
        shutdown,
    };
    store.shared.open_watches.fetch_add(1, Ordering::SeqCst);
    store.shared.watches_started.fetch_add(1, Ordering::SeqCst);
    let guard = OpenGuard(store.clone());
    tokio::spawn(async move {
        let _guard = guard;
        task.run(start).await;
    });
    Ok(rx)
}
