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

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

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

/// A kind by API group and Kind: `apps/Deployment`, `/Secret` (core group: empty before `/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KindRef {
    pub group: String,
    pub kind: String,
}

impl KindRef {
    pub fn new(group: &str, kind: &str) -> Self {
        KindRef {
            group: group.to_owned(),
            kind: kind.to_owned(),
        }
    }

    /// Kinds are matched without regard to case: a routes line `/v1/secrets/secret` names
    /// the same kind as the server's `Secret`.
    fn matches(&self, group: &str, kind: &str) -> bool {
        self.group == group && self.kind.eq_ignore_ascii_case(kind)
    }
}

impl fmt::Display for KindRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.kind)
    }
}

impl FromStr for KindRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let Some((group, kind)) = s.split_once('/') else {
            return Err(format!(
                "{s:?}: expected GROUP/Kind, e.g. apps/Deployment or /Secret (core group)"
            ));
        };
        let valid_group = group
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        let valid_kind = kind.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && kind.chars().all(|c| c.is_ascii_alphanumeric());
        if !valid_group || !valid_kind {
            return Err(format!(
                "{s:?}: expected GROUP/Kind, e.g. apps/Deployment or /Secret (core group)"
            ));
        }
        Ok(KindRef::new(group, kind))
    }
}

/// A dotted path to an object member: `metadata.managedFields`. A `.` inside a key is
/// written `\.` (`metadata.annotations.example\.com/note`). An array met on the way applies
/// the rest of the path to each of its elements (`spec.containers.env`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath(pub Vec<String>);

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let escaped: Vec<String> = self
            .0
            .iter()
            .map(|s| s.replace('\\', "\\\\").replace('.', "\\."))
            .collect();
        f.write_str(&escaped.join("."))
    }
}

impl FromStr for FieldPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() > MAX_PATH_LEN {
            return Err(format!(
                "path longer than {MAX_PATH_LEN} characters: {:?}…",
                s.chars().take(40).collect::<String>()
            ));
        }
        let mut segments = Vec::new();
        let mut current = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(next @ ('.' | '\\')) => current.push(next),
                    _ => return Err(format!("{s:?}: `\\` must be followed by `.` or `\\`")),
                },
                '.' => segments.push(std::mem::take(&mut current)),
                c => current.push(c),
            }
        }
        segments.push(current);
        if segments.iter().any(String::is_empty) {
            return Err(format!(
                "{s:?}: empty path segment (expected dotted keys such as metadata.managedFields)"
            ));
        }
        if segments.len() > MAX_PATH_DEPTH {
            return Err(format!("{s:?}: deeper than {MAX_PATH_DEPTH} keys"));
        }
        let path = FieldPath(segments);
        path.check_droppable()?;
        Ok(path)
    }
}

impl FieldPath {
    /// Refuses paths whose removal would break readers of the table.
    fn check_droppable(&self) -> Result<(), String> {
        let p: Vec<&str> = self.0.iter().map(String::as_str).collect();
        match p.as_slice() {
            ["metadata"] | ["metadata", "labels", ..] => Err(format!(
                "{self}: drops metadata.labels, which is never pruned: the presenter filters on raw->'metadata'->'labels'"
            )),
            ["apiVersion" | "kind"] | ["metadata", "name" | "namespace" | "uid" | "resourceVersion"] => Err(format!(
                "{self} is part of the object's identity and is never pruned"
            )),
            _ => Ok(()),
        }
    }
}

/// `SENSITIVE_KINDS`: comma-separated `GROUP/Kind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensitiveKinds(pub Vec<KindRef>);

impl Default for SensitiveKinds {
    fn default() -> Self {
        SensitiveKinds(vec![KindRef::new("", "Secret")])
    }
}

impl fmt::Display for SensitiveKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&kinds.join(","))
    }
}

impl FromStr for SensitiveKinds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut kinds: Vec<KindRef> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let k: KindRef = item.parse()?;
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        if kinds.len() > MAX_SENSITIVE_KINDS {
            return Err(format!("more than {MAX_SENSITIVE_KINDS} kinds"));
        }
        Ok(SensitiveKinds(kinds))
    }
}

