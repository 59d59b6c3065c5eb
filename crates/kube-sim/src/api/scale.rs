//! `/scale` of workloads: an autoscaling/v1 Scale read from and written to `spec.replicas`.

use super::body::{content_type, decode_body, read_body};
use super::json_value;
use super::resource::apply_patch;
use crate::error::ApiError;
use crate::resources::ResourceDef;
use crate::store::Store;
use axum::body::Body;
use hyper::{Method, Request, Response};
use serde_json::{json, Value};
use std::sync::Arc;

/// An autoscaling/v1 Scale of a workload.
fn scale_of(o: &Value) -> Value {
    let meta = &o["metadata"];
    let selector: Vec<String> = o["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"]},
        // 1 is the API's default for workloads (kube-sim stores objects without defaulting)
        "spec": {"replicas": o["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector.join(",")},
    })
}

/// A write to `/scale`: a whole Scale (PUT) or a patch of one (content type, patch).
enum ScaleWrite {
    Replace(Value),
    Patch(String, Value),
}

/// `/scale` of deployments, replicasets and statefulsets: GET reads spec.replicas, PUT and
/// PATCH (of the Scale) write it.
pub(super) async fn scale(
    store: &Store,
    def: &Arc<ResourceDef>,
    ns: &str,
    name: &str,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    let current = || {
        store
            .get_in(def, ns, name)
            .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))
    };
    let write = match method {
        Method::GET => return Ok(json_value(200, &scale_of(&current()?.to_value()))),
        Method::PUT => {
            let (h, body) = read_body(req).await?;
            ScaleWrite::Replace(decode_body(&content_type(&h), &body)?)
        }
        Method::PATCH => {
            let (h, body) = read_body(req).await?;
            let ct = content_type(&h);
            let patch = decode_body(&ct, &body)?;
            ScaleWrite::Patch(ct, patch)
        }
        _ => return Err(ApiError::method_not_allowed()),
    };
    let (o, _) = store.modify_in(def, ns, name, false, |cur| {
        let mut cur = cur.ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
        let mut scale = scale_of(&cur);
        match &write {
            ScaleWrite::Replace(new) => {
                let want = new["metadata"]["resourceVersion"].as_str().unwrap_or("");
                if !want.is_empty() && Some(want) != scale["metadata"]["resourceVersion"].as_str() {
                    return Err(ApiError::conflict(&def.group, &def.plural, name));
                }
                scale["spec"] = new["spec"].clone();
            }
            ScaleWrite::Patch(ct, patch) => apply_patch(ct, &mut scale, patch)?,
        }
        // ScaleSpec.replicas is an `omitempty` int32: absent means 0 (kubectl sends {} for 0)
        let replicas = match &scale["spec"]["replicas"] {
            Value::Null => Some(0),
            v => v.as_i64(),
        };
        let replicas = replicas.ok_or_else(|| {
            ApiError::invalid(
                "autoscaling",
                "Scale",
                name,
                "spec.replicas",
                "Required value: replicas must be a number",
            )
        })?;
        cur["spec"]["replicas"] = replicas.into();
        Ok(cur)
    })?;
    Ok(json_value(200, &scale_of(&o.to_value())))
}
