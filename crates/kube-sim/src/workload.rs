//! Deterministic workload generator: realistic pods (with their Deployments, ReplicaSets,
//! Services, ConfigMaps), Krateo-style CRDs and custom resources, and a steady churn.
//!
//! Pods come in two shapes, both generated here: the seeded pods of `preload` and `churn`
//! (owned by generated apps, random names and uids from the seed), and the index-addressed
//! [`reference`] pods of calibrated size that `ingest-bench` loads (pod `i` is a pure function
//! of `i`, its benchmark figures were measured with them).

use crate::store::Store;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub mod reference;

/// Annotation stamped on every churned object: RFC 3339 with nanoseconds, when the change was made.
pub const CHANGED_AT: &str = "kube-sim.io/changed-at";
/// Label carried by Krateo custom resources.
pub const COMPOSITION_ID: &str = "krateo.io/composition-id";

/// What `preload` generates.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub seed: u64,
    pub namespaces: usize,
    pub pods: usize,
    /// Approximate JSON size of each pod (padding goes into container env vars).
    pub target_bytes: usize,
    /// Deployments, ReplicaSets, Services and ConfigMaps owning the pods (one app per ~50 pods).
    pub apps: bool,
    /// The Krateo CRDs (plus one CRD of an unmanaged group) and `custom_resources` objects.
    pub krateo: bool,
    pub custom_resources: usize,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 42,
            namespaces: 10,
            pods: 1000,
            target_bytes: 6 * 1024,
            apps: true,
            krateo: true,
            custom_resources: 100,
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkloadReport {
    pub objects: usize,
    pub namespaces: usize,
    pub pods: usize,
    pub crds: usize,
    pub custom_resources: usize,
    pub other: usize,
    /// Mean JSON size of a generated pod, bytes.
    pub pod_mean_bytes: usize,
    pub pod_total_bytes: usize,
    pub errors: usize,
    pub elapsed_ms: u128,
}

