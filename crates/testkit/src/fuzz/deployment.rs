//! The ingester's configuration in a randomized run (what a redeploy may change between
//! restarts) and what follows from it: the environment, the route and group files, and the
//! scopes the convergence checker expects to be watched.

use std::path::Path;

use kube_sim::Store;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::converge::CheckScope;

/// The built-in static routes (`crates/ingester/router/assets/static`): the default when no
/// `STATIC_ROUTES_FILE` is given, and the lines a custom file picks from.
pub const DEFAULT_ROUTES: &str = include_str!("../../../ingester/router/assets/static");
/// The built-in managed groups (`crates/ingester/manager/assets/managed_groups`).
pub const DEFAULT_MANAGED_GROUPS: &str =
    include_str!("../../../ingester/manager/assets/managed_groups");

/// The namespaces the run's workload creates objects in.
pub const NAMESPACES: &[&str] = &["ns-0", "ns-1", "ns-2", "ns-3"];

/// The route of the CRDs themselves: always kept, since the CRD manager is fed by it.
const CRD_ROUTE: &str =
    "apiextensions.k8s.io/v1/customresourcedefinitions/CustomResourceDefinition";

/// One deployment of the ingester: shared by all its replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// `NAMESPACES`: empty = all.
    pub namespaces: Vec<String>,
    /// Lines of `STATIC_ROUTES_FILE`; `None` = the built-in routes (no file).
    pub routes: Option<Vec<String>>,
    /// Lines of `MANAGED_GROUPS_FILE`; `None` = the built-in groups (no file).
    pub managed_groups: Option<Vec<String>>,
    /// `WATCH_RESUME`.
    pub resume: bool,
    /// `LEADER_ELECTION`.
    pub leader_election: bool,
    /// How many replicas run at once (1 or 2).
    pub replicas: usize,
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A random non-empty subset of `all`, in `all`'s order.
fn subset(rng: &mut SmallRng, all: &[String]) -> Vec<String> {
    loop {
        let picked: Vec<String> = all
            .iter()
            .filter(|_| rng.random_bool(0.6))
            .cloned()
            .collect();
        if !picked.is_empty() {
            return picked;
        }
    }
}

impl Deployment {
    /// The production defaults: all namespaces, built-in routes and groups, resume points on,
    /// one replica.
    pub fn initial() -> Deployment {
        Deployment {
            namespaces: Vec::new(),
            routes: None,
            managed_groups: None,
            resume: true,
            leader_election: false,
            replicas: 1,
        }
    }

    /// A random redeploy: each setting changes with some probability.
    pub fn mutate(&self, rng: &mut SmallRng) -> Deployment {
        let mut d = self.clone();
        if rng.random_bool(0.4) {
            d.namespaces = if rng.random_bool(0.4) {
                Vec::new()
            } else {
                let all: Vec<String> = NAMESPACES.iter().map(|n| (*n).to_owned()).collect();
                subset(rng, &all)
            };
        }
        if rng.random_bool(0.3) {
            d.routes = if rng.random_bool(0.4) {
                None
            } else {
                let others: Vec<String> = lines(DEFAULT_ROUTES)
                    .into_iter()
                    .filter(|l| l != CRD_ROUTE)
                    .collect();
                let mut r = vec![CRD_ROUTE.to_owned()];
                r.extend(subset(rng, &others));
                Some(r)
            };
        }
        if rng.random_bool(0.3) {
            d.managed_groups = if rng.random_bool(0.4) {
                None
            } else {
                Some(subset(rng, &lines(DEFAULT_MANAGED_GROUPS)))
            };
        }
        if rng.random_bool(0.4) {
            d.resume = !d.resume;
        }
        if rng.random_bool(0.3) {
            d.leader_election = !d.leader_election;
        }
        if rng.random_bool(0.3) {
            d.replicas = if d.replicas == 1 { 2 } else { 1 };
        }
        d
    }

    pub fn describe(&self) -> String {
        format!(
            "namespaces={} routes={} managed_groups={} resume={} leader_election={} replicas={}",
            if self.namespaces.is_empty() {
                "all".to_owned()
            } else {
                self.namespaces.join(",")
            },
            self.routes
                .as_ref()
                .map_or("default".to_owned(), |r| format!("{} lines", r.len())),
            self.managed_groups
                .as_ref()
                .map_or("default".to_owned(), |g| g.join(",")),
            self.resume,
            self.leader_election,
            self.replicas
        )
    }

    fn route_lines(&self) -> Vec<String> {
        self.routes.clone().unwrap_or_else(|| lines(DEFAULT_ROUTES))
    }

    fn group_lines(&self) -> Vec<String> {
        self.managed_groups
            .clone()
            .unwrap_or_else(|| lines(DEFAULT_MANAGED_GROUPS))
    }

