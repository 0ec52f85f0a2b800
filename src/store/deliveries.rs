//! Deliveries and attempts: creation inside moves, listings and detail.
//!
//! Leasing lives in `leases`, recording outcomes in `attempts`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Tx;
use super::seam::NewDelivery;
use super::{Result, Store, StoreError, to_time};
use crate::engine::payload::{DeliveryMeta, build_body};
use crate::model::{
    CancelReason, DeliveryId, DeliveryState, DeliveryTrigger, ErrorKind, EventType, Item, ItemId,
    StageId, WorkflowId,
};
use crate::workflow::Workflow;

/// A delivery as listed (one JSON shape for CLI, API and console; design §6).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DeliverySummary {
    pub id: DeliveryId,
    pub item_id: Option<ItemId>,
    pub item_name: Option<String>,
    pub workflow: WorkflowId,
    pub stage: StageId,
    pub event: EventType,
    pub state: DeliveryState,
    pub trigger: DeliveryTrigger,
    /// Scheduled attempts that count toward `max_attempts`.
    pub attempts: i64,
    pub last_status: Option<u16>,
    pub last_error_kind: Option<ErrorKind>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// What the last attempt's failure said (none after a success).
    pub last_error_message: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub refire_of: Option<DeliveryId>,
    pub cancel_reason: Option<CancelReason>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One HTTP try of a delivery.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct AttemptRecord {
    pub number: i64,
    pub trigger: crate::model::AttemptTrigger,
    pub counted: bool,
    pub started_at: DateTime<Utc>,
    pub duration_ms: Option<i64>,
    pub url: String,
    /// Request headers as sent, secrets redacted.
    pub request_headers: Vec<(String, String)>,
    pub status: Option<u16>,
    pub response_headers: Vec<(String, String)>,
    /// The first 64 KiB of the response body, lossily decoded as UTF-8.
    pub response_body: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub error_message: Option<String>,
}

/// `delivery show`: the summary, the frozen body and every attempt.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub summary: DeliverySummary,
    pub item_version: Option<i64>,
    pub cancelled_by: Option<String>,
    /// The exact body bytes, as JSON when they parse.
    pub body: serde_json::Value,
    pub attempt_log: Vec<AttemptRecord>,
}

/// Filters of `deliveries` and the console's deliveries view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeliveryFilter {
    pub workflow: Option<WorkflowId>,
    pub stage: Option<StageId>,
    pub state: Option<DeliveryState>,
    pub item: Option<ItemId>,
    pub event: Option<EventType>,
    /// Created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// The error kind of the delivery's last attempt (`timeout`, `connect`, …).
    pub error_kind: Option<ErrorKind>,
    /// The HTTP status of the delivery's last attempt.
    pub status: Option<u16>,
}

/// Creates the `stage.webhook` delivery of an item that just entered a webhook stage, with
/// its body frozen now. `item` is the item as it is after the move; `refire_of` links a
/// re-fire to the delivery it re-fires.
pub(crate) fn insert_delivery(
    tx: &Tx<'_>,
    wf: &Workflow,
    item: &Item,
    previous_stage: Option<StageId>,
    trigger: DeliveryTrigger,
    refire_of: Option<&DeliveryId>,
) -> Result<DeliveryId> {
    let stage = wf.stage(&item.stage).ok_or_else(|| StoreError::NotFound {
        what: "stage",
        id: format!("{}/{}", wf.id, item.stage),
    })?;
    let now = tx.now();
    let id = DeliveryId::generate();
    let meta = DeliveryMeta {
        delivery_id: id.clone(),
        event: EventType::StageWebhook,
        trigger,
        previous_stage,
        created_at: to_time(now),
    };
    let body = build_body(wf, stage, item, &meta)
        .map_err(|e| StoreError::Invalid(format!("cannot build the payload: {e}")))?;
    tx.rows().insert_delivery(&NewDelivery {
        id: &id,
        workflow: &wf.id,
        stage: &item.stage,
        item: Some(&item.id),
        event: EventType::StageWebhook,
        trigger,
        item_version: Some(item.version),
        refire_of,
        lease: None,
        now,
        body: &body,
    })?;
    tx.counts().add_deliveries(
        wf.id.as_str(),
        item.stage.as_str(),
        DeliveryState::Pending.as_str(),
        1,
    );
    Ok(id)
}