/// `PRUNE_FIELDS`: comma-separated entries, each `PATH` (every kind) or `GROUP/Kind:PATH`
/// (that kind only), e.g. `metadata.managedFields,apps/Deployment:spec.template.metadata.annotations`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneFields {
    pub all: Vec<FieldPath>,
    pub by_kind: Vec<(KindRef, FieldPath)>,
}

impl PruneFields {
    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.by_kind.is_empty()
    }
}

impl fmt::Display for PruneFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = self.all.iter().map(ToString::to_string);
        let by_kind = self.by_kind.iter().map(|(k, p)| format!("{k}:{p}"));
        f.write_str(&all.chain(by_kind).collect::<Vec<_>>().join(","))
    }
}

impl FromStr for PruneFields {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = PruneFields::default();
        let entries: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.len() > MAX_PRUNE_ENTRIES {
            return Err(format!(
                "{} entries; at most {MAX_PRUNE_ENTRIES}",
                entries.len()
            ));
        }
        for entry in entries {
            match entry.split_once(':') {
                Some((kind, path)) => out.by_kind.push((kind.parse()?, path.parse()?)),
                None => out.all.push(entry.parse()?),
            }
        }
        Ok(out)
    }
}

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

struct Rewriter {
    out: Vec<u8>,
    redacted: u64,
    pruned_bytes: u64,
    status: Option<Range<usize>>,
}

fn first_byte(v: &RawValue) -> u8 {
    v.get().bytes().next().unwrap_or(b'n')
}

impl Rewriter {
    /// Writes the object `text` with `node`'s children applied; `Ok(false)` when `text` is
    /// not an object.
    fn object(&mut self, text: &str, node: &Node, top: bool) -> serde_json::Result<bool> {
        if text.trim_start().as_bytes().first() != Some(&b'{') {
            return Ok(false);
        }
        self.members(text, node, |w, key, value, child| {
            let start = w.out.len();
            match child {
                None => w.out.extend_from_slice(value.get().as_bytes()),
                Some(c) => w.value(value, c)?,
            }
            if top && key == "status" {
                w.status = Some(start..w.out.len());
            }
            Ok(())
        })?;
        Ok(true)
    }

    /// Writes the object `text` member by member: a member whose node says `Drop` is left out
    /// (and counted), every other is written by `write` after its key.
    fn members(
        &mut self,
        text: &str,
        node: &Node,
        mut write: impl FnMut(&mut Self, &str, &RawValue, Option<&Node>) -> serde_json::Result<()>,
    ) -> serde_json::Result<()> {
        let members: Members<'_> = serde_json::from_str(text)?;
        self.out.push(b'{');
        let mut first = true;
        for (key, value) in &members.0 {
            let child = node.child(key);
            if child.is_some_and(|c| c.action == Action::Drop) {
                self.pruned_bytes += (key.len() + 3 + value.get().len()) as u64;
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut self.out, key.as_ref())?;
            self.out.push(b':');
            write(self, key, value, child)?;
        }
        self.out.push(b'}');
        Ok(())
    }

    fn value(&mut self, v: &RawValue, node: &Node) -> serde_json::Result<()> {
        match node.action {
            // The member loop never descends into a dropped member.
            Action::Drop => Ok(()),
            Action::Redact => self.redact(v),
            // A pruned key of a redacted object (`/Secret:data.tls\.key`) goes.
            Action::RedactMembers if first_byte(v) == b'{' => {
                self.members(v.get(), node, |w, _, value, _| w.redact(value))
            }
            Action::RedactMembers => self.redact(v),
            Action::Descend => match first_byte(v) {
                b'{' => self.object(v.get(), node, false).map(|_| ()),
                b'[' => {
                    let items: Vec<&RawValue> = serde_json::from_str(v.get())?;
                    self.out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            self.out.push(b',');
                        }
                        self.value(item, node)?;
                    }
                    self.out.push(b']');
                    Ok(())
                }
                _ => {
                    self.out.extend_from_slice(v.get().as_bytes());
                    Ok(())
                }
            },
        }
    }

    /// Replaces a value with the marker; `null` stays (it holds nothing).
    fn redact(&mut self, v: &RawValue) -> serde_json::Result<()> {
        if v.get() == "null" {
            self.out.extend_from_slice(b"null");
        } else {
            serde_json::to_writer(&mut self.out, REDACTED)?;
            self.redacted += 1;
        }
        Ok(())
    }
}

