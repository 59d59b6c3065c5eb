//! Everything one seed runs against: kube-sim in-process, a database of its own reached
//! through a proxy that can be cut, the ingester's replicas as child processes, and the
//! regression monitor sampling the table. [`World::apply`] plays one step;
//! [`World::quiet_point`] lifts the faults and runs the checks.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube_sim::workload::{self, WorkloadConfig};
use kube_sim::{KubeSim, SimConfig, Store};
use serde_json::{json, Value};

use super::deployment::Deployment;
use super::schedule::{
    fuzz_crd, Step, Target, FUZZ_CRD_GROUP, FUZZ_CRD_KIND, FUZZ_CRD_NAME, FUZZ_CRD_PLURAL,
    FUZZ_CRD_VERSIONS,
};
use super::FuzzOptions;
use crate::converge::{self, RegressionMonitor};
use crate::pg::TestDb;
use crate::process::IngesterProcess;
use crate::proxy::TcpProxy;

pub const CLUSTER: &str = "fuzz-cluster";
/// The ingester's shutdown budget; a SIGTERM gets this plus a margin to exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(40);
const APIEXT: &str = "apiextensions.k8s.io/v1";
const CRD: &str = "CustomResourceDefinition";

pub struct World {
    sim: KubeSim,
    db: TestDb,
    proxy: TcpProxy,
    dir: tempfile::TempDir,
    ingester: PathBuf,
    seed: u64,
    pub deployment: Deployment,
    /// Replica number -> its process, when running.
    replicas: Vec<Option<IngesterProcess>>,
    monitor: Option<RegressionMonitor>,
    trace: Vec<String>,
    /// Logs of processes already stopped: (label, log).
    past_logs: Vec<(String, String)>,
    db_cut: bool,
    api_faults: bool,
    pub unexpected_exits: u64,
    /// The longest a quiet point waited for convergence (faults lifted, replicas ready).
    pub slowest_convergence: Duration,
    started: Instant,
    retire_check: bool,
}

fn small_workload(seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        seed,
        namespaces: super::deployment::NAMESPACES.len(),
        pods: 60,
        target_bytes: 1024,
        apps: true,
        krateo: true,
        custom_resources: 24,
    }
}

impl World {
    pub async fn new(seed: u64, opts: &FuzzOptions) -> anyhow::Result<World> {
        anyhow::ensure!(
            opts.ingester.exists(),
            "no ingester binary at {} (build it: cargo build --release -p resources-ingester, or pass --ingester)",
            opts.ingester.display()
        );
        let sim = KubeSim::start(SimConfig::default()).await?;
        let preload = workload::preload(&sim.store(), &small_workload(seed));
        anyhow::ensure!(preload.errors == 0, "workload preload: {preload:?}");
        let db = TestDb::create().await?;
        let target: std::net::SocketAddr =
            format!("{}:{}", db.server.host, db.server.port).parse()?;
        let proxy = TcpProxy::start(target).await?;
        let dir = tempfile::tempdir()?;
        sim.write_kubeconfig(&dir.path().join("kubeconfig"))?;
        // The monitor reads the database directly, not through the proxy that gets cut.
        let monitor =
            RegressionMonitor::start(db.client().await?, CLUSTER, Duration::from_millis(100));
        Ok(World {
            sim,
            db,
            proxy,
            dir,
            ingester: opts.ingester.clone(),
            seed,
            deployment: Deployment::initial(),
            replicas: Vec::new(),
            monitor: Some(monitor),
            trace: Vec::new(),
            past_logs: Vec::new(),
            db_cut: false,
            api_faults: false,
            unexpected_exits: 0,
            slowest_convergence: Duration::ZERO,
            started: Instant::now(),
            retire_check: opts.retire_check,
        })
    }

    pub fn store(&self) -> Store {
        self.sim.store()
    }

    pub fn monitor_samples(&self) -> u64 {
        self.monitor.as_ref().map_or(0, RegressionMonitor::samples)
    }

    fn note(&mut self, what: impl std::fmt::Display) {
        let line = format!("[{:>8.3}s] {what}", self.started.elapsed().as_secs_f64());
        self.trace.push(line);
    }