fn uuid(rng: &mut SmallRng) -> String {
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

fn hex(rng: &mut SmallRng, n: usize) -> String {
    const A: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect()
}

/// Deterministic timestamps: a fixed base plus an offset, so two runs with a seed are equal.
fn ts(offset_s: i64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
        .map(|d| d.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now());
    (base + chrono::Duration::seconds(offset_s)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn now_nanos() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

const APP_NAMES: &[&str] = &[
    "checkout",
    "payments",
    "catalog",
    "search",
    "frontend",
    "gateway",
    "inventory",
    "auth",
    "notifications",
    "reports",
    "billing",
    "orders",
];

/// Serialized size without allocating the output.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// One application: what its pods point at.
#[derive(Debug, Clone)]
pub struct App {
    pub namespace: String,
    pub name: String,
    pub rs_name: String,
    pub rs_uid: String,
    pub hash: String,
}

fn app(rng: &mut SmallRng, namespace: &str, idx: usize) -> App {
    let name = format!("{}-{idx}", APP_NAMES[idx % APP_NAMES.len()]);
    let hash = hex(rng, 10);
    App {
        namespace: namespace.into(),
        rs_name: format!("{name}-{hash}"),
        rs_uid: uuid(rng),
        hash,
        name,
    }
}

fn container(rng: &mut SmallRng, name: &str, app: &App, env_n: usize) -> Value {
    let env: Vec<Value> = (0..env_n)
        .map(|i| match i % 4 {
            0 => json!({"name": format!("{}_FEATURE_{i}", name.to_uppercase().replace('-', "_")),
                "value": format!("enabled-{}", hex(rng, 8))}),
            1 => json!({"name": format!("CONFIG_{i}"), "valueFrom": {"configMapKeyRef":
                {"name": format!("{}-config", app.name), "key": format!("key-{i}")}}}),
            2 => json!({"name": format!("SECRET_{i}"), "valueFrom": {"secretKeyRef":
                {"name": format!("{}-secret", app.name), "key": format!("token-{i}")}}}),
            _ => json!({"name": format!("POD_FIELD_{i}"), "valueFrom": {"fieldRef":
                {"apiVersion": "v1", "fieldPath": "metadata.name"}}}),
        })
        .collect();
    json!({
        "name": name,
        "image": format!("registry.example.com/{}/{name}:1.{}.{}", app.name, rng.random_range(0..20), rng.random_range(0..50)),
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": {"cpu": format!("{}m", 50 * rng.random_range(1..10)), "memory": format!("{}Mi", 64 * rng.random_range(1..8))},
                      "limits": {"cpu": "1", "memory": "1Gi"}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app", "readOnly": true},
            {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
            "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    })
}

/// A realistic pod of about `target_bytes` of JSON, owned by `app`'s ReplicaSet.
pub fn pod(rng: &mut SmallRng, app: &App, idx: usize, target_bytes: usize) -> Value {
    let name = format!("{}-{}", app.rs_name, hex(rng, 5));
    let names = ["app", "sidecar-proxy", "log-shipper", "metrics-exporter"];
    // Bigger targets get more containers; the rest of the size is padding.
    let n_containers =
        (target_bytes / 3000).clamp(1, 3) + usize::from(target_bytes >= 8192 && idx % 2 == 1);
    let containers: Vec<Value> = names[..n_containers]
        .iter()
        .map(|c| container(rng, c, app, 4))
        .collect();
    let created = ts(idx as i64);
    let statuses: Vec<Value> = names[..n_containers]
        .iter()
        .map(|c| json!({
            "name": c, "ready": true, "started": true, "restartCount": 0,
            "image": format!("registry.example.com/{}/{c}:1.0.0", app.name),
            "imageID": format!("registry.example.com/{}/{c}@sha256:{}{}", app.name, hex(rng, 32), hex(rng, 32)),
            "containerID": format!("containerd://{}{}", hex(rng, 32), hex(rng, 32)),
            "state": {"running": {"startedAt": created}}, "lastState": {},
        }))
        .collect();
    let node = format!("node-{}", rng.random_range(0..50));
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": format!("{}-", app.rs_name),
            "namespace": app.namespace,
            "uid": uuid(rng),
            "creationTimestamp": created,
            "labels": {"app.kubernetes.io/name": app.name, "app.kubernetes.io/part-of": "shop",
                "pod-template-hash": app.hash, "tier": (["frontend", "backend", "data"][idx % 3]),
                "env": (["prod", "staging", "dev"][idx % 3])},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                "kubectl.kubernetes.io/restartedAt": created},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": app.rs_name,
                "uid": app.rs_uid, "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": created,
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {},
                    "f:app.kubernetes.io/name": {}, "f:pod-template-hash": {}}, "f:ownerReferences": {".": {},
                    (format!("k:{{\"uid\":\"{}\"}}", app.rs_uid)): {}}}, "f:spec": {"f:containers": {}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": created,
                 "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {"f:status": {"f:conditions": {},
                    "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {}, "f:startTime": {}}}},
            ],
        },
        "spec": {
            "containers": containers,
            "volumes": [
                {"name": "config", "configMap": {"name": format!("{}-config", app.name), "defaultMode": 420}},
                {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}},
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": app.name,
            "nodeName": node,
            "schedulerName": "default-scheduler",
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": created},
                {"type": "Initialized", "status": "True", "lastTransitionTime": created},
                {"type": "Ready", "status": "True", "lastTransitionTime": created},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": created},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": created},
            ],
            "hostIP": format!("10.0.{}.{}", rng.random_range(0..50), rng.random_range(1..255)),
            "podIP": format!("10.244.{}.{}", rng.random_range(0..255), rng.random_range(1..255)),
            "startTime": created,
            "qosClass": "Burstable",
            "containerStatuses": statuses,
        },
    });
    if target_bytes < 3500 {
        // Small objects: keep the shape, drop the bulky optional parts.
        for c in p["spec"]["containers"].as_array_mut().into_iter().flatten() {
            if let Some(c) = c.as_object_mut() {
                for k in [
                    "livenessProbe",
                    "readinessProbe",
                    "securityContext",
                    "env",
                    "volumeMounts",
                ] {
                    c.remove(k);
                }
            }
        }
        for (path, keep) in [
            ("/spec/tolerations", 0),
            ("/metadata/managedFields", 1),
            ("/status/conditions", 2),
            ("/spec/volumes", 1),
        ] {
            if let Some(a) = p.pointer_mut(path).and_then(Value::as_array_mut) {
                a.truncate(keep);
            }
        }
    }
    // Pad to the target size with plain env vars on the main container (~70 bytes each).
    let size = json_len(&p);
    if target_bytes > size {
        let n = (target_bytes - size) / 70;
        if let Some(env) = p["spec"]["containers"][0]["env"].as_array_mut() {
            for i in 0..n {
                env.push(json!({"name": format!("PADDING_SETTING_{i:04}"), "value": format!("value-{}-{}", i, hex(rng, 24))}));
            }
        }
    }
    p
}

