//! Configuration: every setting is an environment variable and a `--flag` (clap derive + env).
//! Parsing a bad value stops start-up with clap's message, which names the variable.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Parser, Clone, Debug)]
#[command(
    name = "resources-ingester",
    version,
    about = "Keeps the PostgreSQL table krateo_resources in step with the live state of a Kubernetes cluster"
)]
pub struct Config {
    /// Port of the health probe server (/livez, /readyz).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Port of the Prometheus /metrics server.
    #[arg(long, env = "METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,

    /// PostgreSQL user.
    #[arg(long, env = "DB_USER")]
    pub db_user: String,
    /// PostgreSQL password (may be empty for trust/peer auth). Never logged.
    #[arg(long, env = "DB_PASS", hide_env_values = true, default_value = "")]
    pub db_pass: Password,
    /// PostgreSQL database name.
    #[arg(long, env = "DB_NAME")]
    pub db_name: String,
    /// PostgreSQL host.
    #[arg(long, env = "DB_HOST", default_value = "localhost")]
    pub db_host: String,
    /// PostgreSQL port.
    #[arg(long, env = "DB_PORT", default_value_t = 5432, value_parser = clap::value_parser!(u16).range(1..))]
    pub db_port: u16,
    /// Extra connection parameters in URL-query form, e.g. `sslmode=verify-full&sslrootcert=/ca.crt&connect_timeout=5`.
    /// Known keys: sslmode (disable|prefer|require|verify-ca|verify-full), sslrootcert,
    /// connect_timeout (seconds), application_name, options, keepalives_idle (seconds),
    /// target_session_attrs (any|read-write).
    #[arg(long, env = "DB_PARAMS", default_value = "")]
    pub db_params: DbParams,
    /// Longest wait for PostgreSQL at start-up (`90s`, `2m`, `1h`).
    #[arg(long, env = "DB_READY_TIMEOUT", default_value = "2m", value_parser = humantime::parse_duration)]
    pub db_ready_timeout: Duration,

    /// Comma-separated namespaces to watch; empty means all. Cluster-scoped kinds are always
    /// watched cluster-wide.
    #[arg(long, env = "NAMESPACES", default_value = "", value_parser = parse_namespaces)]
    pub namespaces: Namespaces,
    /// Cluster name written on every row; detected from the kubeconfig or API server when unset.
    #[arg(long, env = "CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// File overriding the built-in static routes (one group/version/resource/Kind per line).
    #[arg(long, env = "STATIC_ROUTES_FILE")]
    pub static_routes_file: Option<PathBuf>,
    /// File overriding the built-in managed API groups (one group per line).
    #[arg(long, env = "MANAGED_GROUPS_FILE")]
    pub managed_groups_file: Option<PathBuf>,

    /// Largest number of rows one writer lane sends in one transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Longest time a change waits in a lane before its batch is flushed.
    #[arg(long, env = "FLUSH_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
    /// Worker/writer lanes: each builds records and writes with its own PostgreSQL
    /// connection; an object always goes to the same lane (hash of its global uid).
    #[arg(long, env = "WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Capacity of each lane's queue; full queues back-pressure the watches.
    #[arg(long, env = "QUEUE_CAPACITY", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,
    /// JSON bytes the lanes may hold queued in all (`8MiB`, `512KiB`, or bytes): watches wait
    /// beyond it, so memory does not grow with object size.
    #[arg(long, env = "QUEUE_BYTES", default_value = "8MiB", value_parser = parse_bytes)]
    pub queue_bytes: usize,
    /// A lane flushes its batch once it holds this many JSON bytes (besides BATCH_SIZE rows).
    #[arg(long, env = "BATCH_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub batch_bytes: usize,
    /// Initial lists (and relists) running at once, so hundreds of CRDs do not hammer the API server.
    #[arg(long, env = "LIST_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub list_concurrency: u32,
    /// Initial lists as streaming lists (`watch` with `sendInitialEvents`, Kubernetes'
    /// WatchList feature) instead of paged lists: objects are decoded one event at a time,
    /// so memory no longer follows a page's size. A server with the feature gate off refuses
    /// them (422) and the watch falls back to paged lists.
    #[arg(long, env = "STREAMING_LISTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub streaming_lists: bool,
    /// Objects per list page.
    #[arg(long, env = "LIST_PAGE_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub list_page_size: u32,
    /// Start watches from their stored resume points (a restart inside the API server's
    /// history window then skips the full list).
    #[arg(long, env = "WATCH_RESUME", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_resume: bool,
    /// How often a watch stores its resume point (after the rows it covers are committed).
    #[arg(long, env = "CHECKPOINT_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub checkpoint_interval: Duration,
    /// Longest time SIGTERM waits for the queue to drain and the last batches to commit.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Interval of the pipeline status log line.
    #[arg(long, env = "STATUS_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub status_interval: Duration,

