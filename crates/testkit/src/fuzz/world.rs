//! Everything one seed runs against: kube-sim in-process (or a real control plane, `--real`:
//! [`Cluster`]), a database of its own reached through a proxy that can be cut, the
//! ingester's replicas as child processes, and the regression monitor sampling the table.
//! [`World::apply`] plays one step; [`World::quiet_point`] lifts the faults and runs the
//! checks.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube_sim::workload::{self, WorkloadConfig};
use kube_sim::{KubeSim, SimConfig, Store};
use serde_json::{json, Value};

use super::cluster::{Cluster, RealPlane};
use super::database::{PrimaryChange, SeedDb};
use super::deployment::{Deployment, NAMESPACES};
use super::schedule::{
    fuzz_crd, Step, Target, FUZZ_CRD_GROUP, FUZZ_CRD_KIND, FUZZ_CRD_NAME, FUZZ_CRD_PLURAL,
    FUZZ_CRD_VERSIONS,
};
use super::FuzzOptions;
use crate::converge::{self, RegressionMonitor};
use crate::process::IngesterProcess;

pub const CLUSTER: &str = "fuzz-cluster";
/// The ingester's shutdown budget; a SIGTERM gets this plus a margin to exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(40);
const APIEXT: &str = "apiextensions.k8s.io/v1";
/// How often the regression monitor samples the table.
const MONITOR_EVERY: Duration = Duration::from_millis(100);
const CRD: &str = "CustomResourceDefinition";

