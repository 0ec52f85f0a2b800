//! PostgreSQL's reads ([`Reads`]): the SQL behind listings, details and figures, each in one
//! read-only snapshot. The SQL is SQLite's (`store/sqlite/reads.rs`) in PostgreSQL's dialect;
//! text is ordered and compared bytewise (`COLLATE "C"`), as SQLite does, so both backends
//! list alike.

use std::collections::HashMap;

use postgres::Row;
use postgres::types::ToSql;

use super::rows::load_item;
use super::{Conn, json_col, opt_parse_col, parse_col, schema};
use crate::model::{DeliveryId, DeliveryState, EXCERPT_BYTES, Item, ItemId, StageId, WorkflowId};
use crate::store::copy::Table;
use crate::store::deliveries::{Dialect, delivery_where, failure_groups_sql};
use crate::store::seam::{
    Cell, Found, HealthFacts, Kind, Reads, ScanRow, StageFlow, Storage, StoredDelivery,
    WorkflowCounts,
};
use crate::store::{
    AttemptCursor, AttemptRecord, AuditEntry, AuditQuery, DeliveryCount, DeliveryCursor,
    DeliveryFilter, DeliverySummary, DispatcherInfo, FailureGroup, HistoryEntry, ItemCursor,
    ItemFilter, ItemOrder, ItemRow, Result, StoreError, to_time,
};

/// The reads on one connection of the pool.
pub(crate) struct PgReads<'c> {
    pub(crate) conn: &'c Conn,
}

/// The arguments of a statement built at run time.
type Args = Vec<Box<dyn ToSql + Sync>>;

/// A BIGINT column as a `u32` (a pid, a concurrency).
pub(crate) fn u32_col(row: &Row, i: usize) -> Result<u32> {
    let v: i64 = row.try_get(i)?;
    u32::try_from(v).map_err(|e| StoreError::Database(format!("column {i}: {e}")))
}

/// A nullable BIGINT column as a `u16` (an HTTP status).
pub(crate) fn opt_u16_col(row: &Row, i: usize) -> Result<Option<u16>> {
    row.try_get::<_, Option<i64>>(i)?
        .map(|v| u16::try_from(v).map_err(|e| StoreError::Database(format!("column {i}: {e}"))))
        .transpose()
}

/// The columns of a listed delivery (`d`: deliveries, `i`: items): `seq` at 17, then the last
/// attempt's error message.
pub(crate) const SUMMARY_COLUMNS: &str = "d.id, d.item_id, i.name, d.workflow_id, d.stage_id, d.event, d.state, d.trigger, \
     d.attempts, d.last_status, d.last_error_kind, d.last_attempt_at, d.next_attempt_at, d.refire_of, \
     d.cancel_reason, d.created_at, d.updated_at, d.seq, \
     (SELECT a.error_message FROM attempts a WHERE a.delivery_id = d.id ORDER BY a.number DESC LIMIT 1) AS last_message";

pub(crate) fn summary_from_row(r: &Row) -> Result<DeliverySummary> {
    Ok(DeliverySummary {
        id: DeliveryId(r.try_get(0)?),
        item_id: r.try_get::<_, Option<String>>(1)?.map(ItemId),
        item_name: r.try_get(2)?,
        workflow: WorkflowId(r.try_get(3)?),
        stage: StageId(r.try_get(4)?),
        event: parse_col(r, 5)?,
        state: parse_col(r, 6)?,
        trigger: parse_col(r, 7)?,
        attempts: r.try_get(8)?,
        last_status: opt_u16_col(r, 9)?,
        last_error_kind: opt_parse_col(r, 10)?,
        last_attempt_at: r.try_get::<_, Option<i64>>(11)?.map(to_time),
        last_error_message: r
            .try_get::<_, Option<String>>(18)?
            .filter(|_| matches!(r.try_get::<_, Option<String>>(10), Ok(Some(_)))),
        next_attempt_at: r.try_get::<_, Option<i64>>(12)?.map(to_time),
        refire_of: r.try_get::<_, Option<String>>(13)?.map(DeliveryId),
        cancel_reason: opt_parse_col(r, 14)?,
        created_at: to_time(r.try_get(15)?),
        updated_at: to_time(r.try_get(16)?),
    })
}

/// Every row of `sql` with `args`, each made by `f`.
fn all<T>(
    c: &Conn,
    sql: &str,
    args: &[&(dyn ToSql + Sync)],
    f: impl FnMut(&Row) -> Result<T>,
) -> Result<Vec<T>> {
    c.query(sql, args)?.iter().map(f).collect()
}