    /// Hold a coordination.k8s.io Lease so only one replica writes.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, env = "LEASE_NAME", default_value = "resources-ingester")]
    pub lease_name: String,
    /// Namespace of the Lease (defaults to POD_NAMESPACE, else `default`).
    #[arg(long, env = "LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Namespace this pod runs in (downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Identity of this replica in the Lease (downward API; defaults to the host name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// How long a Lease holder is trusted without renewing (`leaseDurationSeconds`).
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// The leader gives up (and exits non-zero) when it could not renew for this long.
    #[arg(long, env = "LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_renew_deadline: Duration,
    /// Interval between tries to acquire or renew the Lease.
    #[arg(long, env = "LEASE_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease_retry_period: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret string whose `Debug`/`Display` never show the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl FromStr for Password {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Password(s.to_owned()))
    }
}

/// Namespaces to watch; empty = all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }
}

/// `8MiB`, `512KiB`, `1GiB` or a plain number of bytes.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a size like 8MiB, 512KiB or 1048576"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(factor)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{s:?}: must be between 1 byte and the address space"))
}

fn parse_namespaces(s: &str) -> Result<Namespaces, String> {
    let mut out: Vec<String> = Vec::new();
    for ns in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let valid = ns.len() <= 63
            && ns
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !valid {
            return Err(format!("{ns:?} is not a valid namespace name"));
        }
        if !out.iter().any(|o| o == ns) {
            out.push(ns.to_owned());
        }
    }
    Ok(Namespaces(out))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// libpq's default: TLS when the server offers it, without verification.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Parsed `DB_PARAMS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbParams {
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    pub application_name: Option<String>,
    pub options: Option<String>,
    pub keepalives_idle: Option<Duration>,
    pub target_session_attrs_read_write: bool,
}

