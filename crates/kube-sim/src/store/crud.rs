//! The writes and reads of single objects, with the real server's checks and the fields it owns:
//! create (names, uid, generation, kind defaults), update (conflicts, generation, no-op writes),
//! delete (finalizers, namespace and CRD cascades).

use super::crd::is_crd;
use super::history::EventType;
use super::object::encode;
use super::{Inner, Key, Obj};
use crate::error::ApiError;
use crate::resources::{split_api_version, ResourceDef};
use serde_json::{json, Map, Value};
use std::ops::Bound;
use std::sync::Arc;

pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn random_suffix() -> String {
    use rand::Rng;
    // Same alphabet as the real server: no vowels, no confusable digits.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The stored object a replacement is for, with the request's parts the update goes on with.
struct Replaced {
    old: Arc<Obj>,
    /// `old` as JSON without apiVersion/kind.
    old_m: Map<String, Value>,
    namespace: String,
    name: String,
}

impl Inner {
    pub(super) fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<&Arc<Obj>> {
        self.objects
            .get(&def.key)?
            .get(&(Arc::from(ns), Arc::from(name)))
    }

    pub(super) fn def_for(&self, v: &Value) -> Result<Arc<ResourceDef>, ApiError> {
        let av = v["apiVersion"].as_str().unwrap_or_default();
        let kind = v["kind"].as_str().unwrap_or_default();
        self.registry.by_kind(av, kind).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("no matches for kind \"{kind}\" in version \"{av}\""),
            )
        })
    }

    pub(super) fn create(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        v: Value,
        preserve: bool,
    ) -> Result<Arc<Obj>, ApiError> {
        let Value::Object(mut m) = v else {
            return Err(ApiError::bad_request(
                "the body of the request is not a JSON object",
            ));
        };
        check_type(def, &mut m)?;
        let meta = m
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(meta) = meta else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        let namespace = resolve_namespace(def, ns, meta)?;
        let name = self.name_for_create(def, &namespace, meta)?;
        validate_name(def, &name)?;
        if self.get(def, &namespace, &name).is_some() {
            return Err(ApiError::already_exists(&def.group, &def.plural, &name));
        }
        let rv = self.rv + 1;
        meta.insert("name".into(), name.clone().into());
        if !preserve || !meta.contains_key("uid") {
            meta.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
        }
        if !preserve || !meta.contains_key("creationTimestamp") {
            meta.insert("creationTimestamp".into(), now_rfc3339().into());
        }
        if !preserve {
            meta.remove("deletionTimestamp");
        }
        meta.insert("resourceVersion".into(), rv.to_string().into());
        if !def.has_generation() {
            meta.remove("generation");
        } else if !preserve || !meta.contains_key("generation") {
            meta.insert("generation".into(), 1.into());
        }
        let crd_defs = self.kind_defaults(def, &mut m)?;
        let obj = Arc::new(encode(m)?);
        self.record(&def.key, EventType::Added, obj.clone());
        if let Some(defs) = crd_defs {
            self.registry.set_crd(&name, defs);
        }
        Ok(obj)
    }

    /// The name of a new object: its `name`, or a free one made from its `generateName`.
    fn name_for_create(
        &self,
        def: &ResourceDef,
        namespace: &str,
        meta: &Map<String, Value>,
    ) -> Result<String, ApiError> {
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => Ok(n.to_string()),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => loop {
                    let candidate = format!("{prefix}{}", random_suffix());
                    if self.get(def, namespace, &candidate).is_none() {
                        break Ok(candidate);
                    }
                },
                _ => Err(ApiError::invalid(
                    &def.group,
                    &def.kind,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                )),
            },
        }
    }

    /// Server-side defaults for kinds the server gives meaning to; for a CRD also its resources.
    pub(super) fn kind_defaults(
        &self,
        def: &ResourceDef,
        m: &mut Map<String, Value>,
    ) -> Result<Option<Vec<Arc<ResourceDef>>>, ApiError> {
        match (def.group.as_str(), def.kind.as_str()) {
            ("", "Namespace") => {
                namespace_defaults(m);
                Ok(None)
            }
            ("", "Secret") => {
                m.entry("type").or_insert_with(|| "Opaque".into());
                Ok(None)
            }
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                super::crd::established(def, m).map(Some)
            }
            _ => Ok(None),
        }
    }

    pub(super) fn update(
        &mut self,
        def: &ResourceDef,
        ns: Option<&str>,
        v: Value,
        status_only: bool,
    ) -> Result<Arc<Obj>, ApiError> {
        let Value::Object(mut m) = v else {
            return Err(ApiError::bad_request(
                "the body of the request is not a JSON object",
            ));
        };
        check_type(def, &mut m)?;
        let Replaced {
            old,
            old_m,
            namespace,
            name,
        } = self.replaced(def, ns, &mut m)?;
        let mut new_m = replacement(def, &old, old_m, m, status_only, &namespace);
        let crd_defs = if def.kind == "CustomResourceDefinition" && !status_only {
            self.crd_defaults_keeping_conditions(def, &mut new_m)?
        } else {
            None
        };
        let candidate = encode(new_m.clone())?;
        if candidate.body == old.body && candidate.api_version == old.api_version {
            return Ok(old);
        }
        let rv = self.rv + 1;
        new_m["metadata"]["resourceVersion"] = rv.to_string().into();
        let finalizing = new_m["metadata"].get("deletionTimestamp").is_some()
            && new_m["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        let obj = Arc::new(encode(new_m)?);
        if finalizing {
            // Removing the last finalizer of a deleted object removes it: one DELETED event.
            self.record(&def.key, EventType::Deleted, obj.clone());
            self.after_removal(def, &obj);
        } else {
            self.record(&def.key, EventType::Modified, obj.clone());
            if let Some(defs) = crd_defs {
                self.registry.set_crd(&name, defs);
            }
        }
        Ok(obj)
    }

    /// The object a replacement (`m`) is for, after its checks: it exists, and the
    /// resourceVersion and uid, when given, are its own (409 Conflict otherwise).
    fn replaced(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        m: &mut Map<String, Value>,
    ) -> Result<Replaced, ApiError> {
        let Some(Value::Object(meta)) = m.get_mut("metadata") else {
            return Err(ApiError::invalid(
                &def.group,
                &def.kind,
                "",
                "metadata.name",
                "Required value: name is required",
            ));
        };
        let namespace = resolve_namespace(def, ns, meta)?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let Some(old) = self.get(def, &namespace, &name).cloned() else {
            return Err(ApiError::not_found(&def.group, &def.plural, &name));
        };
        if let Some(want) = meta.get("resourceVersion").and_then(Value::as_str) {
            if !want.is_empty() && want != old.rv.to_string() {
                return Err(ApiError::conflict(&def.group, &def.plural, &name));
            }
        }
        let old_m = old.body_value();
        if let Some(uid) = meta.get("uid").and_then(Value::as_str) {
            if !uid.is_empty() && Some(uid) != old_m["metadata"]["uid"].as_str() {
                return Err(ApiError::conflict(&def.group, &def.plural, &name));
            }
        }
        Ok(Replaced {
            old,
            old_m,
            namespace,
            name,
        })
    }

    pub(super) fn delete(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
    ) -> Result<Arc<Obj>, ApiError> {
        let Some(old) = self.get(def, ns, name).cloned() else {
            return Err(ApiError::not_found(&def.group, &def.plural, name));
        };
        let m = old.body_value();
        let has_finalizers = m["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if m["metadata"].get("deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut m = old.value_at(self.rv + 1);
            m["metadata"]["deletionTimestamp"] = now_rfc3339().into();
            m["metadata"]["deletionGracePeriodSeconds"] = 0.into();
            let obj = Arc::new(encode(m)?);
            self.record(&def.key, EventType::Modified, obj.clone());
            return Ok(obj);
        }
        // Contents go first, each with its own DELETED event, then the container itself.
        if def.group.is_empty() && def.kind == "Namespace" {
            self.remove_namespace_contents(name)?;
        }
        if is_crd(def) {
            self.remove_custom_resources(&m)?;
        }
        let obj = self.remove(&def.key, &old)?;
        self.after_removal(def, &obj);
        Ok(obj)
    }

    /// Removes every object in namespace `ns`, each with its DELETED event.
    fn remove_namespace_contents(&mut self, ns: &str) -> Result<(), ApiError> {
        let keys: Vec<Arc<str>> = self.objects.keys().cloned().collect();
        for k in keys {
            let victims: Vec<Arc<Obj>> = self.objects[&k]
                .range::<Key, _>((
                    Bound::Included((Arc::from(ns), Arc::from(""))),
                    Bound::Unbounded,
                ))
                .take_while(|(key, _)| &*key.0 == ns)
                .map(|(_, o)| o.clone())
                .collect();
            for o in victims {
                self.remove(&k, &o)?;
            }
        }
        Ok(())
    }

    /// Unconditional removal with a DELETED event carrying the deletion revision.
    pub(super) fn remove(&mut self, res: &Arc<str>, old: &Obj) -> Result<Arc<Obj>, ApiError> {
        let obj = Arc::new(encode(old.value_at(self.rv + 1))?);
        self.record(res, EventType::Deleted, obj.clone());
        Ok(obj)
    }
}

