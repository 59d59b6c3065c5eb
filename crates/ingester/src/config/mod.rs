//! Configuration: every setting is an environment variable and a `--flag` (clap derive + env).
//! Parsing a bad value stops start-up with clap's message, which names the variable. Every
//! duration and size has bounds checked while parsing (a zero interval would panic a timer or
//! spin a loop); settings that constrain each other are checked by [`Config::validate`], whose
//! message names every variable involved.
//!
//! The clap struct is here; each setting's own parsing and bounds are in values.rs, the
//! `DB_PARAMS` parser in db_params.rs.

mod db_params;
#[cfg(test)]
mod tests;
mod values;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub use db_params::{DbParams, DbParamsParser, SslMode};
use values::{
    bytes_between, duration_between, hours, millis, parse_cluster_id, parse_db_hosts,
    parse_db_ports, parse_instance_name, parse_namespaces, secs, whole_days_between,
    whole_seconds_between,
};
pub use values::{DbHosts, DbPorts, Namespaces, Password, MAX_DB_HOSTS};

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
    /// PostgreSQL host; several separated by commas are tried in order (with
    /// `target_session_attrs=read-write` in DB_PARAMS: the first that accepts writes).
    #[arg(long, env = "DB_HOST", default_value = "localhost", value_parser = parse_db_hosts)]
    pub db_host: DbHosts,
    /// PostgreSQL port: one for every host, or one per host in DB_HOST's order.
    #[arg(long, env = "DB_PORT", default_value = "5432", value_parser = parse_db_ports)]
    pub db_port: DbPorts,
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
    /// Threads of the async runtime. One is the default: the work is mostly waiting on the API
    /// server and PostgreSQL, one thread decodes and encodes ~25,000 objects/s (PostgreSQL's
    /// floor is far below), and every further thread costs a malloc arena and cross-thread
    /// wake-ups (docs/benchmarks.md, "CPU per object"). Raise it when the ingester's own CPU is
    /// the bottleneck.
    #[arg(long, env = "RUNTIME_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub runtime_threads: u16,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Where the database is, for log lines: `host:port[,host:port…]/dbname`.
    pub fn db_target(&self) -> String {
        let addresses: Vec<String> = self
            .db_host
            .0
            .iter()
            .enumerate()
            .map(|(i, h)| format!("{h}:{}", self.db_port.of_host(i)))
            .collect();
        format!("{}/{}", addresses.join(","), self.db_name)
    }

    /// Checks the settings that constrain each other; the message names every variable
    /// involved. (Each setting's own bounds are checked while parsing.)
    pub fn validate(&self) -> Result<(), String> {
        let (hosts, ports) = (self.db_host.0.len(), self.db_port.0.len());
        if ports != 1 && ports != hosts {
            return Err(format!(
                "DB_PORT lists {ports} ports and DB_HOST {hosts} hosts: give one port for every host or one per host, in DB_HOST's order"
            ));
        }
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
