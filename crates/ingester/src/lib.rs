//! resources-ingester: keeps the PostgreSQL table `krateo_resources` in step with the live
//! state of a Kubernetes cluster. The folders follow the data flow (docs/architecture.md):
//! the Kubernetes side reads, the pipeline carries, the row is built, storage writes; the
//! commands beside `main` reuse them.

// Functions stay short enough to hold one decision (crates/ingester/clippy.toml); tests may
// spell a long scenario out (the non-test build of every function is still linted).
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod commands;
pub mod config;
pub mod kubernetes;
pub mod pipeline;
pub mod row;
pub mod storage;
pub mod telemetry;
