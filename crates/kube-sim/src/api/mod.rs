//! HTTP routing and handlers: discovery, the resource verbs, authentication, fault injection.
//!
//! Here: authentication, injected delays and failures, discovery and the routing. The rest:
//! - `resource`: a resource path's target, its authorization, one handler per verb;
//! - `scale`: the `/scale` subresource;
//! - `list_body`: list bodies built from the stored bytes (streamed when big);
//! - `body`: request bodies; `sim`: the `/_sim` endpoints.

mod body;
mod list_body;
mod resource;
mod scale;
mod sim;

use crate::error::ApiError;
use crate::store::{Obj, Store};
use axum::body::Body;
use bytes::Bytes;
use hyper::{header, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
            return sim::sim(&state, req, &method, &rest, &query).await;
        }
        ["healthz"] | ["livez"] | ["readyz"] => return json_bytes(200, "ok"),
        _ => {}
    }
    if !authenticated(&state, &req) {
        return error(&ApiError::unauthorized());
    }
    let delay = state.store.delay(&path);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if state.store.take_failure() {
        return error(&ApiError::internal("kube-sim: injected failure"));
    }
    serve_api(&state, req, &segs, &query).await
}

/// Without a token (plain HTTP) every request is; with one, a request with a client
/// certificate or the bearer token.
fn authenticated(state: &AppState, req: &Request<Body>) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
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
    cert || bearer
}

/// The API proper: discovery, OpenAPI, access reviews and the resources.
async fn serve_api(
    state: &Arc<AppState>,
    req: Request<Body>,
    segs: &[&str],
    query: &HashMap<String, String>,
) -> Response<Body> {
    let registry = state.store.registry();
    let get = req.method() == Method::GET;
    let found = |v: Option<Value>| match v {
        Some(v) => json_value(200, &v),
        None => error(&ApiError::no_resource()),
    };
    match segs {
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
            match access_review(state, req).await {
                Ok(v) => json_value(201, &v),
                Err(e) => error(&e),
            }
        }
        ["apis", g] if get => found(registry.api_group(g)),
        ["apis", g, v] if get => found(registry.api_resource_list(g, v)),
        ["openapi", "v3"] if get => json_value(200, &crate::openapi::root(&registry)),
        ["openapi", "v3", "api", v] if get => found(crate::openapi::gv_doc(&registry, "", v)),
        ["openapi", "v3", "apis", g, v] if get => found(crate::openapi::gv_doc(&registry, g, v)),
        ["api", "v1", rest @ ..] => resource::resource(state, req, "", "v1", rest, query).await,
        ["apis", g, v, rest @ ..] => {
            let (g, v) = (g.to_string(), v.to_string());
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            resource::resource(state, req, &g, &v, &rest, query).await
        }
        _ => error(&ApiError::no_resource()),
    }
}

/// `POST .../selfsubjectaccessreviews`: the review, answered from the deny list.
async fn access_review(state: &AppState, req: Request<Body>) -> Result<Value, ApiError> {
    let (h, body) = body::read_body(req).await?;
    let v = body::decode_body(&body::content_type(&h), &body)?;
    crate::authz::review(v, &state.store.denies())
}
