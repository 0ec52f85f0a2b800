//! The operator actions on items and stages (issue 18): assign, advance (approve, reject),
//! pause and resume, audited like the delivery actions: one row per action, begun `running`
//! before the first change and finished with the outcome, how many it touched and which (up
//! to [`AUDIT_IDS`]; beyond, the row's filter and count say what was selected). The store
//! does the moves and writes no audit row for them: a store call made by code (a test, the
//! demo) is not an operator action.

use super::{ActionError, Actor, Audit, Outcome};
use crate::engine::Outcome as Decision;
use crate::model::{ItemId, StageId, WorkflowId};
use crate::store::{AUDIT_IDS, AssignTarget, Expect, ItemFilter, MoveReport, Store};
use crate::store::{ItemOrder, StoreError};

/// An assignment: items into a stage, by id (with the versions seen, for compare-and-set)
/// or every item of a stage.
#[derive(Clone, Debug)]
pub struct Assign {
    pub workflow: WorkflowId,
    pub to: StageId,
    pub target: AssignTarget,
    /// Refuse items that are not in this stage now (implied by `FromStage`).
    pub expect_stage: Option<StageId>,
}

impl Assign {
    /// The selection as flags, for the audit row of a whole stage's move.
    fn filter(&self) -> Option<String> {
        match &self.target {
            AssignTarget::FromStage { stage, limit } => Some(match limit {
                Some(n) => format!("--from-stage {stage} --limit {n}"),
                None => format!("--from-stage {stage}"),
            }),
            _ => None,
        }
    }
}

/// What an assignment would move (its dry run): how many, and which, in order.
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct AssignPlan {
    pub matched: usize,
    pub ids: Vec<ItemId>,
}

/// What an assignment would move, in order, without moving anything (`--dry-run`): the
/// items named, or those of the stage, oldest first, at most its limit.
pub fn assign_plan(store: &Store, a: &Assign) -> Result<AssignPlan, ActionError> {
    let ids = assign_ids(store, a)?;
    Ok(AssignPlan {
        matched: ids.len(),
        ids,
    })
}

fn assign_ids(store: &Store, a: &Assign) -> Result<Vec<ItemId>, ActionError> {
    let (stage, limit) = match &a.target {
        AssignTarget::Items(ids) => return Ok(ids.clone()),
        AssignTarget::Versions(ids) => return Ok(ids.iter().map(|(i, _)| i.clone()).collect()),
        AssignTarget::FromStage { stage, limit } => (stage, limit.unwrap_or(usize::MAX)),
    };
    let spec = store.workflow_spec(&a.workflow)?;
    for s in [stage, &a.to] {
        if spec.stage(s).is_none() {
            return Err(ActionError::Store(StoreError::NotFound {
                what: "stage",
                id: format!("{}/{s}", a.workflow),
            }));
        }
    }
    let filter = ItemFilter {
        workflow: Some(a.workflow.clone()),
        stage: Some(stage.clone()),
        order: ItemOrder::Waiting,
        ..ItemFilter::default()
    };
    let mut ids = Vec::new();
    let mut after = None;
    while ids.len() < limit {
        let want = (limit - ids.len()).min(5000);
        let page = store.list_items(&filter, after.as_ref(), want)?;
        let done = page.len() < want;
        after = page.last().map(|r| r.cursor.clone());
        ids.extend(page.into_iter().map(|r| r.id));
        if done {
            break;
        }
    }
    Ok(ids)
}

/// Assigns and audits it.
pub fn assign(store: &Store, actor: &Actor, a: Assign) -> Result<MoveReport, ActionError> {
    store.ensure_writable("assign")?;
    let matched = match &a.target {
        AssignTarget::Items(ids) => ids.len() as i64,
        AssignTarget::Versions(ids) => ids.len() as i64,
        AssignTarget::FromStage { stage, limit } => {
            let n = store
                .workflow_detail(&a.workflow)?
                .stage_list
                .iter()
                .find(|s| s.id == *stage)
                .map_or(0, |s| s.items);
            limit.map_or(n, |l| n.min(l as i64))
        }
    };
    let target = format!("stage {}/{}", a.workflow, a.to);
    let audit = Audit::begin(store, actor, "assign", target, a.filter(), matched)?;
    audited(store, audit, || {
        store.assign(
            &a.workflow,
            &a.to,
            &a.target,
            a.expect_stage.as_ref(),
            &actor.operator,
        )
    })
}

