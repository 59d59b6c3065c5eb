//! `RawObject`: a watched object kept as the JSON text the API server sent, plus the handful
//! of metadata fields the pipeline needs. No `serde_json::Value` tree is ever built for an
//! object, and nothing but this one event's object is held: the table is the memory.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, DynamicResourceScope, Resource};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The label carrying a Krateo composition id.
pub const COMPOSITION_LABEL: &str = "krateo.io/composition-id";

/// A Kubernetes object as JSON text with its identity fields parsed out.
#[derive(Clone)]
pub struct RawObject {
    /// Only `name`, `namespace`, `uid` and `resourceVersion` are filled: enough for
    /// kube-runtime's watcher (bookmarks) and for logging.
    pub metadata: ObjectMeta,
    pub creation_timestamp: Option<String>,
    pub deletion_timestamp: Option<String>,
    /// The raw value of the `krateo.io/composition-id` label, if any.
    pub composition_label: Option<String>,
    /// `apiVersion` as served (differs from the route's when a CRD version is switched).
    pub api_version: Option<String>,
    /// Byte range of `kind`'s text inside `json` (what field policies match: a routes file
    /// may spell the kind otherwise); a range, so no allocation per object.
    kind: Option<Range<usize>>,
    /// The full object as compact JSON.
    pub json: String,
    /// Byte range of the `.status` value inside `json`.
    pub status: Option<Range<usize>>,
}

impl RawObject {
    /// Parses an object from its JSON text.
    pub fn from_json(json: String) -> Result<Self, serde_json::Error> {
        let env: Envelope<'_> = serde_json::from_str(&json)?;
        let status = env.status.map(|s| {
            // `s` borrows from `json`, so its offset is plain pointer arithmetic.
            let start = s.get().as_ptr() as usize - json.as_ptr() as usize;
            start..start + s.get().len()
        });
        // `kind` borrows from `json` too: the range of its text between the quotes (a kind
        // with an escape in it, which no real kind has, is not matched).
        let kind = env.kind.and_then(|k| {
            let text = k.get();
            let inner = text.strip_prefix('"')?.strip_suffix('"')?;
            if inner.contains('\\') {
                return None;
            }
            let start = inner.as_ptr() as usize - json.as_ptr() as usize;
            Some(start..start + inner.len())
        });
        let meta = env.metadata;
        let metadata = ObjectMeta {
            name: meta.name.map(Cow::into_owned),
            namespace: meta.namespace.map(Cow::into_owned),
            uid: meta.uid.map(Cow::into_owned),
            resource_version: meta.resource_version.map(Cow::into_owned),
            ..ObjectMeta::default()
        };
        Ok(Self {
            metadata,
            creation_timestamp: meta.creation_timestamp.map(Cow::into_owned),
            deletion_timestamp: meta.deletion_timestamp.map(Cow::into_owned),
            composition_label: meta.labels.0,
            api_version: env.api_version.map(Cow::into_owned),
            kind,
            status,
            json,
        })
    }

    /// Puts `apiVersion` and `kind` in front of the object's members, for a list item that
    /// came without them (a real API server's lists of built-in kinds carry them on the list
    /// only). A member of the object with the same name wins (jsonb keeps the last one).
    pub fn set_type_meta(&mut self, api_version: &str, kind: &str) {
        let Some(body) = self.json.strip_prefix('{') else {
            return;
        };
        let head = serde_json::json!({ "apiVersion": api_version, "kind": kind }).to_string();
        let head = &head[..head.len() - 1];
        let sep = if body.trim_start().starts_with('}') {
            ""
        } else {
            ","
        };
        if let Ok(obj) = RawObject::from_json(format!("{head}{sep}{body}")) {
            *self = obj;
        }
    }

    /// Replaces the text after a field policy rewrote it (identity fields are never
    /// touched): the status range is the policy's; `kind`, read to choose the policy, is not
    /// looked up again (`kind()` answers `None` from then on).
    pub fn set_text(&mut self, json: String, status: Option<Range<usize>>) {
        self.json = json;
        self.status = status;
        self.kind = None;
    }

    /// `kind` as the server sent it.
    pub fn kind(&self) -> Option<&str> {
        self.kind.clone().and_then(|r| self.json.get(r))
    }

