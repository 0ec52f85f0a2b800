//! The SQLite backend of the store: opening and migrating a file, the one writer thread and
//! its group commit ([`writer`]), a small pool of read connections, the `data_version`
//! change feed ([`ChangeWatcher`]), the schema and its migrations ([`schema`]), and the row
//! operations of the seam ([`rows`]).

pub(crate) mod file;
pub(crate) mod reads;
pub(crate) mod rows;
pub(crate) mod schema;
pub(crate) mod writer;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use tokio::sync::{oneshot, watch};

use crate::store::seam::{Backend, ChangeFeed, Reads, WriteFigures, WriteJob};
use crate::store::{Location, OpenOptions, Result, SCHEMA_VERSION, StoreError};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// One SQLite file: its writer (none when read-only) and its read connections.
pub(crate) struct Sqlite {
    path: PathBuf,
    location: Location,
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

/// Switches the file to WAL (nothing to do when it is already). A file in rollback mode (a
/// restored backup) opened by two processes at once, `serve` and a command: both read it, and
/// the switch needs the exclusive lock; SQLite answers one of them "database is locked" at
/// once rather than let two readers wait for each other, without asking the busy handler.
/// That one tries again until the other has switched it or [`BUSY_TIMEOUT`] has passed
/// (`workflow apply` beside a starting `serve` failed 7 times in 40 on such a file).
fn switch_to_wal(conn: &Connection) -> rusqlite::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

pub(crate) fn open_connection(path: &Path, read_only: bool) -> Result<Connection> {
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

impl Sqlite {
    /// Opens (creating when missing, with mode `opts.create_mode`) and migrates the database.
    pub(crate) fn open(path: &Path, opts: &OpenOptions) -> Result<Sqlite> {
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
            switch_to_wal(&conn)?;
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
        Ok(Sqlite {
            path: path.to_path_buf(),
            location: Location::File(path.to_path_buf()),
            writer,
            readers: Mutex::new(Vec::new()),
        })
    }
}

impl Backend for Sqlite {
    fn location(&self) -> &Location {
        &self.location
    }

    /// Runs `f` on the reads of a read connection from the pool.
    fn read(&self, f: &mut dyn FnMut(&dyn Reads) -> Result<()>) -> Result<()> {
        let conn = {
            let mut pool = self
                .readers
                .lock()
                .map_err(|_| StoreError::Database("reader pool poisoned".into()))?;
            pool.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.path, true)?,
        };
        // One snapshot for everything `f` reads (a copy of the whole store reads many pages).
        let result = conn
            .execute_batch("BEGIN")
            .map_err(StoreError::from)
            .and_then(|()| f(&reads::SqliteReads { conn: &conn }));
        if conn.execute_batch("COMMIT").is_err() {
            return result;
        }
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < 4
        {
            pool.push(conn);
        }
        result
    }

    fn submit(&self, job: WriteJob) -> Option<Result<oneshot::Receiver<Result<()>>>> {
        self.writer.as_ref().map(|w| w.submit(job))
    }

    fn commits(&self) -> Option<watch::Receiver<u64>> {
        self.writer.as_ref().map(|w| w.subscribe())
    }

    /// Notices every commit to the file through `PRAGMA data_version` on a connection of its
    /// own.
    fn change_feed(&self) -> Result<Box<dyn ChangeFeed>> {
        let conn = open_connection(&self.path, true)?;
        let last = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(Box::new(DataVersion { conn, last }))
    }

    fn write_figures(&self, reset: bool) -> WriteFigures {
        use std::sync::atomic::Ordering::Relaxed;
        match &self.writer {
            Some(w) => {
                let s = w.stats();
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

    fn backup(&self, dest: &Path, force: bool) -> Result<crate::store::BackupReport> {
        file::backup(&self.path, dest, force)
    }

    fn check(&self, now: i64) -> Result<crate::store::HealthReport> {
        file::check(&self.path, now)
    }

    /// A passive checkpoint, which lets the file shrink after an incremental vacuum.
    fn give_back_space(&self) {
        file::checkpoint(&self.path)
    }
}

pub(crate) fn create_file(path: &Path, mode: u32) -> Result<()> {
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

/// Notices commits made by any connection, this process's writer included, through
/// `PRAGMA data_version` on a connection of its own (design §6 cross-process wake-up).
struct DataVersion {
    conn: Connection,
    last: i64,
}

impl ChangeFeed for DataVersion {
    /// Cheap: no file IO when unchanged.
    fn changed(&mut self) -> Result<bool> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let changed = v != self.last;
        self.last = v;
        Ok(changed)
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
