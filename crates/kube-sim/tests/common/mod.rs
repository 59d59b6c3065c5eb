//! Helpers shared by the integration tests: a server per test, kubectl, kube-rs and HTTP clients.
#![allow(dead_code)]

use kube_sim::{KubeSim, SimConfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(20);

pub async fn start() -> KubeSim {
    start_with(SimConfig {
        bookmarks: kube_sim::BookmarkTiming::Every(Duration::from_millis(200)),
        ..Default::default()
    })
    .await
}

pub async fn start_with(cfg: SimConfig) -> KubeSim {
    KubeSim::start(cfg).await.expect("start kube-sim")
}

/// Polls `f` until it returns Some, or panics with `what` after the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn cm(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": labels}, "data": {"k": "v"}})
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

pub async fn kube_client(sim: &KubeSim) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig_yaml()).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}

/// kubectl with its own kubeconfig and discovery cache, or None (with a message) if absent.
pub struct Kubectl {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

/// Whether kubectl can run. A developer without it gets a SKIPPED line; under `CI=true` a
/// missing kubectl fails the test, so CI never passes without having run the kubectl tests.
pub fn kubectl_present() -> bool {
    let ok = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "kubectl is not installed, and CI=true requires the kubectl tests to run"
        );
        eprintln!("SKIPPED: kubectl is not installed; install kubectl to run the kubectl tests");
    }
    ok
}

impl Kubectl {
    pub fn new(sim: &KubeSim) -> Option<Kubectl> {
        if !kubectl_present() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        Some(Kubectl { dir, kubeconfig })
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write file");
        p
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .kill_on_drop(true);
        c
    }

    /// Runs kubectl; panics with its output unless it succeeds. Returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args).output().await.expect("run kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}
