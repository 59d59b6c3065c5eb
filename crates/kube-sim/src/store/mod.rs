//! The object store: pre-serialized objects per resource, one global revision counter, a bounded
//! event history (the source of watches and of consistent paged lists), and the fault switches.

use crate::error::ApiError;
use crate::faults::{FaultSet, ReadFaults, Replica, ReplicaPick};
use crate::resources::{defs_from_crd, split_api_version, Registry, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use base64::Engine;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::watch;

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
    fn body_value(&self) -> Map<String, Value> {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    pub fn matches(&self, labels: &LabelSelector, fields: &FieldSelector) -> bool {
        (fields.is_empty() || fields.matches(&self.name, &self.ns))
            && (labels.is_empty() || labels.matches(|k| self.label(k)))
    }
}

/// Encodes a full object (with apiVersion/kind) into its stored form.
fn encode(mut v: Map<String, Value>) -> Result<Obj, ApiError> {
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
        body: Bytes::from(body),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write. `prev` is the state before it, which lets watches with selectors turn a change
/// into ADDED/DELETED and lets paged lists rebuild the state at an older revision.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub ty: EventType,
    pub res: Arc<str>,
    pub obj: Arc<Obj>,
    pub prev: Option<Arc<Obj>>,
}

/// A list request after query parsing.
#[derive(Debug, Default, Clone)]
pub(crate) struct ListQuery {
    pub ns: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: usize,
    pub cont: Option<String>,
    pub rv: Option<String>,
    pub rv_match: Option<String>,
    /// Events the serving replica's watch cache lags behind the store (0: up to date).
    pub lag: u64,
}

pub(crate) struct ListResult {
    pub rv: u64,
    pub items: Vec<Arc<Obj>>,
    pub cont: Option<String>,
    /// `metadata.remainingItemCount` of a page with a continuation: the items after it, as
    /// the real server counts them (only for a list without selectors).
    pub remaining: Option<u64>,
}

fn now_rfc3339() -> String {
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

fn encode_continue(rv: u64, key: &Key) -> String {
    let token = json!({"rv": rv, "ns": &*key.0, "name": &*key.1});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: invalid token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let ns = v["ns"].as_str().ok_or_else(bad)?;
    let name = v["name"].as_str().ok_or_else(bad)?;
    Ok((rv, (ns.into(), name.into())))
}

pub(crate) struct Inner {
    pub rv: u64,
    /// Every event with rv > compacted_rv is still in `history`.
    pub compacted_rv: u64,
    pub objects: HashMap<Arc<str>, BTreeMap<Key, Arc<Obj>>>,
    pub history: VecDeque<Arc<Event>>,
    history_cap: usize,
    pub registry: Registry,
}

impl Inner {
    fn commit(&mut self, def: &ResourceDef, ty: EventType, obj: Arc<Obj>) {
        let map = self.objects.entry(def.key.clone()).or_default();
        let prev = if ty == EventType::Deleted {
            map.remove(&obj.key())
        } else {
            map.insert(obj.key(), obj.clone())
        };
        self.rv = obj.rv;
        self.history.push_back(Arc::new(Event {
            rv: obj.rv,
            ty,
            res: def.key.clone(),
            obj,
            prev,
        }));
        while self.history.len() > self.history_cap.max(1) {
            if let Some(e) = self.history.pop_front() {
                self.compacted_rv = e.rv;
            }
        }
    }

    fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<&Arc<Obj>> {
        self.objects
            .get(&def.key)?
            .get(&(Arc::from(ns), Arc::from(name)))
    }

    fn def_for(&self, v: &Value) -> Result<Arc<ResourceDef>, ApiError> {
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

    fn create(
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
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => loop {
                    let candidate = format!("{prefix}{}", random_suffix());
                    if self.get(def, &namespace, &candidate).is_none() {
                        break candidate;
                    }
                },
                _ => {
                    return Err(ApiError::invalid(
                        &def.group,
                        &def.kind,
                        "",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    ))
                }
            },
        };
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
        self.commit(def, EventType::Added, obj.clone());
        if let Some(defs) = crd_defs {
            self.registry.set_crd(&name, defs);
        }
        Ok(obj)
    }

    /// Server-side defaults for kinds the server gives meaning to; for a CRD also its resources.
    fn kind_defaults(
        &self,
        def: &ResourceDef,
        m: &mut Map<String, Value>,
    ) -> Result<Option<Vec<Arc<ResourceDef>>>, ApiError> {
        match (def.group.as_str(), def.kind.as_str()) {
            ("", "Namespace") => {
                // as the real server: the name label and the `kubernetes` finalizer
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
                Ok(None)
            }
            ("", "Secret") => {
                m.entry("type").or_insert_with(|| "Opaque".into());
                Ok(None)
            }
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                let full = Value::Object(m.clone());
                let name = full["metadata"]["name"].as_str().unwrap_or_default();
                let defs = defs_from_crd(&full).map_err(|(field, why)| {
                    ApiError::invalid(&def.group, &def.kind, name, &field, &why)
                })?;
                // The conditions were set when the CRD was created: taking that time (rather than
                // the clock) keeps a preloaded world with fixed timestamps equal from run to run.
                let now = full["metadata"]["creationTimestamp"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(now_rfc3339);
                let storage: Vec<Value> = full["spec"]["versions"]
                    .as_array()
                    .map(|vs| {
                        vs.iter()
                            .filter(|v| v["storage"].as_bool() == Some(true))
                            .map(|v| v["name"].clone())
                            .collect()
                    })
                    .unwrap_or_default();
                m.insert(
                    "status".into(),
                    json!({
                        "acceptedNames": full["spec"]["names"].clone(),
                        "conditions": [
                            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                             "message": "no conflicts found", "lastTransitionTime": now},
                            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                             "message": "the initial names have been accepted", "lastTransitionTime": now},
                        ],
                        "storedVersions": storage,
                    }),
                );
                Ok(Some(defs))
            }
            _ => Ok(None),
        }
    }

    fn update(
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
        let mut old_m = old.body_value();
        if let Some(uid) = meta.get("uid").and_then(Value::as_str) {
            if !uid.is_empty() && Some(uid) != old_m["metadata"]["uid"].as_str() {
                return Err(ApiError::conflict(&def.group, &def.plural, &name));
            }
        }
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
            new_meta.insert("namespace".into(), namespace.clone().into());
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
        let crd_defs = if def.kind == "CustomResourceDefinition" && !status_only {
            let st = new_m.remove("status");
            let r = self.kind_defaults(def, &mut new_m)?;
            if let (Some(Value::Object(old_st)), Some(Value::Object(new_st))) =
                (st, new_m.get_mut("status"))
            {
                // keep conditions' timestamps stable so re-applies are no-ops
                if let Some(c) = old_st.get("conditions") {
                    new_st.insert("conditions".into(), c.clone());
                }
            }
            r
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
            self.commit(def, EventType::Deleted, obj.clone());
            self.after_removal(def, &obj);
        } else {
            self.commit(def, EventType::Modified, obj.clone());
            if let Some(defs) = crd_defs {
                self.registry.set_crd(&name, defs);
            }
        }
        Ok(obj)
    }

    fn delete(&mut self, def: &ResourceDef, ns: &str, name: &str) -> Result<Arc<Obj>, ApiError> {
        let Some(old) = self.get(def, ns, name).cloned() else {
            return Err(ApiError::not_found(&def.group, &def.plural, name));
        };
        let mut m = old.body_value();
        let has_finalizers = m["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if m["metadata"].get("deletionTimestamp").is_some() {
                return Ok(old);
            }
            let rv = self.rv + 1;
            m["metadata"]["deletionTimestamp"] = now_rfc3339().into();
            m["metadata"]["deletionGracePeriodSeconds"] = 0.into();
            m["metadata"]["resourceVersion"] = rv.to_string().into();
            m.insert("apiVersion".into(), old.api_version.to_string().into());
            m.insert("kind".into(), old.kind.to_string().into());
            let obj = Arc::new(encode(m)?);
            self.commit(def, EventType::Modified, obj.clone());
            return Ok(obj);
        }
        // Contents go first, each with its own DELETED event, then the container itself.
        if def.group.is_empty() && def.kind == "Namespace" {
            let keys: Vec<Arc<str>> = self.objects.keys().cloned().collect();
            for k in keys {
                let victims: Vec<Arc<Obj>> = self.objects[&k]
                    .range::<Key, _>((
                        Bound::Included((Arc::from(name), Arc::from(""))),
                        Bound::Unbounded,
                    ))
                    .take_while(|(key, _)| &*key.0 == name)
                    .map(|(_, o)| o.clone())
                    .collect();
                for o in victims {
                    self.remove(&k, &o)?;
                }
            }
        }
        if def.kind == "CustomResourceDefinition" && def.group == "apiextensions.k8s.io" {
            let spec = &m["spec"];
            let key = crate::resources::storage_key(
                spec["group"].as_str().unwrap_or_default(),
                spec["names"]["plural"].as_str().unwrap_or_default(),
            );
            let victims: Vec<Arc<Obj>> = self
                .objects
                .get(&key)
                .map(|mm| mm.values().cloned().collect())
                .unwrap_or_default();
            for o in victims {
                self.remove(&key, &o)?;
            }
            self.objects.remove(&key);
        }
        let obj = self.remove(&def.key, &old)?;
        self.after_removal(def, &obj);
        Ok(obj)
    }

    fn after_removal(&mut self, def: &ResourceDef, obj: &Obj) {
        if def.kind == "CustomResourceDefinition" && def.group == "apiextensions.k8s.io" {
            self.registry.remove_crd(&obj.name);
        }
    }

    /// Unconditional removal with a DELETED event carrying the deletion revision.
    fn remove(&mut self, res: &Arc<str>, old: &Obj) -> Result<Arc<Obj>, ApiError> {
        let mut m = old.body_value();
        let rv = self.rv + 1;
        m["metadata"]["resourceVersion"] = rv.to_string().into();
        m.insert("apiVersion".into(), old.api_version.to_string().into());
        m.insert("kind".into(), old.kind.to_string().into());
        let obj = Arc::new(encode(m)?);
        let map = self.objects.entry(res.clone()).or_default();
        let prev = map.remove(&obj.key());
        self.rv = rv;
        self.history.push_back(Arc::new(Event {
            rv,
            ty: EventType::Deleted,
            res: res.clone(),
            obj: obj.clone(),
            prev,
        }));
        while self.history.len() > self.history_cap.max(1) {
            if let Some(e) = self.history.pop_front() {
                self.compacted_rv = e.rv;
            }
        }
        Ok(obj)
    }

    /// The revision of a watch cache `lag` events behind: the state before the last `lag`
    /// events, never older than what the history can rebuild.
    pub fn cache_rv(&self, lag: u64) -> u64 {
        let n = self.history.len();
        match usize::try_from(lag) {
            Ok(0) => self.rv,
            Ok(lag) if n > lag => self.history[n - lag - 1].rv,
            _ => self.compacted_rv,
        }
    }

    fn too_old(&self, rv: u64) -> ApiError {
        ApiError::expired(format!(
            "too old resource version: {rv} ({})",
            self.compacted_rv
        ))
    }

    pub fn list(&self, def: &ResourceDef, q: &ListQuery) -> Result<ListResult, ApiError> {
        let (at, after) = if let Some(token) = &q.cont {
            let (rv, key) = decode_continue(token)?;
            if rv < self.compacted_rv {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter, or use the continue value \
                     from the response.",
                ));
            }
            (rv, Some(key))
        } else {
            let asked = match q.rv.as_deref() {
                None | Some("") | Some("0") => None,
                Some(x) => Some(x.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version \"{x}\""))
                })?),
            };
            match (asked, q.rv_match.as_deref()) {
                // Exact: read from storage at that revision.
                (Some(x), Some("Exact")) => {
                    if x > self.rv {
                        return Err(too_large(x, self.rv));
                    }
                    if x < self.compacted_rv {
                        return Err(self.too_old(x));
                    }
                    (x, None)
                }
                // "0": any state will do; the watch cache serves its own, maybe old, one.
                (None, _) if q.rv.as_deref() == Some("0") => (self.cache_rv(q.lag), None),
                // No revision: a consistent read, the current state.
                (None, _) => (self.rv, None),
                // NotOlderThan X: a paged list is read from storage (current state), a whole
                // list from the watch cache, which must have reached X.
                (Some(x), _) => {
                    let have = if q.limit > 0 {
                        self.rv
                    } else {
                        self.cache_rv(q.lag)
                    };
                    if x > have {
                        return Err(too_large(x, have));
                    }
                    (have, None)
                }
            }
        };
        let empty = BTreeMap::new();
        let current = self.objects.get(&def.key).unwrap_or(&empty);
        // State at `at` = current state with the later writes undone.
        let mut overlay: BTreeMap<Key, Option<Arc<Obj>>> = BTreeMap::new();
        if at < self.rv {
            let start = self.history.partition_point(|e| e.rv <= at);
            for e in self.history.range(start..).filter(|e| e.res == def.key) {
                overlay.entry(e.obj.key()).or_insert_with(|| e.prev.clone());
            }
        }
        let ns_start: Option<Key> = q.ns.as_deref().map(|ns| (Arc::from(ns), Arc::from("")));
        let lower: Bound<Key> = match (&after, &ns_start) {
            (Some(a), Some(n)) if a >= n => Bound::Excluded(a.clone()),
            (Some(a), None) => Bound::Excluded(a.clone()),
            (_, Some(n)) => Bound::Included(n.clone()),
            (None, None) => Bound::Unbounded,
        };
        let mut cur = current
            .range::<Key, _>((lower.clone(), Bound::Unbounded))
            .peekable();
        let mut ovl = overlay
            .range::<Key, _>((lower, Bound::Unbounded))
            .peekable();
        let mut next = move || -> Option<Option<Arc<Obj>>> {
            use std::cmp::Ordering::*;
            let which = match (cur.peek(), ovl.peek()) {
                (None, None) => return None,
                (Some(_), None) => Less,
                (None, Some(_)) => Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            match which {
                Less => cur.next().map(|(_, o)| Some(o.clone())),
                Greater => ovl.next().map(|(_, o)| o.clone()),
                Equal => {
                    cur.next();
                    ovl.next().map(|(_, o)| o.clone())
                }
            }
        };
        let mut items = Vec::new();
        let mut more = 0u64;
        let count_rest = q.labels.is_empty() && q.fields.is_empty();
        while let Some(slot) = next() {
            let Some(o) = slot else { continue };
            if let Some(ns) = &q.ns {
                if *o.ns != **ns {
                    break;
                }
            }
            if !o.matches(&q.labels, &q.fields) {
                continue;
            }
            if q.limit > 0 && items.len() == q.limit {
                more += 1;
                if !count_rest {
                    break;
                }
                continue;
            }
            items.push(o);
        }
        let cont = match items.last() {
            Some(last) if more > 0 => Some(encode_continue(at, &last.key())),
            _ => None,
        };
        Ok(ListResult {
            rv: at,
            items,
            remaining: (cont.is_some() && count_rest).then_some(more),
            cont,
        })
    }

    /// Events for `res` after `pos`, and the revision they bring the reader to;
    /// Err when `pos` fell out of the history.
    pub fn events_after(
        &self,
        pos: u64,
        res: &Arc<str>,
    ) -> Result<(Vec<Arc<Event>>, u64), ApiError> {
        if pos < self.compacted_rv {
            return Err(self.too_old(pos));
        }
        let start = self.history.partition_point(|e| e.rv <= pos);
        let evs = self
            .history
            .range(start..)
            .filter(|e| &e.res == res)
            .cloned()
            .collect();
        Ok((evs, self.rv.max(pos)))
    }

    pub fn check_watch_rv(&self, pos: u64) -> Result<(), ApiError> {
        if pos < self.compacted_rv {
            Err(self.too_old(pos))
        } else {
            Ok(())
        }
    }
}

