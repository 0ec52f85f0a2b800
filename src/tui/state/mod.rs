//! The console's state, the messages that change it and the effects it asks for.
//!
//! [`update`] is pure: it reads a message, changes the state, and returns effects for the
//! executor to perform (loads, actions, copies). It never touches the store, the clock or the
//! terminal, so every key and every action is tested without either.
//!
//! This file holds the types (views, overlays, messages, effects, the app) and `update` with
//! the message handling around keys (waiting for a list, replaying keys); `actions.rs` what the
//! view keys, the log pane keys and the mouse do; `overlays.rs` prompts, pickers, dialogs and
//! paste; `commands.rs` the `:` line.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::keymap::{self, Action, Scope};
use crate::actions::BulkAction;
use crate::model::AttemptEvent;
use crate::model::{DeliveryId, DeliveryState, ItemId, StageId, StageKind, WorkflowId};
use crate::store::{
    AuditEntry, DeliveryDetail, DeliveryFilter, DeliverySummary, ItemCursor, ItemDetail, ItemOrder,
    ItemRow, WorkflowDetail, WorkflowSummary,
};

mod actions;
mod commands;
mod overlays;

use actions::*;
use commands::*;
use overlays::*;

/// Rows fetched per page in list views.
pub const PAGE: usize = 200;
/// Attempts kept in the log pane.
pub const LOG_CAPACITY: usize = 2000;
/// Seconds of history in the throughput sparkline.
pub const RATE_SECONDS: usize = 120;
/// Seconds over which the stages view gives each stage's failure rate.
pub const STAGE_RATE_SECONDS: usize = 300;

/// What a view shows.
#[derive(Clone, Debug, PartialEq)]
pub enum ViewKind {
    Workflows,
    Stages(WorkflowId),
    Items {
        workflow: Option<WorkflowId>,
        stage: Option<StageId>,
    },
    Item(ItemId),
    Deliveries(DeliveryFilter),
    Delivery(DeliveryId),
    Audit,
    /// Failed deliveries grouped by cause (issue 18), within this filter.
    Failures(DeliveryFilter),
    /// The health report (`:health`), the same as `hookops check`.
    Health,
}

impl ViewKind {
    pub fn scope(&self) -> Scope {
        match self {
            ViewKind::Workflows => Scope::Workflows,
            ViewKind::Stages(_) => Scope::Stages,
            ViewKind::Items { .. } => Scope::Items,
            ViewKind::Item(_) => Scope::Item,
            ViewKind::Deliveries(_) => Scope::Deliveries,
            ViewKind::Delivery(_) => Scope::Delivery,
            ViewKind::Audit | ViewKind::Health => Scope::Report,
            ViewKind::Failures(_) => Scope::Failures,
        }
    }

    pub fn title(&self) -> String {
        match self {
            ViewKind::Workflows => "workflows".into(),
            ViewKind::Stages(w) => format!("stages · {w}"),
            ViewKind::Items { workflow, stage } => match (workflow, stage) {
                (Some(w), Some(s)) => format!("items · {w}/{s}"),
                (Some(w), None) => format!("items · {w}"),
                _ => "items".into(),
            },
            ViewKind::Item(id) => format!("item · {id}"),
            ViewKind::Deliveries(f) => {
                let mut parts = vec!["deliveries".to_string()];
                if let Some(s) = f.state {
                    parts.push(s.to_string());
                }
                if let Some(w) = &f.workflow {
                    parts.push(w.to_string());
                }
                if let Some(s) = &f.stage {
                    parts.push(s.to_string());
                }
                if let Some(i) = &f.item {
                    parts.push(format!("item {i}"));
                }
                for k in &f.error_kinds {
                    parts.push(k.to_string());
                }
                for s in &f.statuses {
                    parts.push(s.to_string());
                }
                if let Some(t) = f.trigger {
                    parts.push(format!("trigger {t}"));
                }
                if let Some(t) = f.since {
                    parts.push(format!("since {}", t.format("%m-%d %H:%M")));
                }
                if let Some(t) = f.until {
                    parts.push(format!("until {}", t.format("%m-%d %H:%M")));
                }
                parts.join(" · ")
            }
            ViewKind::Delivery(id) => format!("delivery · {id}"),
            ViewKind::Audit => "audit".into(),
            ViewKind::Failures(f) => format!("failures by cause · {}", filter_words(f)),
            ViewKind::Health => "health".into(),
        }
    }
}

/// What a view has loaded.
#[derive(Clone, Debug, Default)]
pub enum ViewData {
    #[default]
    Loading,
    Workflows(Vec<WorkflowSummary>),
    Stages(Box<WorkflowDetail>),
    Items {
        rows: Vec<ItemRow>,
        more: bool,
    },
    Item(Box<ItemDetail>),
    Deliveries {
        rows: Vec<DeliverySummary>,
        cursors: Vec<crate::store::DeliveryCursor>,
        more: bool,
    },
    Delivery(Box<DeliveryDetail>),
    Audit(Vec<AuditEntry>),
    Failures(Vec<crate::store::FailureGroup>),
    Health(Box<crate::store::HealthReport>),
    Failed(String),
}

/// A selected row as the operator saw it: what the confirmation calls it, and (for items)
/// the version to compare-and-set against when the row is no longer loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Picked {
    pub label: String,
    pub version: Option<i64>,
}

/// One entry of the view stack.
#[derive(Clone, Debug)]
pub struct View {
    /// Unique per view and per list the view asks for (a new filter or order takes a new id),
    /// so a late load for a view that is gone, or for a filter typed over, is ignored.
    pub id: u64,
    pub kind: ViewKind,
    pub data: ViewData,
    pub cursor: usize,
    /// Scroll offset of text views (delivery detail).
    pub scroll: usize,
    /// Selected rows by id: a reload can neither drop nor duplicate one.
    pub selected: BTreeMap<String, Picked>,
    /// The kept filter text (`/`).
    pub filter: String,
    pub order: ItemOrder,
    /// The rows on screen are about to be replaced by a list the view asked for (first page,
    /// new filter, new order): keys wait for it (see [`App::deferred`]).
    pub awaiting: bool,
    /// The filter changed: when its page arrives, selected rows it hides are unselected.
    pub refilter: bool,
    /// The delivery detail as the payload viewer draws it (built once per load, not per
    /// frame: a 64 KiB body is thousands of lines).
    pub doc: std::sync::Arc<Vec<super::payload::DocLine>>,
    /// Where the first loaded row is in the whole list (0 unless the view went to the end
    /// with `G` and pages back up from there).
    pub base: usize,
    /// How many rows the whole list has, when the counters (or a count `G` made) tell.
    pub total: Option<i64>,
    /// A page before or after the loaded rows was asked for and has not come yet.
    pub paging: bool,
}

