//! Configuration: every setting is an environment variable and a `--flag` (clap derive + env).
//! Parsing a bad value stops start-up with clap's message, which names the variable. Every
//! duration and size has bounds checked while parsing (a zero interval would panic a timer or
//! spin a loop); settings that constrain each other are checked by [`Config::validate`], whose
//! message names every variable involved.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Parser, Clone, Debug)]
#[command(
    name = "resources-ingester",
    version,
    about = "Keeps the PostgreSQL table krateo_resources in step with the live state of a Kubernetes cluster",
    // `migrate --print-sql` needs no database settings; `migrate` checks its own.
    subcommand_negates_reqs = true
)]
pub struct Config {
    /// Without a subcommand the service runs.
    #[command(subcommand)]
    pub command: Option<Command>,

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
    #[arg(long, env = "DB_PARAMS", hide_env_values = true, default_value = "", value_parser = DbParamsParser)]
    pub db_params: DbParams,
    /// Longest wait for PostgreSQL at start-up (`90s`, `2m`, `1h`).
    #[arg(long, env = "DB_READY_TIMEOUT", default_value = "2m", value_parser = duration_between(secs(1), hours(24)))]
    pub db_ready_timeout: Duration,

    /// Comma-separated namespaces to watch; empty means all. Cluster-scoped kinds are always
    /// watched cluster-wide.
    #[arg(long, env = "NAMESPACES", default_value = "", value_parser = parse_namespaces)]
    pub namespaces: Namespaces,
    /// Cluster name written on every row; detected from the kubeconfig or API server when unset.
    #[arg(long, env = "CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// A stable identity of this cluster, owner of CLUSTER_NAME in krateo_ingester_clusters;
    /// when unset, the uid of namespace kube-system (which then must be readable).
    #[arg(long, env = "CLUSTER_ID", value_parser = parse_cluster_id)]
    pub cluster_id: Option<String>,
    /// Names this deployment among those writing one cluster's rows: each instance retires (at
    /// start-up) only rows of scopes it watched before and no longer watches. Two deployments
    /// of one cluster that split the kinds between them need distinct names.
    #[arg(long, env = "INSTANCE_NAME", default_value = "resources-ingester", value_parser = parse_instance_name)]
    pub instance_name: String,
    /// File overriding the built-in static routes (one group/version/resource/Kind per line).
    #[arg(long, env = "STATIC_ROUTES_FILE")]
    pub static_routes_file: Option<PathBuf>,
    /// File overriding the built-in managed API groups (one group per line).
    #[arg(long, env = "MANAGED_GROUPS_FILE")]
    pub managed_groups_file: Option<PathBuf>,

    /// composition_id of an object without a `krateo.io/composition-id` label (or with one that
    /// is not a UUID): `uid` (its own UID, as the original ingester does) or `null`. With
    /// `null` the presenter's composition_id-descending cursor returns wrong rows when the
    /// cursor's value is NULL (see docs/operations.md).
    #[arg(long, env = "COMPOSITION_ID_FALLBACK", default_value = "uid")]
    pub composition_id_fallback: crate::row::record::CompositionFallback,

    /// Replace the values of sensitive kinds (SENSITIVE_KINDS: `data`, `stringData` and the
    /// `kubectl.kubernetes.io/last-applied-configuration` annotation) with a redaction marker
    /// before storing. Switching it off stores Secrets in clear and logs a warning at start-up.
    #[arg(long, env = "REDACT_SENSITIVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub redact_sensitive: bool,
    /// Comma-separated kinds whose values are redacted, as GROUP/Kind (core group empty:
    /// `/Secret`; `example.io/Credential` for a custom resource).
    #[arg(long, env = "SENSITIVE_KINDS", default_value = "/Secret")]
    pub sensitive_kinds: crate::row::fields::SensitiveKinds,
    /// Comma-separated JSON paths dropped before storing: `metadata.managedFields` for every
    /// kind, `apps/Deployment:spec.template.metadata.annotations` for one kind (`\.` for a
    /// dot inside a key; an array applies the rest of the path to each element).
    /// `metadata.labels` is never droppable. Empty: the full object is stored.
    #[arg(long, env = "PRUNE_FIELDS", default_value = "")]
    pub prune_fields: crate::row::fields::PruneFields,

