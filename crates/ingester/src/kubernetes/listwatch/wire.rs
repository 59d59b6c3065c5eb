//! The API server's answers decoded straight into `RawObject`s, never through a tree: an
//! object event's line is parsed once (its object is the rest of the line), any other line
//! and a list page's items are found as borrowed slices of the text (`RawValue`), and each
//! object's text is copied out as it came. kube's typed `Api::watch` and `Api::list`
//! decode through serde's generic paths instead: an event's object was parsed and written
//! again as text (a transcode), a list page's items were first buffered as a tree (its
//! flattened field). That was half of the ingester's CPU in an initial sync
//! (docs/benchmarks.md, "CPU per object"). Requests, errors and their classes stay kube's.

use std::borrow::Cow;
use std::io::ErrorKind;

use futures::{AsyncBufReadExt, StreamExt};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::core::{ListMeta, ObjectList, Request, Status, TypeMeta};
use kube::Client;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ObjectStream;
use crate::row::object::RawObject;

/// One page of a list (`limit`/`continue`), or a whole list.
pub(super) async fn list(
    client: &Client,
    api: &Api<RawObject>,
    params: &ListParams,
) -> Result<ObjectList<RawObject>, kube::Error> {
    let mut req = Request::new(api.resource_url())
        .list(params)
        .map_err(kube::Error::BuildRequest)?;
    req.extensions_mut().insert("list");
    let text = client.request_text(req).await?;
    decode_list(&text).map_err(kube::Error::SerdeError)
}

/// A watch (or a streaming list) from `from`, as a stream of events.
pub(super) async fn watch(
    client: &Client,
    api: &Api<RawObject>,
    params: &WatchParams,
    from: &str,
) -> Result<ObjectStream, kube::Error> {
    let mut req = Request::new(api.resource_url())
        .watch(params, from)
        .map_err(kube::Error::BuildRequest)?;
    req.extensions_mut().insert("watch");
    // A watch stream is never compressed (as kube does: a multi-member gzip stream is not
    // decoded whole by its decompression layer).
    req.headers_mut()
        .entry(http::header::ACCEPT_ENCODING)
        .or_insert(http::HeaderValue::from_static("identity"));
    let body = client.request_stream(req).await?;
    let lines = Box::pin(body).lines();
    Ok(lines
        .filter_map(|line| async move {
            match line {
                Ok(line) => decode_event(&line),
                Err(e) => read_error(e),
            }
        })
        .boxed())
}

/// A failed read of the watch body: a timeout or a connection closed mid-chunk ends the
/// stream (the loop re-watches from where it was, as after a server's timeout); anything
/// else is an error. `request_stream` wraps the body's error, so the kind is looked up
/// along its causes.
fn read_error(e: std::io::Error) -> Option<Result<WatchEvent<RawObject>, kube::Error>> {
    let ends = |kind: ErrorKind| matches!(kind, ErrorKind::UnexpectedEof | ErrorKind::TimedOut);
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    for _ in 0..16 {
        let Some(c) = cause else { break };
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| ends(io.kind()))
            || c.to_string().contains("unexpected EOF during chunk")
        {
            return None;
        }
        cause = c.source();
    }
    Some(Err(kube::Error::ReadEvents(e)))
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    object: &'a RawValue,
}

/// One line of a watch: an event, nothing (an empty or cut-off last line), or why not.
pub(super) fn decode_event(line: &str) -> Option<Result<WatchEvent<RawObject>, kube::Error>> {
    if let Some(event) = decode_object_event(line) {
        return Some(Ok(event));
    }
    let event = match serde_json::from_str::<WireEvent<'_>>(line) {
        Ok(event) => event,
        Err(e) if e.is_eof() => return None,
        // A line that is a `Status` of its own (not an ERROR event) is the server's answer.
        Err(e) => {
            return Some(Err(match serde_json::from_str::<Status>(line) {
                Ok(status) => kube::Error::Api(status.boxed()),
                Err(_) => kube::Error::SerdeError(e),
            }))
        }
    };
    let object = || RawObject::from_json(event.object.get().to_owned());
    let decoded = match event.kind.as_ref() {
        "ADDED" => object().map(WatchEvent::Added),
        "MODIFIED" => object().map(WatchEvent::Modified),
        "DELETED" => object().map(WatchEvent::Deleted),
        "BOOKMARK" => serde_json::from_str(event.object.get()).map(WatchEvent::Bookmark),
        "ERROR" => serde_json::from_str::<Status>(event.object.get())
            .map(|status| WatchEvent::Error(status.boxed())),
        other => Err(serde::de::Error::custom(format!(
            "unknown watch event type {other:?}"
        ))),
    };
    Some(decoded.map_err(kube::Error::SerdeError))
}

