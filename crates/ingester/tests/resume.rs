//! Resume points: a restart inside the API server's history window watches from where the
//! last run got to instead of listing; past the window (410 Gone) it lists and sweeps.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn stored_resume_point(h: &Harness, scope: &str) -> anyhow::Result<Option<i64>> {
    let c = h.db.client().await?;
    let row = c
        .query_opt(
            "SELECT resource_version FROM krateo_ingester_watch_state WHERE cluster_name = $1 AND scope = $2",
            &[&CLUSTER, &scope],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Syncs `pods` pods, waits for the pods' resume point to cover them, and stops with SIGTERM.
async fn first_run(h: &Harness, pods: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    let store = h.store();
    store.create(namespace("r"))?;
    let mut objs = Vec::new();
    for i in 0..pods {
        objs.push(store.create(pod("r", &format!("p{i}")))?);
    }
    let newest: i64 = rv(objs.last().ok_or_else(|| anyhow::anyhow!("no pods"))?).parse()?;
    let mut ing = h.start_ready(&[FAST_CHECKPOINTS]).await?;
    h.wait_count(
        "resource_plural = 'pods' AND deleted_at IS NULL",
        pods as i64,
    )
    .await?;
    testkit::eventually("the pods' resume point", WAIT, || async {
        let p = stored_resume_point(h, "/v1/pods/*")
            .await
            .map_err(|e| e.to_string())?;
        Ok(p.filter(|p| *p >= newest))
    })
    .await?;
    let status = ing.terminate(Duration::from_secs(30)).await?;
    anyhow::ensure!(status.success(), "first run exit {status}");
    Ok(objs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_inside_the_history_window_resumes_without_listing() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    let objs = first_run(&h, 20).await?;

    // While the ingester is down: 3 deletes, 2 updates, 2 creates.
    for o in &objs[..3] {
        store.delete(
            "v1",
            "Pod",
            Some("r"),
            o["metadata"]["name"].as_str().unwrap_or_default(),
        )?;
    }
    let mut updated = Vec::new();
    for o in &objs[3..5] {
        let mut o = o.clone();
        o["metadata"]["labels"]["changed"] = json!("yes");
        updated.push(store.update(o)?);
    }
    let created = vec![
        store.create(pod("r", "new-1"))?,
        store.create(pod("r", "new-2"))?,
    ];

    let ing = h.start_ready(&[FAST_CHECKPOINTS]).await?;
    for o in &objs[..3] {
        h.wait_row(&uid(o), "deleted while down", |_, d| d).await?;
    }
    for o in updated.iter().chain(&created) {
        h.wait_row(&uid(o), "changed while down", |raw, d| !d && raw == o)
            .await?;
    }
    let m = ing.metrics().await.map_err(anyhow::Error::msg)?;
    let metric = |s: &str| testkit::process::metric_value(&m, s).unwrap_or(0.0);
    assert!(
        metric("ingester_watch_resumes_total{outcome=\"resumed\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric("ingester_sweep_deletes_total"),
        0.0,
        "the deletes came as events, not from a list: {m}"
    );
    // Exactly the 7 changes were written: nothing was relisted and rewritten.
    assert_eq!(metric("ingester_rows_written_total"), 7.0, "{m}");
    assert!(ing.log().contains("resuming watch"), "{}", ing.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_past_the_history_window_lists_and_finds_the_deletes() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    let objs = first_run(&h, 10).await?;
    for o in &objs[..3] {
        store.delete(
            "v1",
            "Pod",
            Some("r"),
            o["metadata"]["name"].as_str().unwrap_or_default(),
        )?;
    }
    store.compact();

    let ing = h.start_ready(&[FAST_CHECKPOINTS]).await?;
    for o in &objs[..3] {
        h.wait_row(&uid(o), "deleted while down, found by the list", |_, d| d)
            .await?;
    }
    h.wait_count("resource_plural = 'pods' AND deleted_at IS NULL", 7)
        .await?;
    let m = ing.metrics().await.map_err(anyhow::Error::msg)?;
    let metric = |s: &str| testkit::process::metric_value(&m, s).unwrap_or(0.0);
    assert!(
        metric("ingester_watch_resumes_total{outcome=\"expired\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric("ingester_relists_total{reason=\"expired\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(metric("ingester_sweep_deletes_total"), 3.0, "{m}");
    assert_eq!(
        metric("ingester_rows_written_total"),
        0.0,
        "unchanged objects are not rewritten: {m}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_can_be_turned_off() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    first_run(&h, 5).await?;
    let ing = h.start_ready(&[("WATCH_RESUME", "false")]).await?;
    h.wait_count("resource_plural = 'pods' AND deleted_at IS NULL", 5)
        .await?;
    let m = ing.metrics().await.map_err(anyhow::Error::msg)?;
    // The outcomes are exported from the start, at 0.
    for outcome in ["resumed", "expired"] {
        let series = format!("ingester_watch_resumes_total{{outcome=\"{outcome}\"}}");
        assert_eq!(
            testkit::process::metric_value(&m, &series),
            Some(0.0),
            "{m}"
        );
    }
    assert!(
        testkit::process::metric_value(&m, "ingester_rows_unchanged_skipped_total").unwrap_or(0.0)
            >= 5.0,
        "{m}"
    );
    Ok(())
}
