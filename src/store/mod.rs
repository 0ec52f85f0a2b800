//! The store: every transaction of the product, written once over a backend seam.
//!
//! Invariants this module keeps:
//! - Only its backends speak SQL (`sqlite/` today), and no rusqlite type leaves them: the API
//!   is in domain types.
//! - The rules decide above the seam (`seam`: the `Rows`, `Reads` and `Backend` a backend
//!   writes): routing (`items::apply_route`), what an attempt does (`attempts`, applying
//!   `engine::delivery::decide`), leases and their fencing (`leases`), re-fire, replay and
//!   tests (`refire`), notifications, counters, the health checks' verdicts.
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
mod copy;
mod counts;
mod deliveries;
mod dispatchers;
mod items;
mod leases;
mod maintenance;
mod policy;
mod postgres;
mod refire;
mod seam;
mod sqlite;
mod stats;
mod tx;
mod workflows;

use sqlite::schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

pub use attempts::*;
pub use copy::CopyReport;
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

/// Where a store lives: a SQLite file, or a PostgreSQL database named by a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    /// The URL as given (it may hold a password: never show it) and the URL as shown, with
    /// the password masked.
    Postgres {
        url: String,
        shown: String,
    },
}

impl Location {
    /// Reads `--db` or `HOOKOPS_DB`: a `postgres://` or `postgresql://` URL, or a file path.
    /// Anything else that looks like a URL is refused, never taken for a relative path.
    pub fn parse(s: &str) -> std::result::Result<Location, String> {
        match s.split_once("://") {
            Some((scheme, _)) if scheme == "postgres" || scheme == "postgresql" => {
                Ok(Location::Postgres {
                    url: s.to_string(),
                    shown: masked(s),
                })
            }
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                Err(format!(
                    "`{scheme}://` is not a store hookops knows: give a file path or a postgres:// URL"
                ))
            }
            _ => Ok(Location::File(PathBuf::from(s))),
        }
    }

    /// The database file, when the store is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Location::File(p) => Some(p),
            Location::Postgres { .. } => None,
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Postgres { shown, .. } => f.write_str(shown),
        }
    }
}

/// A PostgreSQL URL with its password masked, in the authority (`user:****@`) and in a
/// `password=` parameter.
fn masked(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:****@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

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
    backend: Box<dyn seam::Backend>,
    read_only: bool,
    clock: Clock,
    jitter: Jitter,
    /// The `--concurrency` of this process's dispatcher (from its heartbeat; 0: none), part of
    /// the ceiling of a stage's adaptive concurrency.
    dispatch_concurrency: std::sync::atomic::AtomicU32,
}

impl Store {
    /// Opens (creating when missing, with mode `opts.create_mode`) and migrates the database
    /// file at `path`.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Store> {
        Store::open_at(&Location::File(path.to_path_buf()), opts)
    }

    /// Opens and migrates the store at `location`: a SQLite file (created when missing) or a
    /// PostgreSQL database (which must exist).
    pub fn open_at(location: &Location, opts: &OpenOptions) -> Result<Store> {
        let backend: Box<dyn seam::Backend> = match location {
            Location::File(path) => Box::new(sqlite::Sqlite::open(path, opts)?),
            Location::Postgres { url, .. } => {
                Box::new(postgres::Postgres::open(location.clone(), url, opts)?)
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                read_only: opts.read_only,
                clock: opts.clock.clone(),
                jitter: opts.jitter,
                dispatch_concurrency: Default::default(),
            }),
        })
    }

    /// Where the store lives.
    pub fn location(&self) -> &Location {
        self.inner.backend.location()
    }

    /// The database file, when the store is one (SQLite).
    pub fn file(&self) -> Option<&Path> {
        self.location().file()
    }

    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// Where the jitter of retry delays comes from.
    pub(crate) fn jitter(&self) -> Jitter {
        self.inner.jitter
    }

    /// The `--concurrency` of this process's dispatcher, 0 when it runs none.
    pub(crate) fn dispatch_concurrency(&self) -> u32 {
        self.inner
            .dispatch_concurrency
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Remembers the `--concurrency` of this process's dispatcher.
    pub(crate) fn set_dispatch_concurrency(&self, n: u32) {
        self.inner
            .dispatch_concurrency
            .store(n, std::sync::atomic::Ordering::Relaxed);
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

    /// Runs `f` on the backend's reads (one read connection of the pool).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&dyn seam::Reads) -> Result<R>) -> Result<R> {
        let mut f = Some(f);
        let mut out = None;
        self.inner.backend.read(&mut |r| {
            if let Some(f) = f.take() {
                out = Some(f(r));
            }
            Ok(())
        })?;
        out.unwrap_or_else(|| Err(StoreError::Database("the read did not run".into())))
    }

    /// Runs `f` inside the writer's current transaction (in its own savepoint) and waits for
    /// the commit. Refused when read-only.
    pub(crate) fn write<R: Send + 'static>(
        &self,
        action: &'static str,
        f: impl FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (rx, slot) = self.submit(action, f)?;
        // Inside a tokio runtime, blocking_recv would panic: callers there use write_async.
        rx.blocking_recv().map_err(|_| StoreError::WriterGone)??;
        take(&slot)
    }

    /// Like [`Store::write`], for async callers (the dispatcher): awaits the commit.
    pub(crate) async fn write_async<R: Send + 'static>(
        &self,
        action: &'static str,
        f: impl FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (rx, slot) = self.submit(action, f)?;
        rx.await.map_err(|_| StoreError::WriterGone)??;
        take(&slot)
    }

    /// Queues `f` with the backend. Its result waits in the returned slot until the backend
    /// says the transaction committed: nothing acts on a write that is not durable.
    #[allow(clippy::type_complexity)]
    fn submit<R: Send + 'static>(
        &self,
        action: &'static str,
        f: impl FnOnce(&Tx<'_>) -> Result<R> + Send + 'static,
    ) -> Result<(
        tokio::sync::oneshot::Receiver<Result<()>>,
        Arc<std::sync::Mutex<Option<R>>>,
    )> {
        self.ensure_writable(action)?;
        let slot = Arc::new(std::sync::Mutex::new(None));
        let out = slot.clone();
        let job: seam::WriteJob = Box::new(move |tx| {
            let r = f(tx)?;
            if let Ok(mut out) = out.lock() {
                *out = Some(r);
            }
            Ok(())
        });
        match self.inner.backend.submit(job) {
            Some(rx) => Ok((rx?, slot)),
            None => Err(StoreError::ReadOnly { action }),
        }
    }

    /// A receiver that changes after every commit of this process's writer.
    pub fn commits(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.backend.commits()
    }

    /// Notices commits made by any process, this one's included (the change feed the
    /// dispatcher and the console wake on).
    pub fn change_watcher(&self) -> Result<ChangeWatcher> {
        Ok(ChangeWatcher(self.inner.backend.change_feed()?))
    }

    /// How long the writer has spent in transactions, in microseconds (benchmarks).
    pub fn writer_busy_us(&self) -> u64 {
        self.inner.backend.write_figures(false).3
    }

    /// This process's writer figures: (longest transaction in µs, transactions, jobs).
    /// Resets the maximum when `reset` is true.
    pub fn writer_stats(&self, reset: bool) -> (u64, u64, u64) {
        let (max, transactions, jobs, _) = self.inner.backend.write_figures(reset);
        (max, transactions, jobs)
    }

    /// The schema version stored in the file.
    pub fn schema_version(&self) -> Result<i64> {
        self.read(|r| r.schema_version())
    }
}

