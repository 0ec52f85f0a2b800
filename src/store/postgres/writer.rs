//! The writers of a process on PostgreSQL: a few threads, each with its own connection, that
//! run the store's write jobs from one queue, each grouping the jobs waiting into one
//! transaction of its own (group commit) as SQLite's writer does, each job after the first in
//! its own savepoint.
//!
//! Each transaction is READ COMMITTED with explicit row locks where rules need them
//! (ARCHITECTURE.md, "PostgreSQL"), commits with `synchronous_commit = on`, and ends with a
//! notification that PostgreSQL delivers to every listener at commit. Replies go out only after
//! the commit. The transaction's `now` is the database server's clock (design §7), read when
//! the transaction begins.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::Conn;
use super::rows::PgRows;
use crate::store::seam::WriteJob;
use crate::store::tx::{Clock, Tx};
use crate::store::{Result, StoreError};

/// How long one group commit may keep taking queued jobs before it commits.
const BATCH_BUDGET: Duration = Duration::from_millis(20);
const MAX_BATCH: usize = 1024;

/// The channel every change is announced on.
pub(crate) const CHANNEL: &str = "hookops";

struct Queued {
    job: WriteJob,
    reply: oneshot::Sender<Result<()>>,
}

pub(crate) struct Writer {
    jobs: mpsc::Sender<Queued>,
    commits: watch::Receiver<u64>,
    pub(crate) stats: Arc<Stats>,
}

/// Figures about the writer's transactions.
#[derive(Default)]
pub(crate) struct Stats {
    pub max_hold_us: AtomicU64,
    pub transactions: AtomicU64,
    pub jobs: AtomicU64,
    pub busy_us: AtomicU64,
}

impl Writer {
    /// One writer thread per connection in `conns`, all taking jobs from one queue: each
    /// groups what it finds waiting into one transaction of its own, so a second transaction
    /// is under way while the first waits for the server (its statements are round trips, not
    /// calls into a library as on SQLite). Row locks order what two of them touch.
    pub(crate) fn start(conns: Vec<Conn>, clock: Clock) -> Result<Writer> {
        let (jobs, rx) = mpsc::channel::<Queued>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let (commit_tx, commits) = watch::channel(0u64);
        let commit_tx = Arc::new(commit_tx);
        let stats = Arc::new(Stats::default());
        for conn in conns {
            let (clock, rx, commit_tx, stats) =
                (clock.clone(), rx.clone(), commit_tx.clone(), stats.clone());
            thread::Builder::new()
                .name("hookops-pg-writer".into())
                .spawn(move || writer_loop(conn, &clock, &rx, &commit_tx, &stats))
                .map_err(|e| {
                    StoreError::Database(format!("cannot start the writer thread: {e}"))
                })?;
        }
        Ok(Writer {
            jobs,
            commits,
            stats,
        })
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    pub(crate) fn submit(&self, job: WriteJob) -> Result<oneshot::Receiver<Result<()>>> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Queued { job, reply })
            .map_err(|_| StoreError::WriterGone)?;
        Ok(rx)
    }
}

/// Runs one job; in a savepoint unless it is the first of its transaction. Returns its result.
fn run(tx: &Tx<'_>, conn: &Conn, job: WriteJob, alone: bool) -> Result<()> {
    tx.start_job();
    if alone {
        let result = job(tx);
        tx.end_job(result.is_ok());
        return result;
    }
    conn.batch("SAVEPOINT job")?;
    let result = job(tx).and_then(|()| conn.batch("RELEASE job"));
    tx.end_job(result.is_ok());
    if result.is_err() {
        conn.batch("ROLLBACK TO job; RELEASE job")?;
    }
    result
}

/// Begins a transaction and returns the server's clock minus this host's, in ms (the
/// transaction's times are the server's), in one round trip.
fn begin(conn: &Conn) -> Result<i64> {
    let host = Clock::system().now_ms();
    let server = conn.simple_value(
        "BEGIN ISOLATION LEVEL READ COMMITTED;
         SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    )?;
    server
        .and_then(|v| v.parse::<i64>().ok())
        .map(|server| server - host)
        .ok_or_else(|| StoreError::Database("the server did not say its time".into()))
}

