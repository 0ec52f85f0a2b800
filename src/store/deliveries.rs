//! Deliveries and attempts: creation inside moves, listings and detail.
//!
//! Leasing lives in `leases`, recording outcomes in `attempts`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Tx;
use super::seam::{Cell, NewDelivery};
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

/// The one delivery filter (issue 18): `deliveries`, its export, bulk re-fire, replay and
/// cancel, the console's deliveries view and the API all select with it, and every backend
/// matches it in SQL over the whole store. Fields are ANDed; the values of one list are ORed.
/// `statuses` and `error_kinds` both describe the last attempt's result, so when both are
/// given a delivery matches either (`--status 5xx --error-kind timeout`: the 5xx failures and
/// the timeouts, the usual recovery after a receiver's outage).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeliveryFilter {
    pub workflow: Option<WorkflowId>,
    pub stage: Option<StageId>,
    pub state: Option<DeliveryState>,
    pub item: Option<ItemId>,
    pub event: Option<EventType>,
    pub trigger: Option<DeliveryTrigger>,
    /// Created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Created before this time (a half-open window: `since` ≤ created < `until`).
    pub until: Option<DateTime<Utc>>,
    /// The error kind of the delivery's last attempt (`timeout`, `connect`, …), any of these.
    pub error_kinds: Vec<ErrorKind>,
    /// The HTTP status of the delivery's last attempt: any of these codes or classes.
    pub statuses: Vec<StatusMatch>,
    /// Only the re-fires of this delivery.
    pub refire_of: Option<DeliveryId>,
    /// The last error's cause, exactly as failure groups show it (`engine::cause`): what
    /// makes a failure group a filter.
    pub message_class: Option<String>,
    /// A substring of the delivery id, the item id or the item's name (the console's `/`),
    /// ASCII letters matched in any case.
    pub search: Option<String>,
}

impl DeliveryFilter {
    /// Whether the counter rows can count it (only workflow, stage and state are set).
    pub fn by_counters(&self) -> bool {
        self.item.is_none()
            && self.event.is_none()
            && self.trigger.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.error_kinds.is_empty()
            && self.statuses.is_empty()
            && self.refire_of.is_none()
            && self.message_class.is_none()
            && self.search.as_deref().is_none_or(str::is_empty)
    }

    /// Whether nothing is set (every delivery matches).
    pub fn is_empty(&self) -> bool {
        self.by_counters()
            && self.workflow.is_none()
            && self.stage.is_none()
            && self.state.is_none()
    }

    /// The filter as the CLI's flags (`--workflow demo --status 5xx,408`): what audit rows
    /// record and what a front end shows, so an operator can paste it back.
    pub fn as_flags(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        let mut push = |k: &str, v: String| out.push(format!("--{k} {v}"));
        let join = |v: Vec<String>| v.join(",");
        if let Some(w) = &self.workflow {
            push("workflow", w.to_string());
        }
        if let Some(s) = &self.stage {
            push("stage", s.to_string());
        }
        if let Some(s) = self.state {
            push("state", s.to_string());
        }
        if let Some(i) = &self.item {
            push("item", i.to_string());
        }
        if let Some(e) = self.event {
            push("event", e.to_string());
        }
        if let Some(t) = self.trigger {
            push("trigger", t.to_string());
        }
        if !self.statuses.is_empty() {
            push(
                "status",
                join(self.statuses.iter().map(|s| s.to_string()).collect()),
            );
        }
        if !self.error_kinds.is_empty() {
            push(
                "error-kind",
                join(self.error_kinds.iter().map(|s| s.to_string()).collect()),
            );
        }
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        if let Some(t) = &self.since {
            push("since", time(t));
        }
        if let Some(t) = &self.until {
            push("until", time(t));
        }
        if let Some(r) = &self.refire_of {
            push("refire-of", r.to_string());
        }
        if let Some(c) = &self.message_class {
            push("message-class", shell_quoted(c));
        }
        if let Some(q) = self.search.as_deref().filter(|q| !q.is_empty()) {
            push("search", shell_quoted(q));
        }
        out.join(" ")
    }
}

/// `s` as one shell word: as it is when it is plain, else in single quotes (a quote inside
/// written `'\''`), so a filter shown as flags can be pasted back.
fn shell_quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/@%+=".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// One value of the `status` filter: an exact HTTP status (`503`) or a class (`5xx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusMatch {
    Code(u16),
    /// The hundreds digit: `Class(5)` is 500–599.
    Class(u16),
}

