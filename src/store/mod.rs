//! The store: every transaction of the product, written once over a backend seam.
//!
//! Invariants this module keeps:
//! - Only this module speaks SQL, and no rusqlite type leaves it: the API is in domain types.
//! - The rules decide above the seam (`seam::Rows`, the row operations a backend writes):
//!   routing (`items::apply_route`), what an attempt does (`attempts`, applying
//!   `engine::delivery::decide`), leases and their fencing (`leases`), re-fire, replay and
//!   tests (`refire`), notifications, counters. `sqlite/` is the one backend today.
//! - All writes of a process go through one writer thread (`sqlite::writer`) that groups the
//!   jobs waiting in its queue into one short `BEGIN IMMEDIATE` transaction (group commit),
//!   each job inside its own savepoint so one failing job does not undo the others, each with
//!   a transaction context ([`Tx`]: its `now`, the specs it read, its counter deltas). Replies
//!   are sent only after the commit, so nothing acts on a write that is not durable.
//! - Every commit uses `synchronous=FULL`. Multi-row operations are chunked so no transaction
//!   holds the write lock for long; each chunk is atomic.
//! - Counters of items per stage and state, and of deliveries per stage and state, are kept by
//!   the writes that change them, in the same transaction ([`counts`]).

mod attempts;
mod counts;
mod deliveries;
mod dispatchers;
mod items;
mod leases;
mod maintenance;
mod policy;
mod refire;
mod seam;
mod sqlite;
mod stats;
mod tx;
mod workflows;

use sqlite::{schema, writer};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OpenFlags};

pub use attempts::*;
pub use deliveries::*;
pub use dispatchers::*;
pub use items::*;
pub use leases::*;
pub use maintenance::*;
pub use policy::*;
pub use refire::*;
pub use stats::*;
pub(crate) use tx::Tx;
pub use tx::{Clock, Jitter};
pub use workflows::*;

/// What happened on the wire: a plain record, kept in the model; re-exported where callers
/// of [`Store::record_attempt`] look for it.
pub use crate::model::AttemptOutcome;

use crate::model::{ItemId, ItemState, StageId};

/// The schema version this binary writes (the number of migrations).
pub const SCHEMA_VERSION: i64 = schema::MIGRATIONS.len() as i64;

/// What can go wrong in the store, worded for the operator at the edge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("cannot open database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("the database is open read-only: {action} is not allowed")]
    ReadOnly { action: &'static str },
    #[error("no {what} with id `{id}`")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Stale(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error("the store's writer has stopped")]
    WriterGone,
}

impl StoreError {
    /// Whether this is a refusal of the operation (exit 1) rather than bad input (exit 2).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, StoreError::Invalid(_))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Database(format!("stored JSON is unreadable: {e}"))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How to open the database.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Open read-only and refuse every write.
    pub read_only: bool,
    /// File mode when the file is created (0600 by default; `--db-mode 0660` for a team).
    pub create_mode: u32,
    /// Where the store's times come from: the system clock, or an adjustable one in tests.
    pub clock: Clock,
    /// Where the jitter of retry delays comes from: random, or fixed in tests.
    pub jitter: Jitter,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            read_only: false,
            create_mode: 0o600,
            clock: Clock::system(),
            jitter: Jitter::Random,
        }
    }
}

/// A handle on one database file: one writer thread and a small pool of read connections.
/// Cheap to clone; every clone shares the writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    read_only: bool,
    clock: Clock,
    jitter: Jitter,
    writer: Option<writer::Writer>,
    readers: Mutex<Vec<Connection>>,
}