fn app_objects(app: &App, replicas: usize, idx: usize) -> Vec<Value> {
    let labels = json!({"app.kubernetes.io/name": app.name, "app.kubernetes.io/part-of": "shop"});
    let created = ts(idx as i64);
    let template = json!({"metadata": {"labels": labels}, "spec": {"containers": [
        {"name": "app", "image": format!("registry.example.com/{}/app:1.0.0", app.name)}]}});
    vec![
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": app.name, "namespace": app.namespace, "labels": labels, "creationTimestamp": created},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}},
            "status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas, "observedGeneration": 1,
                "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "lastTransitionTime": created}]}}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": app.rs_name, "namespace": app.namespace, "uid": app.rs_uid, "creationTimestamp": created,
                "labels": {"app.kubernetes.io/name": app.name, "pod-template-hash": app.hash},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": app.name,
                    "uid": "00000000-0000-0000-0000-000000000000", "controller": true}]},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template},
            "status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}}),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": app.name, "namespace": app.namespace, "labels": labels, "creationTimestamp": created},
            "spec": {"selector": labels, "type": "ClusterIP", "clusterIP": format!("10.96.{}.{}", idx / 250 % 250, idx % 250 + 1),
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("{}-config", app.name), "namespace": app.namespace, "labels": labels, "creationTimestamp": created},
            "data": {"app.yaml": format!("server:\n  port: 8080\nfeature:\n  name: {}\n", app.name), "LOG_LEVEL": "info"}}),
    ]
}

fn crd(group: &str, kind: &str, plural: &str, versions: &[(&str, bool)], scope: &str) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|(v, storage)| json!({"name": v, "served": true, "storage": storage,
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            "subresources": {"status": {}}}))
        .collect();
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {"group": group, "scope": scope, "versions": vs,
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind, "listKind": format!("{kind}List")}}})
}

/// The Krateo CRDs plus one CRD of an unmanaged group (`example.other.io`).
pub fn krateo_crds() -> Vec<Value> {
    vec![
        crd(
            "composition.krateo.io",
            "FireworksApp",
            "fireworksapps",
            &[("v1alpha1", false), ("v1alpha2", true)],
            "Namespaced",
        ),
        crd(
            "widgets.templates.krateo.io",
            "Panel",
            "panels",
            &[("v1beta1", true)],
            "Namespaced",
        ),
        crd(
            "widgets.templates.krateo.io",
            "Button",
            "buttons",
            &[("v1beta1", true)],
            "Namespaced",
        ),
        crd(
            "core.krateo.io",
            "CompositionDefinition",
            "compositiondefinitions",
            &[("v1alpha1", true)],
            "Namespaced",
        ),
        crd(
            "example.other.io",
            "Thing",
            "things",
            &[("v1", true)],
            "Namespaced",
        ),
    ]
}

