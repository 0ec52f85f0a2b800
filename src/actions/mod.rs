//! The operator actions on deliveries (issue 18), one implementation for the console, the CLI
//! and the API: select by the one [`DeliveryFilter`] (or by ids), count first ([`plan`]), then
//! act in chunks ([`execute`]) with progress and a stop flag, and write one audit row that
//! names the operator, the front end, the outcome and the ids touched. Front ends parse their
//! input into these types and render what comes back; they never sequence store calls
//! themselves.
//!
//! Invariants:
//! - Every bulk action selects in SQL over the whole store (`Store::failed_deliveries`,
//!   `Store::open_deliveries`), never over a page a front end happens to hold.
//! - A chunk is one store call: what a stopped action did stays done, and nothing is
//!   half-done (each re-fire or cancel is its own all-or-nothing change).
//! - Refusals are typed ([`RefusalKind`] per id, [`ActionError`] for the whole action), so
//!   the API picks a status and the CLI an exit code without reading words.
//! - The audit row is written before the first change (outcome `running`) and finished after
//!   the last, so an action that dies midway still left a row.

pub mod admin;
pub mod filter;
pub mod items;

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

pub use filter::{BadFilter, FilterParams, parse_time};

use crate::dispatch::send_manual;
use crate::model::{AttemptEvent, DeliveryId, DeliveryState, ItemId, RefusalKind, StageId};
use crate::model::{StageKind, WorkflowId};
use crate::store::{
    AuditStart, DeliveryFilter, DeliveryRefusal, DeliverySummary, Store, StoreError,
};

/// Who acts: the operator's name (`--operator`/`$USER`, or the API token's name) and the
/// front end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub operator: String,
    pub via: Via,
}

/// The front end an action came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    Console,
    Cli,
    /// The API, with the name of the token used.
    Api {
        token: String,
    },
}

impl Via {
    /// As audit rows record it: `console`, `cli`, `api:NAME`.
    pub fn as_text(&self) -> String {
        match self {
            Via::Console => "console".into(),
            Via::Cli => "cli".into(),
            Via::Api { token } => format!("api:{token}"),
        }
    }
}

impl Actor {
    pub fn new(operator: impl Into<String>, via: Via) -> Actor {
        Actor {
            operator: operator.into(),
            via,
        }
    }
}

/// An action's audit row, begun (outcome `running`) before the action changes anything, so
/// an action that dies midway still left a row, and finished with how it ended.
#[must_use = "an audit row is finished with its outcome"]
pub struct Audit {
    id: i64,
}

impl Audit {
    /// Writes the row: who, from which front end, what on what, and how many it selected.
    pub fn begin(
        store: &Store,
        actor: &Actor,
        action: &str,
        target: String,
        filter: Option<String>,
        matched: i64,
    ) -> Result<Audit, StoreError> {
        let id = store.audit_begin(AuditStart {
            operator: actor.operator.clone(),
            via: actor.via.as_text(),
            action: action.into(),
            target,
            filter,
            matched,
        })?;
        Ok(Audit { id })
    }

    /// The row's number (`hookops audit show ID`).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Ends the row with the outcome, how many were touched and which (kept when at most
    /// [`crate::store::AUDIT_IDS`]; beyond, the filter and the count say what was selected).
    pub fn finish(
        self,
        store: &Store,
        outcome: Outcome,
        count: i64,
        ids: &[String],
    ) -> Result<(), StoreError> {
        store.audit_finish(self.id, outcome.as_str(), count, ids)
    }
}

/// A bulk action on deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BulkAction {
    /// The item goes back into the delivery's stage and gets a new delivery.
    Refire,
    /// The frozen bytes are sent again as a manual attempt; nothing moves.
    Replay,
    /// Open deliveries are cancelled; their items route along `on_failure`.
    Cancel,
}

