//! What a replica reads from a Lease, what it decides from it, and the specs it writes (no
//! I/O: the elector in `mod.rs` reads and writes the Lease).

use std::time::Duration;

use kube::api::DynamicObject;
use serde_json::{json, Value};

use super::LeaseSettings;

/// What a replica reads from a Lease's spec (missing fields read as empty or zero).
#[derive(Debug, Default)]
pub(super) struct LeaseRecord {
    pub(super) holder: String,
    pub(super) renew_time: String,
    pub(super) acquire_time: String,
    pub(super) duration: Option<Duration>,
    pub(super) transitions: i64,
}

/// What to do with a Lease that exists.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Another replica holds it and its record changed within its duration.
    StandBy(String),
    /// It is ours: write a new renewTime, keep acquireTime and transitions.
    Renew,
    /// Free (released, or its holder's record unchanged for a whole duration): take it.
    Take,
}

impl LeaseRecord {
    pub(super) fn of(lease: &DynamicObject) -> LeaseRecord {
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

    pub(super) fn is_held_by(&self, identity: &str) -> bool {
        self.holder == identity
    }

    /// The decision for replica `identity` that has seen this record unchanged for
    /// `unchanged_for` (the Lease's own duration wins over `default_duration`).
    pub(super) fn next(
        &self,
        identity: &str,
        unchanged_for: Duration,
        default_duration: Duration,
    ) -> Next {
        if self.is_held_by(identity) {
            return Next::Renew;
        }
        let duration = self.duration.unwrap_or(default_duration);
        if !self.holder.is_empty() && unchanged_for < duration {
            return Next::StandBy(self.holder.clone());
        }
        Next::Take
    }
}

/// The spec with which replica `s.identity` holds the Lease, renewed at `renew_time`.
pub(super) fn holder_spec(
    s: &LeaseSettings,
    acquire_time: &str,
    renew_time: &str,
    transitions: i64,
) -> Value {
    json!({
        "holderIdentity": s.identity,
        "leaseDurationSeconds": s.lease_duration.as_secs().max(1),
        "acquireTime": acquire_time,
        "renewTime": renew_time,
        "leaseTransitions": transitions,
    })
}

/// Releases a held spec at `now`: no holder, so a standby takes it at its next try.
pub(super) fn release(spec: &mut Value, now: &str) {
    spec["holderIdentity"] = json!("");
    spec["leaseDurationSeconds"] = json!(1);
    spec["renewTime"] = json!(now);
}

#[cfg(test)]
mod tests;
