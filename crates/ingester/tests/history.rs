//! The change history (`HISTORY`) and the live change feed (`CHANGE_FEED`), end to end:
//! kube-sim, the ingester binary, a private database.

mod common;
mod krateo_support;

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Parser;
use common::*;
use futures::StreamExt;
use krateo_support::Krateo;
use resources_ingester::config::Config;
use resources_ingester::row::object::RawObject;
use resources_ingester::row::record::{build_record, EventKind, Record};
use resources_ingester::row::routes::Route;
use resources_ingester::storage::writer::{BatchWriter, Tombstone, WriterOptions};
use resources_ingester::storage::Database;
use resources_ingester::telemetry::metrics::Metrics;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

const HISTORY_ON: (&str, &str) = ("HISTORY", "true");

/// (operation, object resourceVersion) of the history rows of `uid`, oldest first.
async fn history_of(h: &Harness, uid: &str) -> anyhow::Result<Vec<(String, Option<i64>)>> {
    let c = h.db.client().await?;
    Ok(c.query(
        "SELECT operation, object_resource_version FROM krateo_resource_history
          WHERE global_uid = $1 ORDER BY observed_at, object_resource_version NULLS LAST",
        &[&format!("{CLUSTER}:{uid}")],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

async fn wait_history(
    h: &Harness,
    uid: &str,
    expected: &[(&str, Option<i64>)],
) -> anyhow::Result<()> {
    let expected: Vec<(String, Option<i64>)> = expected
        .iter()
        .map(|(op, rv)| ((*op).to_owned(), *rv))
        .collect();
    testkit::eventually(&format!("history {expected:?}"), WAIT, || async {
        let got = history_of(h, uid).await.map_err(|e| e.to_string())?;
        if got == expected {
            Ok(Some(()))
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
}

/// Rows of the history table per (global_uid, resourceVersion) stored more than once.
async fn duplicated_versions(h: &Harness) -> anyhow::Result<Vec<String>> {
    let c = h.db.client().await?;
    Ok(c.query(
        "SELECT global_uid || '@' || object_resource_version || ' x' || count(*)
           FROM krateo_resource_history WHERE object_resource_version IS NOT NULL
          GROUP BY global_uid, object_resource_version HAVING count(*) > 1",
        &[],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

async fn history_rows(h: &Harness) -> anyhow::Result<i64> {
    let c = h.db.client().await?;
    Ok(
        c.query_one("SELECT count(*) FROM krateo_resource_history", &[])
            .await?
            .get(0),
    )
}

fn rv_of(v: &Value) -> Option<i64> {
    rv(v).parse().ok()
}

/// Runs the binary with a subcommand over the harness' environment; (exit code, stdout, stderr).
async fn run_command(
    h: &Harness,
    extra: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_resources-ingester"));
    cmd.env_clear()
        .envs(h.env(extra))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("{args:?} still running after 30 s"))??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_each_version_once_across_restarts_relists_and_sweeps() -> anyhow::Result<()>
{
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("team-a"))?;
    let mut ing = h.start_ready(&[HISTORY_ON]).await?;

    // Created, updated, deleted while the ingester runs.
    let created = store.create(pod("team-a", "web"))?;
    let pod_uid = uid(&created);
    wait_history(&h, &pod_uid, &[("created", rv_of(&created))]).await?;
    let mut changed = created.clone();
    changed["metadata"]["labels"]["tier"] = json!("front");
    changed["status"] = json!({"phase": "Succeeded"});
    let updated = store.update(changed)?;
    wait_history(
        &h,
        &pod_uid,
        &[("created", rv_of(&created)), ("updated", rv_of(&updated))],
    )
    .await?;
    let deleted = store.delete("v1", "Pod", Some("team-a"), "web")?;
    wait_history(
        &h,
        &pod_uid,
        &[
            ("created", rv_of(&created)),
            ("updated", rv_of(&updated)),
            ("deleted", rv_of(&deleted)),
        ],
    )
    .await?;
    // The history holds the object as the writer got it, in the same transaction as the row.
    let c = h.db.client().await?;
    let raws: Vec<Value> = c
        .query(
            "SELECT raw FROM krateo_resource_history WHERE global_uid = $1 ORDER BY object_resource_version",
            &[&format!("{CLUSTER}:{pod_uid}")],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(raws[0], created);
    assert_eq!(raws[1], updated);
    let (row_raw, _) = h.row(&pod_uid).await?.expect("row");
    assert_eq!(raws[2], row_raw, "the deletion's state, as the row has it");

    // A config map deleted while the ingester is down: the relist's sweep marks it deleted.
    let cm = store.create(configmap("team-a", "settings", json!({"k": "v"})))?;
    let cm_uid = uid(&cm);
    wait_history(&h, &cm_uid, &[("created", rv_of(&cm))]).await?;
    ing.terminate(WAIT).await?;
    store.delete("v1", "ConfigMap", Some("team-a"), "settings")?;

    // Restarts with full relists (no resume): the sweep is recorded once, with no
    // resourceVersion of its own; nothing else is added.
    let before = history_rows(&h).await?;
    for _ in 0..2 {
        let mut again = h
            .start_ready(&[HISTORY_ON, ("WATCH_RESUME", "false")])
            .await?;
        h.wait_row(&cm_uid, "swept config map", |_, deleted| deleted)
            .await?;
        // Everything queued before is committed: the lists are done (ready) and a fresh
        // change lands after them.
        let marker = store.create(configmap(
            "team-a",
            &format!("m{}", uuid_suffix()),
            json!({}),
        ))?;
        h.wait_row(&uid(&marker), "marker", |_, _| true).await?;
        again.terminate(WAIT).await?;
    }
    wait_history(&h, &cm_uid, &[("created", rv_of(&cm)), ("deleted", None)]).await?;
    assert_eq!(
        history_of(&h, &pod_uid).await?.len(),
        3,
        "the pod's history is unchanged"
    );
    assert_eq!(
        history_rows(&h).await?,
        before + 1 + 2,
        "only the sweep and the two markers were added"
    );
    assert!(
        duplicated_versions(&h).await?.is_empty(),
        "{:?}",
        duplicated_versions(&h).await?
    );

    // The history command: the versions with time and operation, and what changed.
    let global_uid = format!("{CLUSTER}:{pod_uid}");
    let (code, out, err) = run_command(&h, &[], &["history", &global_uid]).await?;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("{global_uid} (Pod team-a/web): 3 version(s)")
    );
    assert!(
        lines[1].ends_with(&format!("  created  resourceVersion {}", rv(&created))),
        "{out}"
    );
    assert!(
        lines[2].ends_with(&format!("  updated  resourceVersion {}", rv(&updated))),
        "{out}"
    );
    assert!(
        out.contains("    /metadata/labels/tier: (absent) -> \"front\"\n"),
        "{out}"
    );
    assert!(
        out.contains("    /status/phase: \"Running\" -> \"Succeeded\"\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("  deleted  resourceVersion {}\n", rv(&deleted))),
        "{out}"
    );
    let (code, by_name, err) = run_command(
        &h,
        &[],
        &[
            "history",
            "--kind",
            "Pod",
            "--namespace",
            "team-a",
            "--name",
            "web",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(by_name, out, "by name: the same object");
    let (code, _, err) = run_command(&h, &[], &["history"]).await?;
    assert_eq!(code, 2, "no object named: {err}");
    assert!(err.contains("--kind and --name"), "{err}");
    Ok(())
}

fn uuid_suffix() -> String {
    format!("{:x}", rand::random::<u32>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_creates_the_coming_days_and_drops_days_past_retention() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let (code, _, err) = run_command(&h, &[], &["migrate"]).await?;
    assert_eq!(code, 0, "{err}");
    let c = h.db.client().await?;
    let today = Utc::now().date_naive();
    let partitions = || async {
        resources_ingester::storage::history::partitions(&h.db.client().await?)
            .await
            .map_err(anyhow::Error::from)
    };
    let name = resources_ingester::storage::history::partition_name;
    // migrate made today's and the next days' partitions.
    let made = partitions().await?;
    for d in 0..=3 {
        assert!(
            made.contains(&name(today + chrono::Duration::days(d))),
            "{made:?}"
        );
    }

    // An old day's rows waiting in the default partition move into its partition when the
    // maintenance path creates it.
    let old_day = today - chrono::Duration::days(30);
    let old_at: DateTime<Utc> = old_day.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    c.execute(
        "INSERT INTO krateo_resource_history (observed_at, cluster_name, global_uid, resource_group,
           resource_version, resource_kind, resource_plural, namespace, resource_name, operation,
           object_resource_version, raw)
         VALUES ($1, 'c', 'c:old', '', 'v1', 'ConfigMap', 'configmaps', 'a', 'old', 'created', 1, '{}')",
        &[&old_at],
    )
    .await?;
    resources_ingester::storage::history::create_partition(&c, old_day).await?;
    assert!(partitions().await?.contains(&name(old_day)));
    let in_old: i64 = c
        .query_one(&format!("SELECT count(*) FROM {}", name(old_day)), &[])
        .await?
        .get(0);
    assert_eq!(in_old, 1, "the row moved out of the default partition");
    // A row past retention that stays in the default partition (no partition of its day).
    let older_at = old_at - chrono::Duration::days(5);
    c.execute(
        "INSERT INTO krateo_resource_history (observed_at, cluster_name, global_uid, resource_group,
           resource_version, resource_kind, resource_plural, namespace, resource_name, operation,
           object_resource_version, raw)
         VALUES ($1, 'c', 'c:older', '', 'v1', 'ConfigMap', 'configmaps', 'a', 'older', 'created', 1, '{}')",
        &[&older_at],
    )
    .await?;
    // A missing coming day is made again.
    c.batch_execute(&format!(
        "DROP TABLE {}",
        name(today + chrono::Duration::days(2))
    ))
    .await?;

    let (code, out, err) =
        run_command(&h, &[("HISTORY_RETENTION", "7d")], &["history", "maintain"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&name(old_day)), "{out}");
    let now = partitions().await?;
    assert!(!now.contains(&name(old_day)), "dropped: {now:?}");
    assert!(
        now.contains(&name(today + chrono::Duration::days(2))),
        "{now:?}"
    );
    assert_eq!(history_rows(&h).await?, 0, "nothing past retention is left");

    // Maintenance that did not run: today's rows wait in the default partition while the
    // writers go on; creating today's partition meanwhile moves them and loses none.
    c.batch_execute(&format!("DROP TABLE {}", name(today)))
        .await?;
    let insert_today = "INSERT INTO krateo_resource_history (observed_at, cluster_name, global_uid,
           resource_group, resource_version, resource_kind, resource_plural, namespace,
           resource_name, operation, object_resource_version, raw)
         VALUES (now(), 'c', 'c:today', '', 'v1', 'ConfigMap', 'configmaps', 'a', 'today', 'updated', $1, '{}')";
    for rv in 0..50i64 {
        c.execute(insert_today, &[&rv]).await?;
    }
    let writer = h.db.client().await?;
    let writing = tokio::spawn(async move {
        for rv in 50..400i64 {
            writer.execute(insert_today, &[&rv]).await?;
        }
        anyhow::Ok(())
    });
    resources_ingester::storage::history::create_partition(&c, today).await?;
    writing.await??;
    let counts = c
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {}), (SELECT count(*) FROM krateo_resource_history_default)",
                name(today)
            ),
            &[],
        )
        .await?;
    assert_eq!(
        (counts.get::<_, i64>(0), counts.get::<_, i64>(1)),
        (400, 0),
        "every row of today in today's partition"
    );

    // A retention long enough keeps it.
    resources_ingester::storage::history::create_partition(&c, old_day).await?;
    let (code, _, err) = run_command(
        &h,
        &[("HISTORY_RETENTION", "60d")],
        &["history", "maintain"],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    assert!(partitions().await?.contains(&name(old_day)));
    Ok(())
}

/// `LISTEN krateo_resources` on its own connection; the payloads arrive on the receiver.
async fn listen(
    h: &Harness,
) -> anyhow::Result<(tokio_postgres::Client, mpsc::UnboundedReceiver<String>)> {
    let s = &h.db.server;
    let mut conn_str = format!(
        "host={} port={} user={} dbname={}",
        s.host, s.port, s.user, h.db.name
    );
    if !s.password.is_empty() {
        conn_str.push_str(&format!(" password={}", s.password));
    }
    let (client, mut connection) = tokio_postgres::connect(&conn_str, NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                if n.channel() == "krateo_resources" {
                    let _ = tx.send(n.payload().to_owned());
                }
            }
        }
    });
    client.batch_execute("LISTEN krateo_resources").await?;
    Ok((client, rx))
}

/// (operation, resourceVersion) of every listed change per global uid, and the markers.
#[derive(Default)]
struct Received {
    changes: BTreeMap<String, Vec<(String, Option<i64>)>>,
    markers: Vec<(DateTime<Utc>, u64)>,
}

impl Received {
    fn take(&mut self, payload: &str) {
        let v: Value = serde_json::from_str(payload).expect("the payload is JSON");
        if let Some(list) = v["changes"].as_array() {
            for c in list {
                self.changes
                    .entry(c["global_uid"].as_str().expect("global_uid").to_owned())
                    .or_default()
                    .push((c["op"].as_str().expect("op").to_owned(), c["rv"].as_i64()));
            }
        } else {
            let since = v["changed_since"].as_str().expect("a list or a marker");
            self.markers.push((
                DateTime::parse_from_rfc3339(since)
                    .expect("RFC 3339")
                    .with_timezone(&Utc),
                v["rows"].as_u64().expect("rows"),
            ));
        }
    }
}

/// Reads notifications until `done` says so.
async fn receive_until(
    rx: &mut mpsc::UnboundedReceiver<String>,
    got: &mut Received,
    what: &str,
    done: impl Fn(&Received) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(got) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(payload)) => got.take(&payload),
            Ok(None) => anyhow::bail!("the listening connection closed"),
            Err(_) => anyhow::bail!("timed out waiting for {what}; got {:?}", got.changes),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_notifies_every_committed_change() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("team-a"))?;
    let (_listener, mut rx) = listen(&h).await?;
    let _ing = h.start_ready(&[]).await?;
    let mut got = Received::default();

    // One change at a time: each is notified, once, after its commit.
    let created = store.create(pod("team-a", "web"))?;
    let gid = format!("{CLUSTER}:{}", uid(&created));
    receive_until(&mut rx, &mut got, "the pod's creation", |g| {
        g.changes.contains_key(&gid)
    })
    .await?;
    let (raw, _) = h
        .row(&uid(&created))
        .await?
        .expect("committed before notified");
    assert_eq!(raw, created);
    let mut changed = created.clone();
    changed["metadata"]["labels"]["tier"] = json!("front");
    let updated = store.update(changed)?;
    receive_until(&mut rx, &mut got, "the pod's update", |g| {
        g.changes[&gid].len() >= 2
    })
    .await?;
    let (raw, _) = h.row(&uid(&created)).await?.expect("row");
    assert_eq!(raw, updated, "committed before notified");
    let deleted = store.delete("v1", "Pod", Some("team-a"), "web")?;
    receive_until(&mut rx, &mut got, "the pod's deletion", |g| {
        g.changes[&gid].len() >= 3
    })
    .await?;
    let (_, is_deleted) = h.row(&uid(&created)).await?.expect("row");
    assert!(is_deleted, "committed before notified");
    assert_eq!(
        got.changes[&gid],
        vec![
            ("created".to_owned(), rv_of(&created)),
            ("updated".to_owned(), rv_of(&updated)),
            ("deleted".to_owned(), rv_of(&deleted)),
        ]
    );

    // A burst: a batch holds the newest state of an object, so changes that arrive together
    // are notified as one, as the table saw them: the first notified is the row's creation
    // (at whichever state the first batch held), the others updates, in resourceVersion
    // order, the last at the newest state.
    let cm = store.create(configmap("team-a", "burst", json!({"a": "0"})))?;
    let cm_gid = format!("{CLUSTER}:{}", uid(&cm));
    let mut versions = vec![rv_of(&cm)];
    let mut last = cm;
    for i in 1..=5 {
        last["data"]["a"] = json!(i.to_string());
        last = store.update(last)?;
        versions.push(rv_of(&last));
    }
    let newest = rv_of(&last);
    receive_until(&mut rx, &mut got, "the burst's newest state", |g| {
        g.changes
            .get(&cm_gid)
            .is_some_and(|c| c.last().is_some_and(|(_, rv)| *rv == newest))
    })
    .await?;
    let seen = &got.changes[&cm_gid];
    for (i, (op, rv)) in seen.iter().enumerate() {
        assert_eq!(op, if i == 0 { "created" } else { "updated" }, "{seen:?}");
        assert!(versions.contains(rv), "{seen:?}");
    }
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "{seen:?}");
    assert!(got.markers.is_empty(), "small batches list their rows");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_too_big_to_list_sends_a_changed_since_marker() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("bulk"))?;
    let total = 400;
    for i in 0..total {
        store.create(configmap(
            "bulk",
            &format!("cm-{i:04}"),
            json!({"i": i.to_string()}),
        ))?;
    }
    let (listener, mut rx) = listen(&h).await?;
    // One lane and a long flush interval: the list becomes one batch of hundreds of rows.
    let _ing = h
        .start_ready(&[
            ("WORKERS", "1"),
            ("FLUSH_INTERVAL", "2s"),
            ("BATCH_SIZE", "1000"),
        ])
        .await?;
    let mut got = Received::default();
    receive_until(&mut rx, &mut got, "a marker", |g| !g.markers.is_empty()).await?;
    // The marker's rows are those with updated_at >= changed_since: the listener finds them.
    let (since, rows) = got.markers[0];
    assert!(
        rows > 80,
        "a marker for {rows} rows: the list would have fit"
    );
    let found: i64 = listener
        .query_one(
            "SELECT count(*) FROM krateo_resources WHERE updated_at >= $1",
            &[&since],
        )
        .await?
        .get(0);
    assert!(
        found as u64 >= rows,
        "{found} rows since {since}, marker says {rows}"
    );
    // Every config map is covered: by a marker or by a list.
    h.wait_count(
        "namespace = 'bulk' AND resource_plural = 'configmaps'",
        total,
    )
    .await?;
    let listed: HashSet<&String> = got.changes.keys().collect();
    let covered_by_markers: i64 = listener
        .query_one(
            "SELECT count(*) FROM krateo_resources WHERE namespace = 'bulk' AND updated_at >= $1",
            &[&got.markers.iter().map(|m| m.0).min().expect("a marker")],
        )
        .await?
        .get(0);
    assert!(covered_by_markers + listed.len() as i64 >= total);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_feed_false_sends_no_notification() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("team-a"))?;
    let (listener, mut rx) = listen(&h).await?;
    let _ing = h.start_ready(&[("CHANGE_FEED", "false")]).await?;
    let created = store.create(pod("team-a", "web"))?;
    h.wait_row(&uid(&created), "pod row", |_, _| true).await?;
    store.delete("v1", "Pod", Some("team-a"), "web")?;
    h.wait_row(&uid(&created), "deleted pod row", |_, deleted| deleted)
        .await?;
    // A probe from another connection, then a round trip on the listening one: every
    // notification committed before the probe has reached the receiver by then.
    h.db.client()
        .await?
        .batch_execute("NOTIFY krateo_resources, 'probe'")
        .await?;
    let first = tokio::time::timeout(WAIT, rx.recv()).await?;
    listener.batch_execute("SELECT 1").await?;
    assert_eq!(first.as_deref(), Some("probe"), "the ingester notified");
    assert!(rx.try_recv().is_err(), "nothing after the probe either");
    Ok(())
}