impl BulkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Refire => "refire",
            BulkAction::Replay => "replay",
            BulkAction::Cancel => "cancel",
        }
    }

    /// The verb as an operator reads it.
    pub fn verb(self) -> &'static str {
        match self {
            BulkAction::Refire => "re-fire",
            BulkAction::Replay => "replay",
            BulkAction::Cancel => "cancel",
        }
    }

    pub fn past(self) -> &'static str {
        match self {
            BulkAction::Refire => "re-fired",
            BulkAction::Replay => "replayed",
            BulkAction::Cancel => "cancelled",
        }
    }

    /// What a filter selects for it: failed deliveries (the latest of each item) for re-fire
    /// and replay, open ones for cancel.
    pub fn selects(self) -> &'static str {
        match self {
            BulkAction::Refire | BulkAction::Replay => "failed",
            BulkAction::Cancel => "open",
        }
    }
}

/// What a bulk action acts on.
#[derive(Clone, Debug)]
pub enum Selection {
    /// These deliveries, in this order.
    Ids(Vec<DeliveryId>),
    /// Every delivery the filter selects for the action (at most `limit`, oldest first).
    Filter {
        filter: DeliveryFilter,
        limit: Option<usize>,
    },
    /// An item's latest `stage.webhook` delivery (in that workflow and stage when given),
    /// whatever its state: `refire --item ID`.
    ItemLatest {
        item: ItemId,
        workflow: Option<WorkflowId>,
        stage: Option<StageId>,
    },
}

/// Why an action was refused as a whole, before anything was done.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The request itself is wrong (exit 2; HTTP 400).
    #[error("{0}")]
    BadInput(String),
    /// The store refused or failed (its own kinds: not found, read-only, …).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A bulk action counted before it acts: what the selection matched.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Plan {
    pub action: BulkAction,
    /// How many deliveries it will act on.
    pub matched: usize,
    /// The filter as flags (absent when ids were given).
    pub filter: Option<String>,
    pub ids: Vec<DeliveryId>,
}

/// Deliveries handed to the store at once, between progress reports and stop checks.
pub const CHUNK: usize = 500;

/// The pause between two chunks, so that other processes get the write lock.
const CHUNK_GAP: std::time::Duration = std::time::Duration::from_millis(2);

/// Counts what `selection` matches for `action` and checks that it may be done at all: a
/// filter with a stage needs its workflow (design §6: a mutation names the workflow), and
/// names a workflow and stage that exist; re-fire and replay act on failed deliveries only.
pub fn plan(store: &Store, action: BulkAction, selection: Selection) -> Result<Plan, ActionError> {
    match selection {
        Selection::Ids(ids) => {
            if ids.is_empty() {
                return Err(ActionError::BadInput(format!(
                    "name the deliveries to {}, or select them with a filter",
                    action.verb()
                )));
            }
            Ok(Plan {
                action,
                matched: ids.len(),
                filter: None,
                ids,
            })
        }
        Selection::ItemLatest {
            item,
            workflow,
            stage,
        } => Ok(Plan {
            action,
            matched: 1,
            filter: None,
            ids: vec![item_latest(store, item, workflow, stage)?.id],
        }),
        Selection::Filter { filter, limit } => {
            check_scope(store, &filter)?;
            let ids = match action {
                BulkAction::Refire | BulkAction::Replay => {
                    if filter.state.is_some_and(|s| s != DeliveryState::Failed) {
                        return Err(ActionError::BadInput(format!(
                            "{} by filter acts on failed deliveries; leave the state out or say failed",
                            action.verb()
                        )));
                    }
                    store.failed_deliveries(&filter, limit)?
                }
                BulkAction::Cancel => {
                    if filter.is_empty() {
                        return Err(ActionError::BadInput(
                            "name the deliveries to cancel, or select them with filters such as a state and a workflow".into(),
                        ));
                    }
                    store.open_deliveries(&filter, limit).map_err(|e| match e {
                        StoreError::Invalid(m) => ActionError::BadInput(m),
                        e => ActionError::Store(e),
                    })?
                }
            };
            Ok(Plan {
                action,
                matched: ids.len(),
                filter: Some(filter.as_flags()),
                ids,
            })
        }
    }
}

