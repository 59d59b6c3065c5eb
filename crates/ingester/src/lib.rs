//! resources-ingester: keeps the PostgreSQL table `krateo_resources` in step with the live
//! state of a Kubernetes cluster. See docs/architecture.md for the pipeline.

pub mod apiclient;
pub mod app;
pub mod check;
pub mod cluster;
pub mod config;
pub mod crd;
pub mod events;
pub mod fields;
pub mod health;
pub mod history;
pub mod jsondiff;
pub mod lanes;
pub mod leader;
pub mod listwatch;
pub mod manager;
pub mod metrics;
pub mod migrate;
pub mod object;
pub mod record;
pub mod routes;
pub mod storage;
pub mod supervisor;
pub mod telemetry;
pub mod watch;
