//! The cluster name written on every row.

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
    let kc = kubeconfig_cluster();
    let (name, source) = cluster_name(explicit, kc.as_deref(), config.cluster_url.host());
    if source != NameSource::Explicit {
        warn!(cluster_name = %name, source = ?source, "CLUSTER_NAME not set; using a detected name (set it explicitly when several clusters share a database)");
    }
    name
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
}
