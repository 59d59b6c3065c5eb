//! One throwaway database per test on the machine's PostgreSQL (`TEST_PG_HOST`,
//! `TEST_PG_PORT`, `TEST_PG_USER`, `TEST_PG_PASSWORD`; default postgres@127.0.0.1:5432), so
//! tests run in parallel without seeing each other's rows.

use tokio_postgres::{Client, NoTls};

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
        let name = self.name.clone();
        let conn = self.server.conn_string("postgres");
        // Drop runs outside any runtime guarantee: use a private one on a helper thread.
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
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
