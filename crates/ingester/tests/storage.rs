//! The storage layer against a real PostgreSQL: schema creation and checks, the upsert's
//! no-regression guard, coalescing-free duplicate and out-of-order writes.

use std::sync::Arc;

use chrono::Utc;
use clap::Parser;
use resources_ingester::config::Config;
use resources_ingester::row::object::RawObject;
use resources_ingester::row::record::{build_record, EventKind, Record};
use resources_ingester::row::routes::Route;
use resources_ingester::storage::writer::{BatchWriter, Tombstone};
use resources_ingester::storage::Database;
use resources_ingester::telemetry::metrics::Metrics;
use testkit::pg::TestDb;

const UID: &str = "11111111-2222-3333-4444-555555555555";

fn config(db: &TestDb) -> Config {
    let mut args = vec!["resources-ingester".to_owned()];
    for (k, v) in db.ingester_env() {
        args.push(format!("--{}", k.to_lowercase().replace('_', "-")));
        args.push(v);
    }
    Config::try_parse_from(args).expect("config")
}

fn record(rv: i64, marker: &str, kind: EventKind) -> Record {
    let json = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm","namespace":"ns","uid":"{UID}","resourceVersion":"{rv}","creationTimestamp":"2024-01-01T00:00:00Z"}},"data":{{"m":"{marker}"}}}}"#
    );
    let obj = RawObject::from_json(json).expect("json");
    build_record(
        obj,
        &Arc::new(Route::new("", "v1", "configmaps", "ConfigMap")),
        &Arc::from("c"),
        kind,
        Utc::now(),
    )
    .expect("record")
    .0
}

async fn stored(db: &TestDb) -> anyhow::Result<(String, bool)> {
    let c = db.client().await?;
    let row = c
        .query_one("SELECT raw->'data'->>'m', deleted_at IS NOT NULL FROM krateo_resources WHERE global_uid = $1", &[&format!("c:{UID}")])
        .await?;
    Ok((row.get(0), row.get(1)))
}

#[tokio::test]
async fn older_states_never_overwrite_newer_ones() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let database = Database::connect(&config(&db), 4).await?;
    let w = BatchWriter::new(database.pool.clone(), Arc::new(Metrics::new()));

    assert_eq!(
        w.write(&[record(5, "five", EventKind::Apply)], &[])
            .await?
            .rows_written,
        1
    );
    assert_eq!(
        w.write(&[record(3, "three", EventKind::Apply)], &[])
            .await?
            .rows_written,
        0,
        "late event ignored"
    );
    assert_eq!(stored(&db).await?, ("five".into(), false));
    assert_eq!(
        w.write(&[record(5, "five-again", EventKind::Apply)], &[])
            .await?
            .rows_written,
        0,
        "duplicate ignored"
    );
    assert_eq!(
        w.write(&[record(7, "seven", EventKind::Apply)], &[])
            .await?
            .rows_written,
        1
    );
    assert_eq!(stored(&db).await?, ("seven".into(), false));
    // A delete carrying the live row's own resourceVersion still applies.
    w.write(&[record(7, "seven", EventKind::Delete)], &[])
        .await?;
    assert_eq!(stored(&db).await?, ("seven".into(), true));
    // ...and a late apply of an older state does not bring it back.
    w.write(&[record(6, "six", EventKind::Apply)], &[]).await?;
    assert_eq!(stored(&db).await?, ("seven".into(), true));
    Ok(())
}

#[tokio::test]
async fn tombstones_mark_live_rows_deleted_once() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let database = Database::connect(&config(&db), 4).await?;
    let w = BatchWriter::new(database.pool.clone(), Arc::new(Metrics::new()));
    w.write(&[record(1, "one", EventKind::Apply)], &[]).await?;
    let t = Tombstone {
        global_uid: format!("c:{UID}"),
        observed_at: Utc::now(),
        not_newer_than: Some(1),
    };
    assert_eq!(w.write(&[], std::slice::from_ref(&t)).await?.tombstoned, 1);
    assert_eq!(w.write(&[], &[t]).await?.tombstoned, 0, "already deleted");
    assert!(stored(&db).await?.1);
    Ok(())
}

