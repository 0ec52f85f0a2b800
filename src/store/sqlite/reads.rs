//! SQLite's reads ([`Reads`]): the SQL behind the store's listings, details and figures.
//! Each runs on a read connection from the pool (WAL: a snapshot that never blocks the
//! writer); the row shapes they fill are the store's own types.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::rows::load_item;
use super::schema;
use crate::model::{DeliveryId, DeliveryState, EXCERPT_BYTES, Item, ItemId, StageId, WorkflowId};
use crate::store::copy::Table;
use crate::store::deliveries::{Dialect, delivery_where, failure_groups_sql};
use crate::store::seam::{
    Cell, Found, HealthFacts, Reads, ScanRow, StageFlow, Storage, StoredDelivery, WorkflowCounts,
};
use crate::store::{
    AttemptCursor, AttemptRecord, AuditEntry, AuditQuery, DeliveryCount, DeliveryCursor,
    DeliveryFilter, DeliverySummary, DispatcherInfo, FailureGroup, HistoryEntry, ItemCursor,
    ItemFilter, ItemOrder, ItemRow, Result, to_time,
};

/// The reads on one connection of the pool.
pub(crate) struct SqliteReads<'c> {
    pub(crate) conn: &'c Connection,
}

/// A JSON column as a value of `T`.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(row: &Row, i: usize) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A text column as a value of `T` (an enum's name).
pub(crate) fn enum_col<T: std::str::FromStr>(row: &Row, i: usize) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = row.get(i)?;
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A nullable text column as a value of `T`.
fn opt_enum_col<T: std::str::FromStr>(row: &Row, i: usize) -> rusqlite::Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match row.get::<_, Option<String>>(i)? {
        Some(_) => Ok(Some(enum_col(row, i)?)),
        None => Ok(None),
    }
}

/// The columns of a listed delivery (`d`: deliveries, `i`: items): `seq` at 17, then the last
/// attempt's error message.
pub(crate) const SUMMARY_COLUMNS: &str = "d.id, d.item_id, i.name, d.workflow_id, d.stage_id, d.event, d.state, d.trigger, \
     d.attempts, d.last_status, d.last_error_kind, d.last_attempt_at, d.next_attempt_at, d.refire_of, \
     d.cancel_reason, d.created_at, d.updated_at, d.seq, \
     (SELECT a.error_message FROM attempts a WHERE a.delivery_id = d.id ORDER BY a.number DESC LIMIT 1) AS last_message";

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
        last_error_kind: opt_enum_col(r, 10)?,
        last_attempt_at: r.get::<_, Option<i64>>(11)?.map(to_time),
        last_error_message: r
            .get::<_, Option<String>>(18)?
            .filter(|_| r.get::<_, Option<String>>(10).ok().flatten().is_some()),
        next_attempt_at: r.get::<_, Option<i64>>(12)?.map(to_time),
        refire_of: r.get::<_, Option<String>>(13)?.map(DeliveryId),
        cancel_reason: opt_enum_col(r, 14)?,
        created_at: to_time(r.get(15)?),
        updated_at: to_time(r.get(16)?),
    })
}

