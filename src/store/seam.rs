//! The backend boundary (design §7, issue 16): what a store backend writes.
//!
//! Everything above these traits is backend-neutral and decides: where an item routes, what
//! an attempt does to its delivery ([`crate::engine::delivery`]), which lease is stale, what
//! a notification carries, how counters move, what a health check concludes. Everything
//! below them only stores and fetches rows, the way River keeps the job-queue rules above its
//! `riverdriver`. Three traits:
//! - [`Rows`]: the row operations of one write transaction (a [`super::Tx`] carries them);
//! - [`Reads`]: the reads behind listings, details and figures, each in one snapshot;
//! - [`Backend`]: the store itself (where it lives, reads, a writer, a change feed, backup,
//!   the checks of its storage). [`super::Store`] holds one as a trait object.
//!
//! A method is named by what it does to the rows, never by a rule, and takes and returns
//! plain data; all are object-safe. Times are milliseconds since the Unix epoch, given by the
//! caller (the transaction's `now`): a backend never reads a clock of its own here.
//!
//! SQLite implements them in `store/sqlite/` (`rows.rs`, `reads.rs`, `mod.rs`).

use crate::model::{
    AttemptOutcome, AttemptTrigger, CancelReason, ContentJson, DeliveryId, DeliveryState,
    DeliveryTrigger, ErrorKind, EventType, HistoryCause, Item, ItemId, ItemState, StageId,
    WorkflowId,
};

use super::Result;

/// An item's new place, written by a move (the item row only; history is separate).
#[derive(Debug)]
pub(crate) struct ItemMove<'a> {
    pub id: &'a ItemId,
    pub stage: &'a StageId,
    pub state: ItemState,
    pub version: i64,
    pub now: i64,
    /// The item entered a stage (its `entered_at` becomes `now`), rather than only changing
    /// state where it is.
    pub entered: bool,
}

/// One row of an item's history.
#[derive(Debug)]
pub(crate) struct HistoryRow<'a> {
    pub item: &'a ItemId,
    pub workflow: &'a WorkflowId,
    pub from: Option<&'a StageId>,
    pub to: &'a StageId,
    pub cause: HistoryCause,
    pub operator: Option<&'a str>,
    pub revision: i64,
    pub delivery: Option<&'a DeliveryId>,
    pub at: i64,
}

/// A lease written with a new delivery (a test, sent at once by the process that made it).
#[derive(Debug)]
pub(crate) struct NewLease<'a> {
    pub token: &'a str,
    pub until: i64,
    pub owner: &'a str,
    pub number: i64,
}

/// A delivery to create, with its frozen body.
#[derive(Debug)]
pub(crate) struct NewDelivery<'a> {
    pub id: &'a DeliveryId,
    pub workflow: &'a WorkflowId,
    pub stage: &'a StageId,
    pub item: Option<&'a ItemId>,
    pub event: EventType,
    pub trigger: DeliveryTrigger,
    /// The item's version after the move that made the delivery (fencing), for
    /// `stage.webhook` deliveries.
    pub item_version: Option<i64>,
    pub refire_of: Option<&'a DeliveryId>,
    /// `None`: pending and due at `now`. `Some`: in flight under this lease.
    pub lease: Option<NewLease<'a>>,
    pub now: i64,
    pub body: &'a [u8],
}

/// A delivery as recording an attempt reads it.
#[derive(Debug)]
pub(crate) struct DeliveryRow {
    pub state: DeliveryState,
    pub token: Option<String>,
    pub attempts: i64,
    pub item_id: Option<String>,
    pub item_version: Option<i64>,
    pub workflow: WorkflowId,
    pub stage: StageId,
    pub event: EventType,
}

/// An attempt row to write. A late recorder's row replaces the `interrupted` row another
/// dispatcher wrote for the same number.
#[derive(Debug)]
pub(crate) struct AttemptRow<'a> {
    pub delivery: &'a DeliveryId,
    pub number: i64,
    pub trigger: AttemptTrigger,
    pub counted: bool,
    pub outcome: &'a AttemptOutcome,
}