impl View {
    fn new(id: u64, kind: ViewKind) -> View {
        View {
            id,
            kind,
            data: ViewData::Loading,
            cursor: 0,
            scroll: 0,
            selected: BTreeMap::new(),
            filter: String::new(),
            order: ItemOrder::Waiting,
            awaiting: true,
            refilter: false,
            doc: Default::default(),
            base: 0,
            total: None,
            paging: false,
        }
    }

    /// Ids of the rows the view shows (after its filter), for list views.
    pub fn visible_ids(&self) -> HashSet<&str> {
        let vis = self.visible_indices();
        match &self.data {
            ViewData::Items { rows, .. } => vis.iter().map(|i| rows[*i].id.as_str()).collect(),
            ViewData::Deliveries { rows, .. } => vis.iter().map(|i| rows[*i].id.as_str()).collect(),
            _ => HashSet::new(),
        }
    }

    /// Unselects the rows the filter hides; says how many, if any (`None` when none was).
    fn keep_visible_selection(&mut self) -> Option<String> {
        if self.selected.is_empty() {
            return None;
        }
        let visible: HashSet<String> = self.visible_ids().into_iter().map(String::from).collect();
        let before = self.selected.len();
        self.selected.retain(|id, _| visible.contains(id));
        let dropped = before - self.selected.len();
        (dropped > 0).then(|| {
            format!(
                "the filter hides {dropped} selected row(s): unselected; {} still selected",
                self.selected.len()
            )
        })
    }

    /// The row under the cursor as a selection entry.
    fn row_under_cursor(&self) -> Option<(String, Picked)> {
        self.picked_at(*self.visible_indices().get(self.cursor)?)
    }

    /// Loaded row `i` as a selection entry: (id, what it is called, item version).
    fn picked_at(&self, i: usize) -> Option<(String, Picked)> {
        match &self.data {
            ViewData::Items { rows, .. } => rows.get(i).map(|r| {
                (
                    r.id.to_string(),
                    Picked {
                        label: r.name.clone(),
                        version: Some(r.version),
                    },
                )
            }),
            ViewData::Deliveries { rows, .. } => rows.get(i).map(|r| {
                (
                    r.id.to_string(),
                    Picked {
                        label: r
                            .item_name
                            .clone()
                            .or_else(|| r.item_id.as_ref().map(|i| i.to_string()))
                            .unwrap_or_default(),
                        version: None,
                    },
                )
            }),
            _ => None,
        }
    }

    /// Whether the view shows no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows a list view shows, after the local filter (items filter in SQL instead).
    pub fn len(&self) -> usize {
        self.visible_indices().len()
    }

    /// Indices into the loaded rows that pass the filter.
    pub fn visible_indices(&self) -> Vec<usize> {
        let f = self.filter.to_lowercase();
        let keep = |text: &str| f.is_empty() || text.to_lowercase().contains(&f);
        match &self.data {
            ViewData::Workflows(rows) => (0..rows.len())
                .filter(|i| keep(&format!("{} {}", rows[*i].id, rows[*i].name)))
                .collect(),
            ViewData::Stages(d) => (0..d.stage_list.len())
                .filter(|i| {
                    keep(&format!(
                        "{} {} {}",
                        d.stage_list[*i].id, d.stage_list[*i].name, d.stage_list[*i].kind
                    ))
                })
                .collect(),
            ViewData::Items { rows, .. } => (0..rows.len()).collect(),
            ViewData::Item(d) => (0..d.deliveries.len()).collect(),
            // Matched in SQL (`with_search`): every loaded row is one the filter kept.
            ViewData::Deliveries { rows, .. } => (0..rows.len()).collect(),
            ViewData::Delivery(d) => (0..d.attempt_log.len()).collect(),
            ViewData::Audit(rows) => (0..rows.len())
                .filter(|i| {
                    keep(&format!(
                        "{} {} {}",
                        rows[*i].operator, rows[*i].action, rows[*i].target
                    ))
                })
                .collect(),
            ViewData::Health(r) => (0..r.checks.len()).collect(),
            ViewData::Failures(groups) => (0..groups.len())
                .filter(|i| {
                    let g = &groups[*i];
                    keep(&format!(
                        "{} {} {} {}",
                        g.stage,
                        g.status.map(|s| s.to_string()).unwrap_or_default(),
                        g.error_kind.map(|k| k.as_str()).unwrap_or(""),
                        g.message.as_deref().unwrap_or("")
                    ))
                })
                .collect(),
            ViewData::Loading | ViewData::Failed(_) => vec![],
        }
    }

    fn clamp(&mut self) {
        let n = self.len();
        if n == 0 {
            self.cursor = 0;
        } else if self.cursor >= n {
            self.cursor = n - 1;
        }
    }
}

/// How bad a flash message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

#[derive(Clone, Debug)]
pub struct Flash {
    pub text: String,
    pub level: Level,
    /// Ticks (seconds) left before it fades.
    pub ttl: u8,
}

/// What a confirmed dialog does.
#[derive(Clone, Debug, PartialEq)]
pub enum Pending {
    Assign {
        workflow: WorkflowId,
        to: StageId,
        target: AssignWhat,
    },
    Advance {
        ids: Vec<(ItemId, i64)>,
        outcome: Option<crate::engine::Outcome>,
    },
    Refire(Vec<DeliveryId>),
    Replay(Vec<DeliveryId>),
    /// Operator cancel (design §6): items route along `on_failure`.
    Cancel(Vec<DeliveryId>),
    /// Re-fire, replay or cancel everything a filter selects, after the typed count.
    Filtered {
        action: BulkAction,
        filter: DeliveryFilter,
        count: i64,
    },
    Pause {
        workflow: WorkflowId,
        stage: StageId,
        pause: bool,
    },
}

