//! Creates from JSON bytes, for bulk loads: the object is read only as far as a create needs (its
//! members and its metadata's, left unparsed) on the machine's cores outside the lock, and under
//! the lock the server's fields are written in and the members copied through, not re-serialized.
//!
//! The bytes must be JSON as serde_json writes a `Value` (compact, object keys sorted, no
//! escapes it would not write): then the stored object is byte for byte the one `create` stores
//! from the parsed `Value`. Anything this path does not handle itself (kinds with server-side
//! defaults, generated names, escaped keys or strings, unknown kinds, errors) goes through the
//! `Value` path, so the results do not depend on the path.

use super::history::EventType;
use super::{Inner, Obj, Store};
use crate::error::ApiError;
use crate::resources::ResourceDef;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

type RawMembers<'a> = BTreeMap<&'a str, &'a RawValue>;

/// An object's JSON read as far as a create needs.
struct Parsed<'a> {
    api_version: &'a str,
    kind: &'a str,
    /// Members other than apiVersion, kind and metadata.
    members: RawMembers<'a>,
    metadata: RawMembers<'a>,
    labels: Vec<(Box<str>, Box<str>)>,
}

/// A metadata member as written: the request's, or one the server sets (JSON text).
enum Member<'a> {
    Given(&'a RawValue),
    Set(String),
}

impl Member<'_> {
    fn text(&self) -> &str {
        match self {
            Member::Given(raw) => raw.get(),
            Member::Set(text) => text,
        }
    }
}

/// A JSON string without escapes, as a borrowed `&str`.
fn plain_str(raw: &RawValue) -> Option<&str> {
    serde_json::from_str(raw.get()).ok()
}

fn parse(src: &[u8]) -> Option<Parsed<'_>> {
    let mut members: RawMembers<'_> = serde_json::from_slice(src).ok()?;
    let api_version = plain_str(members.remove("apiVersion")?)?;
    let kind = plain_str(members.remove("kind")?)?;
    let metadata: RawMembers<'_> = serde_json::from_str(members.remove("metadata")?.get()).ok()?;
    let labels = match metadata.get("labels") {
        None => Vec::new(),
        Some(raw) => {
            let labels: RawMembers<'_> = serde_json::from_str(raw.get()).ok()?;
            let mut out = Vec::with_capacity(labels.len());
            for (k, v) in labels {
                out.push((Box::from(k), Box::from(plain_str(v)?)));
            }
            out
        }
    };
    Some(Parsed {
        api_version,
        kind,
        members,
        metadata,
        labels,
    })
}