/// An object's members in order, each value as its JSON text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// A key borrowed from the text when it has no escapes.
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    members.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn prune(spec: &str) -> FieldPolicy {
        FieldPolicy::new(
            true,
            &SensitiveKinds::default(),
            &spec.parse().expect("valid PRUNE_FIELDS"),
        )
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).expect("valid JSON")
    }

    const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"app":"x"},"managedFields":[{"manager":"kubectl","fieldsV1":{"f:metadata":{}}}],"annotations":{"a":"b"}},"spec":{"containers":[{"name":"c","env":[{"name":"A","value":"1"}]},{"name":"d"},"not-an-object"]},"status":{"phase":"Running","podIP":"10.0.0.1"}}"#;

    #[test]
    fn a_nested_path_is_dropped_and_the_rest_kept_as_text() {
        let a = prune("metadata.managedFields")
            .apply("", "Pod", POD)
            .expect("changed");
        let mut want = parse(POD);
        want["metadata"]
            .as_object_mut()
            .expect("object")
            .remove("managedFields");
        assert_eq!(parse(&a.json), want);
        // Members off the path are copied byte for byte.
        assert!(a.json.contains(
            r#""spec":{"containers":[{"name":"c","env":[{"name":"A","value":"1"}]},{"name":"d"},"not-an-object"]}"#
        ));
        let dropped = r#""managedFields":[{"manager":"kubectl","fieldsV1":{"f:metadata":{}}}]"#;
        assert_eq!(a.pruned_bytes, dropped.len() as u64);
        assert_eq!(a.json.len() + dropped.len() + 1, POD.len(), "and one comma");
        assert_eq!(a.redacted, 0);
        assert_eq!(
            &a.json[a.status.clone().expect("status")],
            r#"{"phase":"Running","podIP":"10.0.0.1"}"#
        );
    }

    #[test]
    fn an_absent_path_changes_nothing() {
        let p = prune("metadata.ownerReferences,spec.nodeSelector.zone,nothing.here");
        assert_eq!(p.apply("", "Pod", POD), None);
        assert_eq!(prune("").apply("", "Pod", POD), None);
    }

    #[test]
    fn arrays_apply_the_rest_of_the_path_to_each_element() {
        let a = prune("spec.containers.env")
            .apply("", "Pod", POD)
            .expect("changed");
        let v = parse(&a.json);
        assert_eq!(
            v["spec"]["containers"],
            json!([{"name": "c"}, {"name": "d"}, "not-an-object"])
        );
    }

    #[test]
    fn the_status_range_follows_a_rewrite_inside_and_before_it() {
        let a = prune("status.podIP,metadata.annotations")
            .apply("", "Pod", POD)
            .expect("changed");
        assert_eq!(
            &a.json[a.status.clone().expect("status")],
            r#"{"phase":"Running"}"#
        );
        let a = prune("status").apply("", "Pod", POD).expect("changed");
        assert_eq!(a.status, None);
        assert!(parse(&a.json).get("status").is_none());
    }

    #[test]
    fn per_kind_paths_apply_to_that_kind_only() {
        let p = prune("apps/Deployment:spec.template.metadata.annotations,/Pod:spec");
        let deploy = r#"{"kind":"Deployment","metadata":{"name":"d","labels":{"l":"1"}},"spec":{"replicas":2,"template":{"metadata":{"annotations":{"x":"y"},"labels":{"l":"1"}}}}}"#;
        let a = p.apply("apps", "Deployment", deploy).expect("changed");
        assert_eq!(
            parse(&a.json)["spec"],
            json!({"replicas": 2, "template": {"metadata": {"labels": {"l": "1"}}}})
        );
        assert_eq!(p.apply("apps", "StatefulSet", deploy), None);
        let a = p.apply("", "Pod", POD).expect("changed");
        assert!(parse(&a.json).get("spec").is_none());
        assert_eq!(
            p.apply("other.io", "Pod", POD),
            None,
            "a group is part of a kind"
        );
    }

    #[test]
    fn keys_and_values_with_escapes_and_unicode_survive() {
        let text = r#"{"metadata":{"name":"n","annotations":{"é\"q":"line\nbreak \u00e9 \ud83d\ude00 \\ end","example.com/x":"y"},"managedFields":[]},"ünï":"\u2028"}"#;
        let a = prune(r"metadata.managedFields,metadata.annotations.example\.com/x")
            .apply("", "Pod", text)
            .expect("changed");
        let mut want = parse(text);
        let meta = want["metadata"].as_object_mut().expect("object");
        meta.remove("managedFields");
        meta["annotations"]
            .as_object_mut()
            .expect("object")
            .remove("example.com/x");
        assert_eq!(parse(&a.json), want);
        // A value off the path keeps its escapes as written.
        assert!(a.json.contains(r#""ünï":"\u2028""#));
        // A key escaped in the source matches its decoded name.
        let a = prune("metadata.annotations.é\"q")
            .apply("", "Pod", text)
            .expect("changed");
        assert!(parse(&a.json)["metadata"]["annotations"]
            .get("é\"q")
            .is_none());
    }

    fn secret(extra: &str) -> String {
        let last_applied = json!({"apiVersion":"v1","kind":"Secret","data":{"password":"czNjcjN0"},"stringData":{"token":"plain-token"}}).to_string();
        format!(
            r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"s","labels":{{"app":"x"}},"annotations":{{"keep":"me",{}:{}}}}},"type":"Opaque"{extra}}}"#,
            serde_json::to_string(LAST_APPLIED).expect("json"),
            serde_json::to_string(&last_applied).expect("json"),
        )
    }

    #[test]
    fn secrets_keep_their_keys_and_lose_their_values() {
        let text = secret(
            r#","data":{"password":"czNjcjN0","empty":"","nul":null},"stringData":{"token":"plain-token"}"#,
        );
        let a = FieldPolicy::default()
            .apply("", "Secret", &text)
            .expect("changed");
        let v = parse(&a.json);
        assert_eq!(
            v["data"],
            json!({"password": REDACTED, "empty": REDACTED, "nul": null})
        );
        assert_eq!(v["stringData"], json!({"token": REDACTED}));
        assert_eq!(v["metadata"]["annotations"][LAST_APPLIED], json!(REDACTED));
        assert_eq!(v["metadata"]["annotations"]["keep"], "me");
        assert_eq!(v["metadata"]["labels"], json!({"app": "x"}));
        assert_eq!(v["type"], "Opaque");
        assert_eq!(a.redacted, 4);
        for secret in ["czNjcjN0", "plain-token", "s3cr3t"] {
            assert!(!a.json.contains(secret), "{secret} in {}", a.json);
        }
    }

    #[test]
    fn a_secret_without_data_loses_only_the_annotation() {
        let a = FieldPolicy::default()
            .apply("", "Secret", &secret(""))
            .expect("changed");
        assert_eq!(a.redacted, 1);
        assert!(parse(&a.json).get("data").is_none());
        let bare = r#"{"kind":"Secret","metadata":{"name":"s"},"type":"Opaque"}"#;
        assert_eq!(FieldPolicy::default().apply("", "Secret", bare), None);
        let null_data = r#"{"kind":"Secret","metadata":{"name":"s"},"data":null}"#;
        assert_eq!(FieldPolicy::default().apply("", "Secret", null_data), None);
    }

    #[test]
    fn redaction_off_and_other_kinds_leave_secrets_alone() {
        let text = secret(r#","data":{"password":"czNjcjN0"}"#);
        let off = FieldPolicy::new(false, &SensitiveKinds::default(), &PruneFields::default());
        assert_eq!(off.apply("", "Secret", &text), None);
        assert_eq!(FieldPolicy::default().apply("", "ConfigMap", &text), None);
        let custom = FieldPolicy::new(
            true,
            &"example.io/Credential".parse().expect("valid"),
            &PruneFields::default(),
        );
        assert!(custom.apply("example.io", "Credential", &text).is_some());
        assert_eq!(custom.apply("", "Secret", &text), None);
    }

    #[test]
    fn a_secret_is_redacted_and_pruned_together() {
        let text = secret(r#","data":{"password":"czNjcjN0"}"#);
        let p = prune("metadata.annotations");
        let a = p.apply("", "Secret", &text).expect("changed");
        let v = parse(&a.json);
        assert!(v["metadata"].get("annotations").is_none(), "drop wins");
        assert_eq!(v["data"]["password"], REDACTED);
        assert_eq!(a.redacted, 1);
        assert!(a.pruned_bytes > 0);
    }

    #[test]
    fn a_pruned_key_of_a_redacted_object_is_dropped() {
        let text = secret(r#","data":{"password":"czNjcjN0","ca.crt":"Y2E="}"#);
        let a = prune(r"/Secret:data.ca\.crt")
            .apply("", "Secret", &text)
            .expect("changed");
        assert_eq!(parse(&a.json)["data"], json!({"password": REDACTED}));
        assert_eq!(a.pruned_bytes, r#""ca.crt":"Y2E=""#.len() as u64);
    }

    #[test]
    fn labels_and_identity_are_never_prunable() {
        for bad in [
            "metadata.labels",
            "metadata",
            "metadata.labels.app",
            "apps/Deployment:metadata.labels",
            "metadata.name",
            "metadata.uid",
            "kind",
        ] {
            let e = bad
                .parse::<PruneFields>()
                .expect_err(&format!("{bad} must be refused"));
            assert!(e.contains("never pruned"), "{bad}: {e} should say why");
        }
        let e = "metadata.labels"
            .parse::<PruneFields>()
            .expect_err("refused");
        assert!(e.contains("raw->'metadata'->'labels'"), "{e}");
        // Labels of a template are not the object's labels.
        "spec.template.metadata.labels"
            .parse::<PruneFields>()
            .expect("allowed");
    }

    #[test]
    fn malformed_settings_are_refused() {
        for bad in [
            "metadata..managedFields",
            ".x",
            "x.",
            "Deployment:spec",
            "apps/:spec",
            "apps/Deploy ment:spec",
            r"a\b",
        ] {
            assert!(bad.parse::<PruneFields>().is_err(), "{bad}");
        }
        let many = vec!["a"; MAX_PRUNE_ENTRIES + 1].join(",");
        assert!(many.parse::<PruneFields>().is_err());
        let deep = vec!["a"; MAX_PATH_DEPTH + 1].join(".");
        assert!(deep.parse::<PruneFields>().is_err());
        assert!("Secret".parse::<SensitiveKinds>().is_err());
        assert_eq!(
            " /Secret, example.io/Token ,/Secret"
                .parse::<SensitiveKinds>()
                .expect("valid")
                .0,
            vec![
                KindRef::new("", "Secret"),
                KindRef::new("example.io", "Token")
            ]
        );
        assert!("".parse::<SensitiveKinds>().expect("valid").0.is_empty());
        let p: PruneFields = r"metadata.managedFields, apps/Deployment:metadata.annotations.a\.b"
            .parse()
            .expect("valid");
        assert_eq!(
            p.all,
            vec![FieldPath(vec!["metadata".into(), "managedFields".into()])]
        );
        assert_eq!(
            p.by_kind,
            vec![(
                KindRef::new("apps", "Deployment"),
                FieldPath(vec!["metadata".into(), "annotations".into(), "a.b".into()])
            )]
        );
    }

    #[test]
    fn settings_print_as_they_parse() {
        let text = r"metadata.managedFields,metadata.annotations.a\.b\\c,apps/Deployment:spec";
        let p: PruneFields = text.parse().expect("valid");
        assert_eq!(p.all[1].0[2], r"a.b\c");
        assert_eq!(p.to_string(), text);
        assert_eq!(p.to_string().parse::<PruneFields>(), Ok(p));
        assert_eq!(SensitiveKinds::default().to_string(), "/Secret");
    }

    #[test]
    fn text_that_is_not_an_object_is_left_alone() {
        let p = prune("metadata.managedFields");
        assert_eq!(p.apply("", "Pod", "[1,2]"), None);
        assert_eq!(p.apply("", "Pod", "{not json"), None);
    }
}
