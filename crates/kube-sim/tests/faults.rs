//! The faults of real API servers: lagging watch caches, several replicas behind one address,
//! replayed events, late bookmarks, stalled lists, stuck watches, and several faults at once.
//! Each is driven over its `/_sim` endpoint or its `Store` method and checked by what a client
//! sees on the wire.

mod common;

use common::*;
use kube_sim::{FaultSet, KubeSim, ReplicaPick, SimConfig};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn get(sim: &KubeSim, path: &str) -> (u16, Value) {
    let r = http()
        .get(format!("{}{path}", sim.base_url()))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

async fn sim_post(sim: &KubeSim, path: &str) -> Value {
    let r = http()
        .post(format!("{}/_sim/{path}", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "POST /_sim/{path}");
    r.json().await.unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {list}"))
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn list_rv(list: &Value) -> u64 {
    list["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {list}"))
}

fn event_rv(e: &Value) -> u64 {
    e["object"]["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {e}"))
}

/// The Status of a 504 "Too large resource version" as the real watch cache answers it.
fn assert_too_large(s: &Value, asked: u64, have: u64) {
    assert_eq!(s["kind"], "Status", "{s}");
    assert_eq!(s["code"], 504, "{s}");
    assert_eq!(s["reason"], "Timeout", "{s}");
    assert_eq!(
        s["message"],
        format!("Timeout: Too large resource version: {asked}, current: {have}"),
        "{s}"
    );
    assert_eq!(
        s["details"]["causes"][0]["reason"], "ResourceVersionTooLarge",
        "{s}"
    );
}

/// An open watch as a stream of parsed events.
struct Watch {
    buf: Vec<u8>,
    body: reqwest::Response,
}

impl Watch {
    async fn open(sim: &KubeSim, path: &str) -> Watch {
        let r = http()
            .get(format!("{}{path}", sim.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        Watch {
            buf: Vec::new(),
            body: r,
        }
    }

    /// Next event within `within`: Ok(Some) an event, Ok(None) the server closed the stream,
    /// Err(()) nothing arrived in time.
    async fn next_within(&mut self, within: Duration) -> Result<Option<Value>, ()> {
        let end = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(serde_json::from_slice(&line).expect("event is JSON")));
            }
            match tokio::time::timeout_at(end, self.body.chunk()).await {
                Err(_) => return Err(()),
                Ok(Ok(Some(b))) => self.buf.extend_from_slice(&b),
                Ok(_) => return Ok(None),
            }
        }
    }

    async fn next(&mut self) -> Option<Value> {
        self.next_within(DEADLINE).await.expect("watch stalled")
    }

    async fn next_non_bookmark(&mut self) -> Option<Value> {
        loop {
            let e = self.next().await?;
            if e["type"] != "BOOKMARK" {
                return Some(e);
            }
        }
    }

    /// (type, name) of the next `n` non-bookmark events.
    async fn take(&mut self, n: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let e = self.next_non_bookmark().await.expect("stream open");
            out.push((
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ));
        }
        out
    }
}

fn added(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| ("ADDED".to_string(), n.to_string()))
        .collect()
}

