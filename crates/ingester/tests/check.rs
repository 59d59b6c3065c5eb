//! `resources-ingester check` against kube-sim (with its authorization answers) and a real
//! PostgreSQL: a good set-up passes, a route this identity may not watch and a database role
//! without rights fail naming what is missing, `--output json` parses, nothing is written.

mod common;

use common::*;
use kube_sim::DenyRule;
use serde_json::Value;

/// A password the check must never print (trust authentication never asks for it).
const PASSWORD: &str = "chk-Secret-9f3a";

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The table line of check `name`: (status, detail).
    fn line(&self, name: &str) -> (String, String) {
        let found = self.stdout.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            // The name column is padded with spaces; a longer name sharing the prefix is not it.
            if !rest.starts_with("  ") {
                return None;
            }
            let rest = rest.trim_start();
            let (status, detail) = rest.split_once(' ')?;
            Some((status.to_owned(), detail.trim_start().to_owned()))
        });
        found.unwrap_or_else(|| panic!("no line {name:?} in:\n{}", self.stdout))
    }
}

async fn check(h: &Harness, extra: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Outcome> {
    let mut env = h.env(extra);
    if !extra.iter().any(|(k, _)| *k == "DB_PASS") {
        env.retain(|(k, _)| k != "DB_PASS");
        env.push(("DB_PASS".into(), PASSWORD.into()));
    }
    if !extra.iter().any(|(k, _)| *k == "DB_READY_TIMEOUT") {
        env.retain(|(k, _)| k != "DB_READY_TIMEOUT");
        env.push(("DB_READY_TIMEOUT".into(), "5s".into()));
    }
    let args: Vec<String> = std::iter::once("check".to_owned())
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_resources-ingester"))
            .args(&args)
            .env_clear()
            .envs(env)
            .output()
    })
    .await??;
    let outcome = Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !outcome.stdout.contains(PASSWORD) && !outcome.stderr.contains(PASSWORD),
        "the password was printed:\n{}{}",
        outcome.stdout,
        outcome.stderr
    );
    Ok(outcome)
}