/// How long a connection waits for another's lock before the operation fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// SQLite's busy handler for every connection: poll the lock every millisecond, up to
/// [`BUSY_TIMEOUT`]. SQLite's own timeout backs off to 100 ms sleeps, and a process that long
/// bulk work (a 100,000-delivery re-fire) frees only briefly between its short transactions
/// then starved such a waiter for seconds; polling catches the gaps.
fn wait_for_lock(tries: i32) -> bool {
    if i64::from(tries) >= BUSY_TIMEOUT.as_millis() as i64 {
        return false;
    }
    std::thread::sleep(Duration::from_millis(1));
    true
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let open_error = |e: rusqlite::Error| open_error(path, e);
    let mut conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
    conn.busy_handler(Some(wait_for_lock)).map_err(open_error)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_error)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_error)?;
    // Every write job runs in a savepoint; its sub-journal goes to a temp file unless temp
    // storage is in memory, which cost ~20 pwrite calls per imported item.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(open_error)?;
    // Query planner stability guarantee: plans never depend on bound values. Without it,
    // SQLite marks a parameter "re-prepare when rebound" whenever its value could matter to
    // the planner (`LIMIT ?`, `col = ?` in a join or under ORDER BY, a partial index's
    // column compared to `?`), and `sqlite3_clear_bindings`, which rusqlite's statement cache
    // calls on every statement it takes back, then expires the statement: the lease query and
    // the spec lookup were parsed and planned again on every call (most of the writer's time).
    // The hot queries name their index (INDEXED BY) and inline their constants, so they need
    // no parameter value to plan well.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(open_error)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl Store {
    /// Opens (creating when missing, with mode `opts.create_mode`) and migrates the database.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Store> {
        let exists = path.exists();
        if opts.read_only && !exists {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                message: "the file does not exist (a read-only console cannot create it)".into(),
            });
        }
        if !exists {
            create_file(path, opts.create_mode)?;
        }
        let conn = open_connection(path, opts.read_only)?;
        check_is_database(&conn, path)?;
        // SQLite silently opens a file it cannot write read-only; say so now rather than at
        // the first write.
        if !opts.read_only && conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                message: "the file or its file system is read-only (use --read-only to look at it)"
                    .into(),
            });
        }
        if opts.read_only {
            let version = schema::user_version(&conn)?;
            if version != SCHEMA_VERSION {
                return Err(StoreError::Open {
                    path: path.to_path_buf(),
                    message: format!(
                        "schema version {version}, this binary needs {SCHEMA_VERSION}; open it once without --read-only to migrate"
                    ),
                });
            }
        } else {
            if !exists {
                // Set before the first table exists: lets `prune` give pages back to the file
                // system in short steps while others use the file (a full VACUUM cannot).
                conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
            }
            conn.pragma_update(None, "journal_mode", "WAL")?;
            schema::migrate(&conn).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        let writer = if opts.read_only {
            None
        } else {
            Some(writer::Writer::start(conn, opts.clock.clone())?)
        };
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                read_only: opts.read_only,
                clock: opts.clock.clone(),
                jitter: opts.jitter,
                writer,
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// Where the jitter of retry delays comes from.
    pub(crate) fn jitter(&self) -> Jitter {
        self.inner.jitter
    }

    /// Now, by the store's clock, in ms since the epoch (reads that compare with due times).
    pub(crate) fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Refuses `action` when the store is read-only.
    pub fn ensure_writable(&self, action: &'static str) -> Result<()> {
        if self.inner.read_only {
            Err(StoreError::ReadOnly { action })
        } else {
            Ok(())
        }
    }

    /// Runs `f` on a read connection from the pool.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let conn = {
            let mut pool = self
                .inner
                .readers
                .lock()
                .map_err(|_| StoreError::Database("reader pool poisoned".into()))?;
            pool.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.inner.path, true)?,
        };
        let result = f(&conn);
        if let Ok(mut pool) = self.inner.readers.lock()
            && pool.len() < 4
        {
            pool.push(conn);
        }
        result
    }

    /// Runs `f` inside the writer's current transaction (in its own savepoint) and waits for
    /// the commit. Refused when read-only.
    pub(crate) fn write<R: Send + 'static>(
        &self,
        action: &'static str,
        f: impl FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.ensure_writable(action)?;
        match &self.inner.writer {
            Some(w) => w.run(f),
            None => Err(StoreError::ReadOnly { action }),
        }
    }

    /// Like [`Store::write`], for async callers (the dispatcher): awaits the commit.
    pub(crate) async fn write_async<R: Send + 'static>(
        &self,
        action: &'static str,
        f: impl FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.ensure_writable(action)?;
        match &self.inner.writer {
            Some(w) => w.run_async(f).await,
            None => Err(StoreError::ReadOnly { action }),
        }
    }

    /// A receiver that changes after every commit of this process's writer.
    pub fn commits(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.writer.as_ref().map(|w| w.subscribe())
    }

    /// SQLite's `data_version` on a read connection: changes when another connection or
    /// process commits. Cheap; the dispatcher and console poll it for cross-process wake-ups.
    pub fn data_version(&self) -> Result<i64> {
        self.read(|c| Ok(c.query_row("PRAGMA data_version", [], |r| r.get(0))?))
    }

    /// How long the writer has spent in transactions, in microseconds (benchmarks).
    pub fn writer_busy_us(&self) -> u64 {
        self.inner.writer.as_ref().map_or(0, |w| {
            w.stats().busy_us.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// This process's writer figures: (longest transaction in µs, transactions, jobs).
    /// Resets the maximum when `reset` is true.
    pub fn writer_stats(&self, reset: bool) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        match &self.inner.writer {
            Some(w) => {
                let s = w.stats();
                let max = if reset {
                    s.max_hold_us.swap(0, Relaxed)
                } else {
                    s.max_hold_us.load(Relaxed)
                };
                (max, s.transactions.load(Relaxed), s.jobs.load(Relaxed))
            }
            None => (0, 0, 0),
        }
    }

    /// The schema version stored in the file.
    pub fn schema_version(&self) -> Result<i64> {
        self.read(schema::user_version)
    }
}

fn create_file(path: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            message: format!("cannot create directory {}: {e}", dir.display()),
        })?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    let f = o.open(path).map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // The umask may have removed bits the operator asked for (0660): set them explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// An error while opening `path`, worded for the operator: a file that is not SQLite (the
