//! Response compression as a real API server does it (APIResponseCompression): a LIST or GET
//! larger than 128 KiB is gzipped when the client sends `Accept-Encoding: gzip`; smaller
//! answers, clients that do not ask, and watch streams get plain bytes.

mod common;

use std::io::Read;

use common::*;
use serde_json::{json, Value};

async fn get(sim: &kube_sim::KubeSim, path: &str, accept: Option<&str>) -> reqwest::Response {
    let mut req = http().get(format!("{}{path}", sim.base_url()));
    if let Some(a) = accept {
        req = req.header("accept-encoding", a);
    }
    req.send().await.expect("request")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

#[tokio::test]
async fn large_lists_are_gzipped_when_asked() {
    let sim = start().await;
    let store = sim.store();
    let text = "the application configuration, enabled=true, replicas=3; ".repeat(40);
    for i in 0..100 {
        store
            .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm{i}"), "namespace": "default"},
                "data": {"text": text}}))
            .expect("create");
    }
    let path = "/api/v1/namespaces/default/configmaps";

    let plain = get(&sim, path, None).await;
    assert_eq!(plain.headers().get("content-encoding"), None);
    let plain = plain.bytes().await.expect("body");
    assert!(plain.len() > 128 * 1024, "{} bytes", plain.len());

    let zipped = get(&sim, path, Some("gzip")).await;
    assert_eq!(zipped.status(), 200);
    assert_eq!(
        zipped
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("gzip")
    );
    assert!(zipped
        .headers()
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap_or_default().contains("Accept-Encoding")));
    let zipped = zipped.bytes().await.expect("body");
    assert!(
        zipped.len() * 4 < plain.len(),
        "{} of {}",
        zipped.len(),
        plain.len()
    );
    let decoded: Value = serde_json::from_slice(&gunzip(&zipped)).expect("JSON");
    let original: Value = serde_json::from_slice(&plain).expect("JSON");
    assert_eq!(decoded["items"], original["items"]);

    // `gzip;q=0` refuses gzip.
    let refused = get(&sim, path, Some("gzip;q=0")).await;
    assert_eq!(refused.headers().get("content-encoding"), None);

    // Below the threshold: plain, even when asked.
    let small = get(
        &sim,
        "/api/v1/namespaces/default/configmaps?limit=2",
        Some("gzip"),
    )
    .await;
    assert_eq!(small.headers().get("content-encoding"), None);
    let small: Value = small.json().await.expect("JSON");
    assert_eq!(small["items"].as_array().map(Vec::len), Some(2));

    // A watch stream is never gzipped.
    let watch = get(
        &sim,
        &format!("{path}?watch=true&resourceVersion=0&timeoutSeconds=1"),
        Some("gzip"),
    )
    .await;
    assert_eq!(watch.status(), 200);
    assert_eq!(watch.headers().get("content-encoding"), None);
    let events = watch.bytes().await.expect("body");
    let first = events.split(|b| *b == b'\n').next().unwrap_or_default();
    let event: Value = serde_json::from_slice(first).expect("a plain JSON event");
    assert_eq!(event["type"], "ADDED");
}