fn tombstone(not_newer_than: Option<i64>) -> Tombstone {
    Tombstone {
        global_uid: format!("c:{UID}"),
        observed_at: Utc::now(),
        not_newer_than,
    }
}

/// A list taken at resourceVersion 5 (a lagging cache, another replica's older list) must not
/// mark deleted a row written from state 7: the list never saw that state.
#[tokio::test]
async fn a_sweep_leaves_rows_newer_than_its_list_alone() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let database = Database::connect(&config(&db), 4).await?;
    let w = BatchWriter::new(database.pool.clone(), Arc::new(Metrics::new()));
    w.write(&[record(7, "seven", EventKind::Apply)], &[])
        .await?;
    assert_eq!(w.write(&[], &[tombstone(Some(5))]).await?.tombstoned, 0);
    assert_eq!(stored(&db).await?, ("seven".into(), false));
    assert_eq!(w.write(&[], &[tombstone(Some(7))]).await?.tombstoned, 1);
    assert_eq!(stored(&db).await?, ("seven".into(), true));
    Ok(())
}

/// A row marked deleted by a sweep (or by hand) while its object lives comes back with the
/// next event or list entry of that object, even at the same resourceVersion; a real delete
/// (which carries a newer version) is not undone by a late state.
#[tokio::test]
async fn a_live_state_revives_a_row_marked_deleted_at_the_same_version() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let database = Database::connect(&config(&db), 4).await?;
    let w = BatchWriter::new(database.pool.clone(), Arc::new(Metrics::new()));
    w.write(&[record(7, "seven", EventKind::Apply)], &[])
        .await?;
    w.write(&[], &[tombstone(Some(9))]).await?;
    assert_eq!(stored(&db).await?, ("seven".into(), true));
    assert_eq!(
        w.write(&[record(7, "seven", EventKind::Apply)], &[])
            .await?
            .rows_written,
        1
    );
    assert_eq!(stored(&db).await?, ("seven".into(), false), "revived");
    // Corrupted by hand: the same.
    db.client()
        .await?
        .execute("UPDATE krateo_resources SET deleted_at = now()", &[])
        .await?;
    w.write(&[record(7, "seven", EventKind::Apply)], &[])
        .await?;
    assert_eq!(stored(&db).await?, ("seven".into(), false), "repaired");
    // A real delete carries its own, newer version: an older live state stays refused.
    w.write(&[record(8, "eight", EventKind::Delete)], &[])
        .await?;
    w.write(&[record(7, "seven", EventKind::Apply)], &[])
        .await?;
    assert_eq!(stored(&db).await?, ("eight".into(), true));
    Ok(())
}

#[tokio::test]
async fn two_writers_racing_end_at_the_newest_state() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let cfg = config(&db);
    let a = Database::connect(&cfg, 2).await?;
    let b = Database::connect(&cfg, 2).await?;
    let wa = BatchWriter::new(a.pool.clone(), Arc::new(Metrics::new()));
    let wb = BatchWriter::new(b.pool.clone(), Arc::new(Metrics::new()));
    let ta = tokio::spawn(async move {
        for rv in (1..=200).step_by(2) {
            wa.write(&[record(rv, &rv.to_string(), EventKind::Apply)], &[])
                .await?;
        }
        anyhow::Ok(())
    });
    let tb = tokio::spawn(async move {
        for rv in (1..=100).rev().map(|i: i64| i * 2) {
            wb.write(&[record(rv, &rv.to_string(), EventKind::Apply)], &[])
                .await?;
        }
        anyhow::Ok(())
    });
    ta.await??;
    tb.await??;
    assert_eq!(stored(&db).await?, ("200".into(), false));
    Ok(())
}

