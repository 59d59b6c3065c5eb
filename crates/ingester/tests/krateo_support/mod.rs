//! A Krateo installation for the tests: deviser's role owns `krateo_resources` (created with
//! deviser's DDL, written here from its description in issue 12), the ingester's role may only
//! read and write rows.
#![allow(dead_code)]

pub mod presenter;

use std::time::Duration;

use kube_sim::{KubeSim, SimConfig};
use serde_json::json;
use testkit::converge::{wait_converged, CheckScope};
use testkit::pg::{PgServer, TestDb};
use testkit::process::IngesterProcess;

use crate::common::*;

/// deviser's start-up DDL: the presenter's columns, `global_uid` unique over all rows, a
/// serial primary key, the nine indexes of spec section 6 under deviser's own names, and its
/// own migrations table. No `object_resource_version`.
pub const DEVISER_DDL: &str = "
CREATE TABLE IF NOT EXISTS krateo_resources (
    id BIGSERIAL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at TIMESTAMPTZ,
    cluster_name TEXT NOT NULL,
    uid TEXT NOT NULL,
    namespace TEXT NOT NULL DEFAULT '',
    global_uid TEXT NOT NULL UNIQUE,
    resource_group TEXT NOT NULL,
    resource_version TEXT NOT NULL,
    resource_kind TEXT NOT NULL,
    resource_plural TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    composition_id UUID,
    raw JSONB NOT NULL,
    status_raw JSONB,
    PRIMARY KEY (id)
);
CREATE INDEX IF NOT EXISTS idx_kr_gvk_updated ON krateo_resources (resource_group, resource_version, resource_kind, updated_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_kr_cluster_ns_gvk_name ON krateo_resources (cluster_name, namespace, resource_group, resource_version, resource_kind, resource_name) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_kr_plural ON krateo_resources (resource_plural) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_kr_plural_updated ON krateo_resources (resource_plural, updated_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_kr_cluster_ns_gvp ON krateo_resources (cluster_name, namespace, resource_group, resource_version, resource_plural) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_kr_cluster_ns_plural ON krateo_resources (cluster_name, namespace, resource_plural) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_kr_composition ON krateo_resources (composition_id, updated_at DESC, id DESC) WHERE composition_id IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_kr_labels ON krateo_resources USING GIN ((raw -> 'metadata' -> 'labels'));
CREATE INDEX IF NOT EXISTS idx_kr_deleted_at ON krateo_resources (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
INSERT INTO schema_migrations (version) VALUES ('0001_krateo_resources') ON CONFLICT DO NOTHING;
";

/// deviser's retention job: hard-deletes rows soft-deleted longer than `retention` ago, in
/// batches by id. Returns the rows deleted.
pub async fn deviser_purge(
    db: &tokio_postgres::Client,
    retention: &str,
    batch: i64,
) -> anyhow::Result<u64> {
    let mut total = 0;
    loop {
        let n = db
            .execute(
                "DELETE FROM krateo_resources WHERE id IN (
                   SELECT id FROM krateo_resources
                    WHERE deleted_at IS NOT NULL AND deleted_at < now() - $1::text::interval
                    ORDER BY id LIMIT $2)",
                &[&retention, &batch],
            )
            .await?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}

/// A harness whose database lives on `server` (e.g. a private PostgreSQL 18).
pub async fn harness_on(server: PgServer) -> anyhow::Result<Harness> {
    let sim = KubeSim::start(SimConfig::default()).await?;
    let db = TestDb::create_on(server).await?;
    let dir = tempfile::tempdir()?;
    sim.write_kubeconfig(&dir.path().join("kubeconfig"))?;
    Ok(Harness { sim, db, dir })
}

/// The harness with deviser's role (owner of `krateo_resources`) and the ingester's role
/// (rows only). Roles are server-wide: dropped after the database.
pub struct Krateo {
    h: Option<Harness>,
    pub owner: String,
    pub ingester: String,
}

impl Krateo {
    pub async fn install(h: Harness) -> anyhow::Result<Krateo> {
        let suffix = h.db.name.trim_start_matches("it_")[..12].to_owned();
        let k = Krateo {
            owner: format!("deviser_{suffix}"),
            ingester: format!("ingester_{suffix}"),
            h: Some(h),
        };
        let admin = k.h().db.client().await?;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {o} LOGIN; CREATE ROLE {i} LOGIN;
                 GRANT CREATE ON SCHEMA public TO {o};",
                o = k.owner,
                i = k.ingester
            ))
            .await?;
        let owner = k.client_as(&k.owner).await?;
        owner.batch_execute(DEVISER_DDL).await?;
        // What docs/operations.md tells the owner to run once: rows of krateo_resources, the
        // serial id's sequence, and every table the owner creates later (migrate's).
        owner
            .batch_execute(&format!(
                "GRANT SELECT, INSERT, UPDATE ON krateo_resources TO {i};
                 GRANT USAGE ON SEQUENCE krateo_resources_id_seq TO {i};
                 ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {i};",
                i = k.ingester
            ))
            .await?;
        Ok(k)
    }

    pub fn h(&self) -> &Harness {
        self.h.as_ref().expect("harness present until drop")
    }

    pub fn server_as(&self, role: &str) -> PgServer {
        PgServer {
            user: role.to_owned(),
            password: String::new(),
            ..self.h().db.server.clone()
        }
    }

    pub async fn client_as(&self, role: &str) -> anyhow::Result<tokio_postgres::Client> {
        self.server_as(role).connect(&self.h().db.name).await
    }

    /// The ingester's environment as `role`.
    pub fn env_as(&self, role: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all = vec![("DB_USER", role)];
        all.extend_from_slice(extra);
        self.h().env(&all)
    }

    /// The ingester as `role`.
    pub fn spawn_as(&self, role: &str, extra: &[(&str, &str)]) -> anyhow::Result<IngesterProcess> {
        let mut all = vec![("DB_USER", role)];
        all.extend_from_slice(extra);
        self.h().spawn(&all)
    }

    pub async fn start_ready_as(
        &self,
        role: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<IngesterProcess> {
        let mut p = self.spawn_as(role, extra)?;
        p.wait_ready(WAIT).await?;
        Ok(p)
    }

    /// `resources-ingester migrate [args]` as `role`: (success, stdout + stderr).
    pub async fn migrate(&self, role: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let env = self.env_as(role, &[]);
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_resources-ingester"))
                .arg("migrate")
                .args(&args)
                .env_clear()
                .envs(env)
                .output()
        })
        .await??;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }
}