/// The watch cache has not reached a requested revision (yet): worth waiting for.
pub(crate) fn is_too_large(e: &ApiError) -> bool {
    e.code == 504
        && e.details
            .as_ref()
            .is_some_and(|d| d["causes"][0]["reason"].as_str() == Some("ResourceVersionTooLarge"))
}

pub(crate) fn too_large(asked: u64, current: u64) -> ApiError {
    let mut e = ApiError::new(
        504,
        "Timeout",
        format!("Timeout: Too large resource version: {asked}, current: {current}"),
    );
    e.details = Some(json!({"causes": [{"reason": "ResourceVersionTooLarge",
        "message": "Too large resource version"}], "retryAfterSeconds": 1}));
    e
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

fn validate_name(def: &ResourceDef, name: &str) -> Result<(), ApiError> {
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

/// Fault switches, shared by the HTTP endpoints and the in-process API.
#[derive(Debug)]
pub(crate) struct Faults {
    pub fail: AtomicU64,
    pub delay_ms: AtomicU64,
    /// Extra delays of requests to one exact path (e.g. a discovery document).
    pub path_delays: RwLock<HashMap<String, u64>>,
    pub read: RwLock<ReadFaults>,
    /// Requests so far, for round-robin replica choice.
    next_replica: AtomicU64,
    /// For random replica choice; reseeded whenever the replicas are set.
    rng: Mutex<SmallRng>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            path_delays: RwLock::new(HashMap::new()),
            read: RwLock::new(ReadFaults::healthy()),
            next_replica: AtomicU64::new(0),
            rng: Mutex::new(SmallRng::seed_from_u64(0)),
        }
    }
}

