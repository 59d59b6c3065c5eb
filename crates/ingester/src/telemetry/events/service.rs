//! Events of the service as a whole: a failure that stops it, the cluster name it owns.

use tracing::info;

/// The service stops because a task panicked or a server ended; the process exits non-zero.
pub struct ServiceFailed<'a> {
    pub failure: &'a str,
}
impl ServiceFailed<'_> {
    pub fn emit(&self) {
        tracing::error!(
            failure = self.failure,
            "a task failed: stopping the service and exiting non-zero"
        );
    }
}

/// This cluster owns its cluster name (claimed at this first start, or confirmed); a name
/// owned by another cluster stops start-up with an error instead (storage/clusters.rs).
pub struct ClusterNameOwned<'a> {
    pub cluster: &'a str,
    /// The identity's id and where it came from (`CLUSTER_ID` or kube-system's uid).
    pub cluster_id: &'a str,
    pub id_source: &'a str,
    pub claimed_now: bool,
}
impl ClusterNameOwned<'_> {
    pub fn emit(&self) {
        info!(
            cluster = self.cluster,
            cluster_id = self.cluster_id,
            id_source = self.id_source,
            claimed_now = self.claimed_now,
            "cluster name owned by this cluster"
        );
    }
}