    /// Largest number of rows one writer lane sends in one transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Longest time a change waits in a lane before its batch is flushed.
    #[arg(long, env = "FLUSH_INTERVAL", default_value = "100ms", value_parser = duration_between(millis(1), hours(1)))]
    pub flush_interval: Duration,
    /// Worker/writer lanes: each builds records and writes with its own PostgreSQL
    /// connection; an object always goes to the same lane (hash of its global uid).
    #[arg(long, env = "WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Capacity of each lane's queue; full queues back-pressure the watches.
    #[arg(long, env = "QUEUE_CAPACITY", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub queue_capacity: u32,
    /// JSON bytes the lanes may hold queued in all (`8MiB`, `512KiB`, or bytes): watches wait
    /// beyond it, so memory does not grow with object size.
    #[arg(long, env = "QUEUE_BYTES", default_value = "8MiB", value_parser = bytes_between(64 << 10, 16 << 30))]
    pub queue_bytes: usize,
    /// A lane flushes its batch once it holds this many JSON bytes (besides BATCH_SIZE rows).
    #[arg(long, env = "BATCH_BYTES", default_value = "1MiB", value_parser = bytes_between(1 << 10, 1 << 30))]
    pub batch_bytes: usize,
    /// Initial lists (and relists) running at once, so hundreds of CRDs do not hammer the API server.
    #[arg(long, env = "LIST_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub list_concurrency: u32,
    /// Initial lists as streaming lists (`watch` with `sendInitialEvents`, Kubernetes'
    /// WatchList feature) instead of paged lists: objects are decoded one event at a time,
    /// so memory no longer follows a page's size. A server with the feature gate off refuses
    /// them (422) and the watch falls back to paged lists.
    #[arg(long, env = "STREAMING_LISTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub streaming_lists: bool,
    /// Ask the API server for gzip-compressed responses (`Accept-Encoding: gzip`). A real API
    /// server compresses list pages and GETs larger than 128 KiB, never watch streams (so
    /// streaming lists stay plain): worth it for a cluster far from the ingester, at some CPU
    /// on both sides (see docs/operations.md).
    #[arg(long, env = "API_COMPRESSION", default_value_t = false, action = clap::ArgAction::Set)]
    pub api_compression: bool,
    /// Objects per list page.
    #[arg(long, env = "LIST_PAGE_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub list_page_size: u32,
    /// Start watches from their stored resume points (a restart inside the API server's
    /// history window then skips the full list).
    #[arg(long, env = "WATCH_RESUME", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_resume: bool,
    /// How often a watch stores its resume point (after the rows it covers are committed).
    #[arg(long, env = "CHECKPOINT_INTERVAL", default_value = "5s", value_parser = duration_between(millis(100), hours(1)))]
    pub checkpoint_interval: Duration,
    /// Longest time SIGTERM waits for the queue to drain, the last batches to commit and (with
    /// leader election) the Lease to be released.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = duration_between(secs(1), hours(1)))]
    pub shutdown_timeout: Duration,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Interval of the pipeline status log line.
    #[arg(long, env = "STATUS_INTERVAL", default_value = "30s", value_parser = duration_between(secs(1), hours(24)))]
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
    /// How long a Lease holder is trusted without renewing (`leaseDurationSeconds`: whole seconds).
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = whole_seconds_between(1, 3600))]
    pub lease_duration: Duration,
    /// The leader stops writing and exits non-zero when it could not renew for this long;
    /// must be shorter than LEASE_DURATION, so it stops before a standby may take the Lease.
    #[arg(long, env = "LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = duration_between(millis(200), hours(1)))]
    pub lease_renew_deadline: Duration,
    /// Interval between tries to acquire or renew the Lease.
    #[arg(long, env = "LEASE_RETRY_PERIOD", default_value = "2s", value_parser = duration_between(millis(100), hours(1)))]
    pub lease_retry_period: Duration,

    /// Change history: every change of a row also appends the object's state to
    /// krateo_resource_history (in the same transaction), partitioned by day.
    #[arg(long, env = "HISTORY", default_value_t = false, action = clap::ArgAction::Set)]
    pub history: bool,
    /// How long history is kept (whole days, 1d to 3650d): older day partitions are dropped.
    #[arg(long, env = "HISTORY_RETENTION", default_value = "7d", value_parser = whole_days_between(1, 3650))]
    pub history_retention: Duration,
    /// Live change feed: each committed batch sends a NOTIFY on channel krateo_resources
    /// naming the rows it changed (or a "changed since" marker when that is too long).
    #[arg(long, env = "CHANGE_FEED", default_value_t = true, action = clap::ArgAction::Set)]
    pub change_feed: bool,
}

