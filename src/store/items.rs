//! Items: import, moves (assign, advance, routing), listings and detail.
//!
//! Every move goes through [`apply_route`]: it updates the item (bumping its version), writes
//! one history row per hop, cancels the item's open delivery when the item leaves or re-enters
//! its webhook stage, and creates the delivery when the item lands in a webhook stage, all in
//! the caller's transaction (the transactional outbox of design §2).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Tx;
use super::deliveries::{
    DeliverySummary, cancel_open_deliveries, insert_delivery, insert_notifications,
};
use super::seam::{HistoryRow, ItemMove, NewItemRow};
use super::workflows::current_spec;
use super::{Result, Store, StoreError, to_time, where_now};
use crate::engine::{self, Outcome, Route};
use crate::model::{
    CancelReason, DatasetRef, DeliveryId, DeliveryTrigger, EventType, HistoryCause, Item, ItemId,
    ItemState, NewItem, RefusalKind, StageId, StageKind, WorkflowId,
};
use crate::workflow::Workflow;

/// Items written per transaction by import and bulk moves: small enough that no chunk holds
/// the write lock for more than a few tens of milliseconds.
const IMPORT_CHUNK: usize = 4000;
const MOVE_CHUNK: usize = 500;
/// A chunk of an import stops taking items after this long, whatever their size.
const CHUNK_BUDGET: std::time::Duration = std::time::Duration::from_millis(40);
/// The same for a streaming import's batches, whose commits are heavier: each of its items
/// lands at a random place of two large indexes (item ids, history by item id), so a chunk
/// changes about two index pages per item, all written and synced at its commit. With 40 ms
/// of items the commit took about as long again (the longest transaction of a 100,000-line
/// import was 96 ms, and another writer's worst wait 115 ms); 25 ms keeps both near 60 ms.
const STREAM_CHUNK_BUDGET: std::time::Duration = std::time::Duration::from_millis(25);
/// Page cache of the writer connection from a streaming import's first batch on (KiB; the
/// process keeps it). Every item adds an entry at a random place of two indexes (its id, and
/// history by item id); with SQLite's default 2 MiB a chunk's changed pages (about two per
/// item) were spilled to the WAL before its commit and written there again when changed once
/// more. 32 MiB holds several chunks' pages (peak RSS of the debug build importing the
/// 200,000 lines of tests/cli.rs: 65 MB; with 64 MiB it came near the 100 MiB the test allows).
const STREAM_CACHE_KIB: i64 = 32_768;

/// What an import did.
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct ImportReport {
    pub imported: i64,
    pub already_present: i64,
    /// Ids already present whose content differs from the line (never overwritten).
    pub differing: Vec<ItemId>,
    /// Where the imported items landed, per stage.
    pub landed: BTreeMap<String, i64>,
    /// Each imported item and the stage it landed in, in import order.
    pub created: Vec<Landed>,
}

/// An imported item and the stage it landed in.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Landed {
    pub id: ItemId,
    pub stage: StageId,
}

/// An import stopped part way (a chunk failed): what was committed before it.
#[derive(Debug, thiserror::Error)]
#[error("import stopped after {done} of {total} items were written: {source}")]
pub struct ImportInterrupted {
    pub done: usize,
    pub total: usize,
    pub report: ImportReport,
    #[source]
    pub source: StoreError,
}

/// Which items an assignment moves.
#[derive(Clone, Debug)]
pub enum AssignTarget {
    Items(Vec<ItemId>),
    /// Named items, each refused unless it still has the version the operator saw.
    Versions(Vec<(ItemId, i64)>),
    /// Every item in `stage` (oldest first), or the first `limit`.
    FromStage {
        stage: StageId,
        limit: Option<usize>,
    },
}

/// One item an action refused, and why (where it is now).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Refusal {
    pub item_id: ItemId,
    pub kind: RefusalKind,
    pub reason: String,
}

/// What a move action (assign, advance) did.
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct MoveReport {
    pub moved: i64,
    /// The items moved, in order, up to one more than [`super::AUDIT_IDS`]: what an audit
    /// row names (beyond the bound it names the selection and the count instead).
    #[serde(skip)]
    #[schemars(skip)]
    pub moved_ids: Vec<ItemId>,
    pub refused: Vec<Refusal>,
    /// Where the moved items ended up, per stage.
    pub landed: BTreeMap<String, i64>,
    /// Deliveries created by the moves.
    pub deliveries: i64,
}

