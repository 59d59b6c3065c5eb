//! The object store: pre-serialized objects per resource, one global revision counter, a bounded
//! event history (the source of watches and of consistent paged lists), and the fault switches.
//!
//! `Store` (here) is the facade; each module holds one part of what it decides:
//! - `object`: the stored form of an object (JSON without apiVersion/kind, key, labels);
//! - `crud`: creates, updates and deletes with the real server's checks and owned fields;
//! - `history`: the event of each write, the bounded history, waking and expiring watches;
//! - `paging`: the revision a list reads, the state at it, pages and continue tokens;
//! - `crd`: CustomResourceDefinitions, whose writes serve or retire the resources they define;
//! - `fault_switches`: the injected faults.

mod crd;
mod crud;
mod fault_switches;
mod history;
mod json_create;
mod object;
mod paging;
#[cfg(test)]
mod tests;

pub(crate) use history::{is_too_large, too_large, Event, EventType};
pub(crate) use object::{Key, Obj};
pub(crate) use paging::{ListQuery, ListResult};

use crate::error::ApiError;
use crate::resources::{Registry, ResourceDef};
use fault_switches::Faults;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

pub(crate) struct Inner {
    pub rv: u64,
    /// Every event with rv > compacted_rv is still in `history`.
    pub compacted_rv: u64,
    pub objects: HashMap<Arc<str>, BTreeMap<Key, Arc<Obj>>>,
    pub history: VecDeque<Arc<Event>>,
    history_cap: usize,
    pub registry: Registry,
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
        self.wake_watchers(rv);
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
}
