//! `/_sim/...`: the fault switches, compaction, dropped watches, the deny list and the stats,
//! over HTTP.

use super::body::read_body;
use super::{error, json_value, AppState};
use crate::error::ApiError;
use crate::faults::{FaultSet, ReplicaPick};
use crate::store::Store;
use axum::body::Body;
use hyper::{Method, Request, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

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

pub(super) async fn sim(
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
    Ok(match (method, rest) {
        (&Method::POST, [endpoint]) => return sim_post(store, endpoint, q),
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

/// `POST /_sim/<endpoint>`: an action, or a switch set from the query (answered with every
/// fault switch as it is then).
fn sim_post(store: &Store, endpoint: &str, q: &HashMap<String, String>) -> Result<Value, ApiError> {
    let ms = |name: &str| sim_param::<u64>(q, "ms", name).map(Duration::from_millis);
    Ok(match endpoint {
        "drop-watches" => {
            let open = store.stats().open_watches;
            store.drop_watches();
            json!({"dropped": open})
        }
        "compact" => {
            store.compact();
            json!({"compactedResourceVersion": store.resource_version()})
        }
        "fail" => {
            let n = sim_param(q, "count", "fail")?;
            store.fail_next(n);
            json!({"failNext": n})
        }
        "delay" => {
            let n = sim_param(q, "ms", "delay")?;
            store.set_delay(n);
            json!({"delayMs": n})
        }
        "deny" => add_deny(store, q)?,
        switch => {
            match switch {
                "watch-cache-lag" => {
                    store.set_watch_cache_lag(sim_param(q, "events", "watch-cache-lag")?)
                }
                "replicas" => {
                    let (lags, pick) = replicas_from_query(q)?;
                    store.set_replicas(&lags, pick);
                }
                "freshness-wait" => store.set_freshness_wait(ms("freshness-wait")?),
                "watch-replay" => store.set_watch_replay(sim_param(q, "events", "watch-replay")?),
                "bookmark-delay" => store.set_bookmark_delay(ms("bookmark-delay")?),
                "list-stall" => store.set_list_stall(ms("list-stall")?),
                "watches-end-at-once" => {
                    store.set_watches_end_at_once(sim_param(q, "on", "watches-end-at-once")?)
                }
                "stuck-watches" => store.set_stuck_watches(sim_param(q, "on", "stuck-watches")?),
                _ => return Err(ApiError::no_resource()),
            }
            faults_json(store)
        }
    })
}

/// `POST /_sim/deny?verb=&resource=[&group=][&namespace=]`: one more request refused.
fn add_deny(store: &Store, q: &HashMap<String, String>) -> Result<Value, ApiError> {
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
    Ok(json!({"denies": store.denies()}))
}

fn faults_json(store: &Store) -> Value {
    serde_json::to_value(store.faults()).unwrap_or_default()
}