/// Compare-and-set conditions for an operator action on one item.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    pub stage: Option<StageId>,
    pub version: Option<i64>,
}

/// How item lists are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ItemOrder {
    /// Oldest first in their stage (longest waiting on top).
    #[default]
    Waiting,
    Name,
}

/// A keyset position in an item list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemCursor {
    pub(crate) key: String,
    pub(crate) seq: i64,
}

impl ItemCursor {
    /// The cursor as an opaque string for the API (`<seq>.<key>`).
    pub fn encode(&self) -> String {
        format!("{}.{}", self.seq, self.key)
    }

    /// Reads back a cursor made by [`ItemCursor::encode`]; `None` when it is not one.
    pub fn decode(s: &str) -> Option<ItemCursor> {
        let (seq, key) = s.split_once('.')?;
        Some(ItemCursor {
            key: key.to_string(),
            seq: seq.parse().ok()?,
        })
    }
}

#[cfg(test)]
impl ItemCursor {
    /// A cursor for hand-built rows in the console's tests (the store makes real ones).
    pub(crate) fn for_tests(key: &str, seq: i64) -> ItemCursor {
        ItemCursor {
            key: key.to_string(),
            seq,
        }
    }
}

/// Filters of `item list` and the console's item view.
#[derive(Clone, Debug, Default)]
pub struct ItemFilter {
    pub workflow: Option<WorkflowId>,
    pub stage: Option<StageId>,
    pub state: Option<ItemState>,
    /// Substring of the name or id.
    pub search: Option<String>,
    pub order: ItemOrder,
}

/// One row of an item list.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ItemRow {
    pub id: ItemId,
    pub name: String,
    pub workflow: WorkflowId,
    pub stage: StageId,
    pub state: ItemState,
    pub version: i64,
    pub tags: Vec<String>,
    pub entered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub cursor: ItemCursor,
}

/// One row of an item's history.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub from: Option<StageId>,
    pub to: StageId,
    pub cause: HistoryCause,
    pub operator: Option<String>,
    pub revision: i64,
    pub delivery_id: Option<DeliveryId>,
}

/// `item show`: the item, its history and its deliveries.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ItemDetail {
    #[serde(flatten)]
    pub item: Item,
    pub history: Vec<HistoryEntry>,
    pub deliveries: Vec<DeliverySummary>,
}

/// Who moves an item, and through what: an operator (or none, for routing), the trigger a
/// delivery it lands in gets, and the delivery whose outcome moved it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MovedBy<'a> {
    pub operator: Option<&'a str>,
    pub trigger: DeliveryTrigger,
    pub via_delivery: Option<&'a DeliveryId>,
}

/// Applies a route to an item in the caller's transaction. Returns the delivery it created.
///
/// `item` is the item as read in this transaction. When the route leaves the item where it is
/// with no hops (a webhook failure without `on_failure`), only its state changes.
pub(crate) fn apply_route(
    tx: &Tx<'_>,
    wf: &Workflow,
    revision: i64,
    item: &Item,
    route: &Route,
    by: MovedBy<'_>,
) -> Result<Option<DeliveryId>> {
    // A move caused by a delivery's outcome (`via_delivery`) passed its fencing: that
    // delivery is the item's only open one (every other was cancelled when it was made, and
    // any made since would have changed the item's version), so there is nothing to cancel.
    if !route.hops.is_empty() && by.via_delivery.is_none() {
        cancel_open_deliveries(
            tx,
            &item.id,
            CancelReason::ItemMoved,
            by.operator.unwrap_or("hookops"),
            None,
        )?;
    }
    tx.rows().move_item(&ItemMove {
        id: &item.id,
        stage: &route.stage,
        state: route.state,
        version: item.version + 1,
        now: tx.now(),
        entered: route.stage != item.stage || !route.hops.is_empty(),
    })?;
    if route.stage != item.stage || route.state != item.state {
        let wf = item.workflow.as_str();
        let mut counts = tx.counts();
        counts.add_items(wf, item.stage.as_str(), item.state.as_str(), -1);
        counts.add_items(wf, route.stage.as_str(), route.state.as_str(), 1);
    }
    record_hops(tx, wf, revision, item, route, by)
}

