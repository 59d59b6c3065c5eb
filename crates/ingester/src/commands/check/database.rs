//! The database probes: what PostgreSQL, the schema and this role's rights look like, each
//! fact handed to its verdict.

use tokio_postgres::Client;

use super::{
    history_partitions_verdict, line, lz4_verdict, owner_verdict, pooling_verdict, rights_verdict,
    schema_verdicts, tls_verdict, Check, Report, Status,
};
use crate::config::Config;
use crate::kubernetes::cluster::ClusterIdentity;
use crate::storage::clusters::{self, Ownership};
use crate::storage::error_chain;
use crate::storage::schema::{self, Inspection};

/// The database lines; the connection when PostgreSQL answered.
pub(super) async fn checks(config: &Config, report: &mut Report) -> Option<Client> {
    let client = match crate::storage::wait_for_postgres(config).await {
        Ok(c) => c,
        Err(e) => {
            report.push(line("database", Status::Fail, e.to_string()));
            return None;
        }
    };
    report.checks.extend(server_checks(config, &client).await);
    report.push(pooling_verdict(
        crate::storage::pooling::probe(config, &client).await,
    ));
    report.push(lz4_verdict(schema::lz4_supported(&client).await));
    let found = match schema::inspect(&client).await {
        Ok(f) => Inspection {
            history_required: config.history,
            ..f
        },
        Err(e) => {
            report.push(line(
                "schema",
                Status::Fail,
                format!("inspecting the catalog: {}", error_chain(&e)),
            ));
            return Some(client);
        }
    };
    report
        .checks
        .extend(schema_checks(config, &client, &found).await);
    if config.history && found.history {
        report.push(history_check(&client).await);
    }
    Some(client)
}

/// The server, the role and how the connection is protected.
async fn server_checks(config: &Config, client: &Client) -> Vec<Check> {
    let target = config.db_target();
    let facts = client
        .query_typed_one(
            "SELECT current_setting('server_version'), current_user::text,
                    COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false),
                    (SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            &[],
        )
        .await;
    match facts {
        Ok(r) => {
            let (version, role, ssl, tls): (String, String, bool, Option<String>) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            vec![
                line(
                    "database",
                    Status::Ok,
                    format!("PostgreSQL {version} at {target}, role {role:?}"),
                ),
                tls_verdict(
                    config.db_params.sslmode,
                    ssl,
                    tls.as_deref(),
                    &config.db_host.to_string(),
                ),
            ]
        }
        Err(e) => vec![line(
            "database",
            Status::Fail,
            format!("{target}: {}", error_chain(&e)),
        )],
    }
}

/// The schema, `migrate`, and the role's row rights (asked only of a complete schema).
async fn schema_checks(config: &Config, client: &Client, found: &Inspection) -> Vec<Check> {
    let columns = if found.table {
        schema::check_columns(client)
            .await
            .map_err(|e| crate::storage::error_chain(&e))
    } else {
        Ok(())
    };
    let mut lines = schema_verdicts(found, columns);
    let privileges = if found.missing().is_empty() {
        Some(
            schema::check_privileges(client, &found.role, config.history)
                .await
                .map_err(|e| crate::storage::error_chain(&e)),
        )
    } else {
        None
    };
    lines.push(rights_verdict(found, privileges));
    lines
}

/// Tomorrow's history partition and who may create it.
async fn history_check(client: &Client) -> Check {
    use crate::storage::history;
    let missing = history::missing_tomorrow(client, chrono::Utc::now())
        .await
        .map_err(|e| error_chain(&e));
    let may = history::may_maintain(client)
        .await
        .map_err(|e| error_chain(&e));
    history_partitions_verdict(missing, may)
}

/// Who owns the cluster name (no table yet: nobody).
pub(super) async fn owner_check(client: &Client, name: &str, identity: &ClusterIdentity) -> Check {
    let found = match clusters::owner(client, name).await {
        Ok(owner) => Ok(clusters::ownership(owner, identity)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            Ok(Ownership::Free)
        }
        Err(e) => Err(format!("reading {}: {}", clusters::TABLE, error_chain(&e))),
    };
    owner_verdict(name, identity, found)
}