    pub fn status_json(&self) -> Option<&str> {
        self.status.clone().and_then(|r| self.json.get(r))
    }

    pub fn uid(&self) -> Option<&str> {
        self.metadata.uid.as_deref()
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }

    /// `metadata.resourceVersion` as an integer, when it is one (it is opaque by contract;
    /// etcd-backed servers use the revision number, which orders changes).
    pub fn resource_version_number(&self) -> Option<i64> {
        self.resource_version().and_then(|rv| rv.parse().ok())
    }
}

impl fmt::Debug for RawObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never dump the object: it may be megabytes, and Secrets-like data must not reach logs.
        f.debug_struct("RawObject")
            .field("namespace", &self.metadata.namespace)
            .field("name", &self.metadata.name)
            .field("uid", &self.metadata.uid)
            .field("resourceVersion", &self.metadata.resource_version)
            .field("bytes", &self.json.len())
            .finish()
    }
}

impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, rename = "apiVersion", default)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: SlimMeta<'a>,
    #[serde(borrow, default)]
    status: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SlimMeta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    creation_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    deletion_timestamp: Option<Cow<'a, str>>,
    #[serde(default)]
    labels: CompositionLabel,
}

/// Keeps only the composition label out of `metadata.labels`, skipping the rest unparsed.
#[derive(Default)]
struct CompositionLabel(Option<String>);

impl<'de> Deserialize<'de> for CompositionLabel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CompositionLabel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of labels")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(CompositionLabel(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(CompositionLabel(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == COMPOSITION_LABEL {
                        found = map.next_value::<Option<String>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(CompositionLabel(found))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_item_without_type_meta_gets_the_routes() {
        let item = r#"{"metadata":{"name":"p","uid":"u","resourceVersion":"7"},"status":{"phase":"Running"}}"#;
        let mut obj = RawObject::from_json(item.to_owned()).expect("json");
        assert_eq!(obj.api_version, None);
        obj.set_type_meta("apps/v1", "Deployment");
        let v: serde_json::Value = serde_json::from_str(&obj.json).expect("json");
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["kind"], "Deployment");
        assert_eq!(v["metadata"]["name"], "p");
        assert_eq!(obj.status_json(), Some(r#"{"phase":"Running"}"#));
        assert_eq!(obj.api_version.as_deref(), Some("apps/v1"));
        assert_eq!(obj.kind(), Some("Deployment"));
    }

    const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"ns","uid":"u-1","resourceVersion":"42","creationTimestamp":"2024-01-02T03:04:05Z","labels":{"a":"b","krateo.io/composition-id":"0f9e2c4c-3c1d-4b8e-9a51-1a2b3c4d5e6f"},"managedFields":[{"manager":"x"}]},"spec":{"x":1},"status":{"phase":"Running"}}"#;

    #[test]
    fn parses_identity_fields_and_keeps_the_text() {
        let o = RawObject::from_json(POD.to_owned()).expect("valid");
        assert_eq!(o.metadata.name.as_deref(), Some("p"));
        assert_eq!(o.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(o.uid(), Some("u-1"));
        assert_eq!(o.resource_version_number(), Some(42));
        assert_eq!(
            o.creation_timestamp.as_deref(),
            Some("2024-01-02T03:04:05Z")
        );
        assert_eq!(
            o.composition_label.as_deref(),
            Some("0f9e2c4c-3c1d-4b8e-9a51-1a2b3c4d5e6f")
        );
        assert_eq!(o.status_json(), Some(r#"{"phase":"Running"}"#));
        assert_eq!(o.json, POD);
        assert_eq!(o.api_version.as_deref(), Some("v1"));
    }

    #[test]
    fn missing_fields_are_none() {
        let o = RawObject::from_json(r#"{"metadata":{"labels":null}}"#.to_owned()).expect("ok");
        assert!(o.uid().is_none());
        assert!(o.status.is_none());
        assert!(o.composition_label.is_none());
        assert_eq!(o.resource_version_number(), None);
    }

    #[test]
    fn debug_never_prints_the_object() {
        let o = RawObject::from_json(POD.to_owned()).expect("ok");
        let dbg = format!("{o:?}");
        assert!(!dbg.contains("Running"));
    }
}
