//! The schema: what the presenter reads (`krateo_resources`, in a Krateo installation created
//! and owned by deviser) and what the ingester adds on top of it (a column, two state tables).
//!
//! Start-up only inspects the catalog when everything is there, so the service runs with a
//! role that may only read and write rows. What is missing is added by versioned, recorded
//! migrations: by `resources-ingester migrate` (run with the owner's credentials), or by the
//! service itself when its role may (an empty database, a single-role install). A missing
//! piece the role may not add stops start-up with one message naming each piece and the fix.

use std::fmt::Write as _;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tracing::{info, warn};

pub const TABLE: &str = "krateo_resources";
pub const WATCH_STATE_TABLE: &str = "krateo_ingester_watch_state";
pub const COVERAGE_TABLE: &str = "krateo_ingester_coverage";
pub const CLUSTERS_TABLE: &str = super::clusters::TABLE;
/// The change history (`HISTORY`), see `history.rs`.
pub const HISTORY_TABLE: &str = super::history::TABLE;
/// Our record of applied migrations; deviser's own is `schema_migrations`.
pub const MIGRATIONS_TABLE: &str = "krateo_ingester_migrations";

/// Key of the advisory lock that serialises migrations (replicas starting at once, a migrate
/// Job next to them).
const SCHEMA_LOCK_KEY: i64 = 0x6b72_6174_656f_0001;

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
    #[error("schema set-up failed: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// One step of the schema, applied once and recorded in [`MIGRATIONS_TABLE`]. Every step is
/// idempotent, so a step whose effect was removed later can be applied again.
#[derive(Clone, Debug)]
pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub sql: String,
}

/// The steps, in order. The same text is run by `migrate` and printed by `migrate --print-sql`.
pub fn migrations() -> Vec<Migration> {
    vec![
        Migration {
            version: 1,
            description: "krateo_resources with the presenter's columns and indexes, unless another service (deviser) created it",
            sql: presenter_table_sql(),
        },
        Migration {
            version: 2,
            description: "krateo_resources.object_resource_version: the object's resourceVersion, for the no-regression guard",
            sql: format!("ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS object_resource_version bigint NULL"),
        },
        Migration {
            version: 3,
            description: "krateo_ingester_watch_state: resume points of the watches",
            sql: super::resume::TABLE_DDL.to_owned(),
        },
        Migration {
            version: 4,
            description: "krateo_ingester_coverage: what each instance watched, to retire rows it no longer watches",
            sql: super::ownership::TABLE_DDL.to_owned(),
        },
        Migration {
            version: 5,
            description: "lz4 compression of raw and status_raw where the server has lz4 (else pglz stays)",
            sql: LZ4_SQL.to_owned(),
        },
        Migration {
            version: 6,
            description: "krateo_ingester_clusters: which cluster identity owns each cluster name",
            sql: super::clusters::TABLE_DDL.to_owned(),
        },
        Migration {
            version: 7,
            description: "krateo_resource_history: the change history (HISTORY=true), range-partitioned by day, with a default partition",
            sql: super::history::TABLE_DDL.to_owned(),
        },
    ]
}

/// Created only when nobody created the table: in a Krateo installation deviser owns it and
/// its indexes (perhaps under other names), which are left as they are.
fn presenter_table_sql() -> String {
    let mut sql = format!(
        "DO $migration$ BEGIN
IF to_regclass('{TABLE}') IS NULL THEN
  CREATE TABLE {TABLE} (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    deleted_at timestamptz NULL,
    cluster_name text NOT NULL,
    uid text NOT NULL,
    namespace text NOT NULL DEFAULT '',
    global_uid text NOT NULL UNIQUE,
    resource_group text NOT NULL,
    resource_version text NOT NULL,
    resource_kind text NOT NULL,
    resource_plural text NOT NULL,
    resource_name text NOT NULL,
    composition_id uuid NULL,
    raw jsonb NOT NULL,
    status_raw jsonb NULL
  );
"
    );
    for (name, def) in PRESENTER_INDEXES {
        let _ = writeln!(sql, "  CREATE INDEX IF NOT EXISTS {name} ON {TABLE} {def};");
    }
    sql.push_str("END IF;\nEND $migration$");
    sql
}

/// A server built without lz4 refuses the method (feature_not_supported): keep pglz then.
const LZ4_SQL: &str = "DO $migration$ BEGIN
  ALTER TABLE krateo_resources ALTER COLUMN raw SET COMPRESSION lz4, ALTER COLUMN status_raw SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
  RAISE NOTICE 'this server has no lz4: raw and status_raw keep pglz';