pub(crate) struct Shared {
    inner: RwLock<Inner>,
    /// Current revision, for waking watchers.
    pub rv_tx: watch::Sender<u64>,
    /// Bumped by drop_watches; every open watch ends when it changes.
    pub drop_tx: watch::Sender<u64>,
    pub faults: Faults,
    pub open_watches: AtomicUsize,
    pub watches_started: AtomicU64,
    /// Requests this server refuses (403) and access reviews it answers `allowed: false`.
    pub denies: RwLock<Vec<crate::authz::DenyRule>>,
}

/// Counters of `GET /_sim/stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub objects: usize,
    pub resource_version: u64,
    pub compacted_resource_version: u64,
    pub history: usize,
    pub open_watches: usize,
    /// Watches opened since start (tells a resumed watch from a lost one).
    pub watches_started: u64,
    pub pending_failures: u64,
    pub delay_ms: u64,
    /// The revision each replica's watch cache serves (one entry when no replicas are set).
    pub replica_resource_versions: Vec<u64>,
}

/// Cheap-to-clone handle to the object store. Every method has the same effects as the matching
/// REST verb: a new revision, a watch event.
#[derive(Clone)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
}

impl Store {
    pub fn new(history: usize) -> Store {
        Store {
            shared: Arc::new(Shared {
                inner: RwLock::new(Inner {
                    rv: 0,
                    compacted_rv: 0,
                    objects: HashMap::new(),
                    history: VecDeque::new(),
                    history_cap: history,
                    registry: Registry::default(),
                }),
                rv_tx: watch::channel(0).0,
                drop_tx: watch::channel(0).0,
                faults: Faults::default(),
                open_watches: AtomicUsize::new(0),
                watches_started: AtomicU64::new(0),
                denies: RwLock::new(Vec::new()),
            }),
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.shared.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a write and wakes the watchers.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g: RwLockWriteGuard<'_, Inner> =
            self.shared.inner.write().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut g);
        let rv = g.rv;
        drop(g);
        self.shared.rv_tx.send_if_modified(|cur| {
            let changed = *cur != rv;
            *cur = rv;
            changed
        });
        out
    }