/// Every row of `sql` with `args`, each made by `f`.
fn all<T>(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    f: impl FnMut(&Row) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    Ok(c.prepare_cached(sql)?
        .query_map(args, f)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The one number `sql` selects.
fn count(c: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<i64> {
    Ok(c.prepare_cached(sql)?.query_row(args, |r| r.get(0))?)
}

/// The first column of every row of `sql`, as text.
fn texts(c: &Connection, sql: &str) -> Result<Vec<String>> {
    all(c, sql, [], |r| r.get(0))
}

/// Builds the item list query: SQL selecting (id, name, workflow, stage, state, version,
/// tags, entered_at, updated_at, sort key, seq) and its arguments, after `after` in the
/// filter's order; `backward` reads the other way (the rows before `after`, nearest first;
/// from the list's end when `after` is `None`).
fn item_query(
    filter: &ItemFilter,
    after: Option<&ItemCursor>,
    limit: Option<usize>,
    backward: bool,
) -> (String, Vec<Value>) {
    let mut wh = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    if let Some(w) = &filter.workflow {
        args.push(Value::Text(w.to_string()));
        wh.push(format!("workflow_id = ?{}", args.len()));
    }
    if let Some(s) = &filter.stage {
        args.push(Value::Text(s.to_string()));
        wh.push(format!("stage_id = ?{}", args.len()));
    }
    if let Some(s) = filter.state {
        args.push(Value::Text(s.as_str().to_string()));
        wh.push(format!("state = ?{}", args.len()));
    }
    if let Some(q) = filter.search.as_ref().filter(|q| !q.is_empty()) {
        let escaped = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        args.push(Value::Text(format!("%{escaped}%")));
        let n = args.len();
        wh.push(format!(
            "(name LIKE ?{n} ESCAPE '\\' OR id LIKE ?{n} ESCAPE '\\')"
        ));
    }
    // Within one stage the oldest arrival comes first; across stages, import order.
    let key = match (filter.order, filter.stage.is_some()) {
        (ItemOrder::Name, _) => "name",
        (ItemOrder::Waiting, true) => "entered_at",
        (ItemOrder::Waiting, false) => "seq",
    };
    if let Some(c) = after {
        let k = if key == "name" {
            Value::Text(c.key.clone())
        } else {
            Value::Integer(c.key.parse().unwrap_or(0))
        };
        args.push(k);
        let a = args.len();
        args.push(Value::Integer(c.seq));
        let b = args.len();
        let op = if backward { "<" } else { ">" };
        wh.push(format!("({key}, seq) {op} (?{a}, ?{b})"));
    }
    let where_sql = if wh.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", wh.join(" AND "))
    };
    let limit_sql = limit.map(|l| format!("LIMIT {l}")).unwrap_or_default();
    let dir = if backward { "DESC" } else { "ASC" };
    (
        format!(
            "SELECT id, name, workflow_id, stage_id, state, version, tags, entered_at, updated_at, {key}, seq
             FROM items {where_sql} ORDER BY {key} {dir}, seq {dir} {limit_sql}"
        ),
        args,
    )
}

/// Builds the delivery list query: SQL selecting [`SUMMARY_COLUMNS`] and its arguments,
/// newest first after `after`; `backward` reads the other way (the rows before `after`,
/// nearest first; from the list's end when `after` is `None`).
fn delivery_query(
    f: &DeliveryFilter,
    after: Option<i64>,
    limit: Option<usize>,
    backward: bool,
) -> (String, Vec<Value>) {
    let (where_sql, cells) = delivery_where(f, after, backward, &SQLITE);
    let limit_sql = limit.map(|l| format!("LIMIT {l}")).unwrap_or_default();
    (
        format!(
            "SELECT {SUMMARY_COLUMNS} FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
             {where_sql} ORDER BY d.seq {} {limit_sql}",
            if backward { "ASC" } else { "DESC" }
        ),
        cells.into_iter().map(value).collect(),
    )
}

/// SQLite's spelling of the delivery filter: `?N` marks, `LIKE` (blind to ASCII case).
const SQLITE: Dialect = Dialect {
    mark: '?',
    like: |column, param| format!("{column} LIKE {param} ESCAPE '\\'"),
};

/// A parameter for SQLite.
fn value(c: Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Int(n) => Value::Integer(n),
        Cell::Real(x) => Value::Real(x),
        Cell::Text(t) => Value::Text(t),
        Cell::Bytes(b) => Value::Blob(b),
    }
}

/// The columns of an audit row (`a`: audit), as [`audit_from_row`] reads them.
const AUDIT_COLUMNS: &str = "a.seq, a.at, a.operator, a.action, a.target, a.filter, a.count, a.via, a.outcome, a.matched, a.ids";

fn audit_from_row(r: &Row, with_ids: bool) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0)?,
        at: to_time(r.get(1)?),
        operator: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        filter: r.get(5)?,
        count: r.get(6)?,
        via: r.get(7)?,
        outcome: r.get(8)?,
        matched: r.get(9)?,
        ids: if with_ids {
            r.get::<_, Option<String>>(10)?
                .and_then(|t| serde_json::from_str(&t).ok())
        } else {
            None
        },
    })
}

