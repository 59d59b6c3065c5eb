//! One throwaway database per test on the machine's PostgreSQL (`TEST_PG_HOST`,
//! `TEST_PG_PORT`, `TEST_PG_USER`, `TEST_PG_PASSWORD`; default postgres@127.0.0.1:5432), so
//! tests run in parallel without seeing each other's rows.

use tokio_postgres::{Client, NoTls};

#[derive(Clone)]
pub struct PgServer {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl PgServer {
    pub fn from_env() -> Self {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Self {
            host: var("TEST_PG_HOST", "127.0.0.1"),
            port: var("TEST_PG_PORT", "5432").parse().unwrap_or(5432),
            user: var("TEST_PG_USER", "postgres"),
            password: var("TEST_PG_PASSWORD", ""),
        }
    }

    fn conn_string(&self, db: &str) -> String {
        let mut s = format!(
            "host={} port={} user={} dbname={}",
            self.host, self.port, self.user, db
        );
        if !self.password.is_empty() {
            s.push_str(&format!(" password={}", self.password));
        }
        s
    }

    pub async fn connect(&self, db: &str) -> anyhow::Result<Client> {
        let (client, conn) = tokio_postgres::connect(&self.conn_string(db), NoTls)
            .await
            .map_err(|e| {
                anyhow::anyhow!("PostgreSQL at {}:{} ({}): {e}", self.host, self.port, db)
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

/// A database that is dropped (with its connections) when this value is.
pub struct TestDb {
    pub server: PgServer,
    pub name: String,
}

impl TestDb {
    pub async fn create() -> anyhow::Result<TestDb> {
        let server = PgServer::from_env();
        let name = format!("it_{}", uuid::Uuid::new_v4().simple());
        let admin = server.connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(TestDb { server, name })
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        self.server.connect(&self.name).await
    }

    /// The ingester's `DB_*` variables for this database.
    pub fn ingester_env(&self) -> Vec<(String, String)> {
        vec![
            ("DB_HOST".into(), self.server.host.clone()),
            ("DB_PORT".into(), self.server.port.to_string()),
            ("DB_USER".into(), self.server.user.clone()),
            ("DB_PASS".into(), self.server.password.clone()),
            ("DB_NAME".into(), self.name.clone()),
            ("DB_PARAMS".into(), "sslmode=disable".into()),
        ]
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.server.execute_from_drop(
            "postgres",
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

impl PgServer {
    /// Runs `sql` in database `db` and waits for it, from a `Drop` (clean-up of a test's
    /// databases and roles): a `Drop` may run with or without a runtime around it, so this
    /// uses a private one on a helper thread. Errors are ignored (clean-up is best effort).
    pub fn execute_from_drop(&self, db: &str, sql: String) {
        let conn = self.conn_string(db);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, c)) = tokio_postgres::connect(&conn, NoTls).await {
                    tokio::spawn(async move {
                        let _ = c.await;
                    });
                    let _ = client.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}

/// The effective uid is 0, via `id -u` (no libc dependency).
pub(crate) fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL server this test owns (`initdb` into a temporary directory, `pg_ctl` on a free
/// port), so it can stop and start the server without disturbing anybody else.
/// `initdb` refuses to run as root: as root, the binaries run as the `postgres` user with
/// the data directory owned by it.
pub struct PrivatePg {
    pub port: u16,
    pub(crate) bin: std::path::PathBuf,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) as_postgres: bool,
}

impl PrivatePg {
    /// The directory holding `initdb` and `pg_ctl` (`PG_BIN_DIR`, else the newest
    /// `/usr/lib/postgresql/*/bin`), if any.
    pub fn bin_dir() -> Option<std::path::PathBuf> {
        if let Ok(d) = std::env::var("PG_BIN_DIR") {
            let d = std::path::PathBuf::from(d);
            return d.join("initdb").exists().then_some(d);
        }
        let mut dirs: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        dirs.sort();
        dirs.pop().map(|(_, d)| d)
    }

    pub(crate) fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("running {tool}: {e}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{tool} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub(crate) fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// `initdb` + start. `Ok(None)` when no PostgreSQL binaries are installed.
    pub fn start() -> anyhow::Result<Option<PrivatePg>> {
        let Some(bin) = Self::bin_dir() else {
            return Ok(None);
        };
        Self::start_with(bin).map(Some)
    }

    /// `initdb` + start with the server binaries in `bin`.
    pub fn start_with(bin: std::path::PathBuf) -> anyhow::Result<PrivatePg> {
        let dir = tempfile::Builder::new().prefix("private-pg").tempdir()?;
        let as_root = running_as_root();
        if as_root {
            let st = std::process::Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()?;
            anyhow::ensure!(st.success(), "chown postgres {}", dir.path().display());
        }
        let mut pg = PrivatePg {
            port: crate::free_port(),
            bin,
            dir,
            as_postgres: as_root,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        // The port was free when chosen; another process may bind it before the server does.
        let mut attempt = 1;
        loop {
            match pg.pg_start() {
                Ok(()) => return Ok(pg),
                Err(e)
                    if attempt < 5 && pg.log().contains("could not create any TCP/IP sockets") =>
                {
                    eprintln!(
                        "private PostgreSQL: port {} was taken ({e}); trying another",
                        pg.port
                    );
                    pg.port = crate::free_port();
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts the (stopped) server on its port; waits until it accepts connections.
    pub fn pg_start(&self) -> anyhow::Result<()> {
        let data = self.data();
        let log = self.dir.path().join("postgres.log").display().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
            ],
        )
    }

    /// Stops the server (`fast`: disconnects clients, like a restart of the database).
    pub fn pg_stop(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "fast", "-w", "-t", "60", "stop"],
        )
    }

    pub fn server(&self) -> PgServer {
        PgServer {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "postgres".into(),
            password: String::new(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

impl TestDb {
    /// A throwaway database on a given server (e.g. a [`PrivatePg`]).
    pub async fn create_on(server: PgServer) -> anyhow::Result<TestDb> {
        let name = format!("it_{}", uuid::Uuid::new_v4().simple());
        let admin = server.connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(TestDb { server, name })
    }
}
