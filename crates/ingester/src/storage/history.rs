//! The change history (`HISTORY`): `krateo_resource_history`, one row per object version,
//! written by the batch writer in the same transaction as the upsert (see `writer.rs`), and
//! range-partitioned by day (UTC) on `observed_at`.
//!
//! Partitions: `krateo_resource_history_pYYYYMMDD`, created ahead for today and the next
//! [`DAYS_AHEAD`] days, dropped whole once their day ended more than `HISTORY_RETENTION` ago.
//! A default partition catches rows of a day whose partition is missing (maintenance did not
//! run), so a missed maintenance never stops the writer; maintenance moves such rows into
//! the day's partition when it creates it, and deletes those past retention.
//!
//! Maintenance needs ownership of the table: the service runs it when its role owns it,
//! otherwise `resources-ingester history maintain` runs it with the owner's credentials
//! (the chart's CronJob) and the service only warns when tomorrow's partition is missing.

use std::sync::Arc;
use tokio_postgres::types::Type;

use chrono::{DateTime, Duration as Days, NaiveDate, Utc};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::telemetry::events::{
    HistoryMaintained, HistoryMaintenanceFailed, HistoryPartitionCheck,
};
use crate::telemetry::metrics::Metrics;

pub const TABLE: &str = "krateo_resource_history";
pub const DEFAULT_PARTITION: &str = "krateo_resource_history_default";
/// Key of the advisory lock that serialises partition maintenance.
const MAINTENANCE_LOCK_KEY: i64 = 0x6b72_6174_656f_0007;
/// Partitions are created for today and this many days after it.
pub const DAYS_AHEAD: u32 = 3;

/// Migration 7: the partitioned table, its default partition and the lookup index; `raw` in
/// lz4 where the server has it, as in `krateo_resources` (pglz costs the writer about half
/// again the PostgreSQL CPU of a batch of 10 KiB objects).
pub const TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS krateo_resource_history (
    observed_at timestamptz NOT NULL,
    cluster_name text NOT NULL,
    global_uid text NOT NULL,
    resource_group text NOT NULL,
    resource_version text NOT NULL,
    resource_kind text NOT NULL,
    resource_plural text NOT NULL,
    namespace text NOT NULL,
    resource_name text NOT NULL,
    operation text NOT NULL CHECK (operation IN ('created', 'updated', 'deleted')),
    object_resource_version bigint NULL,
    raw jsonb NOT NULL
) PARTITION BY RANGE (observed_at);
CREATE TABLE IF NOT EXISTS krateo_resource_history_default PARTITION OF krateo_resource_history DEFAULT;
CREATE INDEX IF NOT EXISTS krateo_resource_history_uid_idx ON krateo_resource_history (global_uid, observed_at);
DO $migration$ BEGIN
  ALTER TABLE krateo_resource_history ALTER COLUMN raw SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
  RAISE NOTICE 'this server has no lz4: krateo_resource_history.raw keeps pglz';
END $migration$";

/// The name of the partition holding `day`.
pub fn partition_name(day: NaiveDate) -> String {
    format!("{TABLE}_p{}", day.format("%Y%m%d"))
}

/// The day of a partition this module named; `None` for any other table.
pub fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(TABLE)?.strip_prefix("_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

/// What maintenance does at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Days whose partition is missing: today and the next [`DAYS_AHEAD`].
    pub create: Vec<NaiveDate>,
    /// Partitions whose whole day ended at least `retention_days` before `now`.
    pub drop: Vec<String>,
    /// Rows older than this are past retention (applies to the default partition).
    pub cutoff: DateTime<Utc>,
}

/// Pure: the partitions to create and drop, given the existing partition names.
pub fn plan(existing: &[String], now: DateTime<Utc>, retention_days: u32) -> PartitionPlan {
    let today = now.date_naive();
    let cutoff = now - Days::days(i64::from(retention_days));
    let have: Vec<NaiveDate> = existing.iter().filter_map(|n| partition_day(n)).collect();
    let create = (0..=DAYS_AHEAD)
        .map(|d| today + Days::days(i64::from(d)))
        .filter(|d| !have.contains(d))
        .collect();
    let mut drop: Vec<String> = existing
        .iter()
        .filter(|n| partition_day(n).is_some_and(|d| day_start(d + Days::days(1)) <= cutoff))
        .cloned()
        .collect();
    drop.sort();
    PartitionPlan {
        create,
        drop,
        cutoff,
    }
}

fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The partitions attached to the history table (the default one excluded).
pub async fn partitions(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query_typed(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = to_regclass($1) ORDER BY 1",
            &[(&TABLE, Type::TEXT)],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|n| n != DEFAULT_PARTITION)
        .collect())
}

