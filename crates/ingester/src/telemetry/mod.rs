//! What the service tells: typed events (each emits its log line and moves its metric), the
//! Prometheus families, and the logging set-up.

pub mod events;
pub mod logging;
pub mod metrics;
