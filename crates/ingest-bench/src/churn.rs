//! Steady churn and event-to-committed-row latency.
//!
//! The churner merge-patches pods in kube-sim's store at a fixed rate, stamping
//! `kube-sim.io/changed-at` with the wall-clock time of the change, and remembers
//! (uid, resourceVersion, stamp) of each change. The poller queries the table in a tight loop
//! (about every 5 ms) for the pods' rows whose `updated_at` (the ingester's observation time,
//! always later than the stamp) is not older than the oldest change still unseen, reading
//! only `uid` and `object_resource_version` (no detoasting of `raw`). A change counts as
//! committed when a row of its object carries its resourceVersion or a later one; its latency
//! is the start time of the first poll that saw it minus its stamp: an upper bound on
//! commit time minus change time, by at most one poll interval. A sample of rows is finally
//! checked to carry the stamp in `raw`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use kube_sim::workload::reference::pod_key;
use kube_sim::workload::CHANGED_AT;
use serde_json::json;
use testkit::process::IngesterProcess;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::harness::Sim;

pub struct ChurnResult {
    pub issued: u64,
    pub achieved_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub unresolved: u64,
    pub pending_at_end: u64,
    pub max_queue: f64,
    pub queue_first: f64,
    pub queue_last: f64,
    pub sustained: bool,
    pub stamp_check: String,
}

#[derive(Default)]
struct Pending {
    /// uid -> changes not yet seen, oldest first: (resourceVersion, stamp).
    by_uid: HashMap<String, VecDeque<(i64, DateTime<Utc>)>>,
    /// Stamps of unseen changes in issue order (for the poll window), with their uid.
    order: VecDeque<(DateTime<Utc>, String, i64)>,
    latencies_ms: Vec<f64>,
    count: u64,
}

impl Pending {
    fn add(&mut self, uid: String, rv: i64, at: DateTime<Utc>) {
        self.by_uid
            .entry(uid.clone())
            .or_default()
            .push_back((rv, at));
        self.order.push_back((at, uid, rv));
        self.count += 1;
    }

