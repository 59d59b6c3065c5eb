//! The deployment artefacts in `deploy/` against the code they deploy.
//!
//! - The ClusterRole of `deploy/manifests/` grants get/list/watch on every static route and on
//!   every managed group of the compiled-in asset files, and nothing more; the chart template
//!   carries the same rules and `deploy/gen-rbac.py --check` finds no drift.
//! - The Deployment only sets environment variables the binary knows (checked against
//!   `resources-ingester --help`), probes the real endpoints, and is locked down.
//! - `kubectl apply -f deploy/manifests/` against kube-sim succeeds and `kubectl get` reads every
//!   object back (skipped, with a message, when `kubectl` is not on PATH).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn manifests_dir() -> PathBuf {
    repo_root().join("deploy/manifests")
}

/// Every YAML document of every `*.yaml` file in `deploy/manifests/`, in `kubectl apply` order.
fn manifest_docs() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .expect("deploy/manifests exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/manifests");
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", f.display()));
            if v.is_null() {
                continue; // a document of comments only
            }
            docs.push((f.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    docs
}

fn kind_of(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn find_kind<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .map(|(_, v)| v)
        .filter(|v| kind_of(v) == kind)
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Parse the asset files the way the ingester does (spec section 4): blank lines ignored,
/// exactly four `/`-separated segments, group may be empty.
fn static_routes() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo_root().join("crates/ingester/router/assets/static")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let p: Vec<&str> = l.split('/').collect();
            (p.len() == 4 && !p[1].is_empty() && !p[2].is_empty() && !p[3].is_empty())
                .then(|| (p[0].to_owned(), p[2].to_owned()))
        })
        .collect()
}

fn managed_groups() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo_root().join("crates/ingester/manager/assets/managed_groups"))
            .unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The one rule naming an object: `get` on namespace kube-system (the cluster identity).
fn is_identity_rule(rule: &Value) -> bool {
    rule.get("resourceNames").is_some()
        && strings(&rule["apiGroups"]) == [""]
        && strings(&rule["resources"]) == ["namespaces"]
        && strings(&rule["resourceNames"]) == ["kube-system"]
        && strings(&rule["verbs"]) == ["get"]
}

/// (apiGroup, resource) -> verbs granted by a ClusterRole's rules (the identity rule apart).
fn grants(rules: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let rules = rules.as_sequence().expect("rules is a list");
    assert_eq!(
        rules.iter().filter(|r| is_identity_rule(r)).count(),
        1,
        "one rule lets the ingester read namespace kube-system (its cluster identity)"
    );
    for rule in rules.iter().filter(|r| !is_identity_rule(r)) {
        assert!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "unexpected rule shape: {rule:?}"
        );
        let verbs = strings(&rule["verbs"]);
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                out.entry((g.clone(), r))
                    .or_default()
                    .extend(verbs.iter().cloned());
            }
        }
    }
    out
}

const READ: [&str; 3] = ["get", "list", "watch"];

