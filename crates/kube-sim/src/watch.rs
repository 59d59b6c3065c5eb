//! Watch streams: newline-delimited JSON events read from the store's history, with bookmarks,
//! timeouts, initial events and the 410 ERROR event for revisions that fell out of the history.

use crate::error::ApiError;
use crate::resources::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Event, EventType, ListQuery, Obj, Store};
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
        "{{\"type\":\"BOOKMARK\",\"object\":{{\"kind\":{},\"apiVersion\":{},\"metadata\":{{\"resourceVersion\":\"{rv}\",\"creationTimestamp\":null{annotations}}}}}}}\n",
        serde_json::Value::from(def.kind.as_str()),
        serde_json::Value::from(def.api_version()),
    ))
}

fn error_event(e: &ApiError) -> Bytes {
    let mut s = serde_json::json!({"type": "ERROR", "object": e.status()}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Keeps `open_watches` accurate however the task ends.
struct OpenGuard(Store);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.shared.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts a watch; the receiver yields the chunks of the response body. Parameter errors come
/// back as Err (an HTTP error); a too-old revision is an ERROR event inside a 200 stream.
pub(crate) fn start(
    store: &Store,
    def: Arc<ResourceDef>,
    q: WatchQuery,
    bookmark_interval: Duration,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let mut drop_rx = store.shared.drop_tx.subscribe();
    let mut rv_rx = store.shared.rv_tx.subscribe();
    let asked: Option<u64> = match q.rv.as_deref() {
        None | Some("") | Some("0") => None,
        Some(x) => Some(
            x.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version \"{x}\"")))?,
        ),
    };
    let send_initial = match q.send_initial {
        Some(true) => {
            if q.rv_match.as_deref() != Some("NotOlderThan") {
                return Err(ApiError::invalid(
                    "meta.k8s.io",
                    "ListOptions",
                    "",
                    "sendInitialEvents",
                    "Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan",
                ));
            }
            true
        }
        Some(false) => false,
        // Unset/"0" revision: the watch starts with the current state as synthetic ADDED events.
        None => asked.is_none(),
    };
    let (initial, mut pos, expired) = {
        let g = store.read();
        if send_initial {
            if let Some(x) = asked.filter(|x| *x > g.rv) {
                return Err(ApiError::new(
                    504,
                    "Timeout",
                    format!("Too large resource version: {x}, current: {}", g.rv),
                ));
            }
            let lq = ListQuery {
                ns: q.ns.clone(),
                labels: q.labels.clone(),
                fields: q.fields.clone(),
                ..Default::default()
            };
            let r = g.list(&def, &lq)?;
            (r.items, r.rv, None)
        } else {
            match asked {
                None => (Vec::new(), g.rv, None),
                Some(x) => (Vec::new(), x, g.check_watch_rv(x).err()),
            }
        }
    };
    let initial_end = q.send_initial == Some(true);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    store.shared.open_watches.fetch_add(1, Ordering::SeqCst);
    store.shared.watches_started.fetch_add(1, Ordering::SeqCst);
    let guard = OpenGuard(store.clone());
    let store = store.clone();
    tokio::spawn(async move {
        let _guard = guard;
        if let Some(e) = expired {
            let _ = tx.send(error_event(&e)).await;
            return;
        }
        let av = def.api_version();
        for chunk in initial.chunks(128) {
            let mut out = Vec::with_capacity(chunk.iter().map(|o| o.body.len() + 96).sum());
            for o in chunk {
                frame(&mut out, "ADDED", o, &av);
            }
            if tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
        }
        drop(initial);
        if initial_end && tx.send(bookmark(&def, pos, true)).await.is_err() {
            return;
        }
        let deadline = q.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + bookmark_interval,
            bookmark_interval,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            rv_rx.borrow_and_update();
            let read = store.read().events_after(pos, &def.key);
            match read {
                Err(e) => {
                    let _ = tx.send(error_event(&e)).await;
                    return;
                }
                Ok((events, next)) => {
                    let mut out = Vec::new();
                    for e in &events {
                        if let Some((ty, obj)) = q.translate(e) {
                            frame(&mut out, ty, obj, &av);
                        }
                    }
                    if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                        return;
                    }
                    pos = next;
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = drop_rx.changed() => return,
                _ = tx.closed() => return,
                _ = async { match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    } } => return,
                changed = rv_rx.changed() => if changed.is_err() { return },
                _ = tick.tick() => {
                    if q.bookmarks && tx.send(bookmark(&def, pos, false)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(rx)
}
