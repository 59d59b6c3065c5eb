//! HTTP routing and handlers: discovery, the resource verbs, authentication, fault injection.

use crate::error::ApiError;
use crate::patch;
use crate::resources::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{ListQuery, Obj, Store};
use crate::watch::{self, WatchQuery};
use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::{header, HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Largest request body accepted (a big CRD with its schema is a few hundred KiB).
const MAX_BODY: usize = 64 << 20;

pub(crate) struct AppState {
    pub store: Store,
    /// Bearer token accepted in TLS mode; `None` = no authentication (plain HTTP).
    pub token: Option<String>,
    pub bookmark_interval: Duration,
    /// Streaming lists served (the WatchList feature gate).
    pub watch_list: bool,
    pub shutdown: CancellationToken,
    pub server_address: String,
}

/// Per-connection facts the handler needs, inserted by the accept loop.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConnInfo {
    pub client_cert: bool,
}

fn json_bytes(code: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.into()))
        .unwrap_or_default()
}

fn json_value(code: u16, v: &Value) -> Response<Body> {
    json_bytes(code, v.to_string())
}

fn error(e: &ApiError) -> Response<Body> {
    json_value(e.code, &e.status())
}

fn object(code: u16, o: &Obj, api_version: &str) -> Response<Body> {
    let mut out = Vec::with_capacity(o.body.len() + 64);
    o.render_into(&mut out, Some(api_version));
    json_bytes(code, out)
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

pub(crate) async fn handle(state: Arc<AppState>, req: Request<Body>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query = parse_query(req.uri().query());
    match segs.as_slice() {
        ["_sim", rest @ ..] => return sim(&state, req.method(), rest, &query),
        ["healthz"] | ["livez"] | ["readyz"] => return json_bytes(200, "ok"),
        _ => {}
    }
    if let Some(token) = &state.token {
        let cert = req
            .extensions()
            .get::<ConnInfo>()
            .is_some_and(|c| c.client_cert);
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|t| t.trim() == token);
        if !cert && !bearer {
            return error(&ApiError::unauthorized());
        }
    }
    let delay = state.store.delay();
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if state.store.take_failure() {
        return error(&ApiError::internal("kube-sim: injected failure"));
    }
    let registry = state.store.registry();
    let get = req.method() == Method::GET;
    let found = |v: Option<Value>| match v {
        Some(v) => json_value(200, &v),
        None => error(&ApiError::no_resource()),
    };
    match segs.as_slice() {
        ["version"] if get => json_value(
            200,
            &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-kube-sim",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
                "platform": "linux/amd64", "emulationMajor": "1", "emulationMinor": "32"}),
        ),
        ["api"] if get => json_value(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs":
                [{"clientCIDR": "0.0.0.0/0", "serverAddress": state.server_address}]}),
        ),
        ["api", "v1"] if get => found(registry.api_resource_list("", "v1")),
        ["apis"] if get => json_value(200, &registry.api_group_list()),
        ["apis", g] if get => found(registry.api_group(g)),
        ["apis", g, v] if get => found(registry.api_resource_list(g, v)),
        ["openapi", "v3"] if get => json_value(200, &crate::openapi::root(&registry)),
        ["openapi", "v3", "api", v] if get => found(crate::openapi::gv_doc(&registry, "", v)),
        ["openapi", "v3", "apis", g, v] if get => found(crate::openapi::gv_doc(&registry, g, v)),
        ["api", "v1", rest @ ..] => resource(&state, req, "", "v1", rest, &query).await,
        ["apis", g, v, rest @ ..] => {
            let (g, v) = (g.to_string(), v.to_string());
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            resource(&state, req, &g, &v, &rest, &query).await
        }
        _ => error(&ApiError::no_resource()),
    }
}

fn sim(
    state: &AppState,
    method: &Method,
    rest: &[&str],
    q: &HashMap<String, String>,
) -> Response<Body> {
    let store = &state.store;
    let num = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok());
    match (method, rest) {
        (&Method::POST, ["drop-watches"]) => {
            let open = store.stats().open_watches;
            store.drop_watches();
            json_value(200, &json!({"dropped": open}))
        }
        (&Method::POST, ["compact"]) => {
            store.compact();
            json_value(
                200,
                &json!({"compactedResourceVersion": store.resource_version()}),
            )
        }
        (&Method::POST, ["fail"]) => match num("count") {
            Some(n) => {
                store.fail_next(n);
                json_value(200, &json!({"failNext": n}))
            }
            None => error(&ApiError::bad_request("fail needs ?count=N")),
        },
        (&Method::POST, ["delay"]) => match num("ms") {
            Some(ms) => {
                store.set_delay(ms);
                json_value(200, &json!({"delayMs": ms}))
            }
            None => error(&ApiError::bad_request("delay needs ?ms=N")),
        },
        (&Method::GET, ["stats"]) => json_value(
            200,
            &serde_json::to_value(store.stats()).unwrap_or_default(),
        ),
        _ => error(&ApiError::no_resource()),
    }
}