#[test]
fn cluster_role_covers_every_static_route_and_managed_group_and_nothing_else() {
    let docs = manifest_docs();
    let roles = find_kind(&docs, "ClusterRole");
    assert_eq!(
        roles.len(),
        1,
        "exactly one ClusterRole in deploy/manifests"
    );
    let g = grants(&roles[0]["rules"]);
    let read: BTreeSet<String> = READ.iter().map(|s| s.to_string()).collect();

    let routes = static_routes();
    assert!(
        routes
            .iter()
            .any(|(g, r)| g == "apiextensions.k8s.io" && r == "customresourcedefinitions"),
        "the CRD kind must be a static route (the manager only sees CRDs through it)"
    );
    let groups = managed_groups();
    assert!(!routes.is_empty() && !groups.is_empty());

    for (group, resource) in &routes {
        let verbs = g
            .get(&(group.clone(), resource.clone()))
            .or_else(|| g.get(&(group.clone(), "*".to_owned())))
            .unwrap_or_else(|| panic!("static route {group:?}/{resource} has no rule"));
        assert!(
            verbs.is_superset(&read),
            "{group:?}/{resource}: verbs {verbs:?}"
        );
    }
    for group in &groups {
        let verbs = g
            .get(&(group.clone(), "*".to_owned()))
            .unwrap_or_else(|| panic!("managed group {group} has no rule on resources *"));
        assert!(verbs.is_superset(&read), "{group}: verbs {verbs:?}");
    }
    // Least privilege: read-only, and only what the asset files name.
    for ((group, resource), verbs) in &g {
        assert_eq!(verbs, &read, "{group:?}/{resource}: only get/list/watch");
        let named = routes.iter().any(|(g, r)| g == group && r == resource)
            || (resource == "*" && groups.contains(group));
        assert!(
            named,
            "{group:?}/{resource} is granted but is neither a static route nor a managed group"
        );
    }

    // The chart template carries the very same rules (one generator writes both).
    let template = std::fs::read_to_string(
        repo_root().join("deploy/chart/resources-ingester/templates/clusterrole.yaml"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(manifests_dir().join("02-clusterrole.yaml")).unwrap();
    let rule_lines = |s: &str| -> Vec<String> {
        s.lines()
            .map(str::trim)
            .filter(|l| {
                l.starts_with("- apiGroups:")
                    || l.starts_with("resources:")
                    || l.starts_with("verbs:")
            })
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        rule_lines(&template),
        rule_lines(&manifest),
        "chart and manifests disagree"
    );
}

#[test]
fn gen_rbac_check_finds_no_drift() {
    let Ok(out) = Command::new("python3")
        .arg(repo_root().join("deploy/gen-rbac.py"))
        .arg("--check")
        .output()
    else {
        testkit::missing_tool("python3 (needed for `python3 deploy/gen-rbac.py --check`)").unwrap();
        return;
    };
    assert!(
        out.status.success(),
        "deploy/gen-rbac.py --check: the ClusterRole is stale; run `python3 deploy/gen-rbac.py`\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gen_rbac_follows_the_asset_file_rules() {
    // Skipped lines, blank lines, the core group, duplicates: against a temporary route file.
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("static");
    let mg = dir.path().join("managed_groups");
    std::fs::write(
        &st,
        "apiextensions.k8s.io/v1/customresourcedefinitions/CustomResourceDefinition\n\n\
         /v1/pods/Pod\n  /v1/pods/Pod  \napps/v1/deployments\nbatch/v1/jobs/Job/extra\n\
         networking.k8s.io/v1/ingresses/Ingress\n",
    )
    .unwrap();
    std::fs::write(&mg, "b.example.io\n\na.example.io\n").unwrap();
    let Ok(out) = Command::new("python3")
        .arg(repo_root().join("deploy/gen-rbac.py"))
        .args(["--print", "--static"])
        .arg(&st)
        .arg("--managed-groups")
        .arg(&mg)
        .output()
    else {
        testkit::missing_tool("python3").unwrap();
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let g = grants(&rules);
    let keys: Vec<(String, String)> = g.keys().cloned().collect();
    let want: Vec<(String, String)> = [
        ("", "pods"),
        ("a.example.io", "*"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("b.example.io", "*"),
        ("networking.k8s.io", "ingresses"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(keys, want);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("apps/v1/deployments"),
        "warns about the 3-segment line: {stderr}"
    );
    assert!(
        stderr.contains("batch/v1/jobs/Job/extra"),
        "warns about the 5-segment line: {stderr}"
    );
}

#[test]
fn deployment_is_locked_down_and_uses_only_known_settings() {
    let docs = manifest_docs();
    let deps = find_kind(&docs, "Deployment");
    assert_eq!(deps.len(), 1);
    let pod = &deps[0]["spec"]["template"]["spec"];
    let c = &pod["containers"][0];

    // Every variable set on the container is one the binary reads (clap lists `[env: NAME=`).
    let help = Command::new(env!("CARGO_BIN_EXE_resources-ingester"))
        .arg("--help")
        .output()
        .expect("run resources-ingester --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let names: Vec<String> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    for n in &names {
        if n == "RUST_LOG" {
            continue; // read by the tracing subscriber's EnvFilter, not by clap
        }
        assert!(
            help.contains(&format!("[env: {n}")),
            "{n} is not a setting of the binary"
        );
    }
    for required in [
        "CLUSTER_NAME",
        "DB_USER",
        "DB_PASS",
        "LEADER_ELECTION",
        "POD_NAME",
        "POD_NAMESPACE",
    ] {
        assert!(names.iter().any(|n| n == required), "{required} not set");
    }
    // DB credentials from a Secret, never inline.
    for e in c["env"].as_sequence().unwrap() {
        if matches!(e["name"].as_str(), Some("DB_USER" | "DB_PASS")) {
            assert!(e["valueFrom"]["secretKeyRef"]["name"].is_string(), "{e:?}");
            assert!(e.get("value").is_none());
        }
    }

    // Probes on the real endpoints and ports.
    let port_of = |name: &str| {
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .map(|p| p["containerPort"].as_u64().unwrap())
    };
    assert_eq!(port_of("http"), Some(8080));
    assert_eq!(port_of("metrics"), Some(9090));
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/livez")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        c["startupProbe"]["httpGet"]["path"].as_str(),
        Some("/livez")
    );

    // Locked down.
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), vec!["ALL".to_owned()]);
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(65532));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert!(c["resources"]["requests"]["cpu"].is_string());

    // The metrics Service selects the pods and targets the metrics port.
    let svc = find_kind(&docs, "Service");
    assert_eq!(svc.len(), 1);
    let sel = svc[0]["spec"]["selector"].as_mapping().unwrap();
    let labels = deps[0]["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    for (k, v) in sel {
        assert_eq!(
            labels.get(k),
            Some(v),
            "Service selector {k:?} does not match the pods"
        );
    }
    assert_eq!(
        svc[0]["spec"]["ports"][0]["targetPort"].as_str(),
        Some("metrics")
    );
}

/// `kubectl apply -f deploy/manifests/` against kube-sim, then `kubectl get` everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_manifests_to_kube_sim_and_read_them_back() {
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_err()
    {
        testkit::missing_tool("kubectl (not on PATH)").unwrap();
        return;
    }
    let sim = kube_sim::KubeSim::start(kube_sim::SimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let dir_arg = manifests_dir();

    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir.path()) // no ~/.kube cache shared with other runs
            .args(args)
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let manifests = dir_arg.to_str().unwrap();

    let (ok, stdout, stderr) = tokio::task::block_in_place(|| kubectl(&["apply", "-f", manifests]));
    assert!(ok, "kubectl apply failed:\n{stdout}\n{stderr}");
    eprintln!("kubectl apply:\n{stdout}{stderr}");
    let docs = manifest_docs();
    for (_, d) in &docs {
        let name = d["metadata"]["name"].as_str().unwrap();
        assert!(
            stdout.contains(name),
            "apply output does not mention {name}:\n{stdout}"
        );
    }

    // Re-applying the same files is a no-op (what CD tools do on every sync).
    let (ok, stdout2, stderr) =
        tokio::task::block_in_place(|| kubectl(&["apply", "-f", manifests]));
    assert!(ok, "second kubectl apply failed:\n{stdout2}\n{stderr}");
    eprintln!("kubectl apply (again):\n{stdout2}{stderr}");

    // Read every object back and compare the fields that matter.
    let (ok, json, stderr) =
        tokio::task::block_in_place(|| kubectl(&["get", "-f", manifests, "-o", "json"]));
    assert!(ok, "kubectl get failed:\n{stderr}");
    let got: serde_json::Value = serde_json::from_str(&json).unwrap();
    let items = got["items"].as_array().expect("a List");
    assert_eq!(items.len(), docs.len(), "every applied object is read back");
    for (file, want) in &docs {
        let want: serde_json::Value = serde_json::to_value(want).unwrap();
        let have = items
            .iter()
            .find(|i| {
                i["kind"] == want["kind"] && i["metadata"]["name"] == want["metadata"]["name"]
            })
            .unwrap_or_else(|| {
                panic!(
                    "{file}: {} {} not read back",
                    want["kind"], want["metadata"]["name"]
                )
            });
        assert_eq!(
            have["metadata"]["namespace"], want["metadata"]["namespace"],
            "{file}"
        );
        for key in ["rules", "subjects", "roleRef", "spec"] {
            if !want[key].is_null() {
                assert_json_subset(&want[key], &have[key], &format!("{file}: {key}"));
            }
        }
    }

    // kubectl's own view of the namespaced objects, by name.
    let (ok, names, stderr) = tokio::task::block_in_place(|| {
        kubectl(&[
            "-n",
            "resources-ingester",
            "get",
            "deployment,service,serviceaccount,role,rolebinding",
            "-o",
            "name",
        ])
    });
    assert!(ok, "{stderr}");
    for n in [
        "deployment.apps/resources-ingester",
        "service/resources-ingester-metrics",
        "serviceaccount/resources-ingester",
        "role.rbac.authorization.k8s.io/resources-ingester-leader-election",
        "rolebinding.rbac.authorization.k8s.io/resources-ingester-leader-election",
    ] {
        assert!(names.lines().any(|l| l == n), "{n} missing from:\n{names}");
    }

    sim.shutdown().await;
}

/// Every field of `want` is in `have` with the same value (the server may add defaults).
fn assert_json_subset(want: &serde_json::Value, have: &serde_json::Value, at: &str) {
    use serde_json::Value as J;
    match (want, have) {
        (J::Object(w), J::Object(h)) => {
            for (k, v) in w {
                assert_json_subset(v, h.get(k).unwrap_or(&J::Null), &format!("{at}.{k}"));
            }
        }
        (J::Array(w), J::Array(h)) => {
            assert_eq!(w.len(), h.len(), "{at}: length");
            for (i, (a, b)) in w.iter().zip(h).enumerate() {
                assert_json_subset(a, b, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(want, have, "{at}"),
    }
}
