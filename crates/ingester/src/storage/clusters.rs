//! Which cluster owns each cluster name. Rows of two clusters never collide by key
//! (`global_uid` = `cluster:uid`), but a sweep compares a list with the rows of its scope by
//! cluster name: two clusters under one `CLUSTER_NAME` would mark each other's rows deleted
//! at every relist. So each name is claimed by the first cluster identity that starts with it
//! (`krateo_ingester_clusters`), and a start-up under a name another identity owns stops
//! before any watch writes. Moving a name to a new identity (a rebuilt cluster) is an
//! explicit operation (docs/operations.md).

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::kubernetes::cluster::ClusterIdentity;

pub const TABLE: &str = "krateo_ingester_clusters";

pub const TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS krateo_ingester_clusters (
    cluster_name text PRIMARY KEY,
    cluster_id text NOT NULL,
    id_source text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
)";

/// The recorded owner of a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub cluster_id: String,
    pub id_source: String,
    pub claimed_at: String,
}

/// What the record says about this cluster using this name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Nobody claimed the name yet: the first start claims it.
    Free,
    /// This cluster owns it.
    Ours,
    /// Another cluster owns it.
    Theirs(Owner),
}

/// Pure: the verdict for `ours` given the recorded owner.
pub fn ownership(owner: Option<Owner>, ours: &ClusterIdentity) -> Ownership {
    match owner {
        None => Ownership::Free,
        Some(o) if o.cluster_id == ours.id => Ownership::Ours,
        Some(o) => Ownership::Theirs(o),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("CLUSTER_NAME {name:?} belongs to another cluster: it is owned by cluster identity {owner} ({owner_source}, claimed {claimed_at}), and this cluster's identity is {ours}. Two clusters under one name would mark each other's rows deleted at every relist, so this ingester stops before writing anything. Fix: give this cluster its own CLUSTER_NAME; or, if this is the same cluster rebuilt (a new kube-system uid), move the name to the new identity as docs/operations.md (\"Renaming or rebuilding a cluster\") shows: UPDATE {TABLE} SET cluster_id = '{ours_id}' WHERE cluster_name = '{name_sql}' AND cluster_id = '{owner_sql}'")]
    Collision {
        name: String,
        name_sql: String,
        owner: String,
        owner_sql: String,
        owner_source: String,
        claimed_at: String,
        ours: String,
        ours_id: String,
    },
    /// The server's refusal, described by [`super::describe_db_error`].
    #[error("recording the owner of CLUSTER_NAME in {TABLE}: {0}")]
    Db(String),
}

impl From<tokio_postgres::Error> for ClaimError {
    fn from(e: tokio_postgres::Error) -> Self {
        ClaimError::Db(super::describe_db_error(&e))
    }
}

pub fn collision(name: &str, owner: &Owner, ours: &ClusterIdentity) -> ClaimError {
    let sql = |s: &str| s.replace('\'', "''");
    ClaimError::Collision {
        name: name.to_owned(),
        name_sql: sql(name),
        owner: owner.cluster_id.clone(),
        owner_sql: sql(&owner.cluster_id),
        owner_source: owner.id_source.clone(),
        claimed_at: owner.claimed_at.clone(),
        ours: ours.to_string(),
        ours_id: sql(&ours.id),
    }
}

/// The recorded owner of `name` (read only: the `check` command).
pub async fn owner(client: &Client, name: &str) -> Result<Option<Owner>, tokio_postgres::Error> {
    Ok(client
        .query_typed_opt(
            "SELECT cluster_id, id_source, to_char(claimed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM krateo_ingester_clusters WHERE cluster_name = $1",
            &[(&name, Type::TEXT)],
        )
        .await?
        .map(|r| Owner {
            cluster_id: r.get(0),
            id_source: r.get(1),
            claimed_at: r.get(2),
        }))
}

/// Claims `name` for `ours` when nobody owns it (two first starts at once: one insert wins,
/// the other reads the winner), or confirms that `ours` owns it; refuses otherwise.
pub async fn claim(
    client: &Client,
    name: &str,
    ours: &ClusterIdentity,
) -> Result<Ownership, ClaimError> {
    let inserted = client
        .execute_typed(
            "INSERT INTO krateo_ingester_clusters (cluster_name, cluster_id, id_source)
             VALUES ($1, $2, $3) ON CONFLICT (cluster_name) DO NOTHING",
            &[
                (&name, Type::TEXT),
                (&ours.id, Type::TEXT),
                (&ours.source.as_str(), Type::TEXT),
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(Ownership::Free);
    }
    match ownership(owner(client, name).await?, ours) {
        Ownership::Theirs(o) => Err(collision(name, &o, ours)),
        Ownership::Free => Ok(Ownership::Free),
        Ownership::Ours => {
            client
                .execute_typed(
                    "UPDATE krateo_ingester_clusters SET last_seen_at = now() WHERE cluster_name = $1",
                    &[(&name, Type::TEXT)],
                )
                .await?;
            Ok(Ownership::Ours)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::cluster::IdentitySource;

    fn id(s: &str) -> ClusterIdentity {
        ClusterIdentity {
            id: s.into(),
            source: IdentitySource::KubeSystemUid,
        }
    }

    fn owner_of(s: &str) -> Owner {
        Owner {
            cluster_id: s.into(),
            id_source: "kube-system namespace uid".into(),
            claimed_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_name_is_free_ours_or_theirs() {
        assert_eq!(ownership(None, &id("a")), Ownership::Free);
        assert_eq!(ownership(Some(owner_of("a")), &id("a")), Ownership::Ours);
        assert_eq!(
            ownership(Some(owner_of("b")), &id("a")),
            Ownership::Theirs(owner_of("b"))
        );
    }

    #[test]
    fn the_collision_names_both_identities_and_the_fix() {
        let e = collision("prod'eu", &owner_of("uid-b"), &id("uid-a")).to_string();
        assert!(e.contains("\"prod'eu\""), "{e}");
        assert!(e.contains("uid-b") && e.contains("uid-a"), "{e}");
        assert!(e.contains("CLUSTER_NAME"), "{e}");
        // The SQL of the fix quotes the name.
        assert!(e.contains("cluster_name = 'prod''eu'"), "{e}");
        assert!(e.contains("SET cluster_id = 'uid-a'"), "{e}");
    }
}