/// Which items an assignment takes.
#[derive(Clone, Debug, PartialEq)]
pub enum AssignWhat {
    /// Named items, each with the version the operator saw (compare-and-set).
    Items(Vec<(ItemId, i64)>),
    /// Every item of a stage.
    Stage { from: StageId, count: i64 },
}

/// Modal overlays; at most one at a time.
#[derive(Clone, Debug)]
pub enum Overlay {
    /// The key help; `scroll` as a popup's, when it is taller than the terminal.
    Help {
        scroll: usize,
    },
    Command(String),
    Filter(String),
    Picker {
        title: String,
        workflow: WorkflowId,
        choices: Vec<(StageId, StageKind)>,
        query: String,
        cursor: usize,
        target: AssignWhat,
        /// How the confirmation will name the items.
        naming: Naming,
    },
    Confirm {
        text: String,
        /// 0 = Cancel (the default), 1 = OK.
        focus: u8,
        action: Pending,
    },
    Typed {
        text: String,
        expected: String,
        typed: String,
        action: Pending,
    },
    Popup {
        title: String,
        text: String,
        /// Lines scrolled off the top (j/k, arrows, page keys; the view clamps it).
        scroll: usize,
    },
}

/// Header figures, refreshed by the executor.
#[derive(Clone, Debug, Default)]
pub struct Header {
    pub db: String,
    pub dispatcher: String,
    pub dispatcher_warning: bool,
    pub counts: Vec<(DeliveryState, i64)>,
    pub db_bytes: u64,
    /// The database file was deleted or replaced since the console opened it.
    pub file_problem: Option<String>,
    /// Stages held now (issue 21): `(workflow, stage, until, reason)`, for the log pane's
    /// lines when a hold starts and ends.
    pub holds: Vec<(WorkflowId, StageId, chrono::DateTime<chrono::Utc>, String)>,
}

/// One line of the log pane: an attempt, or what happened to a stage (a hold that started
/// or ended: issue 21). Nearly every entry is an attempt: boxing them to shrink the rare stage
/// line would cost an allocation per attempt.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum LogEntry {
    Attempt(AttemptEvent),
    Stage {
        at: chrono::DateTime<chrono::Utc>,
        stage: StageId,
        text: String,
    },
}

impl LogEntry {
    /// The attempt, when the line is one.
    pub fn attempt(&self) -> Option<&AttemptEvent> {
        match self {
            LogEntry::Attempt(e) => Some(e),
            LogEntry::Stage { .. } => None,
        }
    }
}

/// The log pane.
#[derive(Clone, Debug)]
pub struct LogPane {
    pub visible: bool,
    pub entries: VecDeque<LogEntry>,
    /// Follow mode: the cursor sticks to the newest entry.
    pub follow: bool,
    /// Stream paused: new attempts are counted but not shown until resumed.
    pub paused: bool,
    pub held: Vec<LogEntry>,
    pub cursor: usize,
    pub filter: String,
    /// Recently seen (delivery, attempt number), to drop duplicates from the table poll.
    pub seen: HashMap<(DeliveryId, i64), ()>,
    pub seen_order: VecDeque<(DeliveryId, i64)>,
}

impl Default for LogPane {
    fn default() -> Self {
        LogPane {
            visible: true,
            entries: VecDeque::new(),
            follow: true,
            paused: false,
            held: Vec::new(),
            cursor: 0,
            filter: String::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
        }
    }
}

impl LogPane {
    /// Entries passing the filter, oldest first, as indices into `entries`.
    pub fn visible_indices(&self) -> Vec<usize> {
        let f = self.filter.to_lowercase();
        (0..self.entries.len())
            .filter(|i| {
                if f.is_empty() {
                    return true;
                }
                let e = match &self.entries[*i] {
                    LogEntry::Attempt(e) => e,
                    LogEntry::Stage { stage, text, .. } => {
                        return format!("{stage} {text}").to_lowercase().contains(&f);
                    }
                };
                format!(
                    "{} {} {} {} {} {}",
                    e.stage,
                    e.item_id.as_ref().map(|i| i.as_str()).unwrap_or(""),
                    e.item_name.as_deref().unwrap_or(""),
                    e.status.map(|s| s.to_string()).unwrap_or_default(),
                    e.error_kind.map(|k| k.as_str()).unwrap_or(""),
                    e.state
                )
                .to_lowercase()
                .contains(&f)
            })
            .collect()
    }

    fn push(&mut self, e: AttemptEvent) -> bool {
        let key = (e.delivery_id.clone(), e.number);
        if self.seen.insert(key.clone(), ()).is_some() {
            return false;
        }
        self.seen_order.push_back(key);
        while self.seen_order.len() > LOG_CAPACITY * 2 {
            if let Some(k) = self.seen_order.pop_front() {
                self.seen.remove(&k);
            }
        }
        self.push_entry(LogEntry::Attempt(e));
        true
    }

    /// A line about a stage (a hold that started or ended).
    pub(crate) fn push_stage(
        &mut self,
        at: chrono::DateTime<chrono::Utc>,
        stage: &StageId,
        text: String,
    ) {
        self.push_entry(LogEntry::Stage {
            at,
            stage: stage.clone(),
            text,
        });
        if self.follow {
            self.cursor = self.entries.len().saturating_sub(1);
        }
    }

    fn push_entry(&mut self, e: LogEntry) {
        if self.paused {
            // Only the newest LOG_CAPACITY could ever be shown after resuming.
            self.held.push(e);
            if self.held.len() > LOG_CAPACITY * 2 {
                self.held.drain(..self.held.len() - LOG_CAPACITY);
            }
            return;
        }
        self.entries.push_back(e);
        if self.entries.len() > LOG_CAPACITY {
            self.entries.pop_front();
            self.cursor = self.cursor.saturating_sub(1);
        }
    }
}