    /// A row of `uid` at `rv` was visible to a poll that started at `seen`.
    fn observe(&mut self, uid: &str, rv: i64, seen: DateTime<Utc>) {
        let Some(q) = self.by_uid.get_mut(uid) else {
            return;
        };
        while let Some(&(crv, at)) = q.front() {
            if crv > rv {
                break;
            }
            q.pop_front();
            self.count -= 1;
            self.latencies_ms
                .push((seen - at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        if q.is_empty() {
            self.by_uid.remove(uid);
        }
    }

    /// The oldest unseen stamp (drops resolved entries from the front of the order).
    fn oldest(&mut self) -> Option<DateTime<Utc>> {
        while let Some((at, uid, rv)) = self.order.front() {
            let unseen = self
                .by_uid
                .get(uid)
                .is_some_and(|q| q.iter().any(|(r, a)| r == rv && a == at));
            if unseen {
                return Some(*at);
            }
            self.order.pop_front();
        }
        None
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Next pod to change: a fixed stride through all pods so no pod changes twice in a row.
struct Picker {
    n: usize,
    next: usize,
    stride: usize,
}

impl Picker {
    fn new(n: usize, seed: usize) -> Picker {
        let mut stride = 7919usize;
        while gcd(stride, n) != 1 {
            stride += 2;
        }
        Picker {
            n,
            next: seed % n.max(1),
            stride,
        }
    }
    fn pick(&mut self) -> usize {
        let i = self.next;
        self.next = (self.next + self.stride) % self.n;
        i
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

static SEED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub async fn run(
    sim: &Sim,
    db: &Client,
    ingester: &IngesterProcess,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<ChurnResult> {
    let pending = Arc::new(Mutex::new(Pending::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seed = SEED.fetch_add(104_729, std::sync::atomic::Ordering::Relaxed);
    let churner = spawn_churner(sim, pending.clone(), stop.clone(), seed, rate, seconds);
    let (queue_samples, pending_at_end) = poll(db, ingester, &pending, &churner, seconds).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (issued, churn_secs) = churner.await??;
    let mut p = std::mem::take(&mut *pending.lock().unwrap());
    let pending_at_end = pending_at_end.unwrap_or(p.count);
    let stamp_check = check_stamps(sim, db, seed, issued).await?;

    p.latencies_ms.sort_by(|a, b| a.total_cmp(b));
    let unresolved = p.count;
    let third = (queue_samples.len() / 3).max(1);
    let mean = |s: &[f64]| {
        if s.is_empty() {
            0.0
        } else {
            s.iter().sum::<f64>() / s.len() as f64
        }
    };
    let queue_first = mean(&queue_samples[..third.min(queue_samples.len())]);
    let queue_last = mean(&queue_samples[queue_samples.len().saturating_sub(third)..]);
    let achieved_rate = issued as f64 / churn_secs.max(1e-9);
    // Sustained: everything issued became visible, the backlog at the end of the churn was at
    // most one second of changes, and the ingester's queue did not grow over the run.
    let sustained = unresolved == 0
        && (pending_at_end as f64) <= rate.max(1.0)
        && queue_last <= queue_first + 500.0;
    Ok(ChurnResult {
        issued,
        achieved_rate,
        p50_ms: pct(&p.latencies_ms, 50.0),
        p99_ms: if unresolved > 0 {
            f64::INFINITY
        } else {
            pct(&p.latencies_ms, 99.0)
        },
        max_ms: p.latencies_ms.last().copied().unwrap_or(f64::NAN),
        unresolved,
        pending_at_end,
        max_queue: queue_samples.iter().copied().fold(0.0, f64::max),
        queue_first,
        queue_last,
        sustained,
        stamp_check,
    })
}

/// The churner, on a blocking thread (the store's merge patch is synchronous work): `rate`
/// stamped merge patches per second for `seconds`, each remembered in `pending`. Returns the
/// changes issued and the seconds it took.
fn spawn_churner(
    sim: &Sim,
    pending: Arc<Mutex<Pending>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    seed: usize,
    rate: f64,
    seconds: u64,
) -> JoinHandle<anyhow::Result<(u64, f64)>> {
    let store = sim.sim.store();
    let n = sim.pods;
    tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, f64)> {
        let mut picker = Picker::new(n, seed);
        let t0 = Instant::now();
        let mut issued = 0u64;
        let total = (rate * seconds as f64) as u64;
        while issued < total && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let due = ((t0.elapsed().as_secs_f64() * rate) as u64).min(total);
            while issued < due {
                let (ns, name) = pod_key(picker.pick());
                let at = Utc::now();
                let stamp = at.to_rfc3339_opts(SecondsFormat::Nanos, true);
                let patch = json!({"metadata": {"annotations": {CHANGED_AT: stamp}}});
                let obj = store
                    .merge_patch("v1", "Pod", Some(&ns), &name, &patch)
                    .map_err(|e| anyhow::anyhow!("patch {ns}/{name}: {e:?}"))?;
                let uid = obj["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let rv: i64 = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                pending.lock().unwrap().add(uid, rv, at);
                issued += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok((issued, t0.elapsed().as_secs_f64()))
    })
}

/// The poller: until every change is seen (or 30 s of grace after the churn), marks the
/// changes whose rows are visible. Returns the ingester's queue depth sampled every 500 ms of
/// the churn, and the changes still unseen when the churner had finished.
async fn poll(
    db: &Client,
    ingester: &IngesterProcess,
    pending: &Mutex<Pending>,
    churner: &JoinHandle<anyhow::Result<(u64, f64)>>,
    seconds: u64,
) -> anyhow::Result<(Vec<f64>, Option<u64>)> {
    let poll_stmt = db
        .prepare(
            "SELECT uid, object_resource_version FROM krateo_resources
              WHERE resource_group = '' AND resource_version = 'v1' AND resource_kind = 'Pod'
                AND deleted_at IS NULL AND updated_at >= $1",
        )
        .await?;
    let mut queue_samples: Vec<f64> = Vec::new();
    let mut last_sample = Instant::now() - Duration::from_secs(1);
    let t0 = Instant::now();
    let churn_end = t0 + Duration::from_secs(seconds);
    let grace_end = churn_end + Duration::from_secs(30);
    let mut pending_at_end: Option<u64> = None;
    loop {
        let now = Instant::now();
        if now >= churn_end && pending_at_end.is_none() && churner.is_finished() {
            pending_at_end = Some(pending.lock().unwrap().count);
        }
        if now < churn_end && last_sample.elapsed() >= Duration::from_millis(500) {
            last_sample = now;
            queue_samples.push(ingester.metric("ingester_queue_depth").await.unwrap_or(0.0));
        }
        let oldest = pending.lock().unwrap().oldest();
        if let Some(from) = oldest {
            let seen = Utc::now();
            let rows = db
                .query(&poll_stmt, &[&(from - chrono::Duration::milliseconds(1))])
                .await?;
            let mut p = pending.lock().unwrap();
            for r in rows {
                let uid: String = r.get(0);
                let rv: Option<i64> = r.get(1);
                p.observe(&uid, rv.unwrap_or(0), seen);
            }
        } else if churner.is_finished() {
            break;
        }
        if Instant::now() >= grace_end && churner.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((queue_samples, pending_at_end))
}

/// The rows carry the stamps: checks the objects changed last (up to 20).
async fn check_stamps(sim: &Sim, db: &Client, seed: usize, issued: u64) -> anyhow::Result<String> {
    let mut ok = 0;
    let mut checked = 0;
    let mut picker = Picker::new(sim.pods, seed);
    for _ in 0..issued.min(20) {
        let (ns, name) = pod_key(picker.pick());
        let Some(obj) = sim.sim.store().get("v1", "Pod", Some(&ns), &name) else {
            continue;
        };
        let want = obj["metadata"]["annotations"][CHANGED_AT]
            .as_str()
            .map(str::to_owned);
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let got: Option<String> = db
            .query_opt(
                "SELECT raw->'metadata'->'annotations'->>'kube-sim.io/changed-at' FROM krateo_resources WHERE uid = $1",
                &[&uid],
            )
            .await?
            .and_then(|r| r.get(0));
        checked += 1;
        if got == want {
            ok += 1;
        }
    }
    Ok(format!(
        "{ok}/{checked} rows carry the object's latest stamp"
    ))
}