impl StatusMatch {
    /// The statuses it matches, inclusive.
    pub fn range(self) -> (u16, u16) {
        match self {
            StatusMatch::Code(c) => (c, c),
            StatusMatch::Class(h) => (h * 100, h * 100 + 99),
        }
    }

    pub fn matches(self, status: u16) -> bool {
        let (lo, hi) = self.range();
        (lo..=hi).contains(&status)
    }
}

impl std::str::FromStr for StatusMatch {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<StatusMatch, String> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || format!("`{s}` is not an HTTP status (100–599) or a class like `5xx`");
        if let Some(h) = t.strip_suffix("xx") {
            return match h.parse::<u16>() {
                Ok(d @ 1..=5) if h.len() == 1 => Ok(StatusMatch::Class(d)),
                _ => Err(bad()),
            };
        }
        match t.parse::<u16>() {
            Ok(c @ 100..=599) if t.len() == 3 => Ok(StatusMatch::Code(c)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusMatch::Code(c) => write!(f, "{c}"),
            StatusMatch::Class(h) => write!(f, "{h}xx"),
        }
    }
}

impl serde::Serialize for StatusMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StatusMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // A bare number (`503`) or a string (`"503"`, `"5xx"`).
        let v = serde_json::Value::deserialize(d)?;
        let text = match v {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s,
            _ => return Err(serde::de::Error::custom("a status is a number or `5xx`")),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for StatusMatch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StatusMatch".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An HTTP status (`503`) or a class (`1xx`–`5xx`)",
            "type": "string",
            "pattern": "^([1-5][0-9][0-9]|[1-5]xx)$"
        })
    }
}

/// Failed deliveries that share a cause (issue 18): the stage, the last attempt's error kind
/// and status, and its message normalised. A group is a filter ([`FailureGroup::filter`]),
/// so every bulk action takes it.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct FailureGroup {
    pub workflow: WorkflowId,
    pub stage: StageId,
    pub error_kind: Option<ErrorKind>,
    pub status: Option<u16>,
    /// The last error's message with what varies per request replaced (`#` for numbers,
    /// `<id>` for ids, `'…'` for quoted values, `?…` for a URL's query; `engine::cause`), so
    /// "timed out after 10003 ms" and "… 10011 ms" are one group; for a failure by status it
    /// adds the receiver's reason (`400 Bad Request: invalid label`). The filter field
    /// `message_class` takes it as it is.
    pub message: Option<String>,
    pub count: i64,
    /// How many items the group's deliveries belong to.
    pub items: i64,
    pub first_at: Option<DateTime<Utc>>,
    pub last_at: Option<DateTime<Utc>>,
}

impl FailureGroup {
    /// The filter that selects exactly this group's deliveries within `base` (the filter
    /// the groups were made with).
    pub fn filter(&self, base: &DeliveryFilter) -> DeliveryFilter {
        let mut f = base.clone();
        f.workflow = Some(self.workflow.clone());
        f.stage = Some(self.stage.clone());
        f.state = Some(DeliveryState::Failed);
        f.statuses.clear();
        f.error_kinds.clear();
        match (self.status, self.error_kind) {
            (Some(s), _) => f.statuses.push(StatusMatch::Code(s)),
            (None, Some(k)) => f.error_kinds.push(k),
            (None, None) => {}
        }
        f.message_class = self.message.clone();
        f
    }
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

    /// The failed deliveries `filter` selects, grouped by cause (stage, error kind, status,
    /// normalised message), biggest group first.
    pub fn failure_groups(&self, filter: &DeliveryFilter) -> Result<Vec<FailureGroup>> {
        let mut f = filter.clone();
        f.state = Some(DeliveryState::Failed);
        self.read(|r| r.failure_groups(&f))
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

/// The failure groups' query over the delivery filter's `where_sql` (from
/// [`delivery_where`], the same for every backend): (workflow, stage, error kind, status,
/// cause, count, items, first and last seen), biggest group first. A stage delivery counts
/// only while it is its item's latest (what a re-fire would take): once re-fired or
/// re-assigned, it is no longer a failure to act on. It reads the delivery rows alone (the
/// cause is a column), so 100,000 failures are one pass over them.
pub(crate) fn failure_groups_sql(where_sql: &str) -> String {
    let latest = "(d.event <> 'stage.webhook' OR NOT EXISTS (SELECT 1 FROM deliveries n
        WHERE n.item_id = d.item_id AND n.event = 'stage.webhook' AND n.seq > d.seq))";
    let where_sql = if where_sql.is_empty() {
        format!("WHERE {latest}")
    } else {
        format!("{where_sql} AND {latest}")
    };
    format!(
        "SELECT d.workflow_id, d.stage_id, d.last_error_kind, d.last_status, d.last_error_class,
                COUNT(*), COUNT(DISTINCT d.item_id), MIN(d.last_attempt_at), MAX(d.last_attempt_at)
         FROM deliveries d LEFT JOIN items i ON i.id = d.item_id
         {where_sql}
         GROUP BY d.workflow_id, d.stage_id, d.last_error_kind, d.last_status, d.last_error_class
         ORDER BY COUNT(*) DESC, d.workflow_id, d.stage_id, COALESCE(d.last_status, 0),
                  COALESCE(d.last_error_kind, ''), COALESCE(d.last_error_class, '')"
    )
}