/// As the real server: the name label, the `kubernetes` finalizer and phase Active.
fn namespace_defaults(m: &mut Map<String, Value>) {
    let name = m["metadata"]["name"].clone();
    let meta = m.entry("metadata").or_insert_with(|| json!({}));
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"]["kubernetes.io/metadata.name"] = name;
    let spec = m.entry("spec").or_insert_with(|| json!({}));
    if spec.is_object() && spec.get("finalizers").is_none() {
        spec["finalizers"] = json!(["kubernetes"]);
    }
    let status = m.entry("status").or_insert_with(|| json!({}));
    if status.get("phase").is_none() {
        status["phase"] = "Active".into();
    }
}

/// The object an update stores (before its new revision): the request's object (or, for
/// `/status`, the old one with the request's status) with the fields the server owns kept from
/// `old`, and the generation moved on when anything but metadata and status changed.
fn replacement(
    def: &ResourceDef,
    old: &Obj,
    mut old_m: Map<String, Value>,
    mut m: Map<String, Value>,
    status_only: bool,
    namespace: &str,
) -> Map<String, Value> {
    let mut new_m = if status_only {
        let mut n = old_m.clone();
        n.insert("status".into(), m.remove("status").unwrap_or(Value::Null));
        n
    } else {
        m.insert(
            "apiVersion".into(),
            Value::String(old.api_version.to_string()),
        );
        m
    };
    new_m.insert("apiVersion".into(), old.api_version.to_string().into());
    new_m.insert("kind".into(), old.kind.to_string().into());
    let old_meta = old_m.remove("metadata").unwrap_or_default();
    let mut new_meta = match new_m.remove("metadata") {
        Some(Value::Object(x)) => x,
        _ => Map::new(),
    };
    // Fields the server owns.
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old_meta.get(f) {
            Some(x) => new_meta.insert(f.into(), x.clone()),
            None => new_meta.remove(f),
        };
    }
    if def.namespaced {
        new_meta.insert("namespace".into(), namespace.into());
    }
    let old_gen = old_meta["generation"].as_i64().unwrap_or(1);
    let spec_changed = {
        let strip = |x: &Map<String, Value>| {
            x.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Map<String, Value>>()
        };
        strip(&old_m) != strip(&new_m)
    };
    if def.has_generation() {
        new_meta.insert(
            "generation".into(),
            (old_gen + i64::from(spec_changed)).into(),
        );
    } else {
        new_meta.remove("generation");
    }
    // A write that changes nothing is not written, as on the real server (no new revision).
    new_meta.insert("resourceVersion".into(), old.rv.to_string().into());
    new_m.insert("metadata".into(), Value::Object(new_meta));
    new_m
}

