//! The row rights the ingester needs: asked of the catalog, then each missing right named
//! with the GRANT that gives it, instead of letting the first write fail with a raw
//! permission error.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{SchemaError, CLUSTERS_TABLE, COVERAGE_TABLE, HISTORY_TABLE, TABLE, WATCH_STATE_TABLE};

/// Row rights the ingester uses: upserts and soft deletes on the presenter's table, full
/// DML on its own state tables.
const NEEDED_PRIVILEGES: &[(&str, &[&str])] = &[
    (TABLE, &["SELECT", "INSERT", "UPDATE"]),
    (WATCH_STATE_TABLE, &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    (COVERAGE_TABLE, &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    (CLUSTERS_TABLE, &["SELECT", "INSERT", "UPDATE"]),
];

/// The rights to ask about: with the history on, INSERT into it too.
fn needed_privileges(history: bool) -> Vec<(&'static str, &'static [&'static str])> {
    let history_privileges: &[(&str, &[&str])] = &[(HISTORY_TABLE, &["INSERT"])];
    NEEDED_PRIVILEGES
        .iter()
        .chain(if history { history_privileges } else { &[] })
        .copied()
        .collect()
}

/// What the catalog says the role lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Lacking {
    /// (table, privilege) of each right the role does not have.
    table_rights: Vec<(String, String)>,
    /// The sequence of a serial `id` the role may not use.
    id_sequence: Option<String>,
    /// The database, when the role may not create temporary tables in it.
    temporary_on: Option<String>,
}

/// Names each missing right with the GRANT that gives it, instead of letting the first write
/// fail with a raw permission error.
pub async fn check_privileges(
    client: &Client,
    role: &str,
    history: bool,
) -> Result<(), SchemaError> {
    let needed = needed_privileges(history);
    let lacking = Lacking {
        table_rights: lacking_table_rights(client, &needed).await?,
        id_sequence: unusable_id_sequence(client).await?,
        temporary_on: database_without_temporary(client).await?,
    };
    privileges_verdict(role, &needed, &lacking)
}

async fn lacking_table_rights(
    client: &Client,
    needed: &[(&str, &[&str])],
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let (tables, privileges): (Vec<&str>, Vec<&str>) = needed
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
        .unzip();
    Ok(client
        .query_typed(
            "SELECT t, p FROM unnest($1::text[], $2::text[]) AS x(t, p)
              WHERE NOT has_table_privilege(t, p)",
            &[(&tables, Type::TEXT_ARRAY), (&privileges, Type::TEXT_ARRAY)],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// A serial id (not an identity) takes its values from a sequence that needs its own right.
async fn unusable_id_sequence(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(client
        .query_typed_opt(
            "SELECT s FROM pg_get_serial_sequence($1, 'id') AS s
              WHERE s IS NOT NULL
                AND NOT (SELECT attidentity <> '' FROM pg_attribute
                          WHERE attrelid = to_regclass($1) AND attname = 'id')
                AND NOT (has_sequence_privilege(s, 'USAGE') OR has_sequence_privilege(s, 'UPDATE'))",
            &[(&TABLE, Type::TEXT)],
        )
        .await?
        .map(|r| r.get(0)))
}

/// The writer COPYs into a temporary staging table: the database's name when the role may
/// not create one.
async fn database_without_temporary(
    client: &Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    let temp: bool = client
        .query_typed_one(
            "SELECT has_database_privilege(current_database(), 'TEMPORARY')",
            &[],
        )
        .await?
        .get(0);
    if temp {
        return Ok(None);
    }
    let db: String = client
        .query_typed_one("SELECT current_database()::text", &[])
        .await?
        .get(0);
    Ok(Some(db))
}

/// Pure: every right `lacking` names (in the order of `needed`, then the sequence, then the
/// database), each with its GRANT to `role`.
fn privileges_verdict(
    role: &str,
    needed: &[(&str, &[&str])],
    lacking: &Lacking,
) -> Result<(), SchemaError> {
    let quoted_role = format!("\"{}\"", role.replace('"', "\"\""));
    let mut missing = Vec::new();
    let mut grants = Vec::new();
    for (table, _) in needed {
        let lacked: Vec<&str> = lacking
            .table_rights
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, p)| p.as_str())
            .collect();
        if !lacked.is_empty() {
            missing.push(format!("{} on {table}", lacked.join(", ")));
            grants.push(format!(
                "GRANT {} ON {table} TO {quoted_role};",
                lacked.join(", ")
            ));
        }
    }
    if let Some(seq) = &lacking.id_sequence {
        missing.push(format!(
            "USAGE on sequence {seq} (the default of {TABLE}.id)"
        ));
        grants.push(format!("GRANT USAGE ON SEQUENCE {seq} TO {quoted_role};"));
    }
    if let Some(db) = &lacking.temporary_on {
        missing.push("TEMPORARY on the database (for the writer's staging table)".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_lacking_is_no_error() {
        assert!(privileges_verdict("ingester", NEEDED_PRIVILEGES, &Lacking::default()).is_ok());
    }

    #[test]
    fn each_lacking_right_is_named_with_its_grant_in_order() {
        let lacking = Lacking {
            table_rights: vec![
                (COVERAGE_TABLE.into(), "DELETE".into()),
                (TABLE.into(), "INSERT".into()),
                (TABLE.into(), "UPDATE".into()),
            ],
            id_sequence: Some("krateo_resources_id_seq".into()),
            temporary_on: Some("kr\"db".into()),
        };
        let Err(SchemaError::MissingPrivileges {
            role,
            missing,
            grants,
        }) = privileges_verdict("in\"gester", NEEDED_PRIVILEGES, &lacking)
        else {
            panic!("rights lacking");
        };
        assert_eq!(role, "in\"gester");
        assert_eq!(
            missing,
            vec![
                "INSERT, UPDATE on krateo_resources",
                "DELETE on krateo_ingester_coverage",
                "USAGE on sequence krateo_resources_id_seq (the default of krateo_resources.id)",
                "TEMPORARY on the database (for the writer's staging table)",
            ]
        );
        assert_eq!(
            grants,
            vec![
                "GRANT INSERT, UPDATE ON krateo_resources TO \"in\"\"gester\";",
                "GRANT DELETE ON krateo_ingester_coverage TO \"in\"\"gester\";",
                "GRANT USAGE ON SEQUENCE krateo_resources_id_seq TO \"in\"\"gester\";",
                "GRANT TEMPORARY ON DATABASE \"kr\"\"db\" TO \"in\"\"gester\";",
            ]
        );
    }

    #[test]
    fn the_history_right_is_asked_only_with_history_on() {
        let lacking = Lacking {
            table_rights: vec![(HISTORY_TABLE.into(), "INSERT".into())],
            ..Lacking::default()
        };
        assert!(privileges_verdict("r", &needed_privileges(false), &lacking).is_ok());
        assert!(privileges_verdict("r", &needed_privileges(true), &lacking).is_err());
    }
}