/// What a recorded attempt leaves in its delivery row (the lease is released).
#[derive(Debug)]
pub(crate) struct DeliveryUpdate {
    pub state: DeliveryState,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_status: Option<u16>,
    pub last_error_kind: Option<ErrorKind>,
    /// The failure's cause as failure groups key it (`engine::cause`); none after a success.
    pub last_error_class: Option<String>,
    pub last_attempt_at: i64,
    pub now: i64,
    /// The item version its routing wrote, when it routed.
    pub routed_version: Option<i64>,
}

/// A delivery in flight: `(id, workflow, stage, lease number)`.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub id: DeliveryId,
    pub workflow: String,
    pub stage: String,
    pub number: i64,
}

/// An open delivery about to be cancelled: `seq` and what its counter needs.
#[derive(Debug)]
pub(crate) struct OpenDelivery {
    pub seq: i64,
    pub workflow: String,
    pub stage: String,
    pub state: String,
}

/// A due delivery of an unpaused stage, as leasing pages through them.
#[derive(Debug)]
pub(crate) struct Due {
    pub seq: i64,
    pub due: i64,
    pub workflow: String,
    pub stage: String,
    pub state: String,
}

/// What leasing one delivery gives back.
#[derive(Debug)]
pub(crate) struct Leased {
    pub id: String,
    pub item_id: Option<String>,
    pub event: EventType,
    pub number: i64,
    pub attempts: i64,
    /// The state the lease took the row from, when the backend read it under the row's lock
    /// (a server database, where another process may have changed it since `due_page`);
    /// `None`: the state `due_page` read, which the backend's write lock kept current.
    pub from: Option<String>,
    /// The frozen body, when the backend read it with the lease (a server database saves a
    /// round trip); `None`: read it with `body_of`.
    pub body: Option<Vec<u8>>,
}

/// A stage's flow-control row (issue 21): its hold, its rate limit's token bucket and its
/// adaptive concurrency, as the lease and record transactions read and write them.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct StageFlow {
    /// No lease for the stage before this time (ms); a past time is no hold.
    pub held_until: Option<i64>,
    pub held_reason: Option<String>,
    /// The token bucket: `(tokens, as of ms)`; `None` is a full bucket.
    pub bucket: Option<(f64, i64)>,
    /// When the bucket next holds a whole token; leasing skips the stage until then.
    pub next_token_at: Option<i64>,
    /// The effective concurrency set by AIMD; `None`: not reduced.
    pub concurrency_limit: Option<i64>,
    /// Successes since the limit last changed.
    pub limit_successes: i64,
    /// When the limit was last decreased (ms).
    pub limit_decreased_at: i64,
}

/// A delivery as a re-fire reads it.
#[derive(Debug)]
pub(crate) struct RefireRow {
    pub workflow: String,
    pub stage: String,
    pub event: String,
    pub item_id: Option<String>,
    pub state: String,
    pub routed_version: Option<i64>,
}

/// A delivery as an operator's cancel reads it.
#[derive(Debug)]
pub(crate) struct CancelRow {
    pub state: DeliveryState,
    pub workflow: String,
    pub stage: String,
    pub item_id: Option<String>,
    pub item_version: Option<i64>,
    pub event: EventType,
}

/// A delivery given its next attempt number for a manual attempt (a replay).
#[derive(Debug)]
pub(crate) struct ManualAttempt {
    pub workflow: String,
    pub stage: String,
    pub item_id: Option<String>,
    pub event: EventType,
    pub seq: i64,
    pub number: i64,
    pub attempts: i64,
}

/// A dispatcher's heartbeat row.
#[derive(Debug)]
pub(crate) struct Heartbeat<'a> {
    pub id: &'a str,
    pub pid: u32,
    pub host: &'a str,
    pub process_start: &'a str,
    pub started_at: i64,
    pub now: i64,
    pub concurrency: u32,
}

/// One row of the audit log.
#[derive(Debug)]
pub(crate) struct AuditRow<'a> {
    pub at: i64,
    pub operator: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub filter: Option<&'a str>,
    pub count: i64,
    /// The front end (`console`, `cli`, `api:TOKEN`), for rows the actions layer writes.
    pub via: Option<&'a str>,
    /// `running` until the action ends, then `done`, `partly_refused`, `refused`, `stopped`.
    pub outcome: Option<&'a str>,
    /// How many the filter or the ids selected.
    pub matched: Option<i64>,
}