/// The rest of a move, once the item row holds its new stage, state and version
/// (`item.version + 1`): one history row (and its notifications) per hop, and the delivery
/// when the item landed in a webhook stage.
fn record_hops(
    tx: &Tx<'_>,
    wf: &Workflow,
    revision: i64,
    item: &Item,
    route: &Route,
    by: MovedBy<'_>,
) -> Result<Option<DeliveryId>> {
    let now = tx.now();
    for hop in &route.hops {
        tx.rows().insert_history(&HistoryRow {
            item: &item.id,
            workflow: &wf.id,
            from: hop.from.as_ref(),
            to: &hop.to,
            cause: hop.cause,
            operator: by.operator,
            revision,
            delivery: by.via_delivery,
            at: now,
        })?;
        if !wf.notify.is_empty() {
            notify_hop(tx, wf, item, hop, by)?;
        }
    }
    if !route.deliver {
        return Ok(None);
    }
    let mut entered = item.clone();
    entered.stage = route.stage.clone();
    entered.state = route.state;
    entered.version = item.version + 1;
    entered.updated_at = to_time(now);
    let previous = route.hops.last().and_then(|h| h.from.clone());
    let id = insert_delivery(tx, wf, &entered, previous, by.trigger, None)?;
    Ok(Some(id))
}

/// The notifications of one history row: `item.created` (import) or `item.stage_changed`,
/// and `item.completed` / `item.discarded` when it lands in a terminal stage.
fn notify_hop(
    tx: &Tx<'_>,
    wf: &Workflow,
    item: &Item,
    hop: &engine::Hop,
    by: MovedBy<'_>,
) -> Result<()> {
    let data = serde_json::json!({
        "workflow": wf.id,
        "item_id": item.id,
        "item_name": item.name,
        "previous_stage": hop.from,
        "stage": hop.to,
        "cause": hop.cause,
        "operator": by.operator,
        "delivery_id": by.via_delivery,
    });
    let first = if hop.from.is_none() {
        EventType::ItemCreated
    } else {
        EventType::ItemStageChanged
    };
    insert_notifications(tx, wf, first, Some(&item.id), &data)?;
    let terminal = match wf.stage(&hop.to).map(|s| s.kind()) {
        Some(StageKind::Complete) => Some(EventType::ItemCompleted),
        Some(StageKind::Discard) => Some(EventType::ItemDiscarded),
        _ => None,
    };
    if let Some(event) = terminal {
        insert_notifications(tx, wf, event, Some(&item.id), &data)?;
    }
    Ok(())
}

