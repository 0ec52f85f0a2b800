//! SQLite's row operations ([`Rows`]): the SQL behind the store's backend-neutral write
//! path. Each statement is cached on the writer's connection (`prepare_cached`); the hot ones
//! name their index and inline their constants so that their plans never depend on a bound
//! value (see `open_connection`).

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::reads::{enum_col, json_col};
use crate::model::{
    CancelReason, DatasetRef, DeliveryId, DeliveryState, EventType, Item, ItemId, StageId,
    WorkflowId,
};
use crate::store::copy::Table;
use crate::store::seam::{
    AttemptRow, AuditRow, CancelRow, Cell, Counted, DeliveryRow, DeliveryUpdate, Due, Heartbeat,
    HistoryRow, InFlight, ItemMove, Leased, ManualAttempt, NewDelivery, NewItemRow, OpenDelivery,
    RefireRow, RevisionRow, Rows, StageFlow,
};
use crate::store::{Result, to_time};

/// The row operations on the writer's connection, inside its open transaction.
pub(crate) struct SqliteRows<'c> {
    pub(crate) conn: &'c Connection,
}

/// An item's columns with its content (migration 4 keeps the content in `item_content`).
pub(crate) const ITEM_COLUMNS: &str = "i.id, i.workflow_id, i.stage_id, i.state, i.name, i.path, \
     i.dataset_name, i.dataset_slug, i.tags, c.properties, c.slots, c.annotations, i.version, \
     i.created_at, i.updated_at";

pub(crate) fn item_from_row(row: &Row) -> rusqlite::Result<Item> {
    Ok(Item {
        id: ItemId(row.get(0)?),
        workflow: WorkflowId(row.get(1)?),
        stage: StageId(row.get(2)?),
        state: enum_col(row, 3)?,
        name: row.get(4)?,
        path: row.get(5)?,
        dataset: DatasetRef {
            name: row.get(6)?,
            slug: row.get(7)?,
        },
        tags: json_col(row, 8)?,
        properties: json_col(row, 9)?,
        slots: json_col(row, 10)?,
        annotations: json_col(row, 11)?,
        version: row.get(12)?,
        created_at: to_time(row.get(13)?),
        updated_at: to_time(row.get(14)?),
    })
}

/// An item with its content, on any connection (reads use it too).
pub(crate) fn load_item(conn: &Connection, id: &ItemId) -> Result<Option<Item>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS} FROM items i JOIN item_content c ON c.seq = i.seq
             WHERE i.id = ?1"
        ))?
        .query_row([id.as_str()], item_from_row)
        .optional()?)
}

