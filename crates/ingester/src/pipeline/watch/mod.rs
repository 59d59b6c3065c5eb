//! One watch: the list-and-watch loop (`kubernetes::listwatch`) over one kind (in one
//! namespace or cluster-wide), turned into lane events. Lists are compared with the table's
//! snapshot of the scope, so unchanged objects are not re-sent and objects a list no longer
//! has are marked deleted (unless their row is newer than the list).
//!
//! - `spec.rs`: what a watch is given (`WatchContext`, `WatchSpec`, `CrdEvent`).
//! - `state.rs`: what a watch knows between steps and what each step makes of it, without a
//!   server, a table or lanes (readiness, relist reasons, the list in progress).
//! - `checkpoint.rs`: how far a watch has got, and the checkpoints that store its resume
//!   point.
//! - `sweep.rs`: the table's side of a list (snapshot before, tombstones after) and the sweep
//!   of a whole scope.
//! - `run.rs`: the thin I/O loop of one watch (`run_watch`).

mod checkpoint;
mod run;
mod spec;
mod state;
mod sweep;

pub use run::run_watch;
pub use spec::{api_resource, CrdEvent, WatchContext, WatchSpec};
pub use sweep::sweep_scope;
