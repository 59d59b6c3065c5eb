//! The Kubernetes client: kube-rs' default stack, plus two layers of ours on top.
//!
//! - Bytes received per watch: every response body of a collection (a list page, a watch
//!   stream) is counted into `ingester_watch_received_bytes_total` of its scope, as it
//!   arrives on the wire, so compressed responses count compressed.
//! - Response compression (`API_COMPRESSION`): asks for gzip (`Accept-Encoding: gzip`) and
//!   decodes it. A real API server gzips LIST and GET answers larger than 128 KiB
//!   (`APIResponseCompression`, on by default); watch streams, and so streaming lists, stay
//!   plain (kube-rs asks for `identity` on them). Done here rather than with kube's `gzip`
//!   feature because that one decodes beneath every other layer, where no byte count could
//!   see the compressed size.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use kube::client::ClientBuilder;
use prometheus_client::metrics::counter::Counter;
use tower::{Layer, Service};

use crate::telemetry::metrics::{watch_labels, Labels, Metrics};

/// Builds the client from `config`; `compression` asks the API server for gzip.
pub fn build(
    config: kube::Config,
    metrics: Arc<Metrics>,
    compression: bool,
) -> anyhow::Result<kube::Client> {
    let builder = ClientBuilder::try_from(config)
        .map_err(|e| anyhow::anyhow!("Kubernetes client: {e}"))?
        .with_layer(&CountBytesLayer { metrics });
    Ok(if compression {
        builder
            .with_layer(&tower_http::decompression::DecompressionLayer::new().gzip(true))
            .build()
    } else {
        builder.build()
    })
}

/// The watch labels of a request for a collection (`/api/v1/pods`,
/// `/apis/apps/v1/namespaces/ns/deployments`), `None` for anything else (discovery, one
/// named object such as the Lease).
pub fn collection_labels(path: &str) -> Option<Labels> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, plural, namespace) = match segs.as_slice() {
        ["api", v, plural] => ("", *v, *plural, None),
        ["api", v, "namespaces", ns, plural] => ("", *v, *plural, Some(*ns)),
        ["apis", g, v, plural] => (*g, *v, *plural, None),
        ["apis", g, v, "namespaces", ns, plural] => (*g, *v, *plural, Some(*ns)),
        _ => return None,
    };
    Some(watch_labels(group, version, plural, namespace))
}

#[derive(Clone)]
struct CountBytesLayer {
    metrics: Arc<Metrics>,
}

impl<S> Layer<S> for CountBytesLayer {
    type Service = CountBytes<S>;
    fn layer(&self, inner: S) -> CountBytes<S> {
        CountBytes {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CountBytes<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CountBytes<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let counter = (req.method() == http::Method::GET)
            .then(|| collection_labels(req.uri().path()))
            .flatten()
            // A clone shares the series' value; once the watch stops and its series is
            // removed, late bytes go to a detached counter, never to a ghost series.
            .map(|labels| {
                self.metrics
                    .watch_received_bytes
                    .get_or_create(&labels)
                    .clone()
            });
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| CountedBody { inner, counter }))
        })
    }
}

/// A response body that counts its data bytes as they arrive.
pub struct CountedBody<B> {
    inner: B,
    counter: Option<Counter>,
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(counter)) = (&polled, &self.counter) {
            if let Some(data) = frame.data_ref() {
                counter.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(g: &str, v: &str, p: &str, ns: &str) -> Option<Labels> {
        Some(watch_labels(g, v, p, (!ns.is_empty()).then_some(ns)))
    }

    #[test]
    fn collections_map_to_their_watch_labels() {
        assert_eq!(
            collection_labels("/api/v1/pods"),
            labels("", "v1", "pods", "")
        );
        assert_eq!(
            collection_labels("/api/v1/namespaces/a/configmaps"),
            labels("", "v1", "configmaps", "a")
        );
        assert_eq!(
            collection_labels("/apis/apps/v1/deployments"),
            labels("apps", "v1", "deployments", "")
        );
        assert_eq!(
            collection_labels("/apis/composition.krateo.io/v1-2/namespaces/x/fireworksapps"),
            labels("composition.krateo.io", "v1-2", "fireworksapps", "x")
        );
        // Discovery and named objects are no watch's bytes.
        for other in [
            "/api",
            "/api/v1",
            "/apis/apps/v1",
            "/api/v1/namespaces/default",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/resources-ingester",
            "/version",
        ] {
            assert_eq!(collection_labels(other), None, "{other}");
        }
    }
}
