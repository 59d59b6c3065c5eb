//! `--load FILE`: replay a cluster dump (`kubectl get -A -o json` List, or JSON lines) into the store.

use crate::store::Store;
use anyhow::Context;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    pub loaded: usize,
    pub skipped: usize,
    /// First few reasons objects were skipped.
    pub errors: Vec<String>,
}

/// Objects of a List (`{"kind": "List", "items": [...]}`), a single object, or JSON lines.
pub fn parse_objects(text: &str) -> anyhow::Result<Vec<Value>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
            return Ok(match v.get("items").and_then(Value::as_array) {
                Some(items) if v["kind"].as_str().is_some_and(|k| k.ends_with("List")) => {
                    items.clone()
                }
                _ => vec![v],
            });
        }
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("line {}", i + 1)))
        .collect()
}

fn rank(o: &Value) -> u8 {
    match (o["apiVersion"].as_str(), o["kind"].as_str()) {
        (Some("apiextensions.k8s.io/v1"), Some("CustomResourceDefinition")) => 0,
        (Some("v1"), Some("Namespace")) => 1,
        _ => 2,
    }
}

/// Loads objects keeping their uid and creationTimestamp; CRDs and namespaces go first so the
/// custom resources they define can follow.
pub fn load_objects(store: &Store, mut objs: Vec<Value>) -> LoadReport {
    objs.sort_by_key(rank);
    let mut r = LoadReport::default();
    for mut o in objs {
        if let Some(m) = o["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        match store.create_preserving(o) {
            Ok(_) => r.loaded += 1,
            Err(e) => {
                r.skipped += 1;
                if r.errors.len() < 10 {
                    r.errors.push(e.to_string());
                }
            }
        }
    }
    r
}

pub fn load_file(store: &Store, path: &Path) -> anyhow::Result<LoadReport> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let objs = parse_objects(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(load_objects(store, objs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_lines() {
        let crd = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"things.x.io"},"spec":{"group":"x.io","scope":"Namespaced","names":{"plural":"things","kind":"Thing"},"versions":[{"name":"v1","served":true,"storage":true}]}}"#;
        let thing = r#"{"apiVersion":"x.io/v1","kind":"Thing","metadata":{"name":"t","namespace":"a","uid":"u-1","resourceVersion":"77"}}"#;
        let list = format!(r#"{{"apiVersion":"v1","kind":"List","items":[{thing},{crd}]}}"#);
        let s = Store::new(10);
        let r = load_objects(&s, parse_objects(&list).unwrap());
        assert_eq!((r.loaded, r.skipped), (2, 0));
        assert_eq!(
            s.get("x.io/v1", "Thing", Some("a"), "t").unwrap()["metadata"]["uid"],
            "u-1"
        );
        let s2 = Store::new(10);
        let r = load_objects(&s2, parse_objects(&format!("{thing}\n{crd}\n")).unwrap());
        assert_eq!(r.loaded, 2);
    }
}
