//! The ingester as a child process: configured by environment like in production, its log
//! kept in a file, probed over HTTP, stopped with SIGTERM or SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct IngesterProcess {
    child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl IngesterProcess {
    /// Starts `bin` with `env` (plus free PORT/METRICS_PORT unless given).
    pub fn start(bin: &Path, env: &[(String, String)]) -> anyhow::Result<IngesterProcess> {
        let log_dir = tempfile::tempdir()?;
        let log_path = log_dir.path().join("ingester.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        cmd.env_clear();
        for k in ["PATH", "HOME"] {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let port = get("PORT")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(free_port);
        let metrics_port = get("METRICS_PORT")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(free_port);
        cmd.env("PORT", port.to_string())
            .env("METRICS_PORT", metrics_port.to_string())
            .env(
                "RUST_LOG",
                std::env::var("INGESTER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", bin.display()))?;
        Ok(IngesterProcess {
            child,
            port,
            metrics_port,
            log_path,
            _log_dir: log_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended (without waiting).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn get(&self, port: u16, path: &str) -> Result<(u16, String), String> {
        let url = format!("http://127.0.0.1:{port}{path}");
        let resp = reqwest::get(&url).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// `GET /readyz`: the status code (errors when the server does not answer).
    pub async fn readyz(&self) -> Result<u16, String> {
        self.get(self.port, "/readyz").await.map(|(s, _)| s)
    }

    /// `GET /readyz`: the status code and the body (why not ready).
    pub async fn readyz_body(&self) -> Result<(u16, String), String> {
        self.get(self.port, "/readyz").await
    }

    pub async fn livez(&self) -> Result<u16, String> {
        self.get(self.port, "/livez").await.map(|(s, _)| s)
    }

    pub async fn metrics(&self) -> Result<String, String> {
        self.get(self.metrics_port, "/metrics")
            .await
            .map(|(_, b)| b)
    }

    /// The value of a metric line `name` (exact series text, e.g. `ingester_rows_written_total`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await.ok()?;
        metric_value(&text, series)
    }

    /// The value of `series`, or why there is none: `/metrics` unreachable, or the series
    /// missing. A labelled series (`ingester_relists_total{reason="expired"}`) of a family the
    /// endpoint declares (`# TYPE`) is 0: such series appear once counted. Never a silent 0
    /// for an endpoint that is down or a misspelled name.
    pub async fn read_metric(&self, series: &str) -> anyhow::Result<f64> {
        let text = self
            .metrics()
            .await
            .map_err(|e| anyhow::anyhow!("/metrics of ingester {} unreachable: {e}", self.pid()))?;
        if let Some(v) = metric_value(&text, series) {
            return Ok(v);
        }
        if let Some((name, _)) = series.split_once('{') {
            let family = name.strip_suffix("_total").unwrap_or(name);
            let declared = text.lines().any(|l| {
                l.strip_prefix("# TYPE ")
                    .and_then(|t| t.split_whitespace().next())
                    .is_some_and(|t| t == family || t == name)
            });
            if declared {
                return Ok(0.0);
            }
        }
        anyhow::bail!(
            "{series} missing from /metrics of ingester {} (declared: {})",
            self.pid(),
            text.lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Waits until `/readyz` answers 200; fails early if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("ingester exited early with {status}; log:\n{}", self.log());
            }
            if self.readyz().await == Ok(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!("ingester not ready after {timeout:?}; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                anyhow::bail!(
                    "ingester still running after {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        signal(self.child.id(), "TERM")?;
        self.wait_exit(timeout).await
    }

    /// SIGKILL: no chance to flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for IngesterProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}

/// Finds `series` at the start of a line of Prometheus text and parses its value.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let rest = rest.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
