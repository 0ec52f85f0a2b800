//! Figures read from the counter rows (never `COUNT(*)`), for `/metrics` and the console:
//! deliveries per stage and state, the paused stages, and the stages' flow control.

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

    /// Live stages held now or running at a reduced concurrency (issue 21).
    pub fn stage_flows(&self) -> Result<Vec<StageFlowNow>> {
        let now = self.now_ms();
        let rows = self.read(|r| r.stage_flows(now))?;
        Ok(rows
            .into_iter()
            .map(|(workflow, stage, f)| StageFlowNow {
                workflow,
                stage,
                held_until: f.held_until.filter(|u| *u > now).map(super::to_time),
                held_reason: f
                    .held_reason
                    .filter(|_| f.held_until.is_some_and(|u| u > now)),
                concurrency_limit: f.concurrency_limit.map(|l| l.max(1) as u32),
            })
            .collect())
    }
}

/// A stage's flow control as of now: its hold and its adaptive concurrency.
#[derive(Clone, Debug, PartialEq)]
pub struct StageFlowNow {
    pub workflow: WorkflowId,
    pub stage: StageId,
    pub held_until: Option<chrono::DateTime<chrono::Utc>>,
    pub held_reason: Option<String>,
    pub concurrency_limit: Option<u32>,
}