/// A new item, written once where its import route ends (version 1).
#[derive(Debug)]
pub(crate) struct NewItemRow<'a> {
    pub item: &'a Item,
    pub stage: &'a StageId,
    pub state: ItemState,
    /// The hash of the import line's content, to tell a differing re-import.
    pub fingerprint: &'a str,
    /// The content as text, when the caller made it; else `item`'s content is serialised.
    pub json: Option<&'a ContentJson>,
    pub now: i64,
    /// When it entered its stage: `now`, or the stage's last arrival when that is later
    /// ([`Rows::last_arrival`]), so it sorts after every item already there.
    pub entered_at: i64,
}

impl<'a> NewItemRow<'a> {
    /// The item's content as the text a backend stores: the caller's, or made from `item`.
    pub(crate) fn content(&self) -> serde_json::Result<std::borrow::Cow<'a, ContentJson>> {
        use std::borrow::Cow;
        Ok(match self.json {
            Some(json) => Cow::Borrowed(json),
            None => Cow::Owned(ContentJson {
                tags: serde_json::to_string(&self.item.tags)?,
                properties: serde_json::to_string(&self.item.properties)?,
                slots: serde_json::to_string(&self.item.slots)?,
                annotations: serde_json::to_string(&self.item.annotations)?,
            }),
        })
    }
}

/// A workflow revision to store (and make current).
#[derive(Debug)]
pub(crate) struct RevisionRow<'a> {
    pub workflow: &'a WorkflowId,
    pub name: &'a str,
    pub team: &'a str,
    pub revision: i64,
    /// The spec as JSON.
    pub spec: &'a str,
    pub operator: &'a str,
    pub now: i64,
    /// The workflow is new.
    pub created: bool,
}

/// The counted rows a counter covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Counted {
    Items,
    Deliveries,
}

