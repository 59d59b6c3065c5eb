//! Errors that come from the database's state, not from a row, never cost a row: a full
//! NOTIFY queue (the change feed is skipped, the batch is written), an identity sequence
//! behind the table's ids (retried until it has moved past them). Real PostgreSQL: 18 for the
//! NOTIFY queue (`max_notify_queue_pages` exists since 17), the suite's server for the rest.

mod common;

use std::sync::Arc;

use chrono::Utc;
use resources_ingester::row::object::RawObject;
use resources_ingester::row::record::{build_record, EventKind, Record};
use resources_ingester::row::routes::Route;
use resources_ingester::storage::ownership::{retire_uncovered, Coverage};
use resources_ingester::storage::writer::{BatchWriter, Tombstone, WriterOptions};
use resources_ingester::storage::Database;
use resources_ingester::telemetry::metrics::Metrics;
use testkit::pg::TestDb;

fn record(uid: &str, rv: i64) -> Record {
    let json = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{uid}","namespace":"ns","uid":"{uid}","resourceVersion":"{rv}","creationTimestamp":"2024-01-01T00:00:00Z"}},"data":{{"k":"v"}}}}"#
    );
    let obj = RawObject::from_json(json).expect("json");
    build_record(
        obj,
        &Arc::new(Route::new("", "v1", "configmaps", "ConfigMap")),
        &Arc::from("c"),
        EventKind::Apply,
        Utc::now(),
    )
    .expect("record")
    .0
}

fn uid(i: u32) -> String {
    format!("00000000-0000-0000-0000-{i:012}")
}

async fn live(db: &TestDb, uid: &str) -> anyhow::Result<Option<bool>> {
    let c = db.client().await?;
    Ok(c.query_opt(
        "SELECT deleted_at IS NULL FROM krateo_resources WHERE global_uid = $1",
        &[&format!("c:{uid}")],
    )
    .await?
    .map(|r| r.get(0)))
}

/// A database of the suite's server with rows of uids 1 to 3, a writer and its metrics.
async fn three_rows() -> anyhow::Result<(TestDb, Database, Arc<Metrics>, BatchWriter)> {
    let db = TestDb::create().await?;
    let config = common::db_config(&db, &[]);
    let database = Database::connect(&config, 4).await?;
    let metrics = Arc::new(Metrics::new());
    let w = BatchWriter::new(database.pool.clone(), metrics.clone());
    for i in 1..=3 {
        w.write(&[record(&uid(i), 10)], &[]).await?;
    }
    Ok((db, database, metrics, w))
}