/// `resources-ingester migrate` as the harness's role: the schema complete.
async fn migrate(h: &Harness) -> anyhow::Result<()> {
    let env = h.env(&[]);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_resources-ingester"))
            .arg("migrate")
            .env_clear()
            .envs(env)
            .output()
    })
    .await??;
    anyhow::ensure!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_setup_passes_and_nothing_is_written() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    h.store().create(namespace("team-a"))?;
    h.store().create(pod("team-a", "web"))?;
    h.store().create(crd_json(
        "composition.krateo.io",
        "fireworksapps",
        "FireworksApp",
        &[("v1alpha1", true, true)],
        "Namespaced",
    ))?;
    migrate(&h).await?;

    let out = check(&h, &[], &[]).await?;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let kube_system = h.sim.system_namespace_uid().expect("kube-system");
    let expect = [
        ("database", "OK", "PostgreSQL "),
        ("database lz4", "", "lz4"),
        ("schema", "OK", "complete: start-up runs no DDL"),
        ("migrate", "OK", "needed: no"),
        ("database rights", "OK", "may read and write every table"),
        ("api server", "OK", "Kubernetes v1.32.0-kube-sim"),
        ("streaming lists", "OK", "served"),
        ("route pods", "OK", "served (namespaced); may list, watch"),
        (
            "route namespaces",
            "OK",
            "served (cluster-scoped); may list, watch",
        ),
        (
            "route deployments.apps",
            "OK",
            "served (namespaced); may list, watch",
        ),
        (
            "group composition.krateo.io",
            "OK",
            "served; 1 CRDs: fireworksapps; may list, watch",
        ),
        ("group ai.krateo.io", "OK", "0 CRDs"),
        (
            "cluster name",
            "OK",
            "\"test-cluster\" (set by CLUSTER_NAME)",
        ),
        (
            "cluster identity",
            "OK",
            &format!("{kube_system} (kube-system namespace uid)"),
        ),
        ("cluster name owner", "OK", "is not claimed yet"),
    ];
    for (name, status, detail) in expect {
        let (s, d) = out.line(name);
        if !status.is_empty() {
            assert_eq!(s, status, "{name}: {d}");
        }
        assert!(d.contains(detail), "{name}: {d:?} lacks {detail:?}");
    }
    assert!(
        out.stdout
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with("CHECK "),
        "{}",
        out.stdout
    );
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("resources-ingester would run: 0 failed"),
        "{last}"
    );

    // No row and no claim: check only reads.
    let c = h.db.client().await?;
    for table in [
        "krateo_resources",
        "krateo_ingester_clusters",
        "krateo_ingester_coverage",
    ] {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        assert_eq!(n, 0, "{table}");
    }

    // NAMESPACES: the rights are asked per namespace.
    let out = check(&h, &[("NAMESPACES", "team-a,team-b")], &[]).await?;
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.line("route pods").1.contains("may list, watch"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_this_identity_may_not_watch_fails_in_the_table_and_the_json() -> anyhow::Result<()>
{
    let h = Harness::new().await?;
    migrate(&h).await?;
    h.sim.deny(DenyRule::new("watch", "", "pods"));

    let out = check(&h, &[], &[]).await?;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let (status, detail) = out.line("route pods");
    assert_eq!(status, "FAIL", "{detail}");
    assert!(detail.contains("may NOT watch"), "{detail}");
    assert_eq!(out.line("route configmaps").0, "OK");
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(last.contains("would NOT run: 1 failed"), "{last}");

    // Restricted to namespaces, the denial is named per namespace.
    let out = check(&h, &[("NAMESPACES", "a")], &[]).await?;
    assert_eq!(out.code, 1);
    assert!(
        out.line("route pods").1.contains("may NOT watch in a"),
        "{}",
        out.stdout
    );

    let out = check(&h, &[], &["--output", "json"]).await?;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let json: Value =
        serde_json::from_str(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {}", out.stdout))?;
    assert_eq!(json["wouldRun"], false);
    assert_eq!(json["failures"], 1);
    let checks = json["checks"].as_array().expect("checks");
    let pods = checks
        .iter()
        .find(|c| c["name"] == "route pods")
        .expect("route pods");
    assert_eq!(pods["status"], "FAIL");
    assert!(checks
        .iter()
        .all(|c| c["name"].is_string() && c["detail"].is_string()));
    assert!(checks
        .iter()
        .any(|c| c["name"] == "database" && c["status"] == "OK"));

    // What the check predicted is what the server does: the watch is refused with 403.
    let url = format!("{}/api/v1/pods?watch=true", h.sim.base_url());
    let answer = reqwest::get(&url).await?;
    assert_eq!(answer.status().as_u16(), 403);
    let status: Value = answer.json().await?;
    assert_eq!(status["reason"], "Forbidden");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_role_without_rights_fails_naming_what_is_missing() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    migrate(&h).await?;
    let role = format!("chk_{}", &h.db.name.trim_start_matches("it_")[..12]);
    let admin = h.db.client().await?;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT CONNECT ON DATABASE {db} TO {role};",
            db = h.db.name
        ))
        .await?;
    let out = check(&h, &[("DB_USER", &role)], &[]).await;
    // Roles are server-wide: dropped whatever the check said.
    admin
        .batch_execute(&format!(
            "REVOKE CONNECT ON DATABASE {db} FROM {role}; DROP ROLE {role};",
            db = h.db.name
        ))
        .await?;
    let out = out?;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let (status, detail) = out.line("database rights");
    assert_eq!(status, "FAIL", "{detail}");
    for named in [
        "SELECT, INSERT, UPDATE on krateo_resources",
        "on krateo_ingester_watch_state",
        "on krateo_ingester_clusters",
        &format!("GRANT SELECT, INSERT, UPDATE ON krateo_resources TO \"{role}\";"),
    ] {
        assert!(detail.contains(named), "{named:?} not in {detail}");
    }
    let (status, detail) = out.line("migrate");
    assert_eq!(status, "OK");
    assert!(detail.starts_with("needed: no"), "{detail}");
    assert_eq!(out.line("schema").0, "OK");
    assert_eq!(out.line("database").0, "OK");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_kube_system_fails_unless_cluster_id_is_set() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    migrate(&h).await?;
    h.sim.deny(DenyRule {
        namespace: None,
        ..DenyRule::new("get", "", "namespaces")
    });
    let out = check(&h, &[], &[]).await?;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let (status, detail) = out.line("cluster identity");
    assert_eq!(status, "FAIL");
    assert!(
        detail.contains("resourceNames: [\"kube-system\"]") && detail.contains("CLUSTER_ID"),
        "{detail}"
    );

    let out = check(&h, &[("CLUSTER_ID", "prod-eu-1-2026")], &[]).await?;
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(
        out.line("cluster identity").1,
        "prod-eu-1-2026 (CLUSTER_ID)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_and_the_api_server_is_still_checked() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    // A port nobody listens on.
    let port = testkit::free_port().to_string();
    let out = check(
        &h,
        &[
            ("DB_HOST", "127.0.0.1"),
            ("DB_PORT", &port),
            ("DB_READY_TIMEOUT", "1s"),
        ],
        &["--output", "json"],
    )
    .await?;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let json: Value = serde_json::from_str(&out.stdout)?;
    let status = |name: &str| {
        json["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(status("database").as_deref(), Some("FAIL"));
    assert_eq!(status("api server").as_deref(), Some("OK"));
    assert_eq!(status("route pods").as_deref(), Some("OK"));
    assert_eq!(status("cluster identity").as_deref(), Some("OK"));
    assert_eq!(status("schema"), None, "nothing to inspect");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_history_partition_warns_when_this_role_may_not_create_it() -> anyhow::Result<()>
{
    let h = Harness::new().await?;
    migrate(&h).await?;
    let history = [("HISTORY", "true")];
    let out = check(&h, &history, &[]).await?;
    assert_eq!(out.line("history partitions").0, "OK", "{}", out.stdout);
    assert!(out.line("history partitions").1.contains("exists"));
    // Without HISTORY there is no such line.
    let out = check(&h, &[], &[]).await?;
    assert!(!out.stdout.contains("history partitions"), "{}", out.stdout);

    let admin = h.db.client().await?;
    let row = admin
        .query_one(
            "SELECT 'krateo_resource_history_p' || to_char((now() AT TIME ZONE 'UTC') + interval '1 day', 'YYYYMMDD'),
                    to_char((now() AT TIME ZONE 'UTC') + interval '1 day', 'YYYY-MM-DD')",
            &[],
        )
        .await?;
    let (tomorrow, day): (String, String) = (row.get(0), row.get(1));
    admin
        .batch_execute(&format!("DROP TABLE {tomorrow}"))
        .await?;
    // The owner may create it: start-up would.
    let out = check(&h, &history, &[]).await?;
    let (status, detail) = out.line("history partitions");
    assert_eq!(status, "OK", "{detail}");
    assert!(detail.contains("may maintain"), "{detail}");

    // A role with row rights only may not: a warning naming the command.
    let role = format!("chk_{}", &h.db.name.trim_start_matches("it_")[..12]);
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT CONNECT ON DATABASE {db} TO {role};
             GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role};",
            db = h.db.name
        ))
        .await?;
    let out = check(&h, &[("HISTORY", "true"), ("DB_USER", &role)], &[]).await;
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role};
             REVOKE CONNECT ON DATABASE {db} FROM {role}; DROP ROLE {role};",
            db = h.db.name
        ))
        .await?;
    let out = out?;
    let (status, detail) = out.line("history partitions");
    assert_eq!(status, "WARN", "{detail}");
    assert!(
        detail.contains("history maintain") && detail.contains(&day),
        "{detail}"
    );
    Ok(())
}

#[test]
fn a_subcommand_without_database_settings_names_the_variables() -> anyhow::Result<()> {
    for (args, needs) in [
        (&["migrate"][..], &["DB_USER", "DB_NAME"][..]),
        (&["check"][..], &["DB_NAME"][..]),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_resources-ingester"));
        cmd.args(args).env_clear();
        if needs.len() == 1 {
            cmd.env("DB_USER", "someone");
        }
        let out = cmd.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for var in needs {
            assert!(stderr.contains(var), "{args:?}: {stderr}");
        }
        assert!(!stderr.contains("db_user"), "{args:?}: {stderr}");
    }
    // `migrate --print-sql` needs none.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_resources-ingester"))
        .args(["migrate", "--print-sql"])
        .env_clear()
        .output()?;
    assert!(out.status.success());
    Ok(())
}
