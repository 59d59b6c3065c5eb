//! The field-policy settings as the operator writes them (`SENSITIVE_KINDS`, `PRUNE_FIELDS`):
//! parsed and bounded at start-up, with the paths that may never be pruned refused.

use std::fmt;
use std::str::FromStr;

use super::{MAX_PATH_DEPTH, MAX_PATH_LEN, MAX_PRUNE_ENTRIES, MAX_SENSITIVE_KINDS};

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
    pub(super) fn matches(&self, group: &str, kind: &str) -> bool {
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
