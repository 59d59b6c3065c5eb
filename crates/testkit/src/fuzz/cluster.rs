//! What a seed's changes and faults are played against: kube-sim in-process (the default) or a
//! real Kubernetes v1.36.2 control plane (`converge-fuzz --real`, [`RealPlane`]).
//!
//! In real mode the schedule is still drawn from a kube-sim [`Store`] that serves as the
//! model of the cluster: every change is applied to the model and to the real API server
//! (HTTP, admin identity), so one seed draws one schedule whatever the real server answered.
//! What the server refused is noted in the trace (a name still terminating, a namespace being
//! deleted, a CRD version change the server forbids); the checker only ever compares the table
//! with the real server's objects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_sim::{KubeSim, Store};
use serde_json::{json, Value};

use crate::converge::{builtin_plural, collection_path, RealObjects};
use crate::realkube::{ControlPlane, LaggingApiserver};

/// What one seed runs against.
pub enum Cluster {
    Sim(KubeSim),
    Real {
        plane: RealPlane,
        /// The model the schedule is drawn from (never served to the ingester).
        model: Store,
    },
}

/// One real control plane shared by the seeds of a run (one at a time): started once, each
/// seed resets the objects it plays with ([`RealPlane::reset`]). The lagging second
/// apiserver is started the first time a seed asks for it and kept.
#[derive(Clone)]
pub struct RealPlane {
    pub plane: Arc<ControlPlane>,
    http: reqwest::Client,
    lagging: Arc<tokio::sync::Mutex<Option<LaggingApiserver>>>,
}

impl std::fmt::Debug for RealPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RealPlane({})", self.plane.server())
    }
}

/// An answer of the real API server that is not a success.
#[derive(Debug)]
pub struct ApiFail(pub String);

