//! Phase 3b, multi-row upserts: the prepared rows upserted 50 rows per statement, each statement
//! its own transaction (reported under "rowwise").

use crate::phases::rowwise::upserts;
use crate::phases::Bench;

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let rep = &mut b.rep;
    println!("[3b] 50-row multi-row upserts per transaction");
    let r = upserts(&b.rows_path, 50).await?;
    rep.add(
        "rowwise",
        "50 rows/tx: rows/s",
        format!("{:.0}", r.rows as f64 / r.seconds),
    );
    rep.add(
        "rowwise",
        "50 rows/tx: PostgreSQL CPU s",
        format!("{:.2}", r.pg_cpu_ours),
    );
    Ok(())
}
