//! Request bodies: read with a size limit, decoded by their content type.

use crate::error::ApiError;
use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{header, HeaderMap, Request};
use serde_json::Value;

/// Largest request body accepted (a big CRD with its schema is a few hundred KiB).
const MAX_BODY: usize = 64 << 20;

pub(super) async fn read_body(req: Request<Body>) -> Result<(HeaderMap, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    Ok((parts.headers, bytes))
}

pub(super) fn content_type(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

pub(super) fn decode_body(ct: &str, body: &[u8]) -> Result<Value, ApiError> {
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