/// The whole console state.
pub struct App {
    pub stack: Vec<View>,
    pub next_view_id: u64,
    pub overlay: Option<Overlay>,
    pub flash: Option<Flash>,
    pub log: LogPane,
    pub focus_log: bool,
    pub header: Header,
    pub read_only: bool,
    pub quit: bool,
    /// Attempts per second, oldest first; the last bucket is the current second.
    pub rate: VecDeque<u64>,
    /// Of those, the failed ones (no 2xx answer), second by second beside `rate`.
    pub fail_rate: VecDeque<u64>,
    /// Stages per workflow, for the assign picker.
    pub stages: HashMap<WorkflowId, Vec<(StageId, StageKind)>>,
    /// Attempts and failed ones per stage, second by second over the last
    /// [`STAGE_RATE_SECONDS`] (the stages view's failure rate); the last bucket is this second.
    pub stage_rates: HashMap<(WorkflowId, StageId), VecDeque<(u32, u32)>>,
    /// Something changed since the last frame.
    pub dirty: bool,
    /// The main list's visible height, set by the view (for paging).
    pub page_rows: usize,
    /// An assignment waiting for its workflow's stage list before the picker can open, and
    /// how the confirmation names its items.
    pub pending_picker: Option<(WorkflowId, AssignWhat, Naming)>,
    /// A bulk assign from the stages view waiting for the stage's count, which opens its
    /// picker: keys typed meanwhile (the target stage's name) wait for it too.
    pub counting_stage: bool,
    /// Keys that arrived while the view waited for the list it asked for ([`View::awaiting`]),
    /// in order; they run when it arrives, so a key acts on the rows the screen then shows,
    /// never on the rows of the list being replaced.
    pub deferred: VecDeque<Input>,
    /// Ticks the oldest deferred key has waited.
    pub deferred_ticks: u32,
    /// Where the last frame drew the lists (set by the view).
    pub hit: HitMap,
    /// The last click: (list row, when), to tell a double-click.
    pub last_click: Option<(usize, u64)>,
    /// Actions sent to the executor whose answer ([`Msg::ActionDone`]) has not come, and for
    /// how many seconds the oldest has been waiting.
    pub running: (u32, u32),
}

/// A key or a paste, in the order they arrived (see [`App::deferred`]).
#[derive(Clone, Debug)]
pub enum Input {
    Key(KeyEvent),
    Paste(String),
}

/// A screen rectangle (the view records where it drew, for the mouse).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Area {
    pub x: u16,
    pub y: u16,
    pub width: u16,
    pub height: u16,
}

impl Area {
    fn contains(&self, col: u16, row: u16) -> bool {
        col >= self.x
            && row >= self.y
            && col < self.x.saturating_add(self.width)
            && row < self.y.saturating_add(self.height)
    }
}

/// Where the last frame drew the lists, so a click or the wheel finds its row.
#[derive(Clone, Debug, Default)]
pub struct HitMap {
    /// Inside the main view's border; its first line is the table header.
    pub main: Option<Area>,
    /// The list row drawn on the first line below the header.
    pub main_first: usize,
    pub log: Option<Area>,
    /// The visible log entry drawn on the log pane's first line.
    pub log_first: usize,
}

/// A mouse event (with `--mouse`): where, what, and when (milliseconds on the executor's clock,
/// so telling a double-click needs no clock here).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pointer {
    pub what: PointerKind,
    pub col: u16,
    pub row: u16,
    pub at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PointerKind {
    Click,
    WheelUp,
    WheelDown,
}

/// Two clicks on one row within this many milliseconds open it.
const DOUBLE_CLICK_MS: u64 = 400;
/// Rows the wheel moves per notch.
const WHEEL_ROWS: usize = 3;

/// Inputs of [`update`].
#[derive(Debug)]
pub enum Msg {
    Key(KeyEvent),
    /// Text pasted into the terminal (bracketed paste).
    Paste(String),
    Mouse(Pointer),
    Resize,
    /// One second passed.
    Tick,
    /// The database changed: reload what is on screen.
    Changed,
    Loaded {
        view: u64,
        data: ViewData,
        append: bool,
    },
    /// A page read backward: the list's end, or the rows before the loaded ones; `total`
    /// numbers the rows when the list's end came.
    Window {
        view: u64,
        data: ViewData,
        at: At,
        total: Option<i64>,
    },
    /// How many rows the view's whole list has (`None`: the counters cannot tell).
    Total {
        view: u64,
        total: Option<i64>,
    },
    Header(Header),
    Attempt(Box<AttemptEvent>),
    /// A result for the flash line.
    Done {
        text: String,
        level: Level,
    },
    /// The answer to an action ([`Effect::Run`]): a result for the flash line, and one action
    /// fewer waiting (see [`App::running`]). `refused` lists, per id, what the action could
    /// not do and why; when it is not empty a popup shows every line.
    ActionDone {
        text: String,
        level: Level,
        refused: Vec<String>,
    },
    /// A test webhook's result, for a popup.
    TestResult {
        title: String,
        text: String,
    },
    /// The number of deliveries a bulk action on a filter would take (failed ones for
    /// re-fire and replay, open ones for cancel).
    Counted {
        action: BulkAction,
        filter: DeliveryFilter,
        count: i64,
    },
    /// A text to put on the clipboard (a `curl` command the executor built).
    Copy {
        what: String,
        text: String,
    },
    /// The number of items in a stage, for a bulk assign.
    StageCount {
        workflow: WorkflowId,
        from: StageId,
        count: i64,
    },
}

/// What the executor does for [`update`].
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Load {
        view: u64,
        kind: ViewKind,
        search: String,
        order: ItemOrder,
        after: Option<LoadAfter>,
    },
    Run(Pending),
    /// Count what a bulk action would take (answered by `Msg::Counted`).
    Count {
        action: BulkAction,
        filter: DeliveryFilter,
    },
    /// Write the deliveries matching the filter as JSON Lines to a new file.
    Export(DeliveryFilter),
    CountStage {
        workflow: WorkflowId,
        from: StageId,
    },
    Test {
        workflow: WorkflowId,
        stage: StageId,
    },
    /// Put an id on the clipboard (OSC 52); the flash names it.
    Copy(String),
    /// Put a longer text on the clipboard (OSC 52); the flash says `what` and its size.
    CopyText {
        what: String,
        text: String,
    },
    /// A `curl` command repeating the delivery's request, from the stage's current settings
    /// (read by the executor); `reveal` puts the real secrets in it.
    CopyCurl {
        delivery: DeliveryId,
        reveal: bool,
    },
    /// Leave the screen, show `text` in `$PAGER`, come back.
    Pager(String),
}

