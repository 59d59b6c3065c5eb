//! A real Kubernetes control plane for tests: etcd, kube-apiserver and (when its binary is
//! there) kube-controller-manager, v1.36.2, started by `../shared/kube/start.sh` on
//! 127.0.0.1 with a private run directory and ports of its own.
//!
//! Where the binaries come from: `$KUBEBUILDER_ASSETS` (controller-runtime envtest's
//! convention: a folder holding `kube-apiserver`, `etcd`, `kubectl`; without
//! `kube-controller-manager` the plane runs without it), else what `../shared/kube/install.sh`
//! unpacks. The start script is `$KUBE_SHARED_DIR/start.sh` (default: `shared/kube` beside the
//! checkout). Without them a test skips with a message ([`crate::missing_tool`]); under `CI`
//! it fails.
//!
//! Each plane is stopped when dropped; a watchdog process stops it too when the test binary
//! dies without unwinding (SIGKILL, abort), so no etcd or apiserver outlives its test run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::free_port;

/// Where the start script and the binaries are.
#[derive(Clone, Debug)]
pub struct KubeAssets {
    pub start_sh: PathBuf,
    pub bin_dir: PathBuf,
    /// `kube-controller-manager` is among the binaries (namespace deletion, garbage
    /// collection, ServiceAccounts).
    pub with_kcm: bool,
}

impl KubeAssets {
    /// The assets of this machine, or why there are none.
    pub fn locate() -> Result<KubeAssets, String> {
        let shared = std::env::var_os("KUBE_SHARED_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/kube"));
        let start_sh = shared.join("start.sh");
        if !start_sh.is_file() {
            return Err(format!(
                "the real Kubernetes control plane ({} not found; set KUBE_SHARED_DIR)",
                start_sh.display()
            ));
        }
        let bin_dir = match std::env::var_os("KUBEBUILDER_ASSETS") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let out = Command::new("bash")
                    .arg(shared.join("install.sh"))
                    .stderr(Stdio::piped())
                    .output()
                    .map_err(|e| format!("running {}/install.sh: {e}", shared.display()))?;
                if !out.status.success() {
                    return Err(format!(
                        "the real Kubernetes binaries ({}/install.sh failed: {})",
                        shared.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        for b in ["kube-apiserver", "etcd", "kubectl"] {
            if !bin_dir.join(b).is_file() {
                return Err(format!(
                    "the real Kubernetes binaries ({b} not in {})",
                    bin_dir.display()
                ));
            }
        }
        Ok(KubeAssets {
            with_kcm: bin_dir.join("kube-controller-manager").is_file(),
            start_sh,
            bin_dir,
        })
    }
}

/// How to start a plane.
#[derive(Clone, Debug, Default)]
pub struct PlaneOptions {
    /// Extra kube-apiserver flags (`APISERVER_FLAGS`).
    pub apiserver_flags: String,
    /// Start without the controller manager even when its binary is there.
    pub without_kcm: bool,
}

/// A running control plane.
pub struct ControlPlane {
    pub assets: KubeAssets,
    run_dir: tempfile::TempDir,
    pub etcd_port: u16,
    etcd_peer_port: u16,
    pub api_port: u16,
    options: PlaneOptions,
    extra: Mutex<Vec<Child>>,
    watchdog: Option<Child>,
}

static SHARED: Mutex<Weak<ControlPlane>> = Mutex::new(Weak::new());
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl ControlPlane {
    /// Starts a plane, or returns `None` after printing why the test is skipped (an error
    /// under CI).
    pub async fn start() -> anyhow::Result<Option<ControlPlane>> {
        Self::start_with(PlaneOptions::default()).await
    }

    pub async fn start_with(options: PlaneOptions) -> anyhow::Result<Option<ControlPlane>> {
        let assets = match KubeAssets::locate() {
            Ok(a) => a,
            Err(what) => {
                crate::missing_tool(&what)?;
                return Ok(None);
            }
        };
        let mut plane = ControlPlane {
            assets,
            run_dir: tempfile::Builder::new().prefix("realkube.").tempdir()?,
            etcd_port: free_port(),
            etcd_peer_port: free_port(),
            api_port: free_port(),
            options,
            extra: Mutex::new(Vec::new()),
            watchdog: None,
        };
        plane.watchdog = plane.spawn_watchdog().ok();
        plane.run_script("start", true).await?;
        Ok(Some(plane))
    }

    /// One plane shared by the tests of a binary that run at the same time (it stops when
    /// the last of them drops it). For tests that do not restart, compact or slow it.
    pub async fn shared() -> anyhow::Result<Option<Arc<ControlPlane>>> {
        if let Some(p) = SHARED.lock().unwrap_or_else(|e| e.into_inner()).upgrade() {
            return Ok(Some(p));
        }
        // One start at a time: the tests of a binary start together, and each starting a
        // plane of its own (8-15 s of CPU each on two cores) is what sharing avoids. The
        // async lock is held over the start; the std one never across an await.
        let _starting = STARTING.lock().await;
        if let Some(p) = SHARED.lock().unwrap_or_else(|e| e.into_inner()).upgrade() {
            return Ok(Some(p));
        }
        let Some(plane) = Self::start().await? else {
            return Ok(None);
        };
        let plane = Arc::new(plane);
        *SHARED.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&plane);
        Ok(Some(plane))
    }

    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// The admin kubeconfig (client certificate, group `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.run_dir.path().join("admin.kubeconfig")
    }

    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    pub fn has_controller_manager(&self) -> bool {
        self.assets.with_kcm && !self.options.without_kcm
    }

