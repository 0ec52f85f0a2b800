//! PostgreSQL's reads ([`Reads`]): the SQL behind listings, details and figures, each in one
//! read-only snapshot. The SQL is SQLite's (`store/sqlite/reads.rs`) in PostgreSQL's dialect;
//! text is ordered and compared bytewise (`COLLATE "C"`), as SQLite does, so both backends
//! list alike.

use std::collections::HashMap;

use postgres::Row;
use postgres::types::ToSql;

use super::rows::load_item;
use super::{Conn, json_col, opt_parse_col, parse_col, schema};
use crate::model::{DeliveryId, DeliveryState, Item, ItemId, StageId, WorkflowId};
use crate::store::seam::{
    Found, HealthFacts, Reads, ScanRow, Storage, StoredDelivery, WorkflowCounts,
};
use crate::store::{
    AttemptCursor, AttemptRecord, AuditEntry, DeliveryCount, DeliveryCursor, DeliveryFilter,
    DeliverySummary, DispatcherInfo, HistoryEntry, ItemCursor, ItemFilter, ItemOrder, ItemRow,
    Result, StoreError, to_time,
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

/// The columns of a listed delivery (`d`: deliveries, `i`: items), its `seq` last.
pub(crate) const SUMMARY_COLUMNS: &str = "d.id, d.item_id, i.name, d.workflow_id, d.stage_id, d.event, d.state, d.trigger, \
     d.attempts, d.last_status, d.last_error_kind, d.last_attempt_at, d.next_attempt_at, d.refire_of, \
     d.cancel_reason, d.created_at, d.updated_at, d.seq";

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
        wh.push(format!("({key}, seq) > (${a}, ${b})"));
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
             FROM items {where_sql} ORDER BY {key}, seq {limit_sql}"
        ),
        args,
    )
}

