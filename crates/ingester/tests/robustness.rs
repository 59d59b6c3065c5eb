//! A process that is alive but useless (issue 10): settings out of range stop start-up, a
//! panicking task stops the process, shutdown stays bounded when the API server stops
//! answering, and a leader that cannot renew its Lease stops writing before a standby may
//! take it. Each test runs the ingester binary against kube-sim and a real PostgreSQL.
//!
//! Run: `cargo test -p resources-ingester --test robustness`

mod common;

use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;

/// Leader election for every test here: a standby may take an unrenewed Lease 10 s after its
/// last renewal; the leader gives up after 4 s.
const LEASE_DURATION: Duration = Duration::from_secs(10);

async fn metric(p: &testkit::process::IngesterProcess, series: &str) -> f64 {
    p.metric(series).await.unwrap_or(-1.0)
}

/// Runs the binary with `extra` over a working environment (so a setting that is wrongly
/// accepted leaves it running); returns its exit code and stderr, or fails when it is still
/// running after 15 s.
async fn start_up_outcome(h: &Harness, extra: &[(&str, &str)]) -> anyhow::Result<(i32, String)> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_resources-ingester"));
    cmd.env_clear()
        .envs(h.env(extra))
        .env("PORT", testkit::free_port().to_string())
        .env("METRICS_PORT", testkit::free_port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("{extra:?} was accepted: still running after 15 s"))??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Environment variables and their values.
