//! Patch formats: JSON merge patch (RFC 7386), an approximation of strategic merge patch, and
//! JSON patch (RFC 6902).

use crate::error::ApiError;
use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn named(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|i| i.get("name").is_some_and(Value::is_string))
}

/// Strategic merge patch without the OpenAPI schema: lists whose elements all carry a `name`
/// merge by name (containers, env, volumes, ports...), other lists replace; the `$patch`,
/// `$setElementOrder`, `$retainKeys` and `$deleteFromPrimitiveList` directives are honoured or
/// dropped so they never end up in the stored object.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = p.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Value::Array(del)) = (t.get_mut(field), v) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Array(items) if named(items) => {
                let cur = t.entry(k.clone()).or_insert(Value::Array(vec![]));
                if !cur.as_array().is_some_and(|a| named(a) || a.is_empty()) {
                    *cur = Value::Array(vec![]);
                }
                if let Value::Array(cur) = cur {
                    for item in items {
                        let name = &item["name"];
                        let pos = cur.iter().position(|c| &c["name"] == name);
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        match (pos, delete) {
                            (Some(i), true) => {
                                cur.remove(i);
                            }
                            (None, true) => {}
                            (Some(i), false) => strategic_merge(&mut cur[i], item),
                            (None, false) => {
                                let mut fresh = Value::Object(Map::new());
                                strategic_merge(&mut fresh, item);
                                cur.push(fresh);
                            }
                        }
                    }
                }
            }
            _ => strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v),
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(Vec<String>, String), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid JSON pointer \"{path}\""));
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    let mut parts: Vec<String> = rest.split('/').map(unescape).collect();
    let last = parts.pop().ok_or_else(bad)?;
    Ok((parts, last))
}

fn walk<'a>(doc: &'a mut Value, parts: &[String]) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::new(422, "Invalid", format!("path component \"{p}\" not found"))
        })?;
    }
    Ok(cur)
}

/// RFC 6902 `add`, `remove`, `replace`, `test`, `move`, `copy`.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?;
    for op in ops {
        let path = op["path"].as_str().unwrap_or_default();
        let get_value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| ApiError::bad_request("missing value"))
        };
        match op["op"].as_str().unwrap_or_default() {
            "add" => add(doc, path, get_value()?)?,
            "remove" => {
                remove(doc, path)?;
            }
            "replace" => {
                remove(doc, path)?;
                add(doc, path, get_value()?)?;
            }
            "test" => {
                let (parts, last) = split_pointer(path)?;
                let parent = walk(doc, &parts)?;
                let cur = match parent {
                    Value::Object(m) => m.get(&last).cloned(),
                    Value::Array(a) => last.parse::<usize>().ok().and_then(|i| a.get(i).cloned()),
                    _ => None,
                };
                if cur != Some(get_value()?) {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("test failed at {path}"),
                    ));
                }
            }
            "move" | "copy" => {
                let from = op["from"].as_str().unwrap_or_default();
                let v = if op["op"] == "move" {
                    remove(doc, from)?
                } else {
                    let (parts, last) = split_pointer(from)?;
                    walk(doc, &parts)?
                        .get(&last)
                        .cloned()
                        .unwrap_or(Value::Null)
                };
                add(doc, path, v)?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown JSON patch op \"{other}\""
                )))
            }
        }
    }
    Ok(())
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parts, last) = split_pointer(path)?;
    match walk(doc, &parts)? {
        Value::Object(m) => {
            m.insert(last, v);
        }
        Value::Array(a) if last == "-" => a.push(v),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .ok()
                .filter(|i| *i <= a.len())
                .ok_or_else(|| ApiError::new(422, "Invalid", format!("bad index in {path}")))?;
            a.insert(i, v);
        }
        _ => {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!("cannot add at {path}"),
            ))
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parts, last) = split_pointer(path)?;
    let missing = || ApiError::new(422, "Invalid", format!("path {path} not found"));
    match walk(doc, &parts)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 5}, "l": [3]}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "l": [3]}));
    }

    #[test]
    fn strategic() {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
            "metadata": {"finalizers": ["f1", "f2"]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "b", "image": "z"}, {"name": "c", "$patch": "delete"}]},
                "metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}}),
        );
        assert_eq!(
            t,
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "z"}]},
                "metadata": {"finalizers": ["f2"]}})
        );
    }

    #[test]
    fn jsonpatch() {
        let mut t = json!({"metadata": {"labels": {"a": "1"}}, "l": [1, 2]});
        json_patch(
            &mut t,
            &json!([{"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "replace", "path": "/l/0", "value": 9},
                {"op": "add", "path": "/l/-", "value": 3},
                {"op": "test", "path": "/l/1", "value": 2}]),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"b/c": "2"}}, "l": [9, 2, 3]})
        );
        assert!(json_patch(&mut t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
