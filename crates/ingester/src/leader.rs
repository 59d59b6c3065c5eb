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
//!   `LEASE_RENEW_DEADLINE` (shorter than the lease duration), or sees another holder, it has
//!   lost the lease: the service stops its watches and exits non-zero, so Kubernetes restarts
//!   it as a standby.
//! - On SIGTERM the leader releases the Lease after its last commit (empty `holderIdentity`),
//!   so a standby takes over at its next try instead of waiting for the lease to expire.
//!
//! A standby replica is ready (`/readyz` 200 when the database is reachable): it is healthy
//! and able to take over; it starts no watch and writes nothing until it holds the Lease.

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
            lease_duration: c.lease_duration.max(Duration::from_secs(1)),
            renew_deadline: c
                .lease_renew_deadline
                .min(c.lease_duration.max(Duration::from_secs(1))),
            retry_period: c.lease_retry_period.max(Duration::from_millis(100)),
        }
    }
}

/// The outcome of one try.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the lease (acquired or renewed).
    Held,
    /// Another replica holds a lease that has not expired.
    HeldBy(String),
    /// Someone wrote the lease between our read and our write, or the API failed.
    Retry(String),
}

pub struct LeaderElector {
    api: Api<DynamicObject>,
    s: LeaseSettings,
    /// The last record seen (holder, renewTime) and when this replica first saw it.
    observed: Option<((String, String), Instant)>,
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
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.s.identity
    }

    fn spec(&self, acquire_time: &str, transitions: i64) -> Value {
        json!({
            "holderIdentity": self.s.identity,
            "leaseDurationSeconds": self.s.lease_duration.as_secs().max(1),
            "acquireTime": acquire_time,
            "renewTime": now_micro(),
            "leaseTransitions": transitions,
        })
    }

    async fn try_acquire_or_renew(&mut self) -> Attempt {
        let current = match self.api.get_opt(&self.s.name).await {
            Ok(c) => c,
            Err(e) => return Attempt::Retry(format!("reading the lease: {e}")),
        };
        let Some(mut lease) = current else {
            let mut obj =
                DynamicObject::new(&self.s.name, &lease_resource()).within(&self.s.namespace);
            obj.data = json!({"spec": self.spec(&now_micro(), 0)});
            return match self.api.create(&PostParams::default(), &obj).await {
                Ok(_) => Attempt::Held,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Attempt::Retry("lease created by another replica".into())
                }
                Err(e) => Attempt::Retry(format!("creating the lease: {e}")),
            };
        };
        let spec = lease.data.get("spec").cloned().unwrap_or(Value::Null);
        let text = |k: &str| spec.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let holder = text("holderIdentity");
        let record = (holder.clone(), text("renewTime"));
        let observed_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                let now = Instant::now();
                self.observed = Some((record.clone(), now));
                now
            }
        };
        let duration = spec
            .get("leaseDurationSeconds")
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(self.s.lease_duration);
        let mine = holder == self.s.identity;
        if !holder.is_empty() && !mine && observed_at.elapsed() < duration {
            return Attempt::HeldBy(holder);
        }
        let transitions = spec
            .get("leaseTransitions")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let (acquire_time, transitions) = if mine {
            (text("acquireTime"), transitions)
        } else {
            (now_micro(), transitions + 1)
        };
        // Replace with the resourceVersion we read: 409 if anyone wrote in between.
        lease.data["spec"] = self.spec(&acquire_time, transitions);
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                let spec = written.data.get("spec").cloned().unwrap_or(Value::Null);
                let renew = spec
                    .get("renewTime")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                self.observed = Some(((self.s.identity.clone(), renew), Instant::now()));
                if !mine {
                    info!(lease = %self.s.name, previous = %holder, identity = %self.s.identity, "acquired the leader lease");
                }
                Attempt::Held
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Attempt::Retry("lease written by another replica meanwhile".into())
            }
            Err(e) => Attempt::Retry(format!("writing the lease: {e}")),
        }
    }

    /// Waits until this replica holds the lease; `false` when `cancel` fired first.
    pub async fn acquire(&mut self, cancel: &CancellationToken) -> bool {
        let mut last_holder = String::new();
        loop {
            match self.try_acquire_or_renew().await {
                Attempt::Held => return true,
                Attempt::HeldBy(h) => {
                    if h != last_holder {
                        info!(lease = %self.s.name, holder = %h, identity = %self.s.identity, "standing by: another replica leads");
                        last_holder = h;
                    }
                }
                Attempt::Retry(why) => {
                    warn!(lease = %self.s.name, error = %why, "leader election: will retry")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(self.s.retry_period) => {}
            }
        }
    }

    /// Renews the lease until `stop` fires (returns the elector, to release the lease) or the
    /// lease is lost (`lost` is cancelled, then returns).
    pub async fn keep(mut self, stop: CancellationToken, lost: CancellationToken) -> LeaderElector {
        let mut last_renew = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return self,
                _ = tokio::time::sleep(self.s.retry_period) => {}
            }
            let budget = self
                .s
                .renew_deadline
                .saturating_sub(last_renew.elapsed())
                .max(Duration::from_millis(100));
            match tokio::time::timeout(budget, self.try_acquire_or_renew()).await {
                Ok(Attempt::Held) => last_renew = Instant::now(),
                Ok(Attempt::HeldBy(h)) => {
                    warn!(lease = %self.s.name, holder = %h, "lost the leader lease to another replica");
                    lost.cancel();
                    return self;
                }
                Ok(Attempt::Retry(why)) => {
                    warn!(lease = %self.s.name, error = %why, "renewing the leader lease failed")
                }
                Err(_) => warn!(lease = %self.s.name, "renewing the leader lease timed out"),
            }
            if last_renew.elapsed() >= self.s.renew_deadline {
                warn!(lease = %self.s.name, deadline = ?self.s.renew_deadline, "could not renew the leader lease in time: giving up leadership");
                lost.cancel();
                return self;
            }
        }
    }

    /// Gives the lease up if this replica still holds it, so a standby takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.s.name).await else {
            return;
        };
        let holder = lease
            .data
            .pointer("/spec/holderIdentity")
            .and_then(Value::as_str)
            .unwrap_or("");
        if holder != self.s.identity {
            return;
        }
        let spec = &mut lease.data["spec"];
        spec["holderIdentity"] = json!("");
        spec["leaseDurationSeconds"] = json!(1);
        spec["renewTime"] = json!(now_micro());
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