fn check_type(def: &ResourceDef, m: &mut Map<String, Value>) -> Result<(), ApiError> {
    match m.get("kind").and_then(Value::as_str) {
        Some(k) if k != def.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({k}) does not match the resource ({})",
                def.kind
            )))
        }
        _ => {}
    }
    m.insert("kind".into(), def.kind.clone().into());
    let av = m
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if av.is_empty() {
        m.insert("apiVersion".into(), def.api_version().into());
    } else if split_api_version(&av).0 != def.group {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            def.api_version()
        )));
    }
    Ok(())
}

fn resolve_namespace(
    def: &ResourceDef,
    ns: Option<&str>,
    meta: &mut Map<String, Value>,
) -> Result<String, ApiError> {
    if !def.namespaced {
        meta.remove("namespace");
        return Ok(String::new());
    }
    let body_ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let namespace = match (ns, body_ns) {
        (Some(p), Some(b)) if p != b => return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        (Some(p), _) => p.to_string(),
        (None, Some(b)) => b.to_string(),
        (None, None) => "default".to_string(),
    };
    meta.insert("namespace".into(), namespace.clone().into());
    Ok(namespace)
}

pub(super) fn validate_name(def: &ResourceDef, name: &str) -> Result<(), ApiError> {
    // Path-segment rules (what every resource needs); DNS rules vary by kind and are not enforced.
    let bad = name.len() > 253
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('%')
        || name.chars().any(char::is_whitespace);
    if bad {
        return Err(ApiError::invalid(
            &def.group,
            &def.kind,
            name,
            "metadata.name",
            &format!("Invalid value: \"{name}\": a valid name must not contain '/', '%' or spaces"),
        ));
    }
    Ok(())
}
