//! The ingester behind a real PgBouncer (Debian's package; `testkit::pgbouncer`), in
//! transaction mode and in session mode, with a pool smaller than the ingester's connections:
//! in transaction mode the server connections are shared and every transaction may run on
//! another one. Initial sync, churn (creates, updates, deletes), a restart from the resume
//! points with changes made while it was stopped; converged with kube-sim's store, no row
//! ever going back, no error logged, no write failure; `check` names the pooling it sees.
//!
//! Run: `cargo test -p resources-ingester --test pgbouncer`

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use testkit::converge::{self, CheckScope, RegressionMonitor};
use testkit::pgbouncer::{PgBouncer, PoolMode};
use testkit::process::IngesterProcess;

const CONVERGE: Duration = Duration::from_secs(60);
/// Server connections PgBouncer opens per database in transaction mode: fewer than the
/// ingester's clients (`WORKERS` + 2), so clients wait for and switch between server
/// connections. Session mode needs one per client (a client keeps its server connection).
const POOL_SIZE: u32 = 2;
const SESSION_POOL_SIZE: u32 = 20;
const WORKERS: &str = "4";

/// kube-sim with two namespaces of ConfigMaps and PgBouncer in `mode` in front of the test
/// database. `None`: PgBouncer is not installed (skipped, or failed under CI).
async fn rig(mode: PoolMode) -> anyhow::Result<Option<(Harness, PgBouncer)>> {
    let h = Harness::new().await?;
    let size = match mode {
        PoolMode::Transaction => POOL_SIZE,
        PoolMode::Session => SESSION_POOL_SIZE,
    };
    let Some(bouncer) = PgBouncer::start(&h.db.server, mode, size).await? else {
        testkit::missing_tool("pgbouncer (apt-get install pgbouncer, or PGBOUNCER_BIN)")?;
        return Ok(None);
    };
    let store = h.store();
    for ns in ["team-a", "team-b"] {
        store.create(namespace(ns))?;
        for i in 0..150 {
            store.create(configmap(
                ns,
                &format!("cm-{i}"),
                json!({"i": i.to_string()}),
            ))?;
        }
    }
    Ok(Some((h, bouncer)))
}

/// The ingester's settings through the bouncer: small batches and frequent resume points, so
/// many short transactions run while others wait for a server connection.
fn through(bouncer: &PgBouncer) -> Vec<(&'static str, String)> {
    vec![
        ("DB_HOST", "127.0.0.1".into()),
        ("DB_PORT", bouncer.port.to_string()),
        ("WORKERS", WORKERS.into()),
        ("BATCH_SIZE", "40".into()),
        ("CHECKPOINT_INTERVAL", "200ms".into()),
        ("HISTORY", "true".into()),
    ]
}

async fn start(h: &Harness, bouncer: &PgBouncer) -> anyhow::Result<IngesterProcess> {
    let env = through(bouncer);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut ing = h.spawn(&extra)?;
    if let Err(e) = ing.wait_ready(CONVERGE).await {
        anyhow::bail!(
            "{e:#}\ningester log:\n{}\npgbouncer log:\n{}",
            ing.log(),
            bouncer.log()
        );
    }
    Ok(ing)
}

async fn converged(h: &Harness, ing: &IngesterProcess, bouncer: &PgBouncer) -> anyhow::Result<()> {
    let c = h.db.client().await?;
    match converge::wait_converged(&h.store(), &c, &CheckScope::workload(CLUSTER), CONVERGE).await {
        Ok(v) => {
            eprintln!("verdict: {v}");
            Ok(())
        }
        Err(e) => anyhow::bail!(
            "{e:#}\ningester log:\n{}\npgbouncer log:\n{}",
            ing.log(),
            bouncer.log()
        ),
    }
}