pub struct World {
    cluster: Cluster,
    /// The database, the read-write address (a cuttable proxy), with `--db-faults` a standby
    /// and maybe PgBouncer.
    db: SeedDb,
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
    /// A database fault moved the primary since the last quiet point: a pooler in front may
    /// still refuse for a while (PgBouncer's `server_login_retry`), so a SIGTERM may find
    /// changes it cannot commit, as during a cut.
    db_moved: bool,
    api_faults: bool,
    pub unexpected_exits: u64,
    /// The longest a quiet point waited for convergence (faults lifted, replicas ready).
    pub slowest_convergence: Duration,
    started: Instant,
    retire_check: bool,
    /// Real mode: replicas started against the lagging second apiserver (until a redeploy).
    on_lagging: Vec<bool>,
    /// Real mode: changes the real API server refused (noted in the trace).
    pub refused: u64,
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
        let dir = tempfile::tempdir()?;
        let cluster = match &opts.real {
            None => {
                let sim = KubeSim::start(SimConfig::default()).await?;
                let preload = workload::preload(&sim.store(), &small_workload(seed));
                anyhow::ensure!(preload.errors == 0, "workload preload: {preload:?}");
                sim.write_kubeconfig(&dir.path().join("kubeconfig"))?;
                Cluster::Sim(sim)
            }
            Some(plane) => {
                let model = real_preload(plane, seed).await?;
                std::fs::copy(plane.plane.kubeconfig(), dir.path().join("kubeconfig"))?;
                Cluster::Real {
                    plane: plane.clone(),
                    model,
                }
            }
        };
        let db = SeedDb::start(seed, opts.db_faults).await?;
        // The monitor reads the primary directly, not through the proxy that gets cut.
        let monitor = RegressionMonitor::start(db.client().await?, CLUSTER, MONITOR_EVERY);
        let mut trace = Vec::new();
        trace.push(format!("database: {}", db.describe()));
        Ok(World {
            cluster,
            db,
            dir,
            ingester: opts.ingester.clone(),
            seed,
            deployment: Deployment::initial(),
            replicas: Vec::new(),
            monitor: Some(monitor),
            trace,
            past_logs: Vec::new(),
            db_cut: false,
            db_moved: false,
            api_faults: false,
            unexpected_exits: 0,
            slowest_convergence: Duration::ZERO,
            started: Instant::now(),
            retire_check: opts.retire_check,
            on_lagging: Vec::new(),
            refused: 0,
        })
    }

    /// kube-sim's store; in real mode the model the schedule is drawn from.
    pub fn store(&self) -> Store {
        match &self.cluster {
            Cluster::Sim(sim) => sim.store(),
            Cluster::Real { model, .. } => model.clone(),
        }
    }

    fn real_plane(&self) -> Option<RealPlane> {
        match &self.cluster {
            Cluster::Sim(_) => None,
            Cluster::Real { plane, .. } => Some(plane.clone()),
        }
    }

    /// `--db-faults`: this seed's ingesters go through PgBouncer in transaction mode.
    pub fn through_pgbouncer(&self) -> bool {
        self.db.through_pgbouncer()
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
        for (k, v) in [
            (
                "KUBECONFIG",
                self.dir
                    .path()
                    .join(if self.on_lagging.get(replica) == Some(&true) {
                        "kubeconfig-lagging"
                    } else {
                        "kubeconfig"
                    })
                    .display()
                    .to_string(),
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
        self.db_cut || self.api_faults || self.db_moved || self.db.window_open()
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
        if self.apply_harness_step(step).await? {
            return Ok(());
        }
        if let Some(plane) = self.real_plane() {
            return self.apply_real(step, plane).await;
        }
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
            // Played by `apply_harness_step`.
            Step::DbCut
            | Step::DbRestore
            | Step::DbSwitchover
            | Step::DbReadOnly { .. }
            | Step::DbLostCommits
            | Step::DbWindowEnd
            | Step::Sigterm { .. }
            | Step::Sigkill { .. }
            | Step::Redeploy(_)
            | Step::Pause(_) => {}
            Step::ApiServerRestart
            | Step::CompactAndRestart
            | Step::Compact
            | Step::LaggingApiserver { .. }
            | Step::NamespaceDelete(_) => {
                self.note("  (a real control plane's step: not played on kube-sim)")
            }
        }
        Ok(())
    }

    /// A step on the harness's own parts (the database link, the ingester processes, the
    /// deployment, time), played alike on kube-sim and a real control plane; false for the
    /// others.
    async fn apply_harness_step(&mut self, step: &Step) -> Result<bool, String> {
        match step {
            Step::DbCut => {
                self.db.cut();
                self.db_cut = true;
            }
            Step::DbRestore => {
                self.db.restore();
                self.db_cut = false;
            }
            Step::DbSwitchover | Step::DbReadOnly { .. } | Step::DbLostCommits => {
                let change = self.db.apply(step).await?;
                self.follow_primary(change).await?;
            }
            Step::DbWindowEnd => {
                let change = self.db.end_window().await?;
                self.follow_primary(change).await?;
            }
            Step::Sigterm { replica, restart } | Step::Sigkill { replica, restart } => {
                let sigterm = matches!(step, Step::Sigterm { .. });
                self.stop_replica(*replica, sigterm).await?;
                if *restart {
                    self.start_replica(*replica)?;
                }
            }
            Step::Redeploy(d) => {
                for r in 0..self.replicas.len() {
                    self.stop_replica(r, true).await?;
                }
                self.deployment = d.clone();
                // Replicas of the new deployment start on the control plane's own server.
                self.on_lagging.clear();
                self.note(format_args!("deployment: {}", d.describe()));
                self.start_deployment().await?;
            }
            Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// After a database fault moved the primary: the monitor reads the new one, going on from
    /// what it saw (nothing lost), or from what the promoted server holds when the fault
    /// threw commits away (rows older than seen before are then the harness's doing).
    async fn follow_primary(&mut self, change: PrimaryChange) -> Result<(), String> {
        for note in self.db.take_notes() {
            self.note(note);
        }
        if change == PrimaryChange::Same {
            return Ok(());
        }
        self.note(format_args!("  primary changed: {change:?}"));
        self.db_moved = true;
        let Some(monitor) = self.monitor.take() else {
            return Ok(());
        };
        let mut findings = monitor.stop_with_findings().await;
        if change == PrimaryChange::WentBack {
            findings.forget_versions();
        }
        let client = self
            .db
            .client()
            .await
            .map_err(|e| format!("harness: the monitor cannot reach the new primary: {e:#}"))?;
        self.monitor = Some(RegressionMonitor::resume(
            client,
            CLUSTER,
            MONITOR_EVERY,
            findings,
        ));
        Ok(())
    }

    /// A step against the real control plane: changes go to the model and to the real API
    /// server; the processes and the database as on kube-sim.
    async fn apply_real(&mut self, step: &Step, plane: RealPlane) -> Result<(), String> {
        let model = self.store();
        match step {
            Step::Create(t) => {
                self.store_op(model.create(new_object(t, 0)));
                let r = plane.create(&new_object(t, 0)).await;
                self.real_op(r);
            }
            Step::Update(t, n) => {
                let patch = json!({"metadata": {"labels": {"fuzz-n": n.to_string()}}});
                self.store_op(model.merge_patch(
                    &t.api_version,
                    &t.kind,
                    t.namespace(),
                    &t.name,
                    &patch,
                ));
                let r = plane
                    .merge_patch(&t.api_version, &t.kind, t.namespace(), &t.name, &patch)
                    .await;
                self.real_op(r);
            }
            Step::Delete(t) => {
                self.store_op(model.delete(&t.api_version, &t.kind, t.namespace(), &t.name));
                let r = plane
                    .delete(&t.api_version, &t.kind, t.namespace(), &t.name)
                    .await;
                self.real_op(r);
            }
            Step::Recreate(t) => {
                self.store_op(model.delete(&t.api_version, &t.kind, t.namespace(), &t.name));
                self.store_op(model.create(new_object(t, 1)));
                let r = plane
                    .delete(&t.api_version, &t.kind, t.namespace(), &t.name)
                    .await;
                self.real_op(r);
                let r = plane.create(&new_object(t, 1)).await;
                self.real_op(r);
            }
            Step::CrdCreate { cluster_scoped } => {
                self.store_op(model.create(fuzz_crd_object(*cluster_scoped)));
                let r = plane.create(&fuzz_crd_object(*cluster_scoped)).await;
                self.real_op(r);
            }
            Step::CrdDelete => {
                self.store_op(model.delete(APIEXT, CRD, None, FUZZ_CRD_NAME));
                let r = plane.delete(APIEXT, CRD, None, FUZZ_CRD_NAME).await;
                self.real_op(r);
            }
            Step::CrdToggleServed(i) => {
                let edit = |versions: &mut Vec<Value>| {
                    let served = versions[*i]["served"].as_bool().unwrap_or(false);
                    versions[*i]["served"] = json!(!served);
                };
                self.change_crd(edit);
                self.change_real_crd(&plane, edit).await;
            }
            Step::CrdSwitchStorage(i) => {
                let edit = |versions: &mut Vec<Value>| {
                    for (j, v) in versions.iter_mut().enumerate() {
                        v["storage"] = json!(j == *i);
                    }
                };
                self.change_crd(edit);
                self.change_real_crd(&plane, edit).await;
            }
            Step::NamespaceDelete(ns) => {
                if !plane.plane.has_controller_manager() {
                    self.note("  (no controller manager: no namespace deletion)");
                    return Ok(());
                }
                for obj in model.list_all() {
                    if obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns) {
                        let s = |k: &str| obj[k].as_str().unwrap_or_default().to_owned();
                        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                        let r = model.delete(&s("apiVersion"), &s("kind"), Some(ns), name);
                        self.store_op(r);
                    }
                }
                self.store_op(model.delete("v1", "Namespace", None, ns));
                let r = plane.delete("v1", "Namespace", None, ns).await;
                self.real_op(r);
            }
            Step::ApiServerRestart => plane
                .plane
                .restart()
                .await
                .map_err(|e| format!("harness: restarting the control plane: {e:#}"))?,
            Step::CompactAndRestart => {
                self.compact(&plane).await?;
                plane
                    .plane
                    .restart()
                    .await
                    .map_err(|e| format!("harness: restarting the control plane: {e:#}"))?;
            }
            Step::Compact => self.compact(&plane).await?,
            Step::LaggingApiserver { replica, delay_ms } => {
                if *replica >= self.deployment.replicas {
                    return Ok(());
                }
                let port = plane
                    .lagging_apiserver(Duration::from_millis(*delay_ms))
                    .await
                    .map_err(|e| format!("harness: the lagging apiserver: {e:#}"))?;
                plane
                    .plane
                    .write_kubeconfig_for_port(port, &self.dir.path().join("kubeconfig-lagging"))
                    .map_err(|e| format!("harness: kubeconfig: {e:#}"))?;
                self.api_faults = true;
                self.stop_replica(*replica, true).await?;
                if self.on_lagging.len() <= *replica {
                    self.on_lagging.resize(*replica + 1, false);
                }
                self.on_lagging[*replica] = true;
                self.note(format_args!(
                    "  replica {replica} -> apiserver :{port} (lagging)"
                ));
                self.start_replica(*replica)?;
            }
            // Played by `apply_harness_step`.
            Step::DbCut
            | Step::DbRestore
            | Step::DbSwitchover
            | Step::DbReadOnly { .. }
            | Step::DbLostCommits
            | Step::DbWindowEnd
            | Step::Sigterm { .. }
            | Step::Sigkill { .. }
            | Step::Redeploy(_)
            | Step::Pause(_) => {}
            Step::DropWatches
            | Step::CompactHistory
            | Step::ApiErrors(_)
            | Step::ApiDelay(_)
            | Step::LaggingWatchCache(_)
            | Step::ApiServerReplicas { .. }
            | Step::WatchReplay(_)
            | Step::LateBookmarks(_)
            | Step::StalledLists(_)
            | Step::StuckWatches => self.note("  (a kube-sim fault: not played on a real server)"),
        }
        Ok(())
    }

    /// Compacts etcd's history to its newest revision. Nothing written since the last
    /// compaction: etcd answers "required revision has been compacted", which is no finding
    /// (seeds 28 and 33 of the first real run stopped on it).
    async fn compact(&mut self, plane: &RealPlane) -> Result<(), String> {
        match plane.plane.compact().await {
            Ok(rev) => self.note(format_args!("  compacted at revision {rev}")),
            Err(e) if format!("{e:#}").contains("required revision has been compacted") => {
                self.note("  already compacted at the newest revision")
            }
            Err(e) => return Err(format!("harness: compacting etcd: {e:#}")),
        }
        Ok(())
    }

    /// A real API server's refusal is part of the schedule too (a name still terminating, a
    /// namespace being deleted, a CRD change it forbids).
    fn real_op<T>(&mut self, r: Result<T, super::cluster::ApiFail>) {
        if let Err(e) = r {
            self.refused += 1;
            self.note(format_args!("  (real api: {e})"));
        }
    }

    /// The same edit as [`Self::change_crd`] on the real server's fuzz CRD.
    async fn change_real_crd(&mut self, plane: &RealPlane, edit: impl FnOnce(&mut Vec<Value>)) {
        let crd = match plane.get(APIEXT, CRD, None, FUZZ_CRD_NAME).await {
            Ok(Some(crd)) => crd,
            Ok(None) => return,
            Err(e) => return self.note(format_args!("  (real api: {e})")),
        };
        let mut crd = crd;
        let Some(versions) = crd["spec"]["versions"].as_array_mut() else {
            return;
        };
        edit(versions);
        let r = plane.replace(&crd).await;
        self.real_op(r);
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

    /// Real mode: the lagging apiserver catches up, deleted namespaces are created again (in
    /// the model and, once the namespace controller is done, on the server).
    async fn lift_real_faults(&mut self, plane: &RealPlane) -> Result<(), String> {
        self.lift_db_faults().await?;
        self.api_faults = false;
        plane.lagging_catch_up().await;
        let model = self.store();
        for ns in NAMESPACES {
            if model.get("v1", "Namespace", None, ns).is_none() {
                let r = model.create(json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}));
                self.store_op(r);
            }
            let created = plane
                .ensure_namespace(ns)
                .await
                .map_err(|e| format!("harness: namespace {ns}: {e:#}"))?;
            if created {
                self.note(format_args!("  namespace {ns} created again"));
            }
        }
        Ok(())
    }

    /// The database reachable again, its open window ended (a failover played now).
    async fn lift_db_faults(&mut self) -> Result<(), String> {
        self.db.restore();
        self.db_cut = false;
        let change = self.db.end_window().await?;
        self.follow_primary(change).await
    }

    async fn lift_faults(&mut self) -> Result<(), String> {
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
        self.api_faults = false;
        self.lift_db_faults().await
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
        let real = self.real_plane();
        match &real {
            None => self.lift_faults().await?,
            Some(plane) => self.lift_real_faults(plane).await?,
        }
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
            let v = match &real {
                None => converge::check(&self.store(), &client, &scope).await,
                // The real server's objects, listed again each time (cascades and CRD
                // deletions finish on their own time), and the scope from its CRDs.
                Some(plane) => {
                    real_check(plane, &self.deployment, &client, self.retire_check).await
                }
            };
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
        self.db_moved = false;
        Ok(())
    }

    /// Writes the trace and every ingester log under `<artifacts>/seed-N/`.
    pub fn save_artifacts(&mut self, opts: &FuzzOptions) -> Option<PathBuf> {
        let dir = opts.artifacts.as_ref()?.join(format!("seed-{}", self.seed));
        std::fs::create_dir_all(&dir).ok()?;
        let mut trace = self.trace.join("\n");
        trace.push('\n');
        std::fs::write(dir.join("trace.txt"), trace).ok()?;
        for (label, log) in self.past_logs.iter().chain(&self.db.logs()) {
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
        if let Cluster::Sim(sim) = self.cluster {
            sim.shutdown().await;
        }
    }
}

/// One verdict against the real server: the scope from its CRDs, its objects over HTTP.
async fn real_check(
    plane: &RealPlane,
    deployment: &Deployment,
    db: &tokio_postgres::Client,
    retire_check: bool,
) -> anyhow::Result<converge::Verdict> {
    let objects = plane.objects();
    let crds = objects.crds().await?;
    let scope = deployment.check_scope_with(CLUSTER, &crds, retire_check);
    let snapshot = objects.snapshot(&scope).await?;
    converge::check_snapshot(&snapshot, db, &scope).await
}

/// The kinds a real-mode seed creates objects of (labelled `fuzz=yes`, deleted before the
/// next seed).
const REAL_KINDS: &[(&str, &str)] = &[
    ("v1", "ConfigMap"),
    ("v1", "Pod"),
    ("composition.krateo.io/v1alpha2", "FireworksApp"),
];

fn fireworks_crd() -> Value {
    json!({"apiVersion": APIEXT, "kind": CRD,
        "metadata": {"name": "fireworksapps.composition.krateo.io"},
        "spec": {"group": "composition.krateo.io", "scope": "Namespaced",
            "versions": [{"name": "v1alpha2", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
            "names": {"plural": "fireworksapps", "singular": "fireworksapp",
                "kind": "FireworksApp", "listKind": "FireworksAppList"}}})
}

/// Real mode's starting point, the same for every seed: the objects of earlier seeds gone,
/// the namespaces and the FireworksApp CRD there, and in each namespace a few ConfigMaps,
/// Pods and FireworksApps (created on the server and in the returned model).
async fn real_preload(plane: &RealPlane, seed: u64) -> anyhow::Result<Store> {
    plane
        .reset(FUZZ_CRD_NAME, &[fireworks_crd()], NAMESPACES, REAL_KINDS)
        .await?;
    let model = Store::new(1000);
    for ns in NAMESPACES {
        model
            .create(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}))
            .map_err(|e| anyhow::anyhow!("model: {e}"))?;
    }
    model
        .create(fireworks_crd())
        .map_err(|e| anyhow::anyhow!("model: {e}"))?;
    for ns in NAMESPACES {
        for (av, kind) in REAL_KINDS {
            let n = if *kind == "ConfigMap" { 3 } else { 2 };
            for i in 0..n {
                let t = Target {
                    api_version: (*av).to_owned(),
                    kind: (*kind).to_owned(),
                    namespace: (*ns).to_owned(),
                    name: format!("pre-{}-{i}", kind.to_lowercase()),
                };
                let mut obj = new_object(&t, 0);
                obj["metadata"]["labels"]["fuzz-seed"] = json!(seed.to_string());
                model
                    .create(obj.clone())
                    .map_err(|e| anyhow::anyhow!("model: {e}"))?;
                plane
                    .create(&obj)
                    .await
                    .map_err(|e| anyhow::anyhow!("preload: {e}"))?;
            }
        }
    }
    Ok(model)
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