/// (apiVersion, kind) of the custom resources `krateo_crds` defines.
pub const KRATEO_KINDS: &[(&str, &str)] = &[
    ("composition.krateo.io/v1alpha2", "FireworksApp"),
    ("widgets.templates.krateo.io/v1beta1", "Panel"),
    ("widgets.templates.krateo.io/v1beta1", "Button"),
    ("core.krateo.io/v1alpha1", "CompositionDefinition"),
    ("example.other.io/v1", "Thing"),
];

/// One custom resource; every 20th carries a composition id that is not a UUID.
pub fn custom_resource(rng: &mut SmallRng, namespace: &str, idx: usize) -> Value {
    let (av, kind) = match idx % 20 {
        0..=7 => KRATEO_KINDS[0],
        8..=12 => KRATEO_KINDS[1],
        13..=16 => KRATEO_KINDS[2],
        17 | 18 => KRATEO_KINDS[3],
        _ => KRATEO_KINDS[4],
    };
    let comp_id = if idx % 20 == 5 {
        format!("not-a-uuid-{idx}")
    } else {
        uuid(rng)
    };
    let created = ts(idx as i64);
    let spec = match kind {
        "FireworksApp" => json!({"app": {"service": {"type": "NodePort", "port": 31180}},
            "git": {"toRepo": {"org": "krateo", "name": format!("app-{idx}"), "branch": "main"}, "unsupportedCapabilities": true}}),
        "Panel" | "Button" => {
            json!({"widgetData": {"title": format!("{kind} {idx}"), "icon": "fa-rocket",
            "actions": [{"id": "go", "verb": "GET", "path": format!("/call?resource=x&name={idx}")}]}})
        }
        "CompositionDefinition" => {
            json!({"chart": {"url": "oci://registry.krateo.io/charts/fireworks-app", "version": "1.1.13"}})
        }
        _ => json!({"size": idx % 7}),
    };
    json!({"apiVersion": av, "kind": kind,
        "metadata": {"name": format!("{}-{idx}", kind.to_lowercase()), "namespace": namespace,
            "uid": uuid(rng), "creationTimestamp": created,
            "labels": {COMPOSITION_ID: comp_id, "krateo.io/composition-version": "v1alpha2"}},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Available", "lastTransitionTime": created}],
            "observedGeneration": 1}})
}