type Settings<'a> = &'a [(&'a str, &'a str)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_out_of_range_setting_stops_start_up_naming_the_variable() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    // (settings, variables the message must name)
    let cases: &[(Settings, &[&str])] = &[
        (&[("CHECKPOINT_INTERVAL", "0s")], &["CHECKPOINT_INTERVAL"]),
        (&[("CHECKPOINT_INTERVAL", "2h")], &["CHECKPOINT_INTERVAL"]),
        (&[("STATUS_INTERVAL", "0s")], &["STATUS_INTERVAL"]),
        (&[("FLUSH_INTERVAL", "0ms")], &["FLUSH_INTERVAL"]),
        (&[("SHUTDOWN_TIMEOUT", "0s")], &["SHUTDOWN_TIMEOUT"]),
        (&[("DB_READY_TIMEOUT", "0s")], &["DB_READY_TIMEOUT"]),
        (&[("LEASE_DURATION", "0s")], &["LEASE_DURATION"]),
        (&[("LEASE_DURATION", "1500ms")], &["LEASE_DURATION"]),
        (&[("LEASE_RENEW_DEADLINE", "0s")], &["LEASE_RENEW_DEADLINE"]),
        (&[("LEASE_RETRY_PERIOD", "0s")], &["LEASE_RETRY_PERIOD"]),
        (&[("BATCH_SIZE", "0")], &["BATCH_SIZE"]),
        (&[("WORKERS", "0")], &["WORKERS"]),
        (&[("QUEUE_CAPACITY", "0")], &["QUEUE_CAPACITY"]),
        (&[("LIST_PAGE_SIZE", "0")], &["LIST_PAGE_SIZE"]),
        (&[("LIST_CONCURRENCY", "0")], &["LIST_CONCURRENCY"]),
        (&[("QUEUE_BYTES", "1KiB")], &["QUEUE_BYTES"]),
        (&[("BATCH_BYTES", "100")], &["BATCH_BYTES"]),
        (
            &[("DB_PARAMS", "sslmode=disable&connect_timeout=0")],
            &["DB_PARAMS", "connect_timeout"],
        ),
        (
            &[("LEASE_DURATION", "10s"), ("LEASE_RENEW_DEADLINE", "10s")],
            &["LEASE_RENEW_DEADLINE", "LEASE_DURATION"],
        ),
        (
            &[("LEASE_RENEW_DEADLINE", "20s")],
            &["LEASE_RENEW_DEADLINE", "LEASE_DURATION"],
        ),
        (
            &[("LEASE_RETRY_PERIOD", "10s")],
            &["LEASE_RETRY_PERIOD", "LEASE_RENEW_DEADLINE"],
        ),
    ];
    let mut wrong = Vec::new();
    for (settings, names) in cases {
        let (code, stderr) = start_up_outcome(&h, settings).await?;
        if code == 0 || !names.iter().all(|n| stderr.contains(n)) {
            wrong.push(format!("{settings:?}: exit {code}, stderr: {stderr}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused as expected:\n{}",
        wrong.join("\n")
    );
    // The same environment with valid settings starts (the refusals above are the settings').
    let ing = h.start_ready(&[("CHECKPOINT_INTERVAL", "100ms")]).await?;
    assert_eq!(ing.livez().await, Ok(200));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_stops_the_process_and_the_log_names_it() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    h.store()
        .create(configmap("default", "marker", serde_json::json!({})))?;
    // Tasks started by the service (watches, the CRD manager, the database pinger, the
    // status log), each panicking as it starts, and a task started without a name (as the
    // writer lanes are), named in the report by where it panicked.
    for (task, logged) in [
        ("watch /v1/configmaps", "task 'watch /v1/configmaps"),
        ("CRD manager", "task 'CRD manager'"),
        ("database pinger", "task 'database pinger'"),
        ("status log", "task 'status log'"),
        (
            "unnamed",
            "an unnamed task panicked at crates/ingester/src/pipeline/supervisor.rs",
        ),
    ] {
        let mut ing = h.spawn(&[("INGESTER_DEBUG_PANIC_TASK", task)])?;
        let status = ing.wait_exit(Duration::from_secs(30)).await?;
        let log = ing.log();
        assert!(!status.success(), "{task}: exit {status}; log:\n{log}");
        assert!(
            log.lines()
                .any(|l| l.contains(logged) && l.contains("panicked")),
            "{task}: no line naming the task; log:\n{log}"
        );
    }
    // The leader's lease keeper: it renews no more, so the leader stops at once, as when
    // it loses the Lease.
    let mut env = leader_env("replica-a", "10s");
    env.push(("INGESTER_DEBUG_PANIC_TASK", "lease keeper"));
    let mut ing = h.spawn(&env)?;
    let status = ing.wait_exit(Duration::from_secs(30)).await?;
    let log = ing.log();
    assert!(
        !status.success(),
        "lease keeper: exit {status}; log:\n{log}"
    );
    assert!(
        log.contains("task 'lease keeper' panicked") && log.contains("lost the leader lease"),
        "lease keeper: log:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_when_the_api_server_stops_answering() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    let mut env = leader_env("replica-a", "10s");
    // Long enough for the drain on a loaded machine; the point is a bound, not 10 minutes.
    env.push(("SHUTDOWN_TIMEOUT", "6s"));
    let mut ing = h.start_ready(&env).await?;
    // Leading and running (a SIGTERM before the watches start is another path: see
    // faults.rs::a_new_leader_stopped_or_failing_while_it_retires_rows_releases_the_lease).
    testkit::eventually("replica-a leads and watches", WAIT, || async {
        let leads = metric(&ing, "ingester_leader").await == 1.0;
        Ok((leads && metric(&ing, "ingester_active_watches").await > 0.0).then_some(()))
    })
    .await?;
    // Every request from now on waits 10 minutes for an answer: the Lease release too.
    store.set_delay(600_000);
    // SHUTDOWN_TIMEOUT (6 s) plus the 1 s the release always gets and the 1 s of runtime
    // shutdown, plus slack for a loaded machine; without a bound the release waits 10 min.
    let sigterm = std::time::Instant::now();
    let status = ing.terminate(Duration::from_secs(15)).await;
    eprintln!(
        "exit after SIGTERM with a silent API server: {:?}",
        sigterm.elapsed()
    );
    store.set_delay(0);
    let status = status?;
    let log = ing.log();
    assert!(
        status.success(),
        "drained and stopped: exit {status}; log:\n{log}"
    );
    assert!(
        log.contains("releasing the leader lease timed out"),
        "log:\n{log}"
    );
    Ok(())
}

/// The table's content, row by row: global uid, resourceVersion, deleted.
async fn table_content(c: &tokio_postgres::Client) -> anyhow::Result<Vec<(String, String, bool)>> {
    Ok(c.query(
        "SELECT global_uid, coalesce(raw->'metadata'->>'resourceVersion', ''), deleted_at IS NOT NULL \
         FROM krateo_resources ORDER BY global_uid",
        &[],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_writing_before_its_lease_can_be_taken(
) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(configmap("default", "before", serde_json::json!({})))?;
    let mut ing = h.start_ready(&leader_env("replica-a", "10s")).await?;
    testkit::eventually("replica-a leads", WAIT, || async {
        Ok((metric(&ing, "ingester_leader").await == 1.0).then_some(()))
    })
    .await?;
    let created = store.create(configmap("default", "before-lock", serde_json::json!({})))?;
    h.wait_row(&uid(&created), "the leader writes", |_, deleted| !deleted)
        .await?;

    // Hold writes to the table back (reads still work): the leader's next batch waits for
    // the lock with its transaction open, as a slow commit would.
    let mut locker = h.db.client().await?;
    let lock = locker.transaction().await?;
    lock.batch_execute("LOCK TABLE krateo_resources IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    let observer = h.db.client().await?;
    let before = table_content(&observer).await?;
    for i in 0..20 {
        store.create(configmap(
            "default",
            &format!("after-lock-{i}"),
            serde_json::json!({}),
        ))?;
    }
    testkit::eventually("a batch waits for the lock", WAIT, || async {
        let n = ingester_sessions(&observer, true)
            .await
            .map_err(|e| e.to_string())?;
        Ok((n > 0).then_some(()))
    })
    .await?;

    // Now the API server fails every request: the Lease cannot be renewed.
    let failures_before = ing
        .log()
        .matches("renewing the leader lease failed")
        .count();
    store.fail_next(u64::MAX / 2);
    testkit::eventually("a renewal fails", WAIT, || async {
        let n = ing
            .log()
            .matches("renewing the leader lease failed")
            .count();
        Ok((n > failures_before).then_some(()))
    })
    .await?;
    let spec = lease_spec(&store);
    assert_eq!(spec["holderIdentity"], "replica-a", "lease: {spec}");
    let renewed: DateTime<Utc> = spec["renewTime"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| anyhow::anyhow!("renewTime in {spec}: {e}"))?;
    // From here on a standby may take the Lease (it counts from when it saw that renewal,
    // which is after renewTime).
    let takeover_possible = renewed + chrono::Duration::from_std(LEASE_DURATION)?;
    let until_takeover = (takeover_possible - Utc::now())
        .to_std()
        .unwrap_or_default();

    // The leader gives up at its renew deadline and exits before a standby could lead.
    let status = ing.wait_exit(until_takeover).await?;
    eprintln!(
        "the deposed leader exited {:?} after its last renewTime (a standby may take over after {LEASE_DURATION:?})",
        (Utc::now() - renewed).to_std().unwrap_or_default()
    );
    let log = ing.log();
    assert!(!status.success(), "exit {status}; log:\n{log}");
    assert!(
        log.contains("could not renew the leader lease"),
        "log:\n{log}"
    );
    assert!(log.contains("lost the leader lease"), "log:\n{log}");

    // Let the waiting batch go only once a standby could hold the Lease.
    let until_takeover = (takeover_possible - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(until_takeover).await;
    lock.rollback().await?;
    testkit::eventually("the ingester's sessions are gone", WAIT, || async {
        let n = ingester_sessions(&observer, false)
            .await
            .map_err(|e| e.to_string())?;
        Ok((n == 0).then_some(()))
    })
    .await?;
    store.fail_next(0);
    let after = table_content(&observer).await?;
    assert_eq!(
        after, before,
        "the deposed leader wrote after its Lease could be taken"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_discovery_the_api_server_never_answers() -> anyhow::Result<()>
{
    let h = Harness::new().await?;
    let store = h.store();
    // The apps discovery document does not answer (for 10 minutes): the Deployment and
    // ReplicaSet routes stay in discovery while every other route runs.
    store.set_path_delay("/apis/apps/v1", 600_000);
    let mut ing = h.spawn(&[("SHUTDOWN_TIMEOUT", "5s")])?;
    testkit::eventually("the other routes watch", WAIT, || async {
        Ok((metric(&ing, "ingester_active_watches").await >= 3.0).then_some(()))
    })
    .await?;
    let status = ing.terminate(Duration::from_secs(20)).await;
    store.set_path_delay("/apis/apps/v1", 0);
    let status = status?;
    let log = ing.log();
    assert!(
        status.success(),
        "SIGTERM during a hanging discovery: exit {status}; log:\n{log}"
    );
    assert!(log.contains("queue drained and flushed"), "{log}");
    Ok(())
}
