//! The seed's database and the read-write address the ingester reaches it by (a
//! [`TcpProxy`]). Without `--db-faults`: a database of its own on the machine's PostgreSQL.
//! With it: a private primary and its streaming standby ([`PgPair`]), the proxy playing the
//! read-write service that an operator moves, and for about half the seeds (chosen by the seed,
//! outside the schedule's random stream) PgBouncer in transaction mode in front of the proxy,
//! as Krateo's pooler would sit in front of the operator's service. The database's own faults
//! ([`Step::DbSwitchover`], [`Step::DbReadOnly`], [`Step::DbLostCommits`]) are played here.

use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::schedule::Step;
use crate::pg::{PgServer, TestDb};
use crate::pg_replica::PgPair;
use crate::pgbouncer::{PgBouncer, PoolMode};
use crate::proxy::TcpProxy;

/// How long a switchover waits for the standby to replay what the primary has.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
/// PgBouncer's server connections per database and user: fewer than the ingester's
/// connections (a lane waits for one, as operations.md describes), enough for two replicas.
const POOL_SIZE: u32 = 4;

/// A window of a database fault, open until [`Step::DbWindowEnd`], the next database fault or
/// the quiet point.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Window {
    /// The address reaches the standby; at its end back to the primary, or (`promote`) the
    /// primary stops cleanly and the standby is promoted where the address already points.
    ReadOnly { promote: bool },
    /// The standby is stopped (having replayed up to `standby_lsn`): the primary's commits
    /// from now on are lost at its end.
    LostCommits { standby_lsn: String },
}

/// What a database step did to the server the table is read on (ordered: of two, the
/// greater is what the monitor must follow).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PrimaryChange {
    /// The same primary.
    Same,
    /// Another server is the primary, holding everything the old one had.
    Moved,
    /// Another server is the primary, without the commits the old one had not sent it: the
    /// table went back in time by the harness's hand.
    WentBack,
}

pub struct SeedDb {
    /// The database (its name; on the machine's PostgreSQL, or created on the pair's first
    /// primary and carried by replication).
    db: TestDb,
    proxy: TcpProxy,
    pair: Option<PgPair>,
    bouncer: Option<PgBouncer>,
    open: Option<Window>,
    /// What the faults did that the trace should say (taken by [`Self::take_notes`]).
    notes: Vec<String>,
}

/// Whether `seed` runs through PgBouncer in transaction mode: from the seed alone, with a
/// generator of its own, so the schedule's draws are not touched.
pub fn through_pgbouncer(seed: u64) -> bool {
    SmallRng::seed_from_u64(seed ^ 0x5eed_b0c3_0000_0021).random_bool(0.5)
}

fn addr(port: u16) -> Result<SocketAddr, String> {
    format!("127.0.0.1:{port}")
        .parse()
        .map_err(|e| format!("harness: address of port {port}: {e}"))
}

/// Runs a blocking tool (`pg_ctl`, `pg_basebackup`) without holding up the runtime's other
/// tasks (the monitor, the other seeds).
fn blocking<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    tokio::task::block_in_place(f).map_err(|e| format!("harness: {what}: {e:#}"))
}

