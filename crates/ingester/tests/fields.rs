//! Field policies end to end: Secrets are stored with their keys and without their values,
//! pruned paths never reach the table, and a policy that would drop labels stops start-up.

mod common;

use common::*;
use resources_ingester::row::fields::{LAST_APPLIED, REDACTED};
use serde_json::{json, Value};

/// The values of the test Secret, as stored in `data` (base64), in `stringData` (plain) and
/// decoded: none of them may appear anywhere in the table.
const PASSWORD: &str = "s3cr3t-P@ssw0rd-4711";
const PASSWORD_B64: &str = "czNjcjN0LVBAc3N3MHJkLTQ3MTE=";
const TOKEN: &str = "plain-token-0c9a1f7e5b";

/// A route file watching Secrets and Pods.
fn routes(h: &Harness) -> anyhow::Result<String> {
    let path = h.dir.path().join("routes");
    std::fs::write(&path, "/v1/secrets/Secret\n/v1/pods/Pod\n")?;
    Ok(path.display().to_string())
}

/// A Secret as `kubectl apply` leaves it: data, stringData and the last-applied annotation,
/// which repeats both.
fn secret(ns: &str, name: &str) -> Value {
    let applied = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "data": {"password": PASSWORD_B64},
        "stringData": {"token": TOKEN},
    });
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "db"},
                     "annotations": {LAST_APPLIED: applied.to_string(), "team": "payments"}},
        "type": "Opaque",
        "data": {"password": PASSWORD_B64, "username": "YWRtaW4="},
        "stringData": {"token": TOKEN},
    })
}

/// Rows (whole row text, every column) containing `needle`.
async fn rows_containing(h: &Harness, needle: &str) -> anyhow::Result<i64> {
    let c = h.db.client().await?;
    Ok(c.query_one(
        "SELECT count(*) FROM krateo_resources t WHERE strpos(t::text, $1) > 0",
        &[&needle],
    )
    .await?
    .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_stored_with_their_keys_and_without_their_values() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("team-a"))?;
    let created = store.create(secret("team-a", "db-credentials"))?;
    let secret_uid = uid(&created);
    assert_eq!(
        created["data"]["password"], PASSWORD_B64,
        "kube-sim serves the values"
    );

    let routes = routes(&h)?;
    let ing = h.start_ready(&[("STATIC_ROUTES_FILE", &routes)]).await?;
    let raw = h
        .wait_row(&secret_uid, "secret row", |raw, deleted| {
            !deleted && raw.pointer("/metadata/name") == Some(&json!("db-credentials"))
        })
        .await?;

    // Keys kept, values replaced by the marker.
    assert_eq!(
        raw["data"],
        json!({"password": REDACTED, "username": REDACTED})
    );
    assert_eq!(raw["stringData"], json!({"token": REDACTED}));
    assert_eq!(
        raw["metadata"]["annotations"][LAST_APPLIED],
        json!(REDACTED)
    );
    assert_eq!(raw["metadata"]["annotations"]["team"], "payments");
    assert_eq!(raw["metadata"]["labels"], json!({"app": "db"}));
    assert_eq!(raw["type"], "Opaque");

    // No value in clear anywhere in the table (every column of every row), nor in the log.
    for needle in [PASSWORD_B64, PASSWORD, TOKEN, "YWRtaW4="] {
        assert_eq!(rows_containing(&h, needle).await?, 0, "{needle} stored");
        assert!(!ing.log().contains(needle), "{needle} logged");
    }

    // An update goes through the same path.
    let mut changed = created.clone();
    changed["data"]["password"] = json!("bmV3LXNlY3JldC12YWx1ZQ==");
    let updated = store.update(changed)?;
    let new_rv = rv(&updated);
    let raw = h
        .wait_row(&secret_uid, "updated secret row", |raw, _| {
            rv(raw) == new_rv
        })
        .await?;
    assert_eq!(raw["data"]["password"], REDACTED);
    assert_eq!(rows_containing(&h, "bmV3LXNlY3JldC12YWx1ZQ==").await?, 0);

    // 2 data + 1 stringData + 1 annotation per state, two states.
    assert_eq!(
        ing.metric("ingester_fields_redacted_total").await,
        Some(8.0)
    );
    assert_eq!(ing.metric("ingester_redaction_enabled").await, Some(1.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_switched_off_stores_the_values_and_warns() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("team-a"))?;
    let secret_uid = uid(&store.create(secret("team-a", "db-credentials"))?);

    let routes = routes(&h)?;
    let ing = h
        .start_ready(&[
            ("STATIC_ROUTES_FILE", &routes),
            ("REDACT_SENSITIVE", "false"),
        ])
        .await?;
    let raw = h
        .wait_row(&secret_uid, "secret row in clear", |raw, _| {
            raw.pointer("/data/password") == Some(&json!(PASSWORD_B64))
        })
        .await?;
    assert_eq!(raw["stringData"]["token"], TOKEN);
    assert_eq!(rows_containing(&h, TOKEN).await?, 1);
    let log = ing.log();
    assert!(
        log.contains("WARN") && log.contains("REDACT_SENSITIVE=false"),
        "no start-up warning:\n{log}"
    );
    assert_eq!(ing.metric("ingester_redaction_enabled").await, Some(0.0));
    assert_eq!(
        ing.metric("ingester_fields_redacted_total").await,
        Some(0.0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_paths_are_absent_and_labels_stay() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let store = h.store();
    store.create(namespace("team-a"))?;
    let mut p = pod("team-a", "web");
    p["metadata"]["managedFields"] = json!([
        {"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
         "time": "2025-01-01T00:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                      "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}}},
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "subresource": "status",
         "time": "2025-01-01T00:00:01Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:status": {"f:phase": {}}}},
    ]);
    let created = store.create(p)?;
    assert!(
        created["metadata"]["managedFields"].is_array(),
        "kube-sim keeps them"
    );
    let pod_uid = uid(&created);

    let routes = routes(&h)?;
    let ing = h
        .start_ready(&[
            ("STATIC_ROUTES_FILE", &routes),
            ("PRUNE_FIELDS", "metadata.managedFields"),
        ])
        .await?;
    let raw = h
        .wait_row(&pod_uid, "pod row", |_, deleted| !deleted)
        .await?;
    let mut expected = created.clone();
    expected["metadata"]
        .as_object_mut()
        .map(|m| m.remove("managedFields"));
    assert_eq!(raw, expected, "everything but managedFields is stored");
    assert_eq!(raw["metadata"]["labels"], json!({"app": "web"}));

    // The presenter's label filter and status_raw still work on the pruned row.
    let c = h.db.client().await?;
    let row = c
        .query_one(
            "SELECT count(*), min(status_raw::text) FROM krateo_resources
              WHERE raw->'metadata'->'labels' @> '{\"app\":\"web\"}'",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some(r#"{"phase": "Running"}"#)
    );
    assert_eq!(rows_containing(&h, "managedFields").await?, 0);

    let pruned = ing
        .metric("ingester_pruned_bytes_total")
        .await
        .unwrap_or_default();
    let dropped = format!(
        r#""managedFields":{}"#,
        serde_json::to_string(&created["metadata"]["managedFields"])?
    );
    assert_eq!(pruned, dropped.len() as f64, "bytes of the dropped member");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_drops_labels_stops_start_up_with_exit_2() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    for (var, value, says) in [
        (
            "PRUNE_FIELDS",
            "metadata.managedFields,metadata.labels",
            "metadata.labels",
        ),
        ("SENSITIVE_KINDS", "Secret", "GROUP/Kind"),
    ] {
        let mut p = h.spawn(&[(var, value)])?;
        let status = p.wait_exit(WAIT).await?;
        let log = p.log();
        assert_eq!(status.code(), Some(2), "{var}={value}: {log}");
        assert!(
            log.contains(var) && log.contains(says),
            "{var}={value}: {log}"
        );
    }
    Ok(())
}

