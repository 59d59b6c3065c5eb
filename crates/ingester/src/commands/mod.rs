//! The commands beside the service: `check`, `history`, `migrate`.

pub mod check;
pub mod history;
pub mod jsondiff;
pub mod migrate;