impl SeedDb {
    pub async fn start(seed: u64, db_faults: bool) -> anyhow::Result<SeedDb> {
        if !db_faults {
            let db = TestDb::create().await?;
            let proxy =
                TcpProxy::start(format!("{}:{}", db.server.host, db.server.port).parse()?).await?;
            return Ok(SeedDb {
                db,
                proxy,
                pair: None,
                bouncer: None,
                open: None,
                notes: Vec::new(),
            });
        }
        let pair = tokio::task::block_in_place(PgPair::start)?.ok_or_else(|| {
            anyhow::anyhow!(
                "--db-faults needs the PostgreSQL binaries with pg_basebackup (/usr/lib/postgresql/*/bin or PG_BIN_DIR)"
            )
        })?;
        let db = TestDb::create_on(pair.primary.server()).await?;
        let proxy = TcpProxy::start(format!("127.0.0.1:{}", pair.primary.port).parse()?).await?;
        let bouncer = if through_pgbouncer(seed) {
            let behind = PgServer {
                host: "127.0.0.1".into(),
                port: proxy.port,
                ..db.server.clone()
            };
            let bouncer = PgBouncer::start(&behind, PoolMode::Transaction, POOL_SIZE)
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!("--db-faults: pgbouncer is not installed (or PGBOUNCER_BIN)")
                })?;
            Some(bouncer)
        } else {
            None
        };
        Ok(SeedDb {
            db,
            proxy,
            pair: Some(pair),
            bouncer,
            open: None,
            notes: Vec::new(),
        })
    }

    /// For the trace: what the ingester talks to.
    pub fn describe(&self) -> String {
        match (&self.pair, &self.bouncer) {
            (None, _) => "the machine's PostgreSQL behind a cuttable proxy".to_owned(),
            (Some(_), None) => "a primary and its standby behind a proxy (the read-write address)".to_owned(),
            (Some(_), Some(_)) => "PgBouncer (transaction mode), then the read-write address (a proxy), then a primary and its standby".to_owned(),
        }
    }

    pub fn through_pgbouncer(&self) -> bool {
        self.bouncer.is_some()
    }

    /// The ingester's `DB_*` settings, the port being the pooler's or the proxy's.
    pub fn ingester_env(&self) -> Vec<(String, String)> {
        let port = self.bouncer.as_ref().map_or(self.proxy.port, |b| b.port);
        let mut env = self.db.ingester_env();
        env.retain(|(k, _)| k != "DB_PORT" && k != "DB_HOST" && k != "DB_PARAMS");
        env.push(("DB_HOST".to_owned(), "127.0.0.1".to_owned()));
        env.push(("DB_PORT".to_owned(), port.to_string()));
        env.push((
            "DB_PARAMS".to_owned(),
            "sslmode=disable&connect_timeout=2".to_owned(),
        ));
        env
    }

    /// The primary, read directly (not through the proxy that gets cut): by the checker and
    /// the monitor.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let server = match &self.pair {
            Some(pair) => pair.primary.server(),
            None => self.db.server.clone(),
        };
        server.connect(&self.db.name).await
    }

    pub fn cut(&self) {
        self.proxy.cut();
    }

    pub fn restore(&self) {
        self.proxy.restore();
    }

    /// A database window is open (a SIGTERM may then exit non-zero, as during a cut).
    pub fn window_open(&self) -> bool {
        self.open.is_some()
    }

    /// Plays one of the database's own faults. A new fault first ends the open window.
    pub async fn apply(&mut self, step: &Step) -> Result<PrimaryChange, String> {
        let ended = self.end_window().await?;
        let change = match step {
            Step::DbSwitchover => self.switch_over(true).await?,
            Step::DbReadOnly { promote } => {
                let standby = self.pair()?.standby.port;
                self.proxy.retarget(addr(standby)?);
                self.open = Some(Window::ReadOnly { promote: *promote });
                PrimaryChange::Same
            }
            Step::DbLostCommits => {
                let pair = self.pair()?;
                let standby_lsn = lsn(&pair.standby.server(), "pg_last_wal_replay_lsn()").await?;
                blocking("stopping the standby", || pair.standby.pg_stop())?;
                self.open = Some(Window::LostCommits { standby_lsn });
                PrimaryChange::Same
            }
            _ => PrimaryChange::Same,
        };
        Ok(ended.max(change))
    }

    /// Ends the open window, if any (at [`Step::DbWindowEnd`], a new database fault, the
    /// quiet point).
    pub async fn end_window(&mut self) -> Result<PrimaryChange, String> {
        match self.open.take() {
            None => Ok(PrimaryChange::Same),
            Some(Window::ReadOnly { promote: false }) => {
                let primary = self.pair()?.primary.port;
                self.proxy.retarget(addr(primary)?);
                Ok(PrimaryChange::Same)
            }
            // The address already reaches the standby: promoted, it accepts the writes on
            // the connections it has.
            Some(Window::ReadOnly { promote: true }) => self.switch_over(false).await,
            Some(Window::LostCommits { standby_lsn }) => {
                self.fail_over_losing_commits(&standby_lsn).await
            }
        }
    }

    /// The logs of PgBouncer and of the current primary and standby (label, text), for a
    /// seed's artifacts.
    pub fn logs(&self) -> Vec<(String, String)> {
        let mut logs = Vec::new();
        if let Some(b) = &self.bouncer {
            logs.push(("pgbouncer".to_owned(), b.log()));
        }
        if let Some(pair) = &self.pair {
            logs.push(("postgres-primary".to_owned(), pair.primary.log()));
            logs.push(("postgres-standby".to_owned(), pair.standby.log()));
        }
        logs
    }

    /// What the faults did since the last call, for the trace.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn pair(&self) -> Result<&PgPair, String> {
        self.pair
            .as_ref()
            .ok_or_else(|| "harness: a database fault without --db-faults".to_owned())
    }

    /// Nothing lost: the standby replays what the primary has, the primary stops cleanly
    /// (sending its last WAL), the standby is promoted; the address moves to it when
    /// `retarget`. A new standby is made from it.
    async fn switch_over(&mut self, retarget: bool) -> Result<PrimaryChange, String> {
        let pair = self.pair()?;
        pair.wait_replayed(REPLAY_TIMEOUT)
            .await
            .map_err(|e| format!("harness: before the switchover: {e:#}"))?;
        blocking("stopping the primary", || pair.primary.pg_stop())?;
        blocking("promoting the standby", || pair.promote_standby())?;
        if retarget {
            self.proxy.retarget(addr(pair.standby.port)?);
        }
        self.renew_standby()?;
        Ok(PrimaryChange::Moved)
    }

    /// The standby (stopped since the window opened) never received the window's commits:
    /// the primary crashes, the standby is started and promoted, the address moves to it.
    async fn fail_over_losing_commits(
        &mut self,
        standby_lsn: &str,
    ) -> Result<PrimaryChange, String> {
        let pair = self.pair()?;
        let primary_lsn = lsn(&pair.primary.server(), "pg_current_wal_lsn()").await?;
        self.notes.push(format!(
            "  lost: the primary's WAL {standby_lsn}..{primary_lsn} (what the ingester committed in the window)"
        ));
        let pair = self.pair()?;
        blocking("crashing the primary", || pair.crash_primary())?;
        blocking("starting the standby", || pair.standby.pg_start())?;
        blocking("promoting the standby", || pair.promote_standby())?;
        self.proxy.retarget(addr(pair.standby.port)?);
        self.renew_standby()?;
        Ok(PrimaryChange::WentBack)
    }

    /// The promoted standby is the primary of a new pair (the family may come again).
    fn renew_standby(&mut self) -> Result<(), String> {
        let pair = self
            .pair
            .take()
            .ok_or_else(|| "harness: no pair".to_owned())?;
        self.pair = Some(blocking("a new standby of the promoted server", || {
            pair.after_promotion()
        })?);
        Ok(())
    }
}

/// A WAL position of `server` (`pg_current_wal_lsn()` on a primary,
/// `pg_last_wal_replay_lsn()` on a standby), as text.
async fn lsn(server: &PgServer, function: &str) -> Result<String, String> {
    let client = server
        .connect("postgres")
        .await
        .map_err(|e| format!("harness: {e:#}"))?;
    let row = client
        .query_one(&format!("SELECT coalesce({function}::text, '')"), &[])
        .await
        .map_err(|e| format!("harness: {function}: {e}"))?;
    row.try_get(0)
        .map_err(|e| format!("harness: {function}: {e}"))
}
