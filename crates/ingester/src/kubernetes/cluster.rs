//! The cluster name written on every row, and the cluster's identity: the name is what rows
//! carry, the identity tells two clusters apart when they were given the same name (see
//! `storage/clusters.rs`, which records which identity owns each name).

use std::time::Duration;

use tracing::warn;

/// Where the cluster name came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameSource {
    Explicit,
    KubeconfigContext,
    ApiServerHost,
}

/// `CLUSTER_NAME`; else the current kubeconfig context's cluster; else the API server host.
pub fn cluster_name(
    explicit: Option<&str>,
    kubeconfig_cluster: Option<&str>,
    api_host: Option<&str>,
) -> (String, NameSource) {
    if let Some(name) = explicit.map(str::trim).filter(|n| !n.is_empty()) {
        return (name.to_owned(), NameSource::Explicit);
    }
    if let Some(name) = kubeconfig_cluster.filter(|n| !n.is_empty()) {
        return (name.to_owned(), NameSource::KubeconfigContext);
    }
    (
        api_host
            .filter(|h| !h.is_empty())
            .unwrap_or("unknown")
            .to_owned(),
        NameSource::ApiServerHost,
    )
}

/// The cluster of the kubeconfig's current context, when running out of cluster.
pub fn kubeconfig_cluster() -> Option<String> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return None;
    }
    let kc = kube::config::Kubeconfig::read().ok()?;
    let current = kc.current_context.as_deref()?;
    kc.contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
}

/// Resolves the name and warns when it was not set explicitly.
pub fn resolve(explicit: Option<&str>, config: &kube::Config) -> String {
    let (name, source) = detect_name(explicit, config);
    if source != NameSource::Explicit {
        warn!(cluster_name = %name, source = ?source, "CLUSTER_NAME not set; using a detected name (set it explicitly when several clusters share a database)");
    }
    name
}

/// The name and where it came from, without logging (the `check` command prints it).
pub fn detect_name(explicit: Option<&str>, config: &kube::Config) -> (String, NameSource) {
    let kc = kubeconfig_cluster();
    cluster_name(explicit, kc.as_deref(), config.cluster_url.host())
}

impl NameSource {
    pub fn describe(self) -> &'static str {
        match self {
            NameSource::Explicit => "set by CLUSTER_NAME",
            NameSource::KubeconfigContext => {
                "detected: the kubeconfig's current context's cluster (CLUSTER_NAME not set)"
            }
            NameSource::ApiServerHost => "detected: the API server's host (CLUSTER_NAME not set)",
        }
    }
}

/// The namespace whose uid identifies a cluster (what other multi-cluster tools use): it
/// exists in every cluster, is never deleted, and a rebuilt cluster gets a new one.
pub const IDENTITY_NAMESPACE: &str = "kube-system";

/// The RBAC rule the identity needs, named in the error when it is missing.
pub const IDENTITY_RBAC_RULE: &str = "apiGroups: [\"\"], resources: [\"namespaces\"], resourceNames: [\"kube-system\"], verbs: [\"get\"]";

/// Where the identity came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// `CLUSTER_ID`.
    Explicit,
    /// The uid of namespace `kube-system`.
    KubeSystemUid,
}

impl IdentitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::Explicit => "CLUSTER_ID",
            IdentitySource::KubeSystemUid => "kube-system namespace uid",
        }
    }
}

/// A stable identity of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub id: String,
    pub source: IdentitySource,
}

impl std::fmt::Display for ClusterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.id, self.source.as_str())
    }
}

/// Why namespace kube-system could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeSystemRead {
    /// 403: this identity may not get it.
    Forbidden(String),
    /// Any other failure (not found, unreachable, timeouts) after the retries.
    Failed(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("cannot tell this cluster's identity: this service account may not read namespace {IDENTITY_NAMESPACE} ({0}). Fix: add the rule {{{IDENTITY_RBAC_RULE}}} to its ClusterRole (the chart and deploy/manifests have it), or set CLUSTER_ID to a stable identity of this cluster (e.g. `kubectl get namespace kube-system -o jsonpath='{{.metadata.uid}}'`)")]
    Forbidden(String),
    #[error("cannot tell this cluster's identity: reading namespace {IDENTITY_NAMESPACE} failed ({0}); set CLUSTER_ID to a stable identity of this cluster to start without it")]
    Failed(String),
}