/// Parsed resource path.
struct Target {
    def: Arc<ResourceDef>,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn route(
    store: &Store,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<(Target, bool), ApiError> {
    let (legacy_watch, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let ns_sub = rest.len() == 3 && matches!(rest[2], "status" | "finalize");
    let (ns, parts) = match rest {
        ["namespaces", ns, r @ ..] if !r.is_empty() && !ns_sub => (Some(ns.to_string()), r),
        r => (None, r),
    };
    if parts.is_empty() || parts.len() > 3 {
        return Err(ApiError::no_resource());
    }
    let def = store
        .registry()
        .by_path(group, version, parts[0])
        .ok_or_else(ApiError::no_resource)?;
    if ns.is_some() && !def.namespaced {
        return Err(ApiError::no_resource());
    }
    let sub = parts.get(2).map(|s| s.to_string());
    if let Some(s) = &sub {
        if !matches!(s.as_str(), "status" | "finalize") {
            return Err(ApiError::no_resource());
        }
    }
    Ok((
        Target {
            def,
            ns,
            name: parts.get(1).map(|s| s.to_string()),
            sub,
        },
        legacy_watch,
    ))
}

async fn read_body(req: Request<Body>) -> Result<(HeaderMap, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    Ok((parts.headers, bytes))
}

fn content_type(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn decode_body(ct: &str, body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = if ct.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid YAML: {e}")))?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request was in an unknown format: {e}"
            ))
        })?
    };
    Ok(v)
}

fn selectors(q: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((labels, fields))
}

async fn resource(
    state: &Arc<AppState>,
    req: Request<Body>,
    group: &str,
    version: &str,
    rest: &[&str],
    q: &HashMap<String, String>,
) -> Response<Body> {
    match resource_inner(state, req, group, version, rest, q).await {
        Ok(r) => r,
        Err(e) => error(&e),
    }
}

