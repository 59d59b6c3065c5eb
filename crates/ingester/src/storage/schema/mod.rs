//! The schema: what the presenter reads (`krateo_resources`, in a Krateo installation created
//! and owned by deviser) and what the ingester adds on top of it (a column, two state tables).
//!
//! Start-up only inspects the catalog when everything is there, so the service runs with a
//! role that may only read and write rows. What is missing is added by versioned, recorded
//! migrations: by `resources-ingester migrate` (run with the owner's credentials), or by the
//! service itself when its role may (an empty database, a single-role install). A missing
//! piece the role may not add stops start-up with one message naming each piece and the fix.
//!
//! The catalog's answers are read into an [`Inspection`] (inspection.rs), whose pure methods
//! say what is missing and whether this role may add it; the migrations are in
//! migrations.rs, the row rights in privileges.rs.

mod inspection;
mod migrations;
mod privileges;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Client;
use tracing::{info, warn};

#[cfg(test)]
pub(crate) use inspection::complete_inspection;
pub use inspection::{inspect, Inspection};
pub use migrations::{apply_migrations, migration_script, migrations, Migration, MIGRATIONS_TABLE};
pub use privileges::check_privileges;

pub const TABLE: &str = "krateo_resources";
pub const WATCH_STATE_TABLE: &str = "krateo_ingester_watch_state";
pub const COVERAGE_TABLE: &str = "krateo_ingester_coverage";
pub const CLUSTERS_TABLE: &str = super::clusters::TABLE;
/// The change history (`HISTORY`), see `history.rs`.
pub const HISTORY_TABLE: &str = super::history::TABLE;

/// Columns the presenter reads, with the type `format_type` reports for them.
pub const REQUIRED_COLUMNS: &[(&str, &str)] = &[
    ("id", "bigint"),
    ("created_at", "timestamp with time zone"),
    ("updated_at", "timestamp with time zone"),
    ("deleted_at", "timestamp with time zone"),
    ("cluster_name", "text"),
    ("uid", "text"),
    ("namespace", "text"),
    ("global_uid", "text"),
    ("resource_group", "text"),
    ("resource_version", "text"),
    ("resource_kind", "text"),
    ("resource_plural", "text"),
    ("resource_name", "text"),
    ("composition_id", "uuid"),
    ("raw", "jsonb"),
    ("status_raw", "jsonb"),
];

/// The presenter's indexes (spec section 6): our name for each and its definition as
/// `pg_get_indexdef` prints it, so an equal index under another name (deviser's) counts.
pub const PRESENTER_INDEXES: &[(&str, &str)] = &[
    ("krateo_resources_gvk_updated_idx", "USING btree (resource_group, resource_version, resource_kind, updated_at DESC, id DESC) WHERE (deleted_at IS NULL)"),
    ("krateo_resources_cluster_ns_gvk_name_idx", "USING btree (cluster_name, namespace, resource_group, resource_version, resource_kind, resource_name) WHERE (deleted_at IS NULL)"),
    ("krateo_resources_plural_idx", "USING btree (resource_plural) WHERE (deleted_at IS NULL)"),
    ("krateo_resources_plural_updated_idx", "USING btree (resource_plural, updated_at DESC, id DESC) WHERE (deleted_at IS NULL)"),
    ("krateo_resources_cluster_ns_gvp_idx", "USING btree (cluster_name, namespace, resource_group, resource_version, resource_plural) WHERE (deleted_at IS NULL)"),
    ("krateo_resources_cluster_ns_plural_idx", "USING btree (cluster_name, namespace, resource_plural) WHERE (deleted_at IS NULL)"),
    ("krateo_resources_composition_idx", "USING btree (composition_id, updated_at DESC, id DESC) WHERE ((composition_id IS NOT NULL) AND (deleted_at IS NULL))"),
    ("krateo_resources_labels_gin_idx", "USING gin ((((raw -> 'metadata'::text) -> 'labels'::text)))"),
    ("krateo_resources_deleted_at_idx", "USING btree (deleted_at) WHERE (deleted_at IS NOT NULL)"),
];

/// What the ensured schema offers the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaInfo {
    /// The server can compress TOAST values with lz4 (PostgreSQL 14+ built with lz4).
    pub lz4: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("table {TABLE} exists but column {column} is missing (the presenter needs it)")]
    MissingColumn { column: &'static str },
    #[error("table {TABLE} column {column} has type {found}, expected {expected}")]
    WrongType {
        column: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error(
        "table {TABLE} has no unique constraint or index on global_uid, which the upsert needs"
    )]
    NoUniqueGlobalUid,
    #[error("table {TABLE} column id has no default or identity, so rows cannot be inserted")]
    IdWithoutDefault,
    #[error(
        "the database lacks what the ingester needs: {}; role {role:?} may not add it. Fix: run `resources-ingester migrate` once with the credentials of a role that may (in a Krateo installation the owner of {TABLE}, i.e. deviser's role; the Helm chart's migrate Job does this), or have a DBA apply the SQL that `resources-ingester migrate --print-sql` prints",
        missing.join(", ")
    )]
    NeedsMigration { role: String, missing: Vec<String> },
    #[error(
        "role {role:?} lacks privileges the ingester needs: {}. Fix, as the owner: {}",
        missing.join(", "),
        grants.join(" ")
    )]
    MissingPrivileges {
        role: String,
        missing: Vec<String>,
        grants: Vec<String>,
    },
    /// The server's refusal, described by [`crate::storage::describe_db_error`].
    #[error("schema set-up failed: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for SchemaError {
    fn from(e: tokio_postgres::Error) -> Self {
        SchemaError::Db(crate::storage::describe_db_error(&e))
    }
}

