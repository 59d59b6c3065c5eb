//! Test utilities shared by the ingester's tests and the benchmark harness: a private
//! PostgreSQL database per test, the ingester as a child process, polling with a deadline,
//! and the convergence checker (kube-sim's objects vs. the table).

pub mod converge;
pub mod fuzz;
pub mod pg;
pub mod pg18;
pub mod process;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what` and the last
/// observation.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_owned(),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether this run is a CI run (`CI` set to `true` or `1`, as CI systems do): there a test
/// whose tool is missing fails instead of passing without having run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A test cannot run because `what` is missing (a tool, a binary). Under CI this is an error
/// (a test that silently passes proves nothing); elsewhere the skip is printed and `Ok(())`.
pub fn missing_tool(what: &str) -> anyhow::Result<()> {
    if in_ci() {
        anyhow::bail!("{what} is missing and CI=true: a test that cannot run fails in CI");
    }
    eprintln!("SKIPPED: {what} is missing (this fails under CI=true)");
    Ok(())
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub mod proxy;
