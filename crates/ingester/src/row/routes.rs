//! Route lists: which kinds are watched from boot (static routes) and which API groups
//! have their custom resources watched as their CRDs appear (managed groups).
//!
//! Parsing is pure so every rule is unit-tested; reading the files is the caller's job.

use std::fmt;
use std::sync::Arc;

/// The static routes compiled into the binary (overridable with `STATIC_ROUTES_FILE`).
pub const BUILTIN_STATIC_ROUTES: &str = include_str!("../../router/assets/static");
/// The managed groups compiled into the binary (overridable with `MANAGED_GROUPS_FILE`).
pub const BUILTIN_MANAGED_GROUPS: &str = include_str!("../../manager/assets/managed_groups");

/// One watched kind: `group/version/resource/Kind`, plus its scope once discovery told us.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    /// Plural resource name as used in URLs (`pods`).
    pub plural: String,
    pub kind: String,
}

impl Route {
    pub fn new(group: &str, version: &str, plural: &str, kind: &str) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
            kind: kind.to_owned(),
        }
    }

    /// `apps/v1` or `v1` for the core group, as it appears in `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.plural == "customresourcedefinitions"
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.group, self.version, self.plural, self.kind
        )
    }
}

/// A line of a route file that was skipped, with the reason; the caller logs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line_no: usize,
    pub line: String,
    pub reason: &'static str,
}

impl fmt::Display for SkippedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {:?}: {}", self.line_no, self.line, self.reason)
    }
}

/// The static routes: watched from boot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticRoutes {
    pub routes: Vec<Arc<Route>>,
}

impl StaticRoutes {
    /// Parses one `group/version/resource/Kind` per line. Blank lines are ignored; a line
    /// without exactly four `/`-separated segments, or with an empty version, resource or
    /// kind, is skipped and reported. Duplicates are kept once.
    pub fn parse(text: &str) -> (Self, Vec<SkippedLine>) {
        let mut routes: Vec<Arc<Route>> = Vec::new();
        let mut skipped = Vec::new();
        for (i, raw_line) in text.lines().enumerate() {
            let line = raw_line.trim();
            if line.is_empty() {
                continue;
            }
            let skip = |reason| SkippedLine {
                line_no: i + 1,
                line: raw_line.to_owned(),
                reason,
            };
            let parts: Vec<&str> = line.split('/').collect();
            let [group, version, plural, kind] = parts.as_slice() else {
                skipped.push(skip("expected group/version/resource/Kind (four segments)"));
                continue;
            };
            if version.is_empty() || plural.is_empty() || kind.is_empty() {
                skipped.push(skip("version, resource and Kind must not be empty"));
                continue;
            }
            if parts.iter().any(|p| p.chars().any(char::is_whitespace)) {
                skipped.push(skip("segments must not contain whitespace"));
                continue;
            }
            let route = Route::new(group, version, plural, kind);
            if !routes.iter().any(|r| **r == route) {
                routes.push(Arc::new(route));
            }
        }
        (Self { routes }, skipped)
    }

    /// Refuses two routes for one kind (same group and plural at two versions or kinds): both
    /// watches would cover the same rows, and each list would rewrite the other's versions.
    pub fn check_one_route_per_kind(&self) -> Result<(), String> {
        for (i, a) in self.routes.iter().enumerate() {
            if let Some(b) = self.routes[..i]
                .iter()
                .find(|b| b.group == a.group && b.plural == a.plural)
            {
                return Err(format!(
                    "static routes {b} and {a} watch the same kind ({}/{}); keep one line per group and resource",
                    if a.group.is_empty() { "core" } else { &a.group },
                    a.plural
                ));
            }
        }
        Ok(())
    }

    /// The (group, plural) of every route.
    pub fn kinds(&self) -> std::collections::HashSet<(String, String)> {
        self.routes
            .iter()
            .map(|r| (r.group.clone(), r.plural.clone()))
            .collect()
    }
}

/// API groups whose CRDs get their resources watched. A group matches exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagedGroups {
    groups: Vec<String>,
}

impl ManagedGroups {
    /// One group per line; blank lines ignored; a line with whitespace or a `/` inside is
    /// skipped and reported.
    pub fn parse(text: &str) -> (Self, Vec<SkippedLine>) {
        let mut groups: Vec<String> = Vec::new();
        let mut skipped = Vec::new();
        for (i, raw_line) in text.lines().enumerate() {
            let line = raw_line.trim();
            if line.is_empty() {
                continue;
            }
            if line.contains('/') || line.chars().any(char::is_whitespace) {
                skipped.push(SkippedLine {
                    line_no: i + 1,
                    line: raw_line.to_owned(),
                    reason: "expected one API group name",
                });
                continue;
            }
            if !groups.iter().any(|g| g == line) {
                groups.push(line.to_owned());
            }
        }
        (Self { groups }, skipped)
    }