/// How a backend writes what the delivery filter needs in SQL.
pub(crate) struct Dialect {
    /// The parameter mark, numbered: `?` (SQLite's `?1`) or `$` (PostgreSQL's `$1`).
    pub(crate) mark: char,
    /// A match of `column` against the LIKE pattern in parameter `param` that ignores the
    /// case of ASCII letters only, with `\` as the escape.
    pub(crate) like: fn(column: &str, param: &str) -> String,
}

/// The `WHERE` clause (empty when nothing narrows) of the delivery list over `deliveries d
/// LEFT JOIN items i`, and its parameters in order: the filter, then the keyset bound after
/// `after` (rows of lower `seq`; higher when `backward`). Written once for every backend.
pub(crate) fn delivery_where(
    f: &DeliveryFilter,
    after: Option<i64>,
    backward: bool,
    dialect: &Dialect,
) -> (String, Vec<Cell>) {
    let mut wh = Vec::new();
    let mut args: Vec<Cell> = Vec::new();
    let mark = |args: &Vec<Cell>| format!("{}{}", dialect.mark, args.len());
    let mut push = |sql: &str, v: Cell, args: &mut Vec<Cell>| {
        args.push(v);
        wh.push(sql.replace('?', &mark(args)));
    };
    let text = |s: &str| Cell::Text(s.to_string());
    if let Some(w) = &f.workflow {
        push("d.workflow_id = ?", text(w.as_str()), &mut args);
    }
    if let Some(s) = &f.stage {
        push("d.stage_id = ?", text(s.as_str()), &mut args);
    }
    if let Some(s) = f.state {
        push("d.state = ?", text(s.as_str()), &mut args);
    }
    if let Some(i) = &f.item {
        push("d.item_id = ?", text(i.as_str()), &mut args);
    }
    if let Some(e) = f.event {
        push("d.event = ?", text(e.as_str()), &mut args);
    }
    if let Some(t) = f.since {
        push(
            "d.created_at >= ?",
            Cell::Int(t.timestamp_millis()),
            &mut args,
        );
    }
    if let Some(t) = f.until {
        push(
            "d.created_at < ?",
            Cell::Int(t.timestamp_millis()),
            &mut args,
        );
    }
    if let Some(t) = f.trigger {
        push("d.trigger = ?", text(t.as_str()), &mut args);
    }
    if let Some(r) = &f.refire_of {
        push("d.refire_of = ?", text(r.as_str()), &mut args);
    }
    if let Some(c) = &f.message_class {
        push("d.last_error_class = ?", text(c), &mut args);
    }
    if let Some(a) = after {
        let op = if backward { "d.seq > ?" } else { "d.seq < ?" };
        push(op, Cell::Int(a), &mut args);
    }
    if let Some(q) = f.search.as_ref().filter(|q| !q.is_empty()) {
        let escaped = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        args.push(Cell::Text(format!("%{escaped}%")));
        let p = mark(&args);
        let any: Vec<String> = ["d.id", "d.item_id", "i.name"]
            .iter()
            .map(|c| (dialect.like)(c, &p))
            .collect();
        wh.push(format!("({})", any.join(" OR ")));
    }
    // The last attempt's result: any listed status (code or class) or error kind.
    let mut result = Vec::new();
    for s in &f.statuses {
        let (lo, hi) = s.range();
        args.push(Cell::Int(lo.into()));
        let lo = mark(&args);
        args.push(Cell::Int(hi.into()));
        result.push(format!("d.last_status BETWEEN {lo} AND {}", mark(&args)));
    }
    for k in &f.error_kinds {
        args.push(text(k.as_str()));
        result.push(format!("d.last_error_kind = {}", mark(&args)));
    }
    if !result.is_empty() {
        wh.push(format!("({})", result.join(" OR ")));
    }
    let where_sql = if wh.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", wh.join(" AND "))
    };
    (where_sql, args)
}
