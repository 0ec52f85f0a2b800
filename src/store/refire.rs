//! Re-fire, replay and test deliveries (design §2, §6): a re-fire puts the item back into
//! the delivery's webhook stage as a new delivery linked to the old one; a replay is a manual
//! attempt of the same delivery, its frozen bytes sent again; a test is a `webhook.test`
//! delivery leased to the process that asked for it.

use std::sync::Arc;

use serde::Serialize;

use super::Tx;
use super::deliveries::DeliveryFilter;
use super::items::{MovedBy, apply_route};
use super::leases::{Lease, lease_ms};
use super::seam::{ManualAttempt, NewDelivery, NewLease, RefireRow};
use super::workflows::current_spec;
use super::{Result, Store, StoreError, to_time, where_now};
use crate::engine;
use crate::engine::payload::{DeliveryMeta, build_body, test_body};
use crate::model::{
    AttemptTrigger, DeliveryId, DeliveryState, DeliveryTrigger, EventType, HistoryCause, ItemId,
    RefusalKind, StageId, StageKind, WorkflowId,
};
use crate::workflow::Workflow;

/// What a re-fire did.
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct RefireReport {
    pub refired: i64,
    pub created: Vec<DeliveryId>,
    pub refused: Vec<DeliveryRefusal>,
}

/// One delivery an action refused, and why.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DeliveryRefusal {
    pub delivery_id: DeliveryId,
    pub kind: RefusalKind,
    pub reason: String,
}

/// What a re-fire needs: the current spec and revision, the item, and the webhook stage.
type Refirable = (Arc<Workflow>, i64, crate::model::Item, StageId);

/// Why a delivery cannot be re-fired now (`Err` with the reason), or what re-firing it takes.
fn refire_refusal(
    tx: &Tx<'_>,
    id: &DeliveryId,
) -> Result<std::result::Result<Refirable, (RefusalKind, String)>> {
    let Some(RefireRow {
        workflow: wf,
        stage,
        event,
        item_id,
        state,
        routed_version,
    }) = tx.rows().refire_row(id)?
    else {
        return Ok(Err((
            RefusalKind::NotFound,
            format!("no delivery with id `{id}`"),
        )));
    };
    let Some(item_id) = item_id.filter(|_| event == EventType::StageWebhook.as_str()) else {
        return Ok(Err((
            RefusalKind::InvalidTransition,
            format!(
                "delivery `{id}` is a {event} delivery; only stage.webhook deliveries can be re-fired"
            ),
        )));
    };
    let state: DeliveryState = state
        .parse()
        .map_err(|e: crate::model::ParseEnumError| StoreError::Database(e.to_string()))?;
    if state.is_open() {
        return Ok(Err((
            RefusalKind::Stale,
            format!("delivery `{id}` is still {state}; wait for its outcome or cancel it"),
        )));
    }
    let latest = tx.rows().latest_webhook_delivery(&item_id)?;
    let Some(item) = tx.rows().load_item(&ItemId::new(item_id.as_str()))? else {
        return Ok(Err((
            RefusalKind::Stale,
            format!("item `{item_id}` no longer exists"),
        )));
    };
    if let Some(latest) = latest.filter(|l| l != id.as_str()) {
        return Ok(Err((
            RefusalKind::Stale,
            format!(
                "delivery `{latest}` is newer for item `{item_id}`; {}",
                where_now(&item.id, &item.stage, item.state)
            ),
        )));
    }
    let stage = StageId(stage);
    let unmoved = item.stage == stage || routed_version == Some(item.version);
    if !unmoved {
        return Ok(Err((
            RefusalKind::Stale,
            format!(
                "{} and has moved since delivery `{id}`; assign it to `{stage}` to deliver again",
                where_now(&item.id, &item.stage, item.state)
            ),
        )));
    }
    let (spec, rev) = current_spec(tx, &WorkflowId(wf))?;
    if spec.stage(&stage).map(|s| s.kind()) != Some(StageKind::Webhook) {
        return Ok(Err((
            RefusalKind::Stale,
            format!("stage `{stage}` is no longer a webhook stage of the workflow"),
        )));
    }
    Ok(Ok((spec, rev, item, stage)))
}