impl Store {
    /// Creates objects given as JSON (see the module's note on the bytes) under one lock, each
    /// read on the machine's cores before the lock is taken; returns how many were created and
    /// the first error.
    pub fn create_many_json(&self, objs: &[Vec<u8>], preserve: bool) -> (usize, Option<ApiError>) {
        let parsed = crate::parallel::map_indexed(objs.len(), |k| parse(&objs[k]));
        self.write(|i| {
            let (mut n, mut first_err) = (0, None);
            for (src, p) in objs.iter().zip(&parsed) {
                let created = match p.as_ref().and_then(|p| i.create_parsed(p, preserve)) {
                    Some(r) => r,
                    None => serde_json::from_slice::<Value>(src)
                        .map_err(|e| ApiError::bad_request(e.to_string()))
                        .and_then(|v| i.def_for(&v).and_then(|d| i.create(&d, None, v, preserve))),
                };
                match created {
                    Ok(_) => n += 1,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            (n, first_err)
        })
    }
}

impl Inner {
    /// `create` of a parsed object; None when it is for the `Value` path.
    fn create_parsed(
        &mut self,
        p: &Parsed<'_>,
        preserve: bool,
    ) -> Option<Result<Arc<Obj>, ApiError>> {
        let def = self.registry.by_kind(p.api_version, p.kind)?;
        if has_kind_defaults(&def) {
            return None;
        }
        let mut meta: BTreeMap<&str, Member<'_>> = p
            .metadata
            .iter()
            .map(|(k, v)| (*k, Member::Given(v)))
            .collect();
        let namespace = if def.namespaced {
            let given = match p.metadata.get("namespace") {
                Some(raw) => plain_str(raw)?,
                None => "",
            };
            if given.is_empty() {
                meta.insert("namespace", Member::Set(json_string("default")));
                "default"
            } else {
                given
            }
        } else {
            meta.remove("namespace");
            ""
        };
        let name = plain_str(p.metadata.get("name")?)?;
        if name.is_empty() {
            return None;
        }
        if let Err(e) = super::crud::validate_name(&def, name) {
            return Some(Err(e));
        }
        if self.get(&def, namespace, name).is_some() {
            return Some(Err(ApiError::already_exists(&def.group, &def.plural, name)));
        }
        let rv = self.rv + 1;
        set_server_fields(&mut meta, &def, rv, preserve);
        let body = write_body(&p.members, &meta);
        let obj = Arc::new(Obj {
            ns: namespace.into(),
            name: name.into(),
            labels: p.labels.clone().into_boxed_slice(),
            rv,
            api_version: p.api_version.into(),
            kind: def.kind.as_str().into(),
            body: Bytes::from(body),
        });
        self.record(&def.key, EventType::Added, obj.clone());
        Some(Ok(obj))
    }
}

/// Kinds `Inner::kind_defaults` changes (their creates take the `Value` path).
fn has_kind_defaults(def: &ResourceDef) -> bool {
    matches!(
        (def.group.as_str(), def.kind.as_str()),
        ("", "Namespace") | ("", "Secret") | ("apiextensions.k8s.io", "CustomResourceDefinition")
    )
}

/// What `create` sets in metadata (uid, creationTimestamp, resourceVersion, generation) and what
/// the stored form leaves out (empty labels, annotations, finalizers, ownerReferences).
fn set_server_fields(
    meta: &mut BTreeMap<&str, Member<'_>>,
    def: &ResourceDef,
    rv: u64,
    preserve: bool,
) {
    if !preserve || !meta.contains_key("uid") {
        meta.insert(
            "uid",
            Member::Set(json_string(&uuid::Uuid::new_v4().to_string())),
        );
    }
    if !preserve || !meta.contains_key("creationTimestamp") {
        meta.insert(
            "creationTimestamp",
            Member::Set(json_string(&super::crud::now_rfc3339())),
        );
    }
    if !preserve {
        meta.remove("deletionTimestamp");
    }
    meta.insert("resourceVersion", Member::Set(json_string(&rv.to_string())));
    if !def.has_generation() {
        meta.remove("generation");
    } else if !preserve || !meta.contains_key("generation") {
        meta.insert("generation", Member::Set("1".into()));
    }
    meta.retain(|k, v| {
        !(matches!(
            *k,
            "labels" | "annotations" | "finalizers" | "ownerReferences"
        ) && matches!(v.text(), "null" | "{}" | "[]"))
    });
}

/// The stored body: the members in key order with the metadata, without apiVersion and kind, in
/// an allocation of its size (the store keeps it).
fn write_body(members: &RawMembers<'_>, meta: &BTreeMap<&str, Member<'_>>) -> Vec<u8> {
    // `"key":value` and a comma (or the closing brace) per member.
    let member_len = |k: &str, v: &str| k.len() + v.len() + 4;
    let len = 1
        + members
            .iter()
            .map(|(k, v)| member_len(k, v.get()))
            .sum::<usize>()
        + member_len("metadata", "{}")
        + meta
            .iter()
            .map(|(k, v)| member_len(k, v.text()))
            .sum::<usize>()
        - usize::from(!meta.is_empty());
    let mut out = Vec::with_capacity(len);
    let mut sep = b'{';
    let mut member = |out: &mut Vec<u8>, k: &str| {
        out.push(std::mem::replace(&mut sep, b','));
        // Keys parsed as borrowed strings have no escapes, and need none.
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":");
    };
    for (k, v) in members.range::<&str, _>(.."metadata") {
        member(&mut out, k);
        out.extend_from_slice(v.get().as_bytes());
    }
    member(&mut out, "metadata");
    for (n, (k, v)) in meta.iter().enumerate() {
        out.push(if n == 0 { b'{' } else { b',' });
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(v.text().as_bytes());
    }
    if meta.is_empty() {
        out.push(b'{');
    }
    out.push(b'}');
    for (k, v) in members.range::<&str, _>("metadata"..) {
        member(&mut out, k);
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    debug_assert_eq!(out.len(), len, "the body's size is computed exactly");
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn plain_objects_are_read_and_escaped_ones_left_to_the_value_path() {
        let pod = crate::workload::reference::PodGen::new(crate::workload::reference::Size::Small)
            .pod_json(3);
        let p = parse(&pod).expect("a reference pod takes the byte path");
        assert_eq!((p.api_version, p.kind), ("v1", "Pod"));
        assert_eq!(p.labels.len(), 4);
        assert!(p.members.contains_key("spec") && !p.members.contains_key("metadata"));
        let escaped =
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"labels":{"a":"b\"c"}}}"#;
        assert!(parse(escaped).is_none());
        assert!(parse(br#"{"kind":"ConfigMap","metadata":{"name":"a"}}"#).is_none());
    }
}