    fn env(&self, replica: usize) -> anyhow::Result<Vec<(String, String)>> {
        let mut env = self.db.ingester_env();
        env.retain(|(k, _)| k != "DB_PORT" && k != "DB_HOST" && k != "DB_PARAMS");
        for (k, v) in [
            ("DB_HOST", "127.0.0.1".to_owned()),
            ("DB_PORT", self.proxy.port.to_string()),
            ("DB_PARAMS", "sslmode=disable&connect_timeout=2".to_owned()),
            (
                "KUBECONFIG",
                self.dir.path().join("kubeconfig").display().to_string(),
            ),
            ("CLUSTER_NAME", CLUSTER.to_owned()),
            ("FLUSH_INTERVAL", "50ms".to_owned()),
            ("DB_READY_TIMEOUT", "30s".to_owned()),
            (
                "SHUTDOWN_TIMEOUT",
                format!("{}s", SHUTDOWN_TIMEOUT.as_secs()),
            ),
            ("CHECKPOINT_INTERVAL", "200ms".to_owned()),
        ] {
            env.push((k.to_owned(), v));
        }
        env.extend(self.deployment.env(self.dir.path(), replica)?);
        Ok(env)
    }

    fn start_replica(&mut self, replica: usize) -> Result<(), String> {
        let env = self
            .env(replica)
            .map_err(|e| format!("writing the configuration: {e:#}"))?;
        let p = IngesterProcess::start(&self.ingester, &env)
            .map_err(|e| format!("starting replica {replica}: {e:#}"))?;
        if self.replicas.len() <= replica {
            self.replicas.resize_with(replica + 1, || None);
        }
        self.note(format_args!("replica {replica} started (pid {})", p.pid()));
        self.replicas[replica] = Some(p);
        Ok(())
    }

    /// Starts every replica of the deployment that is not running.
    pub async fn start_deployment(&mut self) -> Result<(), String> {
        for r in 0..self.deployment.replicas {
            if self.replicas.get(r).is_none_or(Option::is_none) {
                self.start_replica(r)?;
            }
        }
        Ok(())
    }

    fn faults_active(&self) -> bool {
        self.db_cut || self.api_faults
    }

    /// Stops replica `replica` (SIGTERM or SIGKILL). A SIGTERM must end the process within
    /// the shutdown budget, and with exit 0 unless a fault stood in its way.
    async fn stop_replica(&mut self, replica: usize, sigterm: bool) -> Result<(), String> {
        let Some(mut p) = self.replicas.get_mut(replica).and_then(Option::take) else {
            return Ok(());
        };
        let pid = p.pid();
        let result = if sigterm {
            match p
                .terminate(SHUTDOWN_TIMEOUT + Duration::from_secs(15))
                .await
            {
                // Ended by the signal itself: still starting up, nothing to flush yet.
                Ok(st) if st.success() || st.signal() == Some(15) => Ok(()),
                Ok(st) if self.faults_active() => {
                    self.note(format_args!(
                        "replica {replica} exited {st} after SIGTERM during a fault"
                    ));
                    Ok(())
                }
                Ok(st) => Err(format!(
                    "replica {replica} exited {st} after SIGTERM with no fault active"
                )),
                Err(e) => Err(format!(
                    "replica {replica} did not exit within {:?} of SIGTERM: {}",
                    SHUTDOWN_TIMEOUT + Duration::from_secs(15),
                    e.to_string().lines().next().unwrap_or_default()
                )),
            }
        } else {
            p.kill();
            Ok(())
        };
        self.past_logs
            .push((format!("replica-{replica}-pid-{pid}"), p.log()));
        result
    }

