//! The counters of items and deliveries per (workflow, stage, state) (design §6), kept by the
//! store's own writes in the same transaction as the rows they count.
//!
//! Until migration 2 triggers kept them. A table with a trigger makes SQLite keep a statement
//! journal for every write to it, copying each page the statement touches: that doubled the
//! cost of an import and of every delivery state change. Now each write that inserts, moves
//! or deletes a counted row adds a delta here; the writer thread keeps the deltas of the job
//! it is running apart (a job that fails is undone alone, its deltas with it), adds those of
//! each job that succeeded to the transaction's, and writes them just before `COMMIT`: one
//! upsert per counter a transaction changed, not one per row. `check` compares the counters
//! with the rows and `check --repair` recomputes them.
//!
//! The deltas live in the transaction's context ([`super::tx::Tx`]), which the writer thread
//! owns from `BEGIN` to the end of the transaction.

use std::collections::HashMap;

use super::Result;

use super::seam::{Counted, Rows};

type Key = (Counted, String, String, String);

/// The counter changes of one transaction: those of the running job, and those of the jobs
/// before it that succeeded.
#[derive(Default)]
pub(super) struct Deltas {
    /// The running job's deltas.
    job: HashMap<Key, i64>,
    /// The running job recomputed every counter from the rows (`check --repair`).
    job_recomputed: bool,
    /// The deltas of this transaction's jobs that succeeded, not yet written.
    tx: HashMap<Key, i64>,
}

impl Deltas {
    fn add(&mut self, table: Counted, workflow: &str, stage: &str, state: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        *self
            .job
            .entry((table, workflow.into(), stage.into(), state.into()))
            .or_default() += delta;
    }

    /// Adds `delta` to the items counted in `(workflow, stage, state)`.
    pub(super) fn add_items(&mut self, workflow: &str, stage: &str, state: &str, delta: i64) {
        self.add(Counted::Items, workflow, stage, state, delta);
    }

    /// Adds `delta` to the deliveries counted in `(workflow, stage, state)`.
    pub(super) fn add_deliveries(&mut self, workflow: &str, stage: &str, state: &str, delta: i64) {
        self.add(Counted::Deliveries, workflow, stage, state, delta);
    }

    /// A delivery of `(workflow, stage)` went from state `from` to `to`.
    pub(super) fn delivery_moved(&mut self, workflow: &str, stage: &str, from: &str, to: &str) {
        if from != to {
            self.add_deliveries(workflow, stage, from, -1);
            self.add_deliveries(workflow, stage, to, 1);
        }
    }

    /// What this transaction has added to the deliveries counted in `(workflow, stage,
    /// state)` and not yet written: a job that reads a counter adds this to the stored figure.
    pub(super) fn unwritten_deliveries(&self, workflow: &str, stage: &str, state: &str) -> i64 {
        let key = (
            Counted::Deliveries,
            workflow.into(),
            stage.into(),
            state.into(),
        );
        self.job.get(&key).unwrap_or(&0) + self.tx.get(&key).unwrap_or(&0)
    }

    /// Like [`Deltas::unwritten_deliveries`], for the items of a stage in any state.
    pub(super) fn unwritten_items_in_stage(&self, workflow: &str, stage: &str) -> i64 {
        self.job
            .iter()
            .chain(self.tx.iter())
            .filter(|((t, w, s, _), _)| *t == Counted::Items && w == workflow && s == stage)
            .map(|(_, n)| n)
            .sum()
    }

    /// Rewrites every counter from the rows, in the caller's job (`check --repair`, and rows
    /// written with plain SQL). When the job succeeds, the deltas before it are already in
    /// the figures.
    pub(super) fn recompute(&mut self, rows: &dyn Rows) -> Result<()> {
        rows.recount_all()?;
        self.job.clear();
        self.job_recomputed = true;
        Ok(())
    }

    /// The running job ended: its deltas join the transaction's when it succeeded, and are
    /// dropped with its savepoint when it failed.
    pub(super) fn end_job(&mut self, succeeded: bool) {
        let job = std::mem::take(&mut self.job);
        let recomputed = std::mem::take(&mut self.job_recomputed);
        if !succeeded {
            return;
        }
        if recomputed {
            self.tx.clear();
        }
        for (k, n) in job {
            *self.tx.entry(k).or_default() += n;
        }
    }

    /// Writes the transaction's deltas; the writer calls this just before `COMMIT`.
    pub(super) fn flush(&mut self, rows: &dyn Rows) -> Result<()> {
        // In one fixed order: two processes writing the same counter rows on a server
        // database then take their row locks in the same order and cannot deadlock.
        let mut deltas: Vec<_> = std::mem::take(&mut self.tx).into_iter().collect();
        deltas.sort();
        for ((table, workflow, stage, state), n) in deltas {
            if n != 0 {
                rows.add_to_count(table, &workflow, &stage, &state, n)?;
            }
        }
        Ok(())
    }
}
