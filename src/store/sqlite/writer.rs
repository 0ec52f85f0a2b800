//! The one writer of a process: a thread that owns the read-write connection and runs every
//! write job, grouping the jobs that wait in its queue into one transaction (group commit).
//!
//! Each job runs in its own savepoint, so a job that fails is rolled back alone. Replies go out
//! only after `COMMIT` returned, so a caller never acts on a write that is not durable. A batch
//! stops growing after [`BATCH_BUDGET`] so the write lock is never held long for others.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

use super::rows::SqliteRows;
use crate::store::seam::WriteJob;
use crate::store::tx::{Clock, Tx};
use crate::store::{Result, StoreError};

/// How long one group commit may keep taking queued jobs before it commits.
const BATCH_BUDGET: Duration = Duration::from_millis(20);
const MAX_BATCH: usize = 1024;
/// After this long without writes the writer checkpoints the WAL.
const IDLE_CHECKPOINT: Duration = Duration::from_millis(500);
/// The writer checkpoints after a commit that left at least this many pages in the WAL
/// (SQLite's own automatic checkpoint uses the same figure).
const CHECKPOINT_PAGES: i32 = 1000;
/// A WAL still this long after a passive checkpoint is not being restarted: see [`checkpoint`].
const RESTART_PAGES: i64 = 4 * CHECKPOINT_PAGES as i64;
/// How long a restarting checkpoint waits for readers before it leaves it for the next time.
const RESTART_WAIT_TRIES: i32 = 20;
/// The pause after a restarting checkpoint that lets other processes' writers in.
const RESTART_GAP: Duration = Duration::from_millis(2);

trait Job: Send {
    /// Runs the job in its own savepoint, or, when `alone` (it is the first job of its
    /// transaction), without one: nothing else would be rolled back with it, so the writer
    /// rolls back the whole transaction when it fails. Returns whether it succeeded.
    fn run(&mut self, tx: &Tx<'_>, conn: &Connection, alone: bool) -> bool;
    fn finish(self: Box<Self>, commit: std::result::Result<(), String>);
}

struct TypedJob<R, F> {
    f: Option<F>,
    result: Option<Result<R>>,
    reply: oneshot::Sender<Result<R>>,
}

impl<R, F> Job for TypedJob<R, F>
where
    R: Send,
    F: FnOnce(&Tx<'_>, &Connection) -> Result<R> + Send,
{
    fn run(&mut self, tx: &Tx<'_>, conn: &Connection, alone: bool) -> bool {
        if let Some(f) = self.f.take() {
            tx.start_job();
            // A savepoint costs more than its two statements: SQLite copies every page the
            // job changes into the savepoint's journal first, and the dispatcher's batch job,
            // which changes many pages, is usually the first of its transaction.
            self.result = Some(if alone {
                end_job(tx, f(tx, conn))
            } else {
                in_savepoint(tx, conn, f)
            });
        }
        matches!(self.result, Some(Ok(_)))
    }

    fn finish(self: Box<Self>, commit: std::result::Result<(), String>) {
        let result = match (commit, self.result) {
            (_, Some(Err(e))) => Err(e),
            (Err(e), _) => Err(StoreError::Database(e)),
            (Ok(()), Some(r)) => r,
            (Ok(()), None) => Err(StoreError::Database("write job was not run".into())),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = self.reply.send(result);
    }
}

/// What every job's end leaves behind, with or without a savepoint: its counter deltas join
/// the transaction's when it succeeded, and the transaction's spec cache is forgotten when it
/// failed (it may have read a revision that is gone now).
fn end_job<R>(tx: &Tx<'_>, result: Result<R>) -> Result<R> {
    tx.end_job(result.is_ok());
    result
}

fn in_savepoint<R>(
    tx: &Tx<'_>,
    conn: &Connection,
    f: impl FnOnce(&Tx<'_>, &Connection) -> Result<R>,
) -> Result<R> {
    // Cached statements: these two run for every job, and parsing them each time showed up
    // in the writer's profile.
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    let result = f(tx, conn).and_then(|r| {
        conn.prepare_cached("RELEASE job")?.execute([])?;
        Ok(r)
    });
    let result = end_job(tx, result);
    // After some errors (a full disk, I/O) SQLite has already rolled back the whole
    // transaction: there is no savepoint left to roll back to.
    if result.is_err() && !conn.is_autocommit() {
        conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
    }
    result
}

pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
    commits: watch::Receiver<u64>,
    stats: Arc<Stats>,
}

/// Figures about the writer's transactions, for benchmarks and the console header.
#[derive(Default)]
pub(crate) struct Stats {
    /// Longest time from `BEGIN IMMEDIATE` to the end of `COMMIT`, in microseconds.
    pub max_hold_us: AtomicU64,
    pub transactions: AtomicU64,
    pub jobs: AtomicU64,
    /// Sum of the transactions' times, in microseconds: how busy the writer was.
    pub busy_us: AtomicU64,
}

impl Writer {
    pub(crate) fn start(mut conn: Connection, clock: Clock) -> Result<Writer> {
        // SQLite's automatic checkpoint runs inside COMMIT, after the write lock is released
        // but before COMMIT returns, so it counted as lock hold time (a 745 ms "hold" during a
        // prune when other writers waited at most 120 ms). The writer checkpoints by itself
        // instead, after the commit is timed; a WAL hook (which replaces the automatic
        // checkpoint) tells it how long the WAL is.
        let wal_pages = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let pages = wal_pages.clone();
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, n: i32| {
            pages.store(n, Ordering::Relaxed);
            Ok(())
        }))?;
        let (jobs, rx) = mpsc::channel::<Box<dyn Job>>();
        let (commit_tx, commits) = watch::channel(0u64);
        let stats = Arc::new(Stats::default());
        let thread_stats = stats.clone();
        thread::Builder::new()
            .name("hookops-writer".into())
            .spawn(move || writer_loop(conn, &clock, rx, commit_tx, &thread_stats, &wal_pages))
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            jobs,
            commits,
            stats,
        })
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    pub(crate) fn submit(&self, job: WriteJob) -> Result<oneshot::Receiver<Result<()>>> {
        self.submit_on_connection(move |tx, _| job(tx))
    }