    pub async fn apply(&mut self, step: &Step) -> Result<(), String> {
        self.note(format_args!("{step:?}"));
        let store = self.store();
        match step {
            Step::Create(t) => self.store_op(store.create(new_object(t, 0))),
            Step::Update(t, n) => self.store_op(store.merge_patch(
                &t.api_version,
                &t.kind,
                t.namespace(),
                &t.name,
                &json!({"metadata": {"labels": {"fuzz-n": n.to_string()}}}),
            )),
            Step::Delete(t) => {
                self.store_op(store.delete(&t.api_version, &t.kind, t.namespace(), &t.name))
            }
            Step::Recreate(t) => {
                self.store_op(store.delete(&t.api_version, &t.kind, t.namespace(), &t.name));
                self.store_op(store.create(new_object(t, 1)));
            }
            Step::CrdCreate { cluster_scoped } => {
                self.store_op(store.create(fuzz_crd_object(*cluster_scoped)))
            }
            Step::CrdDelete => self.store_op(store.delete(APIEXT, CRD, None, FUZZ_CRD_NAME)),
            Step::CrdToggleServed(i) => self.change_crd(|versions| {
                let served = versions[*i]["served"].as_bool().unwrap_or(false);
                versions[*i]["served"] = json!(!served);
            }),
            Step::CrdSwitchStorage(i) => self.change_crd(|versions| {
                for (j, v) in versions.iter_mut().enumerate() {
                    v["storage"] = json!(j == *i);
                }
            }),
            Step::DropWatches => store.drop_watches(),
            Step::CompactHistory => {
                store.compact();
                store.drop_watches();
            }
            Step::ApiErrors(n) => {
                store.fail_next(*n);
                self.api_faults = true;
            }
            Step::ApiDelay(ms) => {
                store.set_delay(*ms);
                self.api_faults = true;
            }
            Step::LaggingWatchCache(events) => {
                store.set_watch_cache_lag(*events);
                self.api_faults = true;
            }
            Step::ApiServerReplicas { lags, seed } => {
                store.set_replicas(lags, kube_sim::ReplicaPick::Random { seed: *seed });
                self.api_faults = true;
            }
            Step::WatchReplay(events) => {
                store.set_watch_replay(*events);
                self.api_faults = true;
            }
            Step::LateBookmarks(ms) => {
                store.set_bookmark_delay(std::time::Duration::from_millis(*ms));
                self.api_faults = true;
            }
            Step::StalledLists(ms) => {
                store.set_list_stall(std::time::Duration::from_millis(*ms));
                self.api_faults = true;
            }
            Step::StuckWatches => {
                store.set_stuck_watches(true);
                self.api_faults = true;
            }
            Step::DbCut => {
                self.proxy.cut();
                self.db_cut = true;
            }
            Step::DbRestore => {
                self.proxy.restore();
                self.db_cut = false;
            }
            Step::Sigterm { replica, restart } => {
                self.stop_replica(*replica, true).await?;
                if *restart {
                    self.start_replica(*replica)?;
                }
            }
            Step::Sigkill { replica, restart } => {
                self.stop_replica(*replica, false).await?;
                if *restart {
                    self.start_replica(*replica)?;
                }
            }
            Step::Redeploy(d) => {
                for r in 0..self.replicas.len() {
                    self.stop_replica(r, true).await?;
                }
                self.deployment = d.clone();
                self.note(format_args!("deployment: {}", d.describe()));
                self.start_deployment().await?;
            }
            Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        }
        Ok(())
    }

    /// A store operation's error is part of the schedule (e.g. a name taken), not a finding.
    fn store_op<T>(&mut self, r: Result<T, kube_sim::error::ApiError>) {
        if let Err(e) = r {
            self.note(format_args!("  (api: {e})"));
        }
    }

    fn change_crd(&mut self, edit: impl FnOnce(&mut Vec<Value>)) {
        let store = self.store();
        let Some(mut crd) = fuzz_crd(&store) else {
            return;
        };
        let Some(versions) = crd["spec"]["versions"].as_array_mut() else {
            return;
        };
        edit(versions);
        let r = store.update(crd);
        self.store_op(r);
    }

    fn lift_faults(&mut self) {
        let store = self.store();
        store.fail_next(0);
        store.set_delay(0);
        // Every API-server fault off; watches that went silent are closed, as a client's
        // timeout would (the ingester's comes only after ~5 minutes).
        let was_stuck = store.faults().stuck_watches;
        store.clear_faults();
        if was_stuck {
            store.drop_watches();
        }
        self.proxy.restore();
        self.db_cut = false;
        self.api_faults = false;
    }