impl FromStr for DbParams {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut p = DbParams::default();
        let s = s.trim().trim_start_matches('?');
        if s.is_empty() {
            return Ok(p);
        }
        for piece in s.split('&').filter(|x| !x.is_empty()) {
            if !piece.contains('=') {
                return Err(format!("{piece:?} is not key=value"));
            }
            let (key, value) = form_urlencoded::parse(piece.as_bytes())
                .next()
                .ok_or_else(|| format!("{piece:?} is not key=value"))?;
            let secs = |v: &str| {
                v.parse::<u64>()
                    .map(Duration::from_secs)
                    .map_err(|_| format!("{key}={v:?}: expected whole seconds"))
            };
            match key.as_ref() {
                "sslmode" => {
                    p.sslmode = match value.as_ref() {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => return Err(format!("sslmode={other:?}: expected disable, prefer, require, verify-ca or verify-full")),
                    }
                }
                "sslrootcert" => p.sslrootcert = Some(PathBuf::from(value.as_ref())),
                "connect_timeout" => p.connect_timeout = Some(secs(&value)?),
                "keepalives_idle" => p.keepalives_idle = Some(secs(&value)?),
                "application_name" => p.application_name = Some(value.into_owned()),
                "options" => p.options = Some(value.into_owned()),
                "target_session_attrs" => {
                    p.target_session_attrs_read_write = match value.as_ref() {
                        "any" => false,
                        "read-write" => true,
                        other => return Err(format!("target_session_attrs={other:?}: expected any or read-write")),
                    }
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        if matches!(p.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && p.sslrootcert.is_none() {
            return Err("sslmode=verify-ca/verify-full needs sslrootcert=<CA file>".into());
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut all = vec!["resources-ingester", "--db-user", "u", "--db-name", "d"];
        all.extend_from_slice(args);
        Config::try_parse_from(all)
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = parse(&[]).expect("defaults");
        assert_eq!(c.port, 8080);
        assert_eq!(c.metrics_port, 9090);
        assert_eq!(c.db_host, "localhost");
        assert_eq!(c.db_port, 5432);
        assert_eq!(c.db_ready_timeout, Duration::from_secs(120));
        assert!(c.namespaces.is_all());
        assert_eq!(c.db_params, DbParams::default());
        assert!(!c.leader_election);
    }

    #[test]
    fn durations_are_human() {
        let c = parse(&["--db-ready-timeout", "90s", "--flush-interval", "250ms"]).expect("ok");
        assert_eq!(c.db_ready_timeout, Duration::from_secs(90));
        assert_eq!(c.flush_interval, Duration::from_millis(250));
        let c = parse(&["--db-ready-timeout", "1h"]).expect("ok");
        assert_eq!(c.db_ready_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = parse(&["--db-ready-timeout", "soon"])
            .expect_err("bad")
            .to_string();
        assert!(e.contains("DB_READY_TIMEOUT"), "{e}");
        let e = parse(&["--db-port", "70000"]).expect_err("bad").to_string();
        assert!(e.contains("DB_PORT"), "{e}");
        let e = parse(&["--db-params", "sslmode"])
            .expect_err("bad")
            .to_string();
        assert!(e.contains("DB_PARAMS"), "{e}");
        let e = parse(&["--namespaces", "Bad_NS"])
            .expect_err("bad")
            .to_string();
        assert!(e.contains("NAMESPACES"), "{e}");
    }

    #[test]
    fn db_params_parse_known_keys() {
        let p: DbParams = "sslmode=require&connect_timeout=5&application_name=ing%20x"
            .parse()
            .expect("ok");
        assert_eq!(p.sslmode, SslMode::Require);
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(p.application_name.as_deref(), Some("ing x"));
        let p: DbParams = "sslmode=verify-full&sslrootcert=/ca.crt"
            .parse()
            .expect("ok");
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/ca.crt")));
    }

    #[test]
    fn db_params_reject_malformed_input() {
        assert!("sslmode=sometimes".parse::<DbParams>().is_err());
        assert!("connect_timeout=soon".parse::<DbParams>().is_err());
        assert!("bogus=1".parse::<DbParams>().is_err());
        assert!("sslmode=verify-full".parse::<DbParams>().is_err());
        assert!("novalue".parse::<DbParams>().is_err());
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("8MiB"), Ok(8 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("8XB").is_err());
        let e = parse(&["--queue-bytes", "big"])
            .expect_err("bad")
            .to_string();
        assert!(e.contains("QUEUE_BYTES"), "{e}");
        let c = parse(&[]).expect("defaults");
        assert_eq!((c.queue_bytes, c.batch_bytes), (8 << 20, 1 << 20));
    }

    #[test]
    fn namespaces_are_split_trimmed_and_deduplicated() {
        let c = parse(&["--namespaces", " a, b ,,a"]).expect("ok");
        assert_eq!(c.namespaces.0, vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn the_password_never_shows_in_debug() {
        let c = parse(&["--db-pass", "hunter2"]).expect("ok");
        assert_eq!(c.db_pass.expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
