//! Leader election with a `coordination.k8s.io/v1` Lease (`LEADER_ELECTION=true`), with the
//! semantics of client-go's leaderelection package:
//!
//! - The Lease records `holderIdentity`, `leaseDurationSeconds`, `acquireTime`, `renewTime`
//!   and `leaseTransitions`. Every write is a replace carrying the `resourceVersion` that was
//!   read (optimistic concurrency): of two replicas racing for the Lease, one gets 409 Conflict.
//! - A Lease held by another replica is free once its record has not changed for
//!   `leaseDurationSeconds`, measured on this replica's own clock from the moment it first
//!   saw that record (no comparison of clocks between machines).
//! - The leader renews every `LEASE_RETRY_PERIOD`; when it could not renew for
//!   `LEASE_RENEW_DEADLINE`, or sees another holder, it has lost the lease: the service stops
//!   at once, without draining, and exits non-zero, so Kubernetes restarts it as a standby.
//!   The deadline counts from the start of the last successful renewal (the Lease's
//!   `renewTime` is written after that instant, and a standby counts the lease duration from
//!   when it saw that write), and the start-up check keeps it shorter than the lease duration:
//!   the leader stops before any standby may take the Lease.
//! - On SIGTERM the leader releases the Lease after its last commit (empty `holderIdentity`),
//!   so a standby takes over at its next try instead of waiting for the lease to expire. The
//!   release is bounded by `SHUTDOWN_TIMEOUT` (the caller's timeout): an API server that does
//!   not answer only delays the takeover until the lease expires.
//!
//! A standby replica is ready (`/readyz` 200 when the database is reachable): it is healthy
//! and able to take over; it starts no watch and writes nothing until it holds the Lease.

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod election;
mod record;

use election::{Attempt, Keeping, Leadership, Observed, Renewal, Standby, Waiting};
use record::{holder_spec, LeaseRecord, Next};

/// Settings of one elector.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseSettings {
    pub fn from_config(c: &crate::config::Config) -> LeaseSettings {
        let namespace = c
            .lease_namespace
            .clone()
            .or_else(|| c.pod_namespace.clone())
            .unwrap_or_else(|| "default".to_owned());
        let identity = c.pod_name.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                })
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "resources-ingester".to_owned());
            // Two processes on one host must not share an identity.
            format!("{host}-{}", std::process::id())
        });
        LeaseSettings {
            name: c.lease_name.clone(),
            namespace,
            identity,
            // Config::validate keeps renew deadline < lease duration (whole seconds, >= 1 s).
            lease_duration: c.lease_duration,
            renew_deadline: c.lease_renew_deadline,
            retry_period: c.lease_retry_period,
        }
    }
}

pub struct LeaderElector {
    api: Api<DynamicObject>,
    s: LeaseSettings,
    observed: Observed,
    /// When the last try that left this replica holding the lease started.
    held_since: Option<Instant>,
}

fn lease_resource() -> ApiResource {
    ApiResource {
        group: "coordination.k8s.io".into(),
        version: "v1".into(),
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        plural: "leases".into(),
    }
}

