//! What the catalog says about the schema and the connected role, and the pure rules on it:
//! what is missing (with the migration that adds it) and whether this role may add it.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::MIGRATIONS_TABLE;
use super::{CLUSTERS_TABLE, COVERAGE_TABLE, HISTORY_TABLE, TABLE, WATCH_STATE_TABLE};

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
    pub(super) fn satisfies(&self, version: i32) -> bool {
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
        .query_typed_one(
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
                (&TABLE, Type::TEXT),
                (&WATCH_STATE_TABLE, Type::TEXT),
                (&COVERAGE_TABLE, Type::TEXT),
                (&MIGRATIONS_TABLE, Type::TEXT),
                (&CLUSTERS_TABLE, Type::TEXT),
                (&HISTORY_TABLE, Type::TEXT),
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
}
