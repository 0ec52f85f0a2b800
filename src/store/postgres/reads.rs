//! PostgreSQL's reads ([`Reads`]): the SQL behind listings, details and figures, each in one
//! read-only snapshot.

use super::Conn;
use crate::store::seam::Reads;

/// The reads on one connection of the pool.
pub(crate) struct PgReads<'c> {
    pub(crate) conn: &'c Conn,
}