    /// Replicas that exited on their own are restarted (as Kubernetes would); a panic is a
    /// finding. Replicas the deployment no longer has are stopped.
    async fn tend_replicas(&mut self) -> Result<(), String> {
        for r in 0..self.replicas.len() {
            let Some(p) = self.replicas[r].as_mut() else {
                continue;
            };
            let Some(status) = p.exit_status() else {
                continue;
            };
            let log = p.log();
            let pid = p.pid();
            self.replicas[r] = None;
            self.past_logs
                .push((format!("replica-{r}-pid-{pid}"), log.clone()));
            if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
                return Err(format!("replica {r} panicked: {}", line.trim()));
            }
            self.unexpected_exits += 1;
            self.note(format_args!(
                "replica {r} exited on its own ({status}); restarting"
            ));
        }
        for r in self.deployment.replicas..self.replicas.len() {
            self.stop_replica(r, true).await?;
        }
        self.start_deployment().await
    }

    /// Faults lifted, every replica ready, then the checker until green or the deadline, and
    /// the monitor's findings.
    pub async fn quiet_point(&mut self, opts: &FuzzOptions) -> Result<(), String> {
        self.lift_faults();
        self.note("quiet point: faults lifted");
        self.tend_replicas().await?;
        for r in 0..self.deployment.replicas {
            let ready = match self.replicas.get_mut(r).and_then(Option::as_mut) {
                Some(p) => p
                    .wait_ready(READY_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_owned()),
                None => Ok(()),
            };
            if let Err(e) = ready {
                // One more chance for a replica that exited on its own (a deposed leader).
                self.tend_replicas().await?;
                let again = match self.replicas.get_mut(r).and_then(Option::as_mut) {
                    Some(p) => p.wait_ready(READY_TIMEOUT).await.is_ok(),
                    None => false,
                };
                if !again {
                    return Err(format!(
                        "replica {r} not ready within {READY_TIMEOUT:?} after the faults were lifted: {e}"
                    ));
                }
            }
        }
        let scope = self
            .deployment
            .check_scope(CLUSTER, &self.store(), self.retire_check);
        let client = self
            .db
            .client()
            .await
            .map_err(|e| format!("checker cannot reach the database: {e:#}"))?;
        let t = Instant::now();
        let verdict = loop {
            let v = converge::check(&self.store(), &client, &scope).await;
            match v {
                Ok(v) if v.converged() => break Ok(v),
                Ok(v) if t.elapsed() >= opts.converge_timeout => break Err(v),
                Err(e) if t.elapsed() >= opts.converge_timeout => {
                    return Err(format!("checker failed: {e:#}"));
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        match verdict {
            Ok(v) => {
                self.slowest_convergence = self.slowest_convergence.max(t.elapsed());
                self.note(format_args!("converged after {:.1?}: {v}", t.elapsed()))
            }
            Err(v) => {
                self.note(format_args!(
                    "NOT converged after {:?}: {v}",
                    opts.converge_timeout
                ));
                return Err(format!(
                    "{} (not converged after {:?}; {})",
                    v.first_violation().unwrap_or_default(),
                    opts.converge_timeout,
                    v.to_string().lines().next().unwrap_or_default()
                ));
            }
        }
        if let Some(first) = self
            .monitor
            .as_ref()
            .and_then(|m| m.violations().into_iter().next())
        {
            return Err(format!("regression: {first}"));
        }
        Ok(())
    }

    /// Writes the trace and every ingester log under `<artifacts>/seed-N/`.
    pub fn save_artifacts(&mut self, opts: &FuzzOptions) -> Option<PathBuf> {
        let dir = opts.artifacts.as_ref()?.join(format!("seed-{}", self.seed));
        std::fs::create_dir_all(&dir).ok()?;
        let mut trace = self.trace.join("\n");
        trace.push('\n');
        std::fs::write(dir.join("trace.txt"), trace).ok()?;
        for (label, log) in &self.past_logs {
            std::fs::write(dir.join(format!("{label}.log")), log).ok()?;
        }
        for (r, p) in self.replicas.iter().enumerate() {
            if let Some(p) = p {
                std::fs::write(
                    dir.join(format!("replica-{r}-pid-{}.log", p.pid())),
                    p.log(),
                )
                .ok()?;
            }
        }
        Some(dir)
    }

    pub async fn shutdown(mut self) {
        for p in self.replicas.iter_mut().flatten() {
            p.kill();
        }
        if let Some(m) = self.monitor.take() {
            m.finish().await;
        }
        self.sim.shutdown().await;
    }
}

/// A new object for `t` (`round` tells a re-created object's content apart).
fn new_object(t: &Target, round: u32) -> Value {
    let mut meta = json!({"name": t.name, "labels": {"fuzz": "yes"}});
    if let Some(ns) = t.namespace() {
        meta["namespace"] = json!(ns);
    }
    match t.kind.as_str() {
        "ConfigMap" => json!({"apiVersion": t.api_version, "kind": t.kind, "metadata": meta,
            "data": {"round": round.to_string()}}),
        "Pod" => json!({"apiVersion": t.api_version, "kind": t.kind, "metadata": meta,
            "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]},
            "status": {"phase": "Running"}}),
        _ => json!({"apiVersion": t.api_version, "kind": t.kind, "metadata": meta,
            "spec": {"round": round}}),
    }
}

fn fuzz_crd_object(cluster_scoped: bool) -> Value {
    let versions: Vec<Value> = FUZZ_CRD_VERSIONS
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"name": v, "served": true, "storage": i == 0,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
        })
        .collect();
    json!({"apiVersion": APIEXT, "kind": CRD,
        "metadata": {"name": FUZZ_CRD_NAME},
        "spec": {"group": FUZZ_CRD_GROUP,
            "scope": if cluster_scoped { "Cluster" } else { "Namespaced" },
            "versions": versions,
            "names": {"plural": FUZZ_CRD_PLURAL, "singular": FUZZ_CRD_KIND.to_lowercase(),
                "kind": FUZZ_CRD_KIND, "listKind": format!("{FUZZ_CRD_KIND}List")}}})
}
