//! PostgreSQL: connection pool, start-up wait, schema, batch writer, scope snapshots.

pub mod clusters;
pub mod feed;
pub mod history;
pub mod ownership;
pub mod resume;
pub mod schema;
pub mod snapshot;
pub mod tls;
pub mod writer;

use std::time::{Duration, Instant};

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tracing::{info, warn};

use crate::config::{Config, SslMode};
pub use schema::SchemaInfo;

/// The connection settings built from `DB_*` (the password stays inside tokio-postgres'
/// config, whose `Debug` redacts it).
pub fn pg_config(c: &Config) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&c.db_host)
        .port(c.db_port)
        .user(&c.db_user)
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
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Where the ingester's rows go: a pool of connections, each with its staging table.
#[derive(Clone)]
pub struct Database {
    pub pool: Pool,
    pub schema: SchemaInfo,
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

/// One connection, once PostgreSQL answers: retried with backoff (one log line per attempt)
/// up to `DB_READY_TIMEOUT`.
pub async fn wait_for_postgres(c: &Config) -> Result<tokio_postgres::Client, ConnectError> {
    let pg = pg_config(c);
    let tls = tls::make_tls(&c.db_params).map_err(|e| ConnectError::Setup(e.to_string()))?;
    let target = format!("{}:{}/{}", c.db_host, c.db_port, c.db_name);
    let deadline = Instant::now() + c.db_ready_timeout;
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match pg.connect(tls.clone()).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                info!(target = %target, attempt, "PostgreSQL reachable");
                report_transport(&client, c).await;
                return Ok(client);
            }
            Err(e) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(ConnectError::Timeout {
                        target,
                        timeout: c.db_ready_timeout,
                        last_error: error_chain(&e),
                    });
                }
                let wait = delay.min(deadline - now);
                warn!(attempt, target = %target, error = %error_chain(&e), retry_in_ms = wait.as_millis() as u64, "waiting for PostgreSQL");
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
        .query_opt(
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

        let staging = schema::staging_ddl(schema);
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
            .post_create(Hook::async_fn(move |client, _| {
                let ddl = staging.clone();
                Box::pin(async move {
                    client
                        .batch_execute(&ddl)
                        .await
                        .map_err(HookError::Backend)?;
                    Ok(())
                })
            }))
            .build()
            .map_err(|e| ConnectError::Setup(format!("connection pool: {e}")))?;
        Ok(Database { pool, schema })
    }

    /// One round trip: used by readiness.
    pub async fn ping(&self) -> Result<(), String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}
