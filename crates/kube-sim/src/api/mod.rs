//! HTTP routing and handlers: discovery, the resource verbs, authentication, fault injection.

use crate::error::ApiError;
use crate::faults::{FaultSet, ReplicaPick};
use crate::patch;
use crate::resources::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{is_too_large, ListQuery, ListResult, Obj, Store};
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
    pub bookmarks: crate::BookmarkTiming,
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
        ["_sim", rest @ ..] => {
            let method = req.method().clone();
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            return sim(&state, req, &method, &rest, &query).await;
        }
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
    let delay = state.store.delay(&path);
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
        ["apis"] if get => {
            let mut list = registry.api_group_list();
            if let Some(groups) = list["groups"].as_array_mut() {
                groups.push(crate::authz::api_group());
            }
            json_value(200, &list)
        }
        ["apis", crate::authz::GROUP] if get => json_value(200, &crate::authz::api_group()),
        ["apis", crate::authz::GROUP, "v1"] if get => {
            json_value(200, &crate::authz::api_resource_list())
        }
        ["apis", crate::authz::GROUP, "v1", "selfsubjectaccessreviews"]
            if req.method() == Method::POST =>
        {
            match access_review(&state, req).await {
                Ok(v) => json_value(201, &v),
                Err(e) => error(&e),
            }
        }
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

/// `POST .../selfsubjectaccessreviews`: the review, answered from the deny list.
async fn access_review(state: &AppState, req: Request<Body>) -> Result<Value, ApiError> {
    let (h, body) = read_body(req).await?;
    let v = decode_body(&content_type(&h), &body)?;
    crate::authz::review(v, &state.store.denies())
}

/// The verb of a resource request, as authorization names it.
fn request_verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method, named) {
        (_, _) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

/// Reads a `/_sim` query parameter; Err(400) names the parameter when it is missing or wrong.
fn sim_param<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    key: &str,
    endpoint: &str,
) -> Result<T, ApiError> {
    q.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::bad_request(format!("{endpoint} needs ?{key}=")))
}

fn replicas_from_query(q: &HashMap<String, String>) -> Result<(Vec<u64>, ReplicaPick), ApiError> {
    let lags = q
        .get("lags")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::bad_request("replicas needs ?lags=N,N,... (events behind)"))?;
    let pick = match q.get("pick").map(String::as_str) {
        None | Some("round-robin") => ReplicaPick::RoundRobin,
        Some("random") => ReplicaPick::Random {
            seed: sim_param(q, "seed", "random replica choice")?,
        },
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "pick is round-robin or random, not {other}"
            )))
        }
    };
    Ok((lags, pick))
}

async fn sim(
    state: &AppState,
    req: Request<Body>,
    method: &Method,
    rest: &[&str],
    q: &HashMap<String, String>,
) -> Response<Body> {
    match sim_inner(state, req, method, rest, q).await {
        Ok(v) => json_value(200, &v),
        Err(e) => error(&e),
    }
}

async fn sim_inner(
    state: &AppState,
    req: Request<Body>,
    method: &Method,
    rest: &[&str],
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let store = &state.store;
    let ms = |endpoint: &str| sim_param::<u64>(q, "ms", endpoint).map(Duration::from_millis);
    Ok(match (method, rest) {
        (&Method::POST, ["drop-watches"]) => {
            let open = store.stats().open_watches;
            store.drop_watches();
            json!({"dropped": open})
        }
        (&Method::POST, ["compact"]) => {
            store.compact();
            json!({"compactedResourceVersion": store.resource_version()})
        }
        (&Method::POST, ["fail"]) => {
            let n = sim_param(q, "count", "fail")?;
            store.fail_next(n);
            json!({"failNext": n})
        }
        (&Method::POST, ["delay"]) => {
            let n = sim_param(q, "ms", "delay")?;
            store.set_delay(n);
            json!({"delayMs": n})
        }
        (&Method::POST, ["watch-cache-lag"]) => {
            store.set_watch_cache_lag(sim_param(q, "events", "watch-cache-lag")?);
            faults_json(store)
        }
        (&Method::POST, ["replicas"]) => {
            let (lags, pick) = replicas_from_query(q)?;
            store.set_replicas(&lags, pick);
            faults_json(store)
        }
        (&Method::POST, ["freshness-wait"]) => {
            store.set_freshness_wait(ms("freshness-wait")?);
            faults_json(store)
        }
        (&Method::POST, ["watch-replay"]) => {
            store.set_watch_replay(sim_param(q, "events", "watch-replay")?);
            faults_json(store)
        }
        (&Method::POST, ["bookmark-delay"]) => {
            store.set_bookmark_delay(ms("bookmark-delay")?);
            faults_json(store)
        }
        (&Method::POST, ["list-stall"]) => {
            store.set_list_stall(ms("list-stall")?);
            faults_json(store)
        }
        (&Method::POST, ["watches-end-at-once"]) => {
            store.set_watches_end_at_once(sim_param(q, "on", "watches-end-at-once")?);
            faults_json(store)
        }
        (&Method::POST, ["stuck-watches"]) => {
            store.set_stuck_watches(sim_param(q, "on", "stuck-watches")?);
            faults_json(store)
        }
        (&Method::POST, ["deny"]) => {
            let param = |k: &str| {
                q.get(k)
                    .cloned()
                    .ok_or_else(|| ApiError::bad_request(format!("deny needs ?{k}= (* for all)")))
            };
            store.deny(crate::authz::DenyRule {
                verb: param("verb")?,
                group: q.get("group").cloned().unwrap_or_default(),
                resource: param("resource")?,
                namespace: q.get("namespace").filter(|n| !n.is_empty()).cloned(),
            });
            json!({"denies": store.denies()})
        }
        (&Method::GET, ["deny"]) => json!({"denies": store.denies()}),
        (&Method::DELETE, ["deny"]) => {
            store.clear_denies();
            json!({"denies": store.denies()})
        }
        (&Method::GET, ["faults"]) => faults_json(store),
        (&Method::PUT, ["faults"]) => {
            let (_, body) = read_body(req).await?;
            let set: FaultSet = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("a FaultSet JSON object: {e}")))?;
            store.set_faults(&set);
            faults_json(store)
        }
        (&Method::DELETE, ["faults"]) => {
            store.clear_faults();
            faults_json(store)
        }
        (&Method::GET, ["stats"]) => serde_json::to_value(store.stats()).unwrap_or_default(),
        _ => return Err(ApiError::no_resource()),
    })
}

