//! Pure verdicts: each check's line from the facts the probes gathered (no I/O here, tested
//! without a server or a cluster).

use std::collections::BTreeSet;

use super::{line, Check, Status};
use crate::config::SslMode;
use crate::kubernetes::cluster::{ClusterIdentity, NameSource};
use crate::storage::clusters::{self, Ownership};
use crate::storage::schema::{self, Inspection};

/// TLS as negotiated (`pg_stat_ssl`) and whether the certificate was verified (the sslmode).
pub fn tls_verdict(mode: SslMode, ssl: bool, version: Option<&str>, host: &str) -> Check {
    let local =
        host.starts_with('/') || host == "localhost" || host.starts_with("127.") || host == "::1";
    if !ssl {
        let status = if local { Status::Ok } else { Status::Warn };
        let why = if mode == SslMode::Disable {
            "sslmode=disable"
        } else {
            "the server did not offer TLS"
        };
        return line(
            "database tls",
            status,
            format!(
                "not encrypted ({why}){}",
                if local {
                    "; local connection"
                } else {
                    "; set DB_PARAMS sslmode=verify-full&sslrootcert=..."
                }
            ),
        );
    }
    let v = version.unwrap_or("TLS");
    match mode {
        SslMode::VerifyFull => line(
            "database tls",
            Status::Ok,
            format!("{v}; server certificate verified (verify-full: chain and host name)"),
        ),
        SslMode::VerifyCa => line(
            "database tls",
            Status::Ok,
            format!("{v}; server certificate verified (verify-ca: chain only, not the host name)"),
        ),
        _ => line(
            "database tls",
            Status::Warn,
            format!("{v}; server certificate NOT verified (sslmode require/prefer); use sslmode=verify-full with sslrootcert"),
        ),
    }
}

/// The change history's day partitions (`HISTORY` on and its table present): whether
/// tomorrow's partition exists, and who creates it when it does not.
pub fn history_partitions_verdict(
    missing_tomorrow: Result<Option<chrono::NaiveDate>, String>,
    may_maintain: Result<bool, String>,
) -> Check {
    const NAME: &str = "history partitions";
    match (missing_tomorrow, may_maintain) {
        (Err(e), _) | (Ok(Some(_)), Err(e)) => {
            line(NAME, Status::Warn, format!("could not be read: {e}"))
        }
        (Ok(None), _) => line(NAME, Status::Ok, "tomorrow's partition exists"),
        (Ok(Some(day)), Ok(true)) => line(
            NAME,
            Status::Ok,
            format!("{day}'s partition is missing; this role may maintain, so start-up creates it"),
        ),
        (Ok(Some(day)), Ok(false)) => line(
            NAME,
            Status::Warn,
            format!(
                "{day}'s partition is missing and this role may not create it: run `resources-ingester history maintain` with the owner's credentials (chart: history.maintain.enabled); until then rows land in the default partition"
            ),
        ),
    }
}

/// The pooling the backend pids show (`storage::pooling`): every mode but statement pooling
/// (a refused transaction) is supported.
pub fn pooling_verdict(seen: Result<crate::storage::pooling::BackendsSeen, String>) -> Check {
    use crate::storage::pooling::Pooling;
    const NAME: &str = "database pooling";
    match seen.as_ref().map(|s| s.pooling()) {
        Ok(Pooling::Transaction) => line(
            NAME,
            Status::Ok,
            "through a pooler in transaction pooling mode (backends shared between client connections or changing between transactions): supported, nothing outlives a transaction",
        ),
        Ok(Pooling::Session) => line(
            NAME,
            Status::Ok,
            "each connection keeps its own backend (direct, or a pooler in session mode): supported",
        ),
        Err(e) if e.starts_with("a transaction was refused") => line(
            NAME,
            Status::Fail,
            format!("{e}: a pooler in statement mode? the writer needs transactions (use pool_mode = transaction or session)"),
        ),
        Err(e) => line(NAME, Status::Warn, format!("not determined: {e}")),
    }
}

pub fn lz4_verdict(lz4: bool) -> Check {
    if lz4 {
        line(
            "database lz4",
            Status::Ok,
            "lz4 available for raw and status_raw",
        )
    } else {
        line(
            "database lz4",
            Status::Warn,
            "no lz4 on this server: raw and status_raw use pglz (slower writes)",
        )
    }
}