/// Re-fires `ids` in order until they are done or [`REFIRE_BUDGET`] has passed; returns the
/// report and how many ids it took (the caller sends the rest in the next transaction).
fn refire_in_tx(
    conn: &Tx<'_>,
    ids: &[DeliveryId],
    operator: &str,
) -> Result<(RefireReport, usize)> {
    let mut report = RefireReport::default();
    let started = std::time::Instant::now();
    let mut taken = 0;
    for id in ids {
        if taken % 16 == 15 && started.elapsed() >= REFIRE_BUDGET {
            break;
        }
        taken += 1;
        match refire_refusal(conn, id)? {
            Err((kind, reason)) => report.refused.push(DeliveryRefusal {
                delivery_id: id.clone(),
                kind,
                reason,
            }),
            Ok((spec, rev, item, stage)) => {
                let route = engine::enter(&spec, &item, &stage, HistoryCause::Refire)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                let created = apply_route(
                    conn,
                    &spec,
                    rev,
                    &item,
                    &route,
                    MovedBy {
                        operator: Some(operator),
                        trigger: DeliveryTrigger::Refire,
                        via_delivery: None,
                    },
                )?;
                if let Some(new) = created {
                    conn.rows().set_refire_of(&new, id)?;
                    report.created.push(new);
                }
                report.refired += 1;
            }
        }
    }
    Ok((report, taken))
}

const REFIRE_CHUNK: usize = 500;
/// A re-fire transaction stops taking deliveries after this long: 500 re-fires held the write
/// lock ~300 ms, and another process waiting for it (a `serve` recording attempts) was
/// starved for seconds during a 100,000-delivery re-fire.
const REFIRE_BUDGET: std::time::Duration = std::time::Duration::from_millis(40);