/// Imports items of `items` in order until they are done or the chunk's time budget is
/// spent; returns the report and the items it did not get to.
fn import_chunk(
    conn: &Tx<'_>,
    wf_id: &WorkflowId,
    mut items: Vec<NewItem>,
    default_dataset: &DatasetRef,
    operator: &str,
    budget: std::time::Duration,
) -> Result<(ImportReport, Vec<NewItem>)> {
    let started = std::time::Instant::now();
    let (wf, revision) = current_spec(conn, wf_id)?;
    let dataset = wf
        .dataset_stage()
        .ok_or_else(|| StoreError::Invalid(format!("workflow `{wf_id}` has no dataset stage")))?
        .id
        .clone();
    let now = conn.now();
    let mut report = ImportReport::default();
    // Counted here and added once per chunk (see `counts`).
    let mut landed: HashMap<(StageId, ItemState), i64> = HashMap::new();
    // When the items landing in each stage entered it (see below).
    let mut entered: HashMap<StageId, i64> = HashMap::new();
    let mut taken = 0;
    while taken < items.len() {
        if taken % 64 == 63 && started.elapsed() >= budget {
            break;
        }
        // The item's content moves into the stored item; only untaken items are kept whole.
        let new = &mut items[taken];
        taken += 1;
        let ds = new
            .dataset
            .clone()
            .unwrap_or_else(|| default_dataset.clone());
        let mut item = Item {
            id: new.id.clone(),
            workflow: wf_id.clone(),
            stage: dataset.clone(),
            state: ItemState::Waiting,
            name: std::mem::take(&mut new.name),
            path: std::mem::take(&mut new.path),
            dataset: ds,
            tags: std::mem::take(&mut new.tags),
            properties: std::mem::take(&mut new.properties),
            slots: std::mem::take(&mut new.slots),
            annotations: std::mem::take(&mut new.annotations),
            version: 0,
            created_at: to_time(now),
            updated_at: to_time(now),
        };
        let mut route =
            engine::import(&wf, &item).map_err(|e| StoreError::Invalid(e.to_string()))?;
        // An item whose content came as text was routed without it. Import routes end in the
        // dataset stage or the one after it, and read no content to get there (see
        // `engine::import`); a route that went further (a logic stage reads tags, properties
        // and annotations) or delivers (the body holds the content) is made again with it.
        if let Some(json) = &new.json
            && (route.deliver || route.hops.len() > 2)
        {
            let c = json
                .values()
                .map_err(|e| StoreError::Invalid(format!("item `{}`: {e}", new.id)))?;
            (item.tags, item.properties, item.slots, item.annotations) =
                (c.tags, c.properties, c.slots, c.annotations);
            route = engine::import(&wf, &item).map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        // The landing in the dataset stage is the first row of every item's history.
        if route.hops.first().is_none_or(|h| h.from.is_some()) {
            route.hops.insert(
                0,
                engine::Hop {
                    from: None,
                    to: dataset.clone(),
                    cause: HistoryCause::Import,
                },
            );
        }
        // An imported item sorts after every item already in the stage it lands in (see
        // `apply_route`): its `seq` is the newest, so the stage's last arrival time will do
        // when this process's clock is behind it. Read once per landing stage and chunk.
        let entered_at = match entered.get(&route.stage) {
            Some(t) => *t,
            None => {
                let last = conn.rows().last_arrival(wf_id, &route.stage)?;
                let t = last.map_or(now, |last| last.max(now));
                entered.insert(route.stage.clone(), t);
                t
            }
        };
        // A new item has no deliveries to cancel and no row to update: it is written once,
        // where its route ends, as version 1 (the version a move from version 0 writes).
        let inserted = conn.rows().insert_item(&NewItemRow {
            item: &item,
            stage: &route.stage,
            state: route.state,
            fingerprint: &new.fingerprint,
            json: new.json.as_deref(),
            now,
            entered_at,
        })?;
        if !inserted {
            let (other_wf, fingerprint) = conn.rows().item_owner(&new.id)?.ok_or_else(|| {
                StoreError::Database(format!("item `{}` vanished during its import", new.id))
            })?;
            if other_wf != wf_id.as_str() {
                return Err(StoreError::Invalid(format!(
                    "line {}: item id `{}` already exists in workflow `{other_wf}`",
                    new.line, new.id
                )));
            }
            report.already_present += 1;
            if fingerprint != new.fingerprint {
                report.differing.push(new.id.clone());
            }
            continue;
        }
        record_hops(
            conn,
            &wf,
            revision,
            &item,
            &route,
            MovedBy {
                operator: Some(operator),
                trigger: DeliveryTrigger::Route,
                via_delivery: None,
            },
        )?;
        report.imported += 1;
        *landed
            .entry((route.stage.clone(), route.state))
            .or_default() += 1;
        *report.landed.entry(route.stage.to_string()).or_default() += 1;
        report.created.push(Landed {
            id: item.id.clone(),
            stage: route.stage.clone(),
        });
    }
    for ((stage, state), n) in landed {
        conn.counts()
            .add_items(wf_id.as_str(), stage.as_str(), state.as_str(), n);
    }
    let left = items.split_off(taken);
    Ok((report, left))
}

fn merge(into: &mut ImportReport, chunk: ImportReport) {
    into.imported += chunk.imported;
    into.already_present += chunk.already_present;
    into.differing.extend(chunk.differing);
    into.created.extend(chunk.created);
    for (k, v) in chunk.landed {
        *into.landed.entry(k).or_default() += v;
    }
}

impl MoveReport {
    /// Adds what a later chunk of the same action did.
    pub fn merge(&mut self, chunk: MoveReport) {
        self.moved += chunk.moved;
        let room = (super::AUDIT_IDS + 1).saturating_sub(self.moved_ids.len());
        self.moved_ids
            .extend(chunk.moved_ids.into_iter().take(room));
        self.deliveries += chunk.deliveries;
        self.refused.extend(chunk.refused);
        for (k, v) in chunk.landed {
            *self.landed.entry(k).or_default() += v;
        }
    }
}

/// An operator's move of items: where they must be for it (compare-and-set), who moves
/// them, and the trigger of the deliveries it makes.
struct Mover<'a> {
    expect: &'a Expect,
    operator: &'a str,
    trigger: DeliveryTrigger,
}