impl Drop for Krateo {
    fn drop(&mut self) {
        let Some(h) = self.h.take() else { return };
        let admin = h.db.server.clone();
        // The database (with the roles' objects and default privileges) goes first.
        drop(h);
        admin.execute_from_drop(
            "postgres",
            format!("DROP ROLE IF EXISTS {}, {}", self.owner, self.ingester),
        );
    }
}

pub fn scope() -> CheckScope {
    CheckScope::workload(CLUSTER)
}

async fn converged(k: &Krateo) -> anyhow::Result<()> {
    let db = k.h().db.client().await?;
    wait_converged(&k.h().store(), &db, &scope(), WAIT).await?;
    Ok(())
}

fn assert_no_raw_permission_error(log: &str) {
    for raw in ["permission denied", "must be owner"] {
        assert!(
            !log.contains(raw),
            "raw PostgreSQL error {raw:?} in:\n{log}"
        );
    }
    // The SQLSTATE as a code of its own, not digits inside a number (a timestamp's
    // fraction ".425013" once matched).
    let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
    for (at, _) in log.match_indices("42501") {
        let before = log[..at].chars().next_back();
        let after = log[at + 5..].chars().next();
        assert!(
            digit(before) || digit(after),
            "raw PostgreSQL error \"42501\" in:\n{log}"
        );
    }
}

pub async fn refused_before_migrate_then_ingests(k: Krateo) -> anyhow::Result<()> {
    let h = k.h();
    let store = h.store();
    store.create(namespace("team-a"))?;
    store.create(pod("team-a", "web"))?;

    let mut refused = k.spawn_as(&k.ingester, &[])?;
    let status = refused.wait_exit(WAIT).await?;
    let log = refused.log();
    assert!(!status.success(), "{log}");
    for named in [
        "column krateo_resources.object_resource_version",
        "table krateo_ingester_watch_state",
        "table krateo_ingester_coverage",
        "table krateo_ingester_clusters",
        &format!("role \"{}\"", k.ingester),
        "`resources-ingester migrate`",
        "`resources-ingester migrate --print-sql`",
    ] {
        assert!(log.contains(named), "{named:?} not in:\n{log}");
    }
    assert_no_raw_permission_error(&log);

    // As the ingester's own role migrate is refused with the same kind of message.
    let (ok, out) = k.migrate(&k.ingester, &[]).await?;
    assert!(!ok, "{out}");
    assert!(out.contains("may not change the schema"), "{out}");

    let (ok, out) = k.migrate(&k.owner, &[]).await?;
    assert!(ok, "{out}");
    let every: Vec<i32> = resources_ingester::storage::schema::migrations()
        .iter()
        .map(|m| m.version)
        .collect();
    assert!(out.contains(&format!("applied {every:?}")), "{out}");
    let (ok, out) = k.migrate(&k.owner, &[]).await?;
    assert!(ok && out.contains("applied []"), "idempotent: {out}");

    let owner = k.client_as(&k.owner).await?;
    let count = |sql: &'static str| {
        let owner = &owner;
        async move { Ok::<i64, anyhow::Error>(owner.query_one(sql, &[]).await?.get(0)) }
    };
    assert_eq!(
        count("SELECT count(*) FROM krateo_ingester_migrations").await?,
        every.len() as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM schema_migrations").await?,
        1,
        "deviser's record untouched"
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_indexes WHERE tablename = 'krateo_resources'").await?,
        11,
        "deviser's indexes recognised under its names, none duplicated"
    );

    let ing = k.start_ready_as(&k.ingester, &[]).await?;
    assert!(ing.log().contains("start-up runs no DDL"), "{}", ing.log());
    converged(&k).await?;
    // Changes after start-up land too (updates, deletes: UPDATE rights only).
    let mut cm = store.create(configmap("team-a", "settings", json!({"a": "1"})))?;
    cm["data"]["a"] = json!("2");
    store.update(cm)?;
    store.delete("v1", "Pod", Some("team-a"), "web")?;
    converged(&k).await?;
    assert_no_raw_permission_error(&ing.log());
    Ok(())
}

