//! Events of the database: reachability, a rewind, the history's partitions, the transport.

use tracing::{info, warn};

use crate::telemetry::metrics::Metrics;

/// PostgreSQL reachability changed.
pub struct DatabaseReachability<'a> {
    pub up: bool,
    pub error: Option<&'a str>,
}
impl DatabaseReachability<'_> {
    pub fn emit(&self, m: &Metrics) {
        if self.up {
            info!("PostgreSQL reachable");
        } else {
            warn!(error = self.error.unwrap_or(""), "PostgreSQL unreachable");
        }
        m.db_up.set(i64::from(self.up));
    }
}

/// The database went back in time: commits it acknowledged to this process are gone (a
/// failover to a standby behind the primary, a restore). Every watch starts again from the
/// resume points the database holds; the coverage is stored again.
pub struct DatabaseRewound {
    pub committed_mark: i64,
    pub found_mark: Option<i64>,
}
impl DatabaseRewound {
    pub fn emit(&self, m: &Metrics) {
        warn!(committed_mark = self.committed_mark, found_mark = self.found_mark.unwrap_or(0), "the database went back in time: commits it acknowledged are gone (a failover to a standby behind the primary, a restore); every watch starts again from the resume points it holds");
        m.database_rewinds.inc();
    }
}

/// The history's partition maintenance ran in the service (its role owns the table).
pub struct HistoryMaintained<'a> {
    pub created: &'a [String],
    pub dropped: &'a [String],
    pub expired_default_rows: u64,
}
impl HistoryMaintained<'_> {
    pub fn emit(&self, m: &Metrics) {
        if !self.created.is_empty() || !self.dropped.is_empty() || self.expired_default_rows > 0 {
            info!(
                created = ?self.created,
                dropped = ?self.dropped,
                expired_default_rows = self.expired_default_rows,
                "history partitions maintained"
            );
        }
        m.history_partitions_dropped
            .inc_by(self.dropped.len() as u64);
    }
}

/// The history's partition maintenance failed (it is tried again later).
pub struct HistoryMaintenanceFailed<'a> {
    pub error: &'a str,
}
impl HistoryMaintenanceFailed<'_> {
    pub fn emit(&self, m: &Metrics) {
        warn!(error = self.error, "history partition maintenance failed");
        m.history_maintenance_failures.inc();
    }
}

/// Whether tomorrow's history partition exists. Missing, tomorrow's rows would land in the
/// default partition (kept, but not dropped by day): the owner must run maintenance.
pub struct HistoryPartitionCheck<'a> {
    /// `YYYY-MM-DD` of the missing day, `None` when it exists.
    pub missing_day: Option<&'a str>,
}
impl HistoryPartitionCheck<'_> {
    pub fn emit(&self, m: &Metrics) {
        if let Some(day) = self.missing_day {
            warn!(
                day,
                "tomorrow's partition of krateo_resource_history is missing and this role may not create it: run `resources-ingester history maintain` with the table owner's credentials (the chart's history-maintain CronJob); until then rows land in its default partition"
            );
        }
        m.history_partition_missing
            .set(i64::from(self.missing_day.is_some()));
    }
}

/// How the connection to PostgreSQL is protected, told once at start-up: a warning when TLS
/// is on but nobody checked the server's certificate (libpq's `prefer`/`require`: anyone
/// between the ingester and the database can read and change the rows), an error-level line
/// when nothing is encrypted while a password is used.
pub struct DatabaseTransport<'a> {
    pub sslmode: &'a str,
    pub encrypted: bool,
    pub certificate_verified: bool,
    pub password_used: bool,
}
impl DatabaseTransport<'_> {
    pub fn emit(&self) {
        match (self.encrypted, self.certificate_verified) {
            (true, true) => info!(
                sslmode = self.sslmode,
                "PostgreSQL connection encrypted, server certificate verified"
            ),
            (true, false) => warn!(
                sslmode = self.sslmode,
                "PostgreSQL connection encrypted but the server certificate is not verified: set DB_PARAMS sslmode=verify-full&sslrootcert=<CA file>"
            ),
            (false, _) if self.password_used => tracing::error!(
                sslmode = self.sslmode,
                "PostgreSQL connection is not encrypted while a password is used: set DB_PARAMS sslmode=verify-full&sslrootcert=<CA file> (or require)"
            ),
            (false, _) => info!(sslmode = self.sslmode, "PostgreSQL connection not encrypted"),
        }
    }
}
