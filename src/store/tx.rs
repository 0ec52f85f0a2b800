//! The context of one write transaction: what every write job of the store runs with.
//!
//! A [`Tx`] carries the backend's row operations, the job's `now` (read once from the store's [`Clock`] when
//! the job starts, so every row a job writes carries one time), the workflow specs read in
//! this transaction, and the counter deltas of its jobs ([`super::counts`]). The writer makes
//! one per transaction, from `BEGIN` to `COMMIT` or `ROLLBACK`, and hands it to each job in
//! turn; nothing about a transaction lives in thread-locals or globals.
//!
//! The spec cache is sound because no other connection can write while the transaction holds
//! the write lock: a workflow's revision changes only through this transaction's own apply,
//! which forgets the cache ([`Tx::forget_specs`]), and a job that fails forgets it too (it may
//! have read a revision that is gone now).
//!
//! A write job reaches its rows only through [`Tx::rows`], the backend's row operations
//! ([`super::seam::Rows`]): no write path of the store runs SQL of its own.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::Result;
use super::counts::Deltas;
use super::seam::Rows;
use crate::model::WorkflowId;
use crate::workflow::Workflow;

/// The store's time source, in milliseconds since the Unix epoch. The system clock; for tests
/// of rules that need time to pass (lease expiry, due retries, pruning by age), the system
/// clock moved forward by an offset the test controls; for tests of what happens within one
/// millisecond, a manual clock that moves only when told.
///
/// On a server database a transaction's times are the server's clock (design §7): the writer
/// measures the server's clock against this host's and moves the clock by the difference
/// ([`Clock::skewed`]). A manual clock is never moved that way.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Option<Arc<AtomicI64>>,
    /// Added to this host's clock: a server database's clock minus this host's.
    skew_ms: i64,
    /// The time is the offset alone.
    manual: bool,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The system clock plus an offset that starts at zero and grows with [`Clock::advance`].
    /// Clones share the offset.
    pub fn adjustable() -> Clock {
        Clock {
            offset_ms: Some(Arc::new(AtomicI64::new(0))),
            ..Clock::default()
        }
    }

    /// A clock that reads `at_ms` until [`Clock::advance`] moves it. Clones share it.
    pub fn manual(at_ms: i64) -> Clock {
        Clock {
            offset_ms: Some(Arc::new(AtomicI64::new(at_ms))),
            manual: true,
            ..Clock::default()
        }
    }

    /// This clock, moved by `skew_ms` (a server's clock minus this host's system clock):
    /// the times of a transaction on a server database are the server's.
    pub(crate) fn skewed(&self, skew_ms: i64) -> Clock {
        Clock {
            skew_ms: if self.manual { 0 } else { skew_ms },
            ..self.clone()
        }
    }

    /// Moves an adjustable or manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(o) = &self.offset_ms {
            o.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
        }
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        let offset = self
            .offset_ms
            .as_ref()
            .map_or(0, |o| o.load(Ordering::Relaxed));
        if self.manual {
            return offset;
        }
        chrono::Utc::now().timestamp_millis() + offset + self.skew_ms
    }
}

/// Where the ±20 % jitter of retry delays comes from (design §6, "Retry timing").
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Jitter {
    /// Drawn uniformly from [-1, 1] for each recorded attempt.
    #[default]
    Random,
    /// Always this value (clamped to [-1, 1]): for tests that check exact due times.
    Fixed(f64),
}

impl Jitter {
    /// The jitter of one recorded attempt, in [-1, 1].
    pub(crate) fn draw(self) -> f64 {
        match self {
            Jitter::Random => fastrand::f64() * 2.0 - 1.0,
            Jitter::Fixed(j) => j.clamp(-1.0, 1.0),
        }
    }
}

/// Per workflow id: its current revision and spec.
type CurrentSpecs = HashMap<String, (i64, Arc<Workflow>)>;

/// One write transaction's context (see the module's documentation).
pub(crate) struct Tx<'c> {
    rows: &'c dyn Rows,
    clock: Clock,
    now: Cell<i64>,
    specs: RefCell<CurrentSpecs>,
    counts: RefCell<Deltas>,
}

impl<'c> Tx<'c> {
    /// The context of a transaction just begun, whose rows are `rows`.
    pub(super) fn new(rows: &'c dyn Rows, clock: Clock) -> Tx<'c> {
        let now = Cell::new(clock.now_ms());
        Tx {
            rows,
            clock,
            now,
            specs: RefCell::default(),
            counts: RefCell::default(),
        }
    }

    /// The backend's row operations in this transaction.
    pub(crate) fn rows(&self) -> &'c dyn Rows {
        self.rows
    }

    /// A job starts: it gets its own `now`.
    pub(super) fn start_job(&self) {
        self.now.set(self.clock.now_ms());
    }

    /// A job ended: its counter deltas join the transaction's when it succeeded; when it
    /// failed they go with it, and so does the spec cache.
    pub(super) fn end_job(&self, succeeded: bool) {
        self.counts.borrow_mut().end_job(succeeded);
        if !succeeded {
            self.forget_specs();
        }
    }

    /// The time of the running job, in ms since the epoch.
    pub(crate) fn now(&self) -> i64 {
        self.now.get()
    }

    /// The transaction's counter deltas.
    pub(super) fn counts(&self) -> RefMut<'_, Deltas> {
        self.counts.borrow_mut()
    }

    /// The current spec and revision of a workflow, read once per transaction.
    pub(crate) fn spec(&self, id: &WorkflowId) -> Result<(Arc<Workflow>, i64)> {
        if let Some((rev, spec)) = self.specs.borrow().get(id.as_str()) {
            return Ok((spec.clone(), *rev));
        }
        let found = super::workflows::spec_in_tx(self.rows, id)?;
        self.specs
            .borrow_mut()
            .insert(id.as_str().to_string(), (found.1, found.0.clone()));
        Ok(found)
    }

    /// Forgets the specs read in this transaction (a revision was applied, or a job failed).
    pub(super) fn forget_specs(&self) {
        self.specs.borrow_mut().clear();
    }

    /// Writes the transaction's counter deltas, just before `COMMIT`.
    pub(super) fn flush_counts(&self) -> Result<()> {
        self.counts.borrow_mut().flush(self.rows)
    }
}
