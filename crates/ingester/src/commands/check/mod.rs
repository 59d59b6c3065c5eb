//! `resources-ingester check`: every start-up check, nothing ingested, no DDL and no write.
//! One line per check (OK, WARN or FAIL with a detail); the service would run when no line
//! fails (warnings allowed). The verdicts (verdicts.rs) and the rendering (render.rs) are pure
//! functions; the I/O glue ([`run`], database.rs, api.rs) reuses the start-up steps
//! (storage/schema inspection, cluster.rs detection, the service's route loading and
//! discovery) rather than repeating them.

mod api;
mod database;
mod render;
mod verdicts;

use serde::Serialize;

use crate::config::Config;
pub use verdicts::{
    group_verdict, history_partitions_verdict, kind_misnamed, lz4_verdict, name_verdict,
    owner_verdict, pooling_verdict, rights_verdict, route_verdict, schema_verdicts, tls_verdict,
    Access,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

fn line(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
    }
}

/// Every check, in the order start-up runs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, c: Check) {
        self.checks.push(c);
    }

    fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    /// The service would run: no check failed (warnings allowed).
    pub fn would_run(&self) -> bool {
        self.count(Status::Fail) == 0
    }

    /// 0 when the service would run, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.would_run())
    }

    /// Every detail with `secret` (the password) replaced, should an error ever quote it.
    pub fn redacted(mut self, secret: &str) -> Report {
        if !secret.is_empty() {
            for c in &mut self.checks {
                if c.detail.contains(secret) {
                    c.detail = c.detail.replace(secret, "***");
                }
            }
        }
        self
    }
}

/// Runs every check; never writes.
pub async fn run(config: &Config) -> Report {
    let mut report = Report::default();
    let db = database::checks(config, &mut report).await;
    let identity = api::checks(config, &mut report).await;
    if let (Some(client), Some((name, identity))) = (&db, &identity) {
        report.push(database::owner_check(client, name, identity).await);
    }
    report.redacted(config.db_pass.expose())
}