/// A delivery's frozen body, on any connection.
pub(crate) fn body_of(conn: &Connection, seq: i64) -> Result<Vec<u8>> {
    Ok(conn
        .prepare_cached("SELECT body FROM delivery_bodies WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))?)
}

fn in_flight_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    p: impl rusqlite::Params,
) -> Result<Vec<InFlight>> {
    Ok(stmt
        .query_map(p, |r| {
            Ok(InFlight {
                id: DeliveryId(r.get(0)?),
                workflow: r.get(1)?,
                stage: r.get(2)?,
                number: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// A stage's flow-control columns, in the order `stage_flow` selects them.
pub(crate) fn flow_from_row(r: &Row) -> rusqlite::Result<StageFlow> {
    let tokens: Option<f64> = r.get(2)?;
    let at: Option<i64> = r.get(3)?;
    Ok(StageFlow {
        held_until: r.get(0)?,
        held_reason: r.get(1)?,
        bucket: tokens.zip(at),
        next_token_at: r.get(4)?,
        concurrency_limit: r.get(5)?,
        limit_successes: r.get(6)?,
        limit_decreased_at: r.get(7)?,
    })
}

fn counts_table(counted: Counted) -> &'static str {
    match counted {
        Counted::Items => "item_counts",
        Counted::Deliveries => "delivery_counts",
    }
}

impl Rows for SqliteRows<'_> {
    fn current_spec(&self, id: &WorkflowId) -> Result<Option<(String, i64)>> {
        super::reads::current_spec(self.conn, id)
    }

    fn load_item(&self, id: &ItemId) -> Result<Option<Item>> {
        load_item(self.conn, id)
    }

    fn load_item_head(&self, id: &ItemId) -> Result<Option<Item>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, workflow_id, stage_id, state, name, path, dataset_name, dataset_slug,
                     version, created_at, updated_at
                 FROM items WHERE id = ?1",
            )?
            .query_row([id.as_str()], |row| {
                Ok(Item {
                    id: ItemId(row.get(0)?),
                    workflow: WorkflowId(row.get(1)?),
                    stage: StageId(row.get(2)?),
                    state: enum_col(row, 3)?,
                    name: row.get(4)?,
                    path: row.get(5)?,
                    dataset: DatasetRef {
                        name: row.get(6)?,
                        slug: row.get(7)?,
                    },
                    tags: Vec::new(),
                    properties: Default::default(),
                    slots: Vec::new(),
                    annotations: Vec::new(),
                    version: row.get(8)?,
                    created_at: to_time(row.get(9)?),
                    updated_at: to_time(row.get(10)?),
                })
            })
            .optional()?)
    }

    fn item_name(&self, id: &ItemId) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT name FROM items WHERE id = ?1")?
            .query_row([id.as_str()], |r| r.get(0))
            .optional()?)
    }

    fn move_item(&self, m: &ItemMove<'_>) -> Result<()> {
        // An item entering a stage sorts after every item already there: lists page a stage
        // by the keyset (entered_at, seq), and an arrival keyed before a reader's cursor would
        // never be read. `now` alone does not do it: an item with an older `seq` entering in
        // the same millisecond as the stage's last arrival sorted before it, so it takes that
        // millisecond + 1 (and a clock behind the stage's last arrival takes that arrival's
        // time).
        self.conn
            .prepare_cached(
                "UPDATE items SET stage_id = ?2, state = ?3, version = ?4, updated_at = ?5,
                     entered_at = CASE WHEN ?6 THEN MAX(?5, COALESCE((
                         SELECT l.entered_at + (l.seq > items.seq) FROM items l INDEXED BY items_by_stage
                         WHERE l.workflow_id = items.workflow_id AND l.stage_id = ?2 AND l.seq != items.seq
                         ORDER BY l.entered_at DESC, l.seq DESC LIMIT 1), ?5)) ELSE entered_at END
                 WHERE id = ?1",
            )?
            .execute(params![
                m.id.as_str(),
                m.stage.as_str(),
                m.state.as_str(),
                m.version,
                m.now,
                m.entered
            ])?;
        Ok(())
    }

    fn insert_history(&self, h: &HistoryRow<'_>) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO history (item_seq, item_id, workflow_id, from_stage, to_stage, cause, operator, revision, delivery_id, at)
                 VALUES ((SELECT seq FROM items WHERE id = ?1), ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                h.item.as_str(),
                h.workflow.as_str(),
                h.from.map(|s| s.as_str()),
                h.to.as_str(),
                h.cause.as_str(),
                h.operator,
                h.revision,
                h.delivery.map(|d| d.as_str()),
                h.at
            ])?;
        Ok(())
    }

    fn insert_item(&self, i: &NewItemRow<'_>) -> Result<bool> {
        let item = i.item;
        let json = i.content()?;
        // `ON CONFLICT DO NOTHING`: an id already present is skipped by the insert itself,
        // and only then looked up (to count it and compare its content).
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO items (id, workflow_id, stage_id, state, name, path, dataset_name, dataset_slug,
                     tags, fingerprint, version, created_at, updated_at, entered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 1, ?11, ?11, ?12)
                 ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                item.id.as_str(),
                item.workflow.as_str(),
                i.stage.as_str(),
                i.state.as_str(),
                item.name,
                item.path,
                item.dataset.name,
                item.dataset.slug,
                json.tags,
                i.fingerprint,
                i.now,
                i.entered_at,
            ])?;
        if inserted == 0 {
            return Ok(false);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO item_content (seq, properties, slots, annotations) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                self.conn.last_insert_rowid(),
                json.properties,
                json.slots,
                json.annotations,
            ])?;
        Ok(true)
    }

    fn item_owner(&self, id: &ItemId) -> Result<Option<(String, String)>> {
        Ok(self
            .conn
            .prepare_cached("SELECT workflow_id, fingerprint FROM items WHERE id = ?1")?
            .query_row([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn last_arrival(&self, workflow: &WorkflowId, stage: &StageId) -> Result<Option<i64>> {
        // One covering seek of `items_by_stage` (SQLite's min/max optimisation).
        Ok(self
            .conn
            .prepare_cached(
                "SELECT MAX(entered_at) FROM items WHERE workflow_id = ?1 AND stage_id = ?2",
            )?
            .query_row([workflow.as_str(), stage.as_str()], |r| r.get(0))?)
    }

    fn items_in_stage(
        &self,
        workflow: &WorkflowId,
        stage: &StageId,
        after: (i64, i64),
        limit: usize,
    ) -> Result<Vec<((i64, i64), String)>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT entered_at, seq, id FROM items
                 WHERE workflow_id = ?1 AND stage_id = ?2 AND (entered_at, seq) > (?3, ?4)
                 ORDER BY entered_at, seq LIMIT ?5",
            )?
            .query_map(
                params![
                    workflow.as_str(),
                    stage.as_str(),
                    after.0,
                    after.1,
                    limit.min(i64::MAX as usize) as i64
                ],
                |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)),
            )?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn insert_delivery(&self, d: &NewDelivery<'_>) -> Result<i64> {
        let (state, next_attempt_at, next_number) = match &d.lease {
            None => (DeliveryState::Pending, Some(d.now), 1),
            Some(l) => (DeliveryState::InFlight, None, l.number + 1),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO deliveries (id, workflow_id, stage_id, item_id, event, trigger, state,
                     item_version, next_attempt_at, refire_of, next_number, lease_token, lease_until,
                     lease_owner, lease_number, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?16)",
            )?
            .execute(params![
                d.id.as_str(),
                d.workflow.as_str(),
                d.stage.as_str(),
                d.item.map(|i| i.as_str()),
                d.event.as_str(),
                d.trigger.as_str(),
                state.as_str(),
                d.item_version,
                next_attempt_at,
                d.refire_of.map(|r| r.as_str()),
                next_number,
                d.lease.as_ref().map(|l| l.token),
                d.lease.as_ref().map(|l| l.until),
                d.lease.as_ref().map(|l| l.owner),
                d.lease.as_ref().map(|l| l.number),
                d.now,
            ])?;
        let seq = self.conn.last_insert_rowid();
        // Bodies live apart from the delivery rows, which are rewritten on every lease and
        // outcome (migration 3).
        self.conn
            .prepare_cached("INSERT INTO delivery_bodies (seq, body) VALUES (?1, ?2)")?
            .execute(params![seq, d.body])?;
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
        Ok(self
            .conn
            .prepare_cached(
                "SELECT seq, workflow_id, stage_id, state FROM deliveries
                 WHERE item_id = ?1 AND event = 'stage.webhook'
                   AND state IN ('pending', 'retry_scheduled', 'in_flight')
                   AND id IS NOT ?2",
            )?
            .query_map(params![item.as_str(), except.map(|d| d.as_str())], |r| {
                Ok(OpenDelivery {
                    seq: r.get(0)?,
                    workflow: r.get(1)?,
                    stage: r.get(2)?,
                    state: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn cancel_delivery(&self, seq: i64, reason: CancelReason, by: &str, now: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'cancelled', cancel_reason = ?2, cancelled_by = ?3,
                     next_attempt_at = NULL, updated_at = ?4
                 WHERE seq = ?1",
            )?
            .execute(params![seq, reason.as_str(), by, now])?;
        Ok(())
    }

    fn delivery_for_record(&self, seq: i64, id: &DeliveryId) -> Result<Option<DeliveryRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT state, lease_token, attempts, item_id, item_version, workflow_id, stage_id, event
                 FROM deliveries WHERE seq = ?1 AND id = ?2",
            )?
            .query_row(params![seq, id.as_str()], |r| {
                Ok(DeliveryRow {
                    state: enum_col(r, 0)?,
                    token: r.get(1)?,
                    attempts: r.get(2)?,
                    item_id: r.get(3)?,
                    item_version: r.get(4)?,
                    workflow: WorkflowId(r.get(5)?),
                    stage: StageId(r.get(6)?),
                    event: enum_col(r, 7)?,
                })
            })
            .optional()?)
    }

    fn upsert_attempt(&self, a: &AttemptRow<'_>) -> Result<()> {
        let o = a.outcome;
        let headers = serde_json::to_string(&o.request_headers)?;
        let response_headers = serde_json::to_string(&o.response_headers)?;
        self.conn
            .prepare_cached(
                "INSERT INTO attempts (delivery_id, number, trigger, counted, started_at, duration_ms, url,
                     request_headers, status, response_headers, response_body, error_kind, error_message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (delivery_id, number) DO UPDATE SET
                     started_at = excluded.started_at, duration_ms = excluded.duration_ms, url = excluded.url,
                     request_headers = excluded.request_headers, status = excluded.status,
                     response_headers = excluded.response_headers, response_body = excluded.response_body,
                     error_kind = excluded.error_kind, error_message = excluded.error_message",
            )?
            .execute(params![
                a.delivery.as_str(),
                a.number,
                a.trigger.as_str(),
                a.counted,
                o.started_at,
                o.duration_ms,
                o.url,
                headers,
                o.status,
                response_headers,
                o.response_body,
                o.error_kind.map(|k| k.as_str()),
                o.error_message,
            ])?;
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
        self.conn
            .prepare_cached(
                "INSERT INTO attempts (delivery_id, number, trigger, counted, started_at, url, request_headers,
                     error_kind, error_message)
                 VALUES (?1, ?2, 'scheduled', 0, ?3, ?4, '[]', 'interrupted', ?5)
                 ON CONFLICT (delivery_id, number) DO NOTHING",
            )?
            .execute(params![id.as_str(), number, now, url, message])?;
        Ok(())
    }

    fn update_delivery(&self, seq: i64, u: &DeliveryUpdate) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE deliveries SET state = ?2, attempts = ?3, next_attempt_at = ?4, lease_token = NULL,
                     lease_until = NULL, lease_owner = NULL, last_status = ?5, last_error_kind = ?6,
                     last_attempt_at = ?7, updated_at = ?8, routed_version = COALESCE(?9, routed_version),
                     last_error_class = ?10
                 WHERE seq = ?1",
            )?
            .execute(params![
                seq,
                u.state.as_str(),
                u.attempts,
                u.next_attempt_at,
                u.last_status,
                u.last_error_kind.map(|k| k.as_str()),
                u.last_attempt_at,
                u.now,
                u.routed_version,
                u.last_error_class,
            ])?;
        Ok(())
    }

    fn delivery_for_cancel(&self, id: &DeliveryId) -> Result<Option<CancelRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT state, workflow_id, stage_id, item_id, item_version, event FROM deliveries WHERE id = ?1",
            )?
            .query_row([id.as_str()], |r| {
                Ok(CancelRow {
                    state: enum_col(r, 0)?,
                    workflow: r.get(1)?,
                    stage: r.get(2)?,
                    item_id: r.get(3)?,
                    item_version: r.get(4)?,
                    event: enum_col(r, 5)?,
                })
            })
            .optional()?)
    }

    fn cancel_open_delivery(
        &self,
        id: &DeliveryId,
        reason: CancelReason,
        by: &str,
        now: i64,
    ) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'cancelled', cancel_reason = ?2, cancelled_by = ?3,
                     next_attempt_at = NULL, lease_token = NULL, lease_until = NULL, lease_owner = NULL,
                     updated_at = ?4
                 WHERE id = ?1 AND state IN ('pending', 'in_flight', 'retry_scheduled')",
            )?
            .execute(params![id.as_str(), reason.as_str(), by, now])?;
        Ok(n > 0)
    }

    fn delete_finished_delivery(&self, id: &str) -> Result<Option<(String, String, String, i64)>> {
        let deleted: Option<(i64, String, String, String)> = self
            .conn
            .prepare_cached(
                "DELETE FROM deliveries WHERE id = ?1 AND state IN ('succeeded', 'failed', 'cancelled')
                 RETURNING seq, workflow_id, stage_id, state",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        let Some((seq, wf, stage, state)) = deleted else {
            return Ok(None);
        };
        self.conn
            .prepare_cached("DELETE FROM delivery_bodies WHERE seq = ?1")?
            .execute([seq])?;
        let attempts = self
            .conn
            .prepare_cached("DELETE FROM attempts WHERE delivery_id = ?1")?
            .execute([id])? as i64;
        Ok(Some((wf, stage, state, attempts)))
    }

    fn set_routed_version(&self, id: &DeliveryId, version: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE deliveries SET routed_version = ?2 WHERE id = ?1")?
            .execute(params![id.as_str(), version])?;
        Ok(())
    }

    fn set_refire_of(&self, new: &DeliveryId, old: &DeliveryId) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE deliveries SET refire_of = ?2 WHERE id = ?1")?
            .execute([new.as_str(), old.as_str()])?;
        Ok(())
    }

    fn refire_row(&self, id: &DeliveryId) -> Result<Option<RefireRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT workflow_id, stage_id, event, item_id, state, routed_version FROM deliveries WHERE id = ?1",
            )?
            .query_row([id.as_str()], |r| {
                Ok(RefireRow {
                    workflow: r.get(0)?,
                    stage: r.get(1)?,
                    event: r.get(2)?,
                    item_id: r.get(3)?,
                    state: r.get(4)?,
                    routed_version: r.get(5)?,
                })
            })
            .optional()?)
    }

    fn latest_webhook_delivery(&self, item: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id FROM deliveries WHERE item_id = ?1 AND event = 'stage.webhook' ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([item], |r| r.get(0))
            .optional()?)
    }

    fn take_manual_number(&self, id: &DeliveryId) -> Result<Option<ManualAttempt>> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET next_number = next_number + 1 WHERE id = ?1
                 RETURNING workflow_id, stage_id, item_id, event, seq, next_number - 1, attempts",
            )?
            .query_row([id.as_str()], |r| {
                Ok(ManualAttempt {
                    workflow: r.get(0)?,
                    stage: r.get(1)?,
                    item_id: r.get(2)?,
                    event: enum_col::<EventType>(r, 3)?,
                    seq: r.get(4)?,
                    number: r.get(5)?,
                    attempts: r.get(6)?,
                })
            })
            .optional()?)
    }

    fn expired_leases(&self, now: i64) -> Result<Vec<InFlight>> {
        // INDEXED BY: the planner otherwise reads every in-flight row to test its deadline,
        // on every lease.
        let mut s = self.conn.prepare_cached(
            "SELECT id, workflow_id, stage_id, lease_number FROM deliveries INDEXED BY deliveries_leased
             WHERE state = 'in_flight' AND lease_until < ?1",
        )?;
        in_flight_rows(&mut s, [now])
    }

    fn leases_of(&self, owner: &str, now: i64) -> Result<Vec<InFlight>> {
        let mut s = self.conn.prepare_cached(
            "SELECT id, workflow_id, stage_id, lease_number FROM deliveries
             WHERE state = 'in_flight' AND lease_owner = ?1 AND lease_until >= ?2",
        )?;
        in_flight_rows(&mut s, params![owner, now])
    }

    fn release_lease(&self, id: &DeliveryId, number: i64, now: i64) -> Result<bool> {
        let released = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = ?2, lease_token = NULL,
                 lease_until = NULL, lease_owner = NULL, last_error_kind = 'interrupted', last_error_class = NULL, updated_at = ?2
             WHERE id = ?1 AND state = 'in_flight' AND lease_number = ?3",
            )?
            .execute(params![id.as_str(), now, number])?;
        Ok(released > 0)
    }

    fn due_page(&self, now: i64, after: (i64, i64), n: usize) -> Result<Vec<Due>> {
        // INDEXED BY: without statistics SQLite picked `deliveries_by_state` here and sorted
        // every pending delivery on each lease (quadratic over a big backlog); the partial due
        // index (whose keys end in the rowid) yields them in order from `after` and stops at
        // the limit.
        Ok(self
            .conn
            .prepare_cached(
                "SELECT d.seq, d.next_attempt_at, d.workflow_id, d.stage_id, d.state
                 FROM deliveries d INDEXED BY deliveries_due
                 WHERE d.state IN ('pending', 'retry_scheduled') AND d.next_attempt_at <= ?1
                   AND (d.next_attempt_at, d.seq) > (?2, ?3)
                   AND NOT EXISTS (SELECT 1 FROM stages s WHERE s.workflow_id = d.workflow_id
                                   AND s.id = d.stage_id AND s.retired_at IS NULL
                                   AND (s.paused = 1 OR s.held_until > ?1 OR s.next_token_at > ?1))
                 ORDER BY d.next_attempt_at, d.seq LIMIT ?4",
            )?
            .query_map(params![now, after.0, after.1, n as i64], |r| {
                Ok(Due {
                    seq: r.get(0)?,
                    due: r.get(1)?,
                    workflow: r.get(2)?,
                    stage: r.get(3)?,
                    state: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn lease_delivery(
        &self,
        seq: i64,
        token: &str,
        until: i64,
        owner: &str,
        now: i64,
    ) -> Result<Option<Leased>> {
        // OR FAIL: this one-row update cannot break a constraint (every value it sets is given
        // and not null), and with the default ABORT SQLite keeps a statement journal for it:
        // ~17 % of the lease's instructions (issue 4).
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE OR FAIL deliveries SET state = 'in_flight', lease_token = ?2, lease_until = ?3,
                     lease_owner = ?4, lease_number = next_number, next_number = next_number + 1,
                     updated_at = ?5
                 WHERE seq = ?1 AND state IN ('pending', 'retry_scheduled')
                 RETURNING id, item_id, event, lease_number, attempts",
            )?
            .query_row(params![seq, token, until, owner, now], |r| {
                Ok(Leased {
                    id: r.get(0)?,
                    item_id: r.get(1)?,
                    event: enum_col(r, 2)?,
                    number: r.get(3)?,
                    attempts: r.get(4)?,
                    from: None,
                    body: None,
                })
            })
            .optional()?)
    }

    /// SQLite's write lock already serialises every lease transaction.
    fn lock_stage(&self, _workflow: &str, _stage: &str, _wait: bool) -> Result<bool> {
        Ok(true)
    }

    fn stage_flow(&self, workflow: &str, stage: &str) -> Result<Option<StageFlow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT held_until, held_reason, bucket_tokens, bucket_at, next_token_at,
                        concurrency_limit, limit_successes, limit_decreased_at
                 FROM stages WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL",
            )?
            .query_row([workflow, stage], flow_from_row)
            .optional()?)
    }

    fn put_bucket(
        &self,
        workflow: &str,
        stage: &str,
        tokens: f64,
        at: i64,
        next_token_at: Option<i64>,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE stages SET bucket_tokens = ?3, bucket_at = ?4, next_token_at = ?5
                 WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL",
            )?
            .execute(params![workflow, stage, tokens, at, next_token_at])?;
        Ok(())
    }

    fn hold_stage(&self, workflow: &str, stage: &str, until: i64, reason: &str) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE stages SET held_until = ?3, held_reason = ?4
                 WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL
                   AND (held_until IS NULL OR held_until < ?3)",
            )?
            .execute(params![workflow, stage, until, reason])?;
        Ok(changed > 0)
    }

    fn lift_hold(&self, workflow: &str, stage: &str, now: i64) -> Result<bool> {
        let held: Option<i64> = self
            .conn
            .query_row(
                "SELECT held_until FROM stages
                 WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL",
                params![workflow, stage],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        if held.is_none() {
            return Ok(false);
        }
        self.conn.execute(
            "UPDATE stages SET held_until = NULL, held_reason = NULL
             WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL",
            params![workflow, stage],
        )?;
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
        self.conn
            .prepare_cached(
                "UPDATE stages SET concurrency_limit = ?3, limit_successes = ?4,
                     limit_decreased_at = ?5
                 WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL",
            )?
            .execute(params![workflow, stage, limit, successes, decreased_at])?;
        Ok(())
    }

    fn insert_revision(&self, r: &RevisionRow<'_>) -> Result<()> {
        let sql = if r.created {
            "INSERT INTO workflows (id, name, team, revision, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)"
        } else {
            "UPDATE workflows SET name = ?2, team = ?3, revision = ?4, updated_at = ?5 WHERE id = ?1"
        };
        self.conn.execute(
            sql,
            params![r.workflow.as_str(), r.name, r.team, r.revision, r.now],
        )?;
        self.conn.execute(
            "INSERT INTO workflow_revisions (workflow_id, revision, spec, applied_at, operator) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![r.workflow.as_str(), r.revision, r.spec, r.now, r.operator],
        )?;
        Ok(())
    }

    fn retire_stage(&self, workflow: &WorkflowId, stage: &StageId, now: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE stages SET retired_at = ?3 WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL",
            params![workflow.as_str(), stage.as_str(), now],
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
            "UPDATE stages SET name = ?3, position = ?4, next_token_at = NULL
             WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL",
            params![workflow.as_str(), stage.id.as_str(), stage.name, position],
        )?;
        if updated > 0 {
            return Ok(false);
        }
        self.conn.execute(
            "INSERT INTO stages (workflow_id, id, name, kind, position) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                workflow.as_str(),
                stage.id.as_str(),
                stage.name,
                stage.kind().as_str(),
                position
            ],
        )?;
        Ok(true)
    }

    fn stage_paused(&self, workflow: &WorkflowId, stage: &StageId) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT paused FROM stages WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL",
            [workflow.as_str(), stage.as_str()],
            |r| r.get(0),
        )?)
    }

    fn set_stage_paused(
        &self,
        workflow: &WorkflowId,
        stage: &StageId,
        reason: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE stages SET paused = ?3, paused_reason = ?4, consecutive_failures = 0
             WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL",
            params![workflow.as_str(), stage.as_str(), reason.is_some(), reason],
        )?;
        Ok(())
    }

    fn reset_failure_run(&self, workflow: &WorkflowId, stage: &StageId) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE stages SET consecutive_failures = 0
                 WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL AND consecutive_failures != 0",
            )?
            .execute([workflow.as_str(), stage.as_str()])?;
        Ok(())
    }

    fn extend_failure_run(&self, workflow: &WorkflowId, stage: &StageId) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE stages SET consecutive_failures = consecutive_failures + 1
                 WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL
                 RETURNING consecutive_failures",
            )?
            .query_row([workflow.as_str(), stage.as_str()], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    fn pause_stage(&self, workflow: &WorkflowId, stage: &StageId, reason: &str) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE stages SET paused = 1, paused_reason = ?3
                 WHERE workflow_id = ?1 AND id = ?2 AND retired_at IS NULL AND paused = 0",
            )?
            .execute(params![workflow.as_str(), stage.as_str(), reason])?;
        Ok(changed > 0)
    }

    fn stored_count(
        &self,
        counted: Counted,
        workflow: &str,
        stage: &str,
        state: Option<&str>,
    ) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT COALESCE(SUM(n), 0) FROM {}
                 WHERE workflow_id = ?1 AND stage_id = ?2 AND (?3 IS NULL OR state = ?3)",
                counts_table(counted)
            ))?
            .query_row(params![workflow, stage, state], |r| r.get(0))?)
    }

    fn add_to_count(
        &self,
        counted: Counted,
        workflow: &str,
        stage: &str,
        state: &str,
        n: i64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO {} (workflow_id, stage_id, state, n) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET n = n + excluded.n",
                counts_table(counted)
            ))?
            .execute(params![workflow, stage, state, n])?;
        Ok(())
    }

    fn upsert_heartbeat(&self, h: &Heartbeat<'_>) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO dispatchers (id, pid, host, process_start, started_at, last_beat, concurrency)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET last_beat = excluded.last_beat",
            )?
            .execute(params![
                h.id,
                h.pid,
                h.host,
                h.process_start,
                h.started_at,
                h.now,
                h.concurrency
            ])?;
        Ok(())
    }

    fn delete_departed_dispatchers(&self, host: &str, beat_before: i64) -> Result<usize> {
        Ok(self
            .conn
            .prepare_cached(
                "DELETE FROM dispatchers WHERE host <> ?1 AND last_beat < ?2
                 AND NOT EXISTS (SELECT 1 FROM deliveries d
                                 WHERE d.state = 'in_flight' AND d.lease_owner = dispatchers.id)",
            )?
            .execute(params![host, beat_before])?)
    }

    fn delete_dispatcher(&self, id: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM dispatchers WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute([key, value])?;
        Ok(())
    }

    fn insert_rows(&self, table: &Table, rows: &[Vec<Cell>]) -> Result<()> {
        let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
        let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let mut insert = self.conn.prepare_cached(&format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name,
            columns.join(", "),
            marks.join(", ")
        ))?;
        for row in rows {
            let values = row.iter().map(|c| match c {
                Cell::Null => rusqlite::types::Value::Null,
                Cell::Int(n) => rusqlite::types::Value::Integer(*n),
                Cell::Real(x) => rusqlite::types::Value::Real(*x),
                Cell::Text(t) => rusqlite::types::Value::Text(t.clone()),
                Cell::Bytes(b) => rusqlite::types::Value::Blob(b.clone()),
            });
            insert.execute(rusqlite::params_from_iter(values))?;
        }
        Ok(())
    }

    /// Nothing to do: a new row takes the largest `seq` + 1.
    fn follow_copied_rows(&self) -> Result<()> {
        Ok(())
    }

    fn recount_all(&self) -> Result<()> {
        for (counts, rows) in [("item_counts", "items"), ("delivery_counts", "deliveries")] {
            self.conn.execute_batch(&format!(
                "DELETE FROM {counts};
                 INSERT INTO {counts} (workflow_id, stage_id, state, n)
                 SELECT workflow_id, stage_id, state, COUNT(*) FROM {rows}
                 GROUP BY workflow_id, stage_id, state;"
            ))?;
        }
        Ok(())
    }

    fn delete_audit_before(&self, before: i64, limit: usize) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(
                "DELETE FROM audit WHERE seq IN
                    (SELECT seq FROM audit WHERE at < ?1 ORDER BY seq LIMIT ?2)",
            )?
            .execute(params![before, limit.min(i64::MAX as usize) as i64])? as i64)
    }

    fn set_cache_kib(&self, kib: i64) -> Result<i64> {
        // A negative `cache_size` is a size in KiB, a positive one a page count: the old
        // setting is given back as SQLite reported it, to be passed back as it is.
        let old: i64 = self.conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
        self.conn.pragma_update(None, "cache_size", kib)?;
        Ok(old)
    }

    fn give_back_pages(&self, pages: i64) -> Result<i64> {
        let before: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        // The pragma frees one page per step: run it to completion.
        let mut s = self
            .conn
            .prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
        let mut rows = s.query([])?;
        while rows.next()?.is_some() {}
        let after: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        Ok(before - after)
    }

    fn insert_audit(&self, a: &AuditRow<'_>) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(
                "INSERT INTO audit (at, operator, action, target, filter, count, via, outcome, matched)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING seq",
            )?
            .query_row(
                params![
                    a.at, a.operator, a.action, a.target, a.filter, a.count, a.via, a.outcome,
                    a.matched
                ],
                |r| r.get(0),
            )?)
    }

    fn finish_audit(&self, seq: i64, outcome: &str, count: i64, ids: Option<&str>) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE audit SET outcome = ?2, count = ?3, ids = ?4 WHERE seq = ?1")?
            .execute(params![seq, outcome, count, ids])?;
        Ok(())
    }
}