#[tokio::test]
async fn schema_is_created_once_with_lz4_where_available_even_by_concurrent_replicas(
) -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let cfg = config(&db);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            Database::connect(&cfg, 1).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let c = db.client().await?;
    let compression: String = c
        .query_one("SELECT attcompression::text FROM pg_attribute WHERE attrelid = 'krateo_resources'::regclass AND attname = 'raw'", &[])
        .await?
        .get(0);
    // lz4 where the server was built with it (PostgreSQL's default builds are), else pglz.
    let lz4: bool = c
        .query_one(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'",
            &[],
        )
        .await?
        .get(0);
    if lz4 {
        assert_eq!(compression, "l", "raw uses lz4");
    } else {
        assert_ne!(compression, "l", "no lz4 on this server");
    }
    let indexes: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'krateo_resources'",
            &[],
        )
        .await?
        .get(0);
    assert!(
        indexes >= 11,
        "presenter indexes + pkey + unique: {indexes}"
    );
    Ok(())
}

/// The error `Database::connect` stops start-up with ("" if it started).
async fn start_up_error(db: &TestDb) -> String {
    Database::connect(&config(db), 1)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_existing_table_with_a_wrong_column_type_stops_start_up_with_its_name(
) -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let c = db.client().await?;
    c.batch_execute(
        "CREATE TABLE krateo_resources (id bigint PRIMARY KEY, created_at timestamptz, updated_at timestamptz, deleted_at timestamptz,
          cluster_name text, uid text, namespace text, global_uid text UNIQUE, resource_group text, resource_version text,
          resource_kind text, resource_plural text, resource_name text, composition_id text, raw jsonb, status_raw jsonb)",
    )
    .await?;
    let err = start_up_error(&db).await;
    assert!(
        err.contains("composition_id") && err.contains("uuid"),
        "{err}"
    );
    c.batch_execute(
        "ALTER TABLE krateo_resources ALTER COLUMN composition_id TYPE uuid USING composition_id::uuid",
    )
    .await?;
    let err = start_up_error(&db).await;
    assert!(err.contains("column id has no default"), "{err}");
    c.batch_execute("DROP TABLE krateo_resources; CREATE TABLE krateo_resources (id bigint)")
        .await?;
    let err = start_up_error(&db).await;
    assert!(
        err.contains("created_at") && err.contains("missing"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_rejected_record_is_narrowed_down_and_the_batch_lands() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let database = Database::connect(&config(&db), 2).await?;
    let metrics = Arc::new(Metrics::new());
    let w = BatchWriter::new(database.pool.clone(), metrics.clone());
    let mut batch = Vec::new();
    for i in 0..9 {
        let json = format!(
            r#"{{"metadata":{{"name":"cm{i}","namespace":"ns","uid":"uid-{i}","resourceVersion":"1"}}}}"#
        );
        let obj = RawObject::from_json(json).expect("json");
        let route = Arc::new(Route::new("", "v1", "configmaps", "ConfigMap"));
        batch.push(
            build_record(obj, &route, &Arc::from("c"), EventKind::Apply, Utc::now())
                .expect("r")
                .0,
        );
    }
    // Bypass record building's own sanitiser to exercise the database-side narrowing.
    batch[4].raw =
        r#"{"metadata":{"name":"cm4","namespace":"ns","uid":"uid-4"},"x":"\u0000"}"#.to_owned();
    let stats = w.write(&batch, &[]).await?;
    assert_eq!(stats.rows_written, 9);
    let c = db.client().await?;
    let stub: serde_json::Value = c
        .query_one("SELECT raw FROM krateo_resources WHERE uid = 'uid-4'", &[])
        .await?
        .get(0);
    assert_eq!(stub["ingester"]["storedAsStub"], serde_json::json!(true));
    assert!(metrics
        .encode()
        .contains("ingester_records_sanitised_total{reason=\"rejected_stored_as_stub\"} 1"));
    Ok(())
}

/// Within one batch, a tombstone and a later event of the same object keep their order: a
/// sweep's tombstone (from a list that missed the object) followed by the object's own event
/// at the same version ends live, as it would one write at a time. The writer applies records
/// before tombstones, so the lane commits the tombstone first.
#[tokio::test]
async fn a_tombstone_then_an_event_of_the_same_object_keep_their_order_in_a_batch(
) -> anyhow::Result<()> {
    use resources_ingester::pipeline::health::Health;
    use resources_ingester::pipeline::lanes::{LaneSettings, Lanes, WatchedEvent};
    let db = TestDb::create().await?;
    let database = Database::connect(&config(&db), 4).await?;
    let metrics = Arc::new(Metrics::new());
    let w = BatchWriter::new(database.pool.clone(), metrics.clone());
    w.write(&[record(7, "seven", EventKind::Apply)], &[])
        .await?;
    let tracker = tokio_util::task::TaskTracker::new();
    let lanes = Lanes::start(
        LaneSettings {
            lanes: 1,
            capacity: 16,
            batch_size: 100,
            // Long enough that both items land in one batch; the barrier flushes it.
            flush_interval: std::time::Duration::from_secs(30),
            queue_bytes: 1 << 20,
            batch_bytes: 1 << 20,
            composition_fallback: Default::default(),
            fields: Default::default(),
        },
        Arc::from("c"),
        w,
        metrics.clone(),
        Arc::new(Health::new(metrics.clone())),
        &tracker,
    );
    lanes
        .send_tombstone(UID, format!("c:{UID}"), Utc::now(), Some(9))
        .await?;
    let json = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm","namespace":"ns","uid":"{UID}","resourceVersion":"7","creationTimestamp":"2024-01-01T00:00:00Z"}},"data":{{"m":"seven"}}}}"#
    );
    lanes
        .send_event(WatchedEvent {
            object: RawObject::from_json(json)?,
            route: Arc::new(Route::new("", "v1", "configmaps", "ConfigMap")),
            kind: EventKind::Apply,
            observed_at: Utc::now(),
        })
        .await?;
    lanes.barrier().await?;
    assert_eq!(
        stored(&db).await?,
        ("seven".into(), false),
        "the event came last"
    );
    Ok(())
}