/// Where the next page starts.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadAfter {
    Item(ItemCursor),
    Delivery(crate::store::DeliveryCursor),
    /// The page before the first loaded row (reading back up from the end).
    ItemBefore(ItemCursor),
    DeliveryBefore(crate::store::DeliveryCursor),
    /// The list's last page (`G`), read backward from its end.
    End,
}

/// Where a page read backward goes ([`Msg::Window`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// It is the list's last page: it replaces the loaded rows, the cursor on its last row.
    End,
    /// It comes before the first loaded row.
    Before,
}

impl App {
    /// A stage's attempts and failed attempts over the last [`STAGE_RATE_SECONDS`].
    pub fn stage_failures(&self, workflow: &WorkflowId, stage: &StageId) -> (u32, u32) {
        self.stage_rates
            .get(&(workflow.clone(), stage.clone()))
            .map(|r| r.iter().fold((0, 0), |(n, f), (a, b)| (n + a, f + b)))
            .unwrap_or((0, 0))
    }

    pub fn new(read_only: bool) -> (App, Vec<Effect>) {
        let mut app = App {
            stack: Vec::new(),
            next_view_id: 1,
            overlay: None,
            flash: None,
            log: LogPane::default(),
            focus_log: false,
            header: Header::default(),
            read_only,
            quit: false,
            rate: VecDeque::from(vec![0; RATE_SECONDS]),
            fail_rate: VecDeque::from(vec![0; RATE_SECONDS]),
            stages: HashMap::new(),
            stage_rates: HashMap::new(),
            dirty: true,
            page_rows: 10,
            pending_picker: None,
            counting_stage: false,
            deferred: VecDeque::new(),
            deferred_ticks: 0,
            hit: HitMap::default(),
            last_click: None,
            running: (0, 0),
        };
        let fx = app.push(ViewKind::Workflows);
        (app, fx)
    }

    pub fn view(&self) -> Option<&View> {
        self.stack.last()
    }

    fn view_mut(&mut self) -> Option<&mut View> {
        self.stack.last_mut()
    }

    pub fn scope(&self) -> Scope {
        self.view()
            .map(|v| v.kind.scope())
            .unwrap_or(Scope::Workflows)
    }

    fn push(&mut self, kind: ViewKind) -> Vec<Effect> {
        let id = self.next_view_id;
        self.next_view_id += 1;
        self.stack.push(View::new(id, kind));
        self.focus_log = false;
        self.load_current(None)
    }

    /// Asks the current view for a different list (new filter or order): it takes a new id,
    /// so the pages of the list it replaces are ignored when they come late, and keys wait
    /// until the new list arrives.
    fn relist(&mut self, refilter: bool) -> Vec<Effect> {
        let id = self.next_view_id;
        let Some(v) = self.stack.last_mut() else {
            return vec![];
        };
        self.next_view_id += 1;
        v.id = id;
        v.cursor = 0;
        v.awaiting = true;
        v.refilter |= refilter;
        self.load_current(None)
    }

    /// Keys wait: some already wait, or the view waits for its list and no prompt or dialog
    /// (which keys go to first) is open.
    fn keys_wait(&self) -> bool {
        !self.deferred.is_empty() || self.list_pending()
    }

    fn list_pending(&self) -> bool {
        self.overlay.is_none()
            && (self.pending_picker.is_some()
                || self.counting_stage
                || self.view().is_some_and(|v| v.awaiting))
    }

    /// Replaces the whole stack by `kind` (from the command line).
    fn jump(&mut self, kind: ViewKind) -> Vec<Effect> {
        self.stack.truncate(1);
        if self.stack.first().is_some_and(|v| v.kind == kind) {
            return self.load_current(None);
        }
        self.push(kind)
    }

    fn load_current(&self, after: Option<LoadAfter>) -> Vec<Effect> {
        match self.view() {
            Some(v) => vec![Effect::Load {
                view: v.id,
                kind: v.kind.clone(),
                search: v.filter.clone(),
                order: v.order,
                after,
            }],
            None => vec![],
        }
    }

    pub fn flash(&mut self, text: impl Into<String>, level: Level) {
        self.flash = Some(Flash {
            text: text.into(),
            level,
            ttl: if level == Level::Info { 5 } else { 10 },
        });
    }

    /// The workflow the current view belongs to, if any.
    pub fn current_workflow(&self) -> Option<WorkflowId> {
        for v in self.stack.iter().rev() {
            match &v.kind {
                ViewKind::Stages(w) => return Some(w.clone()),
                ViewKind::Items {
                    workflow: Some(w), ..
                } => return Some(w.clone()),
                ViewKind::Item(_) => {
                    if let ViewData::Item(d) = &v.data {
                        return Some(d.item.workflow.clone());
                    }
                }
                ViewKind::Deliveries(f) if f.workflow.is_some() => return f.workflow.clone(),
                _ => {}
            }
        }
        None
    }
}

