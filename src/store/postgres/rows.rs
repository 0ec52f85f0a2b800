//! PostgreSQL's row operations ([`Rows`]): the SQL behind the store's write path, run inside
//! the transaction the writer opened.

use super::Conn;
use crate::store::seam::Rows;

/// The row operations on the writer's connection, inside its open transaction.
pub(crate) struct PgRows<'c> {
    pub(crate) conn: &'c Conn,
}