fn faults_json(store: &Store) -> Value {
    serde_json::to_value(store.faults()).unwrap_or_default()
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
        let served = match s.as_str() {
            "status" | "finalize" => true,
            "scale" => def.has_scale(),
            _ => false,
        };
        if !served {
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
    let v: Value = if ct == crate::protobuf::MEDIA_TYPE {
        crate::protobuf::decode_object(body)?
    } else if ct.contains("yaml") {
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
    let attributes = crate::authz::Attributes {
        verb: request_verb(
            &method,
            t.name.is_some() && !legacy_watch,
            legacy_watch || flag(q, "watch"),
        ),
        group: &def.group,
        resource: &def.plural,
        namespace: t.ns.as_deref(),
    };
    if crate::authz::denied_by(&store.denies(), &attributes).is_some() {
        return Err(crate::authz::forbidden(&attributes));
    }
    let table = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    if let (Some("scale"), Some(name)) = (t.sub.as_deref(), &t.name) {
        return scale(store, &def, &ns_key, name, req).await;
    }
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
                let replica = store.pick_replica();
                tracing::debug!(resource = %def.plural, replica = replica.index, lag = replica.lag, "watch");
                let rx = watch::start(
                    store,
                    def,
                    wq,
                    replica,
                    state.bookmarks,
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
            let replica = store.pick_replica();
            tracing::debug!(resource = %def.plural, replica = replica.index, lag = replica.lag, "list");
            let rv = q.get("resourceVersion").filter(|v| !v.is_empty()).cloned();
            let rv_match = q
                .get("resourceVersionMatch")
                .filter(|v| !v.is_empty())
                .cloned();
            check_list_rv(rv.as_deref(), rv_match.as_deref())?;
            let cont = q.get("continue").filter(|c| !c.is_empty()).cloned();
            // the real watch cache serves resourceVersion=0 whole: `limit` is ignored
            let whole = rv.as_deref() == Some("0") && cont.is_none();
            let lq = ListQuery {
                ns: t.ns.clone(),
                labels,
                fields,
                limit: match q.get("limit").and_then(|v| v.parse().ok()) {
                    Some(n) if !whole => n,
                    _ => 0,
                },
                cont,
                rv,
                rv_match,
                lag: replica.lag,
            };
            let faults = store.read_faults();
            // a paged list stalls between pages, a whole list half-way through its body
            let stall = faults.list_stall;
            if lq.cont.is_some() && !stall.is_zero() {
                tokio::time::sleep(stall).await;
            }
            let r = list_when_fresh(store, &def, &lq, faults.freshness_wait).await?;
            if table {
                return Ok(crate::table::table(&def, &r.items, r.rv, r.cont));
            }
            let body_stall = if lq.limit == 0 { stall } else { Duration::ZERO };
            Ok(list_response(
                &def,
                &r.items,
                r.rv,
                r.cont.as_deref().map(|c| (c, r.remaining)),
                body_stall,
            ))
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
                apply_patch(&ct, &mut cur, &p)?;
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
                Duration::ZERO,
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// A patch of any of the patch media types, applied to `cur`.
fn apply_patch(ct: &str, cur: &mut Value, p: &Value) -> Result<(), ApiError> {
    match ct {
        "application/merge-patch+json" => patch::merge_patch(cur, p),
        "application/strategic-merge-patch+json" | "application/apply-patch+yaml" => {
            patch::strategic_merge(cur, p)
        }
        "application/json-patch+json" => patch::json_patch(cur, p)?,
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other})"),
            ))
        }
    }
    Ok(())
}

/// The combinations of `resourceVersion` and `resourceVersionMatch` the real server's
/// ListOptions validation refuses (422 Invalid).
fn check_list_rv(rv: Option<&str>, rv_match: Option<&str>) -> Result<(), ApiError> {
    match (rv, rv_match) {
        (None, Some(_)) => Err(ApiError::list_options_forbidden(
            "resourceVersionMatch",
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        )),
        (Some("0"), Some("Exact")) => Err(ApiError::list_options_forbidden(
            "resourceVersionMatch",
            "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        )),
        _ => Ok(()),
    }
}

/// A list from the serving replica; one asking for a revision that replica's watch cache has
/// not reached waits for it up to `wait`, then gets 504 "Too large resource version".
async fn list_when_fresh(
    store: &Store,
    def: &ResourceDef,
    lq: &ListQuery,
    wait: Duration,
) -> Result<ListResult, ApiError> {
    let mut rv_rx = store.shared.rv_tx.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        rv_rx.borrow_and_update();
        match store.list_in(def, lq) {
            Err(e) if is_too_large(&e) && tokio::time::Instant::now() < deadline => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = rv_rx.changed() => {}
                }
            }
            r => return r,
        }
    }
}

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
async fn scale(
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

fn o_rv(store: &Store) -> u64 {
    store.resource_version()
}

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
pub(crate) fn list_response(
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
