//! Figures read from the counter rows (never `COUNT(*)`), for `/metrics` and the console:
//! deliveries per stage and state, and the paused stages.

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
        self.read(|r| r.delivery_counts())
    }

    /// Live stages that are paused, with why.
    pub fn paused_stages(&self) -> Result<Vec<(WorkflowId, StageId, Option<String>)>> {
        self.read(|r| r.paused_stages())
    }
}
