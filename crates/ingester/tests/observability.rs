//! What an operator sees: the per-watch series (lag as the time of the newest committed
//! change, listed objects, committed resourceVersion, bytes received), their removal when a
//! watch stops, compressed API responses, and the start-up lines about the PostgreSQL
//! connection's protection and about a bad DB_PARAMS.

mod common;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use testkit::process::metric_value;

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The series text of a per-watch metric (labels in the order the service writes them).
fn series(name: &str, group: &str, version: &str, plural: &str, ns: &str) -> String {
    format!("{name}{{group=\"{group}\",version=\"{version}\",plural=\"{plural}\",watch_namespace=\"{ns}\"}}")
}

fn configmaps(name: &str) -> String {
    series(name, "", "v1", "configmaps", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_watch_series_show_lag_listed_objects_and_the_committed_version() -> anyhow::Result<()>
{
    let h = Harness::new().await?;
    let store = h.store();
    for i in 0..3 {
        store.create(configmap("default", &format!("cm{i}"), json!({"k": "v"})))?;
    }
    let started = now_unix();
    let ing = h
        .start_ready(&[FAST_CHECKPOINTS, ("STATUS_INTERVAL", "1s")])
        .await?;
    h.wait_count("resource_kind = 'ConfigMap' AND deleted_at IS NULL", 3)
        .await?;
    let late = store.create(configmap("default", "cm-late", json!({"k": "v"})))?;
    let late_rv: f64 = rv(&late).parse()?;
    h.wait_row(&uid(&late), "late configmap", |_, _| true)
        .await?;

    let text = testkit::eventually("configmaps series past the late change", WAIT, || async {
        let text = ing.metrics().await?;
        let committed = metric_value(
            &text,
            &configmaps("ingester_watch_committed_resource_version"),
        );
        if committed.is_some_and(|c| c >= late_rv) {
            Ok(Some(text))
        } else {
            Err(format!(
                "committed resourceVersion {committed:?} < {late_rv}"
            ))
        }
    })
    .await?;
    let listed = metric_value(&text, &configmaps("ingester_watch_listed_objects"));
    assert_eq!(listed, Some(3.0), "the initial list had 3 objects:\n{text}");
    let at = metric_value(
        &text,
        &configmaps("ingester_watch_last_committed_change_timestamp_seconds"),
    )
    .ok_or_else(|| anyhow::anyhow!("no lag timestamp:\n{text}"))?;
    assert!(
        at >= started && at <= now_unix() + 1.0,
        "the newest committed change was read during the test: {at} not in [{started}, now]"
    );
    let bytes =
        metric_value(&text, &configmaps("ingester_watch_received_bytes_total")).unwrap_or_default();
    assert!(bytes > 0.0, "bytes received for configmaps:\n{text}");
    // Cluster-scoped kinds and every static route have their own series.
    assert!(
        metric_value(
            &text,
            &series("ingester_watch_listed_objects", "", "v1", "namespaces", "")
        )
        .is_some(),
        "{text}"
    );

    // The status line names the worst lag.
    testkit::eventually("status line with the worst lag", WAIT, || async {
        let log = plain(&ing.log());
        let line = log
            .lines()
            .find(|l| l.contains("pipeline status") && l.contains("worst_lag_seconds="));
        match line {
            Some(l) if l.contains("worst_lag_watch=") => Ok(Some(())),
            _ => Err("no status line with worst_lag_seconds yet".to_owned()),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_watch_leaves_no_series_behind() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    let group = "composition.krateo.io";
    store.create(crd_json(
        group,
        "widgetapps",
        "WidgetApp",
        &[("v1", true, true)],
        "Namespaced",
    ))?;
    store.create(cr_json(group, "v1", "WidgetApp", Some("default"), "w1"))?;
    let ing = h.start_ready(&[FAST_CHECKPOINTS]).await?;
    let listed = series(
        "ingester_watch_listed_objects",
        group,
        "v1",
        "widgetapps",
        "",
    );
    let fresh = series(
        "ingester_watch_last_committed_change_timestamp_seconds",
        group,
        "v1",
        "widgetapps",
        "",
    );
    testkit::eventually("series of the CRD's watch", WAIT, || async {
        let text = ing.metrics().await?;
        match (metric_value(&text, &listed), metric_value(&text, &fresh)) {
            (Some(1.0), Some(_)) => Ok(Some(())),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    store.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        &format!("widgetapps.{group}"),
    )?;
    h.wait_count("resource_kind = 'WidgetApp' AND deleted_at IS NULL", 0)
        .await?;
    testkit::eventually("no series of the stopped watch", WAIT, || async {
        let text = ing.metrics().await?;
        let ghosts: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("widgetapps"))
            .collect();
        if ghosts.is_empty() {
            Ok(Some(()))
        } else {
            Err(format!("still exported: {ghosts:?}"))
        }
    })
    .await?;
    Ok(())
}

/// Realistic text that gzip shrinks as it does real objects (repeated keys and words).
fn data(i: usize) -> Value {
    let mut d = serde_json::Map::new();
    for k in 0..12 {
        d.insert(
            format!("setting-{k}"),
            json!(format!(
                "value {i}-{k} of the application configuration, enabled=true, replicas=3"
            )),
        );
    }
    Value::Object(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_lists_sync_the_same_rows_with_fewer_bytes() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    let n = 400;
    let (created, err) = store.create_many(
        (0..n).map(|i| configmap("default", &format!("cm{i}"), data(i))),
        false,
    );
    anyhow::ensure!(created == n && err.is_none(), "{created} created: {err:?}");
    let objects = store.list("v1", "ConfigMap", Some("default"));
    let plain_bytes: usize = objects.iter().map(|o| o.to_string().len()).sum();
    // One page holds every object: well over the API server's 128 KiB threshold.
    assert!(plain_bytes > 2 * 128 * 1024, "{plain_bytes} bytes");

    let ing = h
        .start_ready(&[
            ("API_COMPRESSION", "true"),
            ("STREAMING_LISTS", "false"),
            ("LIST_PAGE_SIZE", "1000"),
        ])
        .await?;
    h.wait_count(
        "resource_kind = 'ConfigMap' AND deleted_at IS NULL",
        n as i64,
    )
    .await?;
    let c = h.db.client().await?;
    let rows: HashMap<String, Value> = c
        .query(
            "SELECT uid, raw FROM krateo_resources WHERE resource_kind = 'ConfigMap'",
            &[],
        )
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for o in &objects {
        assert_eq!(rows.get(&uid(o)), Some(o), "row of {}", uid(o));
    }
    let text = ing.metrics().await.map_err(anyhow::Error::msg)?;
    let received = metric_value(&text, &configmaps("ingester_watch_received_bytes_total"))
        .ok_or_else(|| anyhow::anyhow!("no bytes series:\n{text}"))?;
    assert!(
        received > 0.0 && received < plain_bytes as f64 / 3.0,
        "compressed list: {received} bytes on the wire for {plain_bytes} bytes of objects"
    );
    Ok(())
}

/// The machine's PostgreSQL must offer TLS for the TLS half of these tests (Debian's does).
async fn server_offers_tls(h: &Harness) -> anyhow::Result<bool> {
    let c = h.db.client().await?;
    let ssl: String = c.query_one("SHOW ssl", &[]).await?.get(0);
    Ok(ssl == "on")
}

fn line_with<'a>(log: &'a str, text: &str) -> Option<&'a str> {
    log.lines().find(|l| l.contains(text))
}

/// The log without terminal colour codes (`ESC [ ... m`).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_server_certificate_is_a_warning() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    anyhow::ensure!(
        server_offers_tls(&h).await?,
        "the test PostgreSQL has ssl=off: this test needs one that offers TLS"
    );
    for mode in ["require", "prefer"] {
        let params = format!("sslmode={mode}");
        let mut ing = h.start_ready(&[("DB_PARAMS", &params)]).await?;
        let log = plain(&ing.log());
        let line = line_with(&log, "server certificate is not verified")
            .ok_or_else(|| anyhow::anyhow!("sslmode={mode}: no warning:\n{log}"))?;
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(&format!("sslmode=\"{mode}\"")), "{line}");
        assert!(line_with(&log, "not encrypted").is_none(), "{log}");
        ing.terminate(WAIT).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_with_a_password_is_an_error_line() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    // Trust authentication ignores the password; the ingester still sends it in the clear
    // with sslmode=disable, and says so.
    let secret = "pw-not-in-logs-7781";
    let ing = h
        .start_ready(&[("DB_PARAMS", "sslmode=disable"), ("DB_PASS", secret)])
        .await?;
    let log = plain(&ing.log());
    let line = line_with(&log, "not encrypted while a password is used")
        .ok_or_else(|| anyhow::anyhow!("no error line:\n{log}"))?;
    assert!(line.contains("ERROR"), "{line}");
    assert!(!log.contains(secret), "password in the log:\n{log}");
    drop(ing);

    // Without a password plain text is only noted.
    let ing = h.start_ready(&[("DB_PARAMS", "sslmode=disable")]).await?;
    let log = plain(&ing.log());
    let line = line_with(&log, "PostgreSQL connection not encrypted")
        .ok_or_else(|| anyhow::anyhow!("no transport line:\n{log}"))?;
    assert!(line.contains("INFO"), "{line}");
    assert!(
        line_with(&log, "while a password is used").is_none(),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_db_params_names_the_key_and_never_the_value() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    for bad in [
        "sslmode=require&password=hunter2",
        "connect_timeout=hunter2",
        "sslmode=require&hunter2",
    ] {
        let mut ing = h.spawn(&[("DB_PARAMS", bad)])?;
        let status = ing.wait_exit(WAIT).await?;
        assert_eq!(status.code(), Some(2), "DB_PARAMS={bad}");
        let log = plain(&ing.log());
        assert!(log.contains("DB_PARAMS"), "{log}");
        assert!(!log.contains("hunter2"), "DB_PARAMS={bad} echoed:\n{log}");
    }
    Ok(())
}

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const CHART: &str = "deploy/chart/resources-ingester";
const DASHBOARD: &str = "files/dashboards/resources-ingester.json";
const ALERT_RULES: &str = "files/alert-rules.yaml";

/// The metric names a PromQL expression reads: identifiers that are not functions, keywords,
/// label names (inside `{}` or `by (...)`), strings, durations or Grafana variables.
fn promql_metric_names(expr: &str) -> std::collections::BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
    ];
    // Aggregation operators: `sum by (x) (...)` puts the grouping between name and call.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Drop strings, label matchers and ranges first.
    let mut plain = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_string = false;
    let mut escaped = false;
    for c in expr.chars() {
        if in_string {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => plain.push(c),
        }
        if c == '}' || c == ']' {
            plain.push(' ');
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = std::collections::BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '$' || c.is_ascii_digit() || c == '.' {
            // A variable or a number (with its unit or exponent): skip it whole.
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = j < chars.len() && chars[j] == '(';
            if call && GROUPING.contains(&word.as_str()) {
                // Skip the label list.
                while j < chars.len() && chars[j] != ')' {
                    j += 1;
                }
                i = j + 1;
            } else if !call
                && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                && !AGGREGATIONS.contains(&word.as_str())
            {
                names.insert(word);
            }
            continue;
        }
        i += 1;
    }
    names
}

#[test]
fn promql_names_are_found() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{pod=~"$pod", x="}"}[$__rate_interval]))) / on(pod) group_left b_total > 1e3 and time() - c offset 5m"#,
    );
    let expected: std::collections::BTreeSet<String> = ["a_seconds_bucket", "b_total", "c"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, expected);
}

