//! `resources-ingester check`: every start-up check, nothing ingested, no DDL and no write.
//! One line per check (OK, WARN or FAIL with a detail); the service would run when no line
//! fails (warnings allowed). The verdicts and the rendering are pure functions below; the
//! I/O glue ([`run`]) reuses the start-up steps (storage/schema.rs inspection, cluster.rs
//! detection, app.rs route loading and discovery) rather than repeating them.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams, WatchParams};
use kube::Api;
use serde::Serialize;

use crate::config::{Config, SslMode};
use crate::kubernetes::cluster::{self, ClusterIdentity, KubeSystemRead, NameSource};
use crate::row::routes::Route;
use crate::storage::clusters::{self, Ownership};
use crate::storage::schema::{self, Inspection, SchemaError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

fn line(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
    }
}

/// Every check, in the order start-up runs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonReport<'a> {
    would_run: bool,
    failures: usize,
    warnings: usize,
    checks: &'a [Check],
}

impl Report {
    fn push(&mut self, c: Check) {
        self.checks.push(c);
    }

    fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    /// The service would run: no check failed (warnings allowed).
    pub fn would_run(&self) -> bool {
        self.count(Status::Fail) == 0
    }

    /// 0 when the service would run, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.would_run())
    }

    /// Every detail with `secret` (the password) replaced, should an error ever quote it.
    pub fn redacted(mut self, secret: &str) -> Report {
        if !secret.is_empty() {
            for c in &mut self.checks {
                if c.detail.contains(secret) {
                    c.detail = c.detail.replace(secret, "***");
                }
            }
        }
        self
    }

    /// One line per check: name, status, detail (columns aligned), then the verdict.
    pub fn table(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0)
            .max("CHECK".len());
        let mut out = String::new();
        let _ = writeln!(out, "{:width$}  {:6} DETAIL", "CHECK", "STATUS");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{:width$}  {:6} {}",
                c.name,
                c.status.as_str(),
                c.detail
            );
        }
        let _ = writeln!(
            out,
            "resources-ingester would {}: {} failed, {} warnings, {} checks",
            if self.would_run() { "run" } else { "NOT run" },
            self.count(Status::Fail),
            self.count(Status::Warn),
            self.checks.len()
        );
        out
    }

    /// `{"wouldRun": bool, "failures": n, "warnings": n, "checks": [{name, status, detail}]}`.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(&JsonReport {
            would_run: self.would_run(),
            failures: self.count(Status::Fail),
            warnings: self.count(Status::Warn),
            checks: &self.checks,
        })
        .unwrap_or_default()
            + "\n"
    }
}

// ---- pure verdicts ----

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

// ---- I/O glue ----

/// Runs every check; never writes.
pub async fn run(config: &Config) -> Report {
    let mut report = Report::default();
    let db = database_checks(config, &mut report).await;
    let identity = api_checks(config, &mut report).await;
    if let (Some(client), Some((name, identity))) = (&db, &identity) {
        let found = match clusters::owner(client, name).await {
            Ok(owner) => Ok(clusters::ownership(owner, identity)),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                Ok(Ownership::Free)
            }
            Err(e) => Err(format!(
                "reading {}: {}",
                clusters::TABLE,
                crate::storage::error_chain(&e)
            )),
        };
        report.push(owner_verdict(name, identity, found));
    }
    report.redacted(config.db_pass.expose())
}