impl std::fmt::Display for ApiFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The path of one object (`name`), or of the collection (`None`) in `namespace`.
fn object_path(
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> String {
    let plural = builtin_plural(kind);
    let base = collection_path(api_version, "");
    let base = base.trim_end_matches('/');
    let mut p = match namespace {
        Some(ns) => format!("{base}/namespaces/{ns}/{plural}"),
        None => format!("{base}/{plural}"),
    };
    if let Some(n) = name {
        p.push('/');
        p.push_str(n);
    }
    p
}

impl RealPlane {
    /// Starts a control plane (`None`: the binaries are missing, the reason printed).
    pub async fn start() -> anyhow::Result<Option<RealPlane>> {
        let Some(plane) = ControlPlane::start().await? else {
            return Ok(None);
        };
        let http = plane.http()?;
        Ok(Some(RealPlane {
            plane: Arc::new(plane),
            http,
            lagging: Arc::new(tokio::sync::Mutex::new(None)),
        }))
    }

    pub fn objects(&self) -> RealObjects {
        RealObjects {
            http: self.http.clone(),
            server: self.plane.server(),
        }
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, &Value)>,
    ) -> Result<Value, ApiFail> {
        let url = format!("{}{path}", self.plane.server());
        let mut req = self
            .http
            .request(method.clone(), &url)
            .timeout(Duration::from_secs(30));
        if let Some((content_type, body)) = body {
            req = req
                .header("Content-Type", content_type)
                .body(body.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ApiFail(format!("{method} {path}: {e}")))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(ApiFail(format!(
                "{method} {path}: {status} {}",
                value["message"].as_str().unwrap_or(text.as_str())
            )))
        }
    }

    pub async fn create(&self, obj: &Value) -> Result<Value, ApiFail> {
        let (av, kind) = (
            obj["apiVersion"].as_str().unwrap_or_default(),
            obj["kind"].as_str().unwrap_or_default(),
        );
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
        let path = object_path(av, kind, ns, None);
        self.request(
            reqwest::Method::POST,
            &path,
            Some(("application/json", obj)),
        )
        .await
    }

    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ApiFail> {
        let path = object_path(api_version, kind, namespace, Some(name));
        match self.request(reqwest::Method::GET, &path, None).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.0.contains(" 404 ") => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn replace(&self, obj: &Value) -> Result<Value, ApiFail> {
        let (av, kind) = (
            obj["apiVersion"].as_str().unwrap_or_default(),
            obj["kind"].as_str().unwrap_or_default(),
        );
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let path = object_path(av, kind, ns, Some(name));
        self.request(reqwest::Method::PUT, &path, Some(("application/json", obj)))
            .await
    }

    pub async fn merge_patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiFail> {
        let path = object_path(api_version, kind, namespace, Some(name));
        self.request(
            reqwest::Method::PATCH,
            &path,
            Some(("application/merge-patch+json", patch)),
        )
        .await
    }

    pub async fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiFail> {
        let path = object_path(api_version, kind, namespace, Some(name));
        self.request(reqwest::Method::DELETE, &path, None).await
    }

    /// Deletes every object of `kind` labelled `fuzz=yes` in `namespace`.
    async fn delete_labelled(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<(), ApiFail> {
        let path = format!(
            "{}?labelSelector=fuzz%3Dyes",
            object_path(api_version, kind, Some(namespace), None)
        );
        self.request(reqwest::Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }

    /// Polls `done` every 200 ms until it holds, or fails after `within`.
    async fn wait_for<F, Fut>(
        &self,
        what: &str,
        within: Duration,
        mut done: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            if done().await {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "{what}: not within {within:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Makes sure namespace `ns` exists and is not terminating (waits for a deletion to
    /// finish, then creates it). Returns whether it had to be created.
    pub async fn ensure_namespace(&self, ns: &str) -> anyhow::Result<bool> {
        let existing = self
            .get("v1", "Namespace", None, ns)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(obj) = &existing {
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                return Ok(false);
            }
            self.wait_for(
                &format!("namespace {ns} deleted by the namespace controller"),
                Duration::from_secs(90),
                || async { matches!(self.get("v1", "Namespace", None, ns).await, Ok(None)) },
            )
            .await?;
        }
        self.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if self.plane.has_controller_manager() {
            // Pods are refused until the ServiceAccount controller made `default`.
            self.wait_for(
                &format!("ServiceAccount {ns}/default"),
                Duration::from_secs(30),
                || async {
                    matches!(
                        self.get("v1", "ServiceAccount", Some(ns), "default").await,
                        Ok(Some(_))
                    )
                },
            )
            .await?;
        }
        Ok(true)
    }

    /// Creates `crd` unless a CRD of its name exists, and waits until its first served version
    /// is served.
    pub async fn ensure_crd(&self, crd: &Value) -> anyhow::Result<()> {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        if self
            .get(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                name,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .is_none()
        {
            self.create(crd).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let version = crd["spec"]["versions"][0]["name"]
            .as_str()
            .unwrap_or_default();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
        let path = collection_path(&format!("{group}/{version}"), plural);
        self.wait_for(
            &format!("CRD {name} served"),
            Duration::from_secs(30),
            || async {
                self.request(reqwest::Method::GET, &path, None)
                    .await
                    .is_ok()
            },
        )
        .await
    }

    /// Deletes the CRD `name` if it exists and waits until it is gone (its custom resources
    /// with it).
    pub async fn remove_crd(&self, name: &str) -> anyhow::Result<()> {
        let _ = self
            .delete(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                name,
            )
            .await;
        self.wait_for(
            &format!("CRD {name} deleted"),
            Duration::from_secs(60),
            || async {
                matches!(
                    self.get(
                        "apiextensions.k8s.io/v1",
                        "CustomResourceDefinition",
                        None,
                        name
                    )
                    .await,
                    Ok(None)
                )
            },
        )
        .await
    }

    /// Before a seed: the fuzz CRD gone, `crds` present, every namespace of `namespaces`
    /// there and not terminating, and no object labelled `fuzz=yes` of `kinds` left (what an
    /// earlier seed made), so a seed starts from the same objects alone or in a run.
    pub async fn reset(
        &self,
        fuzz_crd: &str,
        crds: &[Value],
        namespaces: &[&str],
        kinds: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.remove_crd(fuzz_crd).await?;
        for crd in crds {
            self.ensure_crd(crd).await?;
        }
        for ns in namespaces {
            self.ensure_namespace(ns).await?;
            for (av, kind) in kinds {
                self.delete_labelled(av, kind, ns)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        self.wait_for(
            "the objects of earlier seeds deleted",
            Duration::from_secs(60),
            || async {
                for (av, kind) in kinds {
                    let path = format!(
                        "{}?labelSelector=fuzz%3Dyes",
                        collection_path(av, &builtin_plural(kind))
                    );
                    match self.request(reqwest::Method::GET, &path, None).await {
                        Ok(v) if v["items"].as_array().is_some_and(Vec::is_empty) => {}
                        _ => return false,
                    }
                }
                true
            },
        )
        .await
    }

    /// The lagging second apiserver (started the first time), its etcd link delayed by
    /// `delay`; returns its port.
    pub async fn lagging_apiserver(&self, delay: Duration) -> anyhow::Result<u16> {
        let mut lagging = self.lagging.lock().await;
        if lagging.is_none() {
            *lagging = Some(self.plane.add_lagging_apiserver(delay).await?);
        }
        let l = lagging.as_ref().expect("started above");
        l.proxy.set_delay(delay);
        Ok(l.port)
    }

    /// The lagging apiserver catches up (its etcd link undelayed), if there is one.
    pub async fn lagging_catch_up(&self) {
        if let Some(l) = self.lagging.lock().await.as_ref() {
            l.proxy.set_delay(Duration::ZERO);
        }
    }
}