END $migration$";

const MIGRATIONS_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS krateo_ingester_migrations (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

fn record_sql(m: &Migration) -> String {
    format!(
        "INSERT INTO {MIGRATIONS_TABLE} (version, description) VALUES ({}, '{}') ON CONFLICT (version) DO NOTHING",
        m.version,
        m.description.replace('\'', "''")
    )
}

/// The whole migration as one SQL script, for a DBA: the statements `migrate` runs, in one
/// transaction under the same advisory lock.
pub fn migration_script() -> String {
    let mut out = String::from(
        "-- resources-ingester: what the ingester adds to the presenter's schema (idempotent).\n\
         -- Run as the owner of krateo_resources (in a Krateo installation: deviser's role).\n\
         BEGIN;\n",
    );
    let _ = writeln!(out, "SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY});");
    let _ = writeln!(out, "{MIGRATIONS_TABLE_DDL};");
    for m in migrations() {
        let _ = writeln!(out, "\n-- {}: {}", m.version, m.description);
        let _ = writeln!(out, "{};", m.sql);
        let _ = writeln!(out, "{};", record_sql(&m));
    }
    out.push_str("\nCOMMIT;\n");
    out
}

/// What the catalog says about the schema and the connected role.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub role: String,
    pub table: bool,
    pub object_resource_version: bool,
    pub watch_state: bool,
    pub coverage: bool,
    /// `krateo_ingester_clusters` (migration 6).
    pub clusters: bool,
    /// `krateo_resource_history` exists.
    pub history: bool,
    /// The caller needs the history table (`HISTORY=true`); not a catalog fact.
    pub history_required: bool,
    pub migrations_table: bool,
    /// The role owns `krateo_resources` (or is a member of its owner): it may alter it.
    pub owns_table: bool,
    /// The role may create tables in the current schema.
    pub may_create: bool,
}

impl Inspection {
    /// What the ingester needs and does not find, each with the migration that adds it.
    pub fn missing(&self) -> Vec<(i32, String)> {
        let mut out = Vec::new();
        if !self.table {
            out.push((
                1,
                format!("table {TABLE} (deviser creates it in a Krateo installation)"),
            ));
        }
        if !self.object_resource_version {
            out.push((2, format!("column {TABLE}.object_resource_version")));
        }
        if !self.watch_state {
            out.push((3, format!("table {WATCH_STATE_TABLE}")));
        }
        if !self.coverage {
            out.push((4, format!("table {COVERAGE_TABLE}")));
        }
        if !self.clusters {
            out.push((6, format!("table {CLUSTERS_TABLE}")));
        }
        if self.history_required && !self.history {
            out.push((7, format!("table {HISTORY_TABLE} (HISTORY=true)")));
        }
        out
    }

    /// Whether migration `version`'s effect is in place (lz4 is a preference, not a need).
    fn satisfies(&self, version: i32) -> bool {
        match version {
            1 => self.table,
            2 => self.object_resource_version,
            3 => self.watch_state,
            4 => self.coverage,
            6 => self.clusters,
            7 => self.history,
            _ => true,
        }
    }

    /// Whether this role may add every missing piece (and record it).
    pub fn may_add_missing(&self) -> bool {
        let creates = !self.table
            || !self.watch_state
            || !self.coverage
            || !self.clusters
            || !self.migrations_table
            || (self.history_required && !self.history);
        let alters = self.table && !self.object_resource_version;
        (!creates || self.may_create) && (!alters || self.owns_table)
    }
}

pub async fn inspect(client: &Client) -> Result<Inspection, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text,
                    to_regclass($1) IS NOT NULL,
                    EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1)
                             AND attname = 'object_resource_version' AND NOT attisdropped),
                    to_regclass($2) IS NOT NULL,
                    to_regclass($3) IS NOT NULL,
                    to_regclass($4) IS NOT NULL,
                    to_regclass($5) IS NOT NULL,
                    COALESCE((SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class
                               WHERE oid = to_regclass($1)), false),
                    COALESCE(has_schema_privilege(current_schema(), 'CREATE'), false),
                    to_regclass($6) IS NOT NULL",
            &[
                &TABLE,
                &WATCH_STATE_TABLE,
                &COVERAGE_TABLE,
                &MIGRATIONS_TABLE,
                &CLUSTERS_TABLE,
                &HISTORY_TABLE,
            ],
        )
        .await?;
    Ok(Inspection {
        role: row.get(0),
        table: row.get(1),
        object_resource_version: row.get(2),
        watch_state: row.get(3),
        coverage: row.get(4),
        migrations_table: row.get(5),
        clusters: row.get(6),
        owns_table: row.get(7),
        may_create: row.get(8),
        history: row.get(9),
        history_required: false,
    })
}