impl Store {
    /// Re-fires deliveries by id (design §6): each item goes back into the delivery's stage
    /// and gets a new delivery linked to the old one.
    pub fn refire(&self, ids: &[DeliveryId], operator: &str) -> Result<RefireReport> {
        self.ensure_writable("refire")?;
        let mut report = RefireReport::default();
        let mut rest = ids;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(REFIRE_CHUNK)];
            let (ids, op) = (chunk.to_vec(), operator.to_string());
            // Not audited here: the actions layer writes one row for the whole action.
            let (r, taken) = self.write("refire", move |c| refire_in_tx(c, &ids, &op))?;
            rest = &rest[taken.max(1).min(rest.len())..];
            if !rest.is_empty() {
                // Leave the lock free for a moment: other processes poll for it every
                // millisecond (store::wait_for_lock), this process's writer queue takes its turn.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            report.refired += r.refired;
            report.created.extend(r.created);
            report.refused.extend(r.refused);
        }
        Ok(report)
    }

    /// Every failed `stage.webhook` delivery matching `filter` that is its item's latest,
    /// oldest first, at most `limit`.
    pub fn failed_deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: Option<usize>,
    ) -> Result<Vec<DeliveryId>> {
        let mut f = filter.clone();
        f.state = Some(DeliveryState::Failed);
        f.event = Some(EventType::StageWebhook);
        let mut out = Vec::new();
        let mut after = None;
        let want = limit.unwrap_or(usize::MAX);
        loop {
            let page = self.list_deliveries(&f, after, 5000)?;
            let done = page.len() < 5000;
            after = page.last().map(|(_, c)| *c);
            // An older failed delivery of an item that has a newer one would only be refused.
            let latest = self.read(|r| {
                page.iter()
                    .map(|(d, seq)| match &d.item_id {
                        Some(item) => Ok(r.newest_webhook_delivery(item)? == Some(*seq)),
                        None => Ok(false),
                    })
                    .collect::<Result<Vec<bool>>>()
            })?;
            out.extend(
                page.into_iter()
                    .zip(latest)
                    .filter(|(_, latest)| *latest)
                    .map(|((d, _), _)| d.id),
            );
            if done || out.len() >= want {
                break;
            }
        }
        out.truncate(want);
        out.reverse();
        Ok(out)
    }

    /// Allocates a manual attempt of a delivery: a replay of its frozen bytes (design §6).
    /// Not audited here: the actions layer writes the row (`_operator` stays for callers
    /// that name who asks).
    pub fn begin_replay(&self, id: &DeliveryId, _operator: &str) -> Result<Lease> {
        let id = id.clone();
        self.write("replay", move |c| {
            let Some(ManualAttempt {
                workflow: wf,
                stage,
                item_id,
                event,
                seq,
                number,
                attempts,
            }) = c.rows().take_manual_number(&id)?
            else {
                return Err(StoreError::NotFound {
                    what: "delivery",
                    id: id.to_string(),
                });
            };
            let body = c.rows().body_of(seq)?;
            let (spec, revision) = current_spec(c, &WorkflowId::new(wf.as_str()))?;
            let cfg = spec.delivery_config(&StageId::new(stage.as_str()));
            let not_before = super::leases::reserve_token(c, &wf, &stage, cfg)?;
            Ok(Lease {
                delivery_id: id,
                seq,
                token: None,
                number,
                trigger: AttemptTrigger::Manual,
                workflow: WorkflowId(wf),
                revision,
                stage: StageId(stage),
                item_id: item_id.map(ItemId),
                event,
                body: body.into(),
                attempts,
                spec,
                not_before,
            })
        })
    }

    /// Creates a `webhook.test` delivery for a stage with a sample body, leased to the caller,
    /// who sends it once and records it (design §2 Test).
    /// Not audited here: the actions layer writes the row.
    pub fn begin_test(&self, wf: &WorkflowId, stage: &StageId, operator: &str) -> Result<Lease> {
        self.begin_test_of(wf, stage, None, operator)
    }

    /// [`Store::begin_test`], with the body built from `item` as it is now (when given)
    /// instead of the sample: `test --item ID`. The test delivery names the item, so the
    /// item's deliveries list it; a test never routes, so the item does not move.
    pub fn begin_test_of(
        &self,
        wf: &WorkflowId,
        stage: &StageId,
        item: Option<&ItemId>,
        _operator: &str,
    ) -> Result<Lease> {
        let (wf, stage, item_id) = (wf.clone(), stage.clone(), item.cloned());
        self.write("test", move |c| {
            let (spec, revision) = current_spec(c, &wf)?;
            let st = spec.stage(&stage).ok_or_else(|| StoreError::NotFound {
                what: "stage",
                id: format!("{wf}/{stage}"),
            })?;
            let cfg = st.webhook().ok_or_else(|| {
                StoreError::Invalid(format!(
                    "stage `{stage}` is a {} stage; only webhook stages can be tested",
                    st.kind()
                ))
            })?;
            let now = c.now();
            let id = DeliveryId::generate();
            let meta = DeliveryMeta {
                delivery_id: id.clone(),
                event: EventType::WebhookTest,
                trigger: DeliveryTrigger::Test,
                previous_stage: None,
                created_at: to_time(now),
            };
            let item = match &item_id {
                None => None,
                Some(id) => match c.rows().load_item(id)? {
                    Some(i) if i.workflow == wf => Some(i),
                    Some(i) => {
                        return Err(StoreError::Invalid(format!(
                            "item `{id}` belongs to workflow `{}`, not `{wf}`",
                            i.workflow
                        )));
                    }
                    None => {
                        return Err(StoreError::NotFound {
                            what: "item",
                            id: id.to_string(),
                        });
                    }
                },
            };
            let body = match &item {
                Some(i) => build_body(&spec, st, i, &meta),
                None => test_body(&spec, st, &meta),
            }
            .map_err(|e| StoreError::Invalid(format!("cannot build the test payload: {e}")))?;
            let token = uuid::Uuid::now_v7().simple().to_string();
            let owner = format!("test:{}", std::process::id());
            let not_before =
                super::leases::reserve_token(c, wf.as_str(), stage.as_str(), Some(cfg))?;
            // The lease runs from when the test may be sent.
            let seq = c.rows().insert_delivery(&NewDelivery {
                id: &id,
                workflow: &wf,
                stage: &stage,
                item: item_id.as_ref(),
                event: EventType::WebhookTest,
                trigger: DeliveryTrigger::Test,
                item_version: None,
                refire_of: None,
                lease: Some(NewLease {
                    token: &token,
                    until: not_before.unwrap_or(now) + lease_ms(Some(cfg)),
                    owner: &owner,
                    number: 1,
                }),
                now,
                body: &body,
            })?;
            c.counts()
                .add_deliveries(wf.as_str(), stage.as_str(), "in_flight", 1);
            Ok(Lease {
                delivery_id: id,
                seq,
                token: Some(token),
                number: 1,
                trigger: AttemptTrigger::Manual,
                workflow: wf,
                revision,
                stage,
                item_id,
                event: EventType::WebhookTest,
                body: body.into(),
                attempts: 0,
                spec,
                not_before,
            })
        })
    }
}