/// `CLUSTER_ID` when set; else the uid of kube-system. No identity at all refuses to start
/// (rather than a degraded mode): the check it feeds exists because two clusters under one
/// name silently delete each other's rows, and a mode that skips it would bring that back
/// exactly where RBAC was forgotten. CLUSTER_ID is the explicit way out.
pub fn choose_identity(
    explicit: Option<&str>,
    kube_system_uid: impl FnOnce() -> Result<String, KubeSystemRead>,
) -> Result<ClusterIdentity, IdentityError> {
    if let Some(id) = explicit.map(str::trim).filter(|i| !i.is_empty()) {
        return Ok(ClusterIdentity {
            id: id.to_owned(),
            source: IdentitySource::Explicit,
        });
    }
    match kube_system_uid() {
        Ok(uid) => Ok(ClusterIdentity {
            id: uid,
            source: IdentitySource::KubeSystemUid,
        }),
        Err(KubeSystemRead::Forbidden(e)) => Err(IdentityError::Forbidden(e)),
        Err(KubeSystemRead::Failed(e)) => Err(IdentityError::Failed(e)),
    }
}

/// Reads the uid of kube-system; a passing fault (5xx, timeout, refused connection) is
/// retried `attempts` times with backoff, a 403 or 404 is an answer.
pub async fn read_kube_system_uid(
    client: &kube::Client,
    attempts: u32,
) -> Result<String, KubeSystemRead> {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let mut delay = Duration::from_millis(500);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let failure = match api.get(IDENTITY_NAMESPACE).await {
            Ok(ns) => match ns.metadata.uid.filter(|u| !u.is_empty()) {
                Some(uid) => return Ok(uid),
                None => return Err(KubeSystemRead::Failed("it has no uid".into())),
            },
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(KubeSystemRead::Forbidden(format!("403 {}", s.message)))
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(KubeSystemRead::Failed(format!("404 {}", s.message)))
            }
            Err(e) => e.to_string(),
        };
        if attempt >= attempts {
            return Err(KubeSystemRead::Failed(failure));
        }
        warn!(attempt, error = %failure, "reading namespace kube-system (the cluster identity) failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// The identity at start-up (a passing failure to read kube-system is retried).
pub async fn identify(
    explicit: Option<&str>,
    client: &kube::Client,
) -> Result<ClusterIdentity, IdentityError> {
    let read = if explicit.map(str::trim).is_some_and(|e| !e.is_empty()) {
        None
    } else {
        Some(read_kube_system_uid(client, 8).await)
    };
    choose_identity(explicit, || read.unwrap_or_else(|| Ok(String::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_wins_then_context_then_host() {
        assert_eq!(
            cluster_name(Some("prod"), Some("ctx"), Some("h")),
            ("prod".into(), NameSource::Explicit)
        );
        assert_eq!(
            cluster_name(Some("  "), Some("ctx"), Some("h")),
            ("ctx".into(), NameSource::KubeconfigContext)
        );
        assert_eq!(
            cluster_name(None, None, Some("10.0.0.1")),
            ("10.0.0.1".into(), NameSource::ApiServerHost)
        );
        assert_eq!(cluster_name(None, None, None).0, "unknown");
    }

    #[test]
    fn explicit_identity_wins_without_reading_kube_system() {
        let id = choose_identity(Some(" abc "), || panic!("kube-system must not be read"));
        assert_eq!(
            id,
            Ok(ClusterIdentity {
                id: "abc".into(),
                source: IdentitySource::Explicit
            })
        );
        let id = choose_identity(Some(""), || Ok("uid-1".into())).unwrap();
        assert_eq!(id.source, IdentitySource::KubeSystemUid);
        assert_eq!(id.to_string(), "uid-1 (kube-system namespace uid)");
    }

    #[test]
    fn an_unreadable_kube_system_refuses_naming_the_rule_and_the_way_out() {
        let e = choose_identity(None, || {
            Err(KubeSystemRead::Forbidden("403 forbidden".into()))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains(IDENTITY_RBAC_RULE), "{e}");
        assert!(e.contains("resourceNames: [\"kube-system\"]"), "{e}");
        assert!(e.contains("CLUSTER_ID"), "{e}");
        let e = choose_identity(None, || Err(KubeSystemRead::Failed("timeout".into())))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeout") && e.contains("CLUSTER_ID"), "{e}");
    }
}
