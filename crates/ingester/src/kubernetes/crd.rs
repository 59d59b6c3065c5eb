//! What the manager needs to know of a CustomResourceDefinition, and the watch it calls for.
//! Pure: the CRD watch reads a `CrdSummary` out of each CRD it sees, so only these few fields
//! (never the whole CRD, which can be hundreds of KiB of schema) wait in the manager's queue.

use serde::Deserialize;

use crate::row::routes::{ManagedGroups, Route};

/// The fields of a CRD the manager decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrdSummary {
    pub name: String,
    pub group: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// The version to watch: the storage version when served, else the first served one.
    pub watched_version: Option<String>,
    /// The CRD's own resourceVersion (for a deleted CRD: the deletion's).
    pub resource_version: Option<i64>,
}

/// The watch a CRD calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrdWatch {
    pub route: Route,
    pub namespaced: bool,
}

#[derive(Deserialize)]
struct Crd {
    metadata: CrdMeta,
    spec: CrdSpec,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CrdMeta {
    name: String,
    #[serde(default)]
    resource_version: Option<String>,
}
#[derive(Deserialize)]
struct CrdSpec {
    group: String,
    names: CrdNames,
    scope: String,
    #[serde(default)]
    versions: Vec<CrdVersion>,
}
#[derive(Deserialize)]
struct CrdNames {
    plural: String,
    kind: String,
}
#[derive(Deserialize)]
struct CrdVersion {
    name: String,
    #[serde(default)]
    served: bool,
    #[serde(default)]
    storage: bool,
}

impl CrdSummary {
    pub fn from_json(json: &str) -> Result<CrdSummary, serde_json::Error> {
        let crd: Crd = serde_json::from_str(json)?;
        let watched_version = crd
            .spec
            .versions
            .iter()
            .find(|v| v.storage && v.served)
            .or_else(|| crd.spec.versions.iter().find(|v| v.served))
            .map(|v| v.name.clone());
        Ok(CrdSummary {
            name: crd.metadata.name,
            group: crd.spec.group,
            plural: crd.spec.names.plural,
            kind: crd.spec.names.kind,
            namespaced: crd.spec.scope == "Namespaced",
            watched_version,
            resource_version: crd.metadata.resource_version.and_then(|rv| rv.parse().ok()),
        })
    }

    /// The watch this CRD calls for: `None` when its group is not managed or it serves no
    /// version (its objects cannot be read: the same as gone).
    pub fn desired_watch(&self, groups: &ManagedGroups) -> Option<CrdWatch> {
        if !groups.contains(&self.group) {
            return None;
        }
        let version = self.watched_version.as_deref()?;
        Some(CrdWatch {
            route: Route::new(&self.group, version, &self.plural, &self.kind),
            namespaced: self.namespaced,
        })
    }

    pub fn is_managed(&self, groups: &ManagedGroups) -> bool {
        groups.contains(&self.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> ManagedGroups {
        ManagedGroups::parse("composition.krateo.io\n").0
    }

    fn crd(group: &str, versions: &str, scope: &str) -> String {
        format!(
            r#"{{"metadata":{{"name":"fireworksapps.{group}","resourceVersion":"12"}},"spec":{{"group":"{group}","scope":"{scope}","names":{{"plural":"fireworksapps","kind":"FireworksApp"}},"versions":[{versions}]}}}}"#
        )
    }

    fn desired(json: &str) -> Option<CrdWatch> {
        CrdSummary::from_json(json)
            .expect("valid CRD")
            .desired_watch(&groups())
    }

    #[test]
    fn storage_version_is_watched() {
        let json = crd(
            "composition.krateo.io",
            r#"{"name":"v1alpha1","served":true,"storage":false},{"name":"v1alpha2","served":true,"storage":true}"#,
            "Namespaced",
        );
        let summary = CrdSummary::from_json(&json).expect("ok");
        assert_eq!(summary.name, "fireworksapps.composition.krateo.io");
        assert_eq!(summary.resource_version, Some(12));
        let w = summary.desired_watch(&groups()).expect("managed");
        assert_eq!(
            w.route,
            Route::new(
                "composition.krateo.io",
                "v1alpha2",
                "fireworksapps",
                "FireworksApp"
            )
        );
        assert!(w.namespaced);
    }

    #[test]
    fn first_served_version_when_storage_is_not_served() {
        let json = crd(
            "composition.krateo.io",
            r#"{"name":"v1","served":false,"storage":true},{"name":"v2","served":true,"storage":false},{"name":"v3","served":true,"storage":false}"#,
            "Cluster",
        );
        let w = desired(&json).expect("managed");
        assert_eq!(w.route.version, "v2");
        assert!(!w.namespaced);
    }

    #[test]
    fn nothing_served_means_no_watch() {
        let json = crd(
            "composition.krateo.io",
            r#"{"name":"v1","served":false,"storage":true}"#,
            "Cluster",
        );
        let summary = CrdSummary::from_json(&json).expect("ok");
        assert!(summary.is_managed(&groups()));
        assert!(summary.desired_watch(&groups()).is_none());
    }

    #[test]
    fn unmanaged_groups_are_ignored_exactly() {
        for g in [
            "other.io",
            "krateo.io",
            "sub.composition.krateo.io",
            "composition.krateo.io.x",
        ] {
            let json = crd(
                g,
                r#"{"name":"v1","served":true,"storage":true}"#,
                "Cluster",
            );
            assert!(desired(&json).is_none(), "{g}");
        }
    }
}