/// The one number `sql` selects.
fn count(c: &Conn, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<i64> {
    Ok(c.query_one(sql, args)?.try_get(0)?)
}

/// The first column of every row of `sql`, as text.
fn texts(c: &Conn, sql: &str) -> Result<Vec<String>> {
    all(c, sql, &[], |r| Ok(r.try_get(0)?))
}

/// Built arguments as the parameters of a statement.
fn refs(args: &Args) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a.as_ref()).collect()
}

/// Builds the item list query: SQL selecting (id, name, workflow, stage, state, version,
/// tags, entered_at, updated_at, sort key, seq) and its arguments. The sort key is text
/// (`name`, compared bytewise) or a number (`entered_at`, `seq`).
fn item_query(
    filter: &ItemFilter,
    after: Option<&ItemCursor>,
    limit: Option<usize>,
    backward: bool,
) -> (String, Args) {
    let mut wh = Vec::new();
    let mut args: Args = Vec::new();
    if let Some(w) = &filter.workflow {
        args.push(Box::new(w.to_string()));
        wh.push(format!("workflow_id = ${}", args.len()));
    }
    if let Some(s) = &filter.stage {
        args.push(Box::new(s.to_string()));
        wh.push(format!("stage_id = ${}", args.len()));
    }
    if let Some(s) = filter.state {
        args.push(Box::new(s.as_str().to_string()));
        wh.push(format!("state = ${}", args.len()));
    }
    if let Some(q) = filter.search.as_ref().filter(|q| !q.is_empty()) {
        let escaped = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        args.push(Box::new(format!("%{escaped}%")));
        let n = args.len();
        // SQLite's LIKE ignores the case of ASCII letters only: so does ILIKE under the "C"
        // collation.
        wh.push(format!(
            "(name COLLATE \"C\" ILIKE ${n} ESCAPE '\\' OR id COLLATE \"C\" ILIKE ${n} ESCAPE '\\')"
        ));
    }
    // Within one stage the oldest arrival comes first; across stages, import order.
    let key = match (filter.order, filter.stage.is_some()) {
        (ItemOrder::Name, _) => "name COLLATE \"C\"",
        (ItemOrder::Waiting, true) => "entered_at",
        (ItemOrder::Waiting, false) => "seq",
    };
    if let Some(c) = after {
        if filter.order == ItemOrder::Name {
            args.push(Box::new(c.key.clone()));
        } else {
            args.push(Box::new(c.key.parse::<i64>().unwrap_or(0)));
        }
        let a = args.len();
        args.push(Box::new(c.seq));
        let b = args.len();
        let op = if backward { "<" } else { ">" };
        wh.push(format!("({key}, seq) {op} (${a}, ${b})"));
    }
    let where_sql = if wh.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", wh.join(" AND "))
    };
    // A parameter, not inlined as on SQLite: every statement text stays prepared on its
    // connection, and page sizes must not multiply them.
    let limit_sql = match limit {
        Some(l) => {
            args.push(Box::new(l.min(i64::MAX as usize) as i64));
            format!("LIMIT ${}", args.len())
        }
        None => String::new(),
    };
    (
        format!(
            "SELECT id, name, workflow_id, stage_id, state, version, tags, entered_at, updated_at, {key}, seq
             FROM items {where_sql} ORDER BY {key} {dir}, seq {dir} {limit_sql}",
            dir = if backward { "DESC" } else { "ASC" }
        ),
        args,
    )
}

/// Builds the delivery list query (newest first): SQL selecting [`SUMMARY_COLUMNS`] and its
/// arguments.
fn delivery_query(
    f: &DeliveryFilter,
    after: Option<i64>,
    limit: Option<usize>,
    backward: bool,
) -> (String, Args) {
    let (where_sql, cells) = delivery_where(f, after, backward, &POSTGRES);
    let mut args: Args = cells.into_iter().map(param).collect();
    // A parameter, not inlined as on SQLite: every statement text stays prepared on its
    // connection, and page sizes must not multiply them.
    let limit_sql = match limit {
        Some(l) => {
            args.push(Box::new(l.min(i64::MAX as usize) as i64));
            format!("LIMIT ${}", args.len())
        }
        None => String::new(),
    };
    (
        format!(
            "SELECT {SUMMARY_COLUMNS} FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
             {where_sql} ORDER BY d.seq {} {limit_sql}",
            if backward { "ASC" } else { "DESC" }
        ),
        args,
    )
}

/// PostgreSQL's spelling of the delivery filter: `$N` marks, and `ILIKE` under the "C"
/// collation, blind to ASCII case only, as SQLite's `LIKE` is (as the item list's search).
const POSTGRES: Dialect = Dialect {
    mark: '$',
    like: |column, param| format!("{column} COLLATE \"C\" ILIKE {param} ESCAPE '\\'"),
};

