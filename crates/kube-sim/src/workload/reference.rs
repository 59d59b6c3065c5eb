//! Reference pods: the benchmark's object set (`ingest-bench`, docs/benchmarks.md). Pods of
//! realistic shape (containers, probes, env, volumes, owner references, labels with a Krateo
//! composition id on a share of them, managedFields, a status with conditions and container
//! statuses) spread over namespaces, at a chosen serialized size. The size is reached by
//! calibrating the number of environment variables once, so every pod of a run has (nearly)
//! the same size.
//!
//! Unlike the seeded pods of [`super::preload`], pod `i` is a pure function of `i` and the size
//! (no generator state, no uid or creationTimestamp: the store assigns them), so a harness can
//! name any pod (`pod_key`) without keeping the set; the benchmark figures were measured with
//! exactly these objects.

mod template;

use serde_json::{json, Value};

use super::CHANGED_AT;
use crate::store::Store;
use template::{has_composition, Slot, Template};

/// Pods per namespace.
pub const PODS_PER_NAMESPACE: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// ~2 KiB: one container, no managedFields.
    Small,
    /// ~10 KiB: two containers, managedFields (the issue's "realistic pod").
    Realistic,
    /// ~16 KiB: three containers, managedFields.
    Large,
}

impl Size {
    pub fn target_bytes(self) -> usize {
        match self {
            Size::Small => 2 * 1024,
            Size::Realistic => 10 * 1024,
            Size::Large => 16 * 1024,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Size::Small => "2KiB",
            Size::Realistic => "10KiB",
            Size::Large => "16KiB",
        }
    }
    fn containers(self) -> usize {
        match self {
            Size::Small => 1,
            Size::Realistic => 2,
            Size::Large => 3,
        }
    }
    fn managed_fields(self) -> bool {
        self != Size::Small
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        match s {
            "small" => Ok(Size::Small),
            "realistic" => Ok(Size::Realistic),
            "large" => Ok(Size::Large),
            _ => Err(format!("unknown size {s:?} (small, realistic or large)")),
        }
    }
}

pub fn namespace_name(i: usize) -> String {
    format!("bench-{i:04}")
}

pub fn namespace(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {
            "name": namespace_name(i),
            "labels": {"kubernetes.io/metadata.name": namespace_name(i), "team": format!("team-{}", i % 17)}
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

/// Pod `i` (0-based) and its namespace.
pub fn pod_key(i: usize) -> (String, String) {
    let app = i % 97;
    (
        namespace_name(i / PODS_PER_NAMESPACE),
        format!("app-{app:02}-7d9f8b6c5d-{i:07x}"),
    )
}

fn container(c: usize, envs: usize, text: &mut dyn FnMut(Slot) -> String) -> Value {
    let env: Vec<Value> = (0..envs)
        .map(|e| json!({"name": format!("APP_SETTING_{c}_{e:03}"), "value": text(Slot::EnvValue { c, e })}))
        .collect();
    json!({
        "name": if c == 0 { "app".to_owned() } else { format!("sidecar-{c}") },
        "image": text(Slot::Image { c }),
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": 8080 + c, "protocol": "TCP"}],
        "env": env,
        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app", "readOnly": true},
            {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080 + c, "scheme": "HTTP"}, "initialDelaySeconds": 10, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080 + c, "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}}
    })
}

fn managed_fields(containers: usize) -> Value {
    let mut spec_containers = serde_json::Map::new();
    for c in 0..containers {
        let name = if c == 0 {
            "app".to_owned()
        } else {
            format!("sidecar-{c}")
        };
        spec_containers.insert(
            format!("k:{{\"name\":\"{name}\"}}"),
            json!({".": {}, "f:env": {".": {}, "k:{\"name\":\"APP_SETTING\"}": {".": {}, "f:name": {}, "f:value": {}}},
                   "f:image": {}, "f:imagePullPolicy": {}, "f:livenessProbe": {".": {}, "f:failureThreshold": {}, "f:httpGet": {".": {}, "f:path": {}, "f:port": {}, "f:scheme": {}}, "f:initialDelaySeconds": {}, "f:periodSeconds": {}, "f:successThreshold": {}, "f:timeoutSeconds": {}},
                   "f:name": {}, "f:ports": {".": {}, "k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}, "f:name": {}, "f:protocol": {}}},
                   "f:readinessProbe": {".": {}, "f:failureThreshold": {}, "f:httpGet": {".": {}, "f:path": {}, "f:port": {}, "f:scheme": {}}, "f:periodSeconds": {}, "f:successThreshold": {}, "f:timeoutSeconds": {}},
                   "f:resources": {".": {}, "f:limits": {".": {}, "f:cpu": {}, "f:memory": {}}, "f:requests": {".": {}, "f:cpu": {}, "f:memory": {}}},
                   "f:securityContext": {".": {}, "f:allowPrivilegeEscalation": {}, "f:capabilities": {".": {}, "f:drop": {}}, "f:readOnlyRootFilesystem": {}, "f:runAsNonRoot": {}},
                   "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}, "f:volumeMounts": {".": {}, "k:{\"mountPath\":\"/etc/app\"}": {".": {}, "f:mountPath": {}, "f:name": {}, "f:readOnly": {}}}}),
        );
    }
    json!([
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": "2025-05-01T10:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app.kubernetes.io/instance": {}, "f:app.kubernetes.io/name": {}, "f:pod-template-hash": {}},
                                     "f:ownerReferences": {".": {}, "k:{\"uid\":\"owner\"}": {}}},
                      "f:spec": {"f:containers": Value::Object(spec_containers), "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}, "f:volumes": {".": {}, "k:{\"name\":\"config\"}": {".": {}, "f:configMap": {".": {}, "f:defaultMode": {}, "f:name": {}}, "f:name": {}}}}}},
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2025-05-01T10:00:07Z", "fieldsType": "FieldsV1", "subresource": "status",
         "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"ContainersReady\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}, "k:{\"type\":\"Initialized\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}, "k:{\"type\":\"PodReadyToStartContainers\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}, "k:{\"type\":\"Ready\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}},
                                   "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {".": {}, "k:{\"ip\":\"10.0.0.1\"}": {".": {}, "f:ip": {}}}, "f:startTime": {}}}}
    ])
}

