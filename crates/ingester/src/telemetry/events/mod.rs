//! Typed observable events: each emits its log line and moves its metric, in one place.
//! One module per part of the service the events tell about; every event is reachable as
//! `telemetry::events::Name`.

mod database;
mod row;
mod service;
mod watch;
mod write;

pub use database::*;
pub use row::*;
pub use service::*;
pub use watch::*;
pub use write::*;

fn label(k: &'static str, v: impl Into<String>) -> Vec<(&'static str, String)> {
    vec![(k, v.into())]
}