/// Applies one message. Pure: effects are returned, never performed.
pub fn update(app: &mut App, msg: Msg) -> Vec<Effect> {
    app.dirty = true;
    match msg {
        Msg::Key(k) => key(app, k),
        Msg::Paste(text) => {
            if app.keys_wait() {
                app.deferred.push_back(Input::Paste(text));
                return vec![];
            }
            paste_now(app, text)
        }
        Msg::Mouse(p) => {
            // A click aims at what is drawn; while the list is being replaced there is nothing
            // sure under it, so it is dropped rather than kept for rows it was not aimed at.
            if app.keys_wait() {
                return vec![];
            }
            mouse_now(app, p)
        }
        Msg::Resize => vec![],
        Msg::Tick => {
            let mut fx = Vec::new();
            if !app.deferred.is_empty() {
                app.deferred_ticks += 1;
                if app.deferred_ticks >= DEFER_TICKS {
                    fx = give_up_waiting(app);
                }
            }
            for r in [&mut app.rate, &mut app.fail_rate] {
                r.push_back(0);
                while r.len() > RATE_SECONDS {
                    r.pop_front();
                }
            }
            // A stage with no attempt in the window is forgotten (bounded by live stages).
            app.stage_rates.retain(|_, r| {
                r.push_back((0, 0));
                while r.len() > STAGE_RATE_SECONDS {
                    r.pop_front();
                }
                r.iter().any(|(n, _)| *n > 0)
            });
            if let Some(f) = &mut app.flash {
                f.ttl = f.ttl.saturating_sub(1);
                if f.ttl == 0 {
                    app.flash = None;
                }
            }
            // An action that waits (another process holding the write lock) says so, for as
            // long as it waits, instead of a "working…" that fades.
            if app.running.0 > 0 {
                app.running.1 += 1;
                if (STILL_WORKING_AFTER..STILL_WORKING_UNTIL).contains(&app.running.1) {
                    app.flash(
                        format!(
                            "still working after {} s: the database is busy (another process may be writing to it)",
                            app.running.1
                        ),
                        Level::Warn,
                    );
                }
            }
            fx
        }
        Msg::Changed => {
            // Reload what is on screen; pages already appended are reloaded from the top.
            match app.view() {
                Some(v)
                    if !matches!(v.data, ViewData::Items { .. } | ViewData::Deliveries { .. }) =>
                {
                    app.load_current(None)
                }
                // Not a view reading from the end (`G`): a reload from the top would take
                // the operator away from the rows they went to.
                Some(v) if v.cursor < PAGE && v.base == 0 => app.load_current(None),
                _ => vec![],
            }
        }
        Msg::Loaded { view, data, append } => {
            loaded(app, view, data, append);
            replay_deferred(app)
        }
        Msg::Window {
            view,
            data,
            at,
            total,
        } => {
            window_loaded(app, view, data, at, total);
            replay_deferred(app)
        }
        Msg::Total { view, total } => {
            if let Some(v) = app.stack.iter_mut().find(|v| v.id == view) {
                v.total = total;
            }
            vec![]
        }
        Msg::Header(h) => {
            // What an action wrote to a deleted or replaced file would be lost on quit: the
            // console stops offering actions and keeps saying why.
            if let Some(problem) = &h.file_problem {
                app.read_only = true;
                app.flash(
                    format!("{problem}: nothing more is written or sent from here; quit and open it again"),
                    Level::Error,
                );
            }
            log_holds(app, &h);
            app.header = h;
            vec![]
        }
        Msg::Attempt(e) => {
            let failed =
                e.error_kind.is_some() || !e.status.is_some_and(|s| (200..300).contains(&s));
            let r = app
                .stage_rates
                .entry((e.workflow.clone(), e.stage.clone()))
                .or_insert_with(|| VecDeque::from(vec![(0, 0)]));
            if let Some(last) = r.back_mut() {
                last.0 += 1;
                last.1 += u32::from(failed);
            }
            if app.log.push(*e) {
                if let Some(last) = app.rate.back_mut() {
                    *last += 1;
                }
                if failed && let Some(last) = app.fail_rate.back_mut() {
                    *last += 1;
                }
                if app.log.follow {
                    app.log.cursor = app.log.entries.len().saturating_sub(1);
                }
            }
            vec![]
        }
        Msg::Done { text, level } => {
            // A failed count of a stage (the bulk assign's first step) ends the keys' wait
            // for its picker: they run as they are.
            let mut fx = Vec::new();
            if level == Level::Error && app.counting_stage {
                app.counting_stage = false;
                fx = replay_deferred(app);
            }
            app.flash(text, level);
            fx.extend(app.load_current(None));
            fx
        }
        Msg::ActionDone {
            text,
            level,
            refused,
        } => {
            app.running.0 = app.running.0.saturating_sub(1);
            if app.running.0 == 0 {
                app.running.1 = 0;
            }
            // Refusals are what the operator must not miss: every one, per id, in a popup
            // (unless a dialog or prompt is open, which a popup would replace).
            if !refused.is_empty() && app.overlay.is_none() && app.deferred.is_empty() {
                app.overlay = Some(Overlay::Popup {
                    title: format!("{} not done", refused.len()),
                    text: refused.join("\n"),
                    scroll: 0,
                });
            }
            update(app, Msg::Done { text, level })
        }
        Msg::TestResult { title, text } => {
            app.overlay = Some(Overlay::Popup {
                title,
                text,
                scroll: 0,
            });
            vec![]
        }
        Msg::Counted {
            action,
            filter,
            count,
        } => {
            if count == 0 {
                app.flash(
                    format!(
                        "no {} deliveries match: nothing to {}",
                        action.selects(),
                        action.verb()
                    ),
                    Level::Info,
                );
            } else {
                let (verb, then) = match action {
                    BulkAction::Refire => (
                        "Re-fire",
                        "Each item goes back into its webhook stage and is delivered anew.",
                    ),
                    BulkAction::Replay => (
                        "Replay",
                        "Each delivery's stored bytes are sent again now; no item moves.",
                    ),
                    BulkAction::Cancel => {
                        ("Cancel", "Each item routes along its stage's on_failure.")
                    }
                };
                app.overlay = Some(Overlay::Typed {
                    text: format!(
                        "{verb} {count} {} deliveries ({}). {then}",
                        action.selects(),
                        filter_words(&filter)
                    ),
                    expected: count.to_string(),
                    typed: String::new(),
                    action: Pending::Filtered {
                        action,
                        filter,
                        count,
                    },
                });
            }
            vec![]
        }
        Msg::Copy { what, text } => vec![Effect::CopyText { what, text }],
        Msg::StageCount {
            workflow,
            from,
            count,
        } => {
            app.counting_stage = false;
            if count == 0 {
                app.flash(format!("stage {from} holds no items"), Level::Info);
            } else {
                open_picker(
                    app,
                    workflow,
                    AssignWhat::Stage { from, count },
                    Naming::default(),
                );
            }
            replay_deferred(app)
        }
    }
}

