//! List bodies, concatenated from the stored bytes of their items.

use super::json_bytes;
use crate::resources::ResourceDef;
use crate::store::Obj;
use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use hyper::{header, Response};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// One item of a list: with apiVersion and kind, or (`typed`) without, as the real server.
fn render_item(out: &mut Vec<u8>, o: &Obj, api_version: &str, typed: bool) {
    if typed {
        out.extend_from_slice(&o.body);
    } else {
        o.render_into(out, Some(api_version));
    }
}

/// A list body built by concatenating the stored bytes: no JSON is parsed or re-encoded. Big
/// lists are streamed in ~1 MiB chunks rendered as the client reads, so serving 100,000 objects
/// never materialises one huge buffer.
pub(super) fn list_response(
    def: &ResourceDef,
    items: &[Arc<Obj>],
    rv: u64,
    cont: Option<(&str, Option<u64>)>,
    stall: Duration,
) -> Response<Body> {
    let av = def.api_version();
    // the items of a built-in kind's list come without apiVersion and kind (a typed Go list
    // leaves them out); a custom resource list's items (unstructured) carry them
    let typed = def.crd.is_none();
    let mut head = list_head(def, &av, rv, cont);
    const CHUNK_BYTES: usize = 1 << 20;
    let total: usize = items.iter().map(|o| o.body.len() + 64).sum();
    if total < CHUNK_BYTES && stall.is_zero() {
        for (i, o) in items.iter().enumerate() {
            if i > 0 {
                head.push(b',');
            }
            render_item(&mut head, o, &av, typed);
        }
        head.extend_from_slice(b"]}");
        return json_bytes(200, head);
    }
    let items_len = items.len();
    let items: Arc<[Arc<Obj>]> = items.into();
    // Items [from, to) in ~1 MiB chunks; a comma before every item but the list's first.
    let chunks = move |from: usize, to: usize| {
        let (items, av) = (items.clone(), av.clone());
        futures::stream::unfold(from, move |i| {
            let items = items.clone();
            let av = av.clone();
            async move {
                if i >= to {
                    return None;
                }
                let mut out = Vec::with_capacity(CHUNK_BYTES + 16 * 1024);
                let mut j = i;
                while j < to && out.len() < CHUNK_BYTES {
                    if j > 0 {
                        out.push(b',');
                    }
                    render_item(&mut out, &items[j], &av, typed);
                    j += 1;
                }
                Some((Ok::<_, std::io::Error>(Bytes::from(out)), j))
            }
        })
    };
    let (len, half) = (items_len, items_len / 2);
    let pause = futures::stream::once(tokio::time::sleep(stall))
        .filter_map(|()| async { None::<Result<Bytes, std::io::Error>> });
    let body = futures::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(chunks(0, half))
        .chain(pause)
        .chain(chunks(half, len))
        .chain(futures::stream::once(async {
            Ok(Bytes::from_static(b"]}"))
        }));
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap_or_default()
}

/// The list's JSON up to its first item: kind, apiVersion and metadata (revision, continue).
fn list_head(def: &ResourceDef, av: &str, rv: u64, cont: Option<(&str, Option<u64>)>) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"{\"apiVersion\":");
    head.extend_from_slice(Value::from(av).to_string().as_bytes());
    head.extend_from_slice(b",\"kind\":");
    head.extend_from_slice(
        Value::from(format!("{}List", def.kind))
            .to_string()
            .as_bytes(),
    );
    head.extend_from_slice(format!(",\"metadata\":{{\"resourceVersion\":\"{rv}\"").as_bytes());
    if let Some((c, remaining)) = cont {
        head.extend_from_slice(b",\"continue\":");
        head.extend_from_slice(Value::from(c).to_string().as_bytes());
        if let Some(n) = remaining {
            head.extend_from_slice(format!(",\"remainingItemCount\":{n}").as_bytes());
        }
    } else if def.crd.is_some() {
        // the real server's lists of custom resources (unstructured) always carry it
        head.extend_from_slice(b",\"continue\":\"\"");
    }
    head.extend_from_slice(b"},\"items\":[");
    head
}
