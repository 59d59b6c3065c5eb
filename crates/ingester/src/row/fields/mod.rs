//! Field policies: what of an object is not stored. Pure code, applied once per record in
//! `record::build_record_with`, so `raw`, `status_raw` and whatever is derived from a record
//! (history included) see the same text.
//!
//! - **Redaction** (`REDACT_SENSITIVE`, on by default): for the kinds of `SENSITIVE_KINDS`
//!   (default `/Secret`), every value of `data` and `stringData` and the
//!   `kubectl.kubernetes.io/last-applied-configuration` annotation (which repeats them) is
//!   replaced by [`REDACTED`]; the keys stay, so a portal still shows which keys a Secret has.
//! - **Pruning** (`PRUNE_FIELDS`): members named by dotted paths are dropped, for all kinds or
//!   per kind. `metadata.labels` is never droppable: the presenter filters on
//!   `raw->'metadata'->'labels'`.
//!
//! The object stays JSON text: only the objects on a path are split into members (as
//! `RawValue` slices); every other member is copied as text. Kinds no policy names are not
//! touched at all.
//!
//! The settings as written (settings.rs) become a plan per kind here ([`FieldPolicy`]); the
//! plan is applied to the text by the rewriter (rewrite.rs).

mod rewrite;
mod settings;
#[cfg(test)]
mod tests;

use std::ops::Range;

use rewrite::Rewriter;
pub use settings::{FieldPath, KindRef, PruneFields, SensitiveKinds};

/// What a redacted value is replaced with: a JSON string that is not valid base64 (`<`, `>`
/// and spaces), so it can never be mistaken for a Secret's value.
pub const REDACTED: &str = "<redacted by resources-ingester>";

/// The annotation `kubectl apply` writes: the whole applied object, Secret values included.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Bounds of `PRUNE_FIELDS` (checked at start-up).
pub const MAX_PRUNE_ENTRIES: usize = 64;
pub const MAX_PATH_DEPTH: usize = 32;
pub const MAX_PATH_LEN: usize = 512;
/// Bound of `SENSITIVE_KINDS`.
pub const MAX_SENSITIVE_KINDS: usize = 64;

/// What happens at a node of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Go on into the children.
    Descend,
    /// Drop the member.
    Drop,
    /// Replace the value with [`REDACTED`].
    Redact,
    /// Keep the object's keys, replace each value with [`REDACTED`].
    RedactMembers,
}

/// A trie of member names: the plan for one kind.
#[derive(Clone, Debug)]
struct Node {
    action: Action,
    children: Vec<(String, Node)>,
}

impl Node {
    fn root() -> Node {
        Node {
            action: Action::Descend,
            children: Vec::new(),
        }
    }

    fn child(&self, key: &str) -> Option<&Node> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    /// Adds `action` at `path`; a drop wins over anything at or below it.
    fn insert(&mut self, path: &[String], action: Action) {
        if self.action == Action::Drop {
            return;
        }
        let Some((first, rest)) = path.split_first() else {
            if action == Action::Drop {
                self.children.clear();
            }
            if self.action == Action::Descend || action == Action::Drop {
                self.action = action;
            }
            return;
        };
        let i = match self.children.iter().position(|(k, _)| k == first) {
            Some(i) => i,
            None => {
                self.children.push((first.clone(), Node::root()));
                self.children.len() - 1
            }
        };
        self.children[i].1.insert(rest, action);
    }
}

/// The field policy of a deployment: a plan per kind, built once at start-up.
#[derive(Clone, Debug)]
pub struct FieldPolicy {
    redact: bool,
    /// Plans of the kinds that have their own (sensitive or per-kind pruning).
    kinds: Vec<(KindRef, Node)>,
    /// Plan of every other kind (`None`: nothing to do).
    others: Option<Node>,
}

impl Default for FieldPolicy {
    /// Redaction of Secrets, no pruning.
    fn default() -> Self {
        FieldPolicy::new(true, &SensitiveKinds::default(), &PruneFields::default())
    }
}

impl FieldPolicy {
    pub fn new(redact: bool, sensitive: &SensitiveKinds, prune: &PruneFields) -> FieldPolicy {
        let mut global = Node::root();
        for p in &prune.all {
            global.insert(&p.0, Action::Drop);
        }
        let mut named: Vec<KindRef> = prune.by_kind.iter().map(|(k, _)| k.clone()).collect();
        if redact {
            named.extend(sensitive.0.iter().cloned());
        }
        let mut kinds: Vec<(KindRef, Node)> = Vec::new();
        for k in named {
            if kinds.iter().any(|(x, _)| *x == k) {
                continue;
            }
            let mut plan = global.clone();
            for (_, p) in prune.by_kind.iter().filter(|(x, _)| *x == k) {
                plan.insert(&p.0, Action::Drop);
            }
            if redact && sensitive.0.contains(&k) {
                for member in ["data", "stringData"] {
                    plan.insert(&[member.to_owned()], Action::RedactMembers);
                }
                plan.insert(
                    &[
                        "metadata".to_owned(),
                        "annotations".to_owned(),
                        LAST_APPLIED.to_owned(),
                    ],
                    Action::Redact,
                );
            }
            kinds.push((k, plan));
        }
        FieldPolicy {
            redact,
            kinds,
            others: (!global.children.is_empty()).then_some(global),
        }
    }

    pub fn redacts(&self) -> bool {
        self.redact
    }

    fn plan(&self, group: &str, kind: &str) -> Option<&Node> {
        match self.kinds.iter().find(|(k, _)| k.matches(group, kind)) {
            Some((_, plan)) => Some(plan),
            None => self.others.as_ref(),
        }
    }

    /// Applies the policy of `group`/`kind` to an object's JSON text. `None` when nothing
    /// was redacted or pruned (the text is then stored as it came).
    pub fn apply(&self, group: &str, kind: &str, json: &str) -> Option<Applied> {
        let plan = self.plan(group, kind)?;
        let mut w = Rewriter {
            out: Vec::with_capacity(json.len()),
            redacted: 0,
            pruned_bytes: 0,
            status: None,
        };
        if !w.object(json, plan, true).ok()? || (w.redacted == 0 && w.pruned_bytes == 0) {
            return None;
        }
        // Only valid UTF-8 was written: slices of `json` and serde_json's string encoding.
        let json = String::from_utf8(w.out).ok()?;
        Some(Applied {
            json,
            status: w.status,
            redacted: w.redacted,
            pruned_bytes: w.pruned_bytes,
        })
    }
}

/// An object after its policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub json: String,
    /// Byte range of the top-level `status` value inside `json`.
    pub status: Option<Range<usize>>,
    /// Values replaced by [`REDACTED`].
    pub redacted: u64,
    /// Bytes of the dropped members (`"key":value`).
    pub pruned_bytes: u64,
}