/// A server holding only `n` configmaps, at revisions 1..n (no kube-system: these tests
/// name revisions).
async fn with_configmaps(n: usize) -> KubeSim {
    let sim = start_with(SimConfig {
        bookmarks: kube_sim::BookmarkTiming::Every(Duration::from_millis(200)),
        system_namespace: false,
        ..Default::default()
    })
    .await;
    let s = sim.store();
    for i in 0..n {
        s.create(cm("a", &format!("c{i}"), json!({"i": i.to_string()})))
            .unwrap();
    }
    assert_eq!(s.resource_version(), n as u64);
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watch_cache_serves_an_older_snapshot_and_the_watch_catches_up() {
    let sim = with_configmaps(5).await; // c0..c4 at revisions 1..5
    let s = sim.store();
    let f = sim_post(&sim, "watch-cache-lag?events=3").await;
    assert_eq!(f["replicaLags"], json!([3]));
    assert_eq!(s.stats().replica_resource_versions, [2]);

    // resourceVersion=0: the cache's snapshot, 3 events old, with its own revision
    let (code, l) = get(&sim, "/api/v1/configmaps?resourceVersion=0").await;
    assert_eq!(code, 200, "{l}");
    assert_eq!(
        (list_rv(&l), names(&l)),
        (2, vec!["c0".into(), "c1".into()])
    );
    // a watch from that revision delivers everything after it: the client converges
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&resourceVersion=2").await;
    assert_eq!(w.take(3).await, added(&["c2", "c3", "c4"]));

    // no revision: a consistent read, the current state
    let (_, l) = get(&sim, "/api/v1/configmaps").await;
    assert_eq!((list_rv(&l), names(&l).len()), (5, 5));
    // NotOlderThan X: never older than X
    let (_, l) = get(
        &sim,
        "/api/v1/configmaps?resourceVersion=1&resourceVersionMatch=NotOlderThan",
    )
    .await;
    assert_eq!(list_rv(&l), 2);
    // a paged list is read from storage: current
    let (_, l) = get(&sim, "/api/v1/configmaps?resourceVersion=4&limit=10").await;
    assert_eq!(list_rv(&l), 5);
    // X beyond the cache: the cache waits for it; writes bring it there
    let t = Instant::now();
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            s.create(cm("a", "c5", json!({}))).unwrap();
            s.create(cm("a", "c6", json!({}))).unwrap();
        })
    };
    let (code, l) = get(
        &sim,
        "/api/v1/configmaps?resourceVersion=4&resourceVersionMatch=NotOlderThan",
    )
    .await;
    writer.await.unwrap();
    assert_eq!(code, 200, "{l}");
    assert_eq!(list_rv(&l), 4, "the cache (3 behind 7) has just reached 4");
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(names(&l), ["c0", "c1", "c2", "c3"]);

    // streaming list with resourceVersion=0: the cache's snapshot, the initial-events-end
    // bookmark at its revision, then every later event
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0&allowWatchBookmarks=true").await;
    assert_eq!(w.take(4).await, added(&["c0", "c1", "c2", "c3"]));
    let b = w.next().await.unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(
        b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(event_rv(&b), 4);
    assert_eq!(w.take(3).await, added(&["c4", "c5", "c6"]));
    // streaming list without a revision: consistent, current
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true").await;
    assert_eq!(w.take(7).await.len(), 7);
    let b = w.next().await.unwrap();
    assert_eq!((b["type"].as_str(), event_rv(&b)), (Some("BOOKMARK"), 7));

    // the library method does the same; 0 heals
    s.set_watch_cache_lag(1);
    let (_, l) = get(&sim, "/api/v1/configmaps?resourceVersion=0").await;
    assert_eq!(list_rv(&l), 6);
    s.set_watch_cache_lag(0);
    let (_, l) = get(&sim, "/api/v1/configmaps?resourceVersion=0").await;
    assert_eq!(list_rv(&l), 7);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_the_client_wait_then_answer_too_large() {
    let sim = with_configmaps(10).await;
    let s = sim.store();
    sim_post(&sim, "replicas?lags=0,6&pick=round-robin").await;
    let f = sim_post(&sim, "freshness-wait?ms=300").await;
    assert_eq!(f["freshnessWaitMs"], 300);
    assert_eq!(s.stats().replica_resource_versions, [10, 4]);

    // round robin: replica 0 (current), then replica 1 (6 events behind), ...
    let mut rvs = Vec::new();
    for _ in 0..4 {
        let (_, l) = get(&sim, "/api/v1/configmaps?resourceVersion=0").await;
        rvs.push(list_rv(&l));
    }
    assert_eq!(rvs, [10, 4, 10, 4]);

    // the client saw revision 10 on replica 0; its next list lands on replica 1
    let (_, l) = get(&sim, "/api/v1/configmaps?resourceVersion=10").await;
    assert_eq!(list_rv(&l), 10);
    let t = Instant::now();
    let (code, st) = get(&sim, "/api/v1/configmaps?resourceVersion=10").await;
    assert_eq!(code, 504);
    assert_too_large(&st, 10, 4);
    assert!(t.elapsed() >= Duration::from_millis(300), "waits first");

    // a streaming list from 10 on replica 1: the same Status, as an ERROR event in a 200 stream
    get(&sim, "/api/v1/configmaps?resourceVersion=0").await; // replica 0
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=10").await;
    let e = w.next().await.unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_too_large(&e["object"], 10, 4);
    assert!(
        w.next().await.is_none(),
        "the stream closes after the error"
    );

    // a plain watch from 10 on a lagging replica is accepted and delivers what comes after 10
    get(&sim, "/api/v1/configmaps?resourceVersion=0").await; // replica 0
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&resourceVersion=10").await;
    s.create(cm("a", "late", json!({}))).unwrap();
    assert_eq!(w.take(1).await, added(&["late"]));

    // random choice, seeded: the same seed spreads requests the same way
    let spread = |seed: u64| {
        let sim = &sim;
        async move {
            sim.store()
                .set_replicas(&[0, 3, 7], ReplicaPick::Random { seed });
            let mut rvs = Vec::new();
            for _ in 0..12 {
                let (_, l) = get(sim, "/api/v1/configmaps?resourceVersion=0").await;
                rvs.push(list_rv(&l));
            }
            rvs
        }
    };
    let a = spread(7).await;
    assert_eq!(a, spread(7).await);
    let mut distinct = a.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 2, "{a:?}");
    assert!(distinct.iter().all(|rv| [11, 8, 4].contains(rv)), "{a:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_watch_replays_events_the_client_saw() {
    let sim = with_configmaps(5).await;
    let s = sim.store();
    s.merge_patch(
        "v1",
        "ConfigMap",
        Some("a"),
        "c0",
        &json!({"metadata": {"labels": {"x": "y"}}}),
    )
    .unwrap(); // revision 6
    let f = sim_post(&sim, "watch-replay?events=2").await;
    assert_eq!(f["watchReplay"], 2);
    // resuming from 6 re-delivers the last two events up to 6, in order, then new ones
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&resourceVersion=6").await;
    let seen: Vec<(String, String, u64)> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let e = w.next_non_bookmark().await.unwrap();
            v.push((
                e["type"].as_str().unwrap().into(),
                e["object"]["metadata"]["name"].as_str().unwrap().into(),
                event_rv(&e),
            ));
        }
        v
    };
    assert_eq!(
        seen,
        [
            ("ADDED".into(), "c4".into(), 5),
            ("MODIFIED".into(), "c0".into(), 6)
        ]
    );
    s.create(cm("a", "new", json!({}))).unwrap();
    assert_eq!(w.take(1).await, added(&["new"]));
    // only events the watch would deliver count: with a selector, c0's change is the last one
    s.set_watch_replay(1);
    let mut w = Watch::open(
        &sim,
        "/api/v1/configmaps?watch=1&resourceVersion=7&labelSelector=x%3Dy",
    )
    .await;
    let e = w.next_non_bookmark().await.unwrap();
    assert_eq!((e["type"].as_str(), event_rv(&e)), (Some("ADDED"), 6));
    s.set_watch_replay(0);
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&resourceVersion=6").await;
    assert_eq!(w.take(1).await, added(&["new"]));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_bookmarks_never_go_back() {
    let sim = with_configmaps(2).await; // bookmarks every 200 ms (common::start)
    let s = sim.store();
    let f = sim_post(&sim, "bookmark-delay?ms=1000").await;
    assert_eq!(f["bookmarkDelayMs"], 1000);
    let t = Instant::now();
    let mut w = Watch::open(
        &sim,
        "/api/v1/configmaps?watch=1&resourceVersion=2&allowWatchBookmarks=true",
    )
    .await;
    s.create(cm("a", "during", json!({}))).unwrap();
    let e = w.next().await.unwrap();
    assert_eq!((e["type"].as_str(), event_rv(&e)), (Some("ADDED"), 3));
    let b = w.next().await.unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    assert!(event_rv(&b) >= 3, "a bookmark never goes behind an event");
    // the initial-events-end bookmark is late too, and events after it wait for it
    let t = Instant::now();
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true").await;
    assert_eq!(w.take(3).await.len(), 3);
    s.create(cm("a", "after", json!({}))).unwrap();
    let b = w.next().await.unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(event_rv(&b), 3);
    assert!(t.elapsed() >= Duration::from_millis(1000));
    assert_eq!(w.take(1).await, added(&["after"]));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_stall_half_way() {
    let sim = with_configmaps(4).await;
    let s = sim.store();
    let f = sim_post(&sim, "list-stall?ms=1500").await;
    assert_eq!(f["listStallMs"], 1500);
    let stall = Duration::from_millis(1500);

    // paged: the first page at once, the next one after the stall
    let t = Instant::now();
    let (_, p1) = get(&sim, "/api/v1/configmaps?limit=2").await;
    assert!(t.elapsed() < stall, "{:?}", t.elapsed());
    let c = p1["metadata"]["continue"].as_str().unwrap().to_string();
    let t = Instant::now();
    let (_, p2) = get(&sim, &format!("/api/v1/configmaps?limit=2&continue={c}")).await;
    assert!(t.elapsed() >= stall);
    assert_eq!([names(&p1), names(&p2)].concat(), ["c0", "c1", "c2", "c3"]);

    // whole list: half the body, the stall, the rest
    let r = http()
        .get(format!("{}/api/v1/configmaps", sim.base_url()))
        .send()
        .await
        .unwrap();
    let t = Instant::now();
    let mut r = r;
    let first = r.chunk().await.unwrap().unwrap();
    let mut body = first.to_vec();
    let first_at = t.elapsed();
    while let Some(b) = r.chunk().await.unwrap() {
        body.extend_from_slice(&b);
    }
    assert!(t.elapsed() - first_at >= Duration::from_millis(1400));
    let l: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(names(&l), ["c0", "c1", "c2", "c3"]);

    // streaming list: half the initial events, the stall, the rest
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true").await;
    assert_eq!(w.take(2).await, added(&["c0", "c1"]));
    let t = Instant::now();
    assert_eq!(w.take(2).await, added(&["c2", "c3"]));
    assert!(t.elapsed() >= Duration::from_millis(1400));

    s.set_list_stall(Duration::ZERO);
    let t = Instant::now();
    let (_, p2) = get(&sim, &format!("/api/v1/configmaps?limit=2&continue={c}")).await;
    assert!(t.elapsed() < stall);
    assert_eq!(names(&p2), ["c2", "c3"]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_watches_send_nothing_until_the_client_gives_up() {
    let sim = with_configmaps(1).await;
    let s = sim.store();
    // a watch already open goes silent too
    let mut before = Watch::open(
        &sim,
        "/api/v1/configmaps?watch=1&resourceVersion=1&allowWatchBookmarks=true",
    )
    .await;
    let st = s.clone();
    wait_for("the first watch to open", || {
        let st = st.clone();
        async move { (st.stats().open_watches == 1).then_some(()) }
    })
    .await;
    let f = sim_post(&sim, "stuck-watches?on=true").await;
    assert_eq!(f["stuckWatches"], true);
    // timeoutSeconds=1 does not end it: a dead stream never closes by itself
    let mut w = Watch::open(
        &sim,
        "/api/v1/configmaps?watch=1&resourceVersion=1&allowWatchBookmarks=true&timeoutSeconds=1",
    )
    .await;
    s.create(cm("a", "unseen", json!({}))).unwrap();
    let quiet = Duration::from_millis(1500);
    assert_eq!(
        w.next_within(quiet).await,
        Err(()),
        "nothing, not even a close"
    );
    assert_eq!(
        before.next_within(Duration::from_millis(300)).await,
        Err(())
    );
    assert_eq!(s.stats().open_watches, 2);
    // dropping the watches closes them; with the fault off, the client resumes and converges
    s.set_stuck_watches(false);
    s.drop_watches();
    assert_eq!(w.next_within(DEADLINE).await, Ok(None));
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&resourceVersion=1").await;
    assert_eq!(w.take(1).await, added(&["unseen"]));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_combine() {
    let sim = with_configmaps(6).await;
    let s = sim.store();
    let url = format!("{}/_sim/faults", sim.base_url());
    // several faults in one call; unnamed fields take their healthy defaults
    let r = http()
        .put(&url)
        .json(
            &json!({"failNext": 1, "replicaLags": [0, 4], "watchReplay": 1,
            "listStallMs": 300, "freshnessWaitMs": 100}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let now: Value = http().get(&url).send().await.unwrap().json().await.unwrap();
    let want = FaultSet {
        fail_next: 1,
        replica_lags: vec![0, 4],
        watch_replay: 1,
        list_stall_ms: 300,
        freshness_wait_ms: 100,
        ..Default::default()
    };
    assert_eq!(serde_json::from_value::<FaultSet>(now).unwrap(), want);
    assert_eq!(s.faults(), want);

    // all of them act: a 500, then a lagging replica's snapshot after a stall, then a replay
    let (code, _) = get(&sim, "/api/v1/configmaps?resourceVersion=0").await;
    assert_eq!(code, 500);
    let (_, l) = get(&sim, "/api/v1/configmaps?resourceVersion=0").await; // replica 0
    assert_eq!(list_rv(&l), 6);
    let t = Instant::now();
    let (_, l) = get(&sim, "/api/v1/configmaps?resourceVersion=0").await; // replica 1
    assert_eq!((list_rv(&l), names(&l).len()), (2, 2));
    assert!(t.elapsed() >= Duration::from_millis(300));
    let mut w = Watch::open(&sim, "/api/v1/configmaps?watch=1&resourceVersion=6").await;
    let e = w.next_non_bookmark().await.unwrap();
    assert_eq!(event_rv(&e), 6, "the replayed event");

    // the library call sets the same; clearing heals everything
    s.set_faults(&FaultSet {
        stuck_watches: true,
        bookmark_delay_ms: 50,
        ..want.clone()
    });
    assert!(s.faults().stuck_watches);
    let r = http().delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.faults(), FaultSet::default());
    let (code, l) = get(&sim, "/api/v1/configmaps?resourceVersion=0").await;
    assert_eq!((code, list_rv(&l)), (200, 6));
    // a bad body is a 400 Status
    let r = http()
        .put(&url)
        .body("{\"replicaLags\": 3}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_endpoints_reject_bad_parameters() {
    let sim = start_with(SimConfig::default()).await;
    for path in [
        "watch-cache-lag",
        "replicas?lags=a,b",
        "replicas?lags=1&pick=random",
        "replicas?lags=1&pick=sideways",
        "freshness-wait",
        "watch-replay?events=-1",
        "bookmark-delay",
        "list-stall?ms=x",
        "stuck-watches?on=maybe",
    ] {
        let r = http()
            .post(format!("{}/_sim/{path}", sim.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
    }
    sim.shutdown().await;
}
