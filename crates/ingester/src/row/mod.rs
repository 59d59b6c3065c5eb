//! The row: the raw object as served, the record built from it, the field policies applied
//! to it, and the routes that say which kinds are watched and how.

pub mod fields;
pub mod object;
pub mod record;
pub mod routes;
