//! Deliveries and attempts: creation inside moves, listings and detail.
//!
//! Leasing lives in `leases`, recording outcomes in `attempts`.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row};
use serde::Serialize;

use super::Tx;
use super::items::enum_col;
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

pub(crate) const SUMMARY_COLUMNS: &str = "d.id, d.item_id, i.name, d.workflow_id, d.stage_id, d.event, d.state, d.trigger, \
     d.attempts, d.last_status, d.last_error_kind, d.last_attempt_at, d.next_attempt_at, d.refire_of, \
     d.cancel_reason, d.created_at, d.updated_at, d.seq";

pub(crate) fn summary_from_row(r: &Row) -> rusqlite::Result<DeliverySummary> {
    Ok(DeliverySummary {
        id: DeliveryId(r.get(0)?),
        item_id: r.get::<_, Option<String>>(1)?.map(ItemId),
        item_name: r.get(2)?,
        workflow: WorkflowId(r.get(3)?),
        stage: StageId(r.get(4)?),
        event: enum_col(r, 5)?,
        state: enum_col(r, 6)?,
        trigger: enum_col(r, 7)?,
        attempts: r.get(8)?,
        last_status: r.get(9)?,
        last_error_kind: match r.get::<_, Option<String>>(10)? {
            Some(_) => Some(enum_col(r, 10)?),
            None => None,
        },
        last_attempt_at: r.get::<_, Option<i64>>(11)?.map(to_time),
        next_attempt_at: r.get::<_, Option<i64>>(12)?.map(to_time),
        refire_of: r.get::<_, Option<String>>(13)?.map(DeliveryId),
        cancel_reason: match r.get::<_, Option<String>>(14)? {
            Some(_) => Some(enum_col(r, 14)?),
            None => None,
        },
        created_at: to_time(r.get(15)?),
        updated_at: to_time(r.get(16)?),
    })
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

pub(crate) fn deliveries_of_item(conn: &Connection, item: &ItemId) -> Result<Vec<DeliverySummary>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
         WHERE d.item_id = ?1 ORDER BY d.seq DESC"
    );
    let rows = conn
        .prepare_cached(&sql)?
        .query_map([item.as_str()], summary_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The listing's SQL: newest first after `after`; `backward` reads the other way (the rows
/// before `after`, nearest first; from the list's end when `after` is `None`).
fn delivery_query(
    f: &DeliveryFilter,
    after: Option<i64>,
    limit: Option<usize>,
    backward: bool,
) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut wh = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let mut push = |sql: &str, v: Value, args: &mut Vec<Value>| {
        args.push(v);
        wh.push(sql.replace('?', &format!("?{}", args.len())));
    };
    if let Some(w) = &f.workflow {
        push("d.workflow_id = ?", Value::Text(w.to_string()), &mut args);
    }
    if let Some(s) = &f.stage {
        push("d.stage_id = ?", Value::Text(s.to_string()), &mut args);
    }
    if let Some(s) = f.state {
        push("d.state = ?", Value::Text(s.as_str().into()), &mut args);
    }
    if let Some(i) = &f.item {
        push("d.item_id = ?", Value::Text(i.to_string()), &mut args);
    }
    if let Some(e) = f.event {
        push("d.event = ?", Value::Text(e.as_str().into()), &mut args);
    }
    if let Some(t) = f.since {
        push(
            "d.created_at >= ?",
            Value::Integer(t.timestamp_millis()),
            &mut args,
        );
    }
    if let Some(k) = f.error_kind {
        push(
            "d.last_error_kind = ?",
            Value::Text(k.as_str().into()),
            &mut args,
        );
    }
    if let Some(s) = f.status {
        push("d.last_status = ?", Value::Integer(s.into()), &mut args);
    }
    if let Some(a) = after {
        let op = if backward { "d.seq > ?" } else { "d.seq < ?" };
        push(op, Value::Integer(a), &mut args);
    }
    let where_sql = if wh.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", wh.join(" AND "))
    };
    let limit_sql = limit.map(|l| format!("LIMIT {l}")).unwrap_or_default();
    (
        format!(
            "SELECT {SUMMARY_COLUMNS} FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
             {where_sql} ORDER BY d.seq {} {limit_sql}",
            if backward { "ASC" } else { "DESC" }
        ),
        args,
    )
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
        self.read(|c| {
            let (sql, args) = delivery_query(filter, after.map(|a| a.0), Some(limit), false);
            let rows = c
                .prepare_cached(&sql)?
                .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    Ok((summary_from_row(r)?, DeliveryCursor(r.get(17)?)))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
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
        self.read(|c| {
            let (sql, args) = delivery_query(filter, before.map(|a| a.0), Some(limit), true);
            let mut rows = c
                .prepare_cached(&sql)?
                .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    Ok((summary_from_row(r)?, DeliveryCursor(r.get(17)?)))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.reverse();
            Ok(rows)
        })
    }

    pub fn count_deliveries(&self, filter: &DeliveryFilter) -> Result<i64> {
        self.read(|c| {
            let (sql, args) = delivery_query(filter, None, None, false);
            Ok(c.query_row(
                &format!("SELECT COUNT(*) FROM ({sql})"),
                rusqlite::params_from_iter(args.iter()),
                |r| r.get(0),
            )?)
        })
    }

    /// Deliveries per state across the database (from the counter rows).
    pub fn delivery_totals(&self) -> Result<Vec<(DeliveryState, i64)>> {
        self.read(|c| {
            let rows = c
                .prepare_cached("SELECT state, SUM(n) FROM delivery_counts GROUP BY state")?
                .query_map([], |r| Ok((enum_col(r, 0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    pub fn delivery_detail(&self, id: &DeliveryId) -> Result<DeliveryDetail> {
        self.read(|c| {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS}, d.item_version, d.cancelled_by, b.body
                 FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
                 JOIN delivery_bodies b ON b.seq = d.seq WHERE d.id = ?1"
            );
            let found = c
                .prepare_cached(&sql)?
                .query_row([id.as_str()], |r| {
                    Ok((
                        summary_from_row(r)?,
                        r.get::<_, Option<i64>>(18)?,
                        r.get::<_, Option<String>>(19)?,
                        r.get::<_, Vec<u8>>(20)?,
                    ))
                })
                .optional()?;
            let (summary, item_version, cancelled_by, body) =
                found.ok_or_else(|| StoreError::NotFound {
                    what: "delivery",
                    id: id.to_string(),
                })?;
            let body = serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
            });
            Ok(DeliveryDetail {
                summary,
                item_version,
                cancelled_by,
                body,
                attempt_log: attempts_of(c, id)?,
            })
        })
    }
}

pub(crate) fn attempts_of(conn: &Connection, id: &DeliveryId) -> Result<Vec<AttemptRecord>> {
    let rows = conn
        .prepare_cached(
            "SELECT number, trigger, counted, started_at, duration_ms, url, request_headers, status,
                    response_headers, response_body, error_kind, error_message
             FROM attempts WHERE delivery_id = ?1 ORDER BY number",
        )?
        .query_map([id.as_str()], |r| {
            let headers = |i: usize| -> rusqlite::Result<Vec<(String, String)>> {
                Ok(r.get::<_, Option<String>>(i)?
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default())
            };
            Ok(AttemptRecord {
                number: r.get(0)?,
                trigger: enum_col(r, 1)?,
                counted: r.get(2)?,
                started_at: to_time(r.get(3)?),
                duration_ms: r.get(4)?,
                url: r.get(5)?,
                request_headers: headers(6)?,
                status: r.get(7)?,
                response_headers: headers(8)?,
                response_body: r
                    .get::<_, Option<Vec<u8>>>(9)?
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                error_kind: match r.get::<_, Option<String>>(10)? {
                    Some(_) => Some(enum_col(r, 10)?),
                    None => None,
                },
                error_message: r.get(11)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}