const UID: &str = "11111111-2222-3333-4444-555555555555";

fn record(api_version: &str, rv: &str, marker: &str, kind: EventKind) -> Record {
    let json = format!(
        r#"{{"apiVersion":"{api_version}","kind":"Widget","metadata":{{"name":"w","namespace":"ns","uid":"{UID}","resourceVersion":"{rv}","creationTimestamp":"2024-01-01T00:00:00Z"}},"data":{{"m":"{marker}"}}}}"#
    );
    let obj = RawObject::from_json(json).expect("json");
    let (group, version) = api_version.split_once('/').expect("group/version");
    build_record(
        obj,
        &Arc::new(Route::new(group, version, "widgets", "Widget")),
        &Arc::from("c"),
        kind,
        Utc::now(),
    )
    .expect("record")
    .0
}

/// (operation, resourceVersion, data.m) of the history of the widget, oldest first.
async fn widget_history(
    c: &tokio_postgres::Client,
) -> anyhow::Result<Vec<(String, Option<i64>, String)>> {
    Ok(c.query(
        "SELECT operation, object_resource_version, raw->'data'->>'m' FROM krateo_resource_history
          WHERE global_uid = $1 ORDER BY observed_at, object_resource_version NULLS LAST",
        &[&format!("c:{UID}")],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect())
}

fn entry(op: &str, rv: Option<i64>, m: &str) -> (String, Option<i64>, String) {
    (op.to_owned(), rv, m.to_owned())
}

/// The writer's guard lets a row through at the same resourceVersion in three cases; none of
/// them records that version twice.
#[tokio::test]
async fn same_version_transitions_never_record_a_version_twice() -> anyhow::Result<()> {
    let db = testkit::pg::TestDb::create().await?;
    let mut args = vec![
        "resources-ingester".to_owned(),
        "--history".into(),
        "true".into(),
    ];
    for (k, v) in db.ingester_env() {
        args.push(format!("--{}", k.to_lowercase().replace('_', "-")));
        args.push(v);
    }
    let config = Config::try_parse_from(args)?;
    let database = Database::connect(&config, 4).await?;
    let options = WriterOptions {
        history: true,
        change_feed: true,
        staging_lz4: false,
    };
    let w = BatchWriter::with_options(database.pool.clone(), Arc::new(Metrics::new()), options);
    let c = db.client().await?;
    let v1 = "example.io/v1";
    let tombstone = |rv: i64| Tombstone {
        global_uid: format!("c:{UID}"),
        observed_at: Utc::now(),
        not_newer_than: Some(rv),
    };

    assert_eq!(
        w.write(&[record(v1, "5", "a", EventKind::Apply)], &[])
            .await?
            .rows_written,
        1
    );
    assert_eq!(
        w.write(&[record(v1, "5", "a", EventKind::Apply)], &[])
            .await?
            .rows_written,
        0,
        "a replay changes nothing"
    );
    // A sweep: no resourceVersion of its own.
    assert_eq!(w.write(&[], &[tombstone(5)]).await?.tombstoned, 1);
    assert_eq!(
        w.write(&[], &[tombstone(5)]).await?.tombstoned,
        0,
        "swept once"
    );
    // The live state at the same version revives the row: recorded, without the version.
    assert_eq!(
        w.write(&[record(v1, "5", "a", EventKind::Apply)], &[])
            .await?
            .rows_written,
        1
    );
    // The same state served at another API version: the row follows, the history does not.
    assert_eq!(
        w.write(&[record("example.io/v2", "5", "a", EventKind::Apply)], &[])
            .await?
            .rows_written,
        1
    );
    assert_eq!(
        w.write(&[record(v1, "7", "b", EventKind::Apply)], &[])
            .await?
            .rows_written,
        1
    );
    // A deletion carrying the last state's version.
    assert_eq!(
        w.write(&[record(v1, "7", "b", EventKind::Delete)], &[])
            .await?
            .rows_written,
        1
    );
    assert_eq!(
        w.write(&[record(v1, "7", "b", EventKind::Delete)], &[])
            .await?
            .rows_written,
        0
    );
    assert_eq!(
        widget_history(&c).await?,
        vec![
            entry("created", Some(5), "a"),
            entry("deleted", None, "a"),
            entry("updated", None, "a"),
            entry("updated", Some(7), "b"),
            entry("deleted", None, "b"),
        ]
    );

    // Two writers (two replicas) writing the same states at once: each version once.
    let other = Database::connect(&config, 4).await?;
    let w2 = BatchWriter::with_options(other.pool.clone(), Arc::new(Metrics::new()), options);
    for rv in 10..30 {
        let r = [record(
            v1,
            &rv.to_string(),
            &format!("s{rv}"),
            EventKind::Apply,
        )];
        let (a, b) = tokio::join!(w.write(&r, &[]), w2.write(&r, &[]));
        assert_eq!(
            a?.rows_written + b?.rows_written,
            1,
            "one of them wrote {rv}"
        );
    }
    let dup: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM krateo_resource_history WHERE object_resource_version IS NOT NULL
               GROUP BY global_uid, object_resource_version HAVING count(*) > 1) d",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(dup, 0);
    assert_eq!(widget_history(&c).await?.len(), 5 + 20);

    // A resourceVersion that is not an integer has no guard: recorded when the object changed.
    let uid_rows = |m: &str| record(v1, "opaque", m, EventKind::Apply);
    w.write(&[uid_rows("x")], &[]).await?;
    w.write(&[uid_rows("x")], &[]).await?;
    w.write(&[uid_rows("y")], &[]).await?;
    let tail: Vec<_> = widget_history(&c).await?.into_iter().skip(25).collect();
    assert_eq!(
        tail,
        vec![entry("updated", None, "x"), entry("updated", None, "y")]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_the_owner_maintains_and_the_service_warns_when_tomorrow_is_missing(
) -> anyhow::Result<()> {
    let k = Krateo::install(Harness::new().await?).await?;
    let (ok, out) = k.migrate(&k.owner, &[]).await?;
    assert!(ok, "{out}");
    let owner = k.client_as(&k.owner).await?;
    let tomorrow = Utc::now().date_naive() + chrono::Duration::days(1);
    let tomorrow_partition = resources_ingester::storage::history::partition_name(tomorrow);
    owner
        .batch_execute(&format!("DROP TABLE {tomorrow_partition}"))
        .await?;

    // The row-only role writes history into the partitions the owner made, and warns.
    let store = k.h().store();
    store.create(namespace("team-a"))?;
    let ing = k.start_ready_as(&k.ingester, &[HISTORY_ON]).await?;
    testkit::eventually("the missing-partition gauge", WAIT, || async {
        match ing.metric("ingester_history_partition_missing").await {
            Some(1.0) => Ok(Some(())),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    assert!(ing
        .log()
        .contains("tomorrow's partition of krateo_resource_history is missing"));
    let created = store.create(pod("team-a", "web"))?;
    wait_history(k.h(), &uid(&created), &[("created", rv_of(&created))]).await?;
    assert!(
        !resources_ingester::storage::history::partitions(&owner)
            .await?
            .contains(&tomorrow_partition),
        "the service's role did not (and may not) create it"
    );

    // The owner's maintenance (the chart's CronJob) makes it.
    let env = k.env_as(&k.owner, &[]);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_resources-ingester"))
        .args(["history", "maintain"])
        .env_clear()
        .envs(env)
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(resources_ingester::storage::history::partitions(&owner)
        .await?
        .contains(&tomorrow_partition));
    drop(ing);

    // The table is needed only with HISTORY on: without it, HISTORY=false starts and
    // HISTORY=true is refused naming it.
    owner
        .batch_execute("DROP TABLE krateo_resource_history")
        .await?;
    let off = k.start_ready_as(&k.ingester, &[]).await?;
    drop(off);
    let mut on = k.spawn_as(&k.ingester, &[HISTORY_ON])?;
    let status = on.wait_exit(WAIT).await?;
    assert!(!status.success());
    assert!(
        on.log()
            .contains("table krateo_resource_history (HISTORY=true)"),
        "{}",
        on.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_retired_at_start_up_are_recorded_and_notified() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("team-a"))?;
    store.create(namespace("team-b"))?;
    let kept = store.create(pod("team-a", "kept"))?;
    let dropped = store.create(pod("team-b", "dropped"))?;
    let mut ing = h
        .start_ready(&[HISTORY_ON, ("NAMESPACES", "team-a,team-b")])
        .await?;
    wait_history(&h, &uid(&dropped), &[("created", rv_of(&dropped))]).await?;
    ing.terminate(WAIT).await?;

    // team-b is no longer watched: its rows are retired at start-up, like a sweep.
    let (_listener, mut rx) = listen(&h).await?;
    let _again = h
        .start_ready(&[HISTORY_ON, ("NAMESPACES", "team-a")])
        .await?;
    let dropped_gid = format!("{CLUSTER}:{}", uid(&dropped));
    let mut got = Received::default();
    receive_until(&mut rx, &mut got, "the retired pod", |g| {
        g.changes.contains_key(&dropped_gid)
    })
    .await?;
    assert_eq!(
        got.changes[&dropped_gid],
        vec![("deleted".to_owned(), None)]
    );
    wait_history(
        &h,
        &uid(&dropped),
        &[("created", rv_of(&dropped)), ("deleted", None)],
    )
    .await?;
    assert_eq!(
        history_of(&h, &uid(&kept)).await?,
        vec![("created".to_owned(), rv_of(&kept))]
    );
    Ok(())
}

/// The field policies apply before the writer: the history of a Secret holds its keys, never
/// its values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_of_a_secret_holds_no_value() -> anyhow::Result<()> {
    const VALUE_B64: &str = "czNjcjN0LVBAc3N3MHJkLTQ3MTE=";
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("team-a"))?;
    let routes = h.dir.path().join("routes");
    std::fs::write(&routes, "/v1/secrets/Secret\n")?;
    let routes = routes.display().to_string();
    let _ing = h
        .start_ready(&[HISTORY_ON, ("STATIC_ROUTES_FILE", &routes)])
        .await?;
    let created = store.create(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db", "namespace": "team-a"},
        "type": "Opaque", "data": {"password": VALUE_B64},
    }))?;
    wait_history(&h, &uid(&created), &[("created", rv_of(&created))]).await?;
    let mut changed = created.clone();
    changed["data"]["token"] = json!(VALUE_B64);
    let updated = store.update(changed)?;
    wait_history(
        &h,
        &uid(&created),
        &[("created", rv_of(&created)), ("updated", rv_of(&updated))],
    )
    .await?;
    let c = h.db.client().await?;
    let leaks: i64 = c
        .query_one(
            "SELECT count(*) FROM krateo_resource_history t WHERE strpos(t::text, $1) > 0",
            &[&VALUE_B64],
        )
        .await?
        .get(0);
    assert_eq!(leaks, 0, "a Secret's value in the history");
    let keys: Vec<Value> = c
        .query(
            "SELECT raw->'data' FROM krateo_resource_history ORDER BY object_resource_version",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let marker = resources_ingester::row::fields::REDACTED;
    assert_eq!(
        keys,
        vec![
            json!({"password": marker}),
            json!({"password": marker, "token": marker})
        ]
    );
    Ok(())
}