    /// Queues a job that also gets the connection itself (the writer's own tests, which
    /// write rows no row operation knows).
    fn submit_on_connection<R, F>(&self, f: F) -> Result<oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&Tx<'_>, &Connection) -> Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = TypedJob {
            f: Some(f),
            result: None,
            reply,
        };
        self.jobs
            .send(Box::new(job))
            .map_err(|_| StoreError::WriterGone)?;
        Ok(rx)
    }
}

fn writer_loop(
    mut conn: Connection,
    clock: &Clock,
    rx: mpsc::Receiver<Box<dyn Job>>,
    commits: watch::Sender<u64>,
    stats: &Stats,
    wal_pages: &std::sync::atomic::AtomicI32,
) {
    let mut dirty = false;
    loop {
        let first = match rx.recv_timeout(IDLE_CHECKPOINT) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if dirty {
                    // PASSIVE never blocks readers or other writers; it only keeps the WAL short.
                    let _ = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
                    dirty = false;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let changes_before = conn.total_changes();
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            first.finish(Err(e.to_string()));
            continue;
        }
        let started = Instant::now();
        let rows = SqliteRows { conn: &conn };
        let tx = Tx::new(&rows, clock.clone());
        let mut batch = vec![first];
        if !batch[0].run(&tx, &conn, true) && !conn.is_autocommit() {
            // The first job failed without a savepoint: undo the transaction, which holds
            // nothing else, and start the next one for the jobs behind it.
            let _ = conn.execute_batch("ROLLBACK");
        }
        // When SQLite rolls back the transaction itself (a full disk, an I/O error), the jobs
        // run so far are undone: the batch stops, and no later job may run outside a
        // transaction, where each of its statements would commit on its own.
        let mut rolled_back = conn.is_autocommit();
        while !rolled_back && batch.len() < MAX_BATCH && started.elapsed() < BATCH_BUDGET {
            match rx.try_recv() {
                Ok(mut job) => {
                    job.run(&tx, &conn, false);
                    batch.push(job);
                    rolled_back = conn.is_autocommit();
                }
                Err(_) => break,
            }
        }
        // The counters the batch changed are written last, once each (see `counts`).
        let commit = if rolled_back {
            Err("the database rolled back the transaction after an error".to_string())
        } else {
            tx.flush_counts()
                .map_err(|e| e.to_string())
                .and_then(|()| conn.execute_batch("COMMIT").map_err(|e| e.to_string()))
                .inspect_err(|_| {
                    let _ = conn.execute_batch("ROLLBACK");
                })
        };
        // The transaction's context (its counter deltas, its specs) ends with it.
        drop(tx);
        let held = started.elapsed().as_micros() as u64;
        stats.max_hold_us.fetch_max(held, Ordering::Relaxed);
        stats.busy_us.fetch_add(held, Ordering::Relaxed);
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
        // Only a commit that changed rows wakes the dispatcher and the console: an idle
        // dispatcher's lease attempt commits nothing, and waking on it would spin the loop.
        if commit.is_ok() && conn.total_changes() != changes_before {
            dirty = true;
            commits.send_modify(|n| *n = n.wrapping_add(1));
        }
        for job in batch {
            job.finish(commit.clone());
        }
        if wal_pages.load(Ordering::Relaxed) >= CHECKPOINT_PAGES {
            wal_pages.store(0, Ordering::Relaxed);
            checkpoint(&mut conn);
        }
    }
}