/// The database lines; the connection when PostgreSQL answered.
async fn database_checks(config: &Config, report: &mut Report) -> Option<tokio_postgres::Client> {
    let target = format!("{}:{}/{}", config.db_host, config.db_port, config.db_name);
    let client = match crate::storage::wait_for_postgres(config).await {
        Ok(c) => c,
        Err(e) => {
            report.push(line("database", Status::Fail, e.to_string()));
            return None;
        }
    };
    let facts = client
        .query_one(
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
            report.push(line(
                "database",
                Status::Ok,
                format!("PostgreSQL {version} at {target}, role {role:?}"),
            ));
            report.push(tls_verdict(
                config.db_params.sslmode,
                ssl,
                tls.as_deref(),
                &config.db_host,
            ));
        }
        Err(e) => report.push(line(
            "database",
            Status::Fail,
            format!("{target}: {}", crate::storage::error_chain(&e)),
        )),
    }
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
                format!(
                    "inspecting the catalog: {}",
                    crate::storage::error_chain(&e)
                ),
            ));
            return Some(client);
        }
    };
    let columns = if found.table {
        schema::check_columns(&client)
            .await
            .map_err(|e| e.to_string())
    } else {
        Ok(())
    };
    report.checks.extend(schema_verdicts(&found, columns));
    let privileges = if found.missing().is_empty() {
        Some(
            match schema::check_privileges(&client, &found.role, config.history).await {
                Ok(()) => Ok(()),
                Err(e @ SchemaError::MissingPrivileges { .. }) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        )
    } else {
        None
    };
    report.push(rights_verdict(&found, privileges));
    if config.history && found.history {
        use crate::storage::history;
        let missing = history::missing_tomorrow(&client, chrono::Utc::now())
            .await
            .map_err(|e| crate::storage::error_chain(&e));
        let may = history::may_maintain(&client)
            .await
            .map_err(|e| crate::storage::error_chain(&e));
        report.push(history_partitions_verdict(missing, may));
    }
    Some(client)
}

/// The API server, routes, groups and cluster lines; the name and identity when known.
async fn api_checks(config: &Config, report: &mut Report) -> Option<(String, ClusterIdentity)> {
    let kube_config = match crate::pipeline::service::kube_config().await {
        Ok(c) => c,
        Err(e) => {
            report.push(line("api server", Status::Fail, e.to_string()));
            return None;
        }
    };
    let url = kube_config.cluster_url.to_string();
    let (name, source) = cluster::detect_name(config.cluster_name.as_deref(), &kube_config);
    // The service's own client (same compression setting), so the check sees what it will see.
    let metrics = std::sync::Arc::new(crate::telemetry::metrics::Metrics::new());
    let client =
        match crate::kubernetes::client::build(kube_config, metrics, config.api_compression) {
            Ok(c) => c,
            Err(e) => {
                report.push(line("api server", Status::Fail, format!("client: {e}")));
                return None;
            }
        };
    match client.apiserver_version().await {
        Ok(v) => report.push(line(
            "api server",
            Status::Ok,
            format!("{url}: Kubernetes {}", v.git_version),
        )),
        Err(e) => {
            report.push(line("api server", Status::Fail, format!("{url}: {e}")));
            return None;
        }
    }
    report.push(streaming_lists(&client, config.streaming_lists).await);

    match crate::pipeline::service::load_routes(config) {
        Ok((routes, groups)) => {
            for route in &routes.routes {
                report.push(route_check(&client, route, config).await);
            }
            let crds = crd_groups(&client).await;
            let served: Option<BTreeSet<String>> = client
                .list_api_groups()
                .await
                .ok()
                .map(|l| l.groups.into_iter().map(|g| g.name).collect());
            for group in groups.iter() {
                let plurals = crds.clone().map(|all| {
                    all.iter()
                        .filter(|(g, _)| g == group)
                        .map(|(_, p)| p.clone())
                        .collect::<Vec<_>>()
                });
                let mut access = Vec::new();
                let asked: Vec<String> = match &plurals {
                    Ok(p) if !p.is_empty() => p.clone(),
                    _ => vec!["*".to_string()],
                };
                for plural in &asked {
                    access.extend(may_list_and_watch(&client, group, plural, None).await);
                }
                report.push(group_verdict(
                    group,
                    served.as_ref().map(|s| s.contains(group)),
                    plurals,
                    &access,
                ));
            }
        }
        Err(e) => report.push(line("routes", Status::Fail, e.to_string())),
    }

    report.push(name_verdict(&name, source));
    let read = if config.cluster_id.is_some() {
        None
    } else {
        Some(cluster::read_kube_system_uid(&client, 1).await)
    };
    match cluster::choose_identity(config.cluster_id.as_deref(), || {
        read.unwrap_or_else(|| Err(KubeSystemRead::Failed(String::new())))
    }) {
        Ok(identity) => {
            report.push(line("cluster identity", Status::Ok, identity.to_string()));
            Some((name, identity))
        }
        Err(e) => {
            report.push(line("cluster identity", Status::Fail, e.to_string()));
            None
        }
    }
}