/// Loads the workload into `store`; deterministic for a given config.
pub fn preload(store: &Store, cfg: &WorkloadConfig) -> WorkloadReport {
    let start = Instant::now();
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let mut r = WorkloadReport::default();
    let nss: Vec<String> = (0..cfg.namespaces.max(1))
        .map(|i| format!("ns-{i}"))
        .collect();
    let mut batch: Vec<Value> = nss
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"kubernetes.io/metadata.name": n}}}))
        .collect();
    r.namespaces = batch.len();
    if cfg.krateo {
        batch.extend(krateo_crds());
        r.crds = batch.len() - r.namespaces;
    }
    let flush = |batch: &mut Vec<Value>, r: &mut WorkloadReport, rng: &mut SmallRng| {
        // Every object gets a seeded uid and a fixed timestamp so runs with one seed are equal.
        for o in batch.iter_mut() {
            if o["metadata"]["uid"].is_null() {
                o["metadata"]["uid"] = uuid(rng).into();
            }
            if o["metadata"]["creationTimestamp"].is_null() {
                o["metadata"]["creationTimestamp"] = ts(0).into();
            }
        }
        let (n, err) = store.create_many(batch.drain(..), true);
        r.objects += n;
        if let Some(e) = err {
            r.errors += 1;
            tracing::warn!(error = %e, "workload preload");
        }
    };
    flush(&mut batch, &mut r, &mut rng);
    let n_apps = (cfg.pods / 50).max(1);
    let apps: Vec<App> = (0..n_apps)
        .map(|i| app(&mut rng, &nss[i % nss.len()], i))
        .collect();
    if cfg.apps {
        for (i, a) in apps.iter().enumerate() {
            batch.extend(app_objects(a, cfg.pods / n_apps, i));
        }
        r.other = batch.len();
        flush(&mut batch, &mut r, &mut rng);
    }
    // Pods are generated and serialized on every core, each pod from its own seeded generator
    // (so the output does not depend on the threading), and stored from their bytes.
    let gen = |i: usize| -> Vec<u8> {
        let mut prng =
            SmallRng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64);
        let pod = pod(&mut prng, &apps[i % apps.len()], i, cfg.target_bytes);
        serde_json::to_vec(&pod).unwrap_or_default()
    };
    const BATCH: usize = 4000;
    let mut start_i = 0;
    while start_i < cfg.pods {
        let end = (start_i + BATCH).min(cfg.pods);
        let pods = crate::parallel::map_indexed(end - start_i, |k| gen(start_i + k));
        let (n, err) = store.create_many_json(&pods, true);
        r.objects += n;
        if let Some(e) = err {
            r.errors += 1;
            tracing::warn!(error = %e, "workload preload");
        }
        start_i = end;
    }
    r.pods = cfg.pods;
    r.pod_total_bytes = store.stored_bytes("v1", "Pod");
    if cfg.krateo {
        for i in 0..cfg.custom_resources {
            batch.push(custom_resource(&mut rng, &nss[i % nss.len()], i));
        }
        r.custom_resources = cfg.custom_resources;
        flush(&mut batch, &mut r, &mut rng);
    }
    r.pod_mean_bytes = r.pod_total_bytes.checked_div(r.pods).unwrap_or(0);
    r.elapsed_ms = start.elapsed().as_millis();
    r
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ChurnReport {
    pub updates: u64,
    pub creates: u64,
    pub deletes: u64,
    pub errors: u64,
    pub elapsed_ms: u128,
}

