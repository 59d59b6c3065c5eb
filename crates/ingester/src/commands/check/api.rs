//! The Kubernetes probes: the API server, streaming lists, each route and managed group with
//! this identity's rights (asked as `kubectl auth can-i` does), the cluster's name and identity.

use std::collections::BTreeSet;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams, WatchParams};
use kube::Api;

use super::{
    group_verdict, kind_misnamed, line, name_verdict, route_verdict, Access, Check, Report, Status,
};
use crate::config::Config;
use crate::kubernetes::cluster::{self, ClusterIdentity, KubeSystemRead};
use crate::row::routes::Route;

/// The API server, routes, groups and cluster lines; the name and identity when known.
pub(super) async fn checks(
    config: &Config,
    report: &mut Report,
) -> Option<(String, ClusterIdentity)> {
    let (client, name, source) = connect(config, report).await?;
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
                report.push(group_check(&client, group, &crds, served.as_ref()).await);
            }
        }
        Err(e) => report.push(line("routes", Status::Fail, e.to_string())),
    }

    report.push(name_verdict(&name, source));
    let identity = identity_check(&client, config).await;
    report.push(match &identity {
        Ok(identity) => line("cluster identity", Status::Ok, identity.to_string()),
        Err(e) => line("cluster identity", Status::Fail, e.clone()),
    });
    identity.ok().map(|identity| (name, identity))
}

/// The service's own client, once the API server answered; the cluster name and where it
/// came from.
async fn connect(
    config: &Config,
    report: &mut Report,
) -> Option<(kube::Client, String, cluster::NameSource)> {
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
    Some((client, name, source))
}

/// The cluster identity: CLUSTER_ID, else the uid of namespace kube-system.
async fn identity_check(client: &kube::Client, config: &Config) -> Result<ClusterIdentity, String> {
    let read = if config.cluster_id.is_some() {
        None
    } else {
        Some(cluster::read_kube_system_uid(client, 1).await)
    };
    cluster::choose_identity(config.cluster_id.as_deref(), || {
        read.unwrap_or_else(|| Err(KubeSystemRead::Failed(String::new())))
    })
    .map_err(|e| e.to_string())
}

/// A managed group's line: its CRDs (from `crds`, every CRD's (group, plural)) and the
/// rights on them (on `*` while it has none).
async fn group_check(
    client: &kube::Client,
    group: &str,
    crds: &Result<Vec<(String, String)>, String>,
    served: Option<&BTreeSet<String>>,
) -> Check {
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
        access.extend(may_list_and_watch(client, group, plural, None).await);
    }
    group_verdict(group, served.map(|s| s.contains(group)), plurals, &access)
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