/// Applies every migration not yet recorded (or whose effect was removed since), in one
/// transaction under the advisory lock; returns the versions applied.
pub async fn apply_migrations(client: &Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    match apply_in_transaction(client).await {
        Ok(applied) => {
            client.batch_execute("COMMIT").await?;
            Ok(applied)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn apply_in_transaction(client: &Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    // Taken first: a replica that waited here sees what the one before it committed.
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await?;
    client.batch_execute(MIGRATIONS_TABLE_DDL).await?;
    let recorded: Vec<i32> = client
        .query(&format!("SELECT version FROM {MIGRATIONS_TABLE}"), &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let found = inspect(client).await?;
    let mut applied = Vec::new();
    for m in migrations() {
        if recorded.contains(&m.version) && found.satisfies(m.version) {
            continue;
        }
        client.batch_execute(&m.sql).await?;
        client.batch_execute(&record_sql(&m)).await?;
        applied.push(m.version);
    }
    Ok(applied)
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
                warn!(error = %e, "adding the missing schema pieces was refused");
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

/// Row rights the ingester uses: upserts and soft deletes on the presenter's table, full
/// DML on its own state tables.
const NEEDED_PRIVILEGES: &[(&str, &[&str])] = &[
    (TABLE, &["SELECT", "INSERT", "UPDATE"]),
    (WATCH_STATE_TABLE, &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    (COVERAGE_TABLE, &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    (CLUSTERS_TABLE, &["SELECT", "INSERT", "UPDATE"]),
];

/// Names each missing right with the GRANT that gives it, instead of letting the first write
/// fail with a raw permission error.
pub async fn check_privileges(
    client: &Client,
    role: &str,
    history: bool,
) -> Result<(), SchemaError> {
    let history_privileges: &[(&str, &[&str])] = &[(HISTORY_TABLE, &["INSERT"])];
    let needed: Vec<(&str, &[&str])> = NEEDED_PRIVILEGES
        .iter()
        .chain(if history { history_privileges } else { &[] })
        .copied()
        .collect();
    let (tables, privileges): (Vec<&str>, Vec<&str>) = needed
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
        .unzip();
    let lacking = client
        .query(
            "SELECT t, p FROM unnest($1::text[], $2::text[]) AS x(t, p)
              WHERE NOT has_table_privilege(t, p)",
            &[&tables, &privileges],
        )
        .await?;
    let quoted_role = format!("\"{}\"", role.replace('"', "\"\""));
    let mut missing = Vec::new();
    let mut grants = Vec::new();
    for (table, _) in &needed {
        let lacked: Vec<String> = lacking
            .iter()
            .filter(|r| r.get::<_, &str>(0) == *table)
            .map(|r| r.get::<_, String>(1))
            .collect();
        if !lacked.is_empty() {
            missing.push(format!("{} on {table}", lacked.join(", ")));
            grants.push(format!(
                "GRANT {} ON {table} TO {quoted_role};",
                lacked.join(", ")
            ));
        }
    }
    // A serial id (not an identity) takes its values from a sequence that needs its own right.
    let sequence: Option<String> = client
        .query_opt(
            "SELECT s FROM pg_get_serial_sequence($1, 'id') AS s
              WHERE s IS NOT NULL
                AND NOT (SELECT attidentity <> '' FROM pg_attribute
                          WHERE attrelid = to_regclass($1) AND attname = 'id')
                AND NOT (has_sequence_privilege(s, 'USAGE') OR has_sequence_privilege(s, 'UPDATE'))",
            &[&TABLE],
        )
        .await?
        .map(|r| r.get(0));
    if let Some(seq) = sequence {
        missing.push(format!(
            "USAGE on sequence {seq} (the default of {TABLE}.id)"
        ));
        grants.push(format!("GRANT USAGE ON SEQUENCE {seq} TO {quoted_role};"));
    }
    // The writer COPYs into a temporary staging table.
    let temp: bool = client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'TEMPORARY')",
            &[],
        )
        .await?
        .get(0);
    if !temp {
        missing.push("TEMPORARY on the database (for the writer's staging table)".into());
        let db: String = client
            .query_one("SELECT current_database()::text", &[])
            .await?
            .get(0);
        grants.push(format!(
            "GRANT TEMPORARY ON DATABASE \"{}\" TO {quoted_role};",
            db.replace('"', "\"\"")
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::MissingPrivileges {
            role: role.to_owned(),
            missing,
            grants,
        })
    }
}

/// The presenter's indexes are the table owner's: a missing one slows the presenter but not
/// the ingester, so it is reported, not created.
async fn warn_missing_indexes(client: &Client) -> Result<(), tokio_postgres::Error> {
    let defs: Vec<String> = client
        .query(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = to_regclass($1)",
            &[&TABLE],
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
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
              WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&TABLE],
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
        .query_one(
            "SELECT EXISTS (
               SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnatts = 1 AND a.attname = 'global_uid')",
            &[&TABLE],
        )
        .await?
        .get(0);
    if !unique {
        return Err(SchemaError::NoUniqueGlobalUid);
    }
    let id_generated: bool = client
        .query_one(
            "SELECT a.attidentity <> '' OR a.atthasdef FROM pg_attribute a
              WHERE a.attrelid = to_regclass($1) AND a.attname = 'id'",
            &[&TABLE],
        )
        .await?
        .get(0);
    if !id_generated {
        return Err(SchemaError::IdWithoutDefault);
    }
    Ok(())
}

/// The per-connection staging table the writer COPYs into.
pub fn staging_ddl(info: SchemaInfo) -> String {
    // lz4 in staging too: a compressed value is copied into the main table as it is, so
    // the rows are compressed once, with the fast method.
    let c = if info.lz4 { " COMPRESSION lz4" } else { "" };
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS ingester_staging (
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

/// A complete schema as a role with only row rights sees it (tests of the verdicts).
#[cfg(test)]
pub(crate) fn complete_inspection() -> Inspection {
    Inspection {
        role: "ingester".into(),
        table: true,
        object_resource_version: true,
        watch_state: true,
        coverage: true,
        clusters: true,
        history: false,
        history_required: false,
        migrations_table: true,
        owns_table: false,
        may_create: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete() -> Inspection {
        complete_inspection()
    }

    #[test]
    fn a_complete_schema_needs_nothing_from_a_role_without_rights() {
        let found = complete();
        assert!(found.missing().is_empty());
        assert!(found.may_add_missing());
    }

    #[test]
    fn each_missing_piece_names_itself_and_the_right_it_takes() {
        let column = Inspection {
            object_resource_version: false,
            ..complete()
        };
        assert_eq!(
            column.missing(),
            vec![(
                2,
                "column krateo_resources.object_resource_version".to_owned()
            )]
        );
        assert!(!column.may_add_missing(), "altering needs ownership");
        assert!(Inspection {
            owns_table: true,
            ..column.clone()
        }
        .may_add_missing());

        let tables = Inspection {
            watch_state: false,
            coverage: false,
            owns_table: true,
            ..complete()
        };
        assert_eq!(tables.missing().len(), 2);
        assert!(
            !tables.may_add_missing(),
            "creating needs CREATE on the schema"
        );
        assert!(Inspection {
            may_create: true,
            ..tables
        }
        .may_add_missing());
    }

    #[test]
    fn the_history_table_is_needed_only_with_history_on() {
        let off = complete();
        assert!(off.missing().is_empty(), "HISTORY off: not needed");
        let on = Inspection {
            history_required: true,
            ..complete()
        };
        assert_eq!(
            on.missing(),
            vec![(7, "table krateo_resource_history (HISTORY=true)".to_owned())]
        );
        assert!(!on.may_add_missing(), "creating needs CREATE on the schema");
        assert!(Inspection {
            may_create: true,
            ..on.clone()
        }
        .may_add_missing());
        assert!(Inspection {
            history: true,
            ..on
        }
        .missing()
        .is_empty());
    }

    #[test]
    fn the_printed_script_holds_every_migration_in_one_locked_transaction() {
        let script = migration_script();
        assert!(script.contains("BEGIN;\nSELECT pg_advisory_xact_lock("));
        assert!(script.trim_end().ends_with("COMMIT;"));
        for m in migrations() {
            assert!(script.contains(&m.sql), "migration {}", m.version);
            assert!(script.contains(&record_sql(&m)), "record of {}", m.version);
        }
        // A quote in a description is doubled, not closing the string.
        assert!(script.contains("the presenter''s columns"));
    }
}
