//! Phase 6, peak RSS vs object size: a full sync of the same number of ~2 KiB and of ~16 KiB
//! objects, each with its own kube-sim, database and ingester.

use std::time::Duration;

use kube_sim::workload::reference::Size;
use testkit::pg::TestDb;

use crate::harness::Sim;
use crate::phases::sync::sync;
use crate::phases::Bench;
use crate::report::fmt1;

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    println!("[6] peak RSS with ~2 KiB vs ~16 KiB objects");
    let rep = &mut b.rep;
    let mut peaks = Vec::new();
    for sz in [Size::Small, Size::Large] {
        let sim = Sim::start(b.n, sz).await?;
        let db = TestDb::create().await?;
        let expected = (sim.pods + sim.namespaces) as u64;
        let (mut ing, r) = sync(&b.args, &b.bin, &sim, &db, expected).await?;
        rep.add(
            "sizes",
            &format!("{}: sync rows/s", sz.label()),
            format!("{:.0}", r.rows as f64 / r.seconds),
        );
        rep.add(
            "sizes",
            &format!("{}: peak RSS MiB", sz.label()),
            fmt1(r.peak_rss_mib),
        );
        peaks.push(r.peak_rss_mib);
        b.summary.peak_rss = b.summary.peak_rss.max(r.peak_rss_mib);
        let _ = ing.proc.terminate(Duration::from_secs(60)).await;
    }
    rep.add(
        "sizes",
        "16KiB vs 2KiB peak RSS",
        format!("{:+.1}%", 100.0 * (peaks[1] / peaks[0] - 1.0)),
    );
    Ok(())
}
