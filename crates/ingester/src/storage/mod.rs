//! PostgreSQL: connection pool, start-up wait, schema, batch writer, scope snapshots.

pub mod clusters;
pub mod commit_marks;
pub mod feed;
pub mod history;
pub mod ownership;
pub mod pooling;
pub mod resume;
pub mod schema;
pub mod snapshot;
pub mod tls;
pub mod writer;

use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tracing::{info, warn};

use crate::config::{Config, SslMode};
pub use schema::SchemaInfo;

/// The connection settings built from `DB_*` (the password stays inside tokio-postgres'
/// config, whose `Debug` redacts it).
pub fn pg_config(c: &Config) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    // Several hosts are tried in order, each with its port (one port: the same for all);
    // tokio-postgres checks `target_session_attrs` on each, as libpq does.
    for host in &c.db_host.0 {
        pg.host(host);
    }
    for port in &c.db_port.0 {
        pg.port(*port);
    }
    pg.user(&c.db_user)
        .dbname(&c.db_name)
        .application_name(
            c.db_params
                .application_name
                .as_deref()
                .unwrap_or("resources-ingester"),
        )
        .connect_timeout(
            c.db_params
                .connect_timeout
                .unwrap_or(Duration::from_secs(10)),
        )
        .ssl_mode(match c.db_params.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
    if !c.db_pass.expose().is_empty() {
        pg.password(c.db_pass.expose());
    }
    if let Some(options) = &c.db_params.options {
        pg.options(options);
    }
    if let Some(idle) = c.db_params.keepalives_idle {
        pg.keepalives_idle(idle);
    }
    if c.db_params.target_session_attrs_read_write {
        pg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    }
    pg
}

/// An error with its causes ("error performing TLS handshake: invalid peer certificate: ...").
/// A database error among them is described by [`describe_db_error`]: this is the one
/// function every log line, `/readyz` and `check` use for an error that may come from
/// PostgreSQL or the pool.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    describe_db_error(e)
}

/// What a database error says, for people: the server's SQLSTATE and message ("SQLSTATE
/// 25006: cannot execute INSERT in a read-only transaction") wherever the server answered,
/// else each cause in turn ("error connecting to server: Connection refused"). tokio-postgres
/// shows a server error only as "db error" and deadpool wraps it once more (a failed
/// failed connect); the causes are walked through both. Never the
/// server's DETAIL or HINT (a row's values appear there, e.g. the key of a unique
/// violation), and never a password (no error carries the connection settings).
pub fn describe_db_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(db) = c.downcast_ref::<tokio_postgres::error::DbError>() {
            parts.push(format!("SQLSTATE {}: {}", db.code().code(), db.message()));
            break;
        }
        let text = own_text(c);
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

/// The text `e` adds to its causes: the wrappers that repeat their cause's text (deadpool's
/// pool and hook errors) or hide it ("db error") contribute only their own words.
fn own_text(e: &(dyn std::error::Error + 'static)) -> String {
    use deadpool_postgres::PoolError;
    if let Some(pool) = e.downcast_ref::<PoolError>() {
        return match pool {
            PoolError::Backend(_) => "opening a connection".to_owned(),
            other => other.to_string().trim().to_owned(),
        };
    }
    if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
        if pg.as_db_error().is_some() {
            return String::new();
        }
    }
    e.to_string().trim().to_owned()
}

/// Where the ingester's rows go: a pool of connections. No connection carries state from one
/// transaction to the next (no session set-up, no prepared statement kept), so the pool may
/// sit behind a transaction pooler.
#[derive(Clone)]
pub struct Database {
    pub pool: Pool,
    pub schema: SchemaInfo,
    /// This process's commit marks: each batch and each readiness ping checks the database
    /// kept them.
    pub marks: std::sync::Arc<commit_marks::CommitMarks>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "PostgreSQL at {target} not reachable within DB_READY_TIMEOUT ({timeout:?}): {last_error}"
    )]
    Timeout {
        target: String,
        timeout: Duration,
        last_error: String,
    },
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error("{0}")]
    Setup(String),
}

