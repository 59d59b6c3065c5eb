//! Whose cluster name this is: the name is claimed for this cluster's identity before the
//! Lease, retiring and any watch (a name another cluster owns writes nothing), and the
//! resume points and rows of the name are adopted by the identity that runs now.

use std::sync::Arc;

use tracing::warn;

use crate::config::Config;
use crate::kubernetes::cluster::ClusterIdentity;
use crate::storage::Database;

/// The cluster name: CLUSTER_NAME, else one detected from the client configuration (see
/// kubernetes/cluster.rs).
pub(super) fn cluster_name(config: &Config, kube_config: &kube::Config) -> Arc<str> {
    Arc::from(crate::kubernetes::cluster::resolve(
        config.cluster_name.as_deref(),
        kube_config,
    ))
}

/// Records this cluster's identity as the owner of its name, or stops when another cluster
/// owns it (see storage/clusters.rs).
pub(super) async fn claim_cluster_name(
    db: &Database,
    cluster: &str,
    config: &Config,
    client: &kube::Client,
) -> anyhow::Result<ClusterIdentity> {
    let identity =
        crate::kubernetes::cluster::identify(config.cluster_id.as_deref(), client).await?;
    let conn = db.pool.get().await.map_err(|e| {
        anyhow::anyhow!(
            "recording the owner of CLUSTER_NAME: {}",
            crate::storage::error_chain(&e)
        )
    })?;
    let outcome = crate::storage::clusters::claim(&conn, cluster, &identity).await?;
    crate::telemetry::events::ClusterNameOwned {
        cluster,
        cluster_id: &identity.id,
        id_source: identity.source.as_str(),
        claimed_now: outcome == crate::storage::clusters::Ownership::Free,
    }
    .emit();
    Ok(identity)
}

/// The resume points and rows of the name come from the cluster identity that runs now;
/// after the name was moved to a rebuilt cluster, they are made to compare with nothing
/// (see `resume::adopt_identity`): every watch lists, and each list's sweep marks deleted
/// the rows of the old cluster's objects.
pub(super) async fn adopt_identity(
    db: &Database,
    cluster: &str,
    identity: &ClusterIdentity,
) -> anyhow::Result<()> {
    use crate::storage::resume::{adopt_identity, Adopted};
    match adopt_identity(&db.pool, cluster, &identity.id)
        .await
        .map_err(|e| anyhow::anyhow!("recording the cluster identity of the resume points: {e}"))?
    {
        Adopted::Same => {}
        Adopted::Changed {
            previous,
            rows_cleared,
        } => warn!(
            cluster = %cluster,
            previous_identity = %previous,
            identity = %identity,
            rows_cleared,
            "the cluster name moved to another cluster identity: its resume points are dropped and its rows' resourceVersions cleared; every watch lists, and the lists mark deleted the rows of objects this cluster does not have"
        ),
    }
    Ok(())
}