/// The result a committed write job left in its slot.
fn take<R>(slot: &std::sync::Mutex<Option<R>>) -> Result<R> {
    slot.lock()
        .ok()
        .and_then(|mut r| r.take())
        .ok_or_else(|| StoreError::Database("a committed write left no result".into()))
}

/// Notices commits made by any process, this one's included: the store's change feed (SQLite:
/// `data_version` polling).
pub struct ChangeWatcher(Box<dyn seam::ChangeFeed>);

impl ChangeWatcher {
    /// Whether anything was committed since the last call. Cheap: no IO when unchanged.
    pub fn changed(&mut self) -> Result<bool> {
        self.0.changed()
    }
}

pub(crate) fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// One row of the audit log. Rows written by the actions layer (issue 18) also say from
/// where (`via`), how it ended (`outcome`), how many the selection matched and, up to
/// [`AUDIT_IDS`], the ids acted on.
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// The row's number (`audit show ID`).
    pub id: i64,
    pub at: DateTime<Utc>,
    pub operator: String,
    pub action: String,
    pub target: String,
    pub filter: Option<String>,
    pub count: i64,
    pub via: Option<String>,
    pub outcome: Option<String>,
    pub matched: Option<i64>,
    /// The ids acted on (absent when more than [`AUDIT_IDS`]: then `filter` and `matched`
    /// say what was selected). Only `audit show` and [`Store::audit_entry`] fill it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
}

/// The most ids an audit row lists; a larger action records its filter and count instead.
pub const AUDIT_IDS: usize = 1000;

/// What `hookops audit` (and the console's `:audit`) select.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditQuery {
    pub operator: Option<String>,
    pub action: Option<String>,
    /// Rows naming this id: a delivery id, or an item id (its own, or one of its deliveries').
    pub item: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
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
        via: None,
        outcome: None,
        matched: None,
    })?;
    Ok(())
}

/// The start of an action's audit row (the actions layer's).
#[derive(Clone, Debug)]
pub struct AuditStart {
    pub operator: String,
    pub via: String,
    pub action: String,
    pub target: String,
    pub filter: Option<String>,
    pub matched: i64,
}

impl Store {
    /// The newest audit rows, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.read(|r| r.audit_log(&AuditQuery::default(), limit))
    }

    /// The newest audit rows matching `q`, newest first.
    pub fn audit_search(&self, q: &AuditQuery, limit: usize) -> Result<Vec<AuditEntry>> {
        self.read(|r| r.audit_log(q, limit))
    }

    /// One audit row with the ids it names.
    pub fn audit_entry(&self, id: i64) -> Result<AuditEntry> {
        self.read(|r| r.audit_entry(id))?
            .ok_or_else(|| StoreError::NotFound {
                what: "audit row",
                id: id.to_string(),
            })
    }

    /// Writes an action's audit row before it acts (outcome `running`): an action that dies
    /// midway still left its row. Returns the row's number for [`Store::audit_finish`].
    pub fn audit_begin(&self, a: AuditStart) -> Result<i64> {
        self.write("audit", move |c| {
            c.rows().insert_audit(&seam::AuditRow {
                at: c.now(),
                operator: &a.operator,
                action: &a.action,
                target: &a.target,
                filter: a.filter.as_deref(),
                count: 0,
                via: Some(&a.via),
                outcome: Some("running"),
                matched: Some(a.matched),
            })
        })
    }

    /// Ends an action's audit row: its outcome, how many it touched and which (the ids are
    /// kept only up to [`AUDIT_IDS`]).
    pub fn audit_finish(&self, id: i64, outcome: &str, count: i64, ids: &[String]) -> Result<()> {
        let ids = (ids.len() <= AUDIT_IDS)
            .then(|| serde_json::to_string(ids))
            .transpose()?;
        let outcome = outcome.to_string();
        self.write("audit", move |c| {
            c.rows().finish_audit(id, &outcome, count, ids.as_deref())
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