/// Writes one notification delivery per `[[notify]]` entry of `wf` that subscribes to
/// `event`, in the caller's transaction (design §6: "one per history row per subscribed event,
/// written in the same transaction"). Each is a delivery of its own event type on the entry's
/// pseudo-stage `notify:N`, with the body `{type, timestamp, data}` frozen now. Notifications
/// have no stage to pause and never cause notifications themselves.
pub(crate) fn insert_notifications(
    tx: &Tx<'_>,
    wf: &Workflow,
    event: EventType,
    item: Option<&ItemId>,
    data: &serde_json::Value,
) -> Result<usize> {
    debug_assert!(event.is_notification());
    let now = tx.now();
    let mut n = 0;
    for (i, entry) in wf.notify.iter().enumerate() {
        if !entry.events.contains(&event) {
            continue;
        }
        let id = DeliveryId::generate();
        let stage = crate::workflow::notify_stage_id(i);
        let body = serde_json::to_vec(&serde_json::json!({
            "type": event,
            "timestamp": to_time(now).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        }))?;
        tx.rows().insert_delivery(&NewDelivery {
            id: &id,
            workflow: &wf.id,
            stage: &stage,
            item,
            event,
            trigger: DeliveryTrigger::Route,
            item_version: None,
            refire_of: None,
            lease: None,
            now,
            body: &body,
        })?;
        tx.counts().add_deliveries(
            wf.id.as_str(),
            stage.as_str(),
            DeliveryState::Pending.as_str(),
            1,
        );
        n += 1;
    }
    Ok(n)
}

/// Cancels the item's open `stage.webhook` deliveries (other than `except`), because the item
/// was moved by hand or re-entered the stage. An attempt already on the wire still records.
pub(crate) fn cancel_open_deliveries(
    tx: &Tx<'_>,
    item: &ItemId,
    reason: CancelReason,
    by: &str,
    except: Option<&DeliveryId>,
) -> Result<usize> {
    // Read first: the counters need each row's state before the update.
    let open = tx.rows().open_webhook_deliveries(item, except)?;
    for d in &open {
        tx.rows().cancel_delivery(d.seq, reason, by, tx.now())?;
        tx.counts().delivery_moved(
            &d.workflow,
            &d.stage,
            &d.state,
            DeliveryState::Cancelled.as_str(),
        );
    }
    Ok(open.len())
}

/// Where a page of a delivery list (newest first) ended: pass it back as `after` for the next
/// page. Opaque to callers: each backend orders its deliveries its own way (design §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeliveryCursor(pub(crate) i64);

impl DeliveryCursor {
    /// The cursor as text, for the API's `next_cursor`.
    pub fn encode(&self) -> String {
        self.0.to_string()
    }

    /// A cursor [`DeliveryCursor::encode`] wrote, or `None`.
    pub fn decode(s: &str) -> Option<DeliveryCursor> {
        s.parse().ok().map(DeliveryCursor)
    }

    /// A cursor for tests of code that only passes cursors along.
    #[cfg(test)]
    pub(crate) fn for_tests(n: i64) -> DeliveryCursor {
        DeliveryCursor(n)
    }
}

impl Store {
    /// One page of deliveries matching `filter`, newest first, after `after`.
    pub fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        after: Option<DeliveryCursor>,
        limit: usize,
    ) -> Result<Vec<(DeliverySummary, DeliveryCursor)>> {
        self.read(|r| r.list_deliveries(filter, after, limit, false))
    }

    /// The `limit` deliveries matching `filter` just before `before` in the list's order
    /// (newest first), or its last ones when `before` is `None`: the reverse keyset read
    /// behind the console's `G` and its scrolling back up from there. In list order.
    pub fn list_deliveries_before(
        &self,
        filter: &DeliveryFilter,
        before: Option<DeliveryCursor>,
        limit: usize,
    ) -> Result<Vec<(DeliverySummary, DeliveryCursor)>> {
        let mut rows = self.read(|r| r.list_deliveries(filter, before, limit, true))?;
        rows.reverse();
        Ok(rows)
    }

    pub fn count_deliveries(&self, filter: &DeliveryFilter) -> Result<i64> {
        self.read(|r| r.count_deliveries(filter))
    }

    /// Deliveries per state across the database (from the counter rows).
    pub fn delivery_totals(&self) -> Result<Vec<(DeliveryState, i64)>> {
        self.read(|r| r.delivery_totals())
    }

    pub fn delivery_detail(&self, id: &DeliveryId) -> Result<DeliveryDetail> {
        self.read(|r| {
            let found = r.delivery(id)?.ok_or_else(|| StoreError::NotFound {
                what: "delivery",
                id: id.to_string(),
            })?;
            let body = serde_json::from_slice(&found.body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&found.body).into_owned())
            });
            Ok(DeliveryDetail {
                summary: found.summary,
                item_version: found.item_version,
                cancelled_by: found.cancelled_by,
                body,
                attempt_log: r.attempts_of(id)?,
            })
        })
    }
}
