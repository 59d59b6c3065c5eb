//! The live change feed (`CHANGE_FEED`): the payload of the one `NOTIFY krateo_resources` a
//! committed batch sends, built from the rows the batch changed. Pure: no I/O here; the writer
//! sends it with `pg_notify` inside the batch's transaction, so only committed changes are
//! notified.
//!
//! Payload (JSON, one per batch):
//! - `{"changes":[{"global_uid":"<cluster>:<uid>","op":"created|updated|deleted","rv":<int|null>}, ...]}`
//!   one entry per row the batch changed; `rv` is the object's resourceVersion, `null` for a
//!   deletion that carries no version of its own (a list's sweep) or a non-integer one.
//! - `{"changed_since":"<RFC 3339, microseconds>","rows":<n>}` when the list would not fit in
//!   PostgreSQL's payload limit: the batch changed `n` rows, each with `updated_at >=
//!   changed_since`; the listener reads them from the table.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// The channel the feed notifies.
pub const CHANNEL: &str = "krateo_resources";

/// PostgreSQL refuses a payload of 8000 bytes or more (the default `BLCKSZ`).
pub const PAYLOAD_LIMIT: usize = 8000;

/// What happened to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Created,
    Updated,
    Deleted,
}

impl Operation {
    /// The SQL side names operations in text (`created`, `updated`, `deleted`).
    pub fn parse(s: &str) -> Option<Operation> {
        match s {
            "created" => Some(Operation::Created),
            "updated" => Some(Operation::Updated),
            "deleted" => Some(Operation::Deleted),
            _ => None,
        }
    }
}

/// One row a batch changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub global_uid: String,
    pub operation: Operation,
    pub resource_version: Option<i64>,
    /// The row's `updated_at` after the change (for the "changed since" marker).
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct Entry<'a> {
    global_uid: &'a str,
    op: Operation,
    rv: Option<i64>,
}

#[derive(Serialize)]
struct Changes<'a> {
    changes: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct ChangedSince {
    changed_since: String,
    rows: usize,
}

/// The payload for a batch's changes; `None` when the batch changed nothing (no notification).
pub fn payload(changes: &[Change]) -> Option<String> {
    payload_within(changes, PAYLOAD_LIMIT)
}

fn payload_within(changes: &[Change], limit: usize) -> Option<String> {
    let since = changes.iter().map(|c| c.updated_at).min()?;
    let full = Changes {
        changes: changes
            .iter()
            .map(|c| Entry {
                global_uid: &c.global_uid,
                op: c.operation,
                rv: c.resource_version,
            })
            .collect(),
    };
    // Serialising plain strings and numbers cannot fail.
    let text = serde_json::to_string(&full).unwrap_or_default();
    if !text.is_empty() && text.len() < limit {
        return Some(text);
    }
    let marker = ChangedSince {
        changed_since: since.to_rfc3339_opts(SecondsFormat::Micros, true),
        rows: changes.len(),
    };
    Some(serde_json::to_string(&marker).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{json, Value};

    fn change(i: usize, op: Operation, rv: Option<i64>, secs: i64) -> Change {
        Change {
            global_uid: format!("cluster-a:0000-{i:04}"),
            operation: op,
            resource_version: rv,
            updated_at: Utc
                .timestamp_opt(1_700_000_000 + secs, 123_456_000)
                .unwrap(),
        }
    }

    #[test]
    fn nothing_changed_sends_nothing() {
        assert_eq!(payload(&[]), None);
    }

    #[test]
    fn a_small_batch_lists_every_row() {
        let changes = [
            change(1, Operation::Created, Some(10), 0),
            change(2, Operation::Updated, Some(11), 1),
            change(3, Operation::Deleted, None, 2),
        ];
        let text = payload(&changes).expect("payload");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            v,
            json!({"changes": [
                {"global_uid": "cluster-a:0000-0001", "op": "created", "rv": 10},
                {"global_uid": "cluster-a:0000-0002", "op": "updated", "rv": 11},
                {"global_uid": "cluster-a:0000-0003", "op": "deleted", "rv": null},
            ]})
        );
    }

    #[test]
    fn a_batch_past_the_limit_sends_the_oldest_updated_at_instead() {
        let changes: Vec<Change> = (0..200)
            .map(|i| change(i, Operation::Updated, Some(i as i64), 100 - (i as i64 % 50)))
            .collect();
        let text = payload(&changes).expect("payload");
        assert!(text.len() < PAYLOAD_LIMIT);
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            v,
            json!({"changed_since": "2023-11-14T22:14:11.123456Z", "rows": 200})
        );
    }

    #[test]
    fn the_limit_is_exclusive() {
        let changes = [change(1, Operation::Created, Some(1), 0)];
        let full = payload(&changes).expect("payload");
        assert!(payload_within(&changes, full.len() + 1)
            .expect("fits")
            .starts_with("{\"changes\""));
        assert!(payload_within(&changes, full.len())
            .expect("marker")
            .starts_with("{\"changed_since\""));
    }

    #[test]
    fn operations_round_trip_through_their_sql_names() {
        for op in [Operation::Created, Operation::Updated, Operation::Deleted] {
            let name = serde_json::to_value(op).expect("json");
            assert_eq!(Operation::parse(name.as_str().expect("text")), Some(op));
        }
        assert_eq!(Operation::parse("moved"), None);
    }
}
