//! A Krateo installation: `krateo_resources` created and owned by another role (deviser) with
//! exactly its DDL, the ingester as a role that may only read and write rows, `migrate` run
//! as the owner, deviser's purge of old soft-deleted rows while the ingester writes, and the
//! presenter's query shapes against what the API server holds. The same scenarios run on the
//! machine's PostgreSQL and on PostgreSQL 18 (testkit::pg18).

mod common;
mod krateo_support;

use common::*;
use krateo_support::presenter::presenter_queries;
use krateo_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dml_only_role_is_refused_with_the_fix_before_migrate_and_ingests_after(
) -> anyhow::Result<()> {
    refused_before_migrate_then_ingests(Krateo::install(Harness::new().await?).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_grant_is_named_with_the_grant_that_fixes_it() -> anyhow::Result<()> {
    missing_grants_are_named(Krateo::install(Harness::new().await?).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_sql_applied_by_a_dba_is_all_the_ingester_needs() -> anyhow::Result<()> {
    printed_sql_is_enough(Krateo::install(Harness::new().await?).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deviser_purging_soft_deleted_rows_while_the_ingester_writes_loses_nothing_live(
) -> anyhow::Result<()> {
    purge_while_writing(Krateo::install(Harness::new().await?).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presenters_queries_return_what_the_api_server_holds() -> anyhow::Result<()> {
    presenter_queries(Krateo::install(Harness::new().await?).await?).await
}

// The same on PostgreSQL 18 (skipped with a message when it is not installed, a failure
// under CI=true).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_a_dml_only_role_is_refused_before_migrate_and_ingests_after() -> anyhow::Result<()> {
    let Some(pg) = testkit::pg18::start_or_skip("krateo::pg18_least_privilege")? else {
        return Ok(());
    };
    let k = Krateo::install(harness_on(pg.server()).await?).await?;
    refused_before_migrate_then_ingests(k).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_deviser_purge_while_the_ingester_writes_loses_nothing_live() -> anyhow::Result<()> {
    let Some(pg) = testkit::pg18::start_or_skip("krateo::pg18_purge")? else {
        return Ok(());
    };
    let k = Krateo::install(harness_on(pg.server()).await?).await?;
    purge_while_writing(k).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_the_presenters_queries_return_what_the_api_server_holds() -> anyhow::Result<()> {
    let Some(pg) = testkit::pg18::start_or_skip("krateo::pg18_presenter_queries")? else {
        return Ok(());
    };
    let k = Krateo::install(harness_on(pg.server()).await?).await?;
    presenter_queries(k).await
}

/// Storage and pipeline on PostgreSQL 18 with a role that may create: an empty database gets
/// everything at start-up (replicas at once), without lz4 in this build (pglz stays), and a
/// workload with a 2 MiB object (compressed, TOASTed) converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_an_empty_database_gets_everything_and_a_workload_converges_with_pglz(
) -> anyhow::Result<()> {
    use clap::Parser;
    use resources_ingester::config::Config;
    use resources_ingester::storage::Database;
    let Some(pg) = testkit::pg18::start_or_skip("krateo::pg18_storage_pipeline")? else {
        return Ok(());
    };
    let h = harness_on(pg.server()).await?;
    let mut args = vec!["resources-ingester".to_owned()];
    for (k, v) in h.db.ingester_env() {
        args.push(format!("--{}", k.to_lowercase().replace('_', "-")));
        args.push(v);
    }
    let cfg = Config::try_parse_from(args)?;
    let replicas: Vec<_> = (0..4)
        .map(|_| {
            let cfg = cfg.clone();
            tokio::spawn(async move { Database::connect(&cfg, 1).await.map(|d| d.schema) })
        })
        .collect();
    for r in replicas {
        assert!(!r.await??.lz4, "this PostgreSQL 18 build has no lz4");
    }
    let c = h.db.client().await?;
    let version: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    assert!(version >= 180000, "server {version}");
    let compression: String = c
        .query_one("SELECT attcompression::text FROM pg_attribute WHERE attrelid = 'krateo_resources'::regclass AND attname = 'raw'", &[])
        .await?
        .get(0);
    assert_ne!(compression, "l", "no lz4 here: the default (pglz) stays");
    let recorded: i64 = c
        .query_one("SELECT count(*) FROM krateo_ingester_migrations", &[])
        .await?
        .get(0);
    assert_eq!(
        recorded as usize,
        resources_ingester::storage::schema::migrations().len()
    );

    let store = h.store();
    store.create(namespace("big"))?;
    for i in 0..20 {
        store.create(pod("big", &format!("p{i}")))?;
    }
    let big = store.create(configmap(
        "big",
        "blob",
        serde_json::json!({"blob": "x".repeat(2 * 1024 * 1024)}),
    ))?;
    let _ing = h.start_ready(&[]).await?;
    h.wait_row(&uid(&big), "2 MiB configmap", |raw, d| !d && raw == &big)
        .await?;
    store.delete("v1", "Pod", Some("big"), "p3")?;
    let db = h.db.client().await?;
    testkit::converge::wait_converged(&store, &db, &scope(), WAIT).await?;
    Ok(())
}