/// Pod `i`'s JSON. Every string that depends on `i` comes from `text`, which either computes it
/// (`Slot::text`) or, for a template, leaves a placeholder; only the composition label's presence
/// changes the shape.
fn build(i: usize, size: Size, envs: usize, text: &mut dyn FnMut(Slot) -> String) -> Value {
    let mut labels = json!({
        "app.kubernetes.io/name": text(Slot::AppName),
        "app.kubernetes.io/instance": text(Slot::AppInstance),
        "pod-template-hash": "7d9f8b6c5d",
    });
    // A third of the pods belong to a Krateo composition.
    if has_composition(i) {
        labels["krateo.io/composition-id"] = json!(text(Slot::CompositionId));
    }
    let containers: Vec<Value> = (0..size.containers())
        .map(|c| container(c, if c == 0 { envs } else { 4 }, text))
        .collect();
    let statuses: Vec<Value> = (0..size.containers())
        .map(|c| {
            json!({"name": if c == 0 { "app".to_owned() } else { format!("sidecar-{c}") }, "ready": true, "restartCount": 0, "started": true,
                   "state": {"running": {"startedAt": "2025-05-01T10:00:05Z"}},
                   "image": text(Slot::Image { c }),
                   "imageID": text(Slot::ImageId),
                   "containerID": text(Slot::ContainerId)})
        })
        .collect();
    let ip = text(Slot::PodIp);
    let mut meta = json!({
        "name": text(Slot::Name),
        "namespace": text(Slot::Namespace),
        "generateName": text(Slot::GenerateName),
        "labels": labels,
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-05-01T09:59:00Z", CHANGED_AT: "2025-05-01T10:00:00.000000000Z"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": text(Slot::OwnerName), "uid": text(Slot::OwnerUid), "controller": true, "blockOwnerDeletion": true}],
    });
    if size.managed_fields() {
        meta["managedFields"] = managed_fields(size.containers());
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": containers,
            "volumes": [
                {"name": "config", "configMap": {"name": text(Slot::ConfigMap), "defaultMode": 420}},
                {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}, {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "nodeName": text(Slot::NodeName),
            "securityContext": {"runAsUser": 1000, "fsGroup": 2000}, "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-05-01T10:00:04Z"},
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-05-01T10:00:01Z"},
                {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-05-01T10:00:07Z"},
                {"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-05-01T10:00:07Z"},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-05-01T10:00:00Z"}
            ],
            "hostIP": text(Slot::HostIp), "hostIPs": [{"ip": text(Slot::HostIp)}],
            "podIP": ip.clone(), "podIPs": [{"ip": ip}],
            "startTime": "2025-05-01T10:00:00Z",
            "containerStatuses": statuses,
            "qosClass": "Burstable"
        }
    })
}

/// Generates pods of one size: calibrates the env count once.
pub struct PodGen {
    size: Size,
    envs: usize,
    /// Pod JSON templates: without and with the composition label.
    templates: [Template; 2],
}

