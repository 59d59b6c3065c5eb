//! The same set-up as [`super::Harness`] on a real Kubernetes v1.36.2 control plane
//! (`testkit::realkube`): objects are made with the real kubectl, the ingester talks to the
//! real kube-apiserver. Without the binaries the tests are skipped (under CI they fail).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::pg::TestDb;
use testkit::process::IngesterProcess;
use testkit::realkube::ControlPlane;

use super::{ingester_env, spawn_ingester, start_ingester_ready, Table, WAIT};

pub struct RealHarness {
    pub plane: Arc<ControlPlane>,
    pub db: TestDb,
}

impl RealHarness {
    /// On the plane shared by this binary's concurrent tests (`None`: skipped).
    pub async fn shared() -> anyhow::Result<Option<RealHarness>> {
        let Some(plane) = ControlPlane::shared().await? else {
            return Ok(None);
        };
        Ok(Some(RealHarness {
            plane,
            db: TestDb::create().await?,
        }))
    }

    /// On a plane of its own (for tests that restart, compact or slow it).
    pub async fn own() -> anyhow::Result<Option<RealHarness>> {
        let Some(plane) = ControlPlane::start().await? else {
            return Ok(None);
        };
        Ok(Some(RealHarness {
            plane: Arc::new(plane),
            db: TestDb::create().await?,
        }))
    }

    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        ingester_env(&self.db, &self.plane.kubeconfig(), extra)
    }

    pub fn spawn(&self, extra: &[(&str, &str)]) -> anyhow::Result<IngesterProcess> {
        spawn_ingester(&self.env(extra))
    }

    pub async fn start_ready(&self, extra: &[(&str, &str)]) -> anyhow::Result<IngesterProcess> {
        start_ingester_ready(&self.env(extra)).await
    }

    pub fn table(&self) -> Table<'_> {
        Table(&self.db)
    }

    /// Creates `obj` with `kubectl create`; the object as stored.
    pub fn create(&self, obj: &Value) -> anyhow::Result<Value> {
        let out = self.plane.kubectl_stdin(
            &["create", "--show-managed-fields", "-o", "json", "-f", "-"],
            Some(&obj.to_string()),
        )?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Replaces `obj` (carrying its resourceVersion) with `kubectl replace`.
    pub fn replace(&self, obj: &Value) -> anyhow::Result<Value> {
        let out = self.plane.kubectl_stdin(
            &["replace", "--show-managed-fields", "-o", "json", "-f", "-"],
            Some(&obj.to_string()),
        )?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Deletes `kind/name` (in `ns` when namespaced) and waits until it is gone.
    pub fn delete(&self, kind: &str, ns: Option<&str>, name: &str) -> anyhow::Result<()> {
        let mut args = vec!["delete", kind, name, "--wait=true"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        self.plane.kubectl(&args).map(drop)
    }

    /// Creates namespace `name` and waits for its `default` ServiceAccount (pods need it;
    /// the controller manager makes it).
    pub async fn namespace(&self, name: &str) -> anyhow::Result<Value> {
        let ns = self.create(&super::namespace(name))?;
        if self.plane.has_controller_manager() {
            testkit::eventually(
                &format!("ServiceAccount default in {name}"),
                WAIT,
                || async {
                    Ok(self
                        .plane
                        .kubectl(&["-n", name, "get", "serviceaccount", "default"])
                        .ok()
                        .map(drop))
                },
            )
            .await?;
        }
        Ok(ns)
    }

    /// A ConfigMap in `ns`, made with kubectl.
    pub fn configmap(&self, ns: &str, name: &str) -> anyhow::Result<Value> {
        self.create(&super::configmap(ns, name, json!({"k": name})))
    }

    /// The collection's current resourceVersion as the API server reports it.
    pub fn current_resource_version(&self, path: &str) -> anyhow::Result<i64> {
        let out = self.plane.kubectl(&["get", "--raw", path])?;
        let v: Value = serde_json::from_str(&out)?;
        v.pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no resourceVersion in {path}"))
    }
}

/// How long `what` took, printed for the test's log (figures belong in docs/benchmarks.md,
/// this only shows them next to a failure).
pub fn took(what: &str, since: std::time::Instant) -> Duration {
    let d = since.elapsed();
    eprintln!("{what}: {:.2} s", d.as_secs_f64());
    d
}