/// Builds the delivery list query (newest first): SQL selecting [`SUMMARY_COLUMNS`] and its
/// arguments.
fn delivery_query(f: &DeliveryFilter, after: Option<i64>, limit: Option<usize>) -> (String, Args) {
    let mut wh = Vec::new();
    let mut args: Args = Vec::new();
    let mut push = |sql: &str, v: Box<dyn ToSql + Sync>, args: &mut Args| {
        args.push(v);
        wh.push(sql.replace('?', &format!("${}", args.len())));
    };
    if let Some(w) = &f.workflow {
        push("d.workflow_id = ?", Box::new(w.to_string()), &mut args);
    }
    if let Some(s) = &f.stage {
        push("d.stage_id = ?", Box::new(s.to_string()), &mut args);
    }
    if let Some(s) = f.state {
        push("d.state = ?", Box::new(s.as_str().to_string()), &mut args);
    }
    if let Some(i) = &f.item {
        push("d.item_id = ?", Box::new(i.to_string()), &mut args);
    }
    if let Some(e) = f.event {
        push("d.event = ?", Box::new(e.as_str().to_string()), &mut args);
    }
    if let Some(t) = f.since {
        push(
            "d.created_at >= ?",
            Box::new(t.timestamp_millis()),
            &mut args,
        );
    }
    if let Some(k) = f.error_kind {
        push(
            "d.last_error_kind = ?",
            Box::new(k.as_str().to_string()),
            &mut args,
        );
    }
    if let Some(s) = f.status {
        push("d.last_status = ?", Box::new(i64::from(s)), &mut args);
    }
    if let Some(a) = after {
        push("d.seq < ?", Box::new(a), &mut args);
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
            "SELECT {SUMMARY_COLUMNS} FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
             {where_sql} ORDER BY d.seq DESC {limit_sql}"
        ),
        args,
    )
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
    ) -> Result<Vec<ItemRow>> {
        let by_name = filter.order == ItemOrder::Name;
        let (sql, args) = item_query(filter, after, Some(limit));
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
        let (sql, args) = item_query(filter, None, None);
        let sql = format!("SELECT COUNT(*) FROM ({sql}) AS q");
        count(self.conn, &sql, &refs(&args))
    }

    fn item(&self, id: &ItemId) -> Result<Option<Item>> {
        load_item(self.conn, id)
    }

    fn history(&self, id: &ItemId) -> Result<Vec<HistoryEntry>> {
        all(
            self.conn,
            "SELECT at, from_stage, to_stage, cause, operator, revision, delivery_id
             FROM history WHERE item_id = $1 ORDER BY seq",
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
    ) -> Result<Vec<(DeliverySummary, DeliveryCursor)>> {
        let (sql, args) = delivery_query(filter, after.map(|a| a.0), Some(limit));
        all(self.conn, &sql, &refs(&args), |r| {
            Ok((summary_from_row(r)?, DeliveryCursor(r.try_get(17)?)))
        })
    }

    fn count_deliveries(&self, filter: &DeliveryFilter) -> Result<i64> {
        let (sql, args) = delivery_query(filter, None, None);
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
                    item_version: r.try_get(18)?,
                    cancelled_by: r.try_get(19)?,
                    body: r.try_get(20)?,
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
        // TODO(issue 17): by `seq` like SQLite for now; the lead moves the cursor to
        // `(xid, seq)` so that a row committed late is never skipped.
        all(
            self.conn,
            "SELECT a.seq, a.delivery_id, d.event, d.workflow_id, d.stage_id, d.item_id, i.name,
                    a.number, a.trigger, d.attempts, a.status, a.error_kind, a.error_message,
                    a.duration_ms, d.state, d.next_attempt_at, a.started_at
             FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             LEFT JOIN items i ON i.id = d.item_id
             WHERE a.seq > $1 ORDER BY a.seq LIMIT $2",
            &[&after.0, &(limit.min(i64::MAX as usize) as i64)],
            |r| {
                Ok((
                    AttemptCursor(r.try_get(0)?),
                    crate::model::AttemptEvent {
                        at: to_time(r.try_get(16)?),
                        delivery_id: DeliveryId(r.try_get(1)?),
                        event: parse_col(r, 2)?,
                        workflow: WorkflowId(r.try_get(3)?),
                        stage: StageId(r.try_get(4)?),
                        item_id: r.try_get::<_, Option<String>>(5)?.map(ItemId),
                        item_name: r.try_get(6)?,
                        number: r.try_get(7)?,
                        trigger: parse_col(r, 8)?,
                        attempts: r.try_get(9)?,
                        max_attempts: 0,
                        status: opt_u16_col(r, 10)?,
                        error_kind: opt_parse_col(r, 11)?,
                        error_message: r.try_get(12)?,
                        duration_ms: r.try_get::<_, Option<i64>>(13)?.unwrap_or(0),
                        state: parse_col(r, 14)?,
                        next_attempt_at: r.try_get::<_, Option<i64>>(15)?.map(to_time),
                        routed_to: None,
                        paused_stage: false,
                        lease_lost: false,
                    },
                ))
            },
        )
    }

    fn attempts_end(&self) -> Result<i64> {
        count(self.conn, "SELECT COALESCE(MAX(seq), 0) FROM attempts", &[])
    }

    fn next_due(&self) -> Result<(Option<i64>, Option<i64>)> {
        let c = self.conn;
        let due: Option<i64> = c
            .query_opt(
                "SELECT d.next_attempt_at FROM deliveries d
                 WHERE d.state IN ('pending', 'retry_scheduled') AND d.next_attempt_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM stages s WHERE s.workflow_id = d.workflow_id
                                   AND s.id = d.stage_id AND s.retired_at IS NULL AND s.paused = 1)
                 ORDER BY d.next_attempt_at LIMIT 1",
                &[],
            )?
            .map(|r| r.try_get(0))
            .transpose()?;
        let expiry: Option<i64> = c
            .query_one(
                "SELECT MIN(lease_until) FROM deliveries WHERE state = 'in_flight'",
                &[],
            )?
            .try_get(0)?;
        Ok((due, expiry))
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

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        all(
            self.conn,
            "SELECT at, operator, action, target, filter, count FROM audit ORDER BY seq DESC LIMIT $1",
            &[&(limit.min(i64::MAX as usize) as i64)],
            |r| {
                Ok(AuditEntry {
                    at: to_time(r.try_get(0)?),
                    operator: r.try_get(1)?,
                    action: r.try_get(2)?,
                    target: r.try_get(3)?,
                    filter: r.try_get(4)?,
                    count: r.try_get(5)?,
                })
            },
        )
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
                                       AND s.id = d.stage_id AND s.retired_at IS NULL AND s.paused = 1)
                     ORDER BY d.next_attempt_at NULLS FIRST LIMIT 1",
                    &[],
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

