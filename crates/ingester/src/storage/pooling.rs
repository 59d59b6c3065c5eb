//! Which kind of pooling sits between the ingester and PostgreSQL, as far as the server's
//! answers tell (`resources-ingester check`, line `database pooling`).
//!
//! The signal is the backend pid (`pg_backend_pid()`) of two client connections open at once,
//! each asking several times, in alternating order, one transaction at a time: without a
//! pooler, and through a pooler in session mode, a client connection keeps one backend for
//! its whole life and two client connections never share one. A pooler in transaction mode
//! gives each transaction whichever server connection is free: a client sees its backend
//! change, or two clients see the same backend (an idle pool hands the connection one client
//! just released to the next, a round-robin pool rotates). Under heavy load from other clients
//! a transaction pooler may go unseen (each probe served by a different, busy backend): the
//! ingester works either way, the line only informs. A pooler that refuses explicit
//! transactions (statement mode) fails the probe: the writer needs them.

use std::collections::BTreeSet;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::config::Config;

/// Transactions each client connection runs for the probe.
const ROUNDS: usize = 4;

/// The backends each of two client connections was served by.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BackendsSeen {
    pub first: BTreeSet<i32>,
    pub second: BTreeSet<i32>,
}

/// What the backends seen say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pooling {
    /// Server connections are handed out per transaction (PgBouncer `pool_mode = transaction`).
    Transaction,
    /// Each client connection kept its own backend: direct, or a pooler in session mode.
    Session,
}

impl BackendsSeen {
    pub fn pooling(&self) -> Pooling {
        let moved = self.first.len() > 1 || self.second.len() > 1;
        let shared = !self.first.is_disjoint(&self.second);
        if moved || shared {
            Pooling::Transaction
        } else {
            Pooling::Session
        }
    }
}

/// Runs the probe on `first` (an open connection) and a second connection opened for it.
/// `Err`: the second connection could not be opened, or a transaction was refused.
pub async fn probe(c: &Config, first: &Client) -> Result<BackendsSeen, String> {
    let tls = super::tls::make_tls(&c.db_params).map_err(|e| e.to_string())?;
    let (second, connection) = super::pg_config(c)
        .connect(tls)
        .await
        .map_err(|e| format!("opening a second connection: {}", super::error_chain(&e)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut seen = BackendsSeen::default();
    for round in 0..ROUNDS {
        // A, B then B, A: a pool that rotates its server connections shows them to both.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for first_asks in order {
            let (client, pids) = if first_asks {
                (first, &mut seen.first)
            } else {
                (&second, &mut seen.second)
            };
            pids.insert(backend_pid(client).await?);
        }
    }
    Ok(seen)
}

/// The backend serving one explicit transaction of `client`.
async fn backend_pid(client: &Client) -> Result<i32, String> {
    let answer = client
        .simple_query("BEGIN; SELECT pg_backend_pid(); COMMIT")
        .await
        .map_err(|e| format!("a transaction was refused: {}", super::error_chain(&e)))?;
    answer
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse::<i32>().ok()),
            _ => None,
        })
        .ok_or_else(|| "pg_backend_pid() gave no answer".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(first: &[i32], second: &[i32]) -> BackendsSeen {
        BackendsSeen {
            first: first.iter().copied().collect(),
            second: second.iter().copied().collect(),
        }
    }

    #[test]
    fn one_backend_per_client_connection_is_a_session() {
        assert_eq!(seen(&[10], &[11]).pooling(), Pooling::Session);
    }

    #[test]
    fn a_backend_shared_or_changing_is_transaction_pooling() {
        assert_eq!(seen(&[10], &[10]).pooling(), Pooling::Transaction);
        assert_eq!(seen(&[10, 11], &[12]).pooling(), Pooling::Transaction);
        assert_eq!(seen(&[10], &[11, 12]).pooling(), Pooling::Transaction);
    }
}
