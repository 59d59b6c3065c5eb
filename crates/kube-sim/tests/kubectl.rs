//! The real kubectl against kube-sim: apply, get, watch, delete, api-resources, TLS.

mod common;

use common::*;
use kube_sim::SimConfig;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: fireworksapps.composition.krateo.io
spec:
  group: composition.krateo.io
  scope: Namespaced
  names: {plural: fireworksapps, singular: fireworksapp, kind: FireworksApp, listKind: FireworksAppList}
  versions:
  - name: v1alpha1
    served: true
    storage: false
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
  - name: v1alpha2
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
    subresources: {status: {}}
"#;

const CR: &str = r#"
apiVersion: composition.krateo.io/v1alpha2
kind: FireworksApp
metadata:
  name: demo
  namespace: default
  labels: {krateo.io/composition-id: 1c1c6a5e-7ad5-4c4d-9a6b-8c1f9b7b2a10}
spec:
  replicas: 2
"#;

/// JSON documents kubectl printed so far (it pretty-prints one object after another).
fn documents(buf: &[u8]) -> Vec<Value> {
    serde_json::Deserializer::from_slice(buf)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_watch_delete_api_resources() {
    let sim = start().await;
    let Some(k) = Kubectl::new(&sim) else { return };
    let store = sim.store();

    let crd = k.write("crd.yaml", CRD);
    let cr = k.write("cr.yaml", CR);
    let out = k.ok(&["apply", "-f", crd.to_str().unwrap()]).await;
    assert!(out.contains("created"), "{out}");
    let crd_obj = store
        .get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            "fireworksapps.composition.krateo.io",
        )
        .expect("crd stored");
    let conds: Vec<&str> = crd_obj["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(conds, ["NamesAccepted", "Established"]);
    assert_eq!(crd_obj["status"]["acceptedNames"]["kind"], "FireworksApp");

    k.ok(&["apply", "-f", cr.to_str().unwrap()]).await;
    // re-applying an unchanged file is a no-op
    let out = k.ok(&["apply", "-f", cr.to_str().unwrap()]).await;
    assert!(out.contains("unchanged"), "{out}");

    let list: Value =
        serde_json::from_str(&k.ok(&["get", "fireworksapps", "-A", "-o", "json"]).await).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["metadata"]["name"], "demo");
    assert_eq!(
        list["items"][0]["apiVersion"],
        "composition.krateo.io/v1alpha2"
    );
    // the other served version serves the same object
    let old: Value = serde_json::from_str(
        &k.ok(&[
            "get",
            "fireworksapps.v1alpha1.composition.krateo.io",
            "demo",
            "-o",
            "json",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(old["apiVersion"], "composition.krateo.io/v1alpha1");

    // human-readable output (Table)
    let table = k.ok(&["get", "fireworksapps", "-A"]).await;
    assert!(
        table.contains("NAMESPACE") && table.contains("demo"),
        "{table}"
    );

    // kubectl get --watch sees an update made by another client
    let before = store.stats().watches_started;
    let mut child = k
        .command(&[
            "get",
            "fireworksapps",
            "-n",
            "default",
            "--watch",
            "-o",
            "json",
            "--output-watch-events",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kubectl watch");
    let mut stdout = child.stdout.take().unwrap();
    let st = store.clone();
    wait_for("kubectl's watch", || {
        let st = st.clone();
        async move { (st.stats().watches_started > before).then_some(()) }
    })
    .await;
    store
        .merge_patch(
            "composition.krateo.io/v1alpha2",
            "FireworksApp",
            Some("default"),
            "demo",
            &json!({"spec": {"replicas": 3}}),
        )
        .unwrap();
    let mut buf = Vec::new();
    let seen = tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 8192];
        loop {
            let n = stdout.read(&mut chunk).await.expect("read kubectl");
            assert!(
                n > 0,
                "kubectl watch ended: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            if let Some(e) = documents(&buf)
                .into_iter()
                .find(|e| e["type"] == "MODIFIED" && e["object"]["spec"]["replicas"] == 3)
            {
                return e;
            }
        }
    })
    .await
    .expect("kubectl watch saw the update");
    assert_eq!(seen["object"]["metadata"]["name"], "demo");
    let _ = child.kill().await;

    // api-resources lists built-ins and the CRD's kind
    let res = k.ok(&["api-resources"]).await;
    for kind in [
        "Pod",
        "Deployment",
        "Lease",
        "ClusterRole",
        "CustomResourceDefinition",
        "FireworksApp",
    ] {
        assert!(res.contains(kind), "api-resources lacks {kind}: {res}");
    }

    let out = k
        .ok(&["delete", "fireworksapp", "demo", "-n", "default"])
        .await;
    assert!(out.contains("deleted"), "{out}");
    assert!(store
        .get(
            "composition.krateo.io/v1alpha2",
            "FireworksApp",
            Some("default"),
            "demo"
        )
        .is_none());

    k.ok(&["delete", "-f", crd.to_str().unwrap()]).await;
    let res = k.ok(&["api-resources"]).await;
    assert!(!res.contains("FireworksApp"), "{res}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_builtins_apply_and_label() {
    let sim = start().await;
    let Some(k) = Kubectl::new(&sim) else { return };
    let manifest = k.write(
        "app.yaml",
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "nginx:1.27", ports: [{containerPort: 80}]}
      - {name: sidecar, image: "busybox:1"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "ingester:read"}
rules: [{apiGroups: ["*"], resources: ["*"], verbs: [get, list, watch]}]
"#,
    );
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    // change one container: strategic merge keeps the other
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("nginx:1.27", "nginx:1.28");
    std::fs::write(&manifest, text).unwrap();
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    let d = sim
        .store()
        .get("apps/v1", "Deployment", Some("shop"), "web")
        .unwrap();
    let cs = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0]["image"], "nginx:1.28");
    assert_eq!(d["metadata"]["generation"], 2);
    k.ok(&["label", "deployment", "web", "-n", "shop", "tier=front"])
        .await;
    let out = k
        .ok(&[
            "get",
            "deployments",
            "-n",
            "shop",
            "-l",
            "tier=front",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(out.trim(), "deployment.apps/web");
    k.ok(&["delete", "namespace", "shop"]).await;
    assert!(sim
        .store()
        .get("apps/v1", "Deployment", Some("shop"), "web")
        .is_none());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_over_tls_with_client_certificate() {
    let sim = start_with(SimConfig {
        tls: true,
        ..Default::default()
    })
    .await;
    assert!(sim.base_url().starts_with("https://"));
    let Some(k) = Kubectl::new(&sim) else { return };
    k.ok(&["get", "pods"]).await;
    sim.store()
        .create(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}))
        .unwrap();
    let out = k.ok(&["get", "pods", "-o", "name"]).await;
    assert_eq!(out.trim(), "pod/p1");
    sim.shutdown().await;
}

/// kubectl's generators (`create namespace|configmap|secret|deployment|service`, `run`) send
/// their objects as protobuf; `label` and `scale` patch with JSON (scale on `/scale`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_generators_send_protobuf_label_and_scale() {
    let sim = start().await;
    let Some(k) = Kubectl::new(&sim) else { return };
    let store = sim.store();

    let out = k.ok(&["create", "namespace", "shop"]).await;
    assert_eq!(out.trim(), "namespace/shop created");
    let ns = store
        .get("v1", "Namespace", None, "shop")
        .expect("namespace");
    assert_eq!(ns["status"]["phase"], "Active");

    k.ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "shop",
        "--from-literal=color=blue",
        "--from-literal=size=",
    ])
    .await;
    let cm = store
        .get("v1", "ConfigMap", Some("shop"), "settings")
        .expect("configmap");
    assert_eq!(cm["data"], json!({"color": "blue", "size": ""}));

    k.ok(&[
        "run",
        "web",
        "-n",
        "shop",
        "--image=nginx:1.27",
        "--labels=app=web",
        "--port=8080",
        "--env=MODE=prod",
    ])
    .await;
    let pod: Value = serde_json::from_str(
        &k.ok(&["get", "pod", "web", "-n", "shop", "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(pod["metadata"]["labels"], json!({"app": "web"}));
    let c = &pod["spec"]["containers"][0];
    assert_eq!(
        (&c["name"], &c["image"], &c["ports"][0]["containerPort"]),
        (&json!("web"), &json!("nginx:1.27"), &json!(8080))
    );
    assert_eq!(c["env"], json!([{"name": "MODE", "value": "prod"}]));
    assert_eq!(pod["spec"]["restartPolicy"], "Always");

    k.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        "shop",
        "--from-literal=password=s3cr3t",
    ])
    .await;
    let secret = store
        .get("v1", "Secret", Some("shop"), "creds")
        .expect("secret");
    assert_eq!(secret["data"]["password"], "czNjcjN0"); // base64, as over JSON

    k.ok(&[
        "create",
        "service",
        "clusterip",
        "web",
        "-n",
        "shop",
        "--tcp=80:8080",
    ])
    .await;
    let svc = store
        .get("v1", "Service", Some("shop"), "web")
        .expect("service");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(svc["spec"]["type"], "ClusterIP");

    k.ok(&[
        "create",
        "deployment",
        "api",
        "-n",
        "shop",
        "--image=busybox:1",
        "--replicas=2",
    ])
    .await;
    let d = store
        .get("apps/v1", "Deployment", Some("shop"), "api")
        .expect("deployment");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["selector"]["matchLabels"], json!({"app": "api"}));

    k.ok(&["label", "pod", "web", "-n", "shop", "tier=front"])
        .await;
    let out = k
        .ok(&[
            "get",
            "pods",
            "-n",
            "shop",
            "-l",
            "tier=front",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(out.trim(), "pod/web");

    let out = k
        .ok(&["scale", "deployment", "api", "-n", "shop", "--replicas=5"])
        .await;
    assert!(out.contains("scaled"), "{out}");
    let replicas = k
        .ok(&[
            "get",
            "deployment",
            "api",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await;
    assert_eq!(replicas, "5");
    // with a precondition kubectl reads the Scale and writes it back (PUT)
    k.ok(&[
        "scale",
        "deployment",
        "api",
        "-n",
        "shop",
        "--current-replicas=5",
        "--replicas=0",
    ])
    .await;
    let d = store
        .get("apps/v1", "Deployment", Some("shop"), "api")
        .expect("deployment");
    assert_eq!(d["spec"]["replicas"], 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_follows_the_deny_list() {
    let sim = start().await;
    let Some(k) = Kubectl::new(&sim) else { return };
    assert_eq!(
        k.ok(&["auth", "can-i", "watch", "pods"]).await.trim(),
        "yes"
    );
    sim.deny(kube_sim::DenyRule::new("watch", "", "pods"));
    // kubectl sends the review as protobuf; "no" exits 1.
    let out = k
        .command(&["auth", "can-i", "watch", "pods", "-A"])
        .output()
        .await
        .expect("run kubectl");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("no"));
    assert_eq!(k.ok(&["auth", "can-i", "list", "pods"]).await.trim(), "yes");
    // And the request itself is refused the way the review said.
    let out = k
        .command(&["get", "pods", "--watch", "--request-timeout=5s"])
        .output()
        .await
        .expect("run kubectl");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Error from server (Forbidden)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sim.shutdown().await;
}