/// first read of the header fails with `SQLITE_NOTADB`) is named as such.
fn open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    let message = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            "it is not an SQLite database (a hookops database is an SQLite file)".to_string()
        }
        _ => e.to_string(),
    };
    StoreError::Open {
        path: path.to_path_buf(),
        message,
    }
}

/// Refuses a file that is not an SQLite database, or an SQLite database of another program.
fn check_is_database(conn: &Connection, path: &Path) -> Result<()> {
    let foreign = |message: String| StoreError::Open {
        path: path.to_path_buf(),
        message,
    };
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| open_error(path, e))?;
    let app_id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if !tables.is_empty() && app_id != schema::APPLICATION_ID {
        return Err(foreign(
            "this SQLite file belongs to another program (it is not a hookops database)".into(),
        ));
    }
    Ok(())
}

pub(crate) fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// One row of the audit log.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub operator: String,
    pub action: String,
    pub target: String,
    pub filter: Option<String>,
    pub count: i64,
}

pub(crate) fn audit(
    conn: &Tx<'_>,
    operator: &str,
    action: &str,
    target: &str,
    filter: Option<&str>,
    count: i64,
) -> Result<()> {
    conn.rows().insert_audit(&seam::AuditRow {
        at: conn.now(),
        operator,
        action,
        target,
        filter,
        count,
    })
}

impl Store {
    /// The newest audit rows, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.read(|c| {
            let mut s = c.prepare(
                "SELECT at, operator, action, target, filter, count FROM audit ORDER BY seq DESC LIMIT ?1",
            )?;
            let rows = s
                .query_map([limit as i64], |r| {
                    Ok(AuditEntry {
                        at: to_time(r.get(0)?),
                        operator: r.get(1)?,
                        action: r.get(2)?,
                        target: r.get(3)?,
                        filter: r.get(4)?,
                        count: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Records an audit row on its own (for actions whose effect is elsewhere, like `test`).
    pub fn record_audit(
        &self,
        operator: &str,
        action: &'static str,
        target: String,
        count: i64,
    ) -> Result<()> {
        let op = operator.to_string();
        self.write("audit", move |c| {
            audit(c, &op, action, &target, None, count)
        })
    }
}

/// Says where an item is now, for refusals of stale actions.
pub(crate) fn where_now(id: &ItemId, stage: &StageId, state: ItemState) -> String {
    format!("item `{id}` is now in stage `{stage}` ({state})")
}

/// A time stored in the database (ms since the epoch) as a UTC time.
pub fn time_of(ms: i64) -> DateTime<Utc> {
    to_time(ms)
}

/// Notices commits made by any connection, this process's writer included, through
/// `PRAGMA data_version` on a connection of its own (design §6 cross-process wake-up).
pub struct ChangeWatcher {
    conn: Connection,
    last: i64,
}

impl ChangeWatcher {
    /// Whether anything was committed since the last call. Cheap: no file IO when unchanged.
    pub fn changed(&mut self) -> Result<bool> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let changed = v != self.last;
        self.last = v;
        Ok(changed)
    }
}

impl Store {
    pub fn change_watcher(&self) -> Result<ChangeWatcher> {
        let conn = open_connection(&self.inner.path, true)?;
        let last = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(ChangeWatcher { conn, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// A cached statement is not parsed again on its next use: rusqlite clears its bindings
    /// when it goes back to the cache, which expires any statement whose plan depended on a
    /// bound value (see `open_connection`).
    #[test]
    fn cached_statements_are_not_reprepared() {
        let dir = std::env::temp_dir().join(format!("hookops-qpsg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let conn = open_connection(&path, false).unwrap();
        schema::migrate(&conn).unwrap();
        let queries = [
            // A join with `= ?` (the spec lookup's shape).
            "SELECT r.spec, w.revision FROM workflows w
             JOIN workflow_revisions r ON r.workflow_id = w.id AND r.revision = w.revision
             WHERE w.id = ?1",
            // ORDER BY … LIMIT ? over a partial index (the lease query's shape).
            "SELECT d.seq FROM deliveries d INDEXED BY deliveries_due
             WHERE d.state IN ('pending', 'retry_scheduled') AND d.next_attempt_at <= ?1
             ORDER BY d.next_attempt_at LIMIT ?2",
            // A partial index's column compared to a parameter.
            "SELECT seq FROM deliveries WHERE state = ?1 AND lease_until < ?2",
        ];
        for sql in queries {
            for round in 0..3i64 {
                let mut s = conn.prepare_cached(sql).unwrap();
                let n = s.parameter_count();
                let vals: Vec<rusqlite::types::Value> = (0..n)
                    .map(|i| rusqlite::types::Value::Integer(round * 10 + i as i64 + 2))
                    .collect();
                s.query(rusqlite::params_from_iter(vals))
                    .unwrap()
                    .next()
                    .unwrap();
                assert_eq!(s.get_status(StatementStatus::RePrepare), 0, "{sql}");
            }
        }
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