/// An item's latest `stage.webhook` delivery (in that workflow and stage when given),
/// whatever its state: what `--item ID` names for re-fire, cancel and test.
fn item_latest(
    store: &Store,
    item: ItemId,
    workflow: Option<WorkflowId>,
    stage: Option<StageId>,
) -> Result<DeliverySummary, ActionError> {
    let f = DeliveryFilter {
        item: Some(item.clone()),
        workflow,
        stage,
        event: Some(crate::model::EventType::StageWebhook),
        ..DeliveryFilter::default()
    };
    let latest = store.list_deliveries(&f, None, 1)?;
    let Some((d, _)) = latest.into_iter().next() else {
        return Err(ActionError::Store(StoreError::NotFound {
            what: "stage delivery of item",
            id: item.to_string(),
        }));
    };
    Ok(d)
}

/// A stage without its workflow is ambiguous for an action; an unknown workflow or stage is
/// a refusal, not "nothing matches".
fn check_scope(store: &Store, f: &DeliveryFilter) -> Result<(), ActionError> {
    let Some(workflow) = &f.workflow else {
        if f.stage.is_some() {
            return Err(ActionError::BadInput(
                "a stage needs its workflow for an action (stage ids belong to a workflow)".into(),
            ));
        }
        return Ok(());
    };
    let spec = store.workflow_spec(workflow)?;
    if let Some(stage) = &f.stage
        && spec.stage(stage).is_none()
        && crate::workflow::notify_index(stage).is_none()
    {
        return Err(ActionError::Store(StoreError::NotFound {
            what: "stage",
            id: format!("{workflow}/{stage}"),
        }));
    }
    Ok(())
}

/// How an action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every selected delivery was acted on.
    Done,
    /// Some were refused (each with its kind and reason).
    PartlyRefused,
    /// All were refused.
    Refused,
    /// Stopped before the end (a cancelled API job); what was done stays done.
    Stopped,
    /// The store failed midway; what was done stays done.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::PartlyRefused => "partly_refused",
            Outcome::Refused => "refused",
            Outcome::Stopped => "stopped",
            Outcome::Failed => "failed",
        }
    }
}

/// What a bulk action did.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct BulkReport {
    pub action: BulkAction,
    pub outcome: Outcome,
    /// How many the selection matched.
    pub matched: usize,
    /// How many were handled so far (acted on or refused).
    pub processed: usize,
    /// How many were re-fired, replayed or cancelled.
    pub acted: usize,
    pub refused: Vec<DeliveryRefusal>,
    /// Re-fire: the new deliveries.
    pub created: Vec<DeliveryId>,
    /// Cancel: items that routed along `on_failure`, and where to.
    pub routed: Vec<(ItemId, StageId)>,
    /// Replay: the attempts sent.
    pub attempts: Vec<AttemptEvent>,
    /// The audit row that records it (`hookops audit show ID`).
    pub audit_id: i64,
    /// Why it ended early, when the store failed midway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How [`execute`] reports and may be stopped.
pub struct Control<'a> {
    /// Checked between chunks: once true, no further chunk starts.
    pub stop: Option<&'a AtomicBool>,
    /// Hears (processed, matched) after each chunk.
    pub progress: &'a mut dyn FnMut(usize, usize),
    /// Replays are sent on this runtime (the caller is on a blocking thread, not a task);
    /// without one a replay is refused as a whole.
    pub rt: Option<&'a tokio::runtime::Handle>,
    /// The largest body a replay may send.
    pub max_send_body: usize,
}