/// A parameter for PostgreSQL.
fn param(c: Cell) -> Box<dyn ToSql + Sync> {
    match c {
        Cell::Null => Box::new(None::<i64>),
        Cell::Int(n) => Box::new(n),
        Cell::Real(x) => Box::new(x),
        Cell::Text(t) => Box::new(t),
        Cell::Bytes(b) => Box::new(b),
    }
}

/// The columns of an audit row (`a`: audit), as [`audit_from_row`] reads them.
const AUDIT_COLUMNS: &str = "a.seq, a.at, a.operator, a.action, a.target, a.filter, a.count, a.via, a.outcome, a.matched, a.ids";

fn audit_from_row(r: &Row, with_ids: bool) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.try_get(0)?,
        at: to_time(r.try_get(1)?),
        operator: r.try_get(2)?,
        action: r.try_get(3)?,
        target: r.try_get(4)?,
        filter: r.try_get(5)?,
        count: r.try_get(6)?,
        via: r.try_get(7)?,
        outcome: r.try_get(8)?,
        matched: r.try_get(9)?,
        ids: if with_ids {
            r.try_get::<_, Option<String>>(10)?
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
       AND (i.id IS NULL OR i.stage_id <> d.stage_id)";

impl Reads for PgReads<'_> {
    fn current_spec(&self, id: &WorkflowId) -> Result<Option<(String, i64)>> {
        current_spec(self.conn, id)
    }

    fn workflow_ids(&self) -> Result<Vec<WorkflowId>> {
        all(
            self.conn,
            "SELECT id FROM workflows ORDER BY id COLLATE \"C\"",
            &[],
            |r| Ok(WorkflowId(r.try_get(0)?)),
        )
    }

    fn workflow_counts(&self, id: &WorkflowId) -> Result<WorkflowCounts> {
        let c = self.conn;
        let wf = id.as_str();
        let triple = |r: &Row| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
        // In the order SQLite reads them (its primary key, its `stages_live` index).
        Ok(WorkflowCounts {
            updated_at: count(c, "SELECT updated_at FROM workflows WHERE id = $1", &[&wf])?,
            items: all(
                c,
                "SELECT stage_id, state, n FROM item_counts WHERE workflow_id = $1 AND n <> 0
                 ORDER BY stage_id COLLATE \"C\", state COLLATE \"C\"",
                &[&wf],
                triple,
            )?,
            deliveries: all(
                c,
                "SELECT stage_id, state, n FROM delivery_counts WHERE workflow_id = $1 AND n <> 0
                 ORDER BY stage_id COLLATE \"C\", state COLLATE \"C\"",
                &[&wf],
                triple,
            )?,
            paused: all(
                c,
                "SELECT id, paused_reason FROM stages
                 WHERE workflow_id = $1 AND retired_at IS NULL AND paused = 1 ORDER BY id COLLATE \"C\"",
                &[&wf],
                |r| Ok((r.try_get(0)?, r.try_get(1)?)),
            )?,
            flows: all(
                c,
                "SELECT held_until, held_reason, bucket_tokens, bucket_at, next_token_at,
                        concurrency_limit, limit_successes, limit_decreased_at, id
                 FROM stages WHERE workflow_id = $1 AND retired_at IS NULL
                   AND (held_until IS NOT NULL OR concurrency_limit IS NOT NULL)
                 ORDER BY position",
                &[&wf],
                |r| Ok((r.try_get(8)?, super::rows::flow_from_row(r)?)),
            )?,
        })
    }

    fn workflows_with_stage(&self, stage: &StageId) -> Result<Vec<WorkflowId>> {
        all(
            self.conn,
            "SELECT workflow_id FROM stages WHERE id = $1 AND retired_at IS NULL
             ORDER BY workflow_id COLLATE \"C\"",
            &[&stage.as_str()],
            |r| Ok(WorkflowId(r.try_get(0)?)),
        )
    }

    fn paused_stages(&self) -> Result<Vec<(WorkflowId, StageId, Option<String>)>> {
        all(
            self.conn,
            "SELECT workflow_id, id, paused_reason FROM stages
             WHERE paused = 1 AND retired_at IS NULL ORDER BY workflow_id COLLATE \"C\", id COLLATE \"C\"",
            &[],
            |r| {
                Ok((
                    WorkflowId(r.try_get(0)?),
                    StageId(r.try_get(1)?),
                    r.try_get(2)?,
                ))
            },
        )
    }

    fn delivery_counts(&self) -> Result<Vec<DeliveryCount>> {
        all(
            self.conn,
            "SELECT workflow_id, stage_id, state, n FROM delivery_counts WHERE n <> 0
             ORDER BY workflow_id COLLATE \"C\", stage_id COLLATE \"C\", state COLLATE \"C\"",
            &[],
            |r| {
                Ok(DeliveryCount {
                    workflow: WorkflowId(r.try_get(0)?),
                    stage: StageId(r.try_get(1)?),
                    state: parse_col(r, 2)?,
                    n: r.try_get(3)?,
                })
            },
        )
    }

    fn delivery_totals(&self) -> Result<Vec<(DeliveryState, i64)>> {
        // SUM of a BIGINT is NUMERIC in PostgreSQL: cast it back. Ordered by state, the order
        // SQLite's grouping gives.
        all(
            self.conn,
            "SELECT state, SUM(n)::bigint FROM delivery_counts GROUP BY state ORDER BY state COLLATE \"C\"",
            &[],
            |r| Ok((parse_col(r, 0)?, r.try_get(1)?)),
        )
    }

    fn owners(&self, ids: &[&str]) -> Result<Vec<Option<String>>> {
        // Every lookup in one statement (one snapshot), put back in the order given.
        let found: HashMap<String, String> = all(
            self.conn,
            "SELECT id, workflow_id FROM items WHERE id = ANY($1)",
            &[&ids],
            |r| Ok((r.try_get(0)?, r.try_get(1)?)),
        )?
        .into_iter()
        .collect();
        Ok(ids.iter().map(|id| found.get(*id).cloned()).collect())
    }

    fn list_items(
        &self,
        filter: &ItemFilter,
        after: Option<&ItemCursor>,
        limit: usize,
        backward: bool,
    ) -> Result<Vec<ItemRow>> {
        let by_name = filter.order == ItemOrder::Name;
        let (sql, args) = item_query(filter, after, Some(limit), backward);
        all(self.conn, &sql, &refs(&args), |r| {
            let key = if by_name {
                r.try_get::<_, String>(9)?
            } else {
                r.try_get::<_, i64>(9)?.to_string()
            };
            Ok(ItemRow {
                id: ItemId(r.try_get(0)?),
                name: r.try_get(1)?,
                workflow: WorkflowId(r.try_get(2)?),
                stage: StageId(r.try_get(3)?),
                state: parse_col(r, 4)?,
                version: r.try_get(5)?,
                tags: json_col(r, 6)?,
                entered_at: to_time(r.try_get(7)?),
                updated_at: to_time(r.try_get(8)?),
                cursor: ItemCursor {
                    key,
                    seq: r.try_get(10)?,
                },
            })
        })
    }

    fn count_items(&self, filter: &ItemFilter) -> Result<i64> {
        let (sql, args) = item_query(filter, None, None, false);
        let sql = format!("SELECT COUNT(*) FROM ({sql}) AS q");
        count(self.conn, &sql, &refs(&args))
    }

    fn item(&self, id: &ItemId) -> Result<Option<Item>> {
        load_item(self.conn, id, false)
    }

    fn history(&self, id: &ItemId) -> Result<Vec<HistoryEntry>> {
        all(
            self.conn,
            "SELECT at, from_stage, to_stage, cause, operator, revision, delivery_id
             FROM history WHERE item_seq = (SELECT seq FROM items WHERE id = $1) ORDER BY seq",
            &[&id.as_str()],
            |r| {
                Ok(HistoryEntry {
                    at: to_time(r.try_get(0)?),
                    from: r.try_get::<_, Option<String>>(1)?.map(StageId),
                    to: StageId(r.try_get(2)?),
                    cause: parse_col(r, 3)?,
                    operator: r.try_get(4)?,
                    revision: r.try_get(5)?,
                    delivery_id: r.try_get::<_, Option<String>>(6)?.map(DeliveryId),
                })
            },
        )
    }

    fn deliveries_of_item(&self, id: &ItemId) -> Result<Vec<DeliverySummary>> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
             WHERE d.item_id = $1 ORDER BY d.seq DESC"
        );
        all(self.conn, &sql, &[&id.as_str()], summary_from_row)
    }

    fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        after: Option<DeliveryCursor>,
        limit: usize,
        backward: bool,
    ) -> Result<Vec<(DeliverySummary, DeliveryCursor)>> {
        let (sql, args) = delivery_query(filter, after.map(|a| a.0), Some(limit), backward);
        all(self.conn, &sql, &refs(&args), |r| {
            Ok((summary_from_row(r)?, DeliveryCursor(r.try_get(17)?)))
        })
    }

    fn failure_groups(&self, filter: &DeliveryFilter) -> Result<Vec<FailureGroup>> {
        let (where_sql, cells) = delivery_where(filter, None, false, &POSTGRES);
        let args: Args = cells.into_iter().map(param).collect();
        all(
            self.conn,
            &failure_groups_sql(&where_sql),
            &refs(&args),
            |r| {
                Ok(FailureGroup {
                    workflow: WorkflowId(r.try_get(0)?),
                    stage: StageId(r.try_get(1)?),
                    error_kind: r
                        .try_get::<_, Option<String>>(2)?
                        .map(|k| k.parse())
                        .transpose()
                        .map_err(|e: crate::model::ParseEnumError| {
                            crate::store::StoreError::Database(e.to_string())
                        })?,
                    status: opt_u16_col(r, 3)?,
                    message: r.try_get(4)?,
                    count: r.try_get(5)?,
                    items: r.try_get(6)?,
                    first_at: r.try_get::<_, Option<i64>>(7)?.map(to_time),
                    last_at: r.try_get::<_, Option<i64>>(8)?.map(to_time),
                })
            },
        )
    }

    fn count_deliveries(&self, filter: &DeliveryFilter) -> Result<i64> {
        let (sql, args) = delivery_query(filter, None, None, false);
        let sql = format!("SELECT COUNT(*) FROM ({sql}) AS q");
        count(self.conn, &sql, &refs(&args))
    }

    fn delivery(&self, id: &DeliveryId) -> Result<Option<StoredDelivery>> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, d.item_version, d.cancelled_by, b.body
             FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
             JOIN delivery_bodies b ON b.seq = d.seq WHERE d.id = $1"
        );
        self.conn
            .query_opt(&sql, &[&id.as_str()])?
            .map(|r| {
                Ok(StoredDelivery {
                    summary: summary_from_row(&r)?,
                    item_version: r.try_get(19)?,
                    cancelled_by: r.try_get(20)?,
                    body: r.try_get(21)?,
                })
            })
            .transpose()
    }

    fn attempts_of(&self, id: &DeliveryId) -> Result<Vec<AttemptRecord>> {
        all(
            self.conn,
            "SELECT number, trigger, counted, started_at, duration_ms, url, request_headers, status,
                    response_headers, response_body, error_kind, error_message
             FROM attempts WHERE delivery_id = $1 ORDER BY number",
            &[&id.as_str()],
            |r| {
                let headers = |i: usize| -> Result<Vec<(String, String)>> {
                    Ok(r.try_get::<_, Option<String>>(i)?
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or_default())
                };
                Ok(AttemptRecord {
                    number: r.try_get(0)?,
                    trigger: parse_col(r, 1)?,
                    counted: r.try_get::<_, i64>(2)? != 0,
                    started_at: to_time(r.try_get(3)?),
                    duration_ms: r.try_get(4)?,
                    url: r.try_get(5)?,
                    request_headers: headers(6)?,
                    status: opt_u16_col(r, 7)?,
                    response_headers: headers(8)?,
                    response_body: r
                        .try_get::<_, Option<Vec<u8>>>(9)?
                        .map(|b| String::from_utf8_lossy(&b).into_owned()),
                    error_kind: opt_parse_col(r, 10)?,
                    error_message: r.try_get(11)?,
                })
            },
        )
    }

    fn newest_webhook_delivery(&self, item: &ItemId) -> Result<Option<DeliveryCursor>> {
        let seq: Option<i64> = self
            .conn
            .query_one(
                "SELECT MAX(seq) FROM deliveries WHERE item_id = $1 AND event = 'stage.webhook'",
                &[&item.as_str()],
            )?
            .try_get(0)?;
        Ok(seq.map(DeliveryCursor))
    }

    fn attempts_after(
        &self,
        after: AttemptCursor,
        limit: usize,
    ) -> Result<Vec<(AttemptCursor, crate::model::AttemptEvent)>> {
        // Design §7: sequence order is not commit order. Only rows whose transaction is older
        // than this snapshot's xmin are read: every transaction below it has ended, so no row
        // can appear later before the cursor. They are read in (transaction, row) order.
        let sql = format!(
            "SELECT a.xid::text::bigint, a.seq, a.delivery_id, d.event, d.workflow_id, d.stage_id,
                    d.item_id, i.name, a.number, a.trigger, d.attempts, a.status, a.error_kind,
                    a.error_message, a.duration_ms, d.state, d.next_attempt_at, a.started_at, a.url,
                    substring(a.response_body FROM 1 FOR {EXCERPT_BYTES})
             FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             LEFT JOIN items i ON i.id = d.item_id
             WHERE (a.xid, a.seq) > ($1::bigint::text::xid8, $2)
               AND a.xid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY a.xid, a.seq LIMIT $3"
        );
        all(
            self.conn,
            &sql,
            &[
                &after.major,
                &after.seq,
                &(limit.min(i64::MAX as usize) as i64),
            ],
            |r| {
                Ok((
                    AttemptCursor {
                        major: r.try_get(0)?,
                        seq: r.try_get(1)?,
                    },
                    crate::model::AttemptEvent {
                        at: to_time(r.try_get(17)?),
                        delivery_id: DeliveryId(r.try_get(2)?),
                        event: parse_col(r, 3)?,
                        workflow: WorkflowId(r.try_get(4)?),
                        stage: StageId(r.try_get(5)?),
                        item_id: r.try_get::<_, Option<String>>(6)?.map(ItemId),
                        item_name: r.try_get(7)?,
                        number: r.try_get(8)?,
                        trigger: parse_col(r, 9)?,
                        attempts: r.try_get(10)?,
                        max_attempts: 0,
                        status: opt_u16_col(r, 11)?,
                        error_kind: opt_parse_col(r, 12)?,
                        error_message: r.try_get(13)?,
                        duration_ms: r.try_get::<_, Option<i64>>(14)?.unwrap_or(0),
                        url: r.try_get(18)?,
                        response_excerpt: r
                            .try_get::<_, Option<Vec<u8>>>(19)?
                            .map(|b| crate::model::excerpt(&b)),
                        state: parse_col(r, 15)?,
                        next_attempt_at: r.try_get::<_, Option<i64>>(16)?.map(to_time),
                        routed_to: None,
                        paused_stage: false,
                        lease_lost: false,
                    },
                ))
            },
        )
    }

    /// After the newest attempt every reader may take now (see `attempts_after`).
    fn attempts_end(&self) -> Result<AttemptCursor> {
        let row = self.conn.query_opt(
            "SELECT xid::text::bigint, seq FROM attempts
             WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY xid DESC, seq DESC LIMIT 1",
            &[],
        )?;
        Ok(match row {
            Some(r) => AttemptCursor {
                major: r.try_get(0)?,
                seq: r.try_get(1)?,
            },
            None => AttemptCursor::default(),
        })
    }

    /// Just before the first row in (transaction, row) order among those a reader may take
    /// now: a transaction still open has an id above every such row's, so its rows come
    /// after the cursor too.
    fn attempts_from(&self, since_ms: i64) -> Result<Option<AttemptCursor>> {
        let row = self.conn.query_opt(
            "SELECT xid::text::bigint, seq FROM attempts
             WHERE started_at >= $1 AND xid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY xid, seq LIMIT 1",
            &[&since_ms],
        )?;
        row.map(|r| {
            Ok(AttemptCursor {
                major: r.try_get(0)?,
                seq: r.try_get::<_, i64>(1)? - 1,
            })
        })
        .transpose()
    }

    /// The attempts recorded: a count (row numbers have gaps on PostgreSQL, where an insert
    /// that does nothing still takes one).
    fn attempts_recorded(&self) -> Result<i64> {
        count(self.conn, "SELECT COUNT(*) FROM attempts", &[])
    }

    fn next_due(&self, now: i64) -> Result<(Option<i64>, Option<i64>, Option<i64>)> {
        let c = self.conn;
        let due: Option<i64> = c
            .query_opt(
                "SELECT d.next_attempt_at FROM deliveries d
                 WHERE d.state IN ('pending', 'retry_scheduled') AND d.next_attempt_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM stages s WHERE s.workflow_id = d.workflow_id
                                   AND s.id = d.stage_id AND s.retired_at IS NULL
                                   AND (s.paused = 1 OR s.held_until > $1 OR s.next_token_at > $1))
                 ORDER BY d.next_attempt_at LIMIT 1",
                &[&now],
            )?
            .map(|r| r.try_get(0))
            .transpose()?;
        let expiry: Option<i64> = c
            .query_one(
                "SELECT MIN(lease_until) FROM deliveries WHERE state = 'in_flight'",
                &[],
            )?
            .try_get(0)?;
        // Stages are few: a scan of their rows.
        let gate: Option<i64> = c
            .query_one(
                "SELECT MIN(GREATEST(COALESCE(held_until, 0), COALESCE(next_token_at, 0)))
                 FROM stages WHERE retired_at IS NULL AND paused = 0
                   AND (held_until > $1 OR next_token_at > $1)",
                &[&now],
            )?
            .try_get(0)?;
        Ok((due, expiry, gate))
    }

    fn stage_flows(&self, now: i64) -> Result<Vec<(WorkflowId, StageId, StageFlow)>> {
        all(
            self.conn,
            "SELECT held_until, held_reason, bucket_tokens, bucket_at, next_token_at,
                    concurrency_limit, limit_successes, limit_decreased_at, workflow_id, id
             FROM stages WHERE retired_at IS NULL
               AND (held_until > $1 OR concurrency_limit IS NOT NULL)
             ORDER BY workflow_id COLLATE \"C\", position",
            &[&now],
            |r| {
                Ok((
                    WorkflowId(r.try_get(8)?),
                    StageId(r.try_get(9)?),
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
            &[],
            |r| {
                Ok(DispatcherInfo {
                    id: r.try_get(0)?,
                    pid: u32_col(r, 1)?,
                    host: r.try_get(2)?,
                    process_start: r.try_get(3)?,
                    concurrency: u32_col(r, 4)?,
                    started_at: to_time(r.try_get(5)?),
                    last_beat: to_time(r.try_get(6)?),
                })
            },
        )
    }

    fn audit_log(&self, q: &AuditQuery, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut wh = vec!["TRUE".to_string()];
        let mut args: Args = Vec::new();
        let mut push = |sql: &str, v: Box<dyn ToSql + Sync>, wh: &mut Vec<String>| {
            args.push(v);
            wh.push(sql.replace('?', &format!("${}", args.len())));
        };
        if let Some(o) = &q.operator {
            push("a.operator = ?", Box::new(o.clone()), &mut wh);
        }
        if let Some(x) = &q.action {
            push("a.action = ?", Box::new(x.clone()), &mut wh);
        }
        if let Some(t) = q.since {
            push("a.at >= ?", Box::new(t.timestamp_millis()), &mut wh);
        }
        if let Some(t) = q.until {
            push("a.at < ?", Box::new(t.timestamp_millis()), &mut wh);
        }
        if let Some(id) = &q.item {
            // The id itself (an item or a delivery), or one of the item's deliveries.
            push(
                "(strpos(a.ids, '\"' || ? || '\"') > 0 OR EXISTS (SELECT 1 FROM deliveries d
                   WHERE d.item_id = ? AND strpos(a.ids, '\"' || d.id || '\"') > 0))",
                Box::new(id.clone()),
                &mut wh,
            );
        }
        args.push(Box::new(limit.min(i64::MAX as usize) as i64));
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit a WHERE {} ORDER BY a.seq DESC LIMIT ${}",
            wh.join(" AND "),
            args.len()
        );
        all(self.conn, &sql, &refs(&args), |r| audit_from_row(r, false))
    }

    fn audit_entry(&self, seq: i64) -> Result<Option<AuditEntry>> {
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit a WHERE a.seq = $1");
        match self.conn.query_opt(&sql, &[&seq])? {
            Some(r) => Ok(Some(audit_from_row(&r, true)?)),
            None => Ok(None),
        }
    }

    fn settings(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let rows: Vec<(String, String)> = all(
            self.conn,
            "SELECT key, value FROM settings ORDER BY key COLLATE \"C\"",
            &[],
            |r| Ok((r.try_get(0)?, r.try_get(1)?)),
        )?;
        Ok(rows
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect())
    }

    fn open_deliveries(&self) -> Result<i64> {
        count(
            self.conn,
            &format!(
                "SELECT COALESCE(SUM(n), 0)::bigint FROM delivery_counts WHERE state IN {OPEN}"
            ),
            &[],
        )
    }

    fn deliveries_end(&self) -> Result<i64> {
        count(
            self.conn,
            "SELECT COALESCE(MAX(seq), 0) FROM deliveries",
            &[],
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
             WHERE d.seq > $1 AND d.state IN {FINISHED}
               AND d.updated_at < $2 AND COALESCE(d.last_attempt_at, 0) < $2
               AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = d.id AND a.started_at >= $2)
             ORDER BY d.seq LIMIT $3"
        );
        all(
            self.conn,
            &sql,
            &[&after, &cutoff, &(limit.min(i64::MAX as usize) as i64)],
            |r| {
                Ok(ScanRow {
                    position: r.try_get(0)?,
                    id: r.try_get(1)?,
                    latest: r.try_get(2)?,
                    attempts: r.try_get(3)?,
                })
            },
        )
    }

    fn audit_rows_before(&self, before: i64) -> Result<i64> {
        count(
            self.conn,
            "SELECT COUNT(*) FROM audit WHERE at < $1",
            &[&before],
        )
    }

    fn storage(&self) -> Result<Storage> {
        // The database's size in PostgreSQL's 8 KiB pages. Space that deletes free is reused
        // by the table and given back by autovacuum: none to count as free, none to reclaim
        // by hand.
        const PAGE_SIZE: i64 = 8192;
        let bytes = count(
            self.conn,
            "SELECT pg_database_size(current_database())",
            &[],
        )?;
        Ok(Storage {
            page_size: PAGE_SIZE,
            pages: bytes / PAGE_SIZE,
            free: 0,
            reclaimable: false,
        })
    }

    fn health_facts(&self, now: i64) -> Result<HealthFacts> {
        let c = self.conn;
        let found = |what: &str| -> Result<Found> {
            Ok(Found {
                n: count(c, &format!("SELECT COUNT(*) {what}"), &[])?,
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
                &[],
                |r| Ok((u32_col(r, 0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)),
            )?,
            expired_leases: count(
                c,
                "SELECT COUNT(*) FROM deliveries WHERE state = 'in_flight' AND lease_until < $1",
                &[&now],
            )?,
            stuck_items,
            orphans,
            paused: all(
                c,
                "SELECT workflow_id, id, paused_reason FROM stages
                 WHERE paused = 1 AND retired_at IS NULL ORDER BY workflow_id COLLATE \"C\", position",
                &[],
                |r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
            )?,
            // NULLS FIRST: SQLite sorts NULL before every value.
            oldest_pending: c
                .query_opt(
                    "SELECT d.id, d.created_at, d.next_attempt_at FROM deliveries d
                     WHERE d.state IN ('pending', 'retry_scheduled')
                       AND NOT EXISTS (SELECT 1 FROM stages s WHERE s.workflow_id = d.workflow_id
                                       AND s.id = d.stage_id AND s.retired_at IS NULL
                                       AND (s.paused = 1 OR s.held_until > $1
                                            OR s.bucket_at > $1 - 60000))
                     ORDER BY d.next_attempt_at NULLS FIRST LIMIT 1",
                    &[&now],
                )?
                .map(|r| Ok::<_, StoreError>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .transpose()?,
            counter_mismatches: counter_mismatches(c)?,
        })
    }

    fn orphans(&self, limit: usize) -> Result<Vec<String>> {
        all(
            self.conn,
            &format!("SELECT d.id {ORPHANS} LIMIT $1"),
            &[&(limit.min(i64::MAX as usize) as i64)],
            |r| Ok(r.try_get(0)?),
        )
    }

    fn schema_version(&self) -> Result<i64> {
        schema::version(self.conn)
    }

    fn table_rows(&self, table: &Table, after: i64, limit: usize) -> Result<Vec<Vec<Cell>>> {
        let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
        let select = format!("SELECT {} FROM {}", columns.join(", "), table.name);
        let rows = if table.paged {
            let sql = format!("{select} WHERE seq > $1 ORDER BY seq LIMIT $2");
            self.conn
                .query(&sql, &[&after, &(limit.min(i64::MAX as usize) as i64)])?
        } else {
            self.conn.query(&select, &[])?
        };
        rows.iter()
            .map(|r| {
                table
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, kind))| {
                        Ok(match kind {
                            Kind::Int => r.try_get::<_, Option<i64>>(i)?.map(Cell::Int),
                            Kind::Real => r.try_get::<_, Option<f64>>(i)?.map(Cell::Real),
                            Kind::Text => r.try_get::<_, Option<String>>(i)?.map(Cell::Text),
                            Kind::Bytes => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Cell::Bytes),
                        }
                        .unwrap_or(Cell::Null))
                    })
                    .collect()
            })
            .collect()
    }

    fn row_count(&self, table: &str) -> Result<i64> {
        count(self.conn, &format!("SELECT COUNT(*) FROM {table}"), &[])
    }
}