/// Moves one item (read in this transaction) along `route_for(item)`.
fn move_one(
    conn: &Tx<'_>,
    wf: &Workflow,
    revision: i64,
    id: &ItemId,
    mover: &Mover<'_>,
    route_for: &dyn Fn(&Item) -> std::result::Result<Route, String>,
    report: &mut MoveReport,
) -> Result<()> {
    let Mover {
        expect,
        operator,
        trigger,
    } = *mover;
    let refuse = |report: &mut MoveReport, kind: RefusalKind, reason: String| {
        report.refused.push(Refusal {
            item_id: id.clone(),
            kind,
            reason,
        })
    };
    let Some(item) = conn.rows().load_item(id)? else {
        refuse(
            report,
            RefusalKind::NotFound,
            format!("no item with id `{id}`"),
        );
        return Ok(());
    };
    if item.workflow != wf.id {
        refuse(
            report,
            RefusalKind::InvalidTransition,
            format!("item `{id}` belongs to workflow `{}`", item.workflow),
        );
        return Ok(());
    }
    if expect.stage.as_ref().is_some_and(|s| *s != item.stage)
        || expect.version.is_some_and(|v| v != item.version)
    {
        refuse(
            report,
            RefusalKind::Stale,
            format!(
                "{}; it moved since you looked",
                where_now(&item.id, &item.stage, item.state)
            ),
        );
        return Ok(());
    }
    let route = match route_for(&item) {
        Ok(r) => r,
        Err(reason) => {
            refuse(report, RefusalKind::InvalidTransition, reason);
            return Ok(());
        }
    };
    let created = apply_route(
        conn,
        wf,
        revision,
        &item,
        &route,
        MovedBy {
            operator: Some(operator),
            trigger,
            via_delivery: None,
        },
    )?;
    report.moved += 1;
    if report.moved_ids.len() <= super::AUDIT_IDS {
        report.moved_ids.push(item.id.clone());
    }
    report.deliveries += created.is_some() as i64;
    *report.landed.entry(route.stage.to_string()).or_default() += 1;
    Ok(())
}

/// Moves every item of `from` into `to` in the caller's transaction (used by `workflow apply`
/// when a removed stage still holds items).
pub(crate) fn move_stage_items(
    conn: &Tx<'_>,
    wf: &Workflow,
    revision: i64,
    from: &StageId,
    to: &StageId,
    operator: &str,
) -> Result<i64> {
    let ids = conn
        .rows()
        .items_in_stage(&wf.id, from, (i64::MIN, i64::MIN), usize::MAX)?;
    let mut report = MoveReport::default();
    for (_, id) in ids {
        move_one(
            conn,
            wf,
            revision,
            &ItemId(id),
            &Mover {
                expect: &Expect::default(),
                operator,
                trigger: DeliveryTrigger::Assign,
            },
            &|item| engine::enter(wf, item, to, HistoryCause::Assign).map_err(|e| e.to_string()),
            &mut report,
        )?;
    }
    Ok(report.moved)
}

impl Store {
    /// Imports parsed items into a workflow's dataset stage, in chunks. Items whose id is
    /// present are skipped (counted, never overwritten). On failure, what was committed stays
    /// and the error says how far the import got; running it again imports only the rest.
    // The error carries what was committed (the partial report) by value; it is made at most
    // once per import, so its size costs nothing.
    #[allow(clippy::result_large_err)]
    pub fn import_items(
        &self,
        workflow: &WorkflowId,
        items: Vec<NewItem>,
        default_dataset: Option<DatasetRef>,
        operator: &str,
        progress: &mut dyn FnMut(usize, usize),
    ) -> std::result::Result<ImportReport, ImportInterrupted> {
        // Every line is checked against other workflows before anything is written.
        if let Err(source) = self.check_import_ids(workflow, &items) {
            return Err(ImportInterrupted {
                done: 0,
                total: items.len(),
                report: ImportReport::default(),
                source,
            });
        }
        self.import_checked_items(workflow, items, default_dataset, operator, progress)
    }