/// Acts on what `plan` selected, in chunks, and audits it (one row, finished at the end).
pub fn execute(
    store: &Store,
    actor: &Actor,
    plan: Plan,
    ctl: Control<'_>,
) -> Result<BulkReport, ActionError> {
    store.ensure_writable(plan.action.as_str())?;
    if plan.action == BulkAction::Replay && ctl.rt.is_none() {
        return Err(ActionError::BadInput(
            "a replay sends HTTP and needs the async runtime here".into(),
        ));
    }
    let target = match (&plan.filter, plan.ids.as_slice()) {
        (None, [one]) => format!("delivery {one}"),
        (None, ids) => format!("{} delivery(ies)", ids.len()),
        (Some(_), _) => format!("{} {} delivery(ies)", plan.matched, plan.action.selects()),
    };
    let audit = Audit::begin(
        store,
        actor,
        plan.action.as_str(),
        target,
        plan.filter.clone(),
        plan.matched as i64,
    )?;
    let audit_id = audit.id();
    let mut report = BulkReport {
        action: plan.action,
        outcome: Outcome::Done,
        matched: plan.matched,
        processed: 0,
        acted: 0,
        refused: Vec::new(),
        created: Vec::new(),
        routed: Vec::new(),
        attempts: Vec::new(),
        audit_id,
        error: None,
    };
    let mut touched: Vec<String> = Vec::new();
    let mut stopped = false;
    for chunk in plan.ids.chunks(CHUNK) {
        if ctl.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            stopped = true;
            break;
        }
        if let Err(e) = run_chunk(store, actor, &plan, chunk, &ctl, &mut report, &mut touched) {
            report.error = Some(e.to_string());
            break;
        }
        report.processed += chunk.len();
        (ctl.progress)(report.processed, report.matched);
        if report.processed < report.matched {
            // Leave the write lock free for a moment between chunks, as `Store::refire` does
            // between its transactions: another process polls for it every millisecond
            // (without the gap the refire bench's other writer waited 184 ms, with it ~60).
            std::thread::sleep(CHUNK_GAP);
        }
    }
    report.outcome = if report.error.is_some() {
        Outcome::Failed
    } else if stopped {
        Outcome::Stopped
    } else if report.refused.is_empty() {
        Outcome::Done
    } else if report.acted == 0 {
        Outcome::Refused
    } else {
        Outcome::PartlyRefused
    };
    audit.finish(store, report.outcome, report.acted as i64, &touched)?;
    Ok(report)
}

