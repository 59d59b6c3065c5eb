//! `resources-ingester history`: prints the stored versions of one object (by global uid, or
//! by kind, namespace and name) with what changed between consecutive versions, and
//! `history maintain` runs the partition maintenance (see `storage/history.rs`) with the
//! DB_* settings given (the table owner's, where the service's role may not).

use std::fmt::Write as _;
use tokio_postgres::types::Type;

use chrono::{SecondsFormat, Utc};

use crate::commands::jsondiff::{self, PathChange};
use crate::config::Config;
use crate::storage::history::{self, Maintained, Version};
use crate::storage::{self, error_chain};

/// Which object to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    GlobalUid(String),
    Name {
        kind: String,
        namespace: String,
        name: String,
    },
}

impl Target {
    /// From the command's arguments: a global uid, or `--kind` and `--name` (`--namespace`
    /// for namespaced kinds).
    pub fn from_args(
        global_uid: Option<&str>,
        kind: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Target, String> {
        match (global_uid, kind, name) {
            (Some(uid), None, None) if namespace.is_none() => Ok(Target::GlobalUid(uid.to_owned())),
            (None, Some(kind), Some(name)) => Ok(Target::Name {
                kind: kind.to_owned(),
                namespace: namespace.unwrap_or_default().to_owned(),
                name: name.to_owned(),
            }),
            _ => Err("history needs an object: a global uid (`history <cluster>:<uid>`) or --kind and --name (with --namespace for a namespaced kind), not both".into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Connect(#[from] storage::ConnectError),
    #[error("{TABLE} does not exist: run `resources-ingester migrate` (HISTORY=true needs it)", TABLE = history::TABLE)]
    NoTable,
    #[error("history: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for HistoryError {
    fn from(e: tokio_postgres::Error) -> Self {
        HistoryError::Db(error_chain(&e))
    }
}

async fn connect(config: &Config) -> Result<tokio_postgres::Client, HistoryError> {
    let client = storage::wait_for_postgres(config).await?;
    let exists: bool = client
        .query_typed_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[(&history::TABLE, Type::TEXT)],
        )
        .await?
        .get(0);
    if !exists {
        return Err(HistoryError::NoTable);
    }
    Ok(client)
}

/// `history maintain`: creates the coming day partitions, drops those past retention.
pub async fn maintain(config: &Config) -> Result<Maintained, HistoryError> {
    let client = connect(config).await?;
    let retention = history::retention_days(config.history_retention);
    Ok(history::maintain(&client, Utc::now(), retention).await?)
}

/// `history <object>`: the report of every object matching `target`.
pub async fn show(config: &Config, target: &Target) -> Result<String, HistoryError> {
    let client = connect(config).await?;
    let uids = match target {
        Target::GlobalUid(uid) => vec![uid.clone()],
        Target::Name {
            kind,
            namespace,
            name,
        } => history::find_objects(&client, kind, namespace, name).await?,
    };
    if uids.is_empty() {
        return Ok(format!(
            "no object {target:?} in {}\n",
            storage::schema::TABLE
        ));
    }
    let mut out = String::new();
    for uid in uids {
        let versions = history::versions(&client, &uid).await?;
        out.push_str(&render(&uid, &versions));
    }
    Ok(out)
}

/// Pure: the versions of one object, oldest first, each followed by what changed from the
/// version before it.
pub fn render(global_uid: &str, versions: &[Version]) -> String {
    let mut out = String::new();
    let Some(first) = versions.first() else {
        let _ = writeln!(out, "{global_uid}: no history");
        return out;
    };
    let ns = if first.namespace.is_empty() {
        String::new()
    } else {
        format!("{}/", first.namespace)
    };
    let _ = writeln!(
        out,
        "{global_uid} ({} {ns}{}): {} version(s)",
        first.kind,
        first.name,
        versions.len()
    );
    let mut previous: Option<&Version> = None;
    for v in versions {
        let rv = v
            .resource_version
            .map_or_else(|| "-".to_owned(), |rv| rv.to_string());
        let _ = writeln!(
            out,
            "{}  {:<7}  resourceVersion {rv}",
            v.observed_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            v.operation
        );
        if let Some(p) = previous {
            let changes = jsondiff::diff(&p.raw, &v.raw);
            if changes.is_empty() {
                out.push_str("    (object unchanged)\n");
            }
            for c in changes {
                let _ = writeln!(out, "    {}", show_change(&c));
            }
        }
        previous = Some(v);
    }
    out
}

fn show_change(c: &PathChange) -> String {
    let show = |v: &Option<serde_json::Value>| match v {
        Some(v) => v.to_string(),
        None => "(absent)".to_owned(),
    };
    format!("{}: {} -> {}", c.path, show(&c.old), show(&c.new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn version(secs: i64, op: &str, rv: Option<i64>, raw: serde_json::Value) -> Version {
        Version {
            observed_at: Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap(),
            operation: op.to_owned(),
            resource_version: rv,
            kind: "Pod".into(),
            namespace: "team-a".into(),
            name: "web".into(),
            raw,
        }
    }

    #[test]
    fn renders_each_version_and_what_changed_since_the_one_before() {
        let v1 = json!({"metadata": {"resourceVersion": "10"}, "status": {"phase": "Pending"}});
        let v2 = json!({"metadata": {"resourceVersion": "11", "labels": {"tier": "front"}}, "status": {"phase": "Running"}});
        let text = render(
            "c:1",
            &[
                version(0, "created", Some(10), v1),
                version(5, "updated", Some(11), v2.clone()),
                version(9, "deleted", None, v2),
            ],
        );
        assert_eq!(
            text,
            "c:1 (Pod team-a/web): 3 version(s)
2023-11-14T22:13:20.000000Z  created  resourceVersion 10
2023-11-14T22:13:25.000000Z  updated  resourceVersion 11
    /metadata/labels: (absent) -> {\"tier\":\"front\"}
    /metadata/resourceVersion: \"10\" -> \"11\"
    /status/phase: \"Pending\" -> \"Running\"
2023-11-14T22:13:29.000000Z  deleted  resourceVersion -
    (object unchanged)
"
        );
    }

    #[test]
    fn an_object_without_history_says_so() {
        assert_eq!(render("c:2", &[]), "c:2: no history\n");
    }

    #[test]
    fn the_target_is_a_uid_or_a_kind_and_name() {
        assert_eq!(
            Target::from_args(Some("c:1"), None, None, None),
            Ok(Target::GlobalUid("c:1".into()))
        );
        assert_eq!(
            Target::from_args(None, Some("Namespace"), None, Some("a")),
            Ok(Target::Name {
                kind: "Namespace".into(),
                namespace: String::new(),
                name: "a".into()
            })
        );
        assert!(Target::from_args(None, None, None, None).is_err());
        assert!(Target::from_args(None, Some("Pod"), None, None).is_err());
        assert!(Target::from_args(Some("c:1"), Some("Pod"), None, Some("a")).is_err());
    }
}