/// The schema's status and whether this role may (and must) run `migrate`.
pub fn schema_verdicts(found: &Inspection, columns: Result<(), String>) -> Vec<Check> {
    let missing: Vec<String> = found
        .missing()
        .into_iter()
        .map(|(v, what)| format!("{what} (migration {v})"))
        .collect();
    let may_migrate = found.may_add_missing();
    let rights = format!(
        "owns {}: {}; CREATE on the schema: {}",
        schema::TABLE,
        yes(found.owns_table),
        yes(found.may_create)
    );
    let schema_line = match (&columns, missing.is_empty()) {
        (Err(e), _) => line("schema", Status::Fail, e.clone()),
        (Ok(()), true) => line(
            "schema",
            Status::Ok,
            "complete: start-up runs no DDL".to_string(),
        ),
        (Ok(()), false) if found.may_add_missing() => line(
            "schema",
            Status::Warn,
            format!(
                "missing {}; start-up adds them (this role may)",
                missing.join(", ")
            ),
        ),
        (Ok(()), false) => line(
            "schema",
            Status::Fail,
            format!(
                "missing {}; role {:?} may not add them: run `resources-ingester migrate` with the owner's credentials, or have a DBA apply `resources-ingester migrate --print-sql`",
                missing.join(", "),
                found.role
            ),
        ),
    };
    let migrate_line = line(
        "migrate",
        Status::Ok,
        format!(
            "needed: {}; this role may run it: {} ({rights})",
            yes(!missing.is_empty()),
            if missing.is_empty() {
                "not needed".to_string()
            } else {
                yes(may_migrate).to_string()
            }
        ),
    );
    vec![schema_line, migrate_line]
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The role's row rights (checked only on a complete schema: the tables must exist).
pub fn rights_verdict(found: &Inspection, privileges: Option<Result<(), String>>) -> Check {
    match privileges {
        Some(Ok(())) => line(
            "database rights",
            Status::Ok,
            format!(
                "role {:?} may read and write every table the ingester uses",
                found.role
            ),
        ),
        Some(Err(e)) => line("database rights", Status::Fail, e),
        None => line(
            "database rights",
            Status::Warn,
            "not checked: the schema is not complete yet (checked at start-up once it is)",
        ),
    }
}

/// An access question and its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub verb: &'static str,
    /// The namespace asked about, `None`: cluster-wide.
    pub namespace: Option<String>,
    /// Ok(allowed) or why it could not be asked.
    pub answer: Result<bool, String>,
}

fn access_text(a: &Access) -> String {
    match &a.namespace {
        Some(ns) => format!("{} in {ns}", a.verb),
        None => a.verb.to_string(),
    }
}

/// Pure: the line of a static route from its discovery and access answers.
pub fn route_verdict(
    route: &str,
    discovery: Result<bool, (String, bool)>,
    access: &[Access],
) -> Check {
    let name = format!("route {route}");
    let namespaced = match discovery {
        Ok(n) => n,
        Err((e, true)) => {
            return line(
                name,
                Status::Warn,
                format!("not served by this server ({e}); the service logs it and retries"),
            )
        }
        Err((e, false)) => return line(name, Status::Fail, format!("discovery failed: {e}")),
    };
    let scope = if namespaced {
        "namespaced"
    } else {
        "cluster-scoped"
    };
    access_line(name, format!("served ({scope})"), access)
}

/// A routes line whose Kind is not the server's: the service uses the server's (and says
/// so); worth fixing in the file, never a reason not to run.
pub fn kind_misnamed(check: &mut Check, file_kind: &str, served_kind: &str) {
    if check.status == Status::Ok {
        check.status = Status::Warn;
    }
    check.detail.push_str(&format!(
        "; the routes file says Kind {file_kind}, the server serves {served_kind} (used instead; fix the line)"
    ));
}