/// Creates, updates and deletes spread over both namespaces, one round per `rounds` (each
/// round deletes its own ConfigMap: ranges of successive calls do not overlap).
async fn churn(h: &Harness, tag: &str, rounds: std::ops::Range<usize>) -> anyhow::Result<()> {
    let store = h.store();
    for r in rounds {
        for ns in ["team-a", "team-b"] {
            store.create(configmap(ns, &format!("{tag}-{r}"), json!({"r": "new"})))?;
            store.update(configmap(
                ns,
                &format!("cm-{}", r % 150),
                json!({"i": format!("{tag}-{r}")}),
            ))?;
            store.delete("v1", "ConfigMap", Some(ns), &format!("cm-{}", 149 - r))?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// No error-level line, not the staging table's NOTICE (its `IF NOT EXISTS` answers every
/// batch with one unless asked not to; other notices, such as a server without lz4 at the
/// migration, are the server's to tell), no failed write, nothing dropped.
async fn assert_clean(ing: &IngesterProcess) -> anyhow::Result<()> {
    let log = ing.log();
    let errors: Vec<&str> = log
        .lines()
        // The level may sit between colour codes: "ERROR", not " ERROR ".
        .filter(|l| {
            l.contains("ERROR") || l.contains("SQLSTATE") || l.contains("already exists, skipping")
        })
        .collect();
    assert!(errors.is_empty(), "errors logged: {errors:#?}");
    assert_eq!(ing.read_metric("ingester_write_failures_total").await?, 0.0);
    Ok(())
}

/// Client connections the bouncer holds for `db`, and server connections it opened for it
/// (PgBouncer's admin console, `SHOW POOLS`).
async fn pool_usage(h: &Harness, bouncer: &PgBouncer) -> anyhow::Result<(i64, i64)> {
    let admin = bouncer.server(&h.db.server).connect("pgbouncer").await?;
    let mut clients = 0;
    let mut servers = 0;
    for m in admin.simple_query("SHOW POOLS").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            if r.get("database") == Some(h.db.name.as_str()) {
                let n = |c: &str| r.get(c).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                clients += n("cl_active") + n("cl_waiting");
                servers += n("sv_active") + n("sv_idle") + n("sv_used") + n("sv_tested");
            }
        }
    }
    Ok((clients, servers))
}

/// `resources-ingester check` through the bouncer: (exit code, the `database pooling` line).
async fn check_pooling(h: &Harness, bouncer: &PgBouncer) -> anyhow::Result<(i32, String)> {
    let mut env = h.env(&[]);
    for (k, v) in through(bouncer) {
        env.retain(|(n, _)| n != k);
        env.push((k.into(), v));
    }
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_resources-ingester"))
            .arg("check")
            .env_clear()
            .envs(env)
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(line) = stdout.lines().find(|l| l.starts_with("database pooling ")) else {
        anyhow::bail!("no 'database pooling' line in:\n{stdout}");
    };
    Ok((out.status.code().unwrap_or(-1), line.to_owned()))
}

/// The whole life of an ingester behind the bouncer in `mode`.
async fn lives_behind(mode: PoolMode) -> anyhow::Result<()> {
    let Some((h, bouncer)) = rig(mode).await? else {
        return Ok(());
    };
    let monitor =
        RegressionMonitor::start(h.db.client().await?, CLUSTER, Duration::from_millis(100));
    let mut ing = start(&h, &bouncer).await?;
    converged(&h, &ing, &bouncer).await?;
    if mode == PoolMode::Transaction {
        let (clients, servers) = pool_usage(&h, &bouncer).await?;
        eprintln!("pool: {clients} client connections on {servers} server connections");
        assert!(
            clients > servers && servers <= i64::from(POOL_SIZE),
            "server connections are shared: {clients} clients, {servers} servers"
        );
    }
    churn(&h, "live", 0..40).await?;
    converged(&h, &ing, &bouncer).await?;
    assert_clean(&ing).await?;
    ing.terminate(WAIT).await?;

    // Changes while it is stopped; the restart resumes from the stored points.
    churn(&h, "stopped", 40..45).await?;
    let ing = start(&h, &bouncer).await?;
    converged(&h, &ing, &bouncer).await?;
    let resumed = ing
        .read_metric("ingester_watch_resumes_total{outcome=\"resumed\"}")
        .await?;
    assert!(resumed >= 1.0, "the restart resumed watches: {resumed}");
    churn(&h, "after", 45..55).await?;
    converged(&h, &ing, &bouncer).await?;
    assert_clean(&ing).await?;

    let (code, line) = check_pooling(&h, &bouncer).await?;
    eprintln!("check: {line}");
    assert_eq!(code, 0, "check passes: {line}");
    match mode {
        PoolMode::Transaction => assert!(
            line.contains("OK") && line.contains("transaction pooling"),
            "{line}"
        ),
        PoolMode::Session => assert!(
            line.contains("OK") && !line.contains("transaction pooling"),
            "{line}"
        ),
    }
    let (samples, violations) = monitor.finish().await;
    assert!(samples > 5, "the monitor sampled the table");
    assert!(violations.is_empty(), "rows went back: {violations:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_syncs_churns_and_resumes() -> anyhow::Result<()> {
    lives_behind(PoolMode::Transaction).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_syncs_churns_and_resumes() -> anyhow::Result<()> {
    lives_behind(PoolMode::Session).await
}

/// PostgreSQL refusing logins behind PgBouncer when the ingester starts (as a server
/// shutting down or starting up does during a failover; here the database's
/// `ALLOW_CONNECTIONS false`): PgBouncer completes the client's connection itself, so a
/// connection is no sign of PostgreSQL; the ingester waits for an answered statement
/// (`DB_READY_TIMEOUT`) as it does on a direct connection, then syncs. Found by
/// `converge-fuzz --db-faults` (seeds 1 and 2: after a switchover PgBouncer answered
/// `server login has been failing` for its `server_login_retry`, and every restarted replica
/// exited at once). On the code before: the ingester exits 1 within a second,
/// `schema set-up failed: connection closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_logins_behind_pgbouncer_at_start_up_is_waited_for() -> anyhow::Result<()>
{
    let h = Harness::new().await?;
    let Some(bouncer) = PgBouncer::start(&h.db.server, PoolMode::Transaction, POOL_SIZE).await?
    else {
        testkit::missing_tool("pgbouncer (apt-get install pgbouncer, or PGBOUNCER_BIN)")?;
        return Ok(());
    };
    let store = h.store();
    seed_configmaps(&store, "team-a", 5)?;
    // The pooler has served before (it knows the server's parameters, so it completes a
    // client's connection on its own); then the server refuses logins to the database and
    // the pooler's server connections end.
    bouncer
        .server(&h.db.server)
        .connect(&h.db.name)
        .await?
        .simple_query("SELECT 1")
        .await?;
    let admin = h.db.server.connect("postgres").await?;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}';",
            db = h.db.name
        ))
        .await?;
    // A client's statement makes PgBouncer try a login, which fails: for its
    // `server_login_retry` (15 s) it fails every statement at once, as after the fuzzer's
    // switchover.
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        bouncer
            .server(&h.db.server)
            .connect(&h.db.name)
            .await?
            .simple_query("SELECT 1")
            .await?;
        anyhow::Ok(())
    })
    .await;
    eprintln!("a statement through the pooler: {refused:?}");
    let port = bouncer.port.to_string();
    let mut ing = h.spawn(&[
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", port.as_str()),
        ("DB_READY_TIMEOUT", "60s"),
    ])?;
    // The second attempt logged: it waited past the first answer-less connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = ing.log();
        if let Some(st) = ing.exit_status() {
            anyhow::bail!(
                "exited {st} instead of waiting; log:\n{log}\npgbouncer log:\n{}",
                bouncer.log()
            );
        }
        if log.matches("waiting for PostgreSQL").count() >= 2 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "not waiting for PostgreSQL within 30 s; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            h.db.name
        ))
        .await?;
    if let Err(e) = ing.wait_ready(CONVERGE).await {
        anyhow::bail!(
            "{e:#}\ningester log:\n{}\npgbouncer log:\n{}",
            ing.log(),
            bouncer.log()
        );
    }
    converged(&h, &ing, &bouncer).await?;
    assert!(ing.exit_status().is_none(), "never restarted");
    Ok(())
}