/// One chunk: one store call per chunk for re-fire and cancel, one attempt per id for replay.
fn run_chunk(
    store: &Store,
    actor: &Actor,
    plan: &Plan,
    chunk: &[DeliveryId],
    ctl: &Control<'_>,
    report: &mut BulkReport,
    touched: &mut Vec<String>,
) -> Result<(), StoreError> {
    let op = &actor.operator;
    match plan.action {
        BulkAction::Refire => {
            let r = store.refire(chunk, op)?;
            report.acted += r.refired as usize;
            touched.extend(not_refused(chunk, &r.refused));
            report.created.extend(r.created);
            report.refused.extend(r.refused);
        }
        BulkAction::Cancel => {
            let r = store.cancel_deliveries(chunk, op)?;
            report.acted += r.cancelled as usize;
            touched.extend(not_refused(chunk, &r.refused));
            report.routed.extend(r.routed);
            report.refused.extend(r.refused);
        }
        BulkAction::Replay => {
            for id in chunk {
                let Some(rt) = ctl.rt else {
                    return Err(StoreError::Refused("no runtime to send replays on".into()));
                };
                match replay_one(store, op, id, rt, ctl.max_send_body) {
                    Ok(ev) => {
                        report.acted += 1;
                        touched.push(id.to_string());
                        report.attempts.push(ev);
                    }
                    Err(StoreError::NotFound { what, id: missing }) => {
                        report.refused.push(DeliveryRefusal {
                            delivery_id: id.clone(),
                            kind: RefusalKind::NotFound,
                            reason: format!("no {what} with id `{missing}`"),
                        })
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// The ids of `chunk` the store did not refuse: what the action touched.
fn not_refused(chunk: &[DeliveryId], refused: &[DeliveryRefusal]) -> Vec<String> {
    let refused: std::collections::HashSet<&DeliveryId> =
        refused.iter().map(|x| &x.delivery_id).collect();
    chunk
        .iter()
        .filter(|id| !refused.contains(id))
        .map(|id| id.to_string())
        .collect()
}

/// Allocates a manual attempt of `id` and sends it now (a replay, design §6).
fn replay_one(
    store: &Store,
    operator: &str,
    id: &DeliveryId,
    rt: &tokio::runtime::Handle,
    max_body: usize,
) -> Result<AttemptEvent, StoreError> {
    let lease = store.begin_replay(id, operator)?;
    rt.block_on(send_manual(store, lease, max_body))
}

/// What a test webhook got back.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct TestResult {
    #[serde(flatten)]
    pub attempt: AttemptEvent,
    /// The first 64 KiB of the receiver's answer, as recorded.
    pub response_body: Option<String>,
}

/// What a test webhook is sent to, and with which document.
#[derive(Clone, Debug)]
pub enum TestOf {
    /// A webhook stage: with an item, that item's document as it is now; without, a sample.
    Stage {
        workflow: WorkflowId,
        stage: StageId,
        item: Option<ItemId>,
    },
    /// The stage and item of one delivery: a delivery id (`Selection::Ids` of one) or an
    /// item's latest (`Selection::ItemLatest`), the id forms of re-fire and cancel.
    Delivery(Selection),
}

impl TestOf {
    /// The stage and the item whose document goes, resolved against the store.
    fn resolve(self, store: &Store) -> Result<(WorkflowId, StageId, Option<ItemId>), ActionError> {
        let d = match self {
            TestOf::Stage {
                workflow,
                stage,
                item,
            } => return Ok((workflow, stage, item)),
            TestOf::Delivery(Selection::ItemLatest {
                item,
                workflow,
                stage,
            }) => item_latest(store, item, workflow, stage)?,
            TestOf::Delivery(Selection::Ids(ids)) => match ids.as_slice() {
                [id] => store.delivery_detail(id)?.summary,
                _ => {
                    return Err(ActionError::BadInput("a test takes one delivery id".into()));
                }
            },
            TestOf::Delivery(Selection::Filter { .. }) => {
                return Err(ActionError::BadInput(
                    "a test takes a stage, a delivery id or an item, not a filter".into(),
                ));
            }
        };
        Ok((d.workflow, d.stage, d.item_id))
    }
}

/// Sends a test webhook now (design §2 Test): a sample document, or an item's, to a webhook
/// stage; records it as a `webhook.test` delivery, audits it, and reads back what the
/// receiver answered.
pub fn test_stage(
    store: &Store,
    actor: &Actor,
    of: TestOf,
    rt: &tokio::runtime::Handle,
    max_send_body: usize,
) -> Result<TestResult, ActionError> {
    store.ensure_writable("test")?;
    let (workflow, stage, item) = of.resolve(store)?;
    let (workflow, stage) = (&workflow, &stage);
    let spec = store.workflow_spec(workflow)?;
    match spec.stage(stage).map(|s| s.kind()) {
        None => {
            return Err(ActionError::Store(StoreError::NotFound {
                what: "stage",
                id: format!("{workflow}/{stage}"),
            }));
        }
        Some(k) if k != StageKind::Webhook => {
            return Err(ActionError::Store(StoreError::Invalid(format!(
                "stage `{stage}` is a {k} stage; only webhook stages can be tested"
            ))));
        }
        Some(_) => {}
    }
    let target = match &item {
        Some(i) => format!("stage {workflow}/{stage} with item {i}"),
        None => format!("stage {workflow}/{stage}"),
    };
    let audit = Audit::begin(store, actor, "test", target, None, 1)?;
    let sent = store
        .begin_test_of(workflow, stage, item.as_ref(), &actor.operator)
        .and_then(|lease| rt.block_on(send_manual(store, lease, max_send_body)));
    let attempt = match sent {
        Ok(a) => a,
        Err(e) => {
            audit.finish(store, Outcome::Failed, 0, &[])?;
            return Err(e.into());
        }
    };
    audit.finish(store, Outcome::Done, 1, &[attempt.delivery_id.to_string()])?;
    let response_body = store
        .delivery_detail(&attempt.delivery_id)?
        .attempt_log
        .last()
        .and_then(|a| a.response_body.clone());
    Ok(TestResult {
        attempt,
        response_body,
    })
}