    pub(crate) fn registry(&self) -> Registry {
        self.read().registry.clone()
    }

    pub(crate) fn create_in(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        v: Value,
    ) -> Result<Arc<Obj>, ApiError> {
        self.write(|i| i.create(def, ns, v, false))
    }

    pub(crate) fn update_in(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        v: Value,
        status_only: bool,
    ) -> Result<Arc<Obj>, ApiError> {
        self.write(|i| i.update(def, ns, v, status_only))
    }

    /// Read-modify-write under one lock (patches): `f` gets the current object (None if absent)
    /// and returns the object to write, and whether it is a create.
    pub(crate) fn modify_in(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        status_only: bool,
        f: impl FnOnce(Option<Value>) -> Result<Value, ApiError>,
    ) -> Result<(Arc<Obj>, bool), ApiError> {
        self.write(|i| {
            let cur = i.get(def, ns, name).map(|o| o.to_value());
            let existed = cur.is_some();
            let next = f(cur)?;
            let nsopt = def.namespaced.then_some(ns);
            if existed {
                i.update(def, nsopt, next, status_only).map(|o| (o, false))
            } else {
                i.create(def, nsopt, next, false).map(|o| (o, true))
            }
        })
    }

    pub(crate) fn delete_in(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
    ) -> Result<Arc<Obj>, ApiError> {
        self.write(|i| i.delete(def, ns, name))
    }