/// Creates the partition of `day`: rows of that day waiting in the default partition are
/// moved into it first (attaching refuses a range the default partition holds rows of).
/// One transaction under an advisory lock (the service and the CronJob may run at once),
/// holding off the writers for the few milliseconds it takes (the move of rows left in the
/// default partition aside: there only when maintenance did not run for days).
pub async fn create_partition(
    client: &Client,
    day: NaiveDate,
) -> Result<(), tokio_postgres::Error> {
    let name = partition_name(day);
    let from = day_start(day).to_rfc3339();
    let to = day_start(day + Days::days(1)).to_rfc3339();
    client
        .batch_execute(&format!(
            "DO $maintain$ BEGIN
  PERFORM pg_advisory_xact_lock({MAINTENANCE_LOCK_KEY});
  IF NOT EXISTS (SELECT 1 FROM pg_inherits
                  WHERE inhrelid = to_regclass('{name}') AND inhparent = to_regclass('{TABLE}')) THEN
    -- Writers wait for this transaction: none routes a row of this day into the default
    -- partition between the move and the attach (the attach would then fail).
    LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE;
    CREATE TABLE IF NOT EXISTS {name} (LIKE {TABLE} INCLUDING ALL);
    WITH moved AS (DELETE FROM {DEFAULT_PARTITION}
                    WHERE observed_at >= '{from}' AND observed_at < '{to}' RETURNING *)
      INSERT INTO {name} SELECT * FROM moved;
    ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM ('{from}') TO ('{to}');
  END IF;
END $maintain$"
        ))
        .await
}

/// What one maintenance run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maintained {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    /// Rows past retention deleted from the default partition.
    pub expired_default_rows: u64,
}

/// Creates the coming partitions and drops those past retention (needs ownership).
pub async fn maintain(
    client: &Client,
    now: DateTime<Utc>,
    retention_days: u32,
) -> Result<Maintained, tokio_postgres::Error> {
    let plan = plan(&partitions(client).await?, now, retention_days);
    let mut done = Maintained::default();
    for day in &plan.create {
        create_partition(client, *day).await?;
        done.created.push(partition_name(*day));
    }
    for name in &plan.drop {
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
            .await?;
        done.dropped.push(name.clone());
    }
    done.expired_default_rows = client
        .execute_typed(
            &format!("DELETE FROM {DEFAULT_PARTITION} WHERE observed_at < $1"),
            &[(&plan.cutoff, Type::TIMESTAMPTZ)],
        )
        .await?;
    Ok(done)
}

/// Whether the connected role may run maintenance: it owns the history table (or is a member
/// of its owner) and may create tables in its schema.
pub async fn may_maintain(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_typed_one(
            "SELECT COALESCE((SELECT pg_has_role(current_user, c.relowner, 'USAGE')
                                AND has_schema_privilege(c.relnamespace, 'CREATE')
                                FROM pg_class c WHERE c.oid = to_regclass($1)), false)",
            &[(&TABLE, Type::TEXT)],
        )
        .await?
        .get(0))
}

/// The day after `now`'s, when its partition is missing.
pub async fn missing_tomorrow(
    client: &Client,
    now: DateTime<Utc>,
) -> Result<Option<NaiveDate>, tokio_postgres::Error> {
    let tomorrow = now.date_naive() + Days::days(1);
    let have = partitions(client).await?;
    Ok((!have.contains(&partition_name(tomorrow))).then_some(tomorrow))
}

/// How often the service maintains (or checks) the partitions.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// One upkeep round: maintenance when this role may, then the check for tomorrow's partition.
pub async fn upkeep_once(pool: &deadpool_postgres::Pool, retention_days: u32, metrics: &Metrics) {
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            HistoryMaintenanceFailed {
                error: &format!("connection pool: {}", super::error_chain(&e)),
            }
            .emit(metrics);
            return;
        }
    };
    match may_maintain(&client).await {
        Ok(true) => match maintain(&client, Utc::now(), retention_days).await {
            Ok(done) => HistoryMaintained {
                created: &done.created,
                dropped: &done.dropped,
                expired_default_rows: done.expired_default_rows,
            }
            .emit(metrics),
            Err(e) => HistoryMaintenanceFailed {
                error: &super::error_chain(&e),
            }
            .emit(metrics),
        },
        Ok(false) => {}
        Err(e) => HistoryMaintenanceFailed {
            error: &super::error_chain(&e),
        }
        .emit(metrics),
    }
    match missing_tomorrow(&client, Utc::now()).await {
        Ok(missing) => {
            let day = missing.map(|d| d.to_string());
            HistoryPartitionCheck {
                missing_day: day.as_deref(),
            }
            .emit(metrics)
        }
        Err(e) => HistoryMaintenanceFailed {
            error: &super::error_chain(&e),
        }
        .emit(metrics),
    }
}