    /// [`Store::import_items`] for a caller that has already set aside the ids of other
    /// workflows ([`Store::ids_in_other_workflows`]), so every id is not read twice. An id
    /// taken by another workflow in between still stops the import where it is met.
    #[allow(clippy::result_large_err)]
    pub fn import_checked_items(
        &self,
        workflow: &WorkflowId,
        items: Vec<NewItem>,
        default_dataset: Option<DatasetRef>,
        operator: &str,
        progress: &mut dyn FnMut(usize, usize),
    ) -> std::result::Result<ImportReport, ImportInterrupted> {
        let total = items.len();
        let mut report = ImportReport::default();
        let interrupted = |done, report: &ImportReport, source| ImportInterrupted {
            done,
            total,
            report: report.clone(),
            source,
        };
        if let Err(e) = self.ensure_writable("import") {
            return Err(interrupted(0, &report, e));
        }
        let default_dataset = default_dataset.unwrap_or_else(|| DatasetRef {
            name: workflow.to_string(),
            slug: workflow.to_string(),
        });
        let mut done = 0;
        let mut rest: Vec<NewItem> = items;
        rest.reverse(); // taken from the end, so chunks leave in file order
        while !rest.is_empty() {
            let take = rest.len().min(IMPORT_CHUNK);
            let mut chunk = rest.split_off(rest.len() - take);
            chunk.reverse();
            let (wf, ds, op) = (
                workflow.clone(),
                default_dataset.clone(),
                operator.to_string(),
            );
            // A chunk stops at its time budget; what it did not take comes back.
            match self.write("import", move |c| {
                import_chunk(c, &wf, chunk, &ds, &op, CHUNK_BUDGET)
            }) {
                Ok((r, mut left)) => {
                    done += take - left.len();
                    merge(&mut report, r);
                    left.reverse();
                    rest.extend(left);
                }
                Err(e) => return Err(interrupted(done, &report, e)),
            }
            progress(done, total);
        }
        Ok(report)
    }

    fn check_import_ids(&self, workflow: &WorkflowId, items: &[NewItem]) -> Result<()> {
        let problems: Vec<String> = self
            .ids_in_other_workflows(workflow, items)?
            .into_iter()
            .map(|(i, other)| {
                let new = &items[i];
                format!(
                    "line {}: item id `{}` already exists in workflow `{other}`",
                    new.line, new.id
                )
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Invalid(problems.join("\n")))
        }
    }

    /// `(index in items, other workflow)` of each item whose id already belongs to another
    /// workflow: a line error of an import (design §6), which `import --skip-invalid` skips.
    pub fn ids_in_other_workflows(
        &self,
        workflow: &WorkflowId,
        items: &[NewItem],
    ) -> Result<Vec<(usize, String)>> {
        self.workflow_spec(workflow)?;
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        let owners = self.read(|r| r.owners(&ids))?;
        Ok(owners
            .into_iter()
            .enumerate()
            .filter_map(|(i, owner)| owner.filter(|o| o != workflow.as_str()).map(|o| (i, o)))
            .collect())
    }