    pub(crate) fn get_in(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<Arc<Obj>> {
        self.read().get(def, ns, name).cloned()
    }

    pub(crate) fn list_in(&self, def: &ResourceDef, q: &ListQuery) -> Result<ListResult, ApiError> {
        self.read().list(def, q)
    }

    fn def_for(&self, api_version: &str, kind: &str) -> Result<Arc<ResourceDef>, ApiError> {
        self.read()
            .def_for(&json!({"apiVersion": api_version, "kind": kind}))
    }

    /// Creates an object; the resource comes from apiVersion+kind, the namespace from
    /// metadata.namespace ("default" when absent for a namespaced kind).
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        self.write(|i| {
            let def = i.def_for(&obj)?;
            i.create(&def, None, obj, false)
        })
        .map(|o| o.to_value())
    }

    /// Like `create`, but keeps a given uid, creationTimestamp and generation (replaying a dump,
    /// deterministic workloads).
    pub fn create_preserving(&self, obj: Value) -> Result<Value, ApiError> {
        self.write(|i| {
            let def = i.def_for(&obj)?;
            i.create(&def, None, obj, true)
        })
        .map(|o| o.to_value())
    }

    /// Creates many objects under one lock; returns how many were created and the first error.
    pub fn create_many(
        &self,
        objs: impl IntoIterator<Item = Value>,
        preserve: bool,
    ) -> (usize, Option<ApiError>) {
        self.write(|i| {
            let (mut n, mut first_err) = (0, None);
            for obj in objs {
                match i
                    .def_for(&obj)
                    .and_then(|d| i.create(&d, None, obj, preserve))
                {
                    Ok(_) => n += 1,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            (n, first_err)
        })
    }

    /// Replaces an object; the conflict check happens only when metadata.resourceVersion is set.
    pub fn update(&self, obj: Value) -> Result<Value, ApiError> {
        self.write(|i| {
            let def = i.def_for(&obj)?;
            i.update(&def, None, obj, false)
        })
        .map(|o| o.to_value())
    }

    /// JSON merge patch (RFC 7386) of an existing object.
    pub fn merge_patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let def = self.def_for(api_version, kind)?;
        let ns = if def.namespaced {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        self.modify_in(&def, ns, name, false, |cur| {
            let mut cur = cur.ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
            crate::patch::merge_patch(&mut cur, patch);
            Ok(cur)
        })
        .map(|(o, _)| o.to_value())
    }

    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let def = self.def_for(api_version, kind)?;
        let ns = if def.namespaced {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        self.delete_in(&def, ns, name).map(|o| o.to_value())
    }

    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let def = self.def_for(api_version, kind).ok()?;
        let ns = if def.namespaced {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        self.get_in(&def, ns, name).map(|o| o.to_value())
    }

    /// Objects of one kind, in one namespace or (None) all of them.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok(def) = self.def_for(api_version, kind) else {
            return Vec::new();
        };
        let q = ListQuery {
            ns: namespace.filter(|_| def.namespaced).map(String::from),
            ..Default::default()
        };
        self.list_in(&def, &q)
            .map(|r| r.items.iter().map(|o| o.to_value()).collect())
            .unwrap_or_default()
    }