/// Applies about `rate_per_s` changes per second (80% updates, 10% creates, 10% deletes) to the
/// pods and Krateo custom resources in the store, until `duration` passes or `cancel` fires.
/// Every write stamps `kube-sim.io/changed-at`.
pub async fn churn(
    store: Store,
    rate_per_s: f64,
    duration: Option<Duration>,
    seed: u64,
    cancel: CancellationToken,
) -> ChurnReport {
    let start = Instant::now();
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut report = ChurnReport::default();
    let mut pool: Vec<(String, String, Option<String>, String)> = Vec::new();
    let mut kinds = vec![("v1", "Pod")];
    kinds.extend_from_slice(KRATEO_KINDS);
    for (av, kind) in &kinds {
        for (ns, name) in store.names(av, kind) {
            pool.push((av.to_string(), kind.to_string(), ns, name));
        }
    }
    let namespaces: Vec<String> = store
        .names("v1", "Namespace")
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let app_tpl = app(&mut rng, "default", 0);
    let tick = Duration::from_millis(10);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut done: u64 = 0;
    let mut seq: usize = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = interval.tick() => {}
        }
        let elapsed = start.elapsed();
        if duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        let due = (elapsed.as_secs_f64() * rate_per_s) as u64;
        while done < due {
            done += 1;
            let roll = rng.random_range(0..100);
            let stamp = now_nanos();
            let res = if roll < 10 || pool.is_empty() {
                seq += 1;
                let ns = namespaces
                    .get(rng.random_range(0..namespaces.len().max(1)))
                    .cloned()
                    .unwrap_or_else(|| "default".into());
                let mut obj = if rng.random_range(0..4) == 0
                    && store.names(KRATEO_KINDS[0].0, KRATEO_KINDS[0].1).len() + 1 > 1
                    && !pool.iter().all(|p| p.1 == "Pod")
                {
                    let mut o = custom_resource(&mut rng, &ns, 1_000_000 + seq);
                    o["metadata"]["name"] = format!(
                        "churn-{}-{seq}",
                        o["kind"].as_str().unwrap_or("cr").to_lowercase()
                    )
                    .into();
                    o
                } else {
                    let a = App {
                        namespace: ns.clone(),
                        ..app_tpl.clone()
                    };
                    let mut p = pod(&mut rng, &a, seq, 0);
                    p["metadata"]["name"] = format!("churn-{}-{seq}", hex(&mut rng, 5)).into();
                    p
                };
                obj["metadata"]["annotations"][CHANGED_AT] = stamp.into();
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("uid");
                    m.remove("creationTimestamp");
                }
                let key = (
                    obj["apiVersion"].as_str().unwrap_or_default().to_string(),
                    obj["kind"].as_str().unwrap_or_default().to_string(),
                    Some(ns),
                    obj["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
                store.create(obj).map(|_| {
                    pool.push(key);
                    report.creates += 1;
                })
            } else if roll < 20 {
                let i = rng.random_range(0..pool.len());
                let (av, kind, ns, name) = pool.swap_remove(i);
                // A deleted object's last state carries the stamp too, via its DELETED event.
                let _ = store.merge_patch(
                    &av,
                    &kind,
                    ns.as_deref(),
                    &name,
                    &json!({"metadata": {"annotations": {CHANGED_AT: stamp}}}),
                );
                store
                    .delete(&av, &kind, ns.as_deref(), &name)
                    .map(|_| report.deletes += 1)
            } else {
                let i = rng.random_range(0..pool.len());
                let (av, kind, ns, name) = pool[i].clone();
                let counter = rng.random_range(0..1_000_000u32);
                store
                    .merge_patch(
                        &av,
                        &kind,
                        ns.as_deref(),
                        &name,
                        &json!({
                            "metadata": {"annotations": {CHANGED_AT: stamp}},
                            "status": {"churnCounter": counter},
                        }),
                    )
                    .map(|_| report.updates += 1)
            };
            if res.is_err() {
                report.errors += 1;
            }
        }
    }
    report.elapsed_ms = start.elapsed().as_millis();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sized() {
        let a = Store::new(100);
        let b = Store::new(100);
        let cfg = WorkloadConfig {
            pods: 60,
            custom_resources: 40,
            ..Default::default()
        };
        let ra = preload(&a, &cfg);
        preload(&b, &cfg);
        assert_eq!(ra.errors, 0);
        assert!(a.list_all() == b.list_all(), "preload is not deterministic");
        // Nothing may take the clock: two preloads a second apart must still be equal.
        let crds: Vec<Value> = a
            .list_all()
            .into_iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .collect();
        assert!(!crds.is_empty());
        for crd in &crds {
            for c in crd["status"]["conditions"].as_array().into_iter().flatten() {
                assert_eq!(
                    c["lastTransitionTime"],
                    ts(0),
                    "{}",
                    crd["metadata"]["name"]
                );
            }
        }
        assert!(
            ra.pod_mean_bytes > 5000 && ra.pod_mean_bytes < 7500,
            "{}",
            ra.pod_mean_bytes
        );
        let small = preload(
            &Store::new(10),
            &WorkloadConfig {
                pods: 10,
                target_bytes: 2048,
                ..Default::default()
            },
        );
        assert!(small.pod_mean_bytes < 3000, "{}", small.pod_mean_bytes);
        let big = preload(
            &Store::new(10),
            &WorkloadConfig {
                pods: 10,
                target_bytes: 16384,
                ..Default::default()
            },
        );
        assert!(
            big.pod_mean_bytes > 15000 && big.pod_mean_bytes < 18000,
            "{}",
            big.pod_mean_bytes
        );
        let crs = a.list("composition.krateo.io/v1alpha2", "FireworksApp", None);
        assert!(!crs.is_empty());
        assert!(crs
            .iter()
            .all(|c| c["metadata"]["labels"][COMPOSITION_ID].is_string()));
    }
}
