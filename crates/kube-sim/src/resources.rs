//! The kind table (built-ins and CRD-defined resources) and the discovery documents built from it.

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One served resource at one group/version.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub has_status: bool,
    /// Storage identity shared by every version of a resource (`plural` or `plural.group`),
    /// so a CRD's versions read and write the same objects.
    pub key: Arc<str>,
    /// Name of the CRD that defines this resource, `None` for built-ins.
    pub crd: Option<String>,
}

impl ResourceDef {
    /// Built-in workloads with a `/scale` subresource (autoscaling/v1 Scale).
    pub fn has_scale(&self) -> bool {
        self.crd.is_none()
            && self.group == "apps"
            && matches!(
                self.plural.as_str(),
                "deployments" | "replicasets" | "statefulsets"
            )
    }

    /// The real server keeps `metadata.generation` for this kind: custom resources, CRDs and
    /// the built-ins with a spec it acts on (not ConfigMaps, Secrets, Namespaces, Services,
    /// RBAC objects, Leases, ...).
    pub fn has_generation(&self) -> bool {
        self.crd.is_some()
            || matches!(
                self.plural.as_str(),
                "pods"
                    | "deployments"
                    | "replicasets"
                    | "statefulsets"
                    | "daemonsets"
                    | "jobs"
                    | "cronjobs"
                    | "customresourcedefinitions"
                    | "ingresses"
                    | "poddisruptionbudgets"
            )
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

pub fn storage_key(group: &str, plural: &str) -> Arc<str> {
    if group.is_empty() {
        Arc::from(plural)
    } else {
        Arc::from(format!("{plural}.{group}").as_str())
    }
}

/// Built-in kinds: (group, version, plural, singular, Kind, namespaced, short names, has status).
/// Adding a kind is one line.
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static str,
    bool,
);

#[rustfmt::skip]
const BUILTINS: &[Builtin] = &[
    ("", "v1", "namespaces", "namespace", "Namespace", false, "ns", true),
    ("", "v1", "pods", "pod", "Pod", true, "po", true),
    ("", "v1", "configmaps", "configmap", "ConfigMap", true, "cm", false),
    ("", "v1", "secrets", "secret", "Secret", true, "", false),
    ("", "v1", "services", "service", "Service", true, "svc", true),
    ("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true, "sa", false),
    ("", "v1", "events", "event", "Event", true, "ev", false),
    ("", "v1", "endpoints", "endpoints", "Endpoints", true, "ep", false),
    ("", "v1", "nodes", "node", "Node", false, "no", true),
    ("", "v1", "persistentvolumeclaims", "persistentvolumeclaim", "PersistentVolumeClaim", true, "pvc", true),
    ("apps", "v1", "deployments", "deployment", "Deployment", true, "deploy", true),
    ("apps", "v1", "replicasets", "replicaset", "ReplicaSet", true, "rs", true),
    ("apps", "v1", "statefulsets", "statefulset", "StatefulSet", true, "sts", true),
    ("apps", "v1", "daemonsets", "daemonset", "DaemonSet", true, "ds", true),
    ("batch", "v1", "jobs", "job", "Job", true, "", true),
    ("batch", "v1", "cronjobs", "cronjob", "CronJob", true, "cj", true),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "customresourcedefinition", "CustomResourceDefinition", false, "crd,crds", true),
    ("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, "", false),
    ("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", true, "", false),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", true, "", false),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", false, "", false),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", false, "", false),
    ("networking.k8s.io", "v1", "ingresses", "ingress", "Ingress", true, "ing", true),
    ("policy", "v1", "poddisruptionbudgets", "poddisruptionbudget", "PodDisruptionBudget", true, "pdb", true),
];

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn builtins() -> Vec<Arc<ResourceDef>> {
    BUILTINS
        .iter()
        .map(
            |&(group, version, plural, singular, kind, namespaced, short, status)| {
                Arc::new(ResourceDef {
                    group: group.into(),
                    version: version.into(),
                    plural: plural.into(),
                    singular: singular.into(),
                    kind: kind.into(),
                    namespaced,
                    short_names: short
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                    categories: if namespaced && group != "rbac.authorization.k8s.io" {
                        vec!["all".into()]
                    } else {
                        vec![]
                    },
                    has_status: status,
                    key: storage_key(group, plural),
                    crd: None,
                })
            },
        )
        .collect()
}

/// Orders versions the way Kubernetes does: GA before beta before alpha, higher numbers first,
/// anything unparseable last (alphabetically).
pub fn version_priority(a: &str, b: &str) -> std::cmp::Ordering {
    fn parse(v: &str) -> Option<(u8, u32, u32)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let major: u32 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((3, major, 0));
        }
        for (prefix, rank) in [("beta", 2u8), ("alpha", 1u8)] {
            if let Some(n) = tail.strip_prefix(prefix) {
                return Some((rank, major, n.parse().ok()?));
            }
        }
        None
    }
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Resources defined by one CRD object, or a reason it is invalid (field, message).
pub fn defs_from_crd(crd: &Value) -> Result<Vec<Arc<ResourceDef>>, (String, String)> {
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &crd["spec"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let group = s(&spec["group"]);
    let names = &spec["names"];
    let plural = s(&names["plural"]);
    let kind = s(&names["kind"]);
    if group.is_empty() {
        return Err(("spec.group".into(), "Required value".into()));
    }
    if plural.is_empty() {
        return Err(("spec.names.plural".into(), "Required value".into()));
    }
    if kind.is_empty() {
        return Err(("spec.names.kind".into(), "Required value".into()));
    }
    if name != format!("{plural}.{group}") {
        return Err((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let singular = match s(&names["singular"]) {
        x if x.is_empty() => kind.to_lowercase(),
        x => x,
    };
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        return Err(("spec.versions".into(), "Required value".into()));
    }
    let key = storage_key(&group, &plural);
    Ok(versions
        .iter()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .map(|v| {
            Arc::new(ResourceDef {
                group: group.clone(),
                version: s(&v["name"]),
                plural: plural.clone(),
                singular: singular.clone(),
                kind: kind.clone(),
                namespaced,
                short_names: strs(&names["shortNames"]),
                categories: strs(&names["categories"]),
                has_status: v["subresources"]["status"].is_object(),
                key: key.clone(),
                crd: Some(name.to_string()),
            })
        })
        .collect())
}

/// Everything served, with the indexes the router and the store need.
#[derive(Debug, Clone)]
pub struct Registry {
    builtins: Vec<Arc<ResourceDef>>,
    crds: BTreeMap<String, Vec<Arc<ResourceDef>>>,
    by_path: HashMap<(String, String, String), Arc<ResourceDef>>,
    by_kind: HashMap<(String, String), Vec<Arc<ResourceDef>>>,
}

impl Default for Registry {
    fn default() -> Self {
        let mut r = Registry {
            builtins: builtins(),
            crds: BTreeMap::new(),
            by_path: HashMap::new(),
            by_kind: HashMap::new(),
        };
        r.reindex();
        r
    }
}

pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

impl Registry {
    fn all(&self) -> impl Iterator<Item = &Arc<ResourceDef>> {
        self.builtins.iter().chain(self.crds.values().flatten())
    }

    fn reindex(&mut self) {
        let mut by_path = HashMap::new();
        let mut by_kind: HashMap<(String, String), Vec<Arc<ResourceDef>>> = HashMap::new();
        for d in self.all() {
            by_path.insert(
                (d.group.clone(), d.version.clone(), d.plural.clone()),
                d.clone(),
            );
            by_kind
                .entry((d.group.clone(), d.kind.clone()))
                .or_default()
                .push(d.clone());
        }
        self.by_path = by_path;
        self.by_kind = by_kind;
    }

    pub fn set_crd(&mut self, name: &str, defs: Vec<Arc<ResourceDef>>) {
        self.crds.insert(name.to_string(), defs);
        self.reindex();
    }

    pub fn remove_crd(&mut self, name: &str) {
        self.crds.remove(name);
        self.reindex();
    }

    pub fn by_path(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// The resource for an object's apiVersion+kind; falls back to another served version of
    /// the same group and kind (the object is then stored as written).
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        let (group, version) = split_api_version(api_version);
        let defs = self.by_kind.get(&(group.to_string(), kind.to_string()))?;
        defs.iter()
            .find(|d| d.version == version)
            .or_else(|| defs.first())
            .cloned()
    }

    /// Every storage key with one def each (the preferred version).
    pub fn storage_defs(&self) -> Vec<Arc<ResourceDef>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for d in self.all() {
            if seen.insert(d.key.clone()) {
                out.push(
                    self.preferred(&d.group, &d.plural)
                        .unwrap_or_else(|| d.clone()),
                );
            }
        }
        out
    }

    fn preferred(&self, group: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        let mut v: Vec<_> = self
            .all()
            .filter(|d| d.group == group && d.plural == plural)
            .cloned()
            .collect();
        v.sort_by(|a, b| version_priority(&a.version, &b.version));
        v.into_iter().next()
    }

    /// group -> versions, in priority order; the core group ("") excluded.
    fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut g: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in self.all().filter(|d| !d.group.is_empty()) {
            let vs = g.entry(d.group.clone()).or_default();
            if !vs.contains(&d.version) {
                vs.push(d.version.clone());
            }
        }
        for vs in g.values_mut() {
            vs.sort_by(|a, b| version_priority(a, b));
        }
        g
    }

    /// Every served (group, version), the core group first.
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut out = vec![(String::new(), "v1".to_string())];
        for (g, vs) in self.groups() {
            out.extend(vs.into_iter().map(|v| (g.clone(), v)));
        }
        out
    }

    pub fn group_version_exists(&self, group: &str, version: &str) -> bool {
        self.all().any(|d| d.group == group && d.version == version)
    }

    /// `/apis`: APIGroupList.
    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .into_iter()
            .map(|(name, versions)| {
                let vs: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                    .collect();
                json!({"name": name, "versions": vs, "preferredVersion": vs[0].clone()})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `/apis/{group}`: APIGroup.
    pub fn api_group(&self, group: &str) -> Option<Value> {
        let versions = self.groups().remove(group)?;
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        Some(
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": group,
            "versions": vs, "preferredVersion": vs[0].clone()}),
        )
    }

    /// `/api/v1` or `/apis/{group}/{version}`: APIResourceList.
    pub fn api_resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let defs: Vec<_> = self
            .all()
            .filter(|d| d.group == group && d.version == version)
            .collect();
        if defs.is_empty() {
            return None;
        }
        let mut resources = Vec::new();
        for d in defs {
            let mut r = json!({
                "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced,
                "kind": d.kind, "verbs": VERBS,
            });
            if !d.short_names.is_empty() {
                r["shortNames"] = json!(d.short_names);
            }
            if !d.categories.is_empty() {
                r["categories"] = json!(d.categories);
            }
            resources.push(r);
            if d.has_status {
                resources.push(json!({
                    "name": format!("{}/status", d.plural), "singularName": "",
                    "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"],
                }));
            }
            if d.has_scale() {
                resources.push(json!({
                    "name": format!("{}/scale", d.plural), "singularName": "",
                    "namespaced": d.namespaced, "group": "autoscaling", "version": "v1",
                    "kind": "Scale", "verbs": ["get", "patch", "update"],
                }));
            }
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": resources}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        let mut v = vec![
            "v1alpha1", "v1", "v2beta1", "v1beta2", "v1alpha2", "foo", "v2",
        ];
        v.sort_by(|a, b| version_priority(a, b));
        assert_eq!(
            v,
            ["v2", "v1", "v2beta1", "v1beta2", "v1alpha2", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn crd_defs_and_discovery() {
        let crd = json!({"metadata": {"name": "widgets.example.io"}, "spec": {
            "group": "example.io", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1alpha1", "served": true}, {"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}}}]}});
        let defs = defs_from_crd(&crd).unwrap();
        let mut r = Registry::default();
        r.set_crd("widgets.example.io", defs);
        assert!(r.by_path("example.io", "v1", "widgets").is_some());
        assert_eq!(
            r.by_kind("example.io/v1alpha1", "Widget").unwrap().version,
            "v1alpha1"
        );
        let g = r.api_group("example.io").unwrap();
        assert_eq!(g["preferredVersion"]["version"], "v1");
        let l = r.api_resource_list("example.io", "v1").unwrap();
        assert_eq!(l["resources"][0]["singularName"], "widget");
        assert_eq!(l["resources"][1]["name"], "widgets/status");
        r.remove_crd("widgets.example.io");
        assert!(r.api_group("example.io").is_none());
    }
}