impl PodGen {
    pub fn new(size: Size) -> PodGen {
        // Sizes as served (kube-sim adds uid, resourceVersion, creationTimestamp: ~130 bytes).
        let served = |envs| {
            let pod = build(123_456, size, envs, &mut |slot| slot.text(123_456));
            serde_json::to_vec(&pod).map_or(0, |v| v.len()) + 130
        };
        let base = served(0);
        let per = (served(10) - base) / 10;
        let envs = size.target_bytes().saturating_sub(base) / per.max(1);
        let template = |i| Template::new(|text| build(i, size, envs, text));
        let templates = [template(1), template(0)];
        debug_assert!(!has_composition(1) && has_composition(0));
        PodGen {
            size,
            envs,
            templates,
        }
    }

    pub fn pod(&self, i: usize) -> Value {
        build(i, self.size, self.envs, &mut |slot| slot.text(i))
    }

    /// Pod `i` as JSON: the bytes of `serde_json::to_vec(&self.pod(i))`, several times faster.
    pub fn pod_json(&self, i: usize) -> Vec<u8> {
        let template = &self.templates[usize::from(has_composition(i))];
        let mut out = Vec::with_capacity(template.len_hint());
        template.write(i, &mut out);
        out
    }
}

/// Loads `n` pods (and their namespaces) into the store: pods are written as JSON on every core
/// and stored from those bytes (`Store::create_many_json`), a batch at a time, the next batch
/// written while the store takes the current one.
pub fn preload(store: &Store, n: usize, size: Size) -> anyhow::Result<()> {
    let namespaces = n.div_ceil(PODS_PER_NAMESPACE).max(1);
    let (_, err) = store.create_many((0..namespaces).map(namespace), false);
    if let Some(e) = err {
        anyhow::bail!("creating namespaces: {e:?}");
    }
    let gen = PodGen::new(size);
    const BATCH: usize = 2000;
    crate::parallel::pipeline(
        n.div_ceil(BATCH),
        |b| {
            let (from, to) = (b * BATCH, ((b + 1) * BATCH).min(n));
            crate::parallel::map_indexed(to - from, |k| gen.pod_json(from + k))
        },
        |pods| match store.create_many_json(&pods, false) {
            (_, Some(e)) => Err(anyhow::anyhow!("creating pods: {e:?}")),
            _ => Ok(()),
        },
    )
}

/// Namespaces `preload` creates for `n` pods.
pub fn namespaces_for(n: usize) -> usize {
    n.div_ceil(PODS_PER_NAMESPACE).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of `pod`'s JSON and of its `"managedFields":[...]` member.
    fn sizes(pod: &Value) -> (usize, usize) {
        let total = serde_json::to_string(pod).map_or(0, |s| s.len());
        let mf = serde_json::to_string(&pod["metadata"]["managedFields"]).map_or(0, |s| s.len());
        (total, r#""managedFields":"#.len() + mf)
    }

    #[test]
    fn realistic_pods_carry_managed_fields_like_real_ones() {
        // Real pods: managedFields is a third to a half of the object.
        let (total, mf) = sizes(&PodGen::new(Size::Realistic).pod(4242));
        let share = mf as f64 / total as f64;
        assert!((0.30..0.45).contains(&share), "{mf} of {total} bytes");
        let (total, mf) = sizes(&PodGen::new(Size::Large).pod(4242));
        assert!(mf as f64 / total as f64 > 0.25, "{mf} of {total} bytes");
    }

    /// FNV-1a over the JSON of pods 0..300 and of their namespaces.
    fn fingerprint(size: Size) -> u64 {
        let gen = PodGen::new(size);
        let objects = (0..300).map(|i| gen.pod(i)).chain((0..3).map(namespace));
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for o in objects {
            for b in serde_json::to_vec(&o).expect("json") {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    /// The template path writes exactly what serializing the `Value` writes: every size, both
    /// shapes (with and without the composition label), indices across the digit and byte
    /// boundaries of the names and IPs.
    #[test]
    fn pod_json_is_the_serialized_pod() {
        let far = [
            999,
            1000,
            65_535,
            65_536,
            999_999,
            1_000_000,
            16_777_216,
            123_456_789,
        ];
        for size in [Size::Small, Size::Realistic, Size::Large] {
            let gen = PodGen::new(size);
            for i in (0..400).chain(far) {
                let want = serde_json::to_vec(&gen.pod(i)).expect("json");
                assert!(gen.pod_json(i) == want, "{size:?} pod {i}");
            }
        }
    }

    /// The benchmark figures of docs/benchmarks.md were measured with exactly these objects:
    /// a change here changes what the benchmark measures.
    #[test]
    fn the_benchmark_objects_do_not_change() {
        for (size, want) in [
            (Size::Small, 15_923_624_823_158_557_523),
            (Size::Realistic, 5_269_142_263_942_964_099),
            (Size::Large, 5_988_177_207_209_523_638),
        ] {
            assert_eq!(fingerprint(size), want, "{size:?}");
        }
    }
}