/// How long one start-up attempt waits for its statement's answer: PgBouncer holds a
/// statement while it tries to reach its server (up to its `query_wait_timeout`, 2 minutes by
/// default); the next attempt finds out sooner (PgBouncer then fails it at once during
/// `server_login_retry`, or answers).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection on which a statement was answered. A pooler (PgBouncer) completes the
/// connection itself, with no server behind it yet: only an answered statement says
/// PostgreSQL is there (with the server refusing logins, PgBouncer fails or holds the
/// statement and the connection is closed).
async fn connect_answered(
    pg: &tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    within: Duration,
) -> Result<tokio_postgres::Client, String> {
    let attempt = async {
        let (client, connection) = pg.connect(tls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client.simple_query("SELECT 1").await?;
        Ok::<_, tokio_postgres::Error>(client)
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(answered) => answered.map_err(|e| error_chain(&e)),
        Err(_) => Err(format!("no answer to SELECT 1 within {within:?}")),
    }
}

/// One connection, once PostgreSQL answers a statement: retried with backoff (one log line per
/// attempt) up to `DB_READY_TIMEOUT`.
pub async fn wait_for_postgres(c: &Config) -> Result<tokio_postgres::Client, ConnectError> {
    let pg = pg_config(c);
    let tls = tls::make_tls(&c.db_params).map_err(|e| ConnectError::Setup(e.to_string()))?;
    let target = c.db_target();
    let deadline = Instant::now() + c.db_ready_timeout;
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        // Never past the deadline by more than a moment.
        let within = ANSWER_TIMEOUT
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(100));
        match connect_answered(&pg, tls.clone(), within).await {
            Ok(client) => {
                info!(target = %target, attempt, "PostgreSQL reachable");
                report_transport(&client, c).await;
                return Ok(client);
            }
            Err(error) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(ConnectError::Timeout {
                        target,
                        timeout: c.db_ready_timeout,
                        last_error: error,
                    });
                }
                let wait = delay.min(deadline - now);
                warn!(attempt, target = %target, error = %error, retry_in_ms = wait.as_millis() as u64, "waiting for PostgreSQL");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Says at start-up how the connection is protected: libpq's `prefer` and `require` encrypt
/// without checking who answers (kept, as libpq does), and `prefer` may even fall back to
/// plain text. Whether TLS was negotiated is asked from the server (`pg_stat_ssl` of this
/// backend), the only place that knows after `prefer` chose.
async fn report_transport(client: &tokio_postgres::Client, c: &Config) {
    let encrypted = match client
        .query_typed_opt(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
    {
        Ok(Some(row)) => row.try_get::<_, bool>(0).ok(),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %error_chain(&e), "pg_stat_ssl not readable; transport not reported");
            None
        }
    };
    let Some(encrypted) = encrypted else { return };
    crate::telemetry::events::DatabaseTransport {
        sslmode: c.db_params.sslmode.as_str(),
        encrypted,
        certificate_verified: encrypted
            && matches!(c.db_params.sslmode, SslMode::VerifyCa | SslMode::VerifyFull),
        password_used: !c.db_pass.expose().is_empty(),
    }
    .emit();
}

impl Database {
    /// Waits for PostgreSQL (backoff, one log line per attempt, up to `DB_READY_TIMEOUT`),
    /// ensures the schema, and builds the pool.
    pub async fn connect(c: &Config, pool_size: usize) -> Result<Database, ConnectError> {
        let pg = pg_config(c);
        let tls = tls::make_tls(&c.db_params).map_err(|e| ConnectError::Setup(e.to_string()))?;
        let client = wait_for_postgres(c).await?;
        let schema = schema::ensure_schema_with(&client, c.history).await?;
        drop(client);

        let marks = std::sync::Arc::new(commit_marks::CommitMarks::new());
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(10)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| ConnectError::Setup(format!("connection pool: {}", error_chain(&e))))?;
        Ok(Database {
            pool,
            schema,
            marks,
        })
    }

    /// Readiness' check, every 2 s. Asks whether the server accepts writes: a `SELECT 1`
    /// would pass on a server in recovery or with `default_transaction_read_only`, where every
    /// batch fails; such a connection is closed, not kept (the next one may reach a primary).
    /// Then whether the database still holds this process's commit marks.
    pub async fn ping(&self) -> Result<(), String> {
        let client = self.pool.get().await.map_err(|e| error_chain(&e))?;
        let answer = client
            .simple_query(
                "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool",
            )
            .await
            .map_err(|e| error_chain(&e))?;
        let read_only = answer.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
            _ => false,
        });
        if read_only {
            drop(deadpool_postgres::Object::take(client));
            return Err(READ_ONLY_SERVER.to_owned());
        }
        // A quiet service (no batch to carry the check) notices a rewind here.
        self.marks
            .check(&client)
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(())
    }
}

/// Readiness while the read-write address reaches a server that accepts no writes.
pub const READ_ONLY_SERVER: &str =
    "the server accepts no writes (in recovery or read-only): writes fail with SQLSTATE 25006";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_without_a_server_answer_keep_each_cause_once() {
        let timeout = deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait);
        assert_eq!(
            describe_db_error(&timeout),
            "Timeout occurred while waiting for a slot to become available"
        );
    }
}
