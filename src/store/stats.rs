//! Figures read from the counter rows (never `COUNT(*)`), for `/metrics` and the console:
//! deliveries per stage and state, and the paused stages.

use super::items::enum_col;
use super::{Result, Store};
use crate::model::{DeliveryState, StageId, WorkflowId};

/// Deliveries of one (workflow, stage) in one state.
#[derive(Clone, Debug)]
pub struct DeliveryCount {
    pub workflow: WorkflowId,
    /// A stage id, or a `[[notify]]` pseudo-stage (`notify:N`).
    pub stage: StageId,
    pub state: DeliveryState,
    pub n: i64,
}

impl Store {
    /// Every non-zero delivery counter row.
    pub fn delivery_counts(&self) -> Result<Vec<DeliveryCount>> {
        self.read(|c| {
            let rows = c
                .prepare_cached(
                    "SELECT workflow_id, stage_id, state, n FROM delivery_counts WHERE n != 0
                     ORDER BY workflow_id, stage_id, state",
                )?
                .query_map([], |r| {
                    Ok(DeliveryCount {
                        workflow: WorkflowId(r.get(0)?),
                        stage: StageId(r.get(1)?),
                        state: enum_col(r, 2)?,
                        n: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Live stages that are paused, with why.
    pub fn paused_stages(&self) -> Result<Vec<(WorkflowId, StageId, Option<String>)>> {
        self.read(|c| {
            let rows = c
                .prepare_cached(
                    "SELECT workflow_id, id, paused_reason FROM stages
                     WHERE paused = 1 AND retired_at IS NULL ORDER BY workflow_id, id",
                )?
                .query_map([], |r| {
                    Ok((WorkflowId(r.get(0)?), StageId(r.get(1)?), r.get(2)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }
}