#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Adds what the ingester needs on top of the presenter's schema (idempotent, versioned,
    /// recorded in krateo_ingester_migrations), with the DB_* settings of the table's owner,
    /// then exits. The service can then run with a role that may only read and write rows.
    Migrate {
        /// Print the SQL instead of running it (no database needed).
        #[arg(long)]
        print_sql: bool,
    },
    /// The change history (HISTORY=true): prints the versions of one object (by global uid,
    /// or by --kind/--namespace/--name) and what changed between them; `history maintain`
    /// creates the coming day partitions and drops those past HISTORY_RETENTION (run with
    /// the owner's DB_* settings where the service's role may not, e.g. as a CronJob).
    #[command(args_conflicts_with_subcommands = true)]
    History {
        #[command(subcommand)]
        action: Option<HistoryAction>,
        /// The object's global uid (`<cluster>:<uid>`).
        global_uid: Option<String>,
        /// The object's kind (with --name; --namespace for namespaced kinds).
        #[arg(long)]
        kind: Option<String>,
        /// The object's namespace (empty or absent for cluster-scoped kinds).
        #[arg(long)]
        namespace: Option<String>,
        /// The object's name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Runs every start-up check (database, schema and rights, API server, routes and managed
    /// groups with this identity's rights, cluster name and identity) without ingesting
    /// anything; prints one line per check and exits 0 when the service would run, 1 otherwise.
    Check {
        /// `table` (for people) or `json` (for scripts).
        #[arg(long, default_value = "table")]
        output: CheckOutput,
    },
}

#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum HistoryAction {
    /// Creates today's and the coming days' partitions of krateo_resource_history and drops
    /// the day partitions older than HISTORY_RETENTION, then exits.
    Maintain,
}

/// Output format of `resources-ingester check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckOutput {
    Table,
    Json,
}

fn parse_cluster_id(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("expected a non-empty identity without whitespace, at most 253 characters (e.g. the uid of namespace kube-system)".into());
    }
    Ok(s.to_owned())
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

impl Config {
    /// Checks the settings that constrain each other; the message names every variable
    /// involved. (Each setting's own bounds are checked while parsing.)
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_renew_deadline >= self.lease_duration {
            // A standby may take the Lease once it has not changed for LEASE_DURATION; the
            // leader must have stopped writing before that.
            return Err(format!(
                "LEASE_RENEW_DEADLINE ({}) must be shorter than LEASE_DURATION ({}): a leader that cannot renew must stop writing before a standby may take the Lease",
                humantime::format_duration(self.lease_renew_deadline),
                humantime::format_duration(self.lease_duration),
            ));
        }
        if self.lease_retry_period >= self.lease_renew_deadline {
            return Err(format!(
                "LEASE_RETRY_PERIOD ({}) must be shorter than LEASE_RENEW_DEADLINE ({}): the leader needs more than one try to renew",
                humantime::format_duration(self.lease_retry_period),
                humantime::format_duration(self.lease_renew_deadline),
            ));
        }
        Ok(())
    }
}

const fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// A human duration (`250ms`, `5s`, `2m`) within `[min, max]`.
fn duration_between(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| {
        let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
        if d < min || d > max {
            return Err(format!(
                "{s:?}: must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        Ok(d)
    }
}

/// A duration of whole seconds within `[min, max]` seconds: the Lease stores
/// `leaseDurationSeconds` as an integer, and every replica must agree on the value it holds.
fn whole_seconds_between(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| {
        let d = duration_between(secs(min), secs(max))(s)?;
        if d.subsec_nanos() != 0 {
            return Err(format!(
                "{s:?}: must be a whole number of seconds (the Lease stores leaseDurationSeconds)"
            ));
        }
        Ok(d)
    }
}

/// A duration of whole days (`7d`, `30days`, `1w`) within `[min, max]` days: history
/// partitions are days, so retention is counted in them.
fn whole_days_between(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| {
        let d = duration_between(hours(24 * min), hours(24 * max))(s)?;
        if d.as_secs() % (24 * 3600) != 0 || d.subsec_nanos() != 0 {
            return Err(format!("{s:?}: must be a whole number of days (e.g. 7d)"));
        }
        Ok(d)
    }
}

/// A size (see [`parse_bytes`]) within `[min, max]` bytes.
fn bytes_between(
    min: usize,
    max: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s| {
        let n = parse_bytes(s)?;
        if n < min || n > max {
            return Err(format!(
                "{s:?}: must be between {} and {}",
                show_bytes(min),
                show_bytes(max)
            ));
        }
        Ok(n)
    }
}

fn show_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n} bytes"),
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

fn parse_instance_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 253 || s.chars().any(char::is_whitespace) {
        return Err("expected a non-empty name without whitespace, at most 253 characters".into());
    }
    Ok(s.to_owned())
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

impl SslMode {
    /// libpq's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
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

/// Parses `DB_PARAMS` without ever showing its value: a password put there by mistake would
/// otherwise be printed by clap's "invalid value '...'" message. The error names the
/// offending key (or the position of a piece that is not `key=value`) only.
#[derive(Clone, Copy, Debug)]
pub struct DbParamsParser;

impl clap::builder::TypedValueParser for DbParamsParser {
    type Value = DbParams;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DbParams, clap::Error> {
        let invalid = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid DB_PARAMS (--db-params): {why}\n"),
            )
            .with_cmd(cmd)
        };
        let s = value
            .to_str()
            .ok_or_else(|| invalid("not valid UTF-8".into()))?;
        s.parse().map_err(invalid)
    }
}

impl FromStr for DbParams {
    type Err = String;

    /// Errors name the key, never a value (see [`DbParamsParser`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut p = DbParams::default();
        let s = s.trim().trim_start_matches('?');
        if s.is_empty() {
            return Ok(p);
        }
        for (position, piece) in s.split('&').filter(|x| !x.is_empty()).enumerate() {
            let not_key_value = || {
                format!(
                    "parameter {} is not key=value (its text is not shown: it may hold a secret)",
                    position + 1
                )
            };
            if !piece.contains('=') {
                return Err(not_key_value());
            }
            let (key, value) = form_urlencoded::parse(piece.as_bytes())
                .next()
                .ok_or_else(not_key_value)?;
            // 0 would time every connection attempt out at once (connect_timeout) or be
            // refused by the socket (keepalives_idle).
            let secs = |v: &str| match v.parse::<u64>() {
                Ok(n @ 1..=3600) => Ok(Duration::from_secs(n)),
                _ => Err(format!("{key}: expected whole seconds between 1 and 3600")),
            };
            match key.as_ref() {
                "sslmode" => {
                    p.sslmode = match value.as_ref() {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        _ => return Err(
                            "sslmode: expected disable, prefer, require, verify-ca or verify-full"
                                .into(),
                        ),
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
                        _ => return Err("target_session_attrs: expected any or read-write".into()),
                    }
                }
                "password" => {
                    return Err(
                        "password is not accepted here: put it in DB_PASS (from a Secret)".into(),
                    )
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
    fn db_params_errors_never_echo_a_value() {
        for bad in [
            "sslmode=require&password=hunter2",
            "password=hunter2",
            "sslmode=hunter2",
            "connect_timeout=hunter2",
            "target_session_attrs=hunter2",
            "sslmode=require&hunter2",
            "secret=hunter2",
        ] {
            let e = bad.parse::<DbParams>().expect_err(bad);
            assert!(!e.contains("hunter2"), "{bad}: {e}");
            // Through clap (what an operator sees): names the variable, never the value.
            let e = parse(&["--db-params", bad]).expect_err(bad).to_string();
            assert!(!e.contains("hunter2"), "{bad}: {e}");
            assert!(e.contains("DB_PARAMS"), "{bad}: {e}");
        }
        let e = "sslmode=require&password=hunter2"
            .parse::<DbParams>()
            .expect_err("password");
        assert!(e.contains("password") && e.contains("DB_PASS"), "{e}");
        let e = "connect_timeout=hunter2"
            .parse::<DbParams>()
            .expect_err("x");
        assert!(e.contains("connect_timeout"), "{e}");
        let e = "sslmode=require&hunter2"
            .parse::<DbParams>()
            .expect_err("x");
        assert!(e.contains("parameter 2"), "{e}");
    }

    #[test]
    fn db_params_reject_malformed_input() {
        assert!("sslmode=sometimes".parse::<DbParams>().is_err());
        assert!("connect_timeout=soon".parse::<DbParams>().is_err());
        assert!("connect_timeout=0".parse::<DbParams>().is_err());
        assert!("keepalives_idle=0".parse::<DbParams>().is_err());
        assert!("connect_timeout=3601".parse::<DbParams>().is_err());
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
    fn out_of_range_durations_and_sizes_name_the_variable() {
        let cases: &[(&str, &str, &str)] = &[
            ("--checkpoint-interval", "0s", "CHECKPOINT_INTERVAL"),
            ("--checkpoint-interval", "2h", "CHECKPOINT_INTERVAL"),
            ("--status-interval", "0s", "STATUS_INTERVAL"),
            ("--flush-interval", "0ms", "FLUSH_INTERVAL"),
            ("--shutdown-timeout", "0s", "SHUTDOWN_TIMEOUT"),
            ("--db-ready-timeout", "0s", "DB_READY_TIMEOUT"),
            ("--lease-duration", "0s", "LEASE_DURATION"),
            ("--lease-duration", "1500ms", "LEASE_DURATION"),
            ("--lease-renew-deadline", "0s", "LEASE_RENEW_DEADLINE"),
            ("--lease-retry-period", "0s", "LEASE_RETRY_PERIOD"),
            ("--batch-size", "0", "BATCH_SIZE"),
            ("--workers", "0", "WORKERS"),
            ("--queue-capacity", "0", "QUEUE_CAPACITY"),
            ("--list-page-size", "0", "LIST_PAGE_SIZE"),
            ("--list-concurrency", "0", "LIST_CONCURRENCY"),
            ("--queue-bytes", "1KiB", "QUEUE_BYTES"),
            ("--batch-bytes", "100", "BATCH_BYTES"),
        ];
        for (flag, value, variable) in cases {
            let e = parse(&[flag, value])
                .expect_err(&format!("{flag} {value} must be refused"))
                .to_string();
            assert!(e.contains(variable), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn bounds_are_inclusive_and_the_defaults_are_inside_them() {
        let c = parse(&[
            "--flush-interval",
            "1h",
            "--checkpoint-interval",
            "100ms",
            "--queue-bytes",
            "64KiB",
        ])
        .expect("bounds are inclusive");
        assert_eq!(c.flush_interval, Duration::from_secs(3600));
        assert_eq!(c.queue_bytes, 64 << 10);
        parse(&[]).expect("defaults").validate().expect("defaults");
    }

    #[test]
    fn lease_timings_must_nest() {
        let e = parse(&["--lease-duration", "10s", "--lease-renew-deadline", "10s"])
            .expect("each in range")
            .validate()
            .expect_err("renew deadline equal to the duration");
        assert!(
            e.contains("LEASE_RENEW_DEADLINE") && e.contains("LEASE_DURATION"),
            "{e}"
        );
        let e = parse(&["--lease-renew-deadline", "2s", "--lease-retry-period", "2s"])
            .expect("each in range")
            .validate()
            .expect_err("retry period equal to the deadline");
        assert!(
            e.contains("LEASE_RETRY_PERIOD") && e.contains("LEASE_RENEW_DEADLINE"),
            "{e}"
        );
        parse(&[
            "--lease-duration",
            "6s",
            "--lease-renew-deadline",
            "4s",
            "--lease-retry-period",
            "500ms",
        ])
        .expect("ok")
        .validate()
        .expect("nested");
    }

    #[test]
    fn history_and_feed_settings() {
        let c = parse(&[]).expect("defaults");
        assert!(!c.history, "history is off by default");
        assert!(c.change_feed, "the change feed is on by default");
        assert_eq!(c.history_retention, Duration::from_secs(7 * 86_400));
        let c = parse(&["--history", "true", "--history-retention", "30d"]).expect("ok");
        assert!(c.history);
        assert_eq!(c.history_retention, Duration::from_secs(30 * 86_400));
        for bad in ["0d", "12h", "36h", "3651d", "soon"] {
            let e = parse(&["--history-retention", bad])
                .expect_err(bad)
                .to_string();
            assert!(e.contains("HISTORY_RETENTION"), "{bad}: {e}");
        }
        parse(&["--history-retention", "3650d"]).expect("upper bound inclusive");
        parse(&["--history-retention", "1d"]).expect("lower bound inclusive");
    }

    #[test]
    fn history_subcommand_takes_a_uid_or_a_name_or_maintain() {
        let c = parse(&["history", "c:1234"]).expect("uid");
        assert!(
            matches!(c.command, Some(Command::History { global_uid: Some(ref u), action: None, .. }) if u == "c:1234")
        );
        let c = parse(&["history", "maintain"]).expect("maintain");
        assert!(matches!(
            c.command,
            Some(Command::History {
                action: Some(HistoryAction::Maintain),
                global_uid: None,
                ..
            })
        ));
        let c = parse(&[
            "history",
            "--kind",
            "Pod",
            "--namespace",
            "a",
            "--name",
            "web",
        ])
        .expect("by name");
        assert!(matches!(
            c.command,
            Some(Command::History {
                kind: Some(_),
                name: Some(_),
                ..
            })
        ));
    }

    #[test]
    fn field_policy_settings_default_to_redacting_secrets_and_refuse_pruning_labels() {
        let c = parse(&[]).expect("defaults");
        assert!(c.redact_sensitive);
        assert_eq!(
            c.sensitive_kinds,
            crate::row::fields::SensitiveKinds::default()
        );
        assert!(c.prune_fields.is_empty());
        let c = parse(&[
            "--redact-sensitive",
            "false",
            "--prune-fields",
            "metadata.managedFields,apps/Deployment:spec.template.metadata.annotations",
        ])
        .expect("ok");
        assert!(!c.redact_sensitive);
        assert_eq!(c.prune_fields.all.len(), 1);
        assert_eq!(c.prune_fields.by_kind.len(), 1);
        let e = parse(&["--prune-fields", "metadata.managedFields,metadata.labels"])
            .expect_err("labels are never pruned")
            .to_string();
        assert!(
            e.contains("PRUNE_FIELDS") && e.contains("metadata.labels"),
            "{e}"
        );
        let e = parse(&["--sensitive-kinds", "Secret"])
            .expect_err("GROUP/Kind")
            .to_string();
        assert!(e.contains("SENSITIVE_KINDS"), "{e}");
        let e = parse(&["--redact-sensitive", "no"])
            .expect_err("bool")
            .to_string();
        assert!(e.contains("REDACT_SENSITIVE"), "{e}");
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

    #[test]
    fn cluster_id_and_the_check_command() {
        assert_eq!(
            parse(&["--cluster-id", " uid-1 "]).expect("ok").cluster_id,
            Some("uid-1".to_owned())
        );
        let e = parse(&["--cluster-id", "a b"]).unwrap_err().to_string();
        assert!(
            e.contains("--cluster-id") && e.contains("whitespace"),
            "{e}"
        );
        let c = parse(&["check", "--output", "json"]).expect("ok");
        assert_eq!(
            c.command,
            Some(Command::Check {
                output: CheckOutput::Json
            })
        );
        assert!(parse(&["check", "--output", "yaml"]).is_err());
    }
}