/// A table written by someone else may hold NULLs where ours never does: reading the scope of
/// a list must not panic on one (it used to, killing the watch task).
#[tokio::test]
async fn nulls_in_a_foreign_table_do_not_panic_a_list() -> anyhow::Result<()> {
    use resources_ingester::storage::snapshot::{Scope, ScopeSnapshot};
    let db = TestDb::create().await?;
    let database = Database::connect(&config(&db), 2).await?;
    let c = db.client().await?;
    c.batch_execute(
        "ALTER TABLE krateo_resources ALTER COLUMN uid DROP NOT NULL;
         INSERT INTO krateo_resources (created_at, updated_at, cluster_name, uid, namespace, global_uid,
            resource_group, resource_version, resource_kind, resource_plural, resource_name, raw)
         VALUES (now(), now(), 'c', NULL, 'ns', 'c:odd', '', 'v1', 'ConfigMap', 'configmaps', 'odd', '{}')",
    )
    .await?;
    let w = BatchWriter::new(database.pool.clone(), Arc::new(Metrics::new()));
    w.write(&[record(3, "three", EventKind::Apply)], &[])
        .await?;
    let scope = Scope {
        cluster: "c".into(),
        group: String::new(),
        plural: "configmaps".into(),
        version: "v1".into(),
        namespace: None,
    };
    let snapshot = ScopeSnapshot::load(&database.pool, &scope)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(snapshot.len(), 1, "the row without a uid is skipped");
    Ok(())
}