    /// Assigns items to a stage by hand (design §1): the items named, or every item of a stage.
    /// Automated stages run at once; entering a webhook stage creates its delivery.
    pub fn assign(
        &self,
        workflow: &WorkflowId,
        to: &StageId,
        target: &AssignTarget,
        expect_stage: Option<&StageId>,
        operator: &str,
    ) -> Result<MoveReport> {
        self.ensure_writable("assign")?;
        let spec = self.workflow_spec(workflow)?;
        // A compare-and-set against a stage that does not exist is a mistake to name, not a
        // stale item to re-read (it would never stop being "stale").
        for stage in std::iter::once(to).chain(expect_stage) {
            if spec.stage(stage).is_none() {
                return Err(StoreError::NotFound {
                    what: "stage",
                    id: format!("{workflow}/{stage}"),
                });
            }
        }
        let mut report = MoveReport::default();
        match target {
            AssignTarget::Items(_) | AssignTarget::Versions(_) => {
                let ids: Vec<(ItemId, Option<i64>)> = match target {
                    AssignTarget::Items(ids) => ids.iter().map(|i| (i.clone(), None)).collect(),
                    AssignTarget::Versions(ids) => {
                        ids.iter().map(|(i, v)| (i.clone(), Some(*v))).collect()
                    }
                    AssignTarget::FromStage { .. } => Vec::new(),
                };
                for chunk in ids.chunks(MOVE_CHUNK) {
                    let (wf, to, op) = (workflow.clone(), to.clone(), operator.to_string());
                    let ids = chunk.to_vec();
                    let expect_stage = expect_stage.cloned();
                    let r = self.write("assign", move |c| {
                        let (spec, rev) = current_spec(c, &wf)?;
                        let mut r = MoveReport::default();
                        for (id, version) in &ids {
                            let expect = Expect {
                                stage: expect_stage.clone(),
                                version: *version,
                            };
                            move_one(
                                c,
                                &spec,
                                rev,
                                id,
                                &Mover {
                                    expect: &expect,
                                    operator: &op,
                                    trigger: DeliveryTrigger::Assign,
                                },
                                &|item| {
                                    engine::enter(&spec, item, &to, HistoryCause::Assign)
                                        .map_err(|e| e.to_string())
                                },
                                &mut r,
                            )?;
                        }
                        Ok(r)
                    })?;
                    report.merge(r);
                }
            }
            AssignTarget::FromStage { stage, limit } => {
                if spec.stage(stage).is_none() {
                    return Err(StoreError::NotFound {
                        what: "stage",
                        id: format!("{workflow}/{stage}"),
                    });
                }
                if stage == to {
                    return Err(StoreError::Invalid(format!(
                        "the items are already in stage `{to}`; name them one by one to re-enter it"
                    )));
                }
                // Keyset on (entered_at, seq), the order of the `items_by_stage` index: oldest
                // first in the stage, and each chunk reads only its own rows. (Ordering by
                // `seq` alone made SQLite sort every item of the stage for every chunk, so a
                // chunk of 500 out of 1,000,000 held the write lock for over a second.)
                let mut after = (i64::MIN, i64::MIN);
                let mut left = limit.unwrap_or(usize::MAX);
                while left > 0 {
                    let take = left.min(MOVE_CHUNK);
                    let (wf, from, to, op) = (
                        workflow.clone(),
                        stage.clone(),
                        to.clone(),
                        operator.to_string(),
                    );
                    let (r, last, n) = self.write("assign", move |c| {
                        let (spec, rev) = current_spec(c, &wf)?;
                        let batch = c.rows().items_in_stage(&wf, &from, after, take)?;
                        let mut r = MoveReport::default();
                        let expect = Expect {
                            stage: Some(from.clone()),
                            version: None,
                        };
                        for (_, id) in &batch {
                            move_one(
                                c,
                                &spec,
                                rev,
                                &ItemId(id.clone()),
                                &Mover {
                                    expect: &expect,
                                    operator: &op,
                                    trigger: DeliveryTrigger::Assign,
                                },
                                &|item| {
                                    engine::enter(&spec, item, &to, HistoryCause::Assign)
                                        .map_err(|e| e.to_string())
                                },
                                &mut r,
                            )?;
                        }
                        Ok((r, batch.last().map(|b| b.0), batch.len()))
                    })?;
                    report.merge(r);
                    match last {
                        Some(key) if n == take => {
                            after = key;
                            left -= n;
                        }
                        _ => break,
                    }
                }
            }
        };
        Ok(report)
    }

    /// Completes the items' current annotate (or dataset) stage, or decides their review.
    pub fn advance(
        &self,
        ids: &[ItemId],
        outcome: Option<Outcome>,
        expect: &Expect,
        operator: &str,
    ) -> Result<MoveReport> {
        self.ensure_writable("advance")?;
        let mut report = MoveReport::default();
        for chunk in ids.chunks(MOVE_CHUNK) {
            let ids = chunk.to_vec();
            let (expect, op) = (expect.clone(), operator.to_string());
            let r = self.write("advance", move |c| {
                let mut r = MoveReport::default();
                let mut specs: HashMap<WorkflowId, (std::sync::Arc<Workflow>, i64)> =
                    HashMap::new();
                for id in &ids {
                    let Some(item) = c.rows().load_item(id)? else {
                        r.refused.push(Refusal {
                            item_id: id.clone(),
                            kind: RefusalKind::NotFound,
                            reason: format!("no item with id `{id}`"),
                        });
                        continue;
                    };
                    if !specs.contains_key(&item.workflow) {
                        let s = current_spec(c, &item.workflow)?;
                        specs.insert(item.workflow.clone(), s);
                    }
                    let (spec, rev) = &specs[&item.workflow];
                    let kind = spec.stage(&item.stage).map(|s| s.kind());
                    let outcome = match (outcome, kind) {
                        (Some(o), _) => o,
                        (None, Some(crate::model::StageKind::Review)) => {
                            r.refused.push(Refusal {
                                item_id: id.clone(),
                                kind: RefusalKind::InvalidTransition,
                                reason: format!(
                                    "item `{id}` is in review stage `{}`: give the outcome, approve or reject (`--outcome`; `outcome` in the API)",
                                    item.stage
                                ),
                            });
                            continue;
                        }
                        (None, _) => Outcome::Advance,
                    };
                    move_one(
                        c,
                        spec,
                        *rev,
                        id,
                        &Mover { expect: &expect, operator: &op, trigger: DeliveryTrigger::Route },
                        &|item| engine::outcome(spec, item, outcome).map_err(|e| e.to_string()),
                        &mut r,
                    )?;
                }
                Ok(r)
            })?;
            report.merge(r);
        }
        Ok(report)
    }

