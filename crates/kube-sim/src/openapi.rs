//! Minimal OpenAPI v3 documents. kubectl reads them only to learn that the server supports the
//! `fieldValidation` query parameter (otherwise it insists on client-side validation from the
//! full schema); each group/version gets one PATCH operation per kind declaring that parameter.

use crate::resources::Registry;
use serde_json::{json, Map, Value};
use std::hash::{Hash, Hasher};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per group/version; the hash changes when its kinds change so
/// clients' caches stay correct as CRDs come and go.
pub(crate) fn root(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, version) in reg.group_versions() {
        let doc = gv_doc(reg, &group, &version).unwrap_or_default();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        doc.to_string().hash(&mut h);
        let p = gv_path(&group, &version);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={:016X}", h.finish())}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`.
pub(crate) fn gv_doc(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let list = reg.api_resource_list(group, version)?;
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
    ]);
    let mut paths = Map::new();
    for r in list["resources"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or_default();
        if name.contains('/') {
            continue;
        }
        let kind = r["kind"].as_str().unwrap_or_default();
        let path = if r["namespaced"].as_bool() == Some(true) {
            format!("{prefix}/namespaces/{{namespace}}/{name}/{{name}}")
        } else {
            format!("{prefix}/{name}/{{name}}")
        };
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{kind}"),
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
            }}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