/// A deliveries view's filter with what `/` typed: matched in SQL like the rest of it, so
/// the list, its count and `F`/`C`/export all take the same deliveries.
pub fn with_search(f: &DeliveryFilter, search: &str) -> DeliveryFilter {
    let mut f = f.clone();
    f.search = Some(search.trim().to_string()).filter(|s| !s.is_empty());
    f
}

/// The filter of a typed confirmation, in words: the scope first, then whatever else
/// narrows it (the state is said by the question itself).
pub fn filter_words(f: &DeliveryFilter) -> String {
    let mut parts = Vec::new();
    if let Some(w) = &f.workflow {
        parts.push(format!("workflow {w}"));
    }
    if let Some(s) = &f.stage {
        parts.push(format!("stage {s}"));
    }
    if let Some(i) = &f.item {
        parts.push(format!("item {i}"));
    }
    if !f.statuses.is_empty() {
        let s: Vec<String> = f.statuses.iter().map(|s| s.to_string()).collect();
        parts.push(format!("status {}", s.join(",")));
    }
    if !f.error_kinds.is_empty() {
        let k: Vec<&str> = f.error_kinds.iter().map(|k| k.as_str()).collect();
        parts.push(format!("error kind {}", k.join(",")));
    }
    if let Some(t) = f.since {
        parts.push(format!("since {}", t.format("%Y-%m-%d %H:%M:%S")));
    }
    if let Some(t) = f.until {
        parts.push(format!("until {}", t.format("%Y-%m-%d %H:%M:%S")));
    }
    if let Some(c) = &f.message_class {
        parts.push(format!("cause \"{c}\""));
    }
    if let Some(q) = &f.search {
        parts.push(format!("matching \"{q}\""));
    }
    if parts.is_empty() {
        "all workflows".into()
    } else {
        parts.join(", ")
    }
}

fn loaded(app: &mut App, view: u64, data: ViewData, append: bool) {
    if view == 0 && !matches!(data, ViewData::Stages(_)) && app.pending_picker.take().is_some() {
        let why = match &data {
            ViewData::Failed(e) => e.clone(),
            _ => "unexpected answer".into(),
        };
        app.flash(
            format!("cannot list the workflow's stages: {why}"),
            Level::Error,
        );
    }
    if let ViewData::Stages(d) = &data {
        let w = d.summary.id.clone();
        app.stages.insert(
            w.clone(),
            d.stage_list
                .iter()
                .map(|s| (s.id.clone(), s.kind))
                .collect(),
        );
        if app
            .pending_picker
            .as_ref()
            .is_some_and(|(pw, _, _)| *pw == w)
            && let Some((pw, target, naming)) = app.pending_picker.take()
            && app.overlay.is_none()
        {
            open_picker(app, pw, target, naming);
        }
    }
    let Some(v) = app.stack.iter_mut().find(|v| v.id == view) else {
        return;
    };
    if !append {
        v.awaiting = false;
        v.base = 0;
    }
    v.paging = false;
    match (append, &mut v.data, data) {
        (true, ViewData::Items { rows, more }, ViewData::Items { rows: new, more: m }) => {
            // A page asked for before a reload may repeat rows the reload already brought.
            let have: HashSet<ItemId> = rows.iter().map(|r| r.id.clone()).collect();
            rows.extend(new.into_iter().filter(|r| !have.contains(&r.id)));
            *more = m;
        }
        (
            true,
            ViewData::Deliveries {
                rows,
                cursors,
                more,
            },
            ViewData::Deliveries {
                rows: new,
                cursors: c,
                more: m,
            },
        ) => {
            rows.extend(new);
            cursors.extend(c);
            *more = m;
        }
        (_, slot, data) => *slot = data,
    }
    if let ViewData::Delivery(d) = &v.data {
        v.doc = std::sync::Arc::new(super::payload::document(d));
    }
    // A reload keeps the selection whole (by id): a selected row that moved out of the list
    // stays selected, and the confirmation says it is not on screen. A new filter's first
    // page unselects what the filter hides, and says so.
    let mut said = None;
    if v.refilter && !append {
        v.refilter = false;
        said = v.keep_visible_selection();
    }
    v.clamp();
    if let Some(text) = said {
        app.flash(text, Level::Warn);
    }
}

/// A page read backward arrived: the list's last page replaces the rows (the cursor on its
/// last row, numbered from the total), or the rows before the first loaded one go in front
/// (the cursor stays on its row).
fn window_loaded(app: &mut App, view: u64, data: ViewData, at: At, total: Option<i64>) {
    let Some(v) = app.stack.iter_mut().find(|v| v.id == view) else {
        return;
    };
    v.paging = false;
    if at == At::End {
        v.awaiting = false;
        let n = match &data {
            ViewData::Items { rows, .. } => rows.len(),
            ViewData::Deliveries { rows, .. } => rows.len(),
            _ => 0,
        };
        v.data = data;
        if total.is_some() {
            v.total = total;
        }
        let whole = v.total.map(|t| t.max(0) as usize).unwrap_or(n);
        v.base = whole.saturating_sub(n);
        v.cursor = v.len().saturating_sub(1);
        v.clamp();
        return;
    }
    let shown = v.len();
    let added = match (&mut v.data, data) {
        (ViewData::Items { rows, .. }, ViewData::Items { rows: new, .. }) => {
            let have: HashSet<ItemId> = rows.iter().map(|r| r.id.clone()).collect();
            let new: Vec<ItemRow> = new.into_iter().filter(|r| !have.contains(&r.id)).collect();
            let n = new.len();
            rows.splice(0..0, new);
            n
        }
        (
            ViewData::Deliveries { rows, cursors, .. },
            ViewData::Deliveries {
                rows: new,
                cursors: c,
                ..
            },
        ) => {
            let n = new.len();
            rows.splice(0..0, new);
            cursors.splice(0..0, c);
            n
        }
        (slot, ViewData::Failed(e)) => {
            *slot = ViewData::Failed(e);
            0
        }
        _ => 0,
    };
    v.base = v.base.saturating_sub(added);
    v.cursor += v.len().saturating_sub(shown);
    v.clamp();
}