    fn script(&self, verb: &str, fresh: bool) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(&self.assets.start_sh)
            .arg(verb)
            .env("RUN_DIR", self.run_dir.path())
            .env("ETCD_PORT", self.etcd_port.to_string())
            .env("ETCD_PEER_PORT", self.etcd_peer_port.to_string())
            .env("API_PORT", self.api_port.to_string())
            .env("FRESH", if fresh { "1" } else { "0" })
            .env(
                "WITH_KCM",
                if self.has_controller_manager() {
                    "1"
                } else {
                    "0"
                },
            )
            .env("KUBE_BIN_DIR", &self.assets.bin_dir)
            .env("APISERVER_FLAGS", &self.options.apiserver_flags)
            .stdin(Stdio::null());
        cmd
    }

    async fn run_script(&self, verb: &str, fresh: bool) -> anyhow::Result<()> {
        let mut cmd = self.script(verb, fresh);
        let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
        anyhow::ensure!(
            out.status.success(),
            "start.sh {verb} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Stops every process of the plane (its data stays).
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.run_script("stop", false).await
    }

    /// Stops and starts the plane on the same etcd data: the watch cache starts empty, open
    /// watches break, resume points older than a compaction get 410 Gone.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await?;
        self.run_script("start", false).await
    }

    /// A command of the real kubectl against this plane (admin), its stdout; an error
    /// carries stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = Command::new(self.assets.bin_dir.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` (or create/replace) of one JSON object; returns the object as
    /// stored.
    pub fn apply(&self, obj: &Value) -> anyhow::Result<Value> {
        let out = self.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-o",
                "json",
                "-f",
                "-",
            ],
            Some(&obj.to_string()),
        )?;
        Ok(serde_json::from_str(&out)?)
    }

    /// An HTTP client that authenticates as admin (client certificate) and trusts the
    /// plane's CA.
    pub fn http(&self) -> anyhow::Result<reqwest::Client> {
        let pki = self.run_dir.path().join("pki");
        let mut pem = std::fs::read(pki.join("admin.crt"))?;
        pem.extend(std::fs::read(pki.join("admin.key"))?);
        Ok(reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
                pki.join("ca.crt"),
            )?)?)
            .identity(reqwest::Identity::from_pem(&pem)?)
            .build()?)
    }

    /// A token of ServiceAccount `namespace/name` (created with its namespace when missing).
    pub fn service_account_token(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        let _ = self.kubectl(&["create", "namespace", namespace]);
        let _ = self.kubectl(&["-n", namespace, "create", "serviceaccount", name]);
        let token = self.kubectl(&["-n", namespace, "create", "token", name, "--duration=2h"])?;
        Ok(token.trim().to_owned())
    }

    /// Writes a kubeconfig that authenticates with `token` (CA of the plane) to `path`.
    pub fn write_token_kubeconfig(&self, token: &str, path: &Path) -> anyhow::Result<()> {
        use base64::Engine as _;
        let ca = std::fs::read(self.run_dir.path().join("pki/ca.crt"))?;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: real\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: real\n  context:\n    cluster: real\n    user: sa\ncurrent-context: real\n",
                self.server()
            ),
        )?;
        Ok(())
    }

    /// An etcd backup: the plane is stopped, its etcd data directory copied to `name` in the
    /// run directory, and the plane started again on the same data.
    pub async fn backup_etcd(&self, name: &str) -> anyhow::Result<PathBuf> {
        let to = self.run_dir.path().join(name);
        self.stop().await?;
        let copied = copy_dir(&self.run_dir.path().join("etcd-data"), &to).await;
        self.run_script("start", false).await?;
        copied?;
        Ok(to)
    }

    /// An etcd restore: the plane is stopped, its etcd data replaced by `backup` (from
    /// [`Self::backup_etcd`]) and the plane started on it: same cluster (same kube-system
    /// uid), its revision back where the backup was.
    pub async fn restore_etcd(&self, backup: &Path) -> anyhow::Result<()> {
        self.stop().await?;
        let data = self.run_dir.path().join("etcd-data");
        tokio::fs::remove_dir_all(&data).await?;
        copy_dir(backup, &data).await?;
        self.run_script("start", false).await
    }

    /// etcd's current revision (the cluster's newest resourceVersion).
    pub async fn etcd_revision(&self) -> anyhow::Result<i64> {
        let v: Value = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/v3/maintenance/status",
                self.etcd_port
            ))
            .body("{}")
            .send()
            .await?
            .json()
            .await?;
        v.pointer("/header/revision")
            .and_then(|r| r.as_str().and_then(|s| s.parse().ok()).or(r.as_i64()))
            .ok_or_else(|| anyhow::anyhow!("no revision in etcd's status: {v}"))
    }

    /// Compacts etcd's history up to its current revision (watches from older
    /// resourceVersions then get 410 Gone once the apiserver's cache no longer has them);
    /// returns the revision.
    pub async fn compact(&self) -> anyhow::Result<i64> {
        let rev = self.etcd_revision().await?;
        let resp = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/v3/kv/compaction",
                self.etcd_port
            ))
            .body(format!("{{\"revision\":\"{rev}\",\"physical\":true}}"))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "etcd compaction: {}",
            resp.text().await.unwrap_or_default()
        );
        Ok(rev)
    }

    /// A second kube-apiserver on the same etcd, reached through a proxy that holds every
    /// byte from etcd back by `etcd_delay`: its watch cache lags behind the first one's for
    /// real. Returns its port; it stops with the plane.
    pub async fn add_lagging_apiserver(
        &self,
        etcd_delay: Duration,
    ) -> anyhow::Result<LaggingApiserver> {
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], self.etcd_port));
        // It starts on an undelayed link (its start-up reads etcd a few hundred times in a
        // row), and lags once ready.
        let proxy = crate::proxy::TcpProxy::start_delayed(target, Duration::ZERO).await?;
        let port = free_port();
        let pki = self.run_dir.path().join("pki");
        let log = std::fs::File::create(self.run_dir.path().join(format!("apiserver-{port}.log")))?;
        let child = Command::new(self.assets.bin_dir.join("kube-apiserver"))
            .args(apiserver_flags(&pki, port, proxy.port))
            .args(self.options.apiserver_flags.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        let http = self.http()?;
        let url = format!("https://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the second kube-apiserver on port {port} was not ready within 90 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        proxy.set_delay(etcd_delay);
        Ok(LaggingApiserver { port, proxy })
    }

    /// A kubeconfig like the admin one, pointing at `port` (another apiserver of the plane).
    pub fn write_kubeconfig_for_port(&self, port: u16, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(self.kubeconfig())?;
        let text = text.replace(
            &format!("server: https://127.0.0.1:{}", self.api_port),
            &format!("server: https://127.0.0.1:{port}"),
        );
        std::fs::write(path, text)?;
        Ok(())
    }

    /// Stops the plane when this process goes away without dropping it.
    fn spawn_watchdog(&self) -> anyhow::Result<Child> {
        let me = std::process::id();
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
             RUN_DIR='{}' bash '{}' stop >/dev/null 2>&1; pkill -f -- '--cert-dir={}/pki' ; rm -rf '{}'",
            self.run_dir.path().display(),
            self.assets.start_sh.display(),
            self.run_dir.path().display(),
            self.run_dir.path().display(),
        );
        Ok(Command::new("setsid")
            .args(["bash", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }
}

/// The flags start.sh gives kube-apiserver, for another one on `port` reaching etcd at
/// `etcd_port`.
fn apiserver_flags(pki: &Path, port: u16, etcd_port: u16) -> Vec<String> {
    let p = |f: &str| pki.join(f).display().to_string();
    vec![
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        "--endpoint-reconciler-type=none".into(),
        format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
        format!("--cert-dir={}", pki.display()),
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        "--authorization-mode=Node,RBAC".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        "--allow-privileged=true".into(),
        "--v=1".into(),
    ]
}

/// `cp -a from to` (a stopped etcd's data directory).
async fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "cp -a {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A second apiserver whose etcd link is slowed.
pub struct LaggingApiserver {
    pub port: u16,
    pub proxy: crate::proxy::TcpProxy,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for mut c in self
            .extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.script("stop", false).output();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// One JSON watch event line of the real server's wire format, decoded.
pub fn watch_lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
