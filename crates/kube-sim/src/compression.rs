//! Response compression as a real API server does it (the `APIResponseCompression` feature,
//! on by default since Kubernetes 1.16): a LIST or GET whose client sent
//! `Accept-Encoding: gzip` and whose body is larger than 128 KiB is gzipped (level 1, the
//! API server's choice: least CPU for a ratio close to the best) with `Content-Encoding: gzip`
//! and `Vary: Accept-Encoding`. Smaller bodies and watch streams go out as they are.

use std::io::Write;

use axum::body::Body;
use axum::body::HttpBody as _;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};

/// The API server's threshold (`defaultGzipThresholdBytes`): a body must be larger.
pub const GZIP_THRESHOLD_BYTES: u64 = 128 * 1024;

/// Whether the request may get a gzipped answer: a GET that is not a watch, whose client
/// accepts gzip.
pub(crate) fn accepts_gzip<B>(req: &Request<B>) -> bool {
    if req.method() != Method::GET || is_watch(req) {
        return false;
    }
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            // `gzip;q=0` means "not gzip".
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

fn is_watch<B>(req: &Request<B>) -> bool {
    let watch_param = form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
    watch_param || req.uri().path().split('/').any(|s| s == "watch")
}

/// Gzips `resp` when its whole body is known and larger than the threshold; anything else
/// (a watch stream, a small answer, one already encoded) is returned unchanged.
pub(crate) async fn gzip_if_large(resp: Response<Body>) -> Response<Body> {
    let large = resp
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n > GZIP_THRESHOLD_BYTES);
    if !large || resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::new(1),
    );
    let gzipped = match encoder.write_all(&bytes).and_then(|()| encoder.finish()) {
        Ok(g) => g,
        // Writing into memory does not fail; if it did, the plain body is still correct.
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    Response::from_parts(parts, Body::from(gzipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str, accept: Option<&str>) -> Request<()> {
        let mut b = Request::builder().method(Method::GET).uri(uri);
        if let Some(a) = accept {
            b = b.header(header::ACCEPT_ENCODING, a);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn only_lists_and_gets_that_accept_gzip() {
        assert!(accepts_gzip(&get("/api/v1/pods", Some("gzip"))));
        assert!(accepts_gzip(&get("/api/v1/pods", Some("br, GZIP;q=0.5"))));
        assert!(!accepts_gzip(&get("/api/v1/pods", Some("gzip;q=0"))));
        assert!(!accepts_gzip(&get("/api/v1/pods", Some("identity"))));
        assert!(!accepts_gzip(&get("/api/v1/pods", None)));
        assert!(!accepts_gzip(&get("/api/v1/pods?watch=true", Some("gzip"))));
        assert!(!accepts_gzip(&get("/api/v1/watch/pods", Some("gzip"))));
    }
}
