//! resources-ingester: keeps the PostgreSQL table `krateo_resources` in step with the live
//! state of a Kubernetes cluster. See docs/architecture.md for the pipeline.

pub mod app;
pub mod cluster;
pub mod config;
pub mod events;
pub mod health;
pub mod lanes;
pub mod leader;
pub mod manager;
pub mod metrics;
pub mod object;
pub mod record;
pub mod routes;
pub mod storage;
pub mod telemetry;
pub mod watch;