/// Runs [`upkeep_once`] every [`UPKEEP_INTERVAL`] until `stop` (the service runs the first
/// one itself before its writers start, so today's rows find their partition).
pub async fn upkeep(
    pool: deadpool_postgres::Pool,
    retention_days: u32,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(UPKEEP_INTERVAL) => {}
        }
        upkeep_once(&pool, retention_days, &metrics).await;
    }
}

/// Whole days of a `HISTORY_RETENTION` (validated in whole days when parsed).
pub fn retention_days(retention: std::time::Duration) -> u32 {
    u32::try_from(retention.as_secs() / 86_400)
        .unwrap_or(u32::MAX)
        .max(1)
}

/// One stored version of an object, for the `history` command.
#[derive(Clone, Debug)]
pub struct Version {
    pub observed_at: DateTime<Utc>,
    pub operation: String,
    pub resource_version: Option<i64>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub raw: serde_json::Value,
}

/// Every stored version of the object `global_uid`, oldest first.
pub async fn versions(
    client: &Client,
    global_uid: &str,
) -> Result<Vec<Version>, tokio_postgres::Error> {
    Ok(client
        .query_typed(
            "SELECT observed_at, operation, object_resource_version, resource_kind, namespace,
                    resource_name, raw
               FROM krateo_resource_history WHERE global_uid = $1
              ORDER BY observed_at, object_resource_version NULLS LAST",
            &[(&global_uid, Type::TEXT)],
        )
        .await?
        .iter()
        .map(|r| Version {
            observed_at: r.get(0),
            operation: r.get(1),
            resource_version: r.get(2),
            kind: r.get(3),
            namespace: r.get(4),
            name: r.get(5),
            raw: r.get(6),
        })
        .collect())
}

/// The global uids of the objects of this kind, namespace and name (several when the object
/// was deleted and created again, or in several clusters), from the live table and the
/// history.
pub async fn find_objects(
    client: &Client,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query_typed(
            "SELECT global_uid FROM krateo_resources
              WHERE resource_kind = $1 AND namespace = $2 AND resource_name = $3
             UNION
             SELECT DISTINCT global_uid FROM krateo_resource_history
              WHERE resource_kind = $1 AND namespace = $2 AND resource_name = $3
             ORDER BY 1",
            &[
                (&kind, Type::TEXT),
                (&namespace, Type::TEXT),
                (&name, Type::TEXT),
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn partition_names_round_trip_and_others_are_ignored() {
        let d = day(2026, 11, 30);
        assert_eq!(partition_name(d), "krateo_resource_history_p20261130");
        assert_eq!(partition_day(&partition_name(d)), Some(d));
        assert_eq!(partition_day(DEFAULT_PARTITION), None);
        assert_eq!(partition_day("krateo_resource_history_p2026113"), None);
        assert_eq!(partition_day("krateo_resource_history_p20261340"), None);
        assert_eq!(partition_day("other_p20261130"), None);
    }

    #[test]
    fn creates_today_and_the_days_ahead_that_are_missing() {
        let existing = vec![
            partition_name(day(2026, 11, 30)),
            partition_name(day(2026, 12, 2)),
        ];
        let p = plan(&existing, at(2026, 11, 30, 13), 7);
        assert_eq!(p.create, vec![day(2026, 12, 1), day(2026, 12, 3)]);
        assert!(p.drop.is_empty());
    }

    #[test]
    fn drops_whole_days_only_once_they_are_past_retention() {
        let existing: Vec<String> = [
            day(2026, 11, 20),
            day(2026, 11, 22),
            day(2026, 11, 23),
            day(2026, 11, 24),
        ]
        .into_iter()
        .map(partition_name)
        .chain(["unrelated_table".to_owned()])
        .collect();
        // 7 days before 2026-11-30 12:00 is 2026-11-23 12:00: the 22nd ended before it, the
        // 23rd holds rows younger than that and stays.
        let p = plan(&existing, at(2026, 11, 30, 12), 7);
        assert_eq!(
            p.drop,
            vec![
                partition_name(day(2026, 11, 20)),
                partition_name(day(2026, 11, 22))
            ]
        );
        assert_eq!(p.cutoff, at(2026, 11, 23, 12));
        // At midnight the day that just ended 7 days ago goes too.
        let p = plan(&existing, at(2026, 12, 1, 0), 7);
        assert!(p.drop.contains(&partition_name(day(2026, 11, 23))));
        assert!(!p.drop.contains(&partition_name(day(2026, 11, 24))));
    }

    #[test]
    fn a_one_day_retention_keeps_yesterday_until_its_end_is_a_day_old() {
        let existing = vec![partition_name(day(2026, 11, 29))];
        assert!(plan(&existing, at(2026, 11, 30, 23), 1).drop.is_empty());
        assert_eq!(plan(&existing, at(2026, 12, 1, 0), 1).drop, existing);
    }
}