    /// (namespace, name) of every object of one kind; cheap (no JSON decoding).
    pub fn names(&self, api_version: &str, kind: &str) -> Vec<(Option<String>, String)> {
        let Ok(def) = self.def_for(api_version, kind) else {
            return Vec::new();
        };
        let g = self.read();
        g.objects
            .get(&def.key)
            .map(|m| {
                m.keys()
                    .map(|(ns, n)| ((!ns.is_empty()).then(|| ns.to_string()), n.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Total JSON size of the objects of one kind, as served.
    pub fn stored_bytes(&self, api_version: &str, kind: &str) -> usize {
        let Ok(def) = self.def_for(api_version, kind) else {
            return 0;
        };
        let g = self.read();
        g.objects.get(&def.key).map_or(0, |m| {
            m.values()
                .map(|o| o.body.len() + o.api_version.len() + o.kind.len() + 26)
                .sum()
        })
    }

    /// Every object of every resource, each with apiVersion and kind.
    pub fn list_all(&self) -> Vec<Value> {
        let objs: Vec<Arc<Obj>> = {
            let g = self.read();
            let mut keys: Vec<&Arc<str>> = g.objects.keys().collect();
            keys.sort();
            keys.iter()
                .flat_map(|k| g.objects[*k].values().cloned())
                .collect()
        };
        objs.iter().map(|o| o.to_value()).collect()
    }

    /// The current global revision.
    pub fn resource_version(&self) -> u64 {
        self.read().rv
    }

    /// Number of stored objects.
    pub fn len(&self) -> usize {
        self.read().objects.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every open watch (clients resume from their last revision).
    pub fn drop_watches(&self) {
        self.shared.drop_tx.send_modify(|g| *g += 1);
    }

    /// Forgets the event history: every watch, resume or paged list from a revision older than
    /// now gets 410 Expired. Burns one revision so that "older than now" includes the current one.
    pub fn compact(&self) {
        self.write(|i| {
            i.rv += 1;
            i.compacted_rv = i.rv;
            i.history.clear();
        });
    }

    /// The next `n` API requests fail with 500.
    /// Denies a request from now on (`kubectl auth can-i` says no, the request gets 403).
    pub fn deny(&self, rule: crate::authz::DenyRule) {
        let mut d = self
            .shared
            .denies
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if !d.contains(&rule) {
            d.push(rule);
        }
    }

    /// Allows everything again.
    pub fn clear_denies(&self) {
        self.shared
            .denies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The deny list.
    pub fn denies(&self) -> Vec<crate::authz::DenyRule> {
        self.shared
            .denies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn fail_next(&self, n: u64) {
        self.shared.faults.fail.store(n, Ordering::SeqCst);
    }

    /// Adds `ms` of latency to every API response (0 turns it off).
    pub fn set_delay(&self, ms: u64) {
        self.shared.faults.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Delays every request to exactly `path` (e.g. `/apis/apps/v1`, a discovery document) by
    /// `ms` on top of `set_delay`; 0 removes it. An API server that stops answering one kind
    /// of request while others still flow.
    pub fn set_path_delay(&self, path: &str, ms: u64) {
        if let Ok(mut delays) = self.shared.faults.path_delays.write() {
            if ms == 0 {
                delays.remove(path);
            } else {
                delays.insert(path.to_owned(), ms);
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let lags = self.read_faults().replica_lags;
        let g = self.read();
        let replica_resource_versions = if lags.is_empty() {
            vec![g.rv]
        } else {
            lags.iter().map(|l| g.cache_rv(*l)).collect()
        };
        Stats {
            replica_resource_versions,
            objects: g.objects.values().map(BTreeMap::len).sum(),
            resource_version: g.rv,
            compacted_resource_version: g.compacted_rv,
            history: g.history.len(),
            open_watches: self.shared.open_watches.load(Ordering::SeqCst),
            watches_started: self.shared.watches_started.load(Ordering::SeqCst),
            pending_failures: self.shared.faults.fail.load(Ordering::SeqCst),
            delay_ms: self.shared.faults.delay_ms.load(Ordering::SeqCst),
        }
    }

    /// Every fault switch as it is now.
    pub fn faults(&self) -> FaultSet {
        let r = self.read_faults();
        FaultSet {
            fail_next: self.shared.faults.fail.load(Ordering::SeqCst),
            delay_ms: self.shared.faults.delay_ms.load(Ordering::SeqCst),
            replica_lags: r.replica_lags,
            replica_pick: r.replica_pick,
            freshness_wait_ms: r.freshness_wait.as_millis() as u64,
            watch_replay: r.watch_replay,
            bookmark_delay_ms: r.bookmark_delay.as_millis() as u64,
            list_stall_ms: r.list_stall.as_millis() as u64,
            stuck_watches: r.stuck_watches,
            watches_end_at_once: r.watches_end_at_once,
        }
    }

    /// Sets every fault switch at once (several faults together); `FaultSet::default()` heals.
    pub fn set_faults(&self, f: &FaultSet) {
        self.fail_next(f.fail_next);
        self.set_delay(f.delay_ms);
        self.change_read_faults(|r| *r = ReadFaults::from_set(f));
        self.reset_replica_choice(f.replica_pick);
    }

    /// Turns every fault off.
    pub fn clear_faults(&self) {
        self.set_faults(&FaultSet::default());
    }

    /// One API server whose watch cache lags `events` events behind: lists and streaming lists
    /// with resourceVersion "0" (and watches without a revision) get the state of `events`
    /// events ago, with that revision. 0 turns it off. Same as `set_replicas(&[events], ..)`.
    pub fn set_watch_cache_lag(&self, events: u64) {
        let lags = if events == 0 {
            Vec::new()
        } else {
            vec![events]
        };
        self.set_replicas(&lags, ReplicaPick::RoundRobin);
    }

    /// Several API servers behind the address, replica i lagging `lags[i]` events; each request
    /// lands on the next one (`RoundRobin`) or a random one (`Random { seed }`). Empty: one
    /// up-to-date server.
    pub fn set_replicas(&self, lags: &[u64], pick: ReplicaPick) {
        self.change_read_faults(|r| {
            r.replica_lags = lags.to_vec();
            r.replica_pick = pick;
        });
        self.reset_replica_choice(pick);
    }

    /// How long a watch cache waits to reach a requested revision before answering 504
    /// "Too large resource version" (default 3 s, as on a real server).
    pub fn set_freshness_wait(&self, wait: Duration) {
        self.change_read_faults(|r| r.freshness_wait = wait);
    }

    /// A watch resuming from a revision first re-delivers the last `events` events up to that
    /// revision (ones the client already saw). 0 turns it off.
    pub fn set_watch_replay(&self, events: u64) {
        self.change_read_faults(|r| r.watch_replay = events);
    }

    /// Holds every BOOKMARK back by `delay` (never sent out of order: a late bookmark carries
    /// the revision of the moment it is sent). Zero turns it off.
    pub fn set_bookmark_delay(&self, delay: Duration) {
        self.change_read_faults(|r| r.bookmark_delay = delay);
    }

    /// Lists stall half-way for `stall`: between the pages of a paged list, after half of the
    /// items of a whole list or of the initial events of a streaming list. Zero turns it off.
    pub fn set_list_stall(&self, stall: Duration) {
        self.change_read_faults(|r| r.list_stall = stall);
    }

    /// New watches end at once, without an event (open ones go on).
    pub fn set_watches_end_at_once(&self, on: bool) {
        self.change_read_faults(|r| r.watches_end_at_once = on);
    }

    /// Open and new watches go silent: no events, no bookmarks, no close at timeoutSeconds,
    /// until the client closes them or `drop_watches`. A watch that went silent stays silent.
    pub fn set_stuck_watches(&self, stuck: bool) {
        self.change_read_faults(|r| r.stuck_watches = stuck);
        // wake the open watches so they notice
        self.shared.rv_tx.send_modify(|_| {});
    }

    pub(crate) fn read_faults(&self) -> ReadFaults {
        self.shared
            .faults
            .read
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn change_read_faults(&self, f: impl FnOnce(&mut ReadFaults)) {
        let mut g = self
            .shared
            .faults
            .read
            .write()
            .unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    fn reset_replica_choice(&self, pick: ReplicaPick) {
        let faults = &self.shared.faults;
        faults.next_replica.store(0, Ordering::SeqCst);
        if let ReplicaPick::Random { seed } = pick {
            *faults.rng.lock().unwrap_or_else(|e| e.into_inner()) = SmallRng::seed_from_u64(seed);
        }
    }

    /// The API server the next request lands on.
    pub(crate) fn pick_replica(&self) -> Replica {
        let faults = &self.shared.faults;
        let (lags, pick) = {
            let r = faults.read.read().unwrap_or_else(|e| e.into_inner());
            if r.replica_lags.is_empty() {
                return Replica::default();
            }
            (r.replica_lags.clone(), r.replica_pick)
        };
        let index = match pick {
            ReplicaPick::RoundRobin => {
                (faults.next_replica.fetch_add(1, Ordering::SeqCst) % lags.len() as u64) as usize
            }
            ReplicaPick::Random { .. } => faults
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .random_range(0..lags.len()),
        };
        Replica {
            index,
            lag: lags[index],
        }
    }

    /// Takes one pending failure, if any.
    pub(crate) fn take_failure(&self) -> bool {
        self.shared
            .faults
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The delay of a request to `path`: the global one plus the path's own.
    pub(crate) fn delay(&self, path: &str) -> u64 {
        let own = self
            .shared
            .faults
            .path_delays
            .read()
            .ok()
            .and_then(|d| d.get(path).copied())
            .unwrap_or(0);
        self.shared.faults.delay_ms.load(Ordering::SeqCst) + own
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(ns: &str, name: &str, v: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "labels": {"v": v}}, "data": {"v": v}})
    }

    #[test]
    fn revisions_and_conflicts() {
        let s = Store::new(100);
        let a = s.create(cm("a", "x", "1")).unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(a["apiVersion"], "v1");
        assert_eq!(s.create(cm("a", "x", "1")).unwrap_err().code, 409);
        let mut b = a.clone();
        b["data"]["v"] = "2".into();
        let b = s.update(b).unwrap();
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        assert_eq!(b["metadata"]["uid"], a["metadata"]["uid"]);
        // stale update
        let mut c = a.clone();
        c["data"]["v"] = "3".into();
        let e = s.update(c).unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
        // no-op update: no new revision
        let same = s.update(b.clone()).unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], "2");
        let d = s.delete("v1", "ConfigMap", Some("a"), "x").unwrap();
        assert_eq!(d["metadata"]["resourceVersion"], "3");
        assert!(s.get("v1", "ConfigMap", Some("a"), "x").is_none());
    }

    #[test]
    fn paged_list_is_consistent() {
        let s = Store::new(1000);
        for i in 0..10 {
            s.create(cm("a", &format!("o{i}"), "1")).unwrap();
        }
        let def = s.def_for("v1", "ConfigMap").unwrap();
        let q = ListQuery {
            limit: 4,
            ..Default::default()
        };
        let p1 = s.list_in(&def, &q).unwrap();
        assert_eq!(p1.items.len(), 4);
        // writes after the first page must not show in later pages
        s.delete("v1", "ConfigMap", Some("a"), "o5").unwrap();
        s.create(cm("a", "o55", "1")).unwrap();
        let mut o7 = s.get("v1", "ConfigMap", Some("a"), "o7").unwrap();
        o7["data"]["v"] = "2".into();
        s.update(o7).unwrap();
        let mut names: Vec<String> = p1.items.iter().map(|o| o.name.to_string()).collect();
        let mut cont = p1.cont;
        while let Some(c) = cont {
            let p = s
                .list_in(
                    &def,
                    &ListQuery {
                        limit: 4,
                        cont: Some(c),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(p.rv, p1.rv);
            for o in &p.items {
                if &*o.name == "o7" {
                    assert_eq!(o.to_value()["data"]["v"], "1");
                }
            }
            names.extend(p.items.iter().map(|o| o.name.to_string()));
            cont = p.cont;
        }
        let want: Vec<String> = (0..10).map(|i| format!("o{i}")).collect();
        assert_eq!(names, want);
        s.compact();
        let p = s.list_in(&def, &q).unwrap();
        let e = s
            .list_in(
                &def,
                &ListQuery {
                    limit: 4,
                    cont: p.cont.clone(),
                    ..Default::default()
                },
            )
            .map(|_| ());
        assert!(e.is_ok());
        s.compact();
        let e = s
            .list_in(
                &def,
                &ListQuery {
                    limit: 4,
                    cont: p.cont,
                    ..Default::default()
                },
            )
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.code, 410);
    }

    #[test]
    fn finalizers_and_namespace_cascade() {
        let s = Store::new(100);
        s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}))
            .unwrap();
        let mut f = cm("a", "f", "1");
        f["metadata"]["finalizers"] = json!(["x/y"]);
        s.create(f).unwrap();
        let d = s.delete("v1", "ConfigMap", Some("a"), "f").unwrap();
        assert!(d["metadata"]["deletionTimestamp"].is_string());
        let mut d2 = d.clone();
        d2["metadata"]["finalizers"] = json!([]);
        s.update(d2).unwrap();
        assert!(s.get("v1", "ConfigMap", Some("a"), "f").is_none());
        s.create(cm("a", "g", "1")).unwrap();
        s.create(cm("b", "g", "1")).unwrap();
        s.delete("v1", "Namespace", None, "a").unwrap();
        assert_eq!(s.len(), 1);
    }
}