/// Checks the schema and adds what is missing when the role may; with everything in place it
/// runs catalog queries only.
pub async fn ensure_schema(client: &Client) -> Result<SchemaInfo, SchemaError> {
    ensure_schema_with(client, false).await
}

/// [`ensure_schema`], also requiring the history table when `history` (`HISTORY=true`).
pub async fn ensure_schema_with(client: &Client, history: bool) -> Result<SchemaInfo, SchemaError> {
    let lz4 = lz4_supported(client).await;
    let mut found = inspect(client).await?;
    found.history_required = history;
    if found.table {
        // The presenter's columns are the table owner's business: checked, never changed.
        check_columns(client).await?;
    }
    if found.missing().is_empty() {
        info!("schema complete; start-up runs no DDL");
    } else {
        if !found.may_add_missing() {
            return Err(needs_migration(&found));
        }
        match apply_migrations(client).await {
            Ok(applied) => info!(?applied, lz4, "schema migrations applied"),
            // The catalog said we may, the server said no (e.g. a policy we cannot see).
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                warn!(error = %crate::storage::describe_db_error(&e), "adding the missing schema pieces was refused");
                return Err(needs_migration(&found));
            }
            Err(e) => return Err(e.into()),
        }
        found = inspect(client).await?;
        found.history_required = history;
        check_columns(client).await?;
        if !found.missing().is_empty() {
            return Err(needs_migration(&found));
        }
    }
    check_privileges(client, &found.role, history).await?;
    warn_missing_indexes(client).await?;
    Ok(SchemaInfo { lz4 })
}

fn needs_migration(found: &Inspection) -> SchemaError {
    SchemaError::NeedsMigration {
        role: found.role.clone(),
        missing: found.missing().into_iter().map(|(_, what)| what).collect(),
    }
}

/// The presenter's indexes are the table owner's: a missing one slows the presenter but not
/// the ingester, so it is reported, not created.
async fn warn_missing_indexes(client: &Client) -> Result<(), tokio_postgres::Error> {
    let defs: Vec<String> = client
        .query_typed(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = to_regclass($1)",
            &[(&TABLE, Type::TEXT)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&str> = PRESENTER_INDEXES
        .iter()
        .filter(|(_, def)| !defs.iter().any(|d| d.ends_with(def)))
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        warn!(
            ?missing,
            "the presenter's indexes are missing on {TABLE}; its queries will be slower (the table's owner creates them)"
        );
    }
    Ok(())
}

pub async fn lz4_supported(client: &Client) -> bool {
    // `SET LOCAL` inside a rolled-back transaction probes support without side effects.
    let probe = "BEGIN; SET LOCAL default_toast_compression = 'lz4'; ROLLBACK;";
    match client.batch_execute(probe).await {
        Ok(()) => true,
        Err(_) => {
            let _ = client.batch_execute("ROLLBACK").await;
            false
        }
    }
}

pub async fn check_columns(client: &Client) -> Result<(), SchemaError> {
    let rows = client
        .query_typed(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
              WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[(&TABLE, Type::TEXT)],
        )
        .await?;
    for (column, expected) in REQUIRED_COLUMNS {
        let found = rows
            .iter()
            .find(|r| r.get::<_, String>(0) == *column)
            .map(|r| r.get::<_, String>(1))
            .ok_or(SchemaError::MissingColumn { column })?;
        if found != *expected {
            return Err(SchemaError::WrongType {
                column,
                found,
                expected,
            });
        }
    }
    let unique: bool = client
        .query_typed_one(
            "SELECT EXISTS (
               SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnatts = 1 AND a.attname = 'global_uid')",
            &[(&TABLE, Type::TEXT)],
        )
        .await?
        .get(0);
    if !unique {
        return Err(SchemaError::NoUniqueGlobalUid);
    }
    let id_generated: bool = client
        .query_typed_one(
            "SELECT a.attidentity <> '' OR a.atthasdef FROM pg_attribute a
              WHERE a.attrelid = to_regclass($1) AND a.attname = 'id'",
            &[(&TABLE, Type::TEXT)],
        )
        .await?
        .get(0);
    if !id_generated {
        return Err(SchemaError::IdWithoutDefault);
    }
    Ok(())
}

/// The staging table the writer COPYs into, created by each batch's transaction when its
/// server session lacks it (`IF NOT EXISTS`: a no-op once there). Temporary (one per server
/// session, invisible to others) and emptied at each commit, so a server connection a
/// transaction pooler hands to other clients carries no rows. Give it a new name when its
/// columns change: an older ingester's table of the same name may sit in a pooled session.
pub fn staging_ddl(lz4: bool) -> String {
    // lz4 in staging too: a compressed value is copied into the main table as it is, so
    // the rows are compressed once, with the fast method.
    let c = if lz4 { " COMPRESSION lz4" } else { "" };
    // `IF NOT EXISTS` answers an existing table with a NOTICE, which the client would log at
    // every batch: this transaction asks for warnings and errors only.
    format!(
        "SET LOCAL client_min_messages = warning;
        CREATE TEMP TABLE IF NOT EXISTS ingester_staging (
            global_uid text NOT NULL,
            cluster_name text NOT NULL,
            uid text NOT NULL,
            namespace text NOT NULL,
            resource_group text NOT NULL,
            resource_version text NOT NULL,
            resource_kind text NOT NULL,
            resource_plural text NOT NULL,
            resource_name text NOT NULL,
            composition_id uuid,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            deleted_at timestamptz,
            raw jsonb{c} NOT NULL,
            status_raw jsonb{c},
            object_resource_version bigint
        ) ON COMMIT DELETE ROWS"
    )
}