/// Whether the server serves streaming lists (a `sendInitialEvents` watch of kube-system).
async fn streaming_lists(client: &kube::Client, wanted: bool) -> Check {
    let api: Api<Namespace> = Api::all(client.clone());
    let params = WatchParams {
        field_selector: Some(format!("metadata.name={}", cluster::IDENTITY_NAMESPACE)),
        timeout: Some(1),
        bookmarks: true,
        send_initial_events: true,
        ..WatchParams::default()
    };
    let setting = if wanted {
        ""
    } else {
        " (STREAMING_LISTS=false: paged lists anyway)"
    };
    match api.watch(&params, "").await {
        Ok(_) => line(
            "streaming lists",
            Status::Ok,
            format!("served: initial lists are streamed{setting}"),
        ),
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => line(
            "streaming lists",
            Status::Ok,
            format!(
                "not served (WatchList feature gate off): paged lists of LIST_PAGE_SIZE{setting}"
            ),
        ),
        Err(e) => line(
            "streaming lists",
            Status::Warn,
            format!("unknown: the probe failed ({e})"),
        ),
    }
}

async fn route_check(client: &kube::Client, route: &Route, config: &Config) -> Check {
    let served = crate::pipeline::service::discover_scope(client, route)
        .await
        .map_err(|e| (e.message, e.kind_unavailable));
    let misnamed = served
        .as_ref()
        .ok()
        .filter(|s| s.kind != route.kind)
        .map(|s| s.kind.clone());
    let discovery = served.map(|s| s.namespaced);
    let mut access = Vec::new();
    if let Ok(namespaced) = discovery {
        if namespaced && !config.namespaces.is_all() {
            for ns in &config.namespaces.0 {
                access.extend(
                    may_list_and_watch(client, &route.group, &route.plural, Some(ns)).await,
                );
            }
        } else {
            access.extend(may_list_and_watch(client, &route.group, &route.plural, None).await);
        }
    }
    let label = if route.group.is_empty() {
        route.plural.to_string()
    } else {
        format!("{}.{}", route.plural, route.group)
    };
    let mut check = route_verdict(&label, discovery, &access);
    if let Some(kind) = misnamed {
        kind_misnamed(&mut check, &route.kind, &kind);
    }
    check
}

/// (group, plural) of every CRD, or why they could not be listed.
async fn crd_groups(client: &kube::Client) -> Result<Vec<(String, String)>, String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .map(|c| (c.spec.group, c.spec.names.plural))
        .collect())
}

async fn may_list_and_watch(
    client: &kube::Client,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> Vec<Access> {
    let mut out = Vec::new();
    for verb in ["list", "watch"] {
        out.push(Access {
            verb,
            namespace: namespace.map(str::to_owned),
            answer: may(client, verb, group, resource, namespace).await,
        });
    }
    out
}

/// Asks the API server the way `kubectl auth can-i` does (SelfSubjectAccessReview).
async fn may(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> Result<bool, String> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                namespace: namespace.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| format!("SelfSubjectAccessReview: {e}"))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_verdict_is_run_unless_a_line_fails() {
        let mut r = Report::default();
        r.push(line("a", Status::Ok, "x"));
        r.push(line("b", Status::Warn, "y"));
        assert!(r.would_run());
        assert_eq!(r.exit_code(), 0);
        r.push(line("c", Status::Fail, "z"));
        assert!(!r.would_run());
        assert_eq!(r.exit_code(), 1);
        let table = r.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "CHECK  STATUS DETAIL");
        assert_eq!(lines[1], "a      OK     x");
        assert_eq!(lines[3], "c      FAIL   z");
        assert!(lines[4].contains("would NOT run: 1 failed, 1 warnings"));
        let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(json["wouldRun"], false);
        assert_eq!(json["checks"][2]["status"], "FAIL");
        assert_eq!(json["checks"][2]["name"], "c");
    }

    #[test]
    fn the_password_never_reaches_the_report() {
        let mut r = Report::default();
        r.push(line("database", Status::Fail, "password s3cret refused"));
        let r = r.redacted("s3cret");
        assert_eq!(r.checks[0].detail, "password *** refused");
        assert!(!r.table().contains("s3cret") && !r.json().contains("s3cret"));
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
