//! The loop's I/O: for each phase, the one request (or sleep) it needs, whose answer goes to
//! the machine (`machine.rs`) for the step to say and the phase to go on in.

use std::sync::Arc;
use std::time::Instant;

use futures::stream::BoxStream;
use futures::StreamExt;
use kube::api::{Api, ListParams};
use kube::Client;
use tokio::sync::Semaphore;
use tracing::info;

use super::machine::{Machine, Phase, Received, Transition};
use super::step::{FailureReason, Step};
use super::{wire, ObjectStream, Settings, Start};
use crate::row::object::RawObject;

/// The list-and-watch loop as a stream of steps (cancel-safe: drop it to stop).
pub(super) fn run(
    api: Api<RawObject>,
    settings: Settings,
    start: Start,
) -> BoxStream<'static, Step> {
    let io = Io {
        client: api.clone().into_client(),
        api,
        page_size: settings.page_size,
        list_permits: settings.list_permits,
        machine: Machine::new(settings.streaming, settings.type_meta),
    };
    futures::stream::unfold(
        (io, Phase::first(start)),
        |(mut io, mut phase)| async move {
            loop {
                let (step, next) = io.step(phase).await;
                phase = next;
                if let Some(step) = step {
                    return Some((step, (io, phase)));
                }
            }
        },
    )
    .boxed()
}

struct Io {
    /// The requests go through `wire`, which decodes the answers into `RawObject`s.
    client: Client,
    api: Api<RawObject>,
    page_size: u32,
    /// Bounds the lists running at once (across watches).
    list_permits: Option<Arc<Semaphore>>,
    machine: Machine,
}

impl Io {
    async fn step(&mut self, phase: Phase<ObjectStream>) -> Transition<ObjectStream> {
        match phase {
            Phase::Backoff { next } => {
                tokio::time::sleep(self.machine.backoff()).await;
                self.machine.backed_off(*next)
            }
            Phase::Resume { from, newest } => {
                // A consistent read (no resourceVersion) of the collection's current one.
                let read =
                    wire::list(&self.client, &self.api, &ListParams::default().limit(1)).await;
                let read = read.map(|list| list.metadata.resource_version);
                self.machine.on_current(from, newest, read)
            }
            Phase::ResumeWatch {
                from,
                newest,
                current,
            } => {
                let opened = self.open_watch(&from.to_string(), false).await;
                self.machine.on_resumed_watch(from, newest, current, opened)
            }
            Phase::List { consistent } => {
                let permit = match &self.list_permits {
                    Some(permits) => permits.clone().acquire_owned().await.ok(),
                    None => None,
                };
                self.machine.on_permit(consistent, permit)
            }
            Phase::ListStreaming { consistent, permit } => {
                let from = Machine::streaming_list_from(consistent);
                let opened = self.open_watch(from, true).await;
                let (step, next) = self.machine.on_streaming_list(consistent, permit, opened);
                if matches!(next, Phase::ListPaged { .. }) {
                    info!(resource = %self.api.resource_url(), "the API server does not serve streaming lists (WatchList feature gate off); using paged lists");
                }
                (step, next)
            }
            Phase::ListPaged { consistent, permit } => {
                // Pages are always consistent reads (no resourceVersion): a real API server
                // answers `resourceVersion=0` from its watch cache whole, ignoring `limit` (one
                // body of every object, built at once, restarted from zero when the connection
                // breaks), while a list without one is paged with continue tokens (served from
                // the watch cache's snapshots since Kubernetes 1.34, from etcd before).
                // Measured in docs/benchmarks.md.
                let params = ListParams {
                    limit: Some(self.page_size),
                    ..ListParams::default()
                };
                let page = wire::list(&self.client, &self.api, &params).await;
                self.machine.on_first_page(consistent, permit, page)
            }
            Phase::Paging {
                items,
                continue_token,
                resource_version,
            } => self
                .machine
                .on_paging(items, continue_token, resource_version),
            Phase::NextPage {
                continue_token,
                resource_version,
            } => {
                let params = ListParams {
                    limit: Some(self.page_size),
                    continue_token: Some(continue_token),
                    ..ListParams::default()
                };
                let page = wire::list(&self.client, &self.api, &params).await;
                self.machine.on_next_page(resource_version, page)
            }
            Phase::StreamingList { mut stream } => {
                let event = self.next_event(&mut stream).await;
                self.machine.on_streamed(stream, event)
            }
            Phase::Watch { from } => {
                let opened = self.open_watch(&from, false).await;
                self.machine.on_watch_opened(from, opened)
            }
            Phase::Watching { from, mut stream } => {
                let event = self.next_event(&mut stream).await;
                self.machine.on_watched(from, stream, event, Instant::now())
            }
        }
    }

    /// Opens a watch from `from` (a streaming list with `initial_events`).
    async fn open_watch(
        &mut self,
        from: &str,
        initial_events: bool,
    ) -> Result<ObjectStream, kube::Error> {
        let params = self.machine.watch_params(initial_events, Instant::now());
        wire::watch(&self.client, &self.api, &params, from).await
    }

    /// The next watch event, or why there is none: a watch silent for longer than the
    /// server's own timeout is a dead connection.
    async fn next_event(&self, stream: &mut ObjectStream) -> Received {
        let idle = self.machine.idle_limit();
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => Err((
                FailureReason::Connection,
                format!("the watch sent nothing for {}s", idle.as_secs()),
            )),
            Ok(None) => Ok(None),
            Ok(Some(Ok(event))) => Ok(Some(event)),
            Ok(Some(Err(e))) => Err((FailureReason::of_error(&e), e.to_string())),
        }
    }
}
