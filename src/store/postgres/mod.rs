//! The PostgreSQL backend of the store (design §7): a store that processes on several hosts
//! share. Connections ([`Conn`]: a client and its prepared statements), the schema
//! ([`schema`]), the row operations of the seam ([`rows`]) and its reads ([`reads`]).

pub(crate) mod reads;
pub(crate) mod rows;
pub(crate) mod schema;
mod tls;
pub(crate) mod writer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};
use tokio::sync::{oneshot, watch};

use crate::store::maintenance::{CheckStatus, HealthReport, line, table_checks};
use crate::store::seam::{Backend, ChangeFeed, Reads, WriteFigures, WriteJob};
use crate::store::{BackupReport, Location, OpenOptions, Result, StoreError};

/// Parameters of one statement.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // The server's own message, not the client's "db error" wrapper.
        match e.as_db_error() {
            // A deadlock broken, or a conflict under stricter isolation: the job's savepoint
            // is rolled back and the rest of its transaction goes on (writer.rs).
            Some(db) if matches!(db.code().code(), "40P01" | "40001") => {
                StoreError::Database(format!(
                    "{} (another process changed the same rows at the same moment); nothing of \
                     this change was applied: run it again",
                    db.message()
                ))
            }
            Some(db) => StoreError::Database(db.message().to_string()),
            // The client's words and their causes: "error performing TLS handshake: invalid
            // peer certificate: UnknownIssuer".
            None => {
                let mut message = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    message = format!("{message}: {c}");
                    cause = c.source();
                }
                StoreError::Database(message)
            }
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
    /// Always there until the connection is dropped (see `Drop`).
    client: RefCell<Option<Client>>,
    statements: RefCell<HashMap<String, Statement>>,
}

impl Conn {
    pub(crate) fn new(client: Client) -> Conn {
        Conn {
            client: RefCell::new(Some(client)),
            statements: RefCell::new(HashMap::new()),
        }
    }

    fn client(&self) -> std::cell::RefMut<'_, Client> {
        std::cell::RefMut::map(self.client.borrow_mut(), |c| {
            c.as_mut()
                .expect("a connection is used only before it is dropped")
        })
    }

    fn statement(&self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = blocking(|| self.client().prepare(sql))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), s.clone());
        Ok(s)
    }

    /// Every row of `sql`.
    pub(crate) fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        let s = self.statement(sql)?;
        Ok(blocking(|| self.client().query(&s, params))?)
    }

    /// The row of `sql`, if there is one (more than one is an error).
    pub(crate) fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
        let s = self.statement(sql)?;
        Ok(blocking(|| self.client().query_opt(&s, params))?)
    }

    /// The one row of `sql`.
    pub(crate) fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row> {
        let s = self.statement(sql)?;
        Ok(blocking(|| self.client().query_one(&s, params))?)
    }

    /// Runs `sql`; returns how many rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64> {
        let s = self.statement(sql)?;
        Ok(blocking(|| self.client().execute(&s, params))?)
    }

    /// Runs statements without parameters in one round trip; the first column of the last
    /// row any of them returned, as text.
    pub(crate) fn simple_value(&self, sql: &str) -> Result<Option<String>> {
        let messages = blocking(|| self.client().simple_query(sql))?;
        Ok(messages.iter().rev().find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        }))
    }

    /// Runs statements without parameters (transaction control, the schema).
    pub(crate) fn batch(&self, sql: &str) -> Result<()> {
        Ok(blocking(|| self.client().batch_execute(sql))?)
    }

    /// Waits up to `timeout` for notifications; whether any came (all that came are taken).
    ///
    /// It must wait: the client's runtime reads the socket only while it waits, so a call
    /// that never waits never sees a notification that arrived after the last statement.
    fn wait_notifications(&self, timeout: Duration) -> Result<bool> {
        let mut client = self.client();
        let mut pending = client.notifications();
        let first = pending.timeout_iter(timeout).next()?;
        let mut rest = pending.iter();
        while rest.next()?.is_some() {}
        Ok(first.is_some())
    }

    fn is_closed(&self) -> bool {
        self.client.borrow().as_ref().is_none_or(Client::is_closed)
    }
}

/// Closing a client blocks on its runtime, like every other call: a connection dropped on a
/// task of a tokio runtime (a console's change feed when it quits) must leave that runtime
/// first.
impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take() {
            blocking(move || drop(client));
        }
    }
}