pub async fn missing_grants_are_named(k: Krateo) -> anyhow::Result<()> {
    let (ok, out) = k.migrate(&k.owner, &[]).await?;
    assert!(ok, "{out}");
    k.client_as(&k.owner)
        .await?
        .batch_execute(&format!(
            "REVOKE UPDATE ON krateo_resources FROM {i};
             REVOKE USAGE ON SEQUENCE krateo_resources_id_seq FROM {i};
             REVOKE DELETE ON krateo_ingester_coverage FROM {i};",
            i = k.ingester
        ))
        .await?;
    let mut p = k.spawn_as(&k.ingester, &[])?;
    let status = p.wait_exit(WAIT).await?;
    let log = p.log();
    assert!(!status.success(), "{log}");
    for grant in [
        format!("GRANT UPDATE ON krateo_resources TO \"{}\";", k.ingester),
        format!(
            "GRANT USAGE ON SEQUENCE public.krateo_resources_id_seq TO \"{}\";",
            k.ingester
        ),
        format!(
            "GRANT DELETE ON krateo_ingester_coverage TO \"{}\";",
            k.ingester
        ),
    ] {
        assert!(log.contains(&grant), "{grant:?} not in:\n{log}");
    }
    assert!(
        !log.contains("GRANT SELECT") && !log.contains("GRANT INSERT"),
        "only what is missing: {log}"
    );
    assert_no_raw_permission_error(&log);
    Ok(())
}

pub async fn printed_sql_is_enough(k: Krateo) -> anyhow::Result<()> {
    let (ok, sql) = k.migrate(&k.owner, &["--print-sql"]).await?;
    assert!(ok, "{sql}");
    let owner = k.client_as(&k.owner).await?;
    owner.batch_execute(&sql).await?;
    owner
        .batch_execute(&sql)
        .await
        .map_err(|e| anyhow::anyhow!("the script is not idempotent: {e}"))?;
    let versions: i64 = owner
        .query_one("SELECT count(*) FROM krateo_ingester_migrations", &[])
        .await?
        .get(0);
    assert_eq!(
        versions as usize,
        resources_ingester::storage::schema::migrations().len(),
        "the script records what it applied"
    );
    let (ok, out) = k.migrate(&k.owner, &[]).await?;
    assert!(ok && out.contains("applied []"), "nothing left: {out}");

    k.h().store().create(namespace("dba"))?;
    let _ing = k.start_ready_as(&k.ingester, &[]).await?;
    converged(&k).await
}

pub async fn purge_while_writing(k: Krateo) -> anyhow::Result<()> {
    let (ok, out) = k.migrate(&k.owner, &[]).await?;
    assert!(ok, "{out}");
    let h = k.h();
    let store = h.store();
    store.create(namespace("churn"))?;
    for i in 0..40 {
        store.create(configmap("churn", &format!("cm-{i}"), json!({"v": "0"})))?;
    }
    let ing = k.start_ready_as(&k.ingester, &[("WORKERS", "2")]).await?;
    converged(&k).await?;

    // deviser's role purges (retention 0: every soft-deleted row) while objects are created,
    // updated and deleted; the ingester keeps writing.
    let owner = k.client_as(&k.owner).await?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let purger = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut purged = 0u64;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                purged += deviser_purge(&owner, "0 seconds", 7).await?;
                if finished {
                    return Ok::<u64, anyhow::Error>(purged);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for round in 0..20 {
        for i in 0..10 {
            let name = format!("r{round}-{i}");
            store.create(configmap("churn", &name, json!({"v": "0"})))?;
        }
        for i in (0..10).step_by(2) {
            store.delete("v1", "ConfigMap", Some("churn"), &format!("r{round}-{i}"))?;
        }
        if let Some(mut cm) = store.get("v1", "ConfigMap", Some("churn"), &format!("cm-{round}")) {
            cm["data"]["v"] = json!(round.to_string());
            store.update(cm)?;
        }
        store.delete(
            "v1",
            "ConfigMap",
            Some("churn"),
            &format!("cm-{}", 39 - round),
        )?;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    converged(&k).await?;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let purged = purger.await??;
    assert!(
        purged >= 100,
        "the purge ran into the ingester's deletes: {purged} rows"
    );
    // After the purge: still every live object, and no row of a deleted object came back.
    converged(&k).await?;
    let live_rows = h
        .count("deleted_at IS NULL AND resource_plural = 'configmaps' AND namespace = 'churn'")
        .await?;
    let live_objects = store.list("v1", "ConfigMap", Some("churn")).len() as i64;
    assert_eq!(live_rows, live_objects);
    assert_no_raw_permission_error(&ing.log());
    Ok(())
}