#[test]
fn gen_rbac_warns_when_the_routes_include_secrets() -> anyhow::Result<()> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir()?;
    let run = |routes: &str| -> anyhow::Result<Option<std::process::Output>> {
        let file = dir.path().join("static");
        std::fs::write(&file, routes)?;
        Ok(std::process::Command::new("python3")
            .arg(repo.join("deploy/gen-rbac.py"))
            .arg("--print")
            .arg("--static")
            .arg(&file)
            .output()
            .ok())
    };
    let Some(with) = run("/v1/secrets/Secret\n/v1/pods/Pod\n")? else {
        return testkit::missing_tool("python3 (needed for deploy/gen-rbac.py)");
    };
    assert!(with.status.success());
    let stderr = String::from_utf8_lossy(&with.stderr);
    assert!(
        stderr.contains("warning: the static routes include Secrets")
            && stderr.contains("REDACT_SENSITIVE"),
        "{stderr}"
    );
    let without = run("/v1/pods/Pod\n")?.expect("python3 ran once");
    assert!(without.status.success());
    assert!(!String::from_utf8_lossy(&without.stderr).contains("Secrets"));
    Ok(())
}

/// A routes file that spells the Secret kind otherwise (`secret`, `Secrets`): the policy
/// follows the kind the server says its objects are, for watch events, streaming lists and
/// paged lists (whose items come without a kind on a real server), so no spelling stores a
/// Secret in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_the_secret_kind_in_the_routes_file_stores_a_value() -> anyhow::Result<()> {
    for (line, streaming) in [
        ("/v1/secrets/secret", "true"),
        ("/v1/secrets/Secrets", "false"),
    ] {
        let h = Harness::new().await?;
        let store = h.store();
        store.create(namespace("team-a"))?;
        let listed = uid(&store.create(secret("team-a", "listed"))?);
        let path = h.dir.path().join("routes");
        std::fs::write(&path, format!("{line}\n/v1/pods/Pod\n"))?;
        let routes = path.display().to_string();
        let ing = h
            .start_ready(&[
                ("STATIC_ROUTES_FILE", &routes),
                ("STREAMING_LISTS", streaming),
            ])
            .await?;
        let watched = uid(&store.create(secret("team-a", "watched"))?);
        for (u, what) in [(&listed, "listed"), (&watched, "watched")] {
            let raw = h
                .wait_row(u, &format!("{line}: the {what} secret"), |_, d| !d)
                .await?;
            assert_eq!(raw["data"]["password"], REDACTED, "{line}, {what}");
            assert_eq!(raw["stringData"]["token"], REDACTED, "{line}, {what}");
        }
        for needle in [PASSWORD_B64, TOKEN] {
            assert_eq!(
                rows_containing(&h, needle).await?,
                0,
                "{line}: {needle} stored"
            );
            assert!(!ing.log().contains(needle), "{line}: {needle} logged");
        }
        // The rows carry the kind as the server spells it, and the log says the file differs.
        let kinds: Vec<String> = h
            .db
            .client()
            .await?
            .query(
                "SELECT DISTINCT resource_kind FROM krateo_resources WHERE resource_plural = 'secrets'",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(kinds, vec!["Secret".to_owned()], "{line}");
        assert!(
            ing.log().contains("names this resource's kind otherwise"),
            "{}",
            ing.log()
        );
    }
    Ok(())
}