/// The row operations of one write transaction. Every method runs inside the transaction
/// the backend opened for the job; none commits.
pub(crate) trait Rows {
    // ---- workflows ----
    /// A workflow's current spec (as stored, JSON) and revision.
    fn current_spec(&self, id: &WorkflowId) -> Result<Option<(String, i64)>>;
    // ---- items ----
    /// An item with its content (tags, properties, slots, annotations).
    fn load_item(&self, id: &ItemId) -> Result<Option<Item>>;
    /// An item's row without its content (left empty): enough to fence and to route an
    /// outcome whose route reads no content.
    fn load_item_head(&self, id: &ItemId) -> Result<Option<Item>>;
    fn item_name(&self, id: &ItemId) -> Result<Option<String>>;
    fn move_item(&self, m: &ItemMove<'_>) -> Result<()>;
    fn insert_history(&self, h: &HistoryRow<'_>) -> Result<()>;
    /// Inserts an imported item and its content unless its id exists; false when it did.
    fn insert_item(&self, i: &NewItemRow<'_>) -> Result<bool>;
    /// The workflow and content fingerprint of an existing item.
    fn item_owner(&self, id: &ItemId) -> Result<Option<(String, String)>>;
    /// The latest `entered_at` of the items in a stage; `None` when it holds none.
    fn last_arrival(&self, workflow: &WorkflowId, stage: &StageId) -> Result<Option<i64>>;
    /// At most `limit` items of a stage after `after` (`(entered_at, seq)`), in the order
    /// they entered it: their keys and ids.
    fn items_in_stage(
        &self,
        workflow: &WorkflowId,
        stage: &StageId,
        after: (i64, i64),
        limit: usize,
    ) -> Result<Vec<((i64, i64), String)>>;

    // ---- deliveries ----
    /// Inserts a delivery and its body; returns its `seq`.
    fn insert_delivery(&self, d: &NewDelivery<'_>) -> Result<i64>;
    fn body_of(&self, seq: i64) -> Result<Vec<u8>>;
    /// The item's open `stage.webhook` deliveries other than `except`.
    fn open_webhook_deliveries(
        &self,
        item: &ItemId,
        except: Option<&DeliveryId>,
    ) -> Result<Vec<OpenDelivery>>;
    fn cancel_delivery(&self, seq: i64, reason: CancelReason, by: &str, now: i64) -> Result<()>;
    /// The delivery `id` at row `seq`, as recording reads it.
    fn delivery_for_record(&self, seq: i64, id: &DeliveryId) -> Result<Option<DeliveryRow>>;
    fn upsert_attempt(&self, a: &AttemptRow<'_>) -> Result<()>;
    /// Writes an `interrupted` attempt row for a lease found expired, unless a recorder
    /// already wrote that number.
    fn insert_interrupted_attempt(
        &self,
        id: &DeliveryId,
        number: i64,
        url: &str,
        message: &str,
        now: i64,
    ) -> Result<()>;
    fn update_delivery(&self, seq: i64, u: &DeliveryUpdate) -> Result<()>;
    fn delivery_for_cancel(&self, id: &DeliveryId) -> Result<Option<CancelRow>>;
    /// Cancels an open delivery and releases its lease (an attempt on the wire then records
    /// and routes nothing); false when it was not open.
    fn cancel_open_delivery(
        &self,
        id: &DeliveryId,
        reason: CancelReason,
        by: &str,
        now: i64,
    ) -> Result<bool>;
    /// Deletes a finished delivery with its body and attempts (prune); returns its workflow,
    /// stage and state, and how many attempts went, or `None` when it is not finished.
    fn delete_finished_delivery(&self, id: &str) -> Result<Option<(String, String, String, i64)>>;
    fn set_routed_version(&self, id: &DeliveryId, version: i64) -> Result<()>;
    fn set_refire_of(&self, new: &DeliveryId, old: &DeliveryId) -> Result<()>;
    fn refire_row(&self, id: &DeliveryId) -> Result<Option<RefireRow>>;
    /// The id of the item's newest `stage.webhook` delivery.
    fn latest_webhook_delivery(&self, item: &str) -> Result<Option<String>>;
    /// Takes the delivery's next attempt number for a manual attempt.
    fn take_manual_number(&self, id: &DeliveryId) -> Result<Option<ManualAttempt>>;

    // ---- leases ----
    /// Deliveries in flight whose lease ended before `now`.
    fn expired_leases(&self, now: i64) -> Result<Vec<InFlight>>;
    /// Deliveries in flight under `owner`'s unexpired leases.
    fn leases_of(&self, owner: &str, now: i64) -> Result<Vec<InFlight>>;
    /// Makes an in-flight delivery due again at `now` after its lease `number` was lost; false
    /// when that lease is no longer the delivery's (it was released, or released and taken
    /// again, by another process meanwhile).
    fn release_lease(&self, id: &DeliveryId, number: i64, now: i64) -> Result<bool>;
    /// At most `n` due deliveries after `after` (`(due, seq)`), oldest due first, of stages
    /// that are not paused, not held past `now` and whose `next_token_at` is not after `now`.
    fn due_page(&self, now: i64, after: (i64, i64), n: usize) -> Result<Vec<Due>>;
    /// Leases a due delivery; `None` when it is no longer due.
    fn lease_delivery(
        &self,
        seq: i64,
        token: &str,
        until: i64,
        owner: &str,
        now: i64,
    ) -> Result<Option<Leased>>;

    // ---- stage flow control (issue 21) ----
    /// A live stage's flow-control row; `None` when there is no such live stage.
    fn stage_flow(&self, workflow: &str, stage: &str) -> Result<Option<StageFlow>>;
    /// Writes a live stage's token bucket (`tokens` as of `at`) and when it next holds a
    /// whole token (`None`: it holds one).
    fn put_bucket(
        &self,
        workflow: &str,
        stage: &str,
        tokens: f64,
        at: i64,
        next_token_at: Option<i64>,
    ) -> Result<()>;
    /// Holds a live stage until `until` with `reason`, unless it is held as long or longer
    /// already; true when it changed.
    fn hold_stage(&self, workflow: &str, stage: &str, until: i64, reason: &str) -> Result<bool>;
    /// Clears a live stage's hold; true when it held one that had not ended by `now`.
    fn lift_hold(&self, workflow: &str, stage: &str, now: i64) -> Result<bool>;
    /// Writes a live stage's adaptive concurrency (`limit` `None`: not reduced).
    fn put_concurrency_limit(
        &self,
        workflow: &str,
        stage: &str,
        limit: Option<i64>,
        successes: i64,
        decreased_at: i64,
    ) -> Result<()>;

    // ---- workflows and stages ----
    /// Stores a revision of a workflow and makes it current.
    fn insert_revision(&self, r: &RevisionRow<'_>) -> Result<()>;
    fn retire_stage(&self, workflow: &WorkflowId, stage: &StageId, now: i64) -> Result<()>;
    /// Updates a live stage's name and position and forgets when its next token was due (its
    /// rate may have changed), or adds the stage; true when it was added.
    fn upsert_stage(
        &self,
        workflow: &WorkflowId,
        stage: &crate::workflow::Stage,
        position: i64,
    ) -> Result<bool>;
    /// Whether a live stage is paused.
    fn stage_paused(&self, workflow: &WorkflowId, stage: &StageId) -> Result<bool>;
    /// Takes the stage's lease lock until the transaction ends, so that the stage's in-flight
    /// count and token bucket stay true while this transaction leases for it (`max_in_flight`
    /// and `rate_limit` across processes). Without `wait`, `false` says another transaction
    /// holds it now (its stage is skipped, never waited for); with `wait`, it waits. A
    /// backend whose writes are serialised anyway answers `true`.
    fn lock_stage(&self, workflow: &str, stage: &str, wait: bool) -> Result<bool>;
    /// Pauses or resumes a stage by hand (a resume ends its run of failures too).
    fn set_stage_paused(
        &self,
        workflow: &WorkflowId,
        stage: &StageId,
        reason: Option<&str>,
    ) -> Result<()>;
    fn reset_failure_run(&self, workflow: &WorkflowId, stage: &StageId) -> Result<()>;
    /// Adds one to the stage's run of failed deliveries; returns the new length.
    fn extend_failure_run(&self, workflow: &WorkflowId, stage: &StageId) -> Result<i64>;
    /// Pauses the stage unless it is paused already; true when it changed.
    fn pause_stage(&self, workflow: &WorkflowId, stage: &StageId, reason: &str) -> Result<bool>;

    // ---- counters, dispatchers, audit ----
    /// The stored counter of `(workflow, stage, state)`, or of the stage in every state when
    /// `state` is `None` (without this transaction's deltas).
    fn stored_count(
        &self,
        counted: Counted,
        workflow: &str,
        stage: &str,
        state: Option<&str>,
    ) -> Result<i64>;
    /// Adds `n` to a stored counter.
    fn add_to_count(
        &self,
        counted: Counted,
        workflow: &str,
        stage: &str,
        state: &str,
        n: i64,
    ) -> Result<()>;
    fn upsert_heartbeat(&self, h: &Heartbeat<'_>) -> Result<()>;
    fn delete_dispatcher(&self, id: &str) -> Result<()>;
    /// Deletes the heartbeat rows of dispatchers on other hosts than `host` whose last beat
    /// is older than `beat_before` and that hold no lease any more; returns how many went.
    fn delete_departed_dispatchers(&self, host: &str, beat_before: i64) -> Result<usize>;
    /// Writes an audit row; returns its number.
    fn insert_audit(&self, a: &AuditRow<'_>) -> Result<i64>;
    /// Ends the audit row `seq` of an action: its outcome, how many it touched and, up to
    /// the bound, their ids (a JSON array).
    fn finish_audit(&self, seq: i64, outcome: &str, count: i64, ids: Option<&str>) -> Result<()>;
    /// Rewrites every counter from the rows it counts (`check --repair`, `recount`).
    fn recount_all(&self) -> Result<()>;

    // ---- day-two upkeep (prune) ----
    /// Deletes at most `limit` audit rows older than `before`; returns how many went.
    fn delete_audit_before(&self, before: i64, limit: usize) -> Result<i64>;
    /// Sets this connection's page cache to `kib` KiB for a long job; returns the setting to
    /// restore (a backend without one returns it unchanged).
    fn set_cache_kib(&self, kib: i64) -> Result<i64>;
    /// Gives at most `pages` free pages back to the file system; returns how many went (0 when
    /// the backend has nothing of the kind).
    fn give_back_pages(&self, pages: i64) -> Result<i64>;
    /// Stores a setting (a policy) for every process of the store.
    fn put_setting(&self, key: &str, value: &str) -> Result<()>;

    // ---- copying a whole store ----
    /// Inserts rows of `table` as a copy read them, keeping every value (row numbers too).
    fn insert_rows(&self, table: &super::copy::Table, rows: &[Vec<Cell>]) -> Result<()>;
    /// After a copy: row numbers handed out from now on follow the copied ones.
    fn follow_copied_rows(&self) -> Result<()>;
}

/// The figures of one workflow's stages, from the counter rows and the stage rows.
#[derive(Debug, Default)]
pub(crate) struct WorkflowCounts {
    /// When the workflow was last applied, ms since the epoch.
    pub updated_at: i64,
    /// `(stage, item state, n)`, non-zero rows only.
    pub items: Vec<(String, String, i64)>,
    /// `(stage, delivery state, n)`, non-zero rows only.
    pub deliveries: Vec<(String, String, i64)>,
    /// `(stage, reason)` of each live paused stage.
    pub paused: Vec<(String, Option<String>)>,
    /// `(stage, flow row)` of each live stage with a hold or a concurrency limit set.
    pub flows: Vec<(String, StageFlow)>,
}

/// A delivery as its detail reads it: the listed row, what only the detail shows, and the
/// frozen body's bytes.
#[derive(Debug)]
pub(crate) struct StoredDelivery {
    pub summary: super::DeliverySummary,
    pub item_version: Option<i64>,
    pub cancelled_by: Option<String>,
    pub body: Vec<u8>,
}

/// One row of the prune scan: a finished delivery older than the cutoff.
#[derive(Debug)]
pub(crate) struct ScanRow {
    /// Its place in the scan, passed back as `after`.
    pub position: i64,
    pub id: String,
    /// The latest delivery of its item in its stage (kept).
    pub latest: bool,
    pub attempts: i64,
}

/// How the store's storage is used, for what prune frees: pages of `page_size` bytes, of
/// which `free` are unused; `reclaimable` when free pages can go back to the file system
/// while others use the store.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Storage {
    pub page_size: i64,
    pub pages: i64,
    pub free: i64,
    pub reclaimable: bool,
}

/// A count and a few ids of what a health check found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub n: i64,
    pub sample: Vec<String>,
}

/// What the health checks read from the rows (design §6): the backend-neutral part of
/// `check`, judged in `maintenance`.
#[derive(Debug, Default)]
pub(crate) struct HealthFacts {
    /// `(pid, host, process start, last beat)` of each dispatcher, newest beat first.
    pub beats: Vec<(u32, String, String, i64)>,
    /// In-flight deliveries whose lease ran out before `now`.
    pub expired_leases: i64,
    /// Items in delivery without an open delivery.
    pub stuck_items: Found,
    /// Open stage deliveries whose item has left their stage.
    pub orphans: Found,
    /// `(workflow, stage, reason)` of each live paused stage, in stage order.
    pub paused: Vec<(String, String, Option<String>)>,
    /// `(id, created, due)` of the pending delivery due first in a stage that is not
    /// paused, not held past `now` and did not take a rate-limit token in the minute before
    /// `now` (a rate-limited stage draining a backlog is sending, however old its queue).
    pub oldest_pending: Option<(String, i64, Option<i64>)>,
    /// Counter rows that differ from the rows they count.
    pub counter_mismatches: i64,
}

/// The kind of a column, as a copy between backends carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    Real,
    Text,
    Bytes,
}

/// One value of a row a copy carries between backends.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// The reads of the store: one method per listing or figure, each in one read snapshot of
/// its own, never blocking writers. Like [`Rows`], they only fetch rows: what the rows mean
/// (routes, limits, what a check concludes) is decided above, once for every backend.
pub(crate) trait Reads {
    // ---- workflows ----
    /// A workflow's current spec (as stored, JSON) and revision.
    fn current_spec(&self, id: &WorkflowId) -> Result<Option<(String, i64)>>;
    fn workflow_ids(&self) -> Result<Vec<WorkflowId>>;
    fn workflow_counts(&self, id: &WorkflowId) -> Result<WorkflowCounts>;
    /// Workflows with a live stage of this id.
    fn workflows_with_stage(&self, stage: &StageId) -> Result<Vec<WorkflowId>>;
    /// `(workflow, stage, reason)` of each live paused stage.
    fn paused_stages(&self) -> Result<Vec<(WorkflowId, StageId, Option<String>)>>;
    fn delivery_counts(&self) -> Result<Vec<super::DeliveryCount>>;
    /// Deliveries per state across the store (from the counter rows).
    fn delivery_totals(&self) -> Result<Vec<(DeliveryState, i64)>>;

    // ---- items ----
    /// The workflow of each id (`None`: no such item), in the order given, in one snapshot.
    fn owners(&self, ids: &[&str]) -> Result<Vec<Option<String>>>;
    /// A page of items after `after` in the filter's order; `backward`: the page before it,
    /// nearest first (the list's last rows when `after` is `None`).
    fn list_items(
        &self,
        filter: &super::ItemFilter,
        after: Option<&super::ItemCursor>,
        limit: usize,
        backward: bool,
    ) -> Result<Vec<super::ItemRow>>;
    fn count_items(&self, filter: &super::ItemFilter) -> Result<i64>;
    fn item(&self, id: &ItemId) -> Result<Option<Item>>;
    /// An item's history, oldest first.
    fn history(&self, id: &ItemId) -> Result<Vec<super::HistoryEntry>>;

    // ---- deliveries and attempts ----
    /// An item's deliveries, newest first.
    fn deliveries_of_item(&self, id: &ItemId) -> Result<Vec<super::DeliverySummary>>;
    /// A page of deliveries after `after`, newest first; `backward`: the page before it,
    /// nearest first (the list's oldest rows when `after` is `None`).
    fn list_deliveries(
        &self,
        filter: &super::DeliveryFilter,
        after: Option<super::DeliveryCursor>,
        limit: usize,
        backward: bool,
    ) -> Result<Vec<(super::DeliverySummary, super::DeliveryCursor)>>;
    fn count_deliveries(&self, filter: &super::DeliveryFilter) -> Result<i64>;
    /// The deliveries `filter` selects grouped by (workflow, stage, last error kind, last
    /// status), biggest group first; `message` is the group's greatest last message.
    fn failure_groups(&self, filter: &super::DeliveryFilter) -> Result<Vec<super::FailureGroup>>;
    fn delivery(&self, id: &DeliveryId) -> Result<Option<StoredDelivery>>;
    /// A delivery's attempts by number.
    fn attempts_of(&self, id: &DeliveryId) -> Result<Vec<super::AttemptRecord>>;
    /// The newest `stage.webhook` delivery of an item.
    fn newest_webhook_delivery(&self, item: &ItemId) -> Result<Option<super::DeliveryCursor>>;
    /// Attempts after `after` in log order, with their cursors; `max_attempts` is left 0
    /// for the caller, which knows the specs.
    fn attempts_after(
        &self,
        after: super::AttemptCursor,
        limit: usize,
    ) -> Result<Vec<(super::AttemptCursor, crate::model::AttemptEvent)>>;
    /// The cursor after the newest attempt a reader may take now.
    fn attempts_end(&self) -> Result<super::AttemptCursor>;
    /// The cursor just before the first attempt (in the log's order) that started at or
    /// after `since_ms`, or `None` when no attempt a reader may take now did.
    fn attempts_from(&self, since_ms: i64) -> Result<Option<super::AttemptCursor>>;
    /// How many attempts were ever recorded (the largest row number).
    fn attempts_recorded(&self) -> Result<i64>;

    // ---- dispatchers ----
    /// As of `now`: the earliest due time of an open delivery of a stage that is not paused,
    /// held or waiting for a token; the earliest lease expiry; and the earliest end after
    /// `now` of a stage's hold or wait for a token.
    fn next_due(&self, now: i64) -> Result<(Option<i64>, Option<i64>, Option<i64>)>;
    /// `(workflow, stage, flow row)` of each live stage held past `now` or with a
    /// concurrency limit set.
    fn stage_flows(&self, now: i64) -> Result<Vec<(WorkflowId, StageId, StageFlow)>>;
    fn dispatchers(&self) -> Result<Vec<super::DispatcherInfo>>;

    // ---- audit, settings, upkeep ----
    /// The newest audit rows matching `q`, newest first.
    fn audit_log(&self, q: &super::AuditQuery, limit: usize) -> Result<Vec<super::AuditEntry>>;
    /// One audit row with the ids it names.
    fn audit_entry(&self, seq: i64) -> Result<Option<super::AuditEntry>>;
    /// Settings whose key starts with `prefix`.
    fn settings(&self, prefix: &str) -> Result<Vec<(String, String)>>;
    /// Open deliveries in all (from the counter rows).
    fn open_deliveries(&self) -> Result<i64>;
    /// The position past every delivery (prune's progress goes up to it).
    fn deliveries_end(&self) -> Result<i64>;
    /// Finished deliveries after `after` whose last activity is before `cutoff`.
    fn prune_scan(&self, after: i64, cutoff: i64, limit: usize) -> Result<Vec<ScanRow>>;
    fn audit_rows_before(&self, before: i64) -> Result<i64>;
    fn storage(&self) -> Result<Storage>;
    fn health_facts(&self, now: i64) -> Result<HealthFacts>;
    /// Ids of open stage deliveries whose item has left their stage, at most `limit`.
    fn orphans(&self, limit: usize) -> Result<Vec<String>>;
    fn schema_version(&self) -> Result<i64>;

    // ---- copying a whole store ----
    /// Rows of `table` in its columns' order: a page after `after` (by its first column, `seq`)
    /// when the table is paged, every row otherwise.
    fn table_rows(
        &self,
        table: &super::copy::Table,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Vec<Cell>>>;
    /// How many rows `table` holds.
    fn row_count(&self, table: &str) -> Result<i64>;
}

/// A write job as a backend runs it: the store's typed job, its result kept aside until the
/// commit (see `Store::write`).
pub(crate) type WriteJob = Box<dyn FnOnce(&super::Tx<'_>) -> Result<()> + Send>;

/// Figures of a backend's writes in this process: (longest transaction in µs, transactions,
/// jobs, µs spent in transactions in all).
pub(crate) type WriteFigures = (u64, u64, u64, u64);

/// A change feed: says whether anything was committed, by any process, since the last call.
pub(crate) trait ChangeFeed: Send {
    fn changed(&mut self) -> Result<bool>;
}

/// One store backend: where it lives, its reads, its writer, its change feed, and what only
/// it can do with its storage (backup, the checks of the storage itself, giving space back).
/// [`super::Store`] holds one as `Arc<dyn Backend>` and writes every rule once above it.
pub(crate) trait Backend: Send + Sync {
    /// Where the store lives, for the console header, `check` and `backup`.
    fn location(&self) -> &super::Location;
    /// Runs `f` on the reads of one snapshot.
    fn read(&self, f: &mut dyn FnMut(&dyn Reads) -> Result<()>) -> Result<()>;
    /// Queues a write job; the receiver hears after its transaction committed or failed.
    /// `None` when the store is open read-only.
    fn submit(&self, job: WriteJob) -> Option<Result<tokio::sync::oneshot::Receiver<Result<()>>>>;
    /// A receiver that changes after every commit of this process's writes.
    fn commits(&self) -> Option<tokio::sync::watch::Receiver<u64>>;
    /// A change feed of its own, which notices every commit.
    fn change_feed(&self) -> Result<Box<dyn ChangeFeed>>;
    /// This process's write figures; `reset` zeroes the longest transaction.
    fn write_figures(&self, reset: bool) -> WriteFigures;
    /// A consistent copy of the store in the file `dest`.
    fn backup(&self, dest: &std::path::Path, force: bool) -> Result<super::BackupReport>;
    /// The health report as of `now`: the checks of the storage, then of the rows.
    fn check(&self, now: i64) -> Result<super::HealthReport>;
    /// Lets the storage shrink after a prune freed space.
    fn give_back_space(&self);
}