/// Write connections (and writer threads) per process: see `writer::Writer::start`.
const WRITERS: usize = 2;

/// Where the database is and how to reach it (TLS as the URL asks).
#[derive(Clone)]
struct Server {
    config: postgres::Config,
    tls: tls::Tls,
}

/// Opens a connection: durable commits for every transaction, read-only transactions when the
/// store is read-only.
fn connect(server: &Server, read_only: bool) -> Result<Conn> {
    let client = blocking(|| server.config.connect(server.tls.clone()))?;
    let conn = Conn::new(client);
    conn.batch("SET synchronous_commit = on; SET application_name = 'hookops'")?;
    if read_only {
        conn.batch("SET default_transaction_read_only = on")?;
    }
    Ok(conn)
}

/// A store in a PostgreSQL database: its writer (none when read-only), its read connections.
pub(crate) struct Postgres {
    location: Location,
    server: Server,
    read_only: bool,
    writer: Option<writer::Writer>,
    readers: Mutex<Vec<Conn>>,
}

impl Postgres {
    /// Connects to the database at `url` and migrates it (a read-only store refuses a schema
    /// other than this binary's).
    pub(crate) fn open(location: Location, url: &str, opts: &OpenOptions) -> Result<Postgres> {
        let fail = |message: String| StoreError::Open {
            path: location.to_string().into(),
            message,
        };
        let (url, tls) = tls::split(url).map_err(fail)?;
        let config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| fail(format!("not a PostgreSQL URL: {e}")))?;
        let server = Server { config, tls };
        let conn = connect(&server, opts.read_only).map_err(|e| fail(e.to_string()))?;
        let latest = schema::MIGRATIONS.len() as i64;
        if opts.read_only {
            let version = schema::version(&conn)?;
            if version != latest {
                return Err(fail(format!(
                    "schema version {version}, this binary needs {latest}; open it once without --read-only to migrate"
                )));
            }
        } else {
            schema::migrate(&conn).map_err(fail)?;
        }
        let writer = if opts.read_only {
            None
        } else {
            let mut conns = vec![conn];
            for _ in 1..WRITERS {
                conns.push(connect(&server, false).map_err(|e| fail(e.to_string()))?);
            }
            Some(writer::Writer::start(conns, opts.clock.clone())?)
        };
        Ok(Postgres {
            location,
            server,
            read_only: opts.read_only,
            writer,
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` in a read-only snapshot on a connection of the pool.
    fn snapshot<R>(&self, f: impl FnOnce(&Conn) -> Result<R>) -> Result<R> {
        let pooled = self
            .readers
            .lock()
            .map_err(|_| StoreError::Database("reader pool poisoned".into()))?
            .pop();
        let conn = match pooled {
            Some(c) if !c.is_closed() => c,
            _ => connect(&self.server, self.read_only)?,
        };
        let result = conn
            .batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .and_then(|()| f(&conn));
        let ended = conn.batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" });
        if ended.is_ok()
            && let Ok(mut pool) = self.readers.lock()
            && pool.len() < 4
        {
            pool.push(conn);
        }
        result
    }
}

impl Backend for Postgres {
    fn location(&self) -> &Location {
        &self.location
    }

    fn read(&self, f: &mut dyn FnMut(&dyn Reads) -> Result<()>) -> Result<()> {
        self.snapshot(|conn| f(&reads::PgReads { conn }))
    }

    fn submit(&self, job: WriteJob) -> Option<Result<oneshot::Receiver<Result<()>>>> {
        self.writer.as_ref().map(|w| w.submit(job))
    }

    fn commits(&self) -> Option<watch::Receiver<u64>> {
        self.writer.as_ref().map(|w| w.subscribe())
    }

    /// `LISTEN` on a connection of its own: every transaction of every process ends with a
    /// `NOTIFY`, delivered at its commit.
    fn change_feed(&self) -> Result<Box<dyn ChangeFeed>> {
        Ok(Box::new(Listener::start(self.server.clone())?))
    }

    fn write_figures(&self, reset: bool) -> WriteFigures {
        use std::sync::atomic::Ordering::Relaxed;
        match &self.writer {
            Some(w) => {
                let s = &w.stats;
                let max = if reset {
                    s.max_hold_us.swap(0, Relaxed)
                } else {
                    s.max_hold_us.load(Relaxed)
                };
                (
                    max,
                    s.transactions.load(Relaxed),
                    s.jobs.load(Relaxed),
                    s.busy_us.load(Relaxed),
                )
            }
            None => (0, 0, 0, 0),
        }
    }

    fn backup(&self, _dest: &Path, _force: bool) -> Result<BackupReport> {
        Err(StoreError::Refused(format!(
            "{} is a PostgreSQL database: back it up with pg_dump, or copy it into a file with `hookops db copy`",
            self.location
        )))
    }

    /// The checks that apply to a server database: the connection and the schema version,
    /// then the checks of the rows every backend shares.
    fn check(&self, now: i64) -> Result<HealthReport> {
        let mut checks = vec![line(
            "connection",
            CheckStatus::Ok,
            format!("connected to {}", self.location),
        )];
        let mut size_bytes = 0;
        self.snapshot(|conn| {
            let storage = reads::PgReads { conn }.storage()?;
            size_bytes = (storage.pages * storage.page_size).max(0) as u64;
            let version = schema::version(conn)?;
            let latest = schema::MIGRATIONS.len() as i64;
            checks.push(if version == latest {
                line(
                    "schema",
                    CheckStatus::Ok,
                    format!("schema version {version} (this binary: {latest})"),
                )
            } else {
                line(
                    "schema",
                    CheckStatus::Fail,
                    format!("schema version {version}, this binary: {latest}"),
                )
            });
            table_checks(&reads::PgReads { conn }, now, &mut checks)
        })?;
        Ok(HealthReport {
            path: self.location.to_string().into(),
            size_bytes,
            ok: checks.iter().all(|c| c.status != CheckStatus::Fail),
            checks,
            repaired: Vec::new(),
        })
    }

    /// Nothing to do: PostgreSQL's autovacuum gives space back on its own.
    fn give_back_space(&self) {}
}

/// The change feed on PostgreSQL: a thread listens on a connection of its own and raises a
/// flag for every notification; `changed` takes the flag down. While that connection is down
/// (and until it listens again), every call says "changed", so the reader re-reads everything:
/// design §7's polling fallback.
struct Listener {
    state: Arc<ListenState>,
}

#[derive(Default)]
struct ListenState {
    changed: AtomicBool,
    down: AtomicBool,
}

/// How long the listening thread waits at a time, so it notices a dropped feed.
const LISTEN_WAIT: Duration = Duration::from_millis(250);

impl Listener {
    fn start(server: Server) -> Result<Listener> {
        let conn = listen(&server)?;
        let state = Arc::new(ListenState::default());
        let weak = Arc::downgrade(&state);
        std::thread::Builder::new()
            .name("hookops-pg-listen".into())
            .spawn(move || listen_loop(Some(conn), &server, &weak))
            .map_err(|e| StoreError::Database(format!("cannot start the listener: {e}")))?;
        Ok(Listener { state })
    }
}

impl ChangeFeed for Listener {
    fn changed(&mut self) -> Result<bool> {
        let changed = self.state.changed.swap(false, Ordering::AcqRel);
        Ok(changed || self.state.down.load(Ordering::Acquire))
    }
}

fn listen(server: &Server) -> Result<Conn> {
    let conn = connect(server, true)?;
    conn.batch(&format!("LISTEN {}", writer::CHANNEL))?;
    Ok(conn)
}

/// Listens until the feed is dropped; after a lost connection, tries again after 0.1 s,
/// doubling up to 5 s.
fn listen_loop(mut conn: Option<Conn>, server: &Server, state: &std::sync::Weak<ListenState>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match &conn {
            Some(c) => {
                let heard = c.wait_notifications(LISTEN_WAIT);
                let Some(state) = state.upgrade() else { return };
                match heard {
                    Ok(true) => state.changed.store(true, Ordering::Release),
                    Ok(false) if !c.is_closed() => {}
                    _ => {
                        tracing::warn!(
                            "the change feed's connection was lost; polling until it is back"
                        );
                        state.down.store(true, Ordering::Release);
                        conn = None;
                    }
                }
            }
            None => {
                std::thread::sleep(backoff);
                let Some(state) = state.upgrade() else { return };
                match listen(server) {
                    Ok(c) => {
                        conn = Some(c);
                        backoff = Duration::from_millis(100);
                        // What changed while nobody listened is read once more.
                        state.changed.store(true, Ordering::Release);
                        state.down.store(false, Ordering::Release);
                    }
                    Err(_) => backoff = (backoff * 2).min(Duration::from_secs(5)),
                }
            }
        }
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
