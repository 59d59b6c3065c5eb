//! The pipeline: one watch per route, the CRD manager that starts and stops custom-resource
//! watches, the lanes that build and batch rows, task supervision, the health servers and
//! the running service (start-up order, graceful shutdown).

pub mod health;
pub mod lanes;
pub mod manager;
pub mod service;
pub mod supervisor;
pub mod watch;