async fn resource_inner(
    state: &Arc<AppState>,
    req: Request<Body>,
    group: &str,
    version: &str,
    rest: &[&str],
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let store = &state.store;
    let (t, legacy_watch) = route(store, group, version, rest)?;
    let def = t.def.clone();
    let av = def.api_version();
    let ns_key = if def.namespaced {
        t.ns.clone().unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    let status_only = t.sub.as_deref() == Some("status");
    let method = req.method().clone();
    let table = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    match (method, &t.name) {
        (Method::GET, Some(name)) if !legacy_watch && !flag(q, "watch") => {
            let o = store
                .get_in(&def, &ns_key, name)
                .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
            if table {
                return Ok(crate::table::table(&def, &[o], o_rv(store), None));
            }
            Ok(object(200, &o, &av))
        }
        (Method::GET, name) => {
            let (labels, mut fields) = selectors(q)?;
            if let Some(n) = name {
                // legacy /watch/.../name: a watch of one object
                fields
                    .0
                    .push((crate::selector::Field::Name, true, n.clone()));
            }
            if legacy_watch || flag(q, "watch") {
                if !state.watch_list && flag(q, "sendInitialEvents") {
                    return Err(ApiError::invalid(
                        "meta.k8s.io",
                        "ListOptions",
                        "",
                        "sendInitialEvents",
                        "Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                    ));
                }
                let wq = WatchQuery {
                    ns: t.ns.clone(),
                    labels,
                    fields,
                    rv: q.get("resourceVersion").cloned(),
                    rv_match: q.get("resourceVersionMatch").cloned(),
                    send_initial: q.get("sendInitialEvents").map(|v| v == "true"),
                    bookmarks: flag(q, "allowWatchBookmarks"),
                    timeout: q
                        .get("timeoutSeconds")
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs),
                };
                let rx = watch::start(
                    store,
                    def,
                    wq,
                    state.bookmark_interval,
                    state.shutdown.clone(),
                )?;
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                let body =
                    Body::from_stream(futures::StreamExt::map(stream, Ok::<_, std::io::Error>));
                return Ok(Response::builder()
                    .status(200)
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::CACHE_CONTROL, "no-cache, private")
                    .body(body)
                    .unwrap_or_default());
            }
            let lq = ListQuery {
                ns: t.ns.clone(),
                labels,
                fields,
                limit: q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(0),
                cont: q.get("continue").filter(|c| !c.is_empty()).cloned(),
                rv: q.get("resourceVersion").cloned(),
                rv_match: q.get("resourceVersionMatch").cloned(),
            };
            let r = store.list_in(&def, &lq)?;
            if table {
                return Ok(crate::table::table(&def, &r.items, r.rv, r.cont));
            }
            Ok(list_response(&def, &r.items, r.rv, r.cont.as_deref()))
        }
        (Method::POST, None) => {
            let (h, body) = read_body(req).await?;
            let v = decode_body(&content_type(&h), &body)?;
            let o = store.create_in(&def, t.ns.as_deref(), v)?;
            Ok(object(201, &o, &av))
        }
        (Method::PUT, Some(name)) => {
            let (h, body) = read_body(req).await?;
            let v = decode_body(&content_type(&h), &body)?;
            if v["metadata"]["name"].as_str().is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            let mut v = v;
            if v["metadata"]["name"].is_null() && v.is_object() {
                v["metadata"]["name"] = name.clone().into();
            }
            let o = store.update_in(&def, t.ns.as_deref(), v, status_only)?;
            Ok(object(200, &o, &av))
        }
        (Method::PATCH, Some(name)) => {
            let (h, body) = read_body(req).await?;
            let ct = content_type(&h);
            let apply = ct == "application/apply-patch+yaml";
            let p = decode_body(&ct, &body)?;
            let name2 = name.clone();
            let ns_path = ns_key.clone();
            let (o, created) = store.modify_in(&def, &ns_key, name, status_only, |cur| {
                let exists = cur.is_some();
                let mut cur = match (cur, apply) {
                    (Some(c), _) => c,
                    (None, true) => json!({"metadata": {"name": name2}}),
                    (None, false) => {
                        return Err(ApiError::not_found(&def.group, &def.plural, &name2))
                    }
                };
                match ct.as_str() {
                    "application/merge-patch+json" => patch::merge_patch(&mut cur, &p),
                    "application/strategic-merge-patch+json" | "application/apply-patch+yaml" => {
                        patch::strategic_merge(&mut cur, &p)
                    }
                    "application/json-patch+json" => patch::json_patch(&mut cur, &p)?,
                    other => {
                        return Err(ApiError::new(
                            415,
                            "UnsupportedMediaType",
                            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other})"),
                        ))
                    }
                }
                if !exists && def.namespaced {
                    cur["metadata"]["namespace"] = ns_path.clone().into();
                }
                if cur["metadata"]["name"].as_str() != Some(name2.as_str()) {
                    return Err(ApiError::bad_request("a patch cannot change the name"));
                }
                Ok(cur)
            })?;
            Ok(object(if created { 201 } else { 200 }, &o, &av))
        }
        (Method::DELETE, Some(name)) => {
            let o = store.delete_in(&def, &ns_key, name)?;
            Ok(object(200, &o, &av))
        }
        (Method::DELETE, None) => {
            let (labels, fields) = selectors(q)?;
            let lq = ListQuery {
                ns: t.ns.clone(),
                labels,
                fields,
                ..Default::default()
            };
            let r = store.list_in(&def, &lq)?;
            let mut deleted = Vec::new();
            for o in r.items {
                if let Ok(d) = store.delete_in(&def, &o.ns, &o.name) {
                    deleted.push(d);
                }
            }
            Ok(list_response(
                &def,
                &deleted,
                store.resource_version(),
                None,
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn o_rv(store: &Store) -> u64 {
    store.resource_version()
}

/// A list body built by concatenating the stored bytes: no JSON is parsed or re-encoded. Big
/// lists are streamed in ~1 MiB chunks rendered as the client reads, so serving 100,000 objects
/// never materialises one huge buffer.
pub(crate) fn list_response(
    def: &ResourceDef,
    items: &[Arc<Obj>],
    rv: u64,
    cont: Option<&str>,
) -> Response<Body> {
    let av = def.api_version();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"{\"apiVersion\":");
    head.extend_from_slice(Value::from(av.as_str()).to_string().as_bytes());
    head.extend_from_slice(b",\"kind\":");
    head.extend_from_slice(
        Value::from(format!("{}List", def.kind))
            .to_string()
            .as_bytes(),
    );
    head.extend_from_slice(format!(",\"metadata\":{{\"resourceVersion\":\"{rv}\"").as_bytes());
    if let Some(c) = cont {
        head.extend_from_slice(b",\"continue\":");
        head.extend_from_slice(Value::from(c).to_string().as_bytes());
    }
    head.extend_from_slice(b"},\"items\":[");
    const CHUNK_BYTES: usize = 1 << 20;
    let total: usize = items.iter().map(|o| o.body.len() + 64).sum();
    if total < CHUNK_BYTES {
        for (i, o) in items.iter().enumerate() {
            if i > 0 {
                head.push(b',');
            }
            o.render_into(&mut head, Some(&av));
        }
        head.extend_from_slice(b"]}");
        return json_bytes(200, head);
    }
    let items: Arc<[Arc<Obj>]> = items.into();
    let chunks = futures::stream::unfold(0usize, move |i| {
        let items = items.clone();
        let av = av.clone();
        async move {
            if i >= items.len() {
                return None;
            }
            let mut out = Vec::with_capacity(CHUNK_BYTES + 16 * 1024);
            let mut j = i;
            while j < items.len() && out.len() < CHUNK_BYTES {
                if j > 0 {
                    out.push(b',');
                }
                items[j].render_into(&mut out, Some(&av));
                j += 1;
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(out)), j))
        }
    });
    let body = futures::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(chunks)
        .chain(futures::stream::once(async {
            Ok(Bytes::from_static(b"]}"))
        }));
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap_or_default()
}
