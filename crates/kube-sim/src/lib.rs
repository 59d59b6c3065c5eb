//! kube-sim: a Kubernetes API server for tests, demos and benchmarks.
//!
//! Start it in-process with [`KubeSim::start`], point `kubectl` or kube-rs at
//! [`KubeSim::kubeconfig_yaml`], and drive objects either over REST or through [`Store`].

mod api;
pub mod authz;
pub mod bench;
mod compression;
pub mod error;
pub mod faults;
pub mod load;
mod openapi;
mod parallel;
pub mod patch;
mod protobuf;
pub mod resources;
pub mod selector;
mod store;
mod table;
mod tls;
mod watch;
pub mod workload;

pub use authz::DenyRule;
pub use error::ApiError;
pub use faults::{FaultSet, ReplicaPick};
pub use store::{Stats, Store};

use anyhow::Context;
use axum::body::Body;
use base64::Engine;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Number of events kept for watches and paged lists; older revisions get 410 Expired.
    pub history: usize,
    /// When periodic BOOKMARK events come on watches that allow them: by default as on the
    /// real server ([`BookmarkTiming::AsRealServer`]); tests that want them fast choose
    /// [`BookmarkTiming::Every`].
    pub bookmarks: BookmarkTiming,
    /// Serve HTTPS with generated certificates and require a client certificate or token.
    pub tls: bool,
    /// Serve streaming lists (`sendInitialEvents`); `false` answers them with 422 Invalid, as a
    /// server with the WatchList feature gate off does (Kubernetes 1.33 by default).
    pub watch_list: bool,
    /// Create namespace `kube-system` (a uid of its own per server) at start, as every real
    /// cluster has it. Off only for tests that count revisions from 1.
    pub system_namespace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history: 10_000,
            bookmarks: BookmarkTiming::AsRealServer,
            tls: false,
            watch_list: true,
            system_namespace: true,
        }
    }
}

/// When a watch that allows bookmarks gets its periodic BOOKMARK events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BookmarkTiming {
    /// As the real watch cache (measured on Kubernetes v1.36.2): the first bookmark at the
    /// watch's `timeoutSeconds` deadline minus 2 s when that comes within a minute, then one
    /// about every second until the watch closes; without a deadline (or a later one) one a
    /// minute. A bookmark is sent only when its revision is newer than what the watch has
    /// (the revision it started from, its last event): a quiet watch gets none until something
    /// else is written.
    #[default]
    AsRealServer,
    /// A BOOKMARK every interval, whatever the deadline and revision: fast bookmarks for tests.
    Every(Duration),
}

/// A running server.
pub struct KubeSim {
    addr: SocketAddr,
    store: Store,
    tls: Option<tls::TlsMaterial>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl KubeSim {
    pub async fn start(cfg: SimConfig) -> anyhow::Result<KubeSim> {
        Self::start_with_store(cfg.clone(), Store::new(cfg.history)).await
    }

    /// Starts serving an existing store (e.g. one preloaded before the port opens).
    pub async fn start_with_store(cfg: SimConfig, store: Store) -> anyhow::Result<KubeSim> {
        if cfg.system_namespace {
            ensure_system_namespace(&store)?;
        }
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let tls = if cfg.tls {
            Some(tls::generate(addr.ip())?)
        } else {
            None
        };
        let shutdown = CancellationToken::new();
        let state = Arc::new(api::AppState {
            store: store.clone(),
            token: tls.as_ref().map(|t| t.token.clone()),
            bookmarks: cfg.bookmarks,
            watch_list: cfg.watch_list,
            shutdown: shutdown.clone(),
            server_address: addr.to_string(),
        });
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config.clone()));
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = token.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let (state, token, acceptor) = (state.clone(), token.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(stream).await else {
                                return;
                            };
                            let client_cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .is_some_and(|c| !c.is_empty());
                            serve_conn(
                                TokioIo::new(tls),
                                api::ConnInfo { client_cert },
                                state,
                                token,
                            )
                            .await
                        }
                        None => {
                            serve_conn(TokioIo::new(stream), api::ConnInfo::default(), state, token)
                                .await
                        }
                    }
                });
            }
        });
        Ok(KubeSim {
            addr,
            store,
            tls,
            shutdown,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://...` in TLS mode.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The bearer token accepted in TLS mode.
    pub fn token(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.token.as_str())
    }

    /// PEM of the CA that signed the server and client certificates (TLS mode).
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// PEM client certificate and key accepted by the server (TLS mode).
    pub fn client_identity_pem(&self) -> Option<(&str, &str)> {
        self.tls
            .as_ref()
            .map(|t| (t.client_cert_pem.as_str(), t.client_key_pem.as_str()))
    }

    /// A kubeconfig with cluster, context and user all named `kube-sim`.
    pub fn kubeconfig_yaml(&self) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (ca, user) = match &self.tls {
            Some(t) => (
                format!("\n    certificate-authority-data: {}", b64(&t.ca_pem)),
                format!(
                    "\n    client-certificate-data: {}\n    client-key-data: {}",
                    b64(&t.client_cert_pem),
                    b64(&t.client_key_pem)
                ),
            ),
            None => (String::new(), " {}".to_string()),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-sim\n  cluster:\n    server: {}{ca}\n\
             contexts:\n- name: kube-sim\n  context:\n    cluster: kube-sim\n    user: kube-sim\n    namespace: default\n\
             current-context: kube-sim\nusers:\n- name: kube-sim\n  user:{user}\n",
            self.base_url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
            .with_context(|| format!("writing kubeconfig {}", path.display()))
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Denies requests matching `rule` from now on: 403 Forbidden, and `allowed: false` in
    /// access reviews (see [`authz`]).
    pub fn deny(&self, rule: DenyRule) {
        self.store.deny(rule)
    }

    /// The uid of namespace `kube-system` (the cluster's identity).
    pub fn system_namespace_uid(&self) -> Option<String> {
        self.store
            .get("v1", "Namespace", None, SYSTEM_NAMESPACE)
            .and_then(|ns| ns["metadata"]["uid"].as_str().map(str::to_owned))
    }

    /// Closes every open watch.
    pub fn drop_watches(&self) {
        self.store.drop_watches()
    }

    /// Stops accepting, closes every connection and watch.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// The namespace every real cluster has, with a uid of its own per server: tools take it as
/// the cluster's identity (resources-ingester among them). Kept when the store has it already.
pub const SYSTEM_NAMESPACE: &str = "kube-system";

fn ensure_system_namespace(store: &Store) -> anyhow::Result<()> {
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": SYSTEM_NAMESPACE, "labels": {"kubernetes.io/metadata.name": SYSTEM_NAMESPACE}}});
    match store.create(ns) {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "creating namespace {SYSTEM_NAMESPACE}: {e}"
        )),
    }
}

async fn serve_conn<I>(
    io: I,
    info: api::ConnInfo,
    state: Arc<api::AppState>,
    token: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let state = state.clone();
        req.extensions_mut().insert(info);
        let gzip = compression::accepts_gzip(&req);
        async move {
            let resp = api::handle(state, req.map(Body::new)).await;
            let resp = if gzip {
                compression::gzip_if_large(resp).await
            } else {
                resp
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(io, svc);
    tokio::select! {
        _ = conn => {}
        _ = token.cancelled() => {}
    }
}