/// Keeps the WAL short. A PASSIVE checkpoint never blocks readers or other writers, but it
/// only copies the WAL back; the WAL starts again from its beginning only when a write
/// transaction begins while it is wholly copied and no reader is using it. Readers that come
/// and go all the time (a console's polls, another process's writer retrying for the lock)
/// can keep that from ever happening: the WAL then grows without end, and every frame goes to
/// disk twice (a 1,000,000-line import next to the import bench's lock probe grew it to 7 GB
/// and wrote 26 GB, 6.2 times its baseline's time). So once a passive checkpoint has copied
/// a WAL longer than [`RESTART_PAGES`] completely (a reader that stopped the copy short has
/// usually moved on a millisecond later), a RESTART checkpoint, with nothing left to copy,
/// waits briefly for the readers of the WAL to move on, so the next commit starts it again.
/// It holds the write lock while it waits; a reader that does not finish soon is left alone
/// until the next time rather than waited for.
fn checkpoint(conn: &mut Connection) {
    let passive = |conn: &Connection| -> (i64, i64) {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .unwrap_or((0, 0))
    };
    let (mut log, mut copied) = passive(conn);
    if log < RESTART_PAGES {
        return;
    }
    for _ in 0..3 {
        if copied >= log {
            break;
        }
        thread::sleep(Duration::from_millis(1));
        (log, copied) = passive(conn);
    }
    if copied < log {
        return;
    }
    if conn
        .busy_handler(Some(|tries: i32| {
            thread::sleep(Duration::from_millis(1));
            tries < RESTART_WAIT_TRIES
        }))
        .is_ok()
    {
        let _ = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
    }
    // Back to the connection's usual patience for every other statement.
    let _ = conn.busy_handler(Some(super::wait_for_lock));
    // The restart held the write lock; without a gap the next queued job (an import's next
    // chunk) takes it straight back, and a writer of another process that waited through
    // the restart waits through that job too. Its busy handler polls every millisecond.
    thread::sleep(RESTART_GAP);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer on a new file holding one table `t (x INTEGER)`, and the file's path.
    fn writer_on_table(dir: &tempfile::TempDir) -> (Writer, std::path::PathBuf) {
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        (Writer::start(conn, Clock::system()).unwrap(), path)
    }

    /// The values committed to `t`, in order.
    fn committed(path: &std::path::Path) -> Vec<i64> {
        Connection::open(path)
            .unwrap()
            .prepare("SELECT x FROM t ORDER BY x")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Queues `f` as a transaction's first job that waits for the returned sender before it
    /// runs, so the caller can queue more jobs behind it first.
    fn gated_first_job<R: Send + 'static>(
        writer: &Writer,
        f: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> (mpsc::Sender<()>, oneshot::Receiver<Result<R>>) {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let rx = writer
            .submit_on_connection(move |_, conn| {
                go_rx.recv().unwrap();
                f(conn)
            })
            .unwrap();
        (go_tx, rx)
    }

    /// SQLite may roll back a whole transaction on an error (a full disk, I/O). A job queued
    /// behind the failing one must not run outside a transaction in that batch (its
    /// statements would commit on their own while its caller is told the batch failed): it
    /// runs in the next transaction, and its caller hears the truth.
    #[test]
    fn a_job_behind_a_transaction_sqlite_rolled_back_runs_in_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer_on_table(&dir);
        // The first job waits until the second is queued, then rolls the transaction back
        // the way SQLite does after SQLITE_FULL.
        let (go_tx, first) = gated_first_job(&writer, |conn| {
            conn.execute_batch("INSERT INTO t VALUES (1); ROLLBACK")?;
            Err::<(), _>(StoreError::Database("database or disk is full".into()))
        });
        let second = writer
            .submit_on_connection(|_, conn| Ok(conn.is_autocommit()))
            .unwrap();
        go_tx.send(()).unwrap();
        let err = first.blocking_recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        let autocommit = second
            .blocking_recv()
            .unwrap()
            .expect("the second job succeeds");
        assert!(!autocommit, "the second job ran outside a transaction");
        assert!(
            committed(&path).is_empty(),
            "the rolled-back job's row was committed"
        );
    }

    /// The first job of a transaction runs without a savepoint: when it fails, what it wrote
    /// is undone with the transaction, and the jobs queued behind it commit in the next one.
    #[test]
    fn a_failed_first_job_leaves_nothing_and_the_jobs_behind_it_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer_on_table(&dir);
        let (go_tx, first) = gated_first_job(&writer, |conn| {
            conn.execute_batch("INSERT INTO t VALUES (1)")?;
            Err::<(), _>(StoreError::Invalid("refused after writing".into()))
        });
        let second = writer
            .submit_on_connection(|_, conn| Ok(conn.execute("INSERT INTO t VALUES (2)", [])?))
            .unwrap();
        go_tx.send(()).unwrap();
        let err = first.blocking_recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        second
            .blocking_recv()
            .unwrap()
            .expect("the second job commits");
        assert_eq!(committed(&path), [2], "only the second job's row is kept");
    }

    /// Counter deltas are written once per transaction, and only those of jobs that
    /// succeeded: a failed job's savepoint takes its deltas with it.
    #[test]
    fn counters_keep_the_deltas_of_the_jobs_that_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE item_counts (workflow_id TEXT, stage_id TEXT, state TEXT, n INTEGER,
                 PRIMARY KEY (workflow_id, stage_id, state))",
        )
        .unwrap();
        let writer = Writer::start(conn, Clock::system()).unwrap();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let first = writer
            .submit_on_connection(move |c, _| {
                go_rx.recv().unwrap();
                c.counts().add_items("w", "s", "waiting", 2);
                Ok(())
            })
            .unwrap();
        let failing = writer
            .submit_on_connection(|c, _| {
                c.counts().add_items("w", "s", "waiting", 5);
                Err::<(), _>(StoreError::Invalid("refused".into()))
            })
            .unwrap();
        // A later job sees the figure, written or not yet (in the same transaction).
        let seen = writer
            .submit_on_connection(|c, conn| {
                let stored: i64 =
                    conn.query_row("SELECT COALESCE(SUM(n), 0) FROM item_counts", [], |r| {
                        r.get(0)
                    })?;
                Ok(stored + c.counts().unwritten_items_in_stage("w", "s"))
            })
            .unwrap();
        go_tx.send(()).unwrap();
        first.blocking_recv().unwrap().unwrap();
        assert!(failing.blocking_recv().unwrap().is_err());
        assert_eq!(seen.blocking_recv().unwrap().unwrap(), 2);
        let n: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT n FROM item_counts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    /// The writer checkpoints the WAL itself once a commit leaves 1000 pages in it, so the
    /// WAL is reused instead of growing with every write.
    #[test]
    fn the_wal_is_checkpointed_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let writer = Writer::start(conn, Clock::system()).unwrap();
        // 100 commits of ~200 KiB: ~5,000 pages written in all.
        for _ in 0..100 {
            writer
                .submit_on_connection(|_, conn| {
                    for _ in 0..50 {
                        conn.execute("INSERT INTO t VALUES (zeroblob(4000))", [])?;
                    }
                    Ok(())
                })
                .unwrap()
                .blocking_recv()
                .unwrap()
                .unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("w.db-wal"))
            .unwrap()
            .len();
        assert!(
            wal < 6 * 1024 * 1024,
            "the WAL grew to {wal} bytes: it was never checkpointed"
        );
    }
}
