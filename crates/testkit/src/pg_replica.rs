//! A primary and its streaming standby, both private servers ([`PrivatePg`]): the standby is a
//! `pg_basebackup -R` of the primary started as a hot standby (it answers reads, refuses
//! writes with SQLSTATE 25006) and can be promoted (`pg_ctl promote`). What an operator
//! (CloudNativePG, Patroni) runs, without the operator.

use std::time::Duration;

use crate::pg::{running_as_root, PrivatePg};

/// The tools a pair needs besides `initdb` and `pg_ctl`.
const PAIR_TOOLS: &[&str] = &["pg_basebackup"];

pub struct PgPair {
    pub primary: PrivatePg,
    pub standby: PrivatePg,
}

impl PgPair {
    /// A primary and a streaming standby of it. `Ok(None)` when the PostgreSQL binaries
    /// (with `pg_basebackup`) are not installed: the caller skips, or fails under CI
    /// (`crate::missing_tool`).
    pub fn start() -> anyhow::Result<Option<PgPair>> {
        let Some(bin) = PrivatePg::bin_dir() else {
            return Ok(None);
        };
        if PAIR_TOOLS.iter().any(|t| !bin.join(t).exists()) {
            return Ok(None);
        }
        let primary = PrivatePg::start_with(bin)?;
        let standby = standby_of(&primary)?;
        Ok(Some(PgPair { primary, standby }))
    }

    /// Waits until the standby has replayed everything the primary had written when called
    /// (replication is asynchronous: a test that moves the read-write address to the
    /// standby first lets it catch up, so nothing the ingester committed is lost).
    pub async fn wait_replayed(&self, timeout: Duration) -> anyhow::Result<()> {
        let primary = self.primary.server().connect("postgres").await?;
        let lsn: String = primary
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .try_get(0)?;
        let standby = self.standby.server().connect("postgres").await?;
        crate::eventually("the standby replays the primary's WAL", timeout, || async {
            let row = standby
                .query_one(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn, pg_last_wal_replay_lsn()::text",
                    &[&lsn],
                )
                .await
                .map_err(|e| format!("asking the standby: {e}"))?;
            let caught_up: Option<bool> = row.get(0);
            let replayed: Option<String> = row.get(1);
            if caught_up == Some(true) {
                Ok(Some(()))
            } else {
                Err(format!("replayed {replayed:?}, primary at {lsn}"))
            }
        })
        .await
    }

    /// The primary crashes (`pg_ctl stop -m immediate`): what the standby has not received
    /// is lost when it is promoted.
    pub fn crash_primary(&self) -> anyhow::Result<()> {
        self.primary.run(
            "pg_ctl",
            &["-D", &self.primary.data(), "-m", "immediate", "-w", "stop"],
        )
    }

    /// `pg_ctl promote`: the standby leaves recovery and accepts writes (waits until it does).
    pub fn promote_standby(&self) -> anyhow::Result<()> {
        self.standby.run(
            "pg_ctl",
            &["-D", &self.standby.data(), "-w", "-t", "60", "promote"],
        )
    }
}

impl PgPair {
    /// After [`Self::promote_standby`]: the promoted server is the primary of a new pair whose
    /// standby is made from it (`pg_basebackup -R` again: the old primary, stopped or crashed,
    /// may hold commits the promoted server never had, so it is not reused; it is removed).
    /// A run that fails over more than once keeps a standby to fail over to.
    pub fn after_promotion(self) -> anyhow::Result<PgPair> {
        let PgPair {
            primary: old,
            standby: promoted,
        } = self;
        drop(old);
        let standby = standby_of(&promoted)?;
        Ok(PgPair {
            primary: promoted,
            standby,
        })
    }
}

/// A hot standby of `primary`: `pg_basebackup -R` (writes `standby.signal` and
/// `primary_conninfo`) into a new directory, started on its own port.
fn standby_of(primary: &PrivatePg) -> anyhow::Result<PrivatePg> {
    let dir = tempfile::Builder::new()
        .prefix("private-pg-standby")
        .tempdir()?;
    let as_root = running_as_root();
    if as_root {
        let st = std::process::Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(dir.path())
            .status()?;
        anyhow::ensure!(st.success(), "chown postgres {}", dir.path().display());
    }
    let standby = PrivatePg {
        port: crate::free_port(),
        bin: primary.bin.clone(),
        dir,
        as_postgres: as_root,
    };
    let port = primary.port.to_string();
    standby.run(
        "pg_basebackup",
        &[
            "-D",
            &standby.data(),
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        ],
    )?;
    standby
        .pg_start()
        .map_err(|e| anyhow::anyhow!("starting the standby: {e}\nits log:\n{}", standby.log()))?;
    Ok(standby)
}