    /// One page of items matching `filter`, after `after`.
    pub fn list_items(
        &self,
        filter: &ItemFilter,
        after: Option<&ItemCursor>,
        limit: usize,
    ) -> Result<Vec<ItemRow>> {
        self.read(|r| r.list_items(filter, after, limit, false))
    }

    /// The `limit` items matching `filter` just before `before` in the filter's order, or its
    /// last ones when `before` is `None`: the reverse keyset read behind the console's `G`
    /// and its scrolling back up from there. In list order.
    pub fn list_items_before(
        &self,
        filter: &ItemFilter,
        before: Option<&ItemCursor>,
        limit: usize,
    ) -> Result<Vec<ItemRow>> {
        let mut rows = self.read(|r| r.list_items(filter, before, limit, true))?;
        rows.reverse();
        Ok(rows)
    }

    /// How many items match `filter` (a full count: for the CLI's "N more" line, not frames).
    pub fn count_items(&self, filter: &ItemFilter) -> Result<i64> {
        self.read(|r| r.count_items(filter))
    }

    pub fn item(&self, id: &ItemId) -> Result<Item> {
        self.read(|r| r.item(id))?
            .ok_or_else(|| StoreError::NotFound {
                what: "item",
                id: id.to_string(),
            })
    }

    /// The item with its full history and its deliveries, newest delivery first.
    pub fn item_detail(&self, id: &ItemId) -> Result<ItemDetail> {
        self.read(|r| {
            let item = r.item(id)?.ok_or_else(|| StoreError::NotFound {
                what: "item",
                id: id.to_string(),
            })?;
            Ok(ItemDetail {
                item,
                history: r.history(id)?,
                deliveries: r.deliveries_of_item(id)?,
            })
        })
    }
}

// Streaming import (issue 22): the CLI reads a file of any size in bounded batches and writes
// one audit row for the whole import. Kept apart from `import_checked_items` so the two can be
// moved independently.
impl Store {
    /// One batch of a streaming import: [`Store::import_checked_items`] without its audit row
    /// (the caller writes one for the whole import with [`Store::audit_import`]) and without
    /// `created` in the report, so a caller that adds reports up holds nothing per item.
    /// Writes in the same time-budgeted chunks, so no transaction holds the write lock long.
    #[allow(clippy::result_large_err)]
    pub fn import_batch(
        &self,
        workflow: &WorkflowId,
        items: Vec<NewItem>,
        default_dataset: &DatasetRef,
        operator: &str,
    ) -> std::result::Result<ImportReport, ImportInterrupted> {
        let total = items.len();
        let mut report = ImportReport::default();
        let mut done = 0;
        let mut rest = items;
        while !rest.is_empty() {
            let take = rest.len().min(IMPORT_CHUNK);
            let tail = rest.split_off(take);
            let chunk = std::mem::replace(&mut rest, tail);
            let (wf, ds, op) = (
                workflow.clone(),
                default_dataset.clone(),
                operator.to_string(),
            );
            // A chunk stops at its time budget; what it did not take goes first next time.
            let job = move |c: &Tx<'_>| {
                c.rows().set_cache_kib(-STREAM_CACHE_KIB)?;
                import_chunk(c, &wf, chunk, &ds, &op, STREAM_CHUNK_BUDGET)
            };
            match self.write("import", job) {
                Ok((mut r, mut left)) => {
                    done += take - left.len();
                    r.created = Vec::new();
                    merge(&mut report, r);
                    left.append(&mut rest);
                    rest = left;
                }
                Err(source) => {
                    return Err(ImportInterrupted {
                        done,
                        total,
                        report,
                        source,
                    });
                }
            }
        }
        Ok(report)
    }
}
