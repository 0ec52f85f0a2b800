//! The PostgreSQL backend of the store (design §7): a store that processes on several hosts
//! share. Connections ([`Conn`]: a client and its prepared statements), the schema
//! ([`schema`]), the row operations of the seam ([`rows`]) and its reads ([`reads`]).

pub(crate) mod reads;
pub(crate) mod rows;
pub(crate) mod schema;

use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, Row, Statement};

use crate::store::{Result, StoreError};

/// Parameters of one statement.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // The server's own message, not the client's "db error" wrapper.
        match e.as_db_error() {
            Some(db) => StoreError::Database(db.message().to_string()),
            None => StoreError::Database(e.to_string()),
        }
    }
}

/// Runs blocking client work. The client drives its own runtime; called from a task of a
/// multi-threaded tokio runtime (the dispatcher, the API), the worker thread first leaves that
/// runtime so the client's can run.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// One connection and the statements prepared on it. Statements are prepared once per
/// connection and text (`prepare_cached`, as on SQLite).
pub(crate) struct Conn {
    client: RefCell<Client>,
    statements: RefCell<HashMap<String, Statement>>,
}

impl Conn {
    pub(crate) fn new(client: Client) -> Conn {
        Conn {
            client: RefCell::new(client),
            statements: RefCell::new(HashMap::new()),
        }
    }

    fn statement(&self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = blocking(|| self.client.borrow_mut().prepare(sql))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), s.clone());
        Ok(s)
    }

    /// Every row of `sql`.
    pub(crate) fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        let s = self.statement(sql)?;
        Ok(blocking(|| self.client.borrow_mut().query(&s, params))?)
    }

    /// The row of `sql`, if there is one (more than one is an error).
    pub(crate) fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
        let s = self.statement(sql)?;
        Ok(blocking(|| self.client.borrow_mut().query_opt(&s, params))?)
    }

    /// The one row of `sql`.
    pub(crate) fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row> {
        let s = self.statement(sql)?;
        Ok(blocking(|| self.client.borrow_mut().query_one(&s, params))?)
    }

    /// Runs `sql`; returns how many rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64> {
        let s = self.statement(sql)?;
        Ok(blocking(|| self.client.borrow_mut().execute(&s, params))?)
    }

    /// Runs statements without parameters (transaction control, the schema).
    pub(crate) fn batch(&self, sql: &str) -> Result<()> {
        Ok(blocking(|| self.client.borrow_mut().batch_execute(sql))?)
    }
}

/// A text column as a value of `T` (an enum's name).
pub(crate) fn parse_col<T: std::str::FromStr>(row: &Row, i: usize) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let text: String = row.try_get(i)?;
    text.parse()
        .map_err(|e| StoreError::Database(format!("column {i}: {e}")))
}

/// A nullable text column as a value of `T`.
pub(crate) fn opt_parse_col<T: std::str::FromStr>(row: &Row, i: usize) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    let text: Option<String> = row.try_get(i)?;
    text.map(|t| {
        t.parse()
            .map_err(|e| StoreError::Database(format!("column {i}: {e}")))
    })
    .transpose()
}

/// A JSON text column as a value of `T`.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(row: &Row, i: usize) -> Result<T> {
    let text: String = row.try_get(i)?;
    Ok(serde_json::from_str(&text)?)
}
