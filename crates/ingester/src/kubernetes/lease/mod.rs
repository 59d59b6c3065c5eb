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
            // Config::validate keeps renew deadline < lease duration (whole seconds, >= 1 s).
            lease_duration: c.lease_duration,
            renew_deadline: c.lease_renew_deadline,
            retry_period: c.lease_retry_period,
        }
    }
}

/// What ended one wait of the renewal loop.
enum Renewal {
    Stopped,
    DeadlinePassed,
    /// A try, with the instant it started.
    Tried(Attempt, Instant),
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

/// What a replica reads from a Lease's spec (missing fields read as empty or zero).
#[derive(Debug, Default)]
struct LeaseRecord {
    holder: String,
    renew_time: String,
    acquire_time: String,
    duration: Option<Duration>,
    transitions: i64,
}

/// What to do with a Lease that exists.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Another replica holds it and its record changed within its duration.
    StandBy(String),
    /// It is ours: write a new renewTime, keep acquireTime and transitions.
    Renew,
    /// Free (released, or its holder's record unchanged for a whole duration): take it.
    Take,
}

impl LeaseRecord {
    fn of(lease: &DynamicObject) -> LeaseRecord {
        let spec = lease.data.get("spec").unwrap_or(&Value::Null);
        let text = |k: &str| spec.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        LeaseRecord {
            holder: text("holderIdentity"),
            renew_time: text("renewTime"),
            acquire_time: text("acquireTime"),
            duration: spec
                .get("leaseDurationSeconds")
                .and_then(Value::as_u64)
                .map(Duration::from_secs),
            transitions: spec
                .get("leaseTransitions")
                .and_then(Value::as_i64)
                .unwrap_or(0),
        }
    }

    /// The decision for replica `identity` that has seen this record unchanged for
    /// `unchanged_for` (the Lease's own duration wins over `default_duration`).
    fn next(&self, identity: &str, unchanged_for: Duration, default_duration: Duration) -> Next {
        if self.holder == identity {
            return Next::Renew;
        }
        let duration = self.duration.unwrap_or(default_duration);
        if !self.holder.is_empty() && unchanged_for < duration {
            return Next::StandBy(self.holder.clone());
        }
        Next::Take
    }
}

pub struct LeaderElector {
    api: Api<DynamicObject>,
    s: LeaseSettings,
    /// The last record seen (holder, renewTime) and when this replica first saw it.
    observed: Option<((String, String), Instant)>,
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
            observed: None,
            held_since: None,
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
            return self.create().await;
        };
        let record = LeaseRecord::of(&lease);
        let unchanged_for = self.unchanged_for(&record);
        let (acquire_time, transitions) =
            match record.next(&self.s.identity, unchanged_for, self.s.lease_duration) {
                Next::StandBy(holder) => return Attempt::HeldBy(holder),
                Next::Renew => (record.acquire_time.clone(), record.transitions),
                Next::Take => (now_micro(), record.transitions + 1),
            };
        // Replace with the resourceVersion we read: 409 if anyone wrote in between.
        lease.data["spec"] = self.spec(&acquire_time, transitions);
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                let renew = LeaseRecord::of(&written).renew_time;
                self.observed = Some(((self.s.identity.clone(), renew), Instant::now()));
                if record.holder != self.s.identity {
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
    async fn create(&self) -> Attempt {
        let mut obj = DynamicObject::new(&self.s.name, &lease_resource()).within(&self.s.namespace);
        obj.data = json!({"spec": self.spec(&now_micro(), 0)});
        match self.api.create(&PostParams::default(), &obj).await {
            Ok(_) => Attempt::Held,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Attempt::Retry("lease created by another replica".into())
            }
            Err(e) => Attempt::Retry(format!("creating the lease: {e}")),
        }
    }

    /// How long this replica has seen the lease's record (holder, renewTime) unchanged, on
    /// its own clock.
    fn unchanged_for(&mut self, record: &LeaseRecord) -> Duration {
        let key = (record.holder.clone(), record.renew_time.clone());
        match &self.observed {
            Some((seen, at)) if *seen == key => at.elapsed(),
            _ => {
                self.observed = Some((key, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// Waits until this replica holds the lease (to stop waiting, drop the future: between
    /// attempts nothing is held).
    pub async fn acquire(&mut self) {
        let mut last_holder = String::new();
        loop {
            let started = Instant::now();
            match self.try_acquire_or_renew().await {
                Attempt::Held => {
                    self.held_since = Some(started);
                    return;
                }
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
            tokio::time::sleep(self.s.retry_period).await;
        }
    }

    /// Renews the lease until `stop` fires (returns the elector, to release the lease) or the
    /// lease is lost (`lost` is cancelled, then returns). The renew deadline is a timer of its
    /// own, so neither the retry period nor a renewal that hangs can push the moment this
    /// replica gives up past it.
    pub async fn keep(mut self, stop: CancellationToken, lost: CancellationToken) -> LeaderElector {
        let mut renewed_at = self.held_since.unwrap_or_else(Instant::now);
        loop {
            let give_up_at = tokio::time::Instant::from_std(renewed_at + self.s.renew_deadline);
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
            match step {
                Renewal::Stopped => return self,
                Renewal::Tried(Attempt::Held, started) => renewed_at = started,
                Renewal::Tried(Attempt::HeldBy(h), _) => {
                    warn!(lease = %self.s.name, holder = %h, "lost the leader lease to another replica");
                    lost.cancel();
                    return self;
                }
                Renewal::Tried(Attempt::Retry(why), _) => {
                    warn!(lease = %self.s.name, error = %why, "renewing the leader lease failed")
                }
                Renewal::DeadlinePassed => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, duration: Option<u64>) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            duration: duration.map(Duration::from_secs),
            transitions: 3,
            ..LeaseRecord::default()
        }
    }

    const DEFAULT: Duration = Duration::from_secs(15);

    #[test]
    fn another_holder_is_waited_for_until_its_record_stays_unchanged_for_its_duration() {
        let lease = held_by("b", Some(10));
        let fresh = lease.next("a", Duration::from_secs(9), DEFAULT);
        assert_eq!(fresh, Next::StandBy("b".into()));
        // The Lease's own duration counts, not this replica's setting.
        assert_eq!(
            lease.next("a", Duration::from_secs(10), DEFAULT),
            Next::Take
        );
        let no_duration = held_by("b", None);
        assert_eq!(
            no_duration.next("a", Duration::from_secs(10), DEFAULT),
            Next::StandBy("b".into())
        );
        assert_eq!(no_duration.next("a", DEFAULT, DEFAULT), Next::Take);
    }

    #[test]
    fn a_released_lease_is_taken_at_once_and_our_own_is_renewed() {
        assert_eq!(
            held_by("", Some(10)).next("a", Duration::ZERO, DEFAULT),
            Next::Take
        );
        assert_eq!(
            held_by("a", Some(10)).next("a", Duration::ZERO, DEFAULT),
            Next::Renew
        );
        // Even when this replica's view of its own record is old.
        assert_eq!(
            held_by("a", Some(10)).next("a", Duration::from_secs(60), DEFAULT),
            Next::Renew
        );
    }

    #[test]
    fn missing_fields_read_as_empty() {
        let lease: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l"}, "spec": {"holderIdentity": "b", "leaseTransitions": 2}
        }))
        .expect("a Lease");
        let r = LeaseRecord::of(&lease);
        assert_eq!((r.holder.as_str(), r.transitions), ("b", 2));
        assert_eq!((r.renew_time.as_str(), r.duration), ("", None));
    }
}