fn metric(m: &Metrics, series: &str) -> f64 {
    testkit::process::metric_value(&m.encode(), series).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_notify_queue_skips_the_feed_and_writes_the_rows() -> anyhow::Result<()> {
    let Some(pg) = testkit::pg18::start_or_skip("db_errors::a_full_notify_queue")? else {
        return Ok(());
    };
    // The smallest queue PostgreSQL allows (64 pages of 8 KiB), so it fills in a moment.
    let admin = pg.server().connect("postgres").await?;
    admin
        .batch_execute("ALTER SYSTEM SET max_notify_queue_pages = 64")
        .await?;
    drop(admin);
    pg.pg_stop()?;
    pg.pg_start()?;
    let db = TestDb::create_on(pg.server()).await?;
    let pages: String = db
        .client()
        .await?
        .query_one("SHOW max_notify_queue_pages", &[])
        .await?
        .get(0);
    assert_eq!(pages, "64");
    let config = common::db_config(&db, &[]);
    let database = Database::connect(&config, 4).await?;
    let metrics = Arc::new(Metrics::new());
    let options = WriterOptions {
        history: false,
        change_feed: true,
        staging_lz4: false,
    };
    let w = BatchWriter::with_options(database.pool.clone(), metrics.clone(), options);
    w.write(&[record(&uid(1), 10)], &[]).await?;
    w.write(&[record(&uid(100), 10)], &[]).await?;
    // This instance watched config maps (and a kind under which uid 100 is not)...
    let configmaps = Coverage::new([("", "configmaps")], [], []);
    retire_uncovered(&database.pool, "c", "i", &configmaps, options)
        .await
        .map_err(anyhow::Error::msg)?;

    // A listener that sits in an open transaction: the queue cannot move past it.
    let listener = db.client().await?;
    listener.batch_execute("LISTEN krateo_resources").await?;
    listener.batch_execute("BEGIN; SELECT 1").await?;
    let filler = db.client().await?;
    let mut full = false;
    for _ in 0..10_000 {
        match filler
            .execute(
                "SELECT pg_notify('krateo_resources', repeat('x', 7000))",
                &[],
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.code().is_some_and(|c| c.code() == "54000") => {
                full = true;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::ensure!(full, "the NOTIFY queue never filled");

    // A create and a delete while the queue is full: both are written.
    let tombstone = Tombstone {
        global_uid: format!("c:{}", uid(1)),
        observed_at: Utc::now(),
        not_newer_than: Some(10),
    };
    let stats = w.write(&[record(&uid(2), 11)], &[tombstone]).await?;
    assert_eq!((stats.rows_written, stats.tombstoned), (1, 1));
    assert_eq!(live(&db, &uid(2)).await?, Some(true), "the created row");
    assert_eq!(live(&db, &uid(1)).await?, Some(false), "the tombstone");
    assert_eq!(metric(&metrics, "ingester_change_feed_skipped_total"), 1.0);
    assert_eq!(
        metric(
            &metrics,
            "ingester_records_dropped_total{reason=\"rejected\"}"
        ),
        0.0
    );
    // ... and starts without them while the queue is full: start-up retires them all the same.
    let retired = retire_uncovered(&database.pool, "c", "i", &Coverage::default(), options)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(retired, vec![("/configmaps".to_owned(), 2)]);
    assert_eq!(live(&db, &uid(100)).await?, Some(false), "retired");

    // Every batch tries the feed first (it flows again once the queue has room) and never
    // waits for it: the writes go on.
    for i in 3..6 {
        let stats = w.write(&[record(&uid(i), 10 + i64::from(i))], &[]).await?;
        assert_eq!(stats.rows_written, 1);
    }
    assert_eq!(metric(&metrics, "ingester_change_feed_skipped_total"), 4.0);
    drop(listener);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_sequence_behind_the_ids_is_retried_never_dropped() -> anyhow::Result<()> {
    let (db, _database, metrics, w) = three_rows().await?;
    // As after a restore of the table without its sequence: the next ids are taken.
    db.client()
        .await?
        .batch_execute("SELECT setval(pg_get_serial_sequence('krateo_resources', 'id'), 1)")
        .await?;
    let mut failures = 0;
    loop {
        match w.write(&[record(&uid(9), 10)], &[]).await {
            Ok(stats) => {
                assert_eq!(stats.rows_written, 1);
                break;
            }
            Err(e) => {
                assert!(e.to_string().contains("23505"), "{e}");
                failures += 1;
                anyhow::ensure!(failures < 10, "still failing: {e}");
            }
        }
    }
    assert!(
        failures >= 1,
        "the sequence was behind: the first attempts fail"
    );
    assert_eq!(live(&db, &uid(9)).await?, Some(true));
    assert_eq!(
        metric(
            &metrics,
            "ingester_records_dropped_total{reason=\"rejected\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(
            &metrics,
            "ingester_records_sanitised_total{reason=\"rejected_stored_as_stub\"}"
        ),
        0.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_the_database_refuses_costs_nothing_else() -> anyhow::Result<()> {
    let (db, _database, metrics, w) = three_rows().await?;
    // The table's owner refuses to mark one row deleted (a trigger of its own).
    let bad = format!("c:{}", uid(1));
    db.client()
        .await?
        .batch_execute(&format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END $$;
             CREATE TRIGGER refuse BEFORE UPDATE ON krateo_resources FOR EACH ROW
               WHEN (NEW.global_uid = '{bad}' AND NEW.deleted_at IS NOT NULL) EXECUTE FUNCTION refuse();"
        ))
        .await?;
    let tombstone = |i: u32| Tombstone {
        global_uid: format!("c:{}", uid(i)),
        observed_at: Utc::now(),
        not_newer_than: Some(10),
    };
    // One batch: a new record and three tombstones, one of them refused.
    let stats = w
        .write(
            &[record(&uid(9), 10)],
            &[tombstone(1), tombstone(2), tombstone(3)],
        )
        .await?;
    assert_eq!((stats.rows_written, stats.tombstoned), (1, 2));
    assert_eq!(
        live(&db, &uid(9)).await?,
        Some(true),
        "the record next to it"
    );
    assert_eq!(
        live(&db, &uid(2)).await?,
        Some(false),
        "the other tombstones"
    );
    assert_eq!(live(&db, &uid(3)).await?, Some(false));
    assert_eq!(live(&db, &uid(1)).await?, Some(true), "the refused one");
    assert_eq!(
        metric(
            &metrics,
            "ingester_records_dropped_total{reason=\"rejected\"}"
        ),
        1.0,
        "exactly the refused tombstone is dropped"
    );
    assert_eq!(
        metric(
            &metrics,
            "ingester_records_sanitised_total{reason=\"rejected_stored_as_stub\"}"
        ),
        0.0,
        "the innocent record is stored whole"
    );
    Ok(())
}

/// Sets the pool's (one) session read-only, as a session opened to a standby stays.
async fn turn_pooled_session_read_only(database: &Database) -> anyhow::Result<()> {
    database
        .pool
        .get()
        .await?
        .batch_execute("SET SESSION default_transaction_read_only = on")
        .await?;
    Ok(())
}

/// A session that answers read-only (one opened to a standby, or a server that turned
/// read-only): the batch fails with the server's SQLSTATE and message, the session is closed,
/// the next attempt opens a new one and writes; nothing dropped. A server that refuses the
/// staging table (created by the batch's transaction) is described the same way, never as
/// "db error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_session_is_described_and_never_reused() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let config = common::db_config(&db, &[]);
    let database = Database::connect(&config, 1).await?;
    let metrics = Arc::new(Metrics::new());
    let w = BatchWriter::new(database.pool.clone(), metrics.clone());
    w.write(&[record(&uid(1), 10)], &[]).await?;

    turn_pooled_session_read_only(&database).await?;
    let e = w
        .write(&[record(&uid(2), 10)], &[])
        .await
        .expect_err("a read-only session refuses the batch")
        .to_string();
    assert!(
        e.starts_with("SQLSTATE 25006: ") && e.contains("read-only transaction"),
        "{e}"
    );
    w.write(&[record(&uid(2), 10)], &[]).await?;
    assert_eq!(live(&db, &uid(2)).await?, Some(true));

    turn_pooled_session_read_only(&database).await?;
    let e = database.ping().await.expect_err("readiness sees it");
    assert!(e.contains("25006"), "{e}");
    database.ping().await.map_err(anyhow::Error::msg)?;

    db.client()
        .await?
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            db.name
        ))
        .await?;
    let e = match Database::connect(&config, 1).await {
        Ok(fresh) => BatchWriter::new(fresh.pool.clone(), metrics.clone())
            .write(&[record(&uid(3), 10)], &[])
            .await
            .expect_err("no staging table can be created")
            .to_string(),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("SQLSTATE 25006: cannot execute CREATE TABLE in a read-only transaction")
            && !e.contains("db error"),
        "{e}"
    );
    assert_eq!(
        metric(
            &metrics,
            "ingester_records_dropped_total{reason=\"rejected\"}"
        ),
        0.0
    );
    Ok(())
}
