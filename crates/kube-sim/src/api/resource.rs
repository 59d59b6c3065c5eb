//! Resource requests: the path's resource, authorization, then one handler per verb.

use super::body::{content_type, decode_body, read_body};
use super::list_body::list_response;
use super::scale::scale;
use super::{error, flag, object, AppState};
use crate::error::ApiError;
use crate::patch;
use crate::resources::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{is_too_large, ListQuery, ListResult, Store};
use crate::watch::{self, WatchQuery};
use axum::body::Body;
use hyper::{header, Method, Request, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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

/// Parsed resource path.
struct Target {
    def: Arc<ResourceDef>,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl Target {
    /// The namespace part of the stored key: the path's ("default" when it names none) for a
    /// namespaced resource, "" for a cluster-scoped one.
    fn ns_key(&self) -> String {
        if self.def.namespaced {
            self.ns.clone().unwrap_or_else(|| "default".into())
        } else {
            String::new()
        }
    }

    /// A write of the `/status` subresource.
    fn status_only(&self) -> bool {
        self.sub.as_deref() == Some("status")
    }
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

fn selectors(q: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((labels, fields))
}

pub(super) async fn resource(
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
    let watching = legacy_watch || flag(q, "watch");
    let verb = request_verb(req.method(), t.name.is_some() && !legacy_watch, watching);
    authorize(store, &t, verb)?;
    let table = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    if let (Some("scale"), Some(name)) = (t.sub.as_deref(), &t.name) {
        return scale(store, &t.def, &t.ns_key(), name, req).await;
    }
    let method = req.method().clone();
    match (method, &t.name) {
        (Method::GET, name) if watching => watch_resource(state, &t, name.as_deref(), q),
        (Method::GET, Some(name)) => get(store, &t, name, table),
        (Method::GET, None) => list(store, &t, q, table).await,
        (Method::POST, None) => create(store, &t, req).await,
        (Method::PUT, Some(name)) => update(store, &t, name, req).await,
        (Method::PATCH, Some(name)) => patch(store, &t, name, req).await,
        (Method::DELETE, Some(name)) => {
            let o = store.delete_in(&t.def, &t.ns_key(), name)?;
            Ok(object(200, &o, &t.def.api_version()))
        }
        (Method::DELETE, None) => delete_collection(store, &t, q),
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// 403 Forbidden when the deny list refuses `verb` on the target.
fn authorize(store: &Store, t: &Target, verb: &str) -> Result<(), ApiError> {
    let attributes = crate::authz::Attributes {
        verb,
        group: &t.def.group,
        resource: &t.def.plural,
        namespace: t.ns.as_deref(),
    };
    if crate::authz::denied_by(&store.denies(), &attributes).is_some() {
        return Err(crate::authz::forbidden(&attributes));
    }
    Ok(())
}

/// `GET` of one object (as a Table when asked).
fn get(store: &Store, t: &Target, name: &str, table: bool) -> Result<Response<Body>, ApiError> {
    let def = &t.def;
    let o = store
        .get_in(def, &t.ns_key(), name)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    if table {
        return Ok(crate::table::table(
            def,
            &[o],
            store.resource_version(),
            None,
        ));
    }
    Ok(object(200, &o, &def.api_version()))
}

/// A watch (`?watch=true`, or the legacy `/watch/...` path), also a streaming list
/// (`sendInitialEvents`): events streamed as the store changes.
fn watch_resource(
    state: &AppState,
    t: &Target,
    name: Option<&str>,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let store = &state.store;
    let (labels, mut fields) = selectors(q)?;
    if let Some(n) = name {
        // legacy /watch/.../name: a watch of one object
        fields
            .0
            .push((crate::selector::Field::Name, true, n.to_string()));
    }
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
    tracing::debug!(resource = %t.def.plural, replica = replica.index, lag = replica.lag, "watch");
    let rx = watch::start(
        store,
        t.def.clone(),
        wq,
        replica,
        state.bookmarks,
        state.shutdown.clone(),
    )?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = Body::from_stream(futures::StreamExt::map(stream, Ok::<_, std::io::Error>));
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .unwrap_or_default())
}

/// A list: whole or paged, at the revision the query asks of the serving replica.
async fn list(
    store: &Store,
    t: &Target,
    q: &HashMap<String, String>,
    table: bool,
) -> Result<Response<Body>, ApiError> {
    let def = &t.def;
    let (labels, fields) = selectors(q)?;
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
    let r = list_when_fresh(store, def, &lq, faults.freshness_wait).await?;
    if table {
        return Ok(crate::table::table(def, &r.items, r.rv, r.cont));
    }
    let body_stall = if lq.limit == 0 { stall } else { Duration::ZERO };
    Ok(list_response(
        def,
        &r.items,
        r.rv,
        r.cont.as_deref().map(|c| (c, r.remaining)),
        body_stall,
    ))
}

/// `POST`: a new object.
async fn create(store: &Store, t: &Target, req: Request<Body>) -> Result<Response<Body>, ApiError> {
    let (h, body) = read_body(req).await?;
    let v = decode_body(&content_type(&h), &body)?;
    let o = store.create_in(&t.def, t.ns.as_deref(), v)?;
    Ok(object(201, &o, &t.def.api_version()))
}

/// `PUT`: a replacement of the object (or of its status).
async fn update(
    store: &Store,
    t: &Target,
    name: &str,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let (h, body) = read_body(req).await?;
    let v = decode_body(&content_type(&h), &body)?;
    if v["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let mut v = v;
    if v["metadata"]["name"].is_null() && v.is_object() {
        v["metadata"]["name"] = name.into();
    }
    let o = store.update_in(&t.def, t.ns.as_deref(), v, t.status_only())?;
    Ok(object(200, &o, &t.def.api_version()))
}

/// `PATCH`: a patch of the object (or of its status); a server-side apply of an absent object
/// creates it.
async fn patch(
    store: &Store,
    t: &Target,
    name: &str,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let def = &t.def;
    let (h, body) = read_body(req).await?;
    let ct = content_type(&h);
    let apply = ct == "application/apply-patch+yaml";
    let p = decode_body(&ct, &body)?;
    let ns_path = t.ns_key();
    let (o, created) = store.modify_in(def, &ns_path, name, t.status_only(), |cur| {
        let exists = cur.is_some();
        let mut cur = match (cur, apply) {
            (Some(c), _) => c,
            (None, true) => json!({"metadata": {"name": name}}),
            (None, false) => return Err(ApiError::not_found(&def.group, &def.plural, name)),
        };
        apply_patch(&ct, &mut cur, &p)?;
        if !exists && def.namespaced {
            cur["metadata"]["namespace"] = ns_path.clone().into();
        }
        if cur["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request("a patch cannot change the name"));
        }
        Ok(cur)
    })?;
    Ok(object(
        if created { 201 } else { 200 },
        &o,
        &def.api_version(),
    ))
}

/// `DELETE` of a collection: every object the selectors match, answered with the deleted ones.
fn delete_collection(
    store: &Store,
    t: &Target,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(q)?;
    let lq = ListQuery {
        ns: t.ns.clone(),
        labels,
        fields,
        ..Default::default()
    };
    let r = store.list_in(&t.def, &lq)?;
    let mut deleted = Vec::new();
    for o in r.items {
        if let Ok(d) = store.delete_in(&t.def, &o.ns, &o.name) {
            deleted.push(d);
        }
    }
    Ok(list_response(
        &t.def,
        &deleted,
        store.resource_version(),
        None,
        Duration::ZERO,
    ))
}

/// A patch of any of the patch media types, applied to `cur`.
pub(super) fn apply_patch(ct: &str, cur: &mut Value, p: &Value) -> Result<(), ApiError> {
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
