//! PostgreSQL's row operations ([`Rows`]): the SQL behind the store's write path, run inside
//! the transaction the writer opened. Each statement is prepared once per connection
//! ([`Conn`]); the SQL is SQLite's (`store/sqlite/rows.rs`) in PostgreSQL's dialect.

use postgres::Row;

use postgres::types::ToSql;

use super::{Conn, json_col, parse_col};
use crate::model::{
    CancelReason, DatasetRef, DeliveryId, DeliveryState, EventType, Item, ItemId, StageId,
    WorkflowId,
};
use crate::store::copy::{TABLES, Table};
use crate::store::seam::{
    AttemptRow, AuditRow, CancelRow, Cell, Counted, DeliveryRow, DeliveryUpdate, Due, Heartbeat,
    HistoryRow, InFlight, ItemMove, Kind, Leased, ManualAttempt, NewDelivery, NewItemRow,
    OpenDelivery, RefireRow, RevisionRow, Rows, StageFlow,
};
use crate::store::{Result, to_time};

/// The row operations on the writer's connection, inside its open transaction.
pub(crate) struct PgRows<'c> {
    pub(crate) conn: &'c Conn,
}

/// An item's columns with its content (kept in `item_content`).
pub(crate) const ITEM_COLUMNS: &str = "i.id, i.workflow_id, i.stage_id, i.state, i.name, i.path, \
     i.dataset_name, i.dataset_slug, i.tags, c.properties, c.slots, c.annotations, i.version, \
     i.created_at, i.updated_at";

pub(crate) fn item_from_row(row: &Row) -> Result<Item> {
    Ok(Item {
        id: ItemId(row.try_get(0)?),
        workflow: WorkflowId(row.try_get(1)?),
        stage: StageId(row.try_get(2)?),
        state: parse_col(row, 3)?,
        name: row.try_get(4)?,
        path: row.try_get(5)?,
        dataset: DatasetRef {
            name: row.try_get(6)?,
            slug: row.try_get(7)?,
        },
        tags: json_col(row, 8)?,
        properties: json_col(row, 9)?,
        slots: json_col(row, 10)?,
        annotations: json_col(row, 11)?,
        version: row.try_get(12)?,
        created_at: to_time(row.try_get(13)?),
        updated_at: to_time(row.try_get(14)?),
    })
}

/// A stage's flow-control columns, in the order `stage_flow` selects them.
pub(crate) fn flow_from_row(r: &Row) -> Result<StageFlow> {
    let tokens: Option<f64> = r.try_get(2)?;
    let at: Option<i64> = r.try_get(3)?;
    Ok(StageFlow {
        held_until: r.try_get(0)?,
        held_reason: r.try_get(1)?,
        bucket: tokens.zip(at),
        next_token_at: r.try_get(4)?,
        concurrency_limit: r.try_get(5)?,
        limit_successes: r.try_get(6)?,
        limit_decreased_at: r.try_get(7)?,
    })
}

/// An item with its content, on any connection (reads use it too). `lock`: in a write
/// transaction, the item row stays locked until its end (see [`PgRows`]).
pub(crate) fn load_item(conn: &Conn, id: &ItemId, lock: bool) -> Result<Option<Item>> {
    conn.query_opt(
        &format!(
            "SELECT {ITEM_COLUMNS} FROM items i JOIN item_content c ON c.seq = i.seq
             WHERE i.id = $1 {}",
            if lock { "FOR UPDATE OF i" } else { "" }
        ),
        &[&id.as_str()],
    )?
    .map(|r| item_from_row(&r))
    .transpose()
}

/// A delivery's frozen body, on any connection.
pub(crate) fn body_of(conn: &Conn, seq: i64) -> Result<Vec<u8>> {
    Ok(conn
        .query_one("SELECT body FROM delivery_bodies WHERE seq = $1", &[&seq])?
        .try_get(0)?)
}

fn in_flight_rows(rows: Vec<Row>) -> Result<Vec<InFlight>> {
    rows.iter()
        .map(|r| {
            Ok(InFlight {
                id: DeliveryId(r.try_get(0)?),
                workflow: r.try_get(1)?,
                stage: r.try_get(2)?,
                number: r.try_get(3)?,
            })
        })
        .collect()
}

fn counts_table(counted: Counted) -> &'static str {
    match counted {
        Counted::Items => "item_counts",
        Counted::Deliveries => "delivery_counts",
    }
}