    /// Writes the route and group files into `dir` (when not the built-in ones) and returns
    /// the deployment's part of the environment for replica `replica`.
    pub fn env(&self, dir: &Path, replica: usize) -> anyhow::Result<Vec<(String, String)>> {
        let mut env = vec![
            ("WATCH_RESUME".to_owned(), self.resume.to_string()),
            ("NAMESPACES".to_owned(), self.namespaces.join(",")),
        ];
        if let Some(routes) = &self.routes {
            let path = dir.join("static_routes");
            write_atomically(&path, &(routes.join("\n") + "\n"))?;
            env.push(("STATIC_ROUTES_FILE".into(), path.display().to_string()));
        }
        if let Some(groups) = &self.managed_groups {
            let path = dir.join("managed_groups");
            write_atomically(&path, &(groups.join("\n") + "\n"))?;
            env.push(("MANAGED_GROUPS_FILE".into(), path.display().to_string()));
        }
        if self.leader_election {
            for (k, v) in [
                ("LEADER_ELECTION", "true".to_owned()),
                ("POD_NAME", format!("replica-{replica}")),
                ("LEASE_NAMESPACE", "default".to_owned()),
                ("LEASE_DURATION", "4s".to_owned()),
                ("LEASE_RENEW_DEADLINE", "2s".to_owned()),
                ("LEASE_RETRY_PERIOD", "300ms".to_owned()),
            ] {
                env.push((k.to_owned(), v));
            }
        }
        Ok(env)
    }

    /// The scopes this deployment watches given the CRDs in `store` right now: the static
    /// routes, plus one kind per CRD of a managed group at the version the ingester picks
    /// (its storage version if served, else its first served one).
    pub fn check_scope(&self, cluster: &str, store: &Store, retire_check: bool) -> CheckScope {
        let crds = store.list("apiextensions.k8s.io/v1", "CustomResourceDefinition", None);
        self.check_scope_with(cluster, &crds, retire_check)
    }

    /// [`Self::check_scope`] given the CRDs (a real server's).
    pub fn check_scope_with(
        &self,
        cluster: &str,
        crds: &[serde_json::Value],
        retire_check: bool,
    ) -> CheckScope {
        let mut kinds: Vec<(String, String)> = self
            .route_lines()
            .iter()
            .filter_map(|l| {
                let parts: Vec<&str> = l.split('/').collect();
                let [group, version, _plural, kind] = parts[..] else {
                    return None;
                };
                let api_version = if group.is_empty() {
                    version.to_owned()
                } else {
                    format!("{group}/{version}")
                };
                Some((api_version, kind.to_owned()))
            })
            .collect();
        let groups = self.group_lines();
        let crds_watched = self.route_lines().iter().any(|l| l == CRD_ROUTE);
        if crds_watched {
            for crd in crds {
                if let Some(k) = managed_kind(crd, &groups) {
                    kinds.push(k);
                }
            }
        }
        kinds.sort();
        kinds.dedup();
        CheckScope {
            cluster: cluster.to_owned(),
            kinds,
            namespaces: self.namespaces.clone(),
            managed_groups: groups,
            unwatched_rows_deleted: retire_check,
        }
    }
}

/// `(apiVersion, kind)` the ingester watches for `crd`, if its group is managed and a
/// version is served.
fn managed_kind(crd: &serde_json::Value, groups: &[String]) -> Option<(String, String)> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str()?;
    if !groups.iter().any(|g| g == group) {
        return None;
    }
    let versions = spec["versions"].as_array()?;
    let served = |v: &&serde_json::Value| v["served"].as_bool().unwrap_or(false);
    let version = versions
        .iter()
        .filter(served)
        .find(|v| v["storage"].as_bool().unwrap_or(false))
        .or_else(|| versions.iter().find(served))?;
    Some((
        format!("{group}/{}", version["name"].as_str()?),
        spec["names"]["kind"].as_str()?.to_owned(),
    ))
}

/// Replaces a file the way a ConfigMap volume does (write aside, then rename): a replica
/// starting meanwhile reads the old or the new content, never a truncated file (found by seed
/// 183, whose second replica's write emptied the file the first one was reading).
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let aside = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&aside, text)?;
    std::fs::rename(&aside, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_built_in_files_parse_and_the_default_scope_covers_the_workload() {
        let d = Deployment::initial();
        let store = Store::new(100);
        let scope = d.check_scope("c", &store, true);
        assert!(scope.kinds.contains(&("v1".into(), "Pod".into())));
        assert!(scope.kinds.contains(&(
            "apiextensions.k8s.io/v1".into(),
            "CustomResourceDefinition".into()
        )));
        assert!(lines(DEFAULT_MANAGED_GROUPS).contains(&"composition.krateo.io".to_owned()));
    }

    #[test]
    fn a_managed_crd_is_watched_at_its_served_storage_version() {
        let crd = serde_json::json!({"spec": {"group": "g.io", "names": {"kind": "K"},
            "versions": [{"name": "v1", "served": true, "storage": false},
                         {"name": "v2", "served": false, "storage": true}]}});
        let groups = vec!["g.io".to_owned()];
        assert_eq!(
            managed_kind(&crd, &groups),
            Some(("g.io/v1".into(), "K".into()))
        );
        assert_eq!(managed_kind(&crd, &["h.io".to_owned()]), None);
    }

    #[test]
    fn one_seed_gives_one_sequence_of_deployments() {
        let walk = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut d = Deployment::initial();
            (0..20)
                .map(|_| {
                    d = d.mutate(&mut rng);
                    d.describe()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(walk(7), walk(7));
        assert_ne!(walk(7), walk(8));
    }
}