/// A workflow's current spec (JSON) and revision, on any connection (the writer's spec cache
/// reads it too).
pub(crate) fn current_spec(c: &Conn, id: &WorkflowId) -> Result<Option<(String, i64)>> {
    c.query_opt(
        "SELECT r.spec, w.revision FROM workflows w
         JOIN workflow_revisions r ON r.workflow_id = w.id AND r.revision = w.revision
         WHERE w.id = $1",
        &[&id.as_str()],
    )?
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .transpose()
}

/// Counter rows that differ from the rows they count.
fn counter_mismatches(c: &Conn) -> Result<i64> {
    let mut wrong = 0;
    for (counts, table) in [("item_counts", "items"), ("delivery_counts", "deliveries")] {
        let sql = format!(
            "WITH actual AS (SELECT workflow_id, stage_id, state, COUNT(*) AS n FROM {table}
                             GROUP BY workflow_id, stage_id, state)
             SELECT (SELECT COUNT(*) FROM actual a WHERE a.n <> COALESCE((SELECT k.n FROM {counts} k
                         WHERE k.workflow_id = a.workflow_id AND k.stage_id = a.stage_id AND k.state = a.state), 0))
                  + (SELECT COUNT(*) FROM {counts} k WHERE k.n <> 0 AND NOT EXISTS (SELECT 1 FROM actual a
                         WHERE k.workflow_id = a.workflow_id AND k.stage_id = a.stage_id AND k.state = a.state))"
        );
        wrong += count(c, &sql, &[])?;
    }
    Ok(wrong)
}