fn access_line(name: String, served: String, access: &[Access]) -> Check {
    let denied: Vec<String> = access
        .iter()
        .filter(|a| a.answer == Ok(false))
        .map(access_text)
        .collect();
    let unknown: Vec<String> = access
        .iter()
        .filter_map(|a| {
            a.answer
                .as_ref()
                .err()
                .map(|e| format!("{}: {e}", access_text(a)))
        })
        .collect();
    if !denied.is_empty() {
        return line(
            name,
            Status::Fail,
            format!(
                "{served}; this identity may NOT {} (add the verbs to its ClusterRole: deploy/gen-rbac.py)",
                denied.join(", ")
            ),
        );
    }
    if !unknown.is_empty() {
        return line(
            name,
            Status::Warn,
            format!("{served}; could not ask: {}", unknown.join("; ")),
        );
    }
    let verbs: BTreeSet<&str> = access.iter().map(|a| a.verb).collect();
    line(
        name,
        Status::Ok,
        format!(
            "{served}; may {}",
            verbs.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

/// Pure: the line of a managed group: served, how many CRDs match, the rights on them.
pub fn group_verdict(
    group: &str,
    served: Option<bool>,
    crds: Result<Vec<String>, String>,
    access: &[Access],
) -> Check {
    let name = format!("group {group}");
    let crds = match crds {
        Ok(c) => c,
        Err(e) => {
            return line(
                name,
                Status::Warn,
                format!("CRDs not listed ({e}); nothing else checked"),
            )
        }
    };
    let served = match served {
        Some(true) => "served",
        Some(false) => "not served yet",
        None => "served: unknown",
    };
    let what = if crds.is_empty() {
        format!("{served}; 0 CRDs (watches start when one appears)")
    } else {
        format!("{served}; {} CRDs: {}", crds.len(), crds.join(", "))
    };
    let mut c = access_line(name, what, access);
    if crds.is_empty() && c.status == Status::Fail {
        // No watch yet: nothing fails now, the first CRD will.
        c.status = Status::Warn;
    }
    c
}

pub fn name_verdict(name: &str, source: NameSource) -> Check {
    let status = if source == NameSource::Explicit {
        Status::Ok
    } else {
        Status::Warn
    };
    line(
        "cluster name",
        status,
        format!("{name:?} ({})", source.describe()),
    )
}

pub fn owner_verdict(
    name: &str,
    ours: &ClusterIdentity,
    found: Result<Ownership, String>,
) -> Check {
    match found {
        Ok(Ownership::Free) => line(
            "cluster name owner",
            Status::Ok,
            format!(
                "{name:?} is not claimed yet: the first start records this cluster as its owner"
            ),
        ),
        Ok(Ownership::Ours) => line(
            "cluster name owner",
            Status::Ok,
            format!("{name:?} is owned by this cluster"),
        ),
        Ok(Ownership::Theirs(o)) => line(
            "cluster name owner",
            Status::Fail,
            clusters::collision(name, &o, ours).to_string(),
        ),
        Err(e) => line("cluster name owner", Status::Fail, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::cluster;

    fn inspection() -> Inspection {
        crate::storage::schema::complete_inspection()
    }

    #[test]
    fn a_missing_history_partition_warns_only_when_nobody_here_may_create_it() {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 1);
        assert_eq!(
            history_partitions_verdict(Ok(None), Ok(false)).status,
            Status::Ok
        );
        assert_eq!(
            history_partitions_verdict(Ok(day), Ok(true)).status,
            Status::Ok
        );
        let warn = history_partitions_verdict(Ok(day), Ok(false));
        assert_eq!(warn.status, Status::Warn);
        assert!(warn.detail.contains("2026-12-01") && warn.detail.contains("history maintain"));
        assert_eq!(
            history_partitions_verdict(Err("gone".into()), Ok(true)).status,
            Status::Warn
        );
    }

    #[test]
    fn tls_says_whether_the_certificate_was_verified() {
        let c = tls_verdict(SslMode::VerifyFull, true, Some("TLSv1.3"), "db");
        assert_eq!(c.status, Status::Ok);
        assert!(c.detail.contains("verified (verify-full"));
        let c = tls_verdict(SslMode::Require, true, Some("TLSv1.3"), "db");
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("NOT verified"));
        assert_eq!(
            tls_verdict(SslMode::Prefer, false, None, "db").status,
            Status::Warn
        );
        assert_eq!(
            tls_verdict(SslMode::Prefer, false, None, "127.0.0.1").status,
            Status::Ok
        );
    }

    #[test]
    fn schema_lines_say_what_is_missing_and_who_may_add_it() {
        let complete = schema_verdicts(&inspection(), Ok(()));
        assert_eq!(complete[0].status, Status::Ok);
        assert!(complete[1].detail.starts_with("needed: no"));
        let missing = Inspection {
            clusters: false,
            ..inspection()
        };
        let lines = schema_verdicts(&missing, Ok(()));
        assert_eq!(lines[0].status, Status::Fail);
        assert!(lines[0]
            .detail
            .contains("table krateo_ingester_clusters (migration 6)"));
        assert!(lines[1]
            .detail
            .contains("needed: yes; this role may run it: no"));
        let may = Inspection {
            may_create: true,
            ..missing
        };
        assert_eq!(schema_verdicts(&may, Ok(()))[0].status, Status::Warn);
        assert_eq!(
            schema_verdicts(&inspection(), Err("column raw has type text".into()))[0].status,
            Status::Fail
        );
        assert_eq!(
            rights_verdict(&inspection(), Some(Err("SELECT on x".into()))).status,
            Status::Fail
        );
    }

    fn access(verb: &'static str, answer: Result<bool, String>) -> Access {
        Access {
            verb,
            namespace: None,
            answer,
        }
    }

    #[test]
    fn a_route_fails_when_it_may_not_be_watched() {
        let ok = route_verdict(
            "pods",
            Ok(true),
            &[access("list", Ok(true)), access("watch", Ok(true))],
        );
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.detail, "served (namespaced); may list, watch");
        let denied = route_verdict(
            "pods",
            Ok(true),
            &[access("list", Ok(true)), access("watch", Ok(false))],
        );
        assert_eq!(denied.status, Status::Fail);
        assert!(denied.detail.contains("may NOT watch"), "{}", denied.detail);
        let mut misnamed = route_verdict("secrets", Ok(true), &[]);
        kind_misnamed(&mut misnamed, "secret", "Secret");
        assert_eq!(misnamed.status, Status::Warn);
        assert!(misnamed
            .detail
            .contains("Kind secret, the server serves Secret"));
        let absent = route_verdict("ys.x", Err(("404".into(), true)), &[]);
        assert_eq!(absent.status, Status::Warn);
        let unknown = route_verdict("pods", Ok(true), &[access("list", Err("404".into()))]);
        assert_eq!(unknown.status, Status::Warn);
    }

    #[test]
    fn a_group_counts_its_crds() {
        let g = group_verdict(
            "composition.krateo.io",
            Some(true),
            Ok(vec!["fireworksapps".into()]),
            &[access("list", Ok(true)), access("watch", Ok(true))],
        );
        assert_eq!(g.status, Status::Ok);
        assert!(g.detail.contains("1 CRDs: fireworksapps"), "{}", g.detail);
        let empty_denied = group_verdict(
            "x.io",
            Some(false),
            Ok(vec![]),
            &[access("watch", Ok(false))],
        );
        assert_eq!(empty_denied.status, Status::Warn);
        let denied = group_verdict(
            "x.io",
            Some(true),
            Ok(vec!["things".into()]),
            &[access("watch", Ok(false))],
        );
        assert_eq!(denied.status, Status::Fail);
    }

    #[test]
    fn a_name_owned_by_another_cluster_fails_naming_both() {
        let ours = ClusterIdentity {
            id: "uid-a".into(),
            source: cluster::IdentitySource::KubeSystemUid,
        };
        let theirs = clusters::Owner {
            cluster_id: "uid-b".into(),
            id_source: "kube-system namespace uid".into(),
            claimed_at: "2026-01-01T00:00:00Z".into(),
        };
        let c = owner_verdict("prod", &ours, Ok(Ownership::Theirs(theirs)));
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("uid-a") && c.detail.contains("uid-b"));
        assert_eq!(
            owner_verdict("prod", &ours, Ok(Ownership::Free)).status,
            Status::Ok
        );
        assert_eq!(
            name_verdict("h", NameSource::ApiServerHost).status,
            Status::Warn
        );
    }
}
