//! Phase 2, naive bulk load (`copy_rows_per_s`): one single-stream binary COPY of the prepared rows
//! into a table with PostgreSQL's default compression, then one into a table with the ingester's
//! own settings (lz4).

use std::path::Path;
use std::time::Instant;

use testkit::pg::TestDb;
use tokio_postgres::Client;

use crate::harness::pg_cpu_split;
use crate::phases::Bench;
use crate::procfs;
use crate::rows::COLUMNS;

/// A fresh database with the ingester's table: its own settings (lz4) or, with `defaults`,
/// the presenter's DDL with PostgreSQL's default TOAST compression.
pub async fn fresh_table(defaults: bool) -> anyhow::Result<(TestDb, Client)> {
    let db = TestDb::create().await?;
    let c = db.client().await?;
    let info = resources_ingester::storage::schema::ensure_schema(&c)
        .await
        .map_err(|e| anyhow::anyhow!("schema: {e}"))?;
    if defaults {
        c.batch_execute("ALTER TABLE krateo_resources ALTER COLUMN raw SET COMPRESSION default, ALTER COLUMN status_raw SET COMPRESSION default")
            .await?;
    } else {
        anyhow::ensure!(
            info.lz4,
            "this PostgreSQL has no lz4: the ingester's settings equal the defaults"
        );
    }
    Ok((db, c))
}

pub struct WriteResult {
    pub rows: u64,
    pub seconds: f64,
    pub pg_cpu_ours: f64,
}

/// One single-stream binary COPY of the prepared file.
pub async fn bulk_copy(path: &Path, defaults: bool) -> anyhow::Result<WriteResult> {
    use futures::SinkExt;
    let (db, c) = fresh_table(defaults).await?;
    let admin = db.client().await?;
    let pg_before = procfs::postgres_cpu();
    let t0 = Instant::now();
    let sink = c
        .copy_in(&format!(
            "COPY krateo_resources ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    futures::pin_mut!(sink);
    let mut f = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        use tokio::io::AsyncReadExt;
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        sink.send(bytes::Bytes::copy_from_slice(&buf[..n])).await?;
    }
    let rows = sink.as_mut().finish().await?;
    let seconds = t0.elapsed().as_secs_f64();
    let (_, pg_cpu_ours) = pg_cpu_split(&admin, &db.name, &pg_before).await?;
    Ok(WriteResult {
        rows,
        seconds,
        pg_cpu_ours,
    })
}

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let (rep, rows_path, sync_rps) = (&mut b.rep, &b.rows_path, b.summary.sync_rps);
    println!("[2] single-stream binary COPY of the same rows");
    let c = bulk_copy(rows_path, true).await?;
    let copy_rps = c.rows as f64 / c.seconds;
    rep.add(
        "copy",
        "default table: seconds",
        format!("{:.2}", c.seconds),
    );
    rep.add(
        "copy",
        "default table: rows/s (copy_rows_per_s)",
        format!("{copy_rps:.0}"),
    );
    rep.add(
        "copy",
        "default table: PostgreSQL CPU s",
        format!("{:.2}", c.pg_cpu_ours),
    );
    let l = bulk_copy(rows_path, false).await?;
    let lz4_rps = l.rows as f64 / l.seconds;
    rep.add("copy", "lz4 table: rows/s", format!("{lz4_rps:.0}"));
    rep.add(
        "copy",
        "lz4 table: PostgreSQL CPU s",
        format!("{:.2}", l.pg_cpu_ours),
    );
    rep.add(
        "copy",
        "sync vs lz4 COPY",
        format!("{:.2}", sync_rps / lz4_rps),
    );
    b.summary.copy_rps = copy_rps;
    Ok(())
}
