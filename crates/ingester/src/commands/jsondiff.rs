//! What changed between two JSON documents: the changed paths (JSON Pointer, RFC 6901) with
//! their old and new values. Pure; used by the `history` command to show what changed between
//! consecutive versions of an object.

use serde_json::Value;

/// One changed path. `old`/`new` is `None` where the path is absent on that side.
#[derive(Clone, Debug, PartialEq)]
pub struct PathChange {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// The changed paths from `old` to `new`, in document order (object keys sorted). Objects are
/// compared key by key and arrays index by index, down to the first level where the two
/// differ in type or value; an element added or removed at the end of an array is one change.
pub fn diff(old: &Value, new: &Value) -> Vec<PathChange> {
    let mut out = Vec::new();
    walk(&mut String::new(), Some(old), Some(new), &mut out);
    out
}

fn walk(path: &mut String, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<PathChange>) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&escape(k));
                walk(path, a.get(k), b.get(k), out);
                path.truncate(len);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                walk(path, a.get(i), b.get(i), out);
                path.truncate(len);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(PathChange {
            path: if path.is_empty() {
                "/".to_owned()
            } else {
                path.clone()
            },
            old: a.cloned(),
            new: b.cloned(),
        }),
    }
}

/// RFC 6901: `~` is written `~0` and `/` is written `~1` inside a key.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(path: &str, old: Option<Value>, new: Option<Value>) -> PathChange {
        PathChange {
            path: path.to_owned(),
            old,
            new,
        }
    }

    #[test]
    fn equal_documents_have_no_changes() {
        let v = json!({"a": [1, {"b": null}], "c": "x"});
        assert!(diff(&v, &v.clone()).is_empty());
    }

    #[test]
    fn changed_added_and_removed_keys_name_their_paths() {
        let old = json!({"metadata": {"labels": {"app": "web"}, "resourceVersion": "10"}, "status": {"phase": "Running"}});
        let new = json!({"metadata": {"labels": {"app": "web", "tier": "front"}, "resourceVersion": "11"}, "spec": {}});
        assert_eq!(
            diff(&old, &new),
            vec![
                change("/metadata/labels/tier", None, Some(json!("front"))),
                change(
                    "/metadata/resourceVersion",
                    Some(json!("10")),
                    Some(json!("11"))
                ),
                change("/spec", None, Some(json!({}))),
                change("/status", Some(json!({"phase": "Running"})), None),
            ]
        );
    }

    #[test]
    fn arrays_compare_by_index_and_report_growth_and_shrinking() {
        let old = json!({"c": [{"image": "nginx:1.26"}, {"image": "side"}]});
        let new = json!({"c": [{"image": "nginx:1.27"}]});
        assert_eq!(
            diff(&old, &new),
            vec![
                change(
                    "/c/0/image",
                    Some(json!("nginx:1.26")),
                    Some(json!("nginx:1.27"))
                ),
                change("/c/1", Some(json!({"image": "side"})), None),
            ]
        );
        assert_eq!(
            diff(&json!([1]), &json!([1, 2])),
            vec![change("/1", None, Some(json!(2)))]
        );
    }

    #[test]
    fn a_type_change_is_one_change_at_that_path() {
        assert_eq!(
            diff(&json!({"a": {"b": 1}}), &json!({"a": [1]})),
            vec![change("/a", Some(json!({"b": 1})), Some(json!([1])))]
        );
        assert_eq!(
            diff(&json!(1), &json!("1")),
            vec![change("/", Some(json!(1)), Some(json!("1")))]
        );
    }

    #[test]
    fn keys_with_slashes_and_tildes_are_escaped() {
        let old = json!({"metadata": {"annotations": {"krateo.io/x~y": "1"}}});
        let new = json!({"metadata": {"annotations": {"krateo.io/x~y": "2"}}});
        assert_eq!(
            diff(&old, &new)[0].path,
            "/metadata/annotations/krateo.io~1x~0y"
        );
    }

    #[test]
    fn null_differs_from_absent() {
        assert_eq!(
            diff(&json!({"a": null}), &json!({})),
            vec![change("/a", Some(Value::Null), None)]
        );
    }
}
