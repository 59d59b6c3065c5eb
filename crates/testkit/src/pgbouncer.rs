//! A private PgBouncer (the Debian package's binary) in front of a test's PostgreSQL: its own
//! ini file, `auth_type = trust`, a pool mode and a pool size of the test's choosing, on a free
//! port. Dropped: the process is killed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pg::PgServer;

/// PgBouncer's `pool_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client connection, for the client's whole session.
    Session,
    /// A server connection per transaction: the next transaction may run on another one.
    Transaction,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

pub struct PgBouncer {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// The `pgbouncer` binary: `PGBOUNCER_BIN`, else Debian's `/usr/sbin/pgbouncer`.
    pub fn binary() -> Option<PathBuf> {
        let path = std::env::var("PGBOUNCER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("/usr/sbin/pgbouncer"));
        path.exists().then_some(path)
    }

    /// Starts PgBouncer in front of `server` (every database name passes through) with
    /// `pool_size` server connections per database and user. `Ok(None)`: not installed.
    pub async fn start(
        server: &PgServer,
        mode: PoolMode,
        pool_size: u32,
    ) -> anyhow::Result<Option<PgBouncer>> {
        let Some(bin) = Self::binary() else {
            return Ok(None);
        };
        let dir = tempfile::Builder::new().prefix("pgbouncer").tempdir()?;
        let as_root = crate::pg::running_as_root();
        if as_root {
            // PgBouncer refuses to run as root: it runs as `postgres`, which reads the files.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!("\"{}\" \"\"\n", server.user),
        )?;
        let log_path = dir.path().join("pgbouncer.log");
        let mut attempt = 1;
        loop {
            let port = crate::free_port();
            let ini = dir.path().join("pgbouncer.ini");
            std::fs::write(&ini, ini_text(server, mode, pool_size, port, &dir))?;
            let log = std::fs::File::create(&log_path)?;
            let mut cmd = Command::new(&bin);
            if as_root {
                cmd.args(["-u", "postgres"]);
            }
            let mut child = cmd
                .arg(&ini)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| anyhow::anyhow!("starting {}: {e}", bin.display()))?;
            match wait_listening(&mut child, port, Duration::from_secs(20)).await {
                Ok(()) => return Ok(Some(PgBouncer { port, child, dir })),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    // The port was free when chosen; another process may have bound it since.
                    if attempt < 5 && log.contains("Address already in use") {
                        eprintln!("pgbouncer: port {port} was taken ({e}); trying another");
                        attempt += 1;
                        continue;
                    }
                    anyhow::bail!("{e}; pgbouncer log:\n{log}");
                }
            }
        }
    }

    /// The server to hand to tests and the ingester: PgBouncer's address, the same user.
    pub fn server(&self, behind: &PgServer) -> PgServer {
        PgServer {
            host: "127.0.0.1".into(),
            port: self.port,
            user: behind.user.clone(),
            password: behind.password.clone(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

/// Waits until PgBouncer accepts TCP connections on `port` (or exits).
async fn wait_listening(child: &mut Child, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("pgbouncer exited: {status}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "pgbouncer not listening on {port} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ini_text(
    server: &PgServer,
    mode: PoolMode,
    pool_size: u32,
    port: u16,
    dir: &tempfile::TempDir,
) -> String {
    let password = if server.password.is_empty() {
        String::new()
    } else {
        format!(" password={}", server.password)
    };
    format!(
        "[databases]
* = host={host} port={pg_port}{password}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {auth}
pool_mode = {mode}
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
max_db_connections = 0
logfile =
pidfile =
admin_users = {user}
",
        host = server.host,
        pg_port = server.port,
        auth = dir.path().join("userlist.txt").display(),
        mode = mode.as_str(),
        user = server.user,
    )
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
