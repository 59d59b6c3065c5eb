//! `resources-ingester migrate`: adds what the ingester needs on top of the presenter's schema,
//! run once (a Helm pre-install/pre-upgrade Job) with the credentials of the table's owner, so
//! the service itself can run with a role that may only read and write rows.
//! `--print-sql` prints the same statements for a DBA instead.

use tracing::info;

use crate::config::Config;
use crate::storage::schema::{self, SchemaError};
use crate::storage::{self, ConnectError};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "role {role:?} may not change the schema ({detail}); run `resources-ingester migrate` with the credentials of the owner of {table} (in a Krateo installation deviser's role), or have a DBA apply `resources-ingester migrate --print-sql`",
        table = schema::TABLE
    )]
    NotAllowed { role: String, detail: String },
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// The statements `migrate` runs, as one script.
pub fn print_sql() -> String {
    schema::migration_script()
}

/// Applies the migrations not yet recorded; returns the versions applied (empty when the
/// schema was complete already).
pub async fn run(config: &Config) -> Result<Vec<i32>, MigrateError> {
    let client = storage::wait_for_postgres(config).await?;
    let found = schema::inspect(&client).await.map_err(SchemaError::from)?;
    let applied = match schema::apply_migrations(&client).await {
        Ok(applied) => applied,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            return Err(MigrateError::NotAllowed {
                role: found.role,
                detail: e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string()),
            })
        }
        Err(e) => return Err(SchemaError::from(e).into()),
    };
    // What migrate cannot fix (a presenter column of the wrong type) is said now, not at
    // the service's start.
    schema::check_columns(&client).await?;
    // The history's first partitions, so a service whose role may not create them finds
    // them from its start (the CronJob keeps them coming).
    let retention = crate::storage::history::retention_days(config.history_retention);
    let partitions = crate::storage::history::maintain(&client, chrono::Utc::now(), retention)
        .await
        .map_err(SchemaError::from)?;
    info!(created = ?partitions.created, dropped = ?partitions.dropped, "history partitions maintained");
    let latest = schema::migrations()
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    info!(?applied, schema_version = latest, "migrate done");
    Ok(applied)
}