fn now_micro() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl LeaderElector {
    pub fn new(client: kube::Client, s: LeaseSettings) -> LeaderElector {
        let api = Api::namespaced_with(client, &s.namespace, &lease_resource());
        LeaderElector {
            api,
            s,
            observed: Observed::default(),
            held_since: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.s.identity
    }

    async fn try_acquire_or_renew(&mut self) -> Attempt {
        let current = match self.api.get_opt(&self.s.name).await {
            Ok(c) => c,
            Err(e) => return Attempt::Retry(format!("reading the lease: {e}")),
        };
        let now = now_micro();
        let Some(mut lease) = current else {
            return self.create(&now).await;
        };
        let record = LeaseRecord::of(&lease);
        let unchanged_for = self.observed.unchanged_for(&record, Instant::now());
        let (acquire_time, transitions) =
            match record.next(&self.s.identity, unchanged_for, self.s.lease_duration) {
                Next::StandBy(holder) => return Attempt::HeldBy(holder),
                Next::Renew => (record.acquire_time.clone(), record.transitions),
                Next::Take => (now.clone(), record.transitions + 1),
            };
        // Replace with the resourceVersion we read: 409 if anyone wrote in between.
        lease.data["spec"] = holder_spec(&self.s, &acquire_time, &now, transitions);
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                let renew = LeaseRecord::of(&written).renew_time;
                self.observed.wrote(&self.s.identity, renew, Instant::now());
                if !record.is_held_by(&self.s.identity) {
                    info!(lease = %self.s.name, previous = %record.holder, identity = %self.s.identity, "acquired the leader lease");
                }
                Attempt::Held
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Attempt::Retry("lease written by another replica meanwhile".into())
            }
            Err(e) => Attempt::Retry(format!("writing the lease: {e}")),
        }
    }

    /// The first replica to find no Lease creates it, holding it.
    async fn create(&self, now: &str) -> Attempt {
        let mut obj = DynamicObject::new(&self.s.name, &lease_resource()).within(&self.s.namespace);
        obj.data = json!({"spec": holder_spec(&self.s, now, now, 0)});
        match self.api.create(&PostParams::default(), &obj).await {
            Ok(_) => Attempt::Held,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Attempt::Retry("lease created by another replica".into())
            }
            Err(e) => Attempt::Retry(format!("creating the lease: {e}")),
        }
    }

    /// Waits until this replica holds the lease (to stop waiting, drop the future: between
    /// attempts nothing is held).
    pub async fn acquire(&mut self) {
        let mut standby = Standby::default();
        loop {
            let started = Instant::now();
            let attempt = self.try_acquire_or_renew().await;
            match standby.tried(attempt) {
                Waiting::Leads => {
                    self.held_since = Some(started);
                    return;
                }
                Waiting::StandsBy(Some(h)) => {
                    info!(lease = %self.s.name, holder = %h, identity = %self.s.identity, "standing by: another replica leads");
                }
                Waiting::StandsBy(None) => {}
                Waiting::Retries(why) => {
                    warn!(lease = %self.s.name, error = %why, "leader election: will retry")
                }
            }
            tokio::time::sleep(self.s.retry_period).await;
        }
    }

    /// Renews the lease until `stop` fires (returns the elector, to release the lease) or the
    /// lease is lost (`lost` is cancelled, then returns). The renew deadline is a timer of its
    /// own, so neither the retry period nor a renewal that hangs can push the moment this
    /// replica gives up past it.
    pub async fn keep(mut self, stop: CancellationToken, lost: CancellationToken) -> LeaderElector {
        let held_since = self.held_since.unwrap_or_else(Instant::now);
        let mut leadership = Leadership::new(held_since, self.s.renew_deadline);
        loop {
            let give_up_at = tokio::time::Instant::from_std(leadership.give_up_at());
            let due = tokio::select! {
                _ = stop.cancelled() => Some(Renewal::Stopped),
                _ = tokio::time::sleep_until(give_up_at) => Some(Renewal::DeadlinePassed),
                _ = tokio::time::sleep(self.s.retry_period) => None,
            };
            let step = match due {
                Some(step) => step,
                None => {
                    let started = Instant::now();
                    tokio::select! {
                        _ = stop.cancelled() => Renewal::Stopped,
                        _ = tokio::time::sleep_until(give_up_at) => Renewal::DeadlinePassed,
                        attempt = self.try_acquire_or_renew() => Renewal::Tried(attempt, started),
                    }
                }
            };
            match leadership.after(step) {
                Keeping::Renewed => {}
                Keeping::Failed(why) => {
                    warn!(lease = %self.s.name, error = %why, "renewing the leader lease failed")
                }
                Keeping::Stopped => return self,
                Keeping::LostTo(h) => {
                    warn!(lease = %self.s.name, holder = %h, "lost the leader lease to another replica");
                    lost.cancel();
                    return self;
                }
                Keeping::DeadlinePassed => {
                    warn!(lease = %self.s.name, deadline = ?self.s.renew_deadline, "could not renew the leader lease in time: giving up leadership");
                    lost.cancel();
                    return self;
                }
            }
        }
    }

    /// Gives the lease up if this replica still holds it, so a standby takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.s.name).await else {
            return;
        };
        if !LeaseRecord::of(&lease).is_held_by(&self.s.identity) {
            return;
        }
        record::release(&mut lease.data["spec"], &now_micro());
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.s.name, "released the leader lease"),
            Err(e) => {
                warn!(lease = %self.s.name, error = %e, "releasing the leader lease failed; it expires on its own")
            }
        }
    }
}