/// An object event as every API server writes it (Go's encoder: `type` first, no spaces):
/// `{"type":"ADDED","object":{...}}`. The object's text is then the rest of the line but its
/// last brace, and parsing it (`RawObject::from_json`, which checks it is JSON) is the one
/// parse of the line, not two (finding where the object ends, then reading it). Any other
/// line, or one whose object does not parse, takes the general path.
fn decode_object_event(line: &str) -> Option<WatchEvent<RawObject>> {
    let (kind, rest) = line.strip_prefix(r#"{"type":""#)?.split_once('"')?;
    let event: fn(RawObject) -> WatchEvent<RawObject> = match kind {
        "ADDED" => WatchEvent::Added,
        "MODIFIED" => WatchEvent::Modified,
        "DELETED" => WatchEvent::Deleted,
        _ => return None,
    };
    let object = rest
        .strip_prefix(r#","object":"#)?
        .trim_end()
        .strip_suffix('}')?;
    // Text after the object (another member) makes it fail to parse: general path.
    RawObject::from_json(object.to_owned()).ok().map(event)
}

#[derive(Deserialize)]
struct WireList<'a> {
    #[serde(rename = "apiVersion", borrow, default)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    metadata: Option<ListMeta>,
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

/// A list page: its type and metadata, and each item as the text it came as.
pub(super) fn decode_list(text: &str) -> Result<ObjectList<RawObject>, serde_json::Error> {
    let list: WireList<'_> = serde_json::from_str(text)?;
    let items = list
        .items
        .unwrap_or_default()
        .into_iter()
        .map(|item| RawObject::from_json(item.get().to_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ObjectList {
        // as kube does for a list without them
        types: TypeMeta {
            api_version: list
                .api_version
                .map_or_else(|| "v1".into(), Cow::into_owned),
            kind: list.kind.map_or_else(|| "List".into(), Cow::into_owned),
        },
        metadata: list.metadata.unwrap_or_default(),
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> String {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"ns","uid":"u-{name}","resourceVersion":"7","labels":{{"krateo.io/composition-id":"c1"}}}},"spec":{{"x":"\"q\" é \u00e9"}},"status":{{"phase":"Running"}}}}"#
        )
    }

    #[test]
    fn an_event_keeps_the_object_text_as_it_came_in_any_member_order() {
        for line in [
            format!(r#"{{"type":"ADDED","object":{}}}"#, pod("a")),
            format!("{{\"type\":\"ADDED\",\"object\":{}}}\r\n", pod("a")),
            format!(r#"{{"object":{},"type":"ADDED"}}"#, pod("a")),
            format!(r#"{{ "type": "ADDED", "object": {} }}"#, pod("a")),
            format!(
                r#"{{"type":"ADDED","object":{},"extra":{{"x":1}}}}"#,
                pod("a")
            ),
        ] {
            let Some(Ok(WatchEvent::Added(o))) = decode_event(&line) else {
                panic!("not an ADDED event: {line}");
            };
            assert_eq!(o.json, pod("a"));
            assert_eq!(o.metadata.name.as_deref(), Some("a"));
            assert_eq!(o.resource_version(), Some("7"));
            assert_eq!(o.composition_label.as_deref(), Some("c1"));
            assert_eq!(o.kind(), Some("Pod"));
            assert_eq!(o.status_json(), Some(r#"{"phase":"Running"}"#));
        }
    }

    #[test]
    fn bookmarks_errors_and_bad_lines_are_told_apart() {
        let bookmark = r#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"12","annotations":{"k8s.io/initial-events-end":"true"}}}}"#;
        let Some(Ok(WatchEvent::Bookmark(b))) = decode_event(bookmark) else {
            panic!("not a bookmark");
        };
        assert_eq!(b.metadata.resource_version, "12");
        assert!(b
            .metadata
            .annotations
            .contains_key("k8s.io/initial-events-end"));

        let gone = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}}"#;
        let Some(Ok(WatchEvent::Error(s))) = decode_event(gone) else {
            panic!("not an ERROR event");
        };
        assert_eq!(s.code, 410);

        let status_line = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"forbidden","reason":"Forbidden","code":403}"#;
        assert!(
            matches!(decode_event(status_line), Some(Err(kube::Error::Api(s))) if s.code == 403)
        );

        assert!(decode_event("").is_none(), "an empty line is skipped");
        assert!(
            decode_event(r#"{"type":"ADDED","object":{"metadata":"#).is_none(),
            "a cut-off last line is skipped"
        );
        assert!(matches!(
            decode_event(r#"{"type":"RENAMED","object":{}}"#),
            Some(Err(kube::Error::SerdeError(_)))
        ));
        assert!(matches!(
            decode_event(r#"{"type":"ADDED","object":[1]}"#),
            Some(Err(kube::Error::SerdeError(_)))
        ));
    }

    #[test]
    fn a_list_page_keeps_each_item_text_and_the_list_metadata() {
        let text = format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"42","continue":"tok"}},"items":[{},{}]}}"#,
            pod("a"),
            pod("b")
        );
        let page = decode_list(&text).expect("page");
        assert_eq!(page.types.kind, "PodList");
        assert_eq!(page.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(page.metadata.continue_.as_deref(), Some("tok"));
        let texts: Vec<&str> = page.items.iter().map(|o| o.json.as_str()).collect();
        assert_eq!(texts, [pod("a"), pod("b")]);

        let empty =
            decode_list(r#"{"metadata":{"resourceVersion":"3"},"items":null}"#).expect("empty");
        assert!(empty.items.is_empty());
        assert_eq!(
            (empty.types.api_version.as_str(), empty.types.kind.as_str()),
            ("v1", "List")
        );
        assert!(decode_list(r#"{"items":[{"metadata":3}]}"#).is_err());
    }
}