/// Which items an advance takes, and what each must still be.
#[derive(Clone, Debug)]
pub enum AdvanceWhat {
    /// These items, each refused unless `Expect` holds (the CLI, the API).
    Ids(Vec<ItemId>, Expect),
    /// Each item only at the version the operator saw (the console).
    Versions(Vec<(ItemId, i64)>),
}

/// Completes the items' annotate (or dataset) stage, or decides their review (`outcome`),
/// and audits it as `advance`, `approve` or `reject`: one row for all the items.
pub fn advance(
    store: &Store,
    actor: &Actor,
    what: AdvanceWhat,
    outcome: Option<Decision>,
) -> Result<MoveReport, ActionError> {
    let ids: Vec<ItemId> = match &what {
        AdvanceWhat::Ids(ids, _) => ids.clone(),
        AdvanceWhat::Versions(v) => v.iter().map(|(i, _)| i.clone()).collect(),
    };
    let ids = ids.as_slice();
    store.ensure_writable("advance")?;
    let action = match outcome {
        Some(Decision::Approve) => "approve",
        Some(Decision::Reject) => "reject",
        _ => "advance",
    };
    let target = match ids {
        [one] => format!("item {one}"),
        _ => format!("{} item(s)", ids.len()),
    };
    let audit = Audit::begin(store, actor, action, target, None, ids.len() as i64)?;
    audited(store, audit, || match &what {
        AdvanceWhat::Ids(ids, expect) => store.advance(ids, outcome, expect, &actor.operator),
        AdvanceWhat::Versions(v) => {
            let mut r = MoveReport::default();
            for (id, version) in v {
                let expect = Expect {
                    stage: None,
                    version: Some(*version),
                };
                r.merge(store.advance(
                    std::slice::from_ref(id),
                    outcome,
                    &expect,
                    &actor.operator,
                )?);
            }
            Ok(r)
        }
    })
}

/// Pauses or resumes a webhook stage and audits it; whether anything changed.
pub fn set_paused(
    store: &Store,
    actor: &Actor,
    workflow: &WorkflowId,
    stage: &StageId,
    pause: bool,
) -> Result<bool, ActionError> {
    let action = if pause { "pause" } else { "resume" };
    store.ensure_writable(action)?;
    let target = format!("stage {workflow}/{stage}");
    let audit = Audit::begin(store, actor, action, target, None, 1)?;
    match store.set_paused(workflow, stage, pause, &actor.operator) {
        Ok(changed) => {
            audit.finish(store, Outcome::Done, 1, &[])?;
            Ok(changed)
        }
        Err(e) => {
            audit.finish(store, Outcome::Failed, 0, &[])?;
            Err(e.into())
        }
    }
}

/// Runs a move under one audit row: begun before it, finished with how it ended and the
/// items it moved (the store keeps their ids up to one more than the audit bound).
fn audited(
    store: &Store,
    audit: Audit,
    act: impl FnOnce() -> Result<MoveReport, StoreError>,
) -> Result<MoveReport, ActionError> {
    let r = match act() {
        Ok(r) => r,
        Err(e) => {
            audit.finish(store, Outcome::Failed, 0, &[])?;
            return Err(e.into());
        }
    };
    let outcome = match (r.refused.is_empty(), r.moved) {
        (true, _) => Outcome::Done,
        (false, 0) => Outcome::Refused,
        (false, _) => Outcome::PartlyRefused,
    };
    // One more than the bound: the row keeps the filter and the count instead of ids.
    debug_assert!(r.moved_ids.len() <= AUDIT_IDS + 1);
    let ids: Vec<String> = r.moved_ids.iter().map(|i| i.to_string()).collect();
    audit.finish(store, outcome, r.moved, &ids)?;
    Ok(r)
}