impl Rows for PgRows<'_> {
    fn current_spec(&self, id: &WorkflowId) -> Result<Option<(String, i64)>> {
        super::reads::current_spec(self.conn, id)
    }

    fn load_item(&self, id: &ItemId) -> Result<Option<Item>> {
        load_item(self.conn, id, true)
    }

    fn load_item_head(&self, id: &ItemId) -> Result<Option<Item>> {
        self.conn
            .query_opt(
                "SELECT id, workflow_id, stage_id, state, name, path, dataset_name, dataset_slug,
                     version, created_at, updated_at
                 FROM items WHERE id = $1 FOR UPDATE",
                &[&id.as_str()],
            )?
            .map(|row| {
                Ok(Item {
                    id: ItemId(row.try_get(0)?),
                    workflow: WorkflowId(row.try_get(1)?),
                    stage: StageId(row.try_get(2)?),
                    state: parse_col(&row, 3)?,
                    name: row.try_get(4)?,
                    path: row.try_get(5)?,
                    dataset: DatasetRef {
                        name: row.try_get(6)?,
                        slug: row.try_get(7)?,
                    },
                    tags: Vec::new(),
                    properties: Default::default(),
                    slots: Vec::new(),
                    annotations: Vec::new(),
                    version: row.try_get(8)?,
                    created_at: to_time(row.try_get(9)?),
                    updated_at: to_time(row.try_get(10)?),
                })
            })
            .transpose()
    }

    fn item_name(&self, id: &ItemId) -> Result<Option<String>> {
        self.conn
            .query_opt("SELECT name FROM items WHERE id = $1", &[&id.as_str()])?
            .map(|r| Ok(r.try_get(0)?))
            .transpose()
    }

    fn move_item(&self, m: &ItemMove<'_>) -> Result<()> {
        // An item entering a stage sorts after every item already there: lists page a stage
        // by the keyset (entered_at, seq), and an arrival keyed before a reader's cursor would
        // never be read. `now` alone does not do it: an item with an older `seq` entering in
        // the same millisecond as the stage's last arrival sorted before it, so it takes that
        // millisecond + 1 (and a clock behind the stage's last arrival takes that arrival's
        // time).
        self.conn.execute(
            "UPDATE items SET stage_id = $2, state = $3, version = $4, updated_at = $5,
                 entered_at = CASE WHEN $6::boolean THEN GREATEST($5::bigint, COALESCE((
                     SELECT l.entered_at + CASE WHEN l.seq > items.seq THEN 1 ELSE 0 END FROM items l
                     WHERE l.workflow_id = items.workflow_id AND l.stage_id = $2 AND l.seq <> items.seq
                     ORDER BY l.entered_at DESC, l.seq DESC LIMIT 1), $5::bigint)) ELSE entered_at END
             WHERE id = $1",
            &[
                &m.id.as_str(),
                &m.stage.as_str(),
                &m.state.as_str(),
                &m.version,
                &m.now,
                &m.entered,
            ],
        )?;
        Ok(())
    }

    fn insert_history(&self, h: &HistoryRow<'_>) -> Result<()> {
        self.conn.execute(
            "INSERT INTO history (item_seq, item_id, workflow_id, from_stage, to_stage, cause, operator, revision, delivery_id, at)
             VALUES ((SELECT seq FROM items WHERE id = $1), $1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &h.item.as_str(),
                &h.workflow.as_str(),
                &h.from.map(|s| s.as_str()),
                &h.to.as_str(),
                &h.cause.as_str(),
                &h.operator,
                &h.revision,
                &h.delivery.map(|d| d.as_str()),
                &h.at,
            ],
        )?;
        Ok(())
    }

    fn insert_item(&self, i: &NewItemRow<'_>) -> Result<bool> {
        let item = i.item;
        let json = i.content()?;
        // `ON CONFLICT DO NOTHING`: an id already present is skipped by the insert itself,
        // and only then looked up (to count it and compare its content).
        let inserted = self.conn.query_opt(
            "INSERT INTO items (id, workflow_id, stage_id, state, name, path, dataset_name, dataset_slug,
                 tags, fingerprint, version, created_at, updated_at, entered_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $11, $12)
             ON CONFLICT (id) DO NOTHING
             RETURNING seq",
            &[
                &item.id.as_str(),
                &item.workflow.as_str(),
                &i.stage.as_str(),
                &i.state.as_str(),
                &item.name,
                &item.path,
                &item.dataset.name,
                &item.dataset.slug,
                &json.tags,
                &i.fingerprint,
                &i.now,
                &i.entered_at,
            ],
        )?;
        let Some(row) = inserted else {
            return Ok(false);
        };
        let seq: i64 = row.try_get(0)?;
        self.conn.execute(
            "INSERT INTO item_content (seq, properties, slots, annotations) VALUES ($1, $2, $3, $4)",
            &[
                &seq,
                &json.properties,
                &json.slots,
                &json.annotations,
            ],
        )?;
        Ok(true)
    }

    fn item_owner(&self, id: &ItemId) -> Result<Option<(String, String)>> {
        self.conn
            .query_opt(
                "SELECT workflow_id, fingerprint FROM items WHERE id = $1",
                &[&id.as_str()],
            )?
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .transpose()
    }

    fn last_arrival(&self, workflow: &WorkflowId, stage: &StageId) -> Result<Option<i64>> {
        // One backward seek of `items_by_stage` (PostgreSQL's min/max optimisation).
        Ok(self
            .conn
            .query_one(
                "SELECT MAX(entered_at) FROM items WHERE workflow_id = $1 AND stage_id = $2",
                &[&workflow.as_str(), &stage.as_str()],
            )?
            .try_get(0)?)
    }

    fn items_in_stage(
        &self,
        workflow: &WorkflowId,
        stage: &StageId,
        after: (i64, i64),
        limit: usize,
    ) -> Result<Vec<((i64, i64), String)>> {
        self.conn
            .query(
                "SELECT entered_at, seq, id FROM items
                 WHERE workflow_id = $1 AND stage_id = $2 AND (entered_at, seq) > ($3, $4)
                 ORDER BY entered_at, seq LIMIT $5",
                &[
                    &workflow.as_str(),
                    &stage.as_str(),
                    &after.0,
                    &after.1,
                    &(limit.min(i64::MAX as usize) as i64),
                ],
            )?
            .iter()
            .map(|r| Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?)))
            .collect()
    }

    fn insert_delivery(&self, d: &NewDelivery<'_>) -> Result<i64> {
        let (state, next_attempt_at, next_number) = match &d.lease {
            None => (DeliveryState::Pending, Some(d.now), 1i64),
            Some(l) => (DeliveryState::InFlight, None, l.number + 1),
        };
        let seq: i64 = self
            .conn
            .query_one(
                "INSERT INTO deliveries (id, workflow_id, stage_id, item_id, event, trigger, state,
                     item_version, next_attempt_at, refire_of, next_number, lease_token, lease_until,
                     lease_owner, lease_number, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)
                 RETURNING seq",
                &[
                    &d.id.as_str(),
                    &d.workflow.as_str(),
                    &d.stage.as_str(),
                    &d.item.map(|i| i.as_str()),
                    &d.event.as_str(),
                    &d.trigger.as_str(),
                    &state.as_str(),
                    &d.item_version,
                    &next_attempt_at,
                    &d.refire_of.map(|r| r.as_str()),
                    &next_number,
                    &d.lease.as_ref().map(|l| l.token),
                    &d.lease.as_ref().map(|l| l.until),
                    &d.lease.as_ref().map(|l| l.owner),
                    &d.lease.as_ref().map(|l| l.number),
                    &d.now,
                ],
            )?
            .try_get(0)?;
        // Bodies live apart from the delivery rows, which are rewritten on every lease and
        // outcome.
        self.conn.execute(
            "INSERT INTO delivery_bodies (seq, body) VALUES ($1, $2)",
            &[&seq, &d.body],
        )?;
        Ok(seq)
    }

    fn body_of(&self, seq: i64) -> Result<Vec<u8>> {
        body_of(self.conn, seq)
    }

    fn open_webhook_deliveries(
        &self,
        item: &ItemId,
        except: Option<&DeliveryId>,
    ) -> Result<Vec<OpenDelivery>> {
        self.conn
            .query(
                // In `deliveries_by_item` order, as SQLite reads them.
                "SELECT seq, workflow_id, stage_id, state FROM deliveries
                 WHERE item_id = $1 AND event = 'stage.webhook'
                   AND state IN ('pending', 'retry_scheduled', 'in_flight')
                   AND id IS DISTINCT FROM $2
                 ORDER BY seq",
                &[&item.as_str(), &except.map(|d| d.as_str())],
            )?
            .iter()
            .map(|r| {
                Ok(OpenDelivery {
                    seq: r.try_get(0)?,
                    workflow: r.try_get(1)?,
                    stage: r.try_get(2)?,
                    state: r.try_get(3)?,
                })
            })
            .collect()
    }

    fn cancel_delivery(&self, seq: i64, reason: CancelReason, by: &str, now: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE deliveries SET state = 'cancelled', cancel_reason = $2, cancelled_by = $3,
                 next_attempt_at = NULL, updated_at = $4
             WHERE seq = $1",
            &[&seq, &reason.as_str(), &by, &now],
        )?;
        Ok(())
    }

    fn delivery_for_record(&self, seq: i64, id: &DeliveryId) -> Result<Option<DeliveryRow>> {
        self.conn
            .query_opt(
                "SELECT state, lease_token, attempts, item_id, item_version, workflow_id, stage_id, event
                 FROM deliveries WHERE seq = $1 AND id = $2 FOR UPDATE",
                &[&seq, &id.as_str()],
            )?
            .map(|r| {
                Ok(DeliveryRow {
                    state: parse_col(&r, 0)?,
                    token: r.try_get(1)?,
                    attempts: r.try_get(2)?,
                    item_id: r.try_get(3)?,
                    item_version: r.try_get(4)?,
                    workflow: WorkflowId(r.try_get(5)?),
                    stage: StageId(r.try_get(6)?),
                    event: parse_col(&r, 7)?,
                })
            })
            .transpose()
    }

    fn upsert_attempt(&self, a: &AttemptRow<'_>) -> Result<()> {
        let o = a.outcome;
        let headers = serde_json::to_string(&o.request_headers)?;
        let response_headers = serde_json::to_string(&o.response_headers)?;
        // The replaced row keeps its `seq` and `xid` (as on SQLite it keeps its `seq`).
        self.conn.execute(
            "INSERT INTO attempts (delivery_id, number, trigger, counted, started_at, duration_ms, url,
                 request_headers, status, response_headers, response_body, error_kind, error_message)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (delivery_id, number) DO UPDATE SET
                 started_at = excluded.started_at, duration_ms = excluded.duration_ms, url = excluded.url,
                 request_headers = excluded.request_headers, status = excluded.status,
                 response_headers = excluded.response_headers, response_body = excluded.response_body,
                 error_kind = excluded.error_kind, error_message = excluded.error_message",
            &[
                &a.delivery.as_str(),
                &a.number,
                &a.trigger.as_str(),
                &i64::from(a.counted),
                &o.started_at,
                &o.duration_ms,
                &o.url,
                &headers,
                &o.status.map(i64::from),
                &response_headers,
                &o.response_body.as_deref(),
                &o.error_kind.map(|k| k.as_str()),
                &o.error_message,
            ],
        )?;
        Ok(())
    }

    fn insert_interrupted_attempt(
        &self,
        id: &DeliveryId,
        number: i64,
        url: &str,
        message: &str,
        now: i64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO attempts (delivery_id, number, trigger, counted, started_at, url, request_headers,
                 error_kind, error_message)
             VALUES ($1, $2, 'scheduled', 0, $3, $4, '[]', 'interrupted', $5)
             ON CONFLICT (delivery_id, number) DO NOTHING",
            &[&id.as_str(), &number, &now, &url, &message],
        )?;
        Ok(())
    }

    fn update_delivery(&self, seq: i64, u: &DeliveryUpdate) -> Result<()> {
        self.conn.execute(
            "UPDATE deliveries SET state = $2, attempts = $3, next_attempt_at = $4, lease_token = NULL,
                 lease_until = NULL, lease_owner = NULL, last_status = $5, last_error_kind = $6,
                 last_attempt_at = $7, updated_at = $8, routed_version = COALESCE($9, routed_version),
                 last_error_class = $10
             WHERE seq = $1",
            &[
                &seq,
                &u.state.as_str(),
                &u.attempts,
                &u.next_attempt_at,
                &u.last_status.map(i64::from),
                &u.last_error_kind.map(|k| k.as_str()),
                &u.last_attempt_at,
                &u.now,
                &u.routed_version,
                &u.last_error_class,
            ],
        )?;
        Ok(())
    }

    fn delivery_for_cancel(&self, id: &DeliveryId) -> Result<Option<CancelRow>> {
        self.conn
            .query_opt(
                "SELECT state, workflow_id, stage_id, item_id, item_version, event FROM deliveries WHERE id = $1 FOR UPDATE",
                &[&id.as_str()],
            )?
            .map(|r| {
                Ok(CancelRow {
                    state: parse_col(&r, 0)?,
                    workflow: r.try_get(1)?,
                    stage: r.try_get(2)?,
                    item_id: r.try_get(3)?,
                    item_version: r.try_get(4)?,
                    event: parse_col(&r, 5)?,
                })
            })
            .transpose()
    }

    fn cancel_open_delivery(
        &self,
        id: &DeliveryId,
        reason: CancelReason,
        by: &str,
        now: i64,
    ) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE deliveries SET state = 'cancelled', cancel_reason = $2, cancelled_by = $3,
                 next_attempt_at = NULL, lease_token = NULL, lease_until = NULL, lease_owner = NULL,
                 updated_at = $4
             WHERE id = $1 AND state IN ('pending', 'in_flight', 'retry_scheduled')",
            &[&id.as_str(), &reason.as_str(), &by, &now],
        )?;
        Ok(n > 0)
    }

    fn delete_finished_delivery(&self, id: &str) -> Result<Option<(String, String, String, i64)>> {
        let Some(deleted) = self.conn.query_opt(
            "DELETE FROM deliveries WHERE id = $1 AND state IN ('succeeded', 'failed', 'cancelled')
             RETURNING seq, workflow_id, stage_id, state",
            &[&id],
        )?
        else {
            return Ok(None);
        };
        let seq: i64 = deleted.try_get(0)?;
        self.conn
            .execute("DELETE FROM delivery_bodies WHERE seq = $1", &[&seq])?;
        let attempts =
            self.conn
                .execute("DELETE FROM attempts WHERE delivery_id = $1", &[&id])? as i64;
        Ok(Some((
            deleted.try_get(1)?,
            deleted.try_get(2)?,
            deleted.try_get(3)?,
            attempts,
        )))
    }

    fn set_routed_version(&self, id: &DeliveryId, version: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE deliveries SET routed_version = $2 WHERE id = $1",
            &[&id.as_str(), &version],
        )?;
        Ok(())
    }

    fn set_refire_of(&self, new: &DeliveryId, old: &DeliveryId) -> Result<()> {
        self.conn.execute(
            "UPDATE deliveries SET refire_of = $2 WHERE id = $1",
            &[&new.as_str(), &old.as_str()],
        )?;
        Ok(())
    }

    fn refire_row(&self, id: &DeliveryId) -> Result<Option<RefireRow>> {
        self.conn
            .query_opt(
                "SELECT workflow_id, stage_id, event, item_id, state, routed_version FROM deliveries WHERE id = $1 FOR UPDATE",
                &[&id.as_str()],
            )?
            .map(|r| {
                Ok(RefireRow {
                    workflow: r.try_get(0)?,
                    stage: r.try_get(1)?,
                    event: r.try_get(2)?,
                    item_id: r.try_get(3)?,
                    state: r.try_get(4)?,
                    routed_version: r.try_get(5)?,
                })
            })
            .transpose()
    }

    fn latest_webhook_delivery(&self, item: &str) -> Result<Option<String>> {
        self.conn
            .query_opt(
                "SELECT id FROM deliveries WHERE item_id = $1 AND event = 'stage.webhook' ORDER BY seq DESC LIMIT 1",
                &[&item],
            )?
            .map(|r| Ok(r.try_get(0)?))
            .transpose()
    }

    fn take_manual_number(&self, id: &DeliveryId) -> Result<Option<ManualAttempt>> {
        self.conn
            .query_opt(
                "UPDATE deliveries SET next_number = next_number + 1 WHERE id = $1
                 RETURNING workflow_id, stage_id, item_id, event, seq, next_number - 1, attempts",
                &[&id.as_str()],
            )?
            .map(|r| {
                Ok(ManualAttempt {
                    workflow: r.try_get(0)?,
                    stage: r.try_get(1)?,
                    item_id: r.try_get(2)?,
                    event: parse_col::<EventType>(&r, 3)?,
                    seq: r.try_get(4)?,
                    number: r.try_get(5)?,
                    attempts: r.try_get(6)?,
                })
            })
            .transpose()
    }

    fn expired_leases(&self, now: i64) -> Result<Vec<InFlight>> {
        // The partial index `deliveries_leased` serves it, in its order (as on SQLite).
        in_flight_rows(self.conn.query(
            "SELECT id, workflow_id, stage_id, lease_number FROM deliveries
             WHERE state = 'in_flight' AND lease_until < $1 ORDER BY lease_until, seq",
            &[&now],
        )?)
    }

    fn leases_of(&self, owner: &str, now: i64) -> Result<Vec<InFlight>> {
        in_flight_rows(self.conn.query(
            "SELECT id, workflow_id, stage_id, lease_number FROM deliveries
             WHERE state = 'in_flight' AND lease_owner = $1 AND lease_until >= $2
             ORDER BY seq",
            &[&owner, &now],
        )?)
    }

    fn release_lease(&self, id: &DeliveryId, number: i64, now: i64) -> Result<bool> {
        // READ COMMITTED re-reads the row once another process's reclaim commits: without the
        // lease's number, that process's new lease (in flight again) would be released here.
        let released = self.conn.execute(
            "UPDATE deliveries SET state = 'pending', next_attempt_at = $2, lease_token = NULL,
                 lease_until = NULL, lease_owner = NULL, last_error_kind = 'interrupted', last_error_class = NULL, updated_at = $2
             WHERE id = $1 AND state = 'in_flight' AND lease_number = $3",
            &[&id.as_str(), &now, &number],
        )?;
        Ok(released > 0)
    }

    fn due_page(&self, now: i64, after: (i64, i64), n: usize) -> Result<Vec<Due>> {
        // The partial index `deliveries_due` yields them in `next_attempt_at` order from
        // `after` and stops at the limit.
        // TODO(issue 17, cross-host leasing): with dispatchers on several hosts this page is
        // where `FOR UPDATE OF d SKIP LOCKED` belongs, so that two hosts never page through
        // (and then wait on) the same due rows.
        self.conn
            .query(
                "SELECT d.seq, d.next_attempt_at, d.workflow_id, d.stage_id, d.state
                 FROM deliveries d
                 WHERE d.state IN ('pending', 'retry_scheduled') AND d.next_attempt_at <= $1
                   AND (d.next_attempt_at, d.seq) > ($2, $3)
                   AND NOT EXISTS (SELECT 1 FROM stages s WHERE s.workflow_id = d.workflow_id
                                   AND s.id = d.stage_id AND s.retired_at IS NULL
                                   AND (s.paused = 1 OR s.held_until > $1 OR s.next_token_at > $1))
                 ORDER BY d.next_attempt_at, d.seq LIMIT $4",
                &[&now, &after.0, &after.1, &(n.min(i64::MAX as usize) as i64)],
            )?
            .iter()
            .map(|r| {
                Ok(Due {
                    seq: r.try_get(0)?,
                    due: r.try_get(1)?,
                    workflow: r.try_get(2)?,
                    stage: r.try_get(3)?,
                    state: r.try_get(4)?,
                })
            })
            .collect()
    }

    fn lease_delivery(
        &self,
        seq: i64,
        token: &str,
        until: i64,
        owner: &str,
        now: i64,
    ) -> Result<Option<Leased>> {
        // The row is locked first and its state read under the lock: under READ COMMITTED
        // another process may have leased and recorded it since `due_page` read it, and the
        // counters must move from the state it really leaves. A row another dispatcher holds
        // is skipped, not waited for.
        self.conn
            .query_opt(
                "WITH old AS (
                     SELECT seq, state FROM deliveries
                     WHERE seq = $1 AND state IN ('pending', 'retry_scheduled')
                     FOR UPDATE SKIP LOCKED)
                 UPDATE deliveries d SET state = 'in_flight', lease_token = $2, lease_until = $3,
                     lease_owner = $4, lease_number = d.next_number, next_number = d.next_number + 1,
                     updated_at = $5
                 FROM old WHERE d.seq = old.seq
                 RETURNING d.id, d.item_id, d.event, d.lease_number, d.attempts, old.state,
                     (SELECT body FROM delivery_bodies b WHERE b.seq = d.seq)",
                &[&seq, &token, &until, &owner, &now],
            )?
            .map(|r| {
                Ok(Leased {
                    id: r.try_get(0)?,
                    item_id: r.try_get(1)?,
                    event: parse_col(&r, 2)?,
                    number: r.try_get(3)?,
                    attempts: r.try_get(4)?,
                    from: Some(r.try_get(5)?),
                    body: r.try_get(6)?,
                })
            })
            .transpose()
    }

    /// A transaction-scoped advisory lock per stage, tried, never waited for: two
    /// dispatchers never wait on each other (nor deadlock) over stages.
    fn lock_stage(&self, workflow: &str, stage: &str, wait: bool) -> Result<bool> {
        if wait {
            self.conn.query_one(
                "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 4848794844))",
                &[&workflow, &stage],
            )?;
            return Ok(true);
        }
        Ok(self
            .conn
            .query_one(
                "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || '/' || $2, 4848794844))",
                &[&workflow, &stage],
            )?
            .try_get(0)?)
    }

    fn stage_flow(&self, workflow: &str, stage: &str) -> Result<Option<StageFlow>> {
        self.conn
            .query_opt(
                "SELECT held_until, held_reason, bucket_tokens, bucket_at, next_token_at,
                        concurrency_limit, limit_successes, limit_decreased_at
                 FROM stages WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL",
                &[&workflow, &stage],
            )?
            .map(|r| flow_from_row(&r))
            .transpose()
    }

    fn put_bucket(
        &self,
        workflow: &str,
        stage: &str,
        tokens: f64,
        at: i64,
        next_token_at: Option<i64>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE stages SET bucket_tokens = $3, bucket_at = $4, next_token_at = $5
             WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL",
            &[&workflow, &stage, &tokens, &at, &next_token_at],
        )?;
        Ok(())
    }

    fn hold_stage(&self, workflow: &str, stage: &str, until: i64, reason: &str) -> Result<bool> {
        let changed = self.conn.execute(
            "UPDATE stages SET held_until = $3, held_reason = $4
             WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL
               AND (held_until IS NULL OR held_until < $3)",
            &[&workflow, &stage, &until, &reason],
        )?;
        Ok(changed > 0)
    }

    fn lift_hold(&self, workflow: &str, stage: &str, now: i64) -> Result<bool> {
        // The hold as it was, from the row this update locked.
        let held: Option<i64> = self
            .conn
            .query_opt(
                "UPDATE stages s SET held_until = NULL, held_reason = NULL
                 FROM (SELECT seq, held_until FROM stages
                       WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL
                       FOR UPDATE) old
                 WHERE s.seq = old.seq
                 RETURNING old.held_until",
                &[&workflow, &stage],
            )?
            .map(|r| r.try_get(0))
            .transpose()?
            .flatten();
        Ok(held.is_some_and(|until| until > now))
    }

    fn put_concurrency_limit(
        &self,
        workflow: &str,
        stage: &str,
        limit: Option<i64>,
        successes: i64,
        decreased_at: i64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE stages SET concurrency_limit = $3, limit_successes = $4,
                 limit_decreased_at = $5
             WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL",
            &[&workflow, &stage, &limit, &successes, &decreased_at],
        )?;
        Ok(())
    }

    fn insert_revision(&self, r: &RevisionRow<'_>) -> Result<()> {
        let sql = if r.created {
            "INSERT INTO workflows (id, name, team, revision, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)"
        } else {
            "UPDATE workflows SET name = $2, team = $3, revision = $4, updated_at = $5 WHERE id = $1"
        };
        self.conn.execute(
            sql,
            &[&r.workflow.as_str(), &r.name, &r.team, &r.revision, &r.now],
        )?;
        self.conn.execute(
            "INSERT INTO workflow_revisions (workflow_id, revision, spec, applied_at, operator) VALUES ($1, $2, $3, $4, $5)",
            &[&r.workflow.as_str(), &r.revision, &r.spec, &r.now, &r.operator],
        )?;
        Ok(())
    }

    fn retire_stage(&self, workflow: &WorkflowId, stage: &StageId, now: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE stages SET retired_at = $3 WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL",
            &[&workflow.as_str(), &stage.as_str(), &now],
        )?;
        Ok(())
    }

    fn upsert_stage(
        &self,
        workflow: &WorkflowId,
        stage: &crate::workflow::Stage,
        position: i64,
    ) -> Result<bool> {
        let updated = self.conn.execute(
            "UPDATE stages SET name = $3, position = $4, next_token_at = NULL
             WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL",
            &[
                &workflow.as_str(),
                &stage.id.as_str(),
                &stage.name,
                &position,
            ],
        )?;
        if updated > 0 {
            return Ok(false);
        }
        self.conn.execute(
            "INSERT INTO stages (workflow_id, id, name, kind, position) VALUES ($1, $2, $3, $4, $5)",
            &[
                &workflow.as_str(),
                &stage.id.as_str(),
                &stage.name,
                &stage.kind().as_str(),
                &position,
            ],
        )?;
        Ok(true)
    }

    fn stage_paused(&self, workflow: &WorkflowId, stage: &StageId) -> Result<bool> {
        // An error when no live stage has this id, as on SQLite.
        let paused: i64 = self
            .conn
            .query_one(
                "SELECT paused FROM stages WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL",
                &[&workflow.as_str(), &stage.as_str()],
            )?
            .try_get(0)?;
        Ok(paused != 0)
    }

    fn set_stage_paused(
        &self,
        workflow: &WorkflowId,
        stage: &StageId,
        reason: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE stages SET paused = $3, paused_reason = $4, consecutive_failures = 0
             WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL",
            &[
                &workflow.as_str(),
                &stage.as_str(),
                &i64::from(reason.is_some()),
                &reason,
            ],
        )?;
        Ok(())
    }

    fn reset_failure_run(&self, workflow: &WorkflowId, stage: &StageId) -> Result<()> {
        self.conn.execute(
            "UPDATE stages SET consecutive_failures = 0
             WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL AND consecutive_failures <> 0",
            &[&workflow.as_str(), &stage.as_str()],
        )?;
        Ok(())
    }

    fn extend_failure_run(&self, workflow: &WorkflowId, stage: &StageId) -> Result<i64> {
        Ok(self
            .conn
            .query_opt(
                "UPDATE stages SET consecutive_failures = consecutive_failures + 1
                 WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL
                 RETURNING consecutive_failures",
                &[&workflow.as_str(), &stage.as_str()],
            )?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0))
    }

    fn pause_stage(&self, workflow: &WorkflowId, stage: &StageId, reason: &str) -> Result<bool> {
        let changed = self.conn.execute(
            "UPDATE stages SET paused = 1, paused_reason = $3
             WHERE workflow_id = $1 AND id = $2 AND retired_at IS NULL AND paused = 0",
            &[&workflow.as_str(), &stage.as_str(), &reason],
        )?;
        Ok(changed > 0)
    }

    fn stored_count(
        &self,
        counted: Counted,
        workflow: &str,
        stage: &str,
        state: Option<&str>,
    ) -> Result<i64> {
        // SUM of a BIGINT is NUMERIC in PostgreSQL: cast it back.
        Ok(self
            .conn
            .query_one(
                &format!(
                    "SELECT COALESCE(SUM(n), 0)::bigint FROM {}
                     WHERE workflow_id = $1 AND stage_id = $2 AND ($3::text IS NULL OR state = $3)",
                    counts_table(counted)
                ),
                &[&workflow, &stage, &state],
            )?
            .try_get(0)?)
    }

    fn add_to_count(
        &self,
        counted: Counted,
        workflow: &str,
        stage: &str,
        state: &str,
        n: i64,
    ) -> Result<()> {
        let table = counts_table(counted);
        self.conn.execute(
            &format!(
                "INSERT INTO {table} (workflow_id, stage_id, state, n) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (workflow_id, stage_id, state) DO UPDATE SET n = {table}.n + excluded.n"
            ),
            &[&workflow, &stage, &state, &n],
        )?;
        Ok(())
    }

    fn upsert_heartbeat(&self, h: &Heartbeat<'_>) -> Result<()> {
        self.conn.execute(
            "INSERT INTO dispatchers (id, pid, host, process_start, started_at, last_beat, concurrency)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET last_beat = excluded.last_beat",
            &[
                &h.id,
                &i64::from(h.pid),
                &h.host,
                &h.process_start,
                &h.started_at,
                &h.now,
                &i64::from(h.concurrency),
            ],
        )?;
        Ok(())
    }

    fn delete_departed_dispatchers(&self, host: &str, beat_before: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM dispatchers WHERE host <> $1 AND last_beat < $2
             AND NOT EXISTS (SELECT 1 FROM deliveries d
                             WHERE d.state = 'in_flight' AND d.lease_owner = dispatchers.id)",
            &[&host, &beat_before],
        )? as usize)
    }

    fn delete_dispatcher(&self, id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM dispatchers WHERE id = $1", &[&id])?;
        Ok(())
    }

    fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )?;
        Ok(())
    }

    fn insert_rows(&self, table: &Table, rows: &[Vec<Cell>]) -> Result<()> {
        let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
        let marks: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
        // Identity columns take the copied row numbers as they are.
        let overriding = if table.paged {
            "OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        let sql = format!(
            "INSERT INTO {} ({}) {overriding} VALUES ({})",
            table.name,
            columns.join(", "),
            marks.join(", ")
        );
        for row in rows {
            let values: Vec<Box<dyn ToSql + Sync>> = row
                .iter()
                .zip(table.columns)
                .map(|(cell, (_, kind))| -> Box<dyn ToSql + Sync> {
                    match (cell, kind) {
                        (Cell::Int(n), _) => Box::new(*n),
                        (Cell::Real(x), _) => Box::new(*x),
                        (Cell::Text(t), _) => Box::new(t.clone()),
                        (Cell::Bytes(b), _) => Box::new(b.clone()),
                        (Cell::Null, Kind::Int) => Box::new(None::<i64>),
                        (Cell::Null, Kind::Real) => Box::new(None::<f64>),
                        (Cell::Null, Kind::Text) => Box::new(None::<String>),
                        (Cell::Null, Kind::Bytes) => Box::new(None::<Vec<u8>>),
                    }
                })
                .collect();
            let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
            self.conn.execute(&sql, &refs)?;
        }
        Ok(())
    }

    /// Each identity sequence continues after the largest copied row number.
    fn follow_copied_rows(&self) -> Result<()> {
        for table in TABLES.iter().filter(|t| t.paged) {
            self.conn.batch(&format!(
                "SELECT setval(pg_get_serial_sequence('{0}', 'seq'),
                               GREATEST((SELECT MAX(seq) FROM {0}), 1),
                               (SELECT MAX(seq) FROM {0}) IS NOT NULL)",
                table.name
            ))?;
        }
        Ok(())
    }

    fn recount_all(&self) -> Result<()> {
        for (counts, rows) in [("item_counts", "items"), ("delivery_counts", "deliveries")] {
            self.conn.batch(&format!(
                "DELETE FROM {counts};
                 INSERT INTO {counts} (workflow_id, stage_id, state, n)
                 SELECT workflow_id, stage_id, state, COUNT(*) FROM {rows}
                 GROUP BY workflow_id, stage_id, state;"
            ))?;
        }
        Ok(())
    }

    fn delete_audit_before(&self, before: i64, limit: usize) -> Result<i64> {
        Ok(self.conn.execute(
            "DELETE FROM audit WHERE seq IN
                (SELECT seq FROM audit WHERE at < $1 ORDER BY seq LIMIT $2)",
            &[&before, &(limit.min(i64::MAX as usize) as i64)],
        )? as i64)
    }

    fn set_cache_kib(&self, kib: i64) -> Result<i64> {
        // PostgreSQL's buffer cache is the server's, not the connection's: nothing to set,
        // and the setting to restore is the one given.
        Ok(kib)
    }

    fn give_back_pages(&self, _pages: i64) -> Result<i64> {
        // Autovacuum gives space back by itself; there is no free list to shrink here.
        Ok(0)
    }

    fn insert_audit(&self, a: &AuditRow<'_>) -> Result<i64> {
        Ok(self
            .conn
            .query_one(
                "INSERT INTO audit (at, operator, action, target, filter, count, via, outcome, matched)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq",
                &[
                    &a.at, &a.operator, &a.action, &a.target, &a.filter, &a.count, &a.via,
                    &a.outcome, &a.matched,
                ],
            )?
            .try_get(0)?)
    }

    fn finish_audit(&self, seq: i64, outcome: &str, count: i64, ids: Option<&str>) -> Result<()> {
        self.conn.execute(
            "UPDATE audit SET outcome = $2, count = $3, ids = $4 WHERE seq = $1",
            &[&seq, &outcome, &count, &ids],
        )?;
        Ok(())
    }
}
