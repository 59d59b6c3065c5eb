//! Test utilities shared by the ingester's tests and the benchmark harness: a private
//! PostgreSQL database per test, the ingester as a child process, polling with a deadline,
//! and the convergence checker (kube-sim's objects vs. the table).

pub mod converge;
pub mod fuzz;
pub mod pg;
pub mod pg18;
pub mod pg_replica;
pub mod pgbouncer;
pub mod process;
pub mod realkube;

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

/// A TCP port free right now on 127.0.0.1, for a server a test is about to start.
///
/// Chosen outside the kernel's ephemeral range: a port from inside it (what binding port 0
/// gives) can be taken by any outgoing connection between this probe and the server's own
/// bind, and a suite that opens thousands of connections makes that happen (a PostgreSQL of
/// CI once failed with "could not bind ... Address already in use" that way). Ports already
/// handed out by this process are not handed out again. A server that still finds its port
/// taken is restarted on another one by its starter (see [`pg::PrivatePg::start_with`]).
pub fn free_port() -> u16 {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let (lo, hi) = outside_ephemeral_range();
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(lo..=hi);
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    // Every probe failed (a machine with almost no free ports): let the kernel choose.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The ports below `net.ipv4.ip_local_port_range` (from 10000), or above it when it starts
/// too low to leave room: 10000..=32767 with Linux's default range. The same rule as
/// `free_tcp_port` in scripts/lib/postgres.sh.
fn outside_ephemeral_range() -> (u16, u16) {
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if eph_lo > 11000 {
        (10000, eph_lo - 1)
    } else {
        (eph_hi.saturating_add(1).min(65000), u16::MAX)
    }
}

pub mod proxy;
