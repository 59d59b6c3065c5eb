//! Loading dumps.