/// Runs every row operation and read once on tiny data against the dev cluster
/// (`/tmp/pgdev`) and against a SQLite file, and compares what they return. Needs the dev
/// cluster: fails, with that said, when it is absent.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        AttemptOutcome, AttemptTrigger, CancelReason, DatasetRef, DeliveryTrigger, ErrorKind,
        EventType, HistoryCause, ItemState,
    };
    use crate::store::postgres::rows::PgRows;
    use crate::store::seam::{
        AttemptRow, AuditRow, Counted, DeliveryUpdate, Heartbeat, HistoryRow, ItemMove,
        NewDelivery, NewItemRow, NewLease, RevisionRow, Rows,
    };
    use crate::store::sqlite::reads::SqliteReads;
    use crate::store::sqlite::rows::SqliteRows;
    use crate::workflow::{Stage, StageSpec};

    fn pg() -> Conn {
        let dsn = "host=/tmp/pgdev user=postgres dbname=postgres";
        let mut admin = postgres::Client::connect(dsn, postgres::NoTls).unwrap_or_else(|e| {
            panic!("this test needs the PostgreSQL dev cluster at /tmp/pgdev ({dsn}): {e}")
        });
        admin
            .batch_execute("DROP DATABASE IF EXISTS rows_check WITH (FORCE)")
            .unwrap();
        admin.batch_execute("CREATE DATABASE rows_check").unwrap();
        let client = postgres::Client::connect(
            "host=/tmp/pgdev user=postgres dbname=rows_check",
            postgres::NoTls,
        )
        .unwrap();
        let conn = Conn::new(client);
        schema::migrate(&conn).unwrap();
        conn
    }

    fn item(id: &str, name: &str) -> Item {
        let mut properties = serde_json::Map::new();
        properties.insert("k".into(), serde_json::json!(1));
        Item {
            id: ItemId::new(id),
            workflow: WorkflowId::new("wf"),
            stage: StageId::new("s1"),
            state: ItemState::Waiting,
            name: name.into(),
            path: "/".into(),
            dataset: DatasetRef {
                name: "ds".into(),
                slug: "ds".into(),
            },
            tags: vec!["t".into()],
            properties,
            slots: vec![serde_json::json!({"s": 1})],
            annotations: vec![],
            version: 1,
            created_at: to_time(0),
            updated_at: to_time(0),
        }
    }

    /// Every operation, each result as text.
    fn script(r: &dyn Rows, q: &dyn Reads) -> Vec<String> {
        let mut out = Vec::new();
        macro_rules! log {
            ($e:expr) => {
                out.push(format!("{}: {:?}", stringify!($e), $e))
            };
        }
        let wf = WorkflowId::new("wf");
        let s1 = StageId::new("s1");
        let s2 = StageId::new("s2");
        let s3 = StageId::new("s3");
        for (rev, created) in [(1, true), (2, false)] {
            log!(r.insert_revision(&RevisionRow {
                workflow: &wf,
                name: "W",
                team: "t",
                revision: rev,
                spec: &format!("{{\"rev\":{rev}}}"),
                operator: "op",
                now: 10 * rev,
                created,
            }));
        }
        log!(r.insert_revision(&RevisionRow {
            workflow: &WorkflowId::new("Aw"),
            name: "A",
            team: "t",
            revision: 1,
            spec: "{}",
            operator: "op",
            now: 5,
            created: true,
        }));
        for (i, s) in [&s1, &s2, &s3, &s1].into_iter().enumerate() {
            let stage = Stage {
                id: s.clone(),
                name: format!("Stage {i}"),
                spec: StageSpec::Complete,
            };
            log!(r.upsert_stage(&wf, &stage, i as i64));
            log!(r.upsert_stage(&WorkflowId::new("Aw"), &stage, i as i64));
        }
        log!(r.current_spec(&wf));
        log!(r.current_spec(&WorkflowId::new("none")));
        log!(q.current_spec(&wf));
        log!(q.workflow_ids());
        log!(q.workflows_with_stage(&s2));

        // Items: names whose bytewise order differs from a linguistic one.
        let names = [
            ("i1", "b"),
            ("i2", "B"),
            ("i3", "a_x"),
            ("i4", "Ä"),
            ("i5", "a%"),
        ];
        for (n, (id, name)) in names.iter().enumerate() {
            let it = item(id, name);
            let new = NewItemRow {
                item: &it,
                stage: &s1,
                state: ItemState::Waiting,
                fingerprint: "fp",
                now: 100,
                entered_at: 100 + (n as i64 % 2),
            };
            log!(r.insert_item(&new));
        }
        log!(r.item_owner(&ItemId::new("i1")));
        log!(r.item_owner(&ItemId::new("nope")));
        log!(r.item_name(&ItemId::new("i2")));
        log!(r.item_name(&ItemId::new("nope")));
        log!(r.load_item(&ItemId::new("i1")));
        log!(r.load_item(&ItemId::new("nope")));
        log!(r.load_item_head(&ItemId::new("i1")));
        log!(r.last_arrival(&wf, &s1));
        log!(r.last_arrival(&wf, &s2));
        log!(r.items_in_stage(&wf, &s1, (0, 0), 2));
        log!(r.items_in_stage(&wf, &s1, (100, 3), 10));
        // Moves: into an empty stage, into a stage with arrivals (same ms, later ms), and a
        // state change in place.
        for (id, stage, now, entered) in [
            ("i1", &s2, 200, true),
            ("i2", &s2, 200, true),
            ("i3", &s2, 150, true),
            ("i4", &s2, 300, true),
            ("i5", &s1, 400, false),
        ] {
            log!(r.move_item(&ItemMove {
                id: &ItemId::new(id),
                stage,
                state: ItemState::Active,
                version: 2,
                now,
                entered,
            }));
            log!(r.load_item_head(&ItemId::new(id)));
        }
        log!(r.items_in_stage(&wf, &s2, (0, 0), 10));
        log!(r.last_arrival(&wf, &s2));
        for (n, cause) in [HistoryCause::Import, HistoryCause::Route]
            .into_iter()
            .enumerate()
        {
            log!(r.insert_history(&HistoryRow {
                item: &ItemId::new("i1"),
                workflow: &wf,
                from: (n > 0).then_some(&s1),
                to: &s2,
                cause,
                operator: (n == 0).then_some("op"),
                revision: 2,
                delivery: None,
                at: 200 + n as i64,
            }));
        }
        log!(q.history(&ItemId::new("i1")));

        // Deliveries.
        let d = |s: &str| DeliveryId::new(s);
        let i1 = ItemId::new("i1");
        let i2 = ItemId::new("i2");
        let mk = |id: &DeliveryId, item: Option<&ItemId>, lease: Option<NewLease<'static>>, now| {
            r.insert_delivery(&NewDelivery {
                id,
                workflow: &wf,
                stage: &s2,
                item,
                event: EventType::StageWebhook,
                trigger: DeliveryTrigger::Route,
                item_version: Some(2),
                refire_of: None,
                lease,
                now,
                body: b"{\"a\":1}",
            })
        };
        log!(mk(&d("d1"), Some(&i1), None, 500));
        log!(mk(&d("d2"), Some(&i1), None, 400));
        log!(mk(
            &d("d3"),
            Some(&i2),
            Some(NewLease {
                token: "tok",
                until: 600,
                owner: "me",
                number: 1,
            }),
            450
        ));
        log!(mk(&d("d4"), None, None, 450));
        log!(r.insert_delivery(&NewDelivery {
            id: &d("d5"),
            workflow: &wf,
            stage: &s3,
            item: Some(&i2),
            event: EventType::ItemCreated,
            trigger: DeliveryTrigger::Test,
            item_version: None,
            refire_of: Some(&d("d1")),
            lease: None,
            now: 460,
            body: &[0, 159, 255],
        }));
        log!(r.body_of(1));
        log!(r.body_of(5));
        log!(r.open_webhook_deliveries(&i1, None));
        log!(r.open_webhook_deliveries(&i1, Some(&d("d1"))));
        log!(r.delivery_for_record(1, &d("d1")));
        log!(r.delivery_for_record(1, &d("d2")));
        log!(r.delivery_for_record(3, &d("d3")));
        let outcome = AttemptOutcome {
            started_at: 510,
            duration_ms: 12,
            url: "http://x".into(),
            request_headers: vec![("a".into(), "b".into())],
            status: Some(503),
            response_headers: vec![("c".into(), "d".into())],
            response_body: Some(b"oops \xff".to_vec()),
            error_kind: Some(ErrorKind::HttpStatus),
            error_message: Some("503".into()),
            retry_after: None,
        };
        log!(r.upsert_attempt(&AttemptRow {
            delivery: &d("d1"),
            number: 1,
            trigger: AttemptTrigger::Scheduled,
            counted: true,
            outcome: &outcome,
        }));
        log!(r.upsert_attempt(&AttemptRow {
            delivery: &d("d1"),
            number: 2,
            trigger: AttemptTrigger::Manual,
            counted: false,
            outcome: &AttemptOutcome::default(),
        }));
        log!(r.insert_interrupted_attempt(&d("d3"), 1, "http://z", "lost", 520));
        log!(q.attempts_of(&d("d1")));
        log!(q.attempts_of(&d("d3")));
        log!(r.update_delivery(
            1,
            &DeliveryUpdate {
                state: DeliveryState::RetryScheduled,
                attempts: 1,
                next_attempt_at: Some(700),
                last_status: Some(503),
                last_error_kind: Some(ErrorKind::HttpStatus),
                last_attempt_at: 510,
                now: 511,
                routed_version: None,
            }
        ));
        log!(r.set_routed_version(&d("d2"), 7));
        log!(r.update_delivery(
            2,
            &DeliveryUpdate {
                state: DeliveryState::Succeeded,
                attempts: 1,
                next_attempt_at: None,
                last_status: Some(200),
                last_error_kind: None,
                last_attempt_at: 512,
                now: 513,
                routed_version: None,
            }
        ));
        log!(r.refire_row(&d("d2")));
        log!(r.refire_row(&d("nope")));
        log!(r.set_refire_of(&d("d4"), &d("d2")));
        log!(r.delivery_for_cancel(&d("d4")));
        log!(r.delivery_for_cancel(&d("nope")));
        log!(r.latest_webhook_delivery("i1"));
        log!(r.latest_webhook_delivery("nope"));
        log!(r.take_manual_number(&d("d1")));
        log!(r.take_manual_number(&d("nope")));

        // Leases and due pages.
        log!(r.expired_leases(599));
        log!(r.expired_leases(601));
        log!(r.leases_of("me", 600));
        log!(r.leases_of("me", 601));
        log!(r.due_page(1000, (0, 0), 10));
        log!(r.due_page(1000, (450, 4), 1));
        log!(r.due_page(455, (0, 0), 10));
        log!(q.next_due());
        log!(r.release_lease(&d("d3"), 650));
        log!(r.release_lease(&d("d3"), 651));
        log!(r.lease_delivery(3, "t2", 900, "you", 660));
        log!(r.lease_delivery(3, "t3", 900, "you", 661));
        log!(r.lease_delivery(2, "t3", 900, "you", 661));
        log!(r.leases_of("you", 800));
        log!(q.next_due());

        // Stages.
        log!(r.stage_paused(&wf, &s2));
        log!(r.stage_paused(&wf, &StageId::new("nope")).is_err());
        log!(r.pause_stage(&wf, &s3, "broken"));
        log!(r.pause_stage(&wf, &s3, "again"));
        log!(r.stage_paused(&wf, &s3));
        log!(r.due_page(1000, (0, 0), 10));
        log!(q.next_due());
        log!(q.paused_stages());
        log!(r.extend_failure_run(&wf, &s2));
        log!(r.extend_failure_run(&wf, &s2));
        log!(r.extend_failure_run(&wf, &StageId::new("nope")));
        log!(r.reset_failure_run(&wf, &s2));
        log!(r.extend_failure_run(&wf, &s2));
        log!(r.set_stage_paused(&wf, &s2, Some("by hand")));
        log!(r.stage_paused(&wf, &s2));
        log!(r.extend_failure_run(&wf, &s2));
        log!(r.set_stage_paused(&wf, &s2, None));
        log!(r.stage_paused(&wf, &s2));
        log!(r.extend_failure_run(&wf, &s2));
        log!(r.set_stage_paused(&WorkflowId::new("Aw"), &s1, Some("x")));
        log!(r.retire_stage(&WorkflowId::new("Aw"), &s2, 700));
        log!(q.workflows_with_stage(&s2));
        log!(q.paused_stages());

        // Cancels.
        log!(r.cancel_delivery(4, CancelReason::ItemMoved, "system", 700));
        log!(r.cancel_open_delivery(&d("d1"), CancelReason::Operator, "op", 701));
        log!(r.cancel_open_delivery(&d("d1"), CancelReason::Operator, "op", 702));
        log!(r.open_webhook_deliveries(&i2, None));

        // Counters.
        log!(r.recount_all());
        log!(r.stored_count(Counted::Items, "wf", "s2", None));
        log!(r.stored_count(Counted::Items, "wf", "s2", Some("active")));
        log!(r.stored_count(Counted::Deliveries, "wf", "s2", Some("cancelled")));
        log!(r.stored_count(Counted::Deliveries, "wf", "nope", None));
        log!(r.add_to_count(Counted::Deliveries, "wf", "s2", "cancelled", 3));
        log!(r.add_to_count(Counted::Deliveries, "wf", "s9", "pending", 2));
        log!(r.add_to_count(Counted::Items, "wf", "s1", "active", -1));
        log!(r.stored_count(Counted::Deliveries, "wf", "s2", Some("cancelled")));
        log!(q.workflow_counts(&wf));
        log!(q.delivery_counts());
        log!(q.delivery_totals());
        log!(q.open_deliveries());
        log!(q.health_facts(800));
        log!(r.recount_all());
        log!(q.health_facts(800));

        // Dispatchers, audit, settings.
        for (id, now) in [("a", 10), ("b", 30), ("a", 50)] {
            log!(r.upsert_heartbeat(&Heartbeat {
                id,
                pid: 4_000_000_000,
                host: "h",
                process_start: "ps",
                started_at: 1,
                now,
                concurrency: 8,
            }));
        }
        log!(q.dispatchers());
        log!(r.delete_dispatcher("b"));
        log!(q.dispatchers());
        for at in [1, 2, 3, 4] {
            log!(r.insert_audit(&AuditRow {
                at,
                operator: "op",
                action: "act",
                target: "t",
                filter: (at % 2 == 0).then_some("f"),
                count: at,
            }));
        }
        log!(q.audit_rows_before(3));
        log!(r.delete_audit_before(4, 1));
        log!(q.audit_rows_before(4));
        log!(q.audit_log(2));
        log!(r.put_setting("policy.b", "1"));
        log!(r.put_setting("policy.B", "2"));
        log!(r.put_setting("policy.b", "3"));
        log!(r.put_setting("other", "4"));
        log!(q.settings("policy."));

        // Item and delivery listings.
        log!(q.owners(&["i3", "nope", "i1", "i3"]));
        log!(q.owners(&[]));
        for order in [ItemOrder::Waiting, ItemOrder::Name] {
            for stage in [None, Some(s2.clone())] {
                let filter = ItemFilter {
                    workflow: Some(wf.clone()),
                    stage: stage.clone(),
                    state: None,
                    search: None,
                    order,
                };
                let first = q.list_items(&filter, None, 2).unwrap();
                log!(first);
                let rest = q.list_items(&filter, Some(&first[1].cursor), 10);
                log!(rest);
                log!(q.count_items(&filter));
            }
        }
        for search in ["A", "_", "%", "ä", "i"] {
            let filter = ItemFilter {
                search: Some(search.into()),
                state: Some(ItemState::Active),
                ..Default::default()
            };
            log!(
                q.list_items(&filter, None, 10)
                    .map(|v| v.into_iter().map(|i| i.id.0).collect::<Vec<_>>())
            );
            log!(q.count_items(&filter));
        }
        log!(q.item(&i1));
        log!(q.item(&ItemId::new("nope")));
        log!(q.deliveries_of_item(&i1));
        let filters = [
            DeliveryFilter::default(),
            DeliveryFilter {
                workflow: Some(wf.clone()),
                stage: Some(s2.clone()),
                state: Some(DeliveryState::Cancelled),
                ..Default::default()
            },
            DeliveryFilter {
                item: Some(i2.clone()),
                event: Some(EventType::ItemCreated),
                since: Some(to_time(455)),
                ..Default::default()
            },
            DeliveryFilter {
                error_kind: Some(ErrorKind::HttpStatus),
                status: Some(503),
                ..Default::default()
            },
        ];
        for f in &filters {
            let first = q.list_deliveries(f, None, 2).unwrap();
            log!(first);
            if let Some((_, c)) = first.last() {
                log!(q.list_deliveries(f, Some(*c), 10));
            }
            log!(q.count_deliveries(f));
        }
        log!(q.delivery(&d("d5")));
        log!(q.delivery(&d("nope")));
        log!(q.newest_webhook_delivery(&i1));
        log!(q.newest_webhook_delivery(&ItemId::new("nope")));
        log!(q.attempts_after(AttemptCursor(0), 10));
        log!(q.attempts_after(AttemptCursor(1), 1));
        log!(q.attempts_end());
        log!(q.deliveries_end());
        log!(q.prune_scan(0, 10_000, 10));
        log!(q.prune_scan(1, 10_000, 1));
        log!(q.prune_scan(0, 512, 10));
        log!(q.orphans(10));

        // An orphan (i5 is in s1), a stuck item (i4, with no open delivery), beats.
        log!(mk(&d("d6"), Some(&ItemId::new("i5")), None, 800));
        log!(r.move_item(&ItemMove {
            id: &ItemId::new("i4"),
            stage: &s2,
            state: ItemState::InDelivery,
            version: 3,
            now: 801,
            entered: false,
        }));
        log!(q.health_facts(1000));
        log!(q.orphans(10));
        log!(q.next_due());

        // What burns an identity value on PostgreSQL (a conflict), and leaves no gap on
        // SQLite: last, so that every `seq` above is the same on both.
        log!(r.insert_item(&NewItemRow {
            item: &item("i1", "b"),
            stage: &s1,
            state: ItemState::Waiting,
            fingerprint: "fp2",
            now: 100,
            entered_at: 100,
        }));
        log!(r.item_owner(&ItemId::new("i1")));
        log!(r.insert_interrupted_attempt(&d("d4"), 1, "http://x", "lost", 505));
        log!(r.insert_interrupted_attempt(&d("d4"), 1, "http://y", "lost again", 506));
        log!(r.upsert_attempt(&AttemptRow {
            delivery: &d("d4"),
            number: 1,
            trigger: AttemptTrigger::Scheduled,
            counted: true,
            outcome: &outcome,
        }));
        log!(q.attempts_of(&d("d4")));
        log!(q.attempts_after(AttemptCursor(3), 10).map(|v| v.len()));

        // Prune.
        log!(r.delete_finished_delivery("d1"));
        log!(r.delete_finished_delivery("d3"));
        log!(r.delete_finished_delivery("nope"));
        log!(q.attempts_of(&d("d1")));
        log!(q.deliveries_end());
        out
    }

    #[test]
    fn postgres_rows_and_reads_match_sqlite() {
        let pg = pg();
        let got = script(&PgRows { conn: &pg }, &PgReads { conn: &pg });

        let dir = tempfile::tempdir().unwrap();
        let lite = crate::store::sqlite::open_connection(&dir.path().join("s.db"), false).unwrap();
        crate::store::sqlite::schema::migrate(&lite).unwrap();
        let want = script(&SqliteRows { conn: &lite }, &SqliteReads { conn: &lite });

        let mut differ = 0;
        for (g, w) in got.iter().zip(&want) {
            if g != w {
                differ += 1;
                eprintln!("postgres: {g}\nsqlite:   {w}\n");
            }
        }
        assert_eq!(got.len(), want.len());
        assert_eq!(differ, 0, "{differ} of {} results differ", got.len());

        // What only PostgreSQL answers its own way.
        let (r, q) = (PgRows { conn: &pg }, PgReads { conn: &pg });
        assert_eq!(r.set_cache_kib(-4096).unwrap(), -4096);
        assert_eq!(r.give_back_pages(100).unwrap(), 0);
        assert_eq!(q.schema_version().unwrap(), schema::MIGRATIONS.len() as i64);
        let s = q.storage().unwrap();
        assert!(s.page_size == 8192 && s.pages > 0 && s.free == 0 && !s.reclaimable);
    }
}
