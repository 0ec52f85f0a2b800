//! The counters of items and deliveries per (workflow, stage, state) (design §6), kept by the
//! store's own writes in the same transaction as the rows they count.
//!
//! Until migration 2 triggers kept them. A table with a trigger makes SQLite keep a statement
//! journal for every write to it, copying each page the statement touches: that doubled the
//! cost of an import and of every delivery state change. So each statement that inserts,
//! moves or deletes a counted row calls these instead; `check` compares the counters with the
//! rows and `check --repair` recomputes them.

use rusqlite::{Connection, params};

use super::Result;

/// Adds `delta` to the items counted in `(workflow, stage, state)`.
pub(super) fn add_items(
    conn: &Connection,
    workflow: &str,
    stage: &str,
    state: &str,
    delta: i64,
) -> Result<()> {
    add(conn, "item_counts", workflow, stage, state, delta)
}

/// Adds `delta` to the deliveries counted in `(workflow, stage, state)`.
pub(super) fn add_deliveries(
    conn: &Connection,
    workflow: &str,
    stage: &str,
    state: &str,
    delta: i64,
) -> Result<()> {
    add(conn, "delivery_counts", workflow, stage, state, delta)
}

/// A delivery of `(workflow, stage)` went from state `from` to `to`.
pub(super) fn delivery_moved(
    conn: &Connection,
    workflow: &str,
    stage: &str,
    from: &str,
    to: &str,
) -> Result<()> {
    if from != to {
        add_deliveries(conn, workflow, stage, from, -1)?;
        add_deliveries(conn, workflow, stage, to, 1)?;
    }
    Ok(())
}

fn add(
    conn: &Connection,
    table: &str,
    workflow: &str,
    stage: &str,
    state: &str,
    delta: i64,
) -> Result<()> {
    if delta == 0 {
        return Ok(());
    }
    conn.prepare_cached(&format!(
        "INSERT INTO {table} (workflow_id, stage_id, state, n) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO UPDATE SET n = n + excluded.n"
    ))?
    .execute(params![workflow, stage, state, delta])?;
    Ok(())
}
