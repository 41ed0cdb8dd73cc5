//! The history database (`history.db`): every payment, refund, account entry and webhook
//! delivery attempt ever logged, in `SQLite` (WAL mode), projected from the write-ahead log by one
//! writer, the projector (`project.rs`), or first seeded from a snapshot (`seed.rs`). Plain Rust, no pyo3: bound by `rust/history_py.rs`.
//!
//! The schema is `schema.sql`, shared with the readers (stdlib `sqlite3`, read-only). The
//! database is derived data: the log is the truth, so a lost commit is projected again.

pub mod project;
mod records;
mod seed;

pub use project::{Projector, Step};
pub use seed::{Seed, SeedAccount, SeedPayment, SeedRefund};

/// The schema the code writes and reads, stored in `projection.schema_version`. A change to
/// `schema.sql` that an older reader would misread takes the next number.
pub const SCHEMA_VERSION: i64 = 1;
pub(crate) const SCHEMA: &str = include_str!("schema.sql");

#[cfg(test)]
mod tests;
