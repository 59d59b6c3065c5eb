//! Reaching the API server: the client configuration with the service's timeouts, and the
//! discovery of a route's resource (its scope, its kind). `check` reuses both.

use std::time::Duration;

use crate::row::routes::Route;

/// Timeouts of the Kubernetes client. Watches ask the server to end them after 290 s
/// (`timeoutSeconds`), so a read that waits longer than that means a dead connection.
const KUBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KUBE_READ_TIMEOUT: Duration = Duration::from_secs(295);

/// The Kubernetes client configuration (in-cluster, KUBECONFIG or ~/.kube/config) with the
/// service's timeouts.
pub async fn kube_config() -> anyhow::Result<kube::Config> {
    let mut kube_config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!(
            "Kubernetes client configuration (in-cluster, KUBECONFIG or ~/.kube/config): {e}"
        )
    })?;
    // Without a read timeout a request to an API server that stopped answering waits forever
    // (discovery, the Lease); counted from when the request was sent, not from when its
    // pooled connection went idle.
    kube_config.connect_timeout = Some(KUBE_CONNECT_TIMEOUT);
    kube_config.read_timeout = Some(KUBE_READ_TIMEOUT);
    kube_config.reset_reader_on_write = true;
    Ok(kube_config)
}

/// Why discovery of a route failed.
pub(crate) struct DiscoveryError {
    pub(crate) message: String,
    /// The server does not serve the kind (404, or absent from its group version), or this
    /// identity may not read it (403): not a passing fault.
    pub(crate) kind_unavailable: bool,
}

/// A route's resource as the server's discovery document describes it.
pub(crate) struct Served {
    pub(crate) namespaced: bool,
    /// The kind, as the server spells it.
    pub(crate) kind: String,
}

/// Whether the route's resource is namespaced, and its kind, from the server's discovery
/// document.
pub(crate) async fn discover_scope(
    client: &kube::Client,
    route: &Route,
) -> Result<Served, DiscoveryError> {
    let list = if route.group.is_empty() {
        client.list_core_api_resources(&route.version).await
    } else {
        client.list_api_group_resources(&route.api_version()).await
    }
    .map_err(|e| DiscoveryError {
        kind_unavailable: matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 403),
        message: format!("discovery of {}: {e}", route.api_version()),
    })?;
    list.resources
        .iter()
        .find(|r| r.name == route.plural)
        .map(|r| Served {
            namespaced: r.namespaced,
            kind: r.kind.clone(),
        })
        .ok_or_else(|| DiscoveryError {
            message: format!(
                "the server has no resource {} in {}",
                route.plural,
                route.api_version()
            ),
            kind_unavailable: true,
        })
}
