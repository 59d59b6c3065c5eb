//! Which routes and managed groups this configuration has: the route files (or the built-in
//! lists), every skipped line logged. `check` reads them the same way.

use tracing::warn;

use crate::config::Config;
use crate::row::routes::{
    ManagedGroups, SkippedLine, StaticRoutes, BUILTIN_MANAGED_GROUPS, BUILTIN_STATIC_ROUTES,
};

/// Reads a route file (or the built-in text) and logs every skipped line.
fn load_list<T>(
    what: &str,
    path: Option<&std::path::Path>,
    builtin: &str,
    parse: impl Fn(&str) -> (T, Vec<SkippedLine>),
) -> anyhow::Result<T> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("{what}: cannot read {}: {e}", p.display()))?,
        None => builtin.to_owned(),
    };
    let (parsed, skipped) = parse(&text);
    for s in skipped {
        warn!(file = what, "skipping {s}");
    }
    Ok(parsed)
}

/// The static routes and managed groups of this configuration (skipped lines logged); two
/// routes for one kind stop start-up.
pub fn load_routes(config: &Config) -> anyhow::Result<(StaticRoutes, ManagedGroups)> {
    let routes = load_list(
        "STATIC_ROUTES_FILE",
        config.static_routes_file.as_deref(),
        BUILTIN_STATIC_ROUTES,
        StaticRoutes::parse,
    )?;
    let groups = load_list(
        "MANAGED_GROUPS_FILE",
        config.managed_groups_file.as_deref(),
        BUILTIN_MANAGED_GROUPS,
        ManagedGroups::parse,
    )?;
    routes
        .check_one_route_per_kind()
        .map_err(|e| anyhow::anyhow!("STATIC_ROUTES_FILE: {e}"))?;
    Ok((routes, groups))
}
