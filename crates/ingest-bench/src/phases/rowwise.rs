//! Phase 3, row-wise upserts (`rowwise_rows_per_s`): the prepared rows upserted one row per
//! statement, each statement its own transaction, into a table with PostgreSQL's defaults.

use std::path::Path;
use std::time::Instant;

use crate::harness::pg_cpu_split;
use crate::phases::copy::{fresh_table, WriteResult};
use crate::phases::Bench;
use crate::procfs;
use crate::rows::{RawParam, RowReader, COLUMNS, NCOLS};

const UPSERT_SET: &str = "ON CONFLICT (global_uid) DO UPDATE SET updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at, namespace = EXCLUDED.namespace, resource_version = EXCLUDED.resource_version, resource_kind = EXCLUDED.resource_kind, resource_plural = EXCLUDED.resource_plural, composition_id = EXCLUDED.composition_id, raw = EXCLUDED.raw, status_raw = EXCLUDED.status_raw, object_resource_version = EXCLUDED.object_resource_version";

fn values_clause(rows: usize) -> String {
    (0..rows)
        .map(|r| {
            let ps: Vec<String> = (1..=NCOLS).map(|c| format!("${}", r * NCOLS + c)).collect();
            format!("({})", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Upserts of `per_stmt` rows per statement, each statement its own transaction, into a table
/// with the presenter's DDL and PostgreSQL's defaults.
pub async fn upserts(path: &Path, per_stmt: usize) -> anyhow::Result<WriteResult> {
    let (db, c) = fresh_table(true).await?;
    let admin = db.client().await?;
    let sql = |n| {
        format!(
            "INSERT INTO krateo_resources ({COLUMNS}) VALUES {} {UPSERT_SET}",
            values_clause(n)
        )
    };
    let full = c.prepare(&sql(per_stmt)).await?;
    let mut reader = RowReader::open(path)?;
    let pg_before = procfs::postgres_cpu();
    let t0 = Instant::now();
    let mut rows = 0u64;
    let mut batch = Vec::with_capacity(per_stmt);
    loop {
        let row = reader.next_row()?;
        let done = row.is_none();
        if let Some(r) = row {
            batch.push(r);
        }
        if batch.len() == per_stmt || (done && !batch.is_empty()) {
            let params: Vec<RawParam<'_>> = batch
                .iter()
                .flat_map(|r| r.fields.iter().map(|f| RawParam(f.as_deref())))
                .collect();
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p as _).collect();
            if batch.len() == per_stmt {
                c.execute(&full, &refs).await?;
            } else {
                let stmt = c.prepare(&sql(batch.len())).await?;
                c.execute(&stmt, &refs).await?;
            }
            rows += batch.len() as u64;
            batch.clear();
        }
        if done {
            break;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let (_, pg_cpu_ours) = pg_cpu_split(&admin, &db.name, &pg_before).await?;
    Ok(WriteResult {
        rows,
        seconds,
        pg_cpu_ours,
    })
}

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let rep = &mut b.rep;
    println!("[3] row-wise upserts, one row per transaction");
    let r = upserts(&b.rows_path, 1).await?;
    let rowwise_rps = r.rows as f64 / r.seconds;
    rep.add(
        "rowwise",
        "1 row/tx: rows/s (rowwise_rows_per_s)",
        format!("{rowwise_rps:.0}"),
    );
    rep.add(
        "rowwise",
        "1 row/tx: PostgreSQL CPU s",
        format!("{:.2}", r.pg_cpu_ours),
    );
    b.summary.rowwise_rps = rowwise_rps;
    Ok(())
}
