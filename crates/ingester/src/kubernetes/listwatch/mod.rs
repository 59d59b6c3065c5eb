//! List-then-watch over one kind, as a `Stream` of steps: the loop of client-go's reflector,
//! written here because a correct sweep needs what kube-runtime's `watcher` keeps to itself:
//! the resourceVersion at which a list was taken (a row newer than it must survive the
//! sweep), whether a list ended or broke half-way, and a watch started from a stored resume
//! point. It decides how to go on after each failure (re-watch from where it was, or relist)
//! and backs off; the consumer (`pipeline::watch`) only turns steps into rows.
//!
//! - `step.rs`: what the loop says (`Step`, `Failure`).
//! - `machine.rs`: its decisions, without a server: the phase it is in and, for each answer
//!   of the server, the step to say and the phase to go on in.
//! - `catch_up.rs`: the catch-up after a resume (short watches until the server has shown
//!   it is past the collection's resourceVersion read at resume).
//! - `io.rs`: the thin loop that makes the requests each phase needs.
//! - `wire.rs`: those requests' answers decoded straight into `RawObject`s.

mod catch_up;
mod io;
mod machine;
mod step;
mod wire;

use std::sync::Arc;

use futures::stream::BoxStream;
use kube::api::{Api, WatchEvent};
use tokio::sync::Semaphore;

use crate::row::object::RawObject;

pub use step::{Failure, FailureReason, Step};

pub type ObjectStream = BoxStream<'static, Result<WatchEvent<RawObject>, kube::Error>>;

/// How the loop starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    List,
    /// Watch from a stored resume point; a 410 falls back to a list.
    Resume(i64),
    /// First read the collection's current resourceVersion: below `newest` (the newest
    /// resourceVersion stored for the scope) it says `Step::HistoryBehind` and lists
    /// consistently; else it watches from `resume` when set (as `Resume`), or lists.
    Checked {
        resume: Option<i64>,
        newest: i64,
    },
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// Lists as streaming lists (`sendInitialEvents`); falls back to pages when refused.
    pub streaming: bool,
    pub page_size: u32,
    /// Bounds the lists running at once (across watches).
    pub list_permits: Option<Arc<Semaphore>>,
    /// The `apiVersion` and `kind` of the watched resource: a real API server leaves them out
    /// of the items of a list of a built-in kind (they are on the list), and a stored object
    /// must carry them like the watch's objects do.
    pub type_meta: (String, String),
}

/// The list-and-watch loop as a stream of steps (cancel-safe: drop it to stop).
pub fn list_watch(
    api: Api<RawObject>,
    settings: Settings,
    start: Start,
) -> BoxStream<'static, Step> {
    io::run(api, settings, start)
}