/// Finished delivery states, as SQL.
const FINISHED: &str = "('succeeded', 'failed', 'cancelled')";
/// Open delivery states, as SQL.
const OPEN: &str = "('pending', 'retry_scheduled', 'in_flight')";

const STUCK_ITEMS: &str = "FROM items i WHERE i.state = 'in_delivery' AND NOT EXISTS (
     SELECT 1 FROM deliveries d WHERE d.item_id = i.id AND d.state IN ('pending', 'retry_scheduled', 'in_flight'))";

const ORPHANS: &str = "FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
     WHERE d.state IN ('pending', 'retry_scheduled', 'in_flight') AND d.event = 'stage.webhook'
       AND (i.id IS NULL OR i.stage_id != d.stage_id)";

impl Reads for SqliteReads<'_> {
    fn current_spec(&self, id: &WorkflowId) -> Result<Option<(String, i64)>> {
        current_spec(self.conn, id)
    }

    fn workflow_ids(&self) -> Result<Vec<WorkflowId>> {
        all(self.conn, "SELECT id FROM workflows ORDER BY id", [], |r| {
            Ok(WorkflowId(r.get(0)?))
        })
    }

    fn workflow_counts(&self, id: &WorkflowId) -> Result<WorkflowCounts> {
        let c = self.conn;
        let wf = id.as_str();
        let triple = |r: &Row| Ok((r.get(0)?, r.get(1)?, r.get(2)?));
        Ok(WorkflowCounts {
            updated_at: count(c, "SELECT updated_at FROM workflows WHERE id = ?1", [wf])?,
            items: all(
                c,
                "SELECT stage_id, state, n FROM item_counts WHERE workflow_id = ?1 AND n != 0",
                [wf],
                triple,
            )?,
            deliveries: all(
                c,
                "SELECT stage_id, state, n FROM delivery_counts WHERE workflow_id = ?1 AND n != 0",
                [wf],
                triple,
            )?,
            paused: all(
                c,
                "SELECT id, paused_reason FROM stages
                 WHERE workflow_id = ?1 AND retired_at IS NULL AND paused = 1",
                [wf],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?,
            flows: all(
                c,
                "SELECT held_until, held_reason, bucket_tokens, bucket_at, next_token_at,
                        concurrency_limit, limit_successes, limit_decreased_at, id
                 FROM stages WHERE workflow_id = ?1 AND retired_at IS NULL
                   AND (held_until IS NOT NULL OR concurrency_limit IS NOT NULL)",
                [wf],
                |r| Ok((r.get(8)?, super::rows::flow_from_row(r)?)),
            )?,
        })
    }

    fn workflows_with_stage(&self, stage: &StageId) -> Result<Vec<WorkflowId>> {
        all(
            self.conn,
            "SELECT workflow_id FROM stages WHERE id = ?1 AND retired_at IS NULL ORDER BY workflow_id",
            [stage.as_str()],
            |r| Ok(WorkflowId(r.get(0)?)),
        )
    }

    fn paused_stages(&self) -> Result<Vec<(WorkflowId, StageId, Option<String>)>> {
        all(
            self.conn,
            "SELECT workflow_id, id, paused_reason FROM stages
             WHERE paused = 1 AND retired_at IS NULL ORDER BY workflow_id, id",
            [],
            |r| Ok((WorkflowId(r.get(0)?), StageId(r.get(1)?), r.get(2)?)),
        )
    }

    fn delivery_counts(&self) -> Result<Vec<DeliveryCount>> {
        all(
            self.conn,
            "SELECT workflow_id, stage_id, state, n FROM delivery_counts WHERE n != 0
             ORDER BY workflow_id, stage_id, state",
            [],
            |r| {
                Ok(DeliveryCount {
                    workflow: WorkflowId(r.get(0)?),
                    stage: StageId(r.get(1)?),
                    state: enum_col(r, 2)?,
                    n: r.get(3)?,
                })
            },
        )
    }

    fn delivery_totals(&self) -> Result<Vec<(DeliveryState, i64)>> {
        all(
            self.conn,
            "SELECT state, SUM(n) FROM delivery_counts GROUP BY state",
            [],
            |r| Ok((enum_col(r, 0)?, r.get(1)?)),
        )
    }

    fn owners(&self, ids: &[&str]) -> Result<Vec<Option<String>>> {
        let mut q = self
            .conn
            .prepare_cached("SELECT workflow_id FROM items WHERE id = ?1")?;
        ids.iter()
            .map(|id| Ok(q.query_row([id], |r| r.get(0)).optional()?))
            .collect()
    }

    fn list_items(
        &self,
        filter: &ItemFilter,
        after: Option<&ItemCursor>,
        limit: usize,
        backward: bool,
    ) -> Result<Vec<ItemRow>> {
        let (sql, args) = item_query(filter, after, Some(limit), backward);
        all(
            self.conn,
            &sql,
            rusqlite::params_from_iter(args.iter()),
            |r| {
                let key = match r.get::<_, Value>(9)? {
                    Value::Integer(i) => i.to_string(),
                    Value::Text(t) => t,
                    _ => String::new(),
                };
                Ok(ItemRow {
                    id: ItemId(r.get(0)?),
                    name: r.get(1)?,
                    workflow: WorkflowId(r.get(2)?),
                    stage: StageId(r.get(3)?),
                    state: enum_col(r, 4)?,
                    version: r.get(5)?,
                    tags: json_col(r, 6)?,
                    entered_at: to_time(r.get(7)?),
                    updated_at: to_time(r.get(8)?),
                    cursor: ItemCursor {
                        key,
                        seq: r.get(10)?,
                    },
                })
            },
        )
    }

    fn count_items(&self, filter: &ItemFilter) -> Result<i64> {
        let (sql, args) = item_query(filter, None, None, false);
        let sql = format!("SELECT COUNT(*) FROM ({sql})");
        count(self.conn, &sql, rusqlite::params_from_iter(args.iter()))
    }

    fn item(&self, id: &ItemId) -> Result<Option<Item>> {
        load_item(self.conn, id)
    }

    fn history(&self, id: &ItemId) -> Result<Vec<HistoryEntry>> {
        all(
            self.conn,
            "SELECT at, from_stage, to_stage, cause, operator, revision, delivery_id
             FROM history WHERE item_seq = (SELECT seq FROM items WHERE id = ?1) ORDER BY seq",
            [id.as_str()],
            |r| {
                Ok(HistoryEntry {
                    at: to_time(r.get(0)?),
                    from: r.get::<_, Option<String>>(1)?.map(StageId),
                    to: StageId(r.get(2)?),
                    cause: enum_col(r, 3)?,
                    operator: r.get(4)?,
                    revision: r.get(5)?,
                    delivery_id: r.get::<_, Option<String>>(6)?.map(DeliveryId),
                })
            },
        )
    }

    fn deliveries_of_item(&self, id: &ItemId) -> Result<Vec<DeliverySummary>> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
             WHERE d.item_id = ?1 ORDER BY d.seq DESC"
        );
        all(self.conn, &sql, [id.as_str()], summary_from_row)
    }

    fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        after: Option<DeliveryCursor>,
        limit: usize,
        backward: bool,
    ) -> Result<Vec<(DeliverySummary, DeliveryCursor)>> {
        let (sql, args) = delivery_query(filter, after.map(|a| a.0), Some(limit), backward);
        all(
            self.conn,
            &sql,
            rusqlite::params_from_iter(args.iter()),
            |r| Ok((summary_from_row(r)?, DeliveryCursor(r.get(17)?))),
        )
    }

    fn failure_groups(&self, filter: &DeliveryFilter) -> Result<Vec<FailureGroup>> {
        let (where_sql, cells) = delivery_where(filter, None, false, &SQLITE);
        let args: Vec<Value> = cells.into_iter().map(value).collect();
        all(
            self.conn,
            &failure_groups_sql(&where_sql),
            rusqlite::params_from_iter(args.iter()),
            |r| {
                Ok(FailureGroup {
                    workflow: WorkflowId(r.get(0)?),
                    stage: StageId(r.get(1)?),
                    error_kind: opt_enum_col(r, 2)?,
                    status: r.get(3)?,
                    message: r.get(4)?,
                    count: r.get(5)?,
                    items: r.get(6)?,
                    first_at: r.get::<_, Option<i64>>(7)?.map(to_time),
                    last_at: r.get::<_, Option<i64>>(8)?.map(to_time),
                })
            },
        )
    }

    fn count_deliveries(&self, filter: &DeliveryFilter) -> Result<i64> {
        let (sql, args) = delivery_query(filter, None, None, false);
        let sql = format!("SELECT COUNT(*) FROM ({sql})");
        count(self.conn, &sql, rusqlite::params_from_iter(args.iter()))
    }

    fn delivery(&self, id: &DeliveryId) -> Result<Option<StoredDelivery>> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, d.item_version, d.cancelled_by, b.body
             FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
             JOIN delivery_bodies b ON b.seq = d.seq WHERE d.id = ?1"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([id.as_str()], |r| {
                Ok(StoredDelivery {
                    summary: summary_from_row(r)?,
                    item_version: r.get(19)?,
                    cancelled_by: r.get(20)?,
                    body: r.get(21)?,
                })
            })
            .optional()?)
    }

    fn attempts_of(&self, id: &DeliveryId) -> Result<Vec<AttemptRecord>> {
        all(
            self.conn,
            "SELECT number, trigger, counted, started_at, duration_ms, url, request_headers, status,
                    response_headers, response_body, error_kind, error_message
             FROM attempts WHERE delivery_id = ?1 ORDER BY number",
            [id.as_str()],
            |r| {
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
                    error_kind: opt_enum_col(r, 10)?,
                    error_message: r.get(11)?,
                })
            },
        )
    }

    fn newest_webhook_delivery(&self, item: &ItemId) -> Result<Option<DeliveryCursor>> {
        let seq: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT MAX(seq) FROM deliveries WHERE item_id = ?1 AND event = 'stage.webhook'",
            )?
            .query_row([item.as_str()], |r| r.get(0))?;
        Ok(seq.map(DeliveryCursor))
    }

    fn attempts_after(
        &self,
        after: AttemptCursor,
        limit: usize,
    ) -> Result<Vec<(AttemptCursor, crate::model::AttemptEvent)>> {
        let sql = format!(
            "SELECT a.seq, a.delivery_id, d.event, d.workflow_id, d.stage_id, d.item_id, i.name,
                    a.number, a.trigger, d.attempts, a.status, a.error_kind, a.error_message,
                    a.duration_ms, d.state, d.next_attempt_at, a.started_at, a.url,
                    substr(a.response_body, 1, {EXCERPT_BYTES})
             FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             LEFT JOIN items i ON i.id = d.item_id
             WHERE a.seq > ?1 ORDER BY a.seq LIMIT ?2"
        );
        all(self.conn, &sql, params![after.seq, limit as i64], |r| {
            Ok((
                AttemptCursor {
                    major: 0,
                    seq: r.get(0)?,
                },
                crate::model::AttemptEvent {
                    at: to_time(r.get(16)?),
                    delivery_id: DeliveryId(r.get(1)?),
                    event: enum_col(r, 2)?,
                    workflow: WorkflowId(r.get(3)?),
                    stage: StageId(r.get(4)?),
                    item_id: r.get::<_, Option<String>>(5)?.map(ItemId),
                    item_name: r.get(6)?,
                    number: r.get(7)?,
                    trigger: enum_col(r, 8)?,
                    attempts: r.get(9)?,
                    max_attempts: 0,
                    status: r.get(10)?,
                    error_kind: opt_enum_col(r, 11)?,
                    error_message: r.get(12)?,
                    duration_ms: r.get::<_, Option<i64>>(13)?.unwrap_or(0),
                    url: r.get(17)?,
                    response_excerpt: r
                        .get::<_, Option<Vec<u8>>>(18)?
                        .map(|b| crate::model::excerpt(&b)),
                    state: enum_col(r, 14)?,
                    next_attempt_at: r.get::<_, Option<i64>>(15)?.map(to_time),
                    routed_to: None,
                    paused_stage: false,
                    lease_lost: false,
                },
            ))
        })
    }

    fn attempts_end(&self) -> Result<AttemptCursor> {
        Ok(AttemptCursor {
            major: 0,
            seq: self.attempts_recorded()?,
        })
    }

    fn attempts_from(&self, since_ms: i64) -> Result<Option<AttemptCursor>> {
        let first: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(seq) FROM attempts WHERE started_at >= ?1")?
            .query_row([since_ms], |r| r.get(0))?;
        Ok(first.map(|seq| AttemptCursor {
            major: 0,
            seq: seq - 1,
        }))
    }

    fn attempts_recorded(&self) -> Result<i64> {
        count(self.conn, "SELECT COALESCE(MAX(seq), 0) FROM attempts", [])
    }

    fn next_due(&self, now: i64) -> Result<(Option<i64>, Option<i64>, Option<i64>)> {
        let c = self.conn;
        let due: Option<i64> = c
            .prepare_cached(
                "SELECT d.next_attempt_at FROM deliveries d INDEXED BY deliveries_due
                 WHERE d.state IN ('pending', 'retry_scheduled') AND d.next_attempt_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM stages s WHERE s.workflow_id = d.workflow_id
                                   AND s.id = d.stage_id AND s.retired_at IS NULL
                                   AND (s.paused = 1 OR s.held_until > ?1 OR s.next_token_at > ?1))
                 ORDER BY d.next_attempt_at LIMIT 1",
            )?
            .query_row([now], |r| r.get(0))
            .optional()?;
        let expiry: Option<i64> = c
            .prepare_cached("SELECT MIN(lease_until) FROM deliveries WHERE state = 'in_flight'")?
            .query_row([], |r| r.get(0))?;
        // Stages are few: a scan of their rows.
        let gate: Option<i64> = c
            .prepare_cached(
                "SELECT MIN(MAX(COALESCE(held_until, 0), COALESCE(next_token_at, 0))) FROM stages
                 WHERE retired_at IS NULL AND paused = 0
                   AND (held_until > ?1 OR next_token_at > ?1)",
            )?
            .query_row([now], |r| r.get(0))?;
        Ok((due, expiry, gate))
    }

    fn stage_flows(&self, now: i64) -> Result<Vec<(WorkflowId, StageId, StageFlow)>> {
        all(
            self.conn,
            "SELECT held_until, held_reason, bucket_tokens, bucket_at, next_token_at,
                    concurrency_limit, limit_successes, limit_decreased_at, workflow_id, id
             FROM stages WHERE retired_at IS NULL
               AND (held_until > ?1 OR concurrency_limit IS NOT NULL)
             ORDER BY workflow_id, position",
            [now],
            |r| {
                Ok((
                    WorkflowId(r.get(8)?),
                    StageId(r.get(9)?),
                    super::rows::flow_from_row(r)?,
                ))
            },
        )
    }

    fn dispatchers(&self) -> Result<Vec<DispatcherInfo>> {
        all(
            self.conn,
            "SELECT id, pid, host, process_start, concurrency, started_at, last_beat
             FROM dispatchers ORDER BY last_beat DESC",
            [],
            |r| {
                Ok(DispatcherInfo {
                    id: r.get(0)?,
                    pid: r.get(1)?,
                    host: r.get(2)?,
                    process_start: r.get(3)?,
                    concurrency: r.get(4)?,
                    started_at: to_time(r.get(5)?),
                    last_beat: to_time(r.get(6)?),
                })
            },
        )
    }

    fn audit_log(&self, q: &AuditQuery, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut wh = vec!["1 = 1".to_string()];
        let mut args: Vec<Value> = Vec::new();
        let mut push = |sql: &str, v: Value, wh: &mut Vec<String>| {
            args.push(v);
            wh.push(sql.replace('?', &format!("?{}", args.len())));
        };
        if let Some(o) = &q.operator {
            push("a.operator = ?", Value::Text(o.clone()), &mut wh);
        }
        if let Some(x) = &q.action {
            push("a.action = ?", Value::Text(x.clone()), &mut wh);
        }
        if let Some(t) = q.since {
            push("a.at >= ?", Value::Integer(t.timestamp_millis()), &mut wh);
        }
        if let Some(t) = q.until {
            push("a.at < ?", Value::Integer(t.timestamp_millis()), &mut wh);
        }
        if let Some(id) = &q.item {
            // The id itself (an item or a delivery), or one of the item's deliveries.
            push(
                "(instr(a.ids, '\"' || ? || '\"') > 0 OR EXISTS (SELECT 1 FROM deliveries d
                   WHERE d.item_id = ? AND instr(a.ids, '\"' || d.id || '\"') > 0))",
                Value::Text(id.clone()),
                &mut wh,
            );
        }
        args.push(Value::Integer(limit.min(i64::MAX as usize) as i64));
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit a WHERE {} ORDER BY a.seq DESC LIMIT ?{}",
            wh.join(" AND "),
            args.len()
        );
        all(
            self.conn,
            &sql,
            rusqlite::params_from_iter(args.iter()),
            |r| audit_from_row(r, false),
        )
    }

    fn audit_entry(&self, seq: i64) -> Result<Option<AuditEntry>> {
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit a WHERE a.seq = ?1");
        Ok(self
            .conn
            .query_row(&sql, [seq], |r| audit_from_row(r, true))
            .optional()?)
    }

    fn settings(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let rows: Vec<(String, String)> = all(
            self.conn,
            "SELECT key, value FROM settings ORDER BY key",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect())
    }

    fn open_deliveries(&self) -> Result<i64> {
        count(
            self.conn,
            &format!("SELECT COALESCE(SUM(n), 0) FROM delivery_counts WHERE state IN {OPEN}"),
            [],
        )
    }

    fn deliveries_end(&self) -> Result<i64> {
        count(
            self.conn,
            "SELECT COALESCE(MAX(seq), 0) FROM deliveries",
            [],
        )
    }

    fn prune_scan(&self, after: i64, cutoff: i64, limit: usize) -> Result<Vec<ScanRow>> {
        let sql = format!(
            "SELECT d.seq, d.id,
                    d.item_id IS NOT NULL AND d.event = 'stage.webhook' AND NOT EXISTS (
                        SELECT 1 FROM deliveries n WHERE n.item_id = d.item_id AND n.seq > d.seq
                          AND n.stage_id = d.stage_id AND n.event = 'stage.webhook'),
                    (SELECT COUNT(*) FROM attempts a WHERE a.delivery_id = d.id)
             FROM deliveries d
             WHERE d.seq > ?1 AND d.state IN {FINISHED}
               AND d.updated_at < ?2 AND COALESCE(d.last_attempt_at, 0) < ?2
               AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = d.id AND a.started_at >= ?2)
             ORDER BY d.seq LIMIT ?3"
        );
        all(self.conn, &sql, params![after, cutoff, limit as i64], |r| {
            Ok(ScanRow {
                position: r.get(0)?,
                id: r.get(1)?,
                latest: r.get(2)?,
                attempts: r.get(3)?,
            })
        })
    }

    fn audit_rows_before(&self, before: i64) -> Result<i64> {
        count(
            self.conn,
            "SELECT COUNT(*) FROM audit WHERE at < ?1",
            [before],
        )
    }

    fn storage(&self) -> Result<Storage> {
        let get = |p: &str| count(self.conn, &format!("PRAGMA {p}"), []);
        Ok(Storage {
            page_size: get("page_size")?,
            pages: get("page_count")?,
            free: get("freelist_count")?,
            // Only a file created with auto_vacuum = INCREMENTAL can give pages back while
            // others use it; a full VACUUM would hold the write lock for the whole copy.
            reclaimable: get("auto_vacuum")? == 2,
        })
    }

    fn health_facts(&self, now: i64) -> Result<HealthFacts> {
        let c = self.conn;
        let found = |what: &str| -> Result<Found> {
            Ok(Found {
                n: count(c, &format!("SELECT COUNT(*) {what}"), [])?,
                sample: Vec::new(),
            })
        };
        let mut stuck_items = found(STUCK_ITEMS)?;
        if stuck_items.n > 0 {
            stuck_items.sample = texts(c, &format!("SELECT i.id {STUCK_ITEMS} LIMIT 3"))?;
        }
        let mut orphans = found(ORPHANS)?;
        if orphans.n > 0 {
            orphans.sample = texts(c, &format!("SELECT d.id {ORPHANS} LIMIT 3"))?;
        }
        Ok(HealthFacts {
            beats: all(
                c,
                "SELECT pid, host, process_start, last_beat FROM dispatchers ORDER BY last_beat DESC",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?,
            expired_leases: count(
                c,
                "SELECT COUNT(*) FROM deliveries WHERE state = 'in_flight' AND lease_until < ?1",
                [now],
            )?,
            stuck_items,
            orphans,
            paused: all(
                c,
                "SELECT workflow_id, id, paused_reason FROM stages
                 WHERE paused = 1 AND retired_at IS NULL ORDER BY workflow_id, position",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?,
            oldest_pending: c
                .prepare_cached(
                    "SELECT d.id, d.created_at, d.next_attempt_at FROM deliveries d
                     WHERE d.state IN ('pending', 'retry_scheduled')
                       AND NOT EXISTS (SELECT 1 FROM stages s WHERE s.workflow_id = d.workflow_id
                                       AND s.id = d.stage_id AND s.retired_at IS NULL
                                       AND (s.paused = 1 OR s.held_until > ?1
                                            OR s.bucket_at > ?1 - 60000))
                     ORDER BY d.next_attempt_at LIMIT 1",
                )?
                .query_row([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?,
            counter_mismatches: counter_mismatches(c)?,
        })
    }

    fn orphans(&self, limit: usize) -> Result<Vec<String>> {
        texts(self.conn, &format!("SELECT d.id {ORPHANS} LIMIT {limit}"))
    }

    fn schema_version(&self) -> Result<i64> {
        schema::user_version(self.conn)
    }

    fn table_rows(&self, table: &Table, after: i64, limit: usize) -> Result<Vec<Vec<Cell>>> {
        let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
        let cells = |r: &Row| {
            (0..columns.len())
                .map(|i| {
                    Ok(match r.get::<_, Value>(i)? {
                        Value::Null => Cell::Null,
                        Value::Integer(n) => Cell::Int(n),
                        Value::Text(t) => Cell::Text(t),
                        Value::Blob(b) => Cell::Bytes(b),
                        Value::Real(x) => Cell::Real(x),
                    })
                })
                .collect()
        };
        let select = format!("SELECT {} FROM {}", columns.join(", "), table.name);
        if table.paged {
            let sql = format!("{select} WHERE seq > ?1 ORDER BY seq LIMIT {limit}");
            all(self.conn, &sql, [after], cells)
        } else {
            all(self.conn, &select, [], cells)
        }
    }

    fn row_count(&self, table: &str) -> Result<i64> {
        count(self.conn, &format!("SELECT COUNT(*) FROM {table}"), [])
    }
}

/// A workflow's current spec (JSON) and revision, on any connection (the writer's spec cache
/// reads it too).
pub(crate) fn current_spec(c: &Connection, id: &WorkflowId) -> Result<Option<(String, i64)>> {
    Ok(c.prepare_cached(
        "SELECT r.spec, w.revision FROM workflows w
         JOIN workflow_revisions r ON r.workflow_id = w.id AND r.revision = w.revision
         WHERE w.id = ?1",
    )?
    .query_row([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()?)
}

/// Counter rows that differ from the rows they count.
fn counter_mismatches(c: &Connection) -> Result<i64> {
    let mut wrong = 0;
    for (counts, table) in [("item_counts", "items"), ("delivery_counts", "deliveries")] {
        let sql = format!(
            "WITH actual AS (SELECT workflow_id, stage_id, state, COUNT(*) AS n FROM {table}
                             GROUP BY workflow_id, stage_id, state)
             SELECT (SELECT COUNT(*) FROM actual a WHERE a.n != COALESCE((SELECT k.n FROM {counts} k
                         WHERE k.workflow_id = a.workflow_id AND k.stage_id = a.stage_id AND k.state = a.state), 0))
                  + (SELECT COUNT(*) FROM {counts} k WHERE k.n != 0 AND NOT EXISTS (SELECT 1 FROM actual a
                         WHERE k.workflow_id = a.workflow_id AND k.stage_id = a.stage_id AND k.state = a.state))"
        );
        wrong += count(c, &sql, [])?;
    }
    Ok(wrong)
}