/// Commits, announcing the transaction's changes (delivered to every listener at the commit)
/// when it wrote anything, in one round trip. A transaction gets an id only when it writes:
/// an idle dispatcher's lease attempt, which changes nothing, must not wake every other
/// process. Returns whether it wrote.
fn commit(conn: &Conn) -> Result<bool> {
    let wrote = conn.simple_value(&format!(
        "SELECT pg_current_xact_id_if_assigned() IS NOT NULL,
                CASE WHEN pg_current_xact_id_if_assigned() IS NOT NULL
                     THEN pg_notify('{CHANNEL}', '') END;
         COMMIT"
    ))?;
    Ok(wrote.as_deref() == Some("t"))
}

/// The next job. Waiting (`wait`), a writer holds the queue until a job comes, so one idle
/// writer waits on the channel and the others on the queue. Not waiting, it takes a job
/// already queued; a queue held by a waiting writer is empty.
fn next_job(rx: &std::sync::Mutex<mpsc::Receiver<Queued>>, wait: bool) -> Option<Queued> {
    if wait {
        rx.lock().ok()?.recv().ok()
    } else {
        rx.try_lock().ok()?.try_recv().ok()
    }
}

fn writer_loop(
    conn: Conn,
    clock: &Clock,
    rx: &std::sync::Mutex<mpsc::Receiver<Queued>>,
    commits: &watch::Sender<u64>,
    stats: &Stats,
) {
    while let Some(first) = next_job(rx, true) {
        let started = Instant::now();
        let skew = match begin(&conn) {
            Ok(s) => s,
            Err(e) => {
                let _ = conn.batch("ROLLBACK");
                let _ = first.reply.send(Err(e));
                continue;
            }
        };
        let rows = PgRows { conn: &conn };
        let tx = Tx::new(&rows, clock.skewed(skew));
        let mut results: Vec<(oneshot::Sender<Result<()>>, Result<()>)> = Vec::new();
        let r = run(&tx, &conn, first.job, true);
        let mut failed_alone = false;
        if r.is_err() {
            // The first job ran without a savepoint: undo the transaction, which holds
            // nothing else, and start the next one for the jobs behind it.
            let _ = conn.batch("ROLLBACK");
            failed_alone = true;
        }
        results.push((first.reply, r));
        if !failed_alone {
            while results.len() < MAX_BATCH && started.elapsed() < BATCH_BUDGET {
                match next_job(rx, false) {
                    Some(q) => {
                        let r = run(&tx, &conn, q.job, false);
                        results.push((q.reply, r));
                    }
                    None => break,
                }
            }
        }
        let mut wrote = false;
        let commit: std::result::Result<(), String> = if failed_alone {
            Ok(())
        } else {
            tx.flush_counts()
                .and_then(|()| commit(&conn))
                .map(|w| wrote = w)
                .map_err(|e| e.to_string())
                .inspect_err(|_| {
                    let _ = conn.batch("ROLLBACK");
                })
        };
        drop(tx);
        let held = started.elapsed().as_micros() as u64;
        stats.max_hold_us.fetch_max(held, Ordering::Relaxed);
        stats.busy_us.fetch_add(held, Ordering::Relaxed);
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats
            .jobs
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        // Only a commit that changed rows wakes this process's dispatcher and console.
        if commit.is_ok() && wrote {
            commits.send_modify(|n| *n = n.wrapping_add(1));
        }
        for (reply, r) in results {
            let r = match (&commit, r) {
                (_, Err(e)) => Err(e),
                (Err(e), Ok(())) => Err(StoreError::Database(e.clone())),
                (Ok(()), Ok(())) => Ok(()),
            };
            let _ = reply.send(r);
        }
    }
}
