//! The SQLite backend of the store: the one writer thread and its group commit
//! ([`writer`]), the schema and its migrations ([`schema`]), and the row operations of the
//! seam ([`rows`]). Opening a file, the read pool and the `data_version` change feed are in
//! `store/mod.rs` for now (see `ARCHITECTURE.md`, the seam).

pub(crate) mod rows;
pub(crate) mod schema;
pub(crate) mod writer;
