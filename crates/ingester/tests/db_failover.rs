//! The database's own faults (issue 21), with real parts only: a private primary and its
//! streaming standby (`testkit::pg_replica`), a TCP proxy playing the read-write service,
//! kube-sim in-process, the ingester binary as a child process.
//!
//! - Several hosts: `DB_HOST` lists the standby first and the primary second; with
//!   `target_session_attrs=read-write` the rows land on the primary, without it the standby
//!   answers and refuses the writes (SQLSTATE 25006, said in the log).
//! - A read-only window: the read-write address reaches the standby while objects change; the
//!   log and `/readyz` say 25006; once the standby is promoted every change lands, nothing is
//!   dropped, the ingester never restarted.
//!
//! - Lost commits: the standby stops receiving WAL while objects change, the primary crashes
//!   with those commits, the standby is promoted: the running ingester notices the database
//!   went back in time and writes what it lost again; a switchover (nothing lost) costs no
//!   relist.
//!
//! Run: `cargo test -p resources-ingester --test db_failover`

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use kube_sim::{KubeSim, SimConfig};
use serde_json::json;
use testkit::converge::{self, CheckScope};
use testkit::pg::TestDb;
use testkit::pg_replica::PgPair;
use testkit::pgbouncer::{PgBouncer, PoolMode};
use testkit::process::IngesterProcess;
use testkit::proxy::TcpProxy;

const CONVERGE: Duration = Duration::from_secs(60);
const REPLAY: Duration = Duration::from_secs(30);
const PARAMS: &str = "sslmode=disable&connect_timeout=2";

/// A primary with a standby, a database on both (replayed), kube-sim with a namespace and
/// a few ConfigMaps. `None`: no PostgreSQL binaries (skipped, or failed under CI).
async fn rig() -> anyhow::Result<Option<(PgPair, Harness)>> {
    let Some(pair) = PgPair::start()? else {
        testkit::missing_tool(
            "PostgreSQL binaries (initdb, pg_ctl, pg_basebackup under /usr/lib/postgresql/*/bin or PG_BIN_DIR)",
        )?;
        return Ok(None);
    };
    let db = TestDb::create_on(pair.primary.server()).await?;
    pair.wait_replayed(REPLAY).await?;
    let sim = KubeSim::start(SimConfig::default()).await?;
    let store = sim.store();
    seed_configmaps(&store, "team-a", 5)?;
    let dir = tempfile::tempdir()?;
    sim.write_kubeconfig(&dir.path().join("kubeconfig"))?;
    Ok(Some((pair, Harness { sim, db, dir })))
}

fn addr(port: u16) -> anyhow::Result<SocketAddr> {
    Ok(format!("127.0.0.1:{port}").parse()?)
}

/// The read-write service (a proxy to the primary, for now) and an ingester through it,
/// converged.
async fn start_behind_service(
    pair: &PgPair,
    h: &Harness,
) -> anyhow::Result<(TcpProxy, IngesterProcess)> {
    let service = TcpProxy::start(addr(pair.primary.port)?).await?;
    let port = service.port.to_string();
    let ing = h
        .start_ready(&[("DB_PORT", port.as_str()), ("DB_PARAMS", PARAMS)])
        .await?;
    wait_converged_on(h, &h.db.client().await?, &ing).await?;
    Ok((service, ing))
}