/// Every `expr` (and Grafana `label_values(...)` query) in a dashboard.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    ("query" | "definition", Value::String(q)) => {
                        if let Some(inner) = q
                            .trim()
                            .strip_prefix("label_values(")
                            .and_then(|r| r.strip_suffix(')'))
                        {
                            // The selector is the first argument; the label name the last.
                            let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s);
                            out.push(selector.to_owned());
                        }
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// Metric families in Prometheus text: the names of the `# TYPE` lines.
fn exported_families(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn is_exported(name: &str, families: &std::collections::BTreeSet<String>) -> bool {
    families.contains(name)
        || ["_total", "_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| families.contains(base))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alert_rules_query_only_exported_metrics() -> anyhow::Result<()> {
    let chart = repo_root().join(CHART);
    let dashboard_text = std::fs::read_to_string(chart.join(DASHBOARD))?;
    let dashboard: Value = serde_json::from_str(&dashboard_text)?;
    // deploy/dashboards/ holds the same file (a link to the chart's copy).
    let shipped =
        std::fs::read_to_string(repo_root().join("deploy/dashboards/resources-ingester.json"))?;
    assert_eq!(shipped, dashboard_text);
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join(ALERT_RULES))?)?;
    // The chart templates ship exactly these files.
    let rule_template = std::fs::read_to_string(chart.join("templates/prometheusrule.yaml"))?;
    assert!(rule_template.contains(&format!(".Files.Get \"{ALERT_RULES}\"")));
    let dashboard_template =
        std::fs::read_to_string(chart.join("templates/configmap-dashboard.yaml"))?;
    assert!(dashboard_template.contains(&format!(".Files.Get \"{DASHBOARD}\"")));

    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let panels = dashboard["panels"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_default();
    assert!(
        panels > 10 && queries.len() > 20,
        "{panels} panels, {} queries",
        queries.len()
    );
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let name = rule["alert"].as_str().unwrap_or_default().to_owned();
            let expr = rule["expr"].as_str().unwrap_or_default().to_owned();
            alerts.push((name, expr));
        }
    }
    let alert_names: Vec<&str> = alerts.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in [
        "NotReady",
        "Lagging",
        "WriteFailures",
        "RecordsDropped",
        "DatabaseDown",
    ] {
        assert!(
            alert_names.iter().any(|n| n.ends_with(wanted)),
            "no {wanted} alert: {alert_names:?}"
        );
    }

    // The families of a running ingester, with per-watch series in place.
    let h = Harness::new().await?;
    let ing = h.start_ready(&[FAST_CHECKPOINTS]).await?;
    let text = testkit::eventually("per-watch series", WAIT, || async {
        let text = ing.metrics().await?;
        if text.contains("ingester_watch_last_committed_change_timestamp_seconds{") {
            Ok(Some(text))
        } else {
            Err("no lag series yet".to_owned())
        }
    })
    .await?;
    let families = exported_families(&text);
    let mut used = std::collections::BTreeSet::new();
    let mut unknown = Vec::new();
    let sources = queries
        .iter()
        .map(|q| ("dashboard".to_owned(), q.clone()))
        .chain(
            alerts
                .iter()
                .map(|(n, e)| (format!("alert {n}"), e.clone())),
        );
    for (source, expr) in sources {
        let names = promql_metric_names(&expr);
        assert!(!names.is_empty(), "{source}: no metric in {expr}");
        for name in names {
            if !is_exported(&name, &families) {
                unknown.push(format!("{source}: {name} in {expr}"));
            }
            used.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "not exported: {unknown:#?}\nexported: {families:?}"
    );
    for needed in [
        "ingester_watch_last_committed_change_timestamp_seconds",
        "ingester_queue_depth",
        "ingester_queue_bytes",
        "ingester_batch_flush_duration_seconds_bucket",
        "ingester_write_failures_total",
        "ingester_relists_total",
        "ingester_sweep_deletes_total",
        "ingester_db_up",
        "ingester_leader",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    Ok(())
}
