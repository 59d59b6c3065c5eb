//! The stored form of an object: its JSON pre-serialized without `apiVersion` and `kind`, with
//! the fields lists and selectors need (key, labels, revision) kept beside it.

use crate::error::ApiError;
use crate::selector::{FieldSelector, LabelSelector};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::sync::Arc;

/// (namespace or "" for cluster-scoped, name): the order lists are served in.
pub(crate) type Key = (Arc<str>, Arc<str>);

/// A stored object. `body` is the object's JSON without `apiVersion` and `kind`, so any served
/// version can be prefixed cheaply when a list or event is written.
#[derive(Debug)]
pub(crate) struct Obj {
    pub ns: Arc<str>,
    pub name: Arc<str>,
    pub labels: Box<[(Box<str>, Box<str>)]>,
    pub rv: u64,
    pub api_version: Arc<str>,
    pub kind: Arc<str>,
    pub body: Bytes,
}

impl Obj {
    pub fn key(&self) -> Key {
        (self.ns.clone(), self.name.clone())
    }

    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(lk, _)| &**lk == k)
            .map(|(_, v)| &**v)
    }

    /// Appends the object's JSON with `apiVersion` (the served one, or the stored one) and `kind`.
    pub fn render_into(&self, out: &mut Vec<u8>, api_version: Option<&str>) {
        let av = api_version.unwrap_or(&self.api_version);
        out.extend_from_slice(b"{\"apiVersion\":");
        // apiVersion and kind come from validated tables, but escaping keeps the output JSON.
        let _ = serde_json::to_writer(&mut *out, av);
        out.extend_from_slice(b",\"kind\":");
        let _ = serde_json::to_writer(&mut *out, &*self.kind);
        if self.body.len() > 2 {
            out.push(b',');
            out.extend_from_slice(&self.body[1..]);
        } else {
            out.push(b'}');
        }
    }

    pub fn to_value(&self) -> Value {
        let mut out = Vec::with_capacity(self.body.len() + 64);
        self.render_into(&mut out, None);
        serde_json::from_slice(&out).unwrap_or(Value::Null)
    }

    /// The object as a JSON value without apiVersion/kind, for read-modify-write paths.
    pub(super) fn body_value(&self) -> Map<String, Value> {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The object as a JSON value with its stored apiVersion and kind and `resourceVersion`
    /// set to `rv`: the start of a write that keeps everything else.
    pub(super) fn value_at(&self, rv: u64) -> Map<String, Value> {
        let mut m = self.body_value();
        m["metadata"]["resourceVersion"] = rv.to_string().into();
        m.insert("apiVersion".into(), self.api_version.to_string().into());
        m.insert("kind".into(), self.kind.to_string().into());
        m
    }

    pub fn matches(&self, labels: &LabelSelector, fields: &FieldSelector) -> bool {
        (fields.is_empty() || fields.matches(&self.name, &self.ns))
            && (labels.is_empty() || labels.matches(|k| self.label(k)))
    }
}

/// Encodes a full object (with apiVersion/kind) into its stored form.
pub(super) fn encode(mut v: Map<String, Value>) -> Result<Obj, ApiError> {
    let api_version = match v.remove("apiVersion") {
        Some(Value::String(s)) => s,
        _ => return Err(ApiError::bad_request("Object 'apiVersion' is missing")),
    };
    let kind = match v.remove("kind") {
        Some(Value::String(s)) => s,
        _ => return Err(ApiError::bad_request("Object 'Kind' is missing")),
    };
    if let Some(Value::Object(meta)) = v.get_mut("metadata") {
        // empty maps and lists are left out, as Go's `omitempty` does on the real server
        meta.retain(|k, x| {
            !(matches!(
                k.as_str(),
                "labels" | "annotations" | "finalizers" | "ownerReferences"
            ) && match x {
                Value::Null => true,
                Value::Object(m) => m.is_empty(),
                Value::Array(a) => a.is_empty(),
                _ => false,
            })
        });
    }
    let meta = &v["metadata"];
    let s = |x: &Value| x.as_str().unwrap_or_default().to_string();
    let mut labels: Vec<(Box<str>, Box<str>)> = meta["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().unwrap_or_default().into()))
                .collect()
        })
        .unwrap_or_default();
    labels.sort();
    let rv = meta["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let ns: Arc<str> = s(&meta["namespace"]).into();
    let name: Arc<str> = s(&meta["name"]).into();
    let body = serde_json::to_vec(&v).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Obj {
        ns,
        name,
        labels: labels.into_boxed_slice(),
        rv,
        api_version: api_version.into(),
        kind: kind.into(),
        body: exact(body),
    })
}

/// The bytes in an allocation of their size: a serialized Vec's capacity runs up to twice its
/// length, and the store keeps a million of them.
fn exact(body: Vec<u8>) -> Bytes {
    if body.capacity() > body.len() {
        Bytes::copy_from_slice(&body)
    } else {
        Bytes::from(body)
    }
}
