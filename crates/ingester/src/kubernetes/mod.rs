//! The Kubernetes side: the API client, the list-and-watch loop, CRD summaries, the
//! cluster's identity and the Lease of leader election.

pub mod client;
pub mod cluster;
pub mod crd;
pub mod lease;
pub mod listwatch;
