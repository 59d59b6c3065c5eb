//! `as=Table` responses, which `kubectl get` asks for when it prints for humans: name and age
//! columns, each row carrying the object's metadata.

use crate::resources::ResourceDef;
use crate::store::Obj;
use axum::body::Body;
use hyper::{header, Response};
use serde_json::{json, Value};
use std::sync::Arc;

fn age(created: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) else {
        return "<unknown>".into();
    };
    let s = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub(crate) fn table(
    _def: &ResourceDef,
    items: &[Arc<Obj>],
    rv: u64,
    cont: Option<String>,
) -> Response<Body> {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let v: Value = serde_json::from_slice(&o.body).unwrap_or_default();
            let meta = v.get("metadata").cloned().unwrap_or_default();
            json!({
                "cells": [&*o.name, age(meta["creationTimestamp"].as_str().unwrap_or_default())],
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
            })
        })
        .collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        metadata["continue"] = c.into();
    }
    let t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "description": "Time since creation", "priority": 0},
        ],
        "rows": rows,
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(t.to_string()))
        .unwrap_or_default()
}
