//! What the harness prints: a line per figure as it is measured, the table at the end and the
//! `RESULT` line of the headline figures.

/// One row of the printed table.
struct Line {
    phase: String,
    metric: String,
    value: String,
}

#[derive(Default)]
pub struct Report {
    lines: Vec<Line>,
}

impl Report {
    pub fn add(&mut self, phase: &str, metric: &str, value: impl std::fmt::Display) {
        let value = value.to_string();
        println!("  {phase:<10} {metric:<44} {value}");
        self.lines.push(Line {
            phase: phase.into(),
            metric: metric.into(),
            value,
        });
    }
    pub fn print(&self) {
        println!();
        println!("| phase | metric | value |");
        println!("|---|---|---|");
        for l in &self.lines {
            println!("| {} | {} | {} |", l.phase, l.metric, l.value);
        }
        println!();
    }
}

/// The figures of the `RESULT` line; NaN for a phase that did not run.
pub struct Summary {
    pub objects: usize,
    pub sync_rps: f64,
    pub copy_rps: f64,
    pub rowwise_rps: f64,
    pub peak_rss: f64,
    pub p99_ms: f64,
    pub restart_rows: f64,
    pub restart_secs: f64,
    /// How the cost grows with the object count (`scripts/bench-scale.sh` reads these).
    pub preload_secs: f64,
    pub sync_secs: f64,
    pub ingester_cpu_secs: f64,
    pub pg_cpu_secs: f64,
    pub table_mib: f64,
}

impl Summary {
    pub fn new(objects: usize) -> Summary {
        Summary {
            objects,
            sync_rps: f64::NAN,
            copy_rps: f64::NAN,
            rowwise_rps: f64::NAN,
            peak_rss: f64::NAN,
            p99_ms: f64::NAN,
            restart_rows: f64::NAN,
            restart_secs: f64::NAN,
            preload_secs: f64::NAN,
            sync_secs: f64::NAN,
            ingester_cpu_secs: f64::NAN,
            pg_cpu_secs: f64::NAN,
            table_mib: f64::NAN,
        }
    }

    pub fn print(&self) {
        let Summary {
            objects: n,
            sync_rps,
            copy_rps,
            rowwise_rps,
            peak_rss,
            p99_ms,
            restart_rows,
            restart_secs,
            preload_secs,
            sync_secs,
            ingester_cpu_secs,
            pg_cpu_secs,
            table_mib,
        } = self;
        println!(
            "RESULT objects={n} sync_rows_per_s={sync_rps:.0} copy_rows_per_s={copy_rps:.0} rowwise_rows_per_s={rowwise_rps:.0} ratio_vs_copy={:.2} ratio_vs_rowwise={:.2} peak_rss_mib={peak_rss:.1} p99_latency_ms={p99_ms:.0} restart_rows_rewritten={restart_rows:.0} restart_seconds={restart_secs:.2} preload_seconds={preload_secs:.1} sync_seconds={sync_secs:.2} ingester_cpu_seconds={ingester_cpu_secs:.2} ingester_cpu_us_per_object={:.1} postgres_cpu_seconds={pg_cpu_secs:.2} table_mib={table_mib:.1}",
            sync_rps / copy_rps,
            sync_rps / rowwise_rps,
            ingester_cpu_secs * 1e6 / *n as f64
        );
    }
}

pub fn fmt1(x: f64) -> String {
    format!("{x:.1}")
}