/// The ingester's sessions on `server`.
async fn sessions_on(server: testkit::pg::PgServer) -> anyhow::Result<i64> {
    let c = server.connect("postgres").await?;
    let row = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'resources-ingester'",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Every `ingester_records_dropped_total` series, summed (0 when none was ever counted).
async fn records_dropped(ing: &IngesterProcess) -> anyhow::Result<f64> {
    metric_sum(ing, "ingester_records_dropped_total").await
}

/// Every series of `family`, summed (0 when none was ever counted).
async fn metric_sum(ing: &IngesterProcess, family: &str) -> anyhow::Result<f64> {
    let text = ing.metrics().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The ConfigMaps' resume point in `client`'s database, and the newest resourceVersion of
/// their rows (deleted ones too).
async fn configmaps_point(
    client: &tokio_postgres::Client,
) -> anyhow::Result<(Option<i64>, Option<i64>)> {
    let row = client
        .query_one(
            "SELECT (SELECT max(resource_version) FROM krateo_ingester_watch_state WHERE scope LIKE '/v1/configmaps/%'),
                    (SELECT max(object_resource_version) FROM krateo_resources WHERE resource_plural = 'configmaps')",
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

async fn wait_converged_on(
    h: &Harness,
    client: &tokio_postgres::Client,
    ing: &IngesterProcess,
) -> anyhow::Result<()> {
    let scope = CheckScope::workload(CLUSTER);
    match converge::wait_converged(&h.store(), client, &scope, CONVERGE).await {
        Ok(v) => {
            eprintln!("verdict: {v}");
            Ok(())
        }
        Err(e) => anyhow::bail!("{e:#}\ningester log:\n{}", ing.log()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_hosts_with_read_write_skip_the_standby_listed_first() -> anyhow::Result<()> {
    let Some((pair, h)) = rig().await? else {
        return Ok(());
    };
    let ports = format!("{},{}", pair.standby.port, pair.primary.port);
    let read_write = format!("{PARAMS}&target_session_attrs=read-write");
    let hosts = [
        ("DB_HOST", "127.0.0.1,127.0.0.1"),
        ("DB_PORT", ports.as_str()),
    ];
    let mut env = hosts.to_vec();
    env.push(("DB_PARAMS", read_write.as_str()));
    let mut ing = h.start_ready(&env).await?;
    wait_converged_on(&h, &h.db.client().await?, &ing).await?;
    assert!(
        sessions_on(pair.primary.server()).await? > 0,
        "the ingester writes through the primary"
    );
    assert_eq!(
        sessions_on(pair.standby.server()).await?,
        0,
        "no session kept on the standby listed first"
    );
    ing.terminate(WAIT).await?;

    // Without target_session_attrs the first host that answers is used: the standby, which
    // refuses every write; the log says so with the server's SQLSTATE and message.
    let mut env = hosts.to_vec();
    env.push(("DB_PARAMS", PARAMS));
    let mut refused = h.spawn(&env)?;
    testkit::eventually(
        "the standby's refusal in the log",
        Duration::from_secs(30),
        || async {
            let log = refused.log();
            if log.contains("SQLSTATE 25006") && log.contains("read-only transaction") {
                Ok(Some(()))
            } else {
                Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
            }
        },
    )
    .await?;
    assert_ne!(
        refused.readyz().await.ok(),
        Some(200),
        "never ready on a standby"
    );
    refused.kill();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_window_is_reported_and_writing_resumes_on_promotion() -> anyhow::Result<()> {
    let Some((pair, h)) = rig().await? else {
        return Ok(());
    };
    let (service, mut ing) = start_behind_service(&pair, &h).await?;
    let pid = ing.pid();
    pair.wait_replayed(REPLAY).await?;

    // The read-write service now reaches the standby; objects change meanwhile.
    service.retarget(addr(pair.standby.port)?);
    let store = h.store();
    store.create(configmap("team-a", "made-in-window", json!({"k": "v"})))?;
    store.update(configmap("team-a", "cm-1", json!({"i": "changed"})))?;
    store.delete("v1", "ConfigMap", Some("team-a"), "cm-2")?;
    let reason = testkit::eventually(
        "/readyz 503 saying 25006",
        Duration::from_secs(30),
        || async {
            match ing.readyz_body().await {
                Ok((503, body)) if body.contains("25006") => Ok(Some(body)),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    eprintln!("/readyz during the window: {reason}");
    let log = ing.log();
    assert!(
        log.contains("SQLSTATE 25006") && log.contains("read-only transaction"),
        "the log names the refusal; log:\n{log}"
    );
    assert_eq!(ing.read_metric("ingester_db_up").await?, 0.0);

    // The standby becomes the primary behind the same address: writing resumes by itself.
    pair.promote_standby()?;
    testkit::eventually("ready again", Duration::from_secs(30), || async {
        match ing.readyz().await {
            Ok(200) => Ok(Some(())),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let promoted = pair.standby.server().connect(&h.db.name).await?;
    wait_converged_on(&h, &promoted, &ing).await?;
    assert_eq!(records_dropped(&ing).await?, 0.0, "nothing dropped");
    assert_eq!(ing.read_metric("ingester_db_up").await?, 1.0);
    assert_eq!(ing.pid(), pid);
    assert!(ing.exit_status().is_none(), "the ingester never restarted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_lost_in_a_failover_are_written_again_by_the_running_ingester() -> anyhow::Result<()>
{
    lost_commits(None).await
}

/// The same behind PgBouncer in transaction mode: the ingester's idle connections to the
/// pooler outlive the failover (only the pooler's server connections are cut), so the rewind
/// is noticed by the statements (each batch, the readiness ping), not by new connections.
/// (In this run PgBouncer also closed the clients linked at the cut, so a check when a
/// connection opens would notice it too; the statements do not depend on that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_lost_behind_pgbouncer_in_transaction_mode_are_written_again() -> anyhow::Result<()>
{
    lost_commits(Some(PoolMode::Transaction)).await
}

/// A window of changes reaches only the primary, which crashes; the standby is promoted and
/// takes the read-write address (through a pooler in `pooler` mode when given).
async fn lost_commits(pooler: Option<PoolMode>) -> anyhow::Result<()> {
    let Some((pair, h)) = rig().await? else {
        return Ok(());
    };
    let service = TcpProxy::start(addr(pair.primary.port)?).await?;
    let bouncer = match pooler {
        None => None,
        Some(mode) => {
            let behind = testkit::pg::PgServer {
                host: "127.0.0.1".into(),
                port: service.port,
                ..h.db.server.clone()
            };
            let Some(bouncer) = PgBouncer::start(&behind, mode, 2).await? else {
                testkit::missing_tool("pgbouncer (apt-get install pgbouncer, or PGBOUNCER_BIN)")?;
                return Ok(());
            };
            Some(bouncer)
        }
    };
    let port = bouncer
        .as_ref()
        .map_or(service.port, |b| b.port)
        .to_string();
    let env = [
        ("DB_PORT", port.as_str()),
        ("DB_PARAMS", PARAMS),
        ("CHECKPOINT_INTERVAL", "1s"),
    ];
    let mut ing = h.start_ready(&env).await?;
    let primary = h.db.client().await?;
    wait_converged_on(&h, &primary, &ing).await?;
    let pid = ing.pid();
    pair.wait_replayed(REPLAY).await?;

    // The standby stops receiving WAL; a window of creates, updates and deletes reaches only
    // the primary, with the resume points stored after them.
    pair.standby.pg_stop()?;
    let store = h.store();
    store.create(configmap("team-a", "made-in-window", json!({"k": "v"})))?;
    store.update(configmap("team-a", "cm-1", json!({"i": "changed"})))?;
    store.delete("v1", "ConfigMap", Some("team-a"), "cm-2")?;
    store.delete("v1", "ConfigMap", Some("team-a"), "cm-3")?;
    wait_converged_on(&h, &primary, &ing).await?;
    testkit::eventually("the window's resume point stored", CONVERGE, || async {
        match configmaps_point(&primary).await {
            Ok((Some(point), Some(newest))) if point >= newest => Ok(Some(())),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    // The primary crashes with them; the standby is promoted and takes the address.
    pair.crash_primary()?;
    pair.standby.pg_start()?;
    pair.promote_standby()?;
    let promoted = pair.standby.server().connect(&h.db.name).await?;
    let lost: i64 = promoted
        .query_one(
            "SELECT count(*) FROM krateo_resources WHERE resource_name = 'made-in-window'",
            &[],
        )
        .await?
        .try_get(0)?;
    assert_eq!(
        lost, 0,
        "the window's commits are lost on the promoted standby"
    );
    let monitor = converge::LiveObjectMonitor::start(
        store.clone(),
        pair.standby.server().connect(&h.db.name).await?,
        CLUSTER,
        Duration::from_millis(50),
    );
    service.retarget(addr(pair.standby.port)?);

    wait_converged_on(&h, &promoted, &ing).await?;
    testkit::eventually("the rewind counted", CONVERGE, || async {
        match ing.read_metric("ingester_database_rewinds_total").await {
            Ok(v) if v >= 1.0 => Ok(Some(())),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    assert!(
        ing.log().contains("the database went back in time"),
        "the log says so"
    );
    testkit::eventually(
        "resume points and coverage stored again",
        CONVERGE,
        || async {
            let coverage: i64 = promoted
                .query_one("SELECT count(*) FROM krateo_ingester_coverage", &[])
                .await
                .map_err(|e| e.to_string())?
                .try_get(0)
                .map_err(|e| e.to_string())?;
            match configmaps_point(&promoted).await {
                Ok((Some(point), Some(newest))) if point >= newest && coverage > 0 => Ok(Some(())),
                other => Err(format!("{other:?}, coverage rows {coverage}")),
            }
        },
    )
    .await?;
    let samples = monitor.assert_clean().await?;
    eprintln!("live-object monitor: {samples} samples");
    assert_eq!(records_dropped(&ing).await?, 0.0, "nothing dropped");
    assert_eq!(ing.pid(), pid);
    assert!(ing.exit_status().is_none(), "the ingester never restarted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_that_loses_nothing_costs_no_relist() -> anyhow::Result<()> {
    let Some((pair, h)) = rig().await? else {
        return Ok(());
    };
    let (service, mut ing) = start_behind_service(&pair, &h).await?;
    let relists = metric_sum(&ing, "ingester_relists_total").await?;

    // A clean stop sends the standby every WAL record before it ends: nothing is lost.
    pair.primary.pg_stop()?;
    pair.promote_standby()?;
    service.retarget(addr(pair.standby.port)?);
    let store = h.store();
    store.create(configmap("team-a", "after-switchover", json!({"k": "v"})))?;
    store.delete("v1", "ConfigMap", Some("team-a"), "cm-4")?;
    let promoted = pair.standby.server().connect(&h.db.name).await?;
    wait_converged_on(&h, &promoted, &ing).await?;
    assert_eq!(
        metric_sum(&ing, "ingester_relists_total").await?,
        relists,
        "no relist"
    );
    assert_eq!(
        ing.read_metric("ingester_database_rewinds_total").await?,
        0.0
    );
    assert!(ing.exit_status().is_none(), "the ingester never restarted");
    Ok(())
}