/// The list keys waited for did not come in time. A view that shows nothing yet (its first
/// load) takes the keys as they are: with no rows there is nothing to act on by mistake, and
/// Esc or `q` must still work. A view still showing the rows a new filter or order replaces
/// drops them, rather than act on rows the operator did not ask for, and says so.
fn give_up_waiting(app: &mut App) -> Vec<Effect> {
    app.deferred_ticks = 0;
    app.pending_picker = None;
    app.counting_stage = false;
    let Some(v) = app.view_mut() else {
        app.deferred.clear();
        return vec![];
    };
    v.awaiting = false;
    if matches!(v.data, ViewData::Loading) {
        return replay_deferred(app);
    }
    let n = app.deferred.len();
    app.deferred.clear();
    app.flash(
        format!("{n} key(s) dropped: the list they were typed for did not load in time"),
        Level::Warn,
    );
    vec![]
}

/// Runs the keys that waited for the view's list, once it is there (until one of them asks
/// for another list, behind which the rest wait again).
fn replay_deferred(app: &mut App) -> Vec<Effect> {
    let mut fx = Vec::new();
    while !app.list_pending() {
        match app.deferred.pop_front() {
            Some(Input::Key(k)) => fx.extend(key_now(app, k)),
            Some(Input::Paste(text)) => fx.extend(paste_now(app, text)),
            None => break,
        }
    }
    if app.deferred.is_empty() {
        app.deferred_ticks = 0;
    }
    fx
}

fn is_press(k: &KeyEvent) -> bool {
    k.kind == ratatui::crossterm::event::KeyEventKind::Press
}

fn key(app: &mut App, k: KeyEvent) -> Vec<Effect> {
    if !is_press(&k) {
        return vec![];
    }
    if app.keys_wait() {
        // Ctrl-C never waits.
        if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
            app.quit = true;
        } else {
            app.deferred.push_back(Input::Key(k));
        }
        return vec![];
    }
    key_now(app, k)
}

fn key_now(app: &mut App, k: KeyEvent) -> Vec<Effect> {
    if let Some(overlay) = app.overlay.take() {
        return overlay_key(app, overlay, k);
    }
    let scope = app.scope();
    let Some(b) = keymap::lookup(&k, scope, app.focus_log, app.read_only) else {
        if app.read_only && keymap::refused_read_only(&k, scope, app.focus_log).is_some() {
            app.flash("read-only console: actions are disabled", Level::Warn);
        }
        return vec![];
    };
    if app.focus_log
        && let Some(fx) = log_action(app, b.action)
    {
        return fx;
    }
    action(app, b.action)
}

/// How a confirmation names the rows an action takes: each by name and id when there are at
/// most [`super::report::NAMED`], and how many selected ones the list on screen does not show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Naming {
    pub names: Vec<String>,
    pub count: usize,
    pub hidden: usize,
}

impl Naming {
    fn of(v: &View, ids: &[String]) -> Naming {
        let visible = v.visible_ids();
        let hidden = ids
            .iter()
            .filter(|id| v.selected.contains_key(*id) && !visible.contains(id.as_str()))
            .count();
        let label = |id: &str| -> String {
            let name = v
                .selected
                .get(id)
                .map(|p| p.label.clone())
                .or_else(|| match &v.data {
                    ViewData::Items { rows, .. } => rows
                        .iter()
                        .find(|r| r.id.as_str() == id)
                        .map(|r| r.name.clone()),
                    ViewData::Item(d) if d.item.id.as_str() == id => Some(d.item.name.clone()),
                    ViewData::Deliveries { rows, .. } => rows
                        .iter()
                        .find(|r| r.id.as_str() == id)
                        .and_then(|r| r.item_name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            if name.is_empty() || name == id {
                id.to_string()
            } else {
                format!("{name} ({id})")
            }
        };
        Naming {
            names: if ids.len() <= super::report::NAMED {
                ids.iter().map(|id| label(id)).collect()
            } else {
                vec![]
            },
            count: ids.len(),
            hidden,
        }
    }

    /// `head` ("Assign 2 items to stage hook") with the names, a question mark and, when some
    /// selected rows are not on screen, how many.
    fn ask(&self, head: &str) -> String {
        let mut s = head.to_string();
        if !self.names.is_empty() && self.count > 1 {
            s.push_str(": ");
            s.push_str(&self.names.join(", "));
        }
        s.push('?');
        if self.hidden > 0 {
            s.push_str(&format!(
                " {} of them {} not on screen (moved out of this list, hidden by the filter or not loaded).",
                self.hidden,
                if self.hidden == 1 { "is" } else { "are" }
            ));
        }
        s
    }

    /// The one row's name, for a head that names a single row.
    fn one(&self) -> String {
        self.names.first().cloned().unwrap_or_default()
    }
}

/// Ticks (seconds) keys may wait for the list they were typed for before they are dropped.
const DEFER_TICKS: u32 = 3;

/// Seconds an action may take before the console says it is still waiting, and after which
/// it stops saying so (an answer that never comes must not hold the status line forever).
const STILL_WORKING_AFTER: u32 = 3;
const STILL_WORKING_UNTIL: u32 = 600;

/// Log pane lines for the holds that started or ended since the last header (issue 21).
fn log_holds(app: &mut App, new: &Header) {
    let now = chrono::Utc::now();
    for (wf, stage, until, reason) in &new.holds {
        let known = app
            .header
            .holds
            .iter()
            .any(|(w, s, u, _)| w == wf && s == stage && u == until);
        if !known {
            let secs = ((*until - now).num_milliseconds().max(0) + 999) / 1000;
            let text = format!("stage held {secs} s: {reason} (no new request until then)");
            app.log.push_stage(now, stage, text);
        }
    }
    let ended: Vec<StageId> = app
        .header
        .holds
        .iter()
        .filter(|(w, s, _, _)| !new.holds.iter().any(|(w2, s2, _, _)| w2 == w && s2 == s))
        .map(|(_, s, _, _)| s.clone())
        .collect();
    for stage in ended {
        app.log
            .push_stage(now, &stage, "hold ended: requests resume".to_string());
    }
}