    pub fn contains(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example() {
        let text = "apiextensions.k8s.io/v1/customresourcedefinitions/CustomResourceDefinition\n\
                    apps/v1/deployments/Deployment\n/v1/pods/Pod\n/v1/namespaces/Namespace\n";
        let (routes, skipped) = StaticRoutes::parse(text);
        assert!(skipped.is_empty());
        assert_eq!(routes.routes.len(), 4);
        assert_eq!(
            *routes.routes[1],
            Route::new("apps", "v1", "deployments", "Deployment")
        );
        assert!(routes.routes[0].is_crd());
    }

    #[test]
    fn core_group_is_empty_and_api_version_has_no_slash() {
        let (routes, _) = StaticRoutes::parse("/v1/pods/Pod");
        assert_eq!(routes.routes[0].group, "");
        assert_eq!(routes.routes[0].api_version(), "v1");
        let (routes, _) = StaticRoutes::parse("apps/v1/deployments/Deployment");
        assert_eq!(routes.routes[0].api_version(), "apps/v1");
    }

    #[test]
    fn blank_lines_are_ignored_without_warning() {
        let (routes, skipped) = StaticRoutes::parse("\n   \n/v1/pods/Pod\n\n");
        assert_eq!(routes.routes.len(), 1);
        assert!(skipped.is_empty());
    }

    #[test]
    fn wrong_segment_counts_are_skipped_with_line_numbers() {
        let text = "v1/pods/Pod\n/v1/pods/Pod\napps/v1/deployments/Deployment/extra\n";
        let (routes, skipped) = StaticRoutes::parse(text);
        assert_eq!(routes.routes.len(), 1);
        assert_eq!(skipped.len(), 2);
        assert_eq!(skipped[0].line_no, 1);
        assert_eq!(skipped[1].line_no, 3);
        assert!(skipped[1].to_string().contains("line 3"));
    }

    #[test]
    fn empty_version_resource_or_kind_is_skipped() {
        let (routes, skipped) =
            StaticRoutes::parse("apps//deployments/Deployment\n/v1//Pod\n/v1/pods/\n");
        assert!(routes.routes.is_empty());
        assert_eq!(skipped.len(), 3);
    }

    #[test]
    fn whitespace_inside_a_segment_is_skipped() {
        let (routes, skipped) = StaticRoutes::parse("/v1/po ds/Pod\n");
        assert!(routes.routes.is_empty());
        assert_eq!(skipped.len(), 1);
    }

    #[test]
    fn surrounding_whitespace_and_duplicates_are_tolerated() {
        let (routes, skipped) = StaticRoutes::parse("  /v1/pods/Pod  \n/v1/pods/Pod\r\n");
        assert!(skipped.is_empty());
        assert_eq!(routes.routes.len(), 1);
    }

    #[test]
    fn builtin_files_parse_cleanly() {
        let (routes, skipped) = StaticRoutes::parse(BUILTIN_STATIC_ROUTES);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert!(
            routes.routes.iter().any(|r| r.is_crd()),
            "CRDs must be watched for the manager"
        );
        let (groups, skipped) = ManagedGroups::parse(BUILTIN_MANAGED_GROUPS);
        assert!(skipped.is_empty());
        assert!(groups.contains("composition.krateo.io"));
    }

    #[test]
    fn managed_groups_match_exactly() {
        let (groups, skipped) =
            ManagedGroups::parse("composition.krateo.io\n\nbad group\nx/y\ncore.krateo.io\n");
        assert_eq!(skipped.len(), 2);
        assert!(groups.contains("composition.krateo.io"));
        assert!(groups.contains("core.krateo.io"));
        assert!(!groups.contains("krateo.io"));
        assert!(!groups.contains("sub.composition.krateo.io"));
        assert!(!groups.contains("composition.krateo.io.evil"));
        assert_eq!(groups.iter().count(), 2);
    }

    #[test]
    fn one_route_per_kind() {
        let (ok, _) = StaticRoutes::parse("apps/v1/deployments/Deployment\n/v1/pods/Pod\n");
        assert!(ok.check_one_route_per_kind().is_ok());
        let (dup, _) = StaticRoutes::parse(
            "apps/v1/deployments/Deployment\n/v1/pods/Pod\napps/v1beta1/deployments/Deployment\n",
        );
        let err = dup
            .check_one_route_per_kind()
            .expect_err("two versions of one kind");
        assert!(err.contains("apps/v1/deployments/Deployment"), "{err}");
        assert!(err.contains("apps/v1beta1/deployments/Deployment"), "{err}");
    }
}
