//! The console's state, the messages that change it and the effects it asks for.
//!
//! [`update`] is pure: it reads a message, changes the state, and returns effects for the
//! executor to perform (loads, actions, copies). It never touches the store, the clock or the
//! terminal, so every key and every action is tested without either.

use std::collections::{BTreeSet, HashMap, VecDeque};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::keymap::{self, Action, Scope};
use crate::dispatch::AttemptEvent;
use crate::model::{DeliveryId, DeliveryState, ItemId, StageId, StageKind, WorkflowId};
use crate::store::{
    AuditEntry, DeliveryDetail, DeliveryFilter, DeliverySummary, ItemCursor, ItemDetail, ItemOrder,
    ItemRow, WorkflowDetail, WorkflowSummary,
};

/// Rows fetched per page in list views.
pub const PAGE: usize = 200;
/// Attempts kept in the log pane.
pub const LOG_CAPACITY: usize = 2000;
/// Seconds of history in the throughput sparkline.
pub const RATE_SECONDS: usize = 120;

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
                if let Some(k) = f.error_kind {
                    parts.push(k.to_string());
                }
                if let Some(s) = f.status {
                    parts.push(s.to_string());
                }
                parts.join(" · ")
            }
            ViewKind::Delivery(id) => format!("delivery · {id}"),
            ViewKind::Audit => "audit".into(),
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
        cursors: Vec<i64>,
        more: bool,
    },
    Delivery(Box<DeliveryDetail>),
    Audit(Vec<AuditEntry>),
    Health(Box<crate::store::HealthReport>),
    Failed(String),
}

/// One entry of the view stack.
#[derive(Clone, Debug)]
pub struct View {
    /// Unique per view, so a late load for a view that is gone is ignored.
    pub id: u64,
    pub kind: ViewKind,
    pub data: ViewData,
    pub cursor: usize,
    /// Scroll offset of text views (delivery detail).
    pub scroll: usize,
    pub selected: BTreeSet<String>,
    /// The kept filter text (`/`).
    pub filter: String,
    pub order: ItemOrder,
}

impl View {
    fn new(id: u64, kind: ViewKind) -> View {
        View {
            id,
            kind,
            data: ViewData::Loading,
            cursor: 0,
            scroll: 0,
            selected: BTreeSet::new(),
            filter: String::new(),
            order: ItemOrder::Waiting,
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
            ViewData::Deliveries { rows, .. } => (0..rows.len())
                .filter(|i| {
                    let r = &rows[*i];
                    keep(&format!(
                        "{} {} {} {} {}",
                        r.id,
                        r.stage,
                        r.item_id.as_ref().map(|i| i.as_str()).unwrap_or(""),
                        r.item_name.as_deref().unwrap_or(""),
                        r.state
                    ))
                })
                .collect(),
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
    RefireFiltered {
        filter: DeliveryFilter,
        count: i64,
    },
    Replay(Vec<DeliveryId>),
    /// Operator cancel (design §6): items route along `on_failure`.
    Cancel(Vec<DeliveryId>),
    CancelFiltered {
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
    Help,
    Command(String),
    Filter(String),
    Picker {
        title: String,
        workflow: WorkflowId,
        choices: Vec<(StageId, StageKind)>,
        query: String,
        cursor: usize,
        target: AssignWhat,
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
}

/// The log pane.
#[derive(Clone, Debug)]
pub struct LogPane {
    pub visible: bool,
    pub entries: VecDeque<AttemptEvent>,
    /// Follow mode: the cursor sticks to the newest entry.
    pub follow: bool,
    /// Stream paused: new attempts are counted but not shown until resumed.
    pub paused: bool,
    pub held: Vec<AttemptEvent>,
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
                let e = &self.entries[*i];
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
        if self.paused {
            // Only the newest LOG_CAPACITY could ever be shown after resuming.
            self.held.push(e);
            if self.held.len() > LOG_CAPACITY * 2 {
                self.held.drain(..self.held.len() - LOG_CAPACITY);
            }
            return true;
        }
        self.entries.push_back(e);
        if self.entries.len() > LOG_CAPACITY {
            self.entries.pop_front();
            self.cursor = self.cursor.saturating_sub(1);
        }
        true
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
    /// Stages per workflow, for the assign picker.
    pub stages: HashMap<WorkflowId, Vec<(StageId, StageKind)>>,
    /// Something changed since the last frame.
    pub dirty: bool,
    /// The main list's visible height, set by the view (for paging).
    pub page_rows: usize,
    /// An assignment waiting for its workflow's stage list before the picker can open.
    pub pending_picker: Option<(WorkflowId, AssignWhat)>,
    /// Actions sent to the executor whose answer ([`Msg::ActionDone`]) has not come, and for
    /// how many seconds the oldest has been waiting.
    pub running: (u32, u32),
}

/// Inputs of [`update`].
#[derive(Debug)]
pub enum Msg {
    Key(KeyEvent),
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
    Header(Header),
    Attempt(Box<AttemptEvent>),
    /// A result for the flash line.
    Done {
        text: String,
        level: Level,
    },
    /// The answer to an action ([`Effect::Run`]): a result for the flash line, and one action
    /// fewer waiting (see [`App::running`]).
    ActionDone {
        text: String,
        level: Level,
    },
    /// A test webhook's result, for a popup.
    TestResult {
        title: String,
        text: String,
    },
    /// The number of failed deliveries a bulk re-fire would take.
    Counted {
        filter: DeliveryFilter,
        count: i64,
    },
    /// The number of open deliveries a bulk cancel would take.
    CountedOpen {
        filter: DeliveryFilter,
        count: i64,
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
    CountFailed(DeliveryFilter),
    CountOpen(DeliveryFilter),
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
    Copy(String),
}

/// Where the next page starts.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadAfter {
    Item(ItemCursor),
    Delivery(i64),
}

impl App {
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
            stages: HashMap::new(),
            dirty: true,
            page_rows: 10,
            pending_picker: None,
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
        Msg::Resize => vec![],
        Msg::Tick => {
            app.rate.push_back(0);
            while app.rate.len() > RATE_SECONDS {
                app.rate.pop_front();
            }
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
            vec![]
        }
        Msg::Changed => {
            // Reload what is on screen; pages already appended are reloaded from the top.
            match app.view() {
                Some(v)
                    if !matches!(v.data, ViewData::Items { .. } | ViewData::Deliveries { .. }) =>
                {
                    app.load_current(None)
                }
                Some(v) if v.cursor < PAGE => app.load_current(None),
                _ => vec![],
            }
        }
        Msg::Loaded { view, data, append } => {
            loaded(app, view, data, append);
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
            app.header = h;
            vec![]
        }
        Msg::Attempt(e) => {
            if app.log.push(*e) {
                if let Some(last) = app.rate.back_mut() {
                    *last += 1;
                }
                if app.log.follow {
                    app.log.cursor = app.log.entries.len().saturating_sub(1);
                }
            }
            vec![]
        }
        Msg::Done { text, level } => {
            app.flash(text, level);
            app.load_current(None)
        }
        Msg::ActionDone { text, level } => {
            app.running.0 = app.running.0.saturating_sub(1);
            if app.running.0 == 0 {
                app.running.1 = 0;
            }
            update(app, Msg::Done { text, level })
        }
        Msg::TestResult { title, text } => {
            app.overlay = Some(Overlay::Popup { title, text });
            vec![]
        }
        Msg::Counted { filter, count } => {
            if count == 0 {
                app.flash(
                    "no failed deliveries match: nothing to re-fire",
                    Level::Info,
                );
            } else {
                app.overlay = Some(Overlay::Typed {
                    text: format!(
                        "Re-fire {count} failed deliveries ({}). Each item goes back into its webhook stage and is delivered anew.",
                        filter_words(&filter)
                    ),
                    expected: count.to_string(),
                    typed: String::new(),
                    action: Pending::RefireFiltered { filter, count },
                });
            }
            vec![]
        }
        Msg::CountedOpen { filter, count } => {
            if count == 0 {
                app.flash("no open deliveries match: nothing to cancel", Level::Info);
            } else {
                app.overlay = Some(Overlay::Typed {
                    text: format!(
                        "Cancel {count} open deliveries ({}). Each item routes along its stage's on_failure.",
                        filter_words(&filter)
                    ),
                    expected: count.to_string(),
                    typed: String::new(),
                    action: Pending::CancelFiltered { filter, count },
                });
            }
            vec![]
        }
        Msg::StageCount {
            workflow,
            from,
            count,
        } => {
            if count == 0 {
                app.flash(format!("stage {from} holds no items"), Level::Info);
                return vec![];
            }
            open_picker(app, workflow, AssignWhat::Stage { from, count });
            vec![]
        }
    }
}

fn filter_words(f: &DeliveryFilter) -> String {
    let mut parts = Vec::new();
    if let Some(w) = &f.workflow {
        parts.push(format!("workflow {w}"));
    }
    if let Some(s) = &f.stage {
        parts.push(format!("stage {s}"));
    }
    if parts.is_empty() {
        "all workflows".into()
    } else {
        parts.join(", ")
    }
}

fn loaded(app: &mut App, view: u64, data: ViewData, append: bool) {
    if let ViewData::Stages(d) = &data {
        let w = d.summary.id.clone();
        app.stages.insert(
            w.clone(),
            d.stage_list
                .iter()
                .map(|s| (s.id.clone(), s.kind))
                .collect(),
        );
        if app.pending_picker.as_ref().is_some_and(|(pw, _)| *pw == w)
            && let Some((pw, target)) = app.pending_picker.take()
            && app.overlay.is_none()
        {
            open_picker(app, pw, target);
        }
    }
    let Some(v) = app.stack.iter_mut().find(|v| v.id == view) else {
        return;
    };
    match (append, &mut v.data, data) {
        (true, ViewData::Items { rows, more }, ViewData::Items { rows: new, more: m }) => {
            rows.extend(new);
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
    // Selections only keep rows that still exist.
    let ids: Option<BTreeSet<String>> = match &v.data {
        ViewData::Items { rows, .. } => Some(rows.iter().map(|r| r.id.to_string()).collect()),
        ViewData::Deliveries { rows, .. } => Some(rows.iter().map(|r| r.id.to_string()).collect()),
        _ => None,
    };
    if let Some(ids) = ids {
        v.selected.retain(|s| ids.contains(s));
    }
    v.clamp();
}

fn is_press(k: &KeyEvent) -> bool {
    k.kind == ratatui::crossterm::event::KeyEventKind::Press
}

fn key(app: &mut App, k: KeyEvent) -> Vec<Effect> {
    if !is_press(&k) {
        return vec![];
    }
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

fn log_action(app: &mut App, a: Action) -> Option<Vec<Effect>> {
    let visible = app.log.visible_indices();
    let n = visible.len();
    let pos = visible
        .iter()
        .position(|i| *i >= app.log.cursor)
        .unwrap_or(n.saturating_sub(1));
    let set = |app: &mut App, p: usize| {
        if let Some(i) = visible.get(p) {
            app.log.cursor = *i;
        }
    };
    match a {
        Action::Up => {
            app.log.follow = false;
            set(app, pos.saturating_sub(1));
        }
        Action::Down => {
            set(app, (pos + 1).min(n.saturating_sub(1)));
            app.log.follow = pos + 1 >= n.saturating_sub(1);
        }
        Action::Top => {
            app.log.follow = false;
            set(app, 0);
        }
        Action::Bottom | Action::Follow => {
            app.log.follow = true;
            set(app, n.saturating_sub(1));
        }
        Action::PageUp => {
            app.log.follow = false;
            set(app, pos.saturating_sub(app.page_rows.max(1)));
        }
        Action::PageDown => set(app, (pos + app.page_rows.max(1)).min(n.saturating_sub(1))),
        Action::PauseLog => {
            app.log.paused = !app.log.paused;
            if !app.log.paused {
                let held = std::mem::take(&mut app.log.held);
                let k = held.len();
                for e in held {
                    app.log.entries.push_back(e);
                }
                while app.log.entries.len() > LOG_CAPACITY {
                    app.log.entries.pop_front();
                    app.log.cursor = app.log.cursor.saturating_sub(1);
                }
                if app.log.follow {
                    app.log.cursor = app.log.entries.len().saturating_sub(1);
                }
                app.flash(
                    format!("stream resumed ({k} attempts were held)"),
                    Level::Info,
                );
            } else {
                app.flash("stream paused: new attempts are held", Level::Info);
            }
        }
        Action::Filter => app.overlay = Some(Overlay::Filter(app.log.filter.clone())),
        Action::Open | Action::Refire | Action::Replay | Action::Copy => {
            // With nothing under the log cursor the key does nothing (it must not fall
            // through to the main view, which does not have the focus).
            let Some(e) = visible.get(pos).and_then(|i| app.log.entries.get(*i)) else {
                return Some(vec![]);
            };
            let id = e.delivery_id.clone();
            return Some(match a {
                Action::Open => app.push(ViewKind::Delivery(id)),
                Action::Refire => confirm_refire(app, vec![id]),
                Action::Replay => confirm_replay(app, vec![id]),
                _ => vec![Effect::Copy(id.to_string())],
            });
        }
        _ => return None,
    }
    Some(vec![])
}

fn move_cursor(app: &mut App, f: impl Fn(usize, usize, usize) -> usize) -> Vec<Effect> {
    let page = app.page_rows.max(1);
    let Some(v) = app.view_mut() else {
        return vec![];
    };
    if matches!(v.data, ViewData::Delivery(_)) {
        v.scroll = f(v.scroll, usize::MAX / 2, page);
        return vec![];
    }
    let n = v.len();
    if n == 0 {
        return vec![];
    }
    v.cursor = f(v.cursor, n, page).min(n - 1);
    // Near the end of what is loaded: fetch the next page (keyset).
    let near_end = v.cursor + page >= n;
    let after = match &v.data {
        ViewData::Items { rows, more: true } if near_end => {
            rows.last().map(|r| LoadAfter::Item(r.cursor.clone()))
        }
        ViewData::Deliveries {
            cursors,
            more: true,
            ..
        } if near_end => cursors.last().map(|c| LoadAfter::Delivery(*c)),
        _ => None,
    };
    match after {
        Some(a) => app.load_current(Some(a)),
        None => vec![],
    }
}

/// The rows an action applies to: the selection, else the row under the cursor.
fn targets(v: &View) -> Vec<String> {
    if !v.selected.is_empty() {
        return v.selected.iter().cloned().collect();
    }
    let vis = v.visible_indices();
    let Some(i) = vis.get(v.cursor) else {
        return vec![];
    };
    match &v.data {
        ViewData::Items { rows, .. } => vec![rows[*i].id.to_string()],
        ViewData::Deliveries { rows, .. } => vec![rows[*i].id.to_string()],
        ViewData::Item(d) => d
            .deliveries
            .get(*i)
            .map(|d| vec![d.id.to_string()])
            .unwrap_or_default(),
        _ => vec![],
    }
}

fn item_versions(v: &View, ids: &[String]) -> Vec<(ItemId, i64)> {
    match &v.data {
        ViewData::Items { rows, .. } => rows
            .iter()
            .filter(|r| ids.iter().any(|i| i == r.id.as_str()))
            .map(|r| (r.id.clone(), r.version))
            .collect(),
        ViewData::Item(d) => vec![(d.item.id.clone(), d.item.version)],
        _ => vec![],
    }
}

fn current_stage_row(v: &View) -> Option<&crate::store::StageSummary> {
    let ViewData::Stages(d) = &v.data else {
        return None;
    };
    v.visible_indices()
        .get(v.cursor)
        .and_then(|i| d.stage_list.get(*i))
}

fn open_picker(app: &mut App, workflow: WorkflowId, target: AssignWhat) {
    let choices = app.stages.get(&workflow).cloned().unwrap_or_default();
    if choices.is_empty() {
        app.flash(
            "open the workflow's stages first (its stage list is not loaded)",
            Level::Warn,
        );
        return;
    }
    let n = match &target {
        AssignWhat::Items(ids) => ids.len() as i64,
        AssignWhat::Stage { count, .. } => *count,
    };
    app.overlay = Some(Overlay::Picker {
        title: format!("assign {n} item(s) to stage"),
        workflow,
        choices,
        query: String::new(),
        cursor: 0,
        target,
    });
}

fn confirm_refire(app: &mut App, ids: Vec<DeliveryId>) -> Vec<Effect> {
    let text = if ids.len() == 1 {
        format!(
            "Re-fire delivery {}? The item goes back into its webhook stage and is delivered anew.",
            ids[0]
        )
    } else {
        format!(
            "Re-fire {} deliveries? Each item goes back into its webhook stage.",
            ids.len()
        )
    };
    app.overlay = Some(Overlay::Confirm {
        text,
        focus: 0,
        action: Pending::Refire(ids),
    });
    vec![]
}

fn confirm_replay(app: &mut App, ids: Vec<DeliveryId>) -> Vec<Effect> {
    let text = if ids.len() == 1 {
        format!(
            "Replay delivery {}? The stored bytes are sent again; the item does not move.",
            ids[0]
        )
    } else {
        format!(
            "Replay {} deliveries? The stored bytes are sent again; items do not move.",
            ids.len()
        )
    };
    app.overlay = Some(Overlay::Confirm {
        text,
        focus: 0,
        action: Pending::Replay(ids),
    });
    vec![]
}

/// Seconds an action may take before the console says it is still waiting, and after which
/// it stops saying so (an answer that never comes must not hold the status line forever).
const STILL_WORKING_AFTER: u32 = 3;
const STILL_WORKING_UNTIL: u32 = 600;

/// Sends a confirmed action to the executor, counting it until its [`Msg::ActionDone`]. While one
/// is still waiting (for another process's write lock) a second is refused rather than
/// queued behind it: pressing `p` twice must not pause twice.
fn run(app: &mut App, action: Pending) -> Vec<Effect> {
    if app.running.0 > 0 && app.running.1 < STILL_WORKING_UNTIL {
        app.flash(
            "an action is still running (waiting for the database): try again when it is done",
            Level::Warn,
        );
        return vec![];
    }
    app.running = (app.running.0 + 1, 0);
    vec![Effect::Run(action)]
}

fn action(app: &mut App, a: Action) -> Vec<Effect> {
    match a {
        Action::Up => move_cursor(app, |c, _, _| c.saturating_sub(1)),
        Action::Down => move_cursor(app, |c, _, _| c + 1),
        Action::Top => move_cursor(app, |_, _, _| 0),
        Action::Bottom => move_cursor(app, |_, n, _| n.saturating_sub(1)),
        Action::PageUp => move_cursor(app, |c, _, p| c.saturating_sub(p)),
        Action::PageDown => move_cursor(app, |c, _, p| c + p),
        Action::Quit => {
            app.quit = true;
            vec![]
        }
        Action::Help => {
            app.overlay = Some(Overlay::Help);
            vec![]
        }
        Action::Command => {
            app.overlay = Some(Overlay::Command(String::new()));
            vec![]
        }
        Action::Filter => {
            let f = app.view().map(|v| v.filter.clone()).unwrap_or_default();
            app.overlay = Some(Overlay::Filter(f));
            vec![]
        }
        Action::ToggleLog => {
            app.log.visible = !app.log.visible;
            if !app.log.visible {
                app.focus_log = false;
            }
            vec![]
        }
        Action::FocusLog => {
            if app.log.visible {
                app.focus_log = !app.focus_log;
            }
            vec![]
        }
        Action::Follow | Action::PauseLog => vec![],
        Action::Back => {
            if let Some(v) = app.view_mut()
                && !v.selected.is_empty()
            {
                v.selected.clear();
                return vec![];
            }
            if app.stack.len() > 1 {
                app.stack.pop();
                return app.load_current(None);
            }
            vec![]
        }
        Action::Open => open(app),
        Action::Select => {
            let Some(v) = app.view_mut() else {
                return vec![];
            };
            let vis = v.visible_indices();
            let id = match (&v.data, vis.get(v.cursor)) {
                (ViewData::Items { rows, .. }, Some(i)) => rows[*i].id.to_string(),
                (ViewData::Deliveries { rows, .. }, Some(i)) => rows[*i].id.to_string(),
                _ => return vec![],
            };
            if !v.selected.remove(&id) {
                v.selected.insert(id);
            }
            move_cursor(app, |c, _, _| c + 1)
        }
        Action::SelectAll => {
            let Some(v) = app.view_mut() else {
                return vec![];
            };
            let ids: Vec<String> = match &v.data {
                ViewData::Items { rows, .. } => rows.iter().map(|r| r.id.to_string()).collect(),
                ViewData::Deliveries { rows, .. } => v
                    .visible_indices()
                    .iter()
                    .map(|i| rows[*i].id.to_string())
                    .collect(),
                _ => vec![],
            };
            let n = ids.len();
            v.selected.extend(ids);
            app.flash(
                format!("{n} rows selected (all loaded rows; Esc clears)"),
                Level::Info,
            );
            vec![]
        }
        Action::SortByName => {
            let Some(v) = app.view_mut() else {
                return vec![];
            };
            v.order = if v.order == ItemOrder::Name {
                ItemOrder::Waiting
            } else {
                ItemOrder::Name
            };
            v.cursor = 0;
            let word = if v.order == ItemOrder::Name {
                "name"
            } else {
                "waiting time"
            };
            app.flash(format!("sorted by {word}"), Level::Info);
            app.load_current(None)
        }
        Action::Deliveries => {
            let filter = match app.view().map(|v| &v.kind) {
                Some(ViewKind::Stages(w)) => {
                    let stage = app.view().and_then(current_stage_row).map(|s| s.id.clone());
                    DeliveryFilter {
                        workflow: Some(w.clone()),
                        stage,
                        ..Default::default()
                    }
                }
                Some(ViewKind::Workflows) => {
                    let w = workflow_under_cursor(app);
                    DeliveryFilter {
                        workflow: w,
                        ..Default::default()
                    }
                }
                Some(ViewKind::Items { workflow, stage }) => DeliveryFilter {
                    workflow: workflow.clone(),
                    stage: stage.clone(),
                    ..Default::default()
                },
                Some(ViewKind::Item(id)) => DeliveryFilter {
                    item: Some(id.clone()),
                    ..Default::default()
                },
                _ => DeliveryFilter::default(),
            };
            app.push(ViewKind::Deliveries(filter))
        }
        Action::Items => {
            let (workflow, stage) = match app.view().map(|v| &v.kind) {
                Some(ViewKind::Stages(w)) => (
                    Some(w.clone()),
                    app.view().and_then(current_stage_row).map(|s| s.id.clone()),
                ),
                Some(ViewKind::Workflows) => (workflow_under_cursor(app), None),
                _ => (app.current_workflow(), None),
            };
            app.push(ViewKind::Items { workflow, stage })
        }
        Action::Assign => assign(app),
        Action::Advance | Action::Approve | Action::Reject => {
            let Some(v) = app.view() else { return vec![] };
            let ids = item_versions(v, &targets(v));
            if ids.is_empty() {
                return vec![];
            }
            let (outcome, verb) = match a {
                Action::Approve => (Some(crate::engine::Outcome::Approve), "Approve"),
                Action::Reject => (Some(crate::engine::Outcome::Reject), "Reject"),
                _ => (None, "Advance"),
            };
            let text = if ids.len() == 1 {
                format!("{verb} item {}?", ids[0].0)
            } else {
                format!("{verb} {} items?", ids.len())
            };
            app.overlay = Some(Overlay::Confirm {
                text,
                focus: 0,
                action: Pending::Advance { ids, outcome },
            });
            vec![]
        }
        Action::Refire | Action::Replay => {
            let Some(v) = app.view() else { return vec![] };
            let ids: Vec<DeliveryId> = match &v.data {
                ViewData::Delivery(d) => vec![d.summary.id.clone()],
                _ => targets(v).into_iter().map(DeliveryId).collect(),
            };
            if ids.is_empty() {
                return vec![];
            }
            if a == Action::Refire {
                confirm_refire(app, ids)
            } else {
                confirm_replay(app, ids)
            }
        }
        Action::RefireAll => {
            let filter = match app.view().map(|v| &v.kind) {
                Some(ViewKind::Stages(w)) => DeliveryFilter {
                    workflow: Some(w.clone()),
                    stage: app.view().and_then(current_stage_row).map(|s| s.id.clone()),
                    ..Default::default()
                },
                Some(ViewKind::Deliveries(f)) => f.clone(),
                _ => return vec![],
            };
            vec![Effect::CountFailed(filter)]
        }
        Action::Test | Action::PauseStage => {
            let Some(ViewKind::Stages(w)) = app.view().map(|v| v.kind.clone()) else {
                return vec![];
            };
            let Some(s) = app.view().and_then(current_stage_row).cloned() else {
                return vec![];
            };
            if s.kind != StageKind::Webhook {
                app.flash(
                    format!(
                        "stage {} is a {} stage; only webhook stages can be {}",
                        s.id,
                        s.kind,
                        if a == Action::Test {
                            "tested"
                        } else {
                            "paused"
                        }
                    ),
                    Level::Warn,
                );
                return vec![];
            }
            if a == Action::Test {
                app.flash(format!("testing {}…", s.id), Level::Info);
                return vec![Effect::Test {
                    workflow: w,
                    stage: s.id,
                }];
            }
            let pause = !s.paused;
            if pause {
                app.overlay = Some(Overlay::Confirm {
                    text: format!(
                        "Pause stage {}? Its deliveries stay pending until it is resumed.",
                        s.id
                    ),
                    focus: 0,
                    action: Pending::Pause {
                        workflow: w,
                        stage: s.id,
                        pause,
                    },
                });
                vec![]
            } else {
                run(
                    app,
                    Pending::Pause {
                        workflow: w,
                        stage: s.id,
                        pause,
                    },
                )
            }
        }
        Action::Cancel => {
            let Some(v) = app.view() else { return vec![] };
            let ids: Vec<DeliveryId> = match &v.data {
                ViewData::Delivery(d) => vec![d.summary.id.clone()],
                _ => targets(v).into_iter().map(DeliveryId).collect(),
            };
            if ids.is_empty() {
                return vec![];
            }
            let text = if ids.len() == 1 {
                format!(
                    "Cancel delivery {}? The item routes along on_failure; an attempt on the wire routes nothing.",
                    ids[0]
                )
            } else {
                format!(
                    "Cancel {} deliveries? Each item routes along on_failure.",
                    ids.len()
                )
            };
            app.overlay = Some(Overlay::Confirm {
                text,
                focus: 0,
                action: Pending::Cancel(ids),
            });
            vec![]
        }
        Action::CancelAll | Action::Export => {
            let Some(ViewKind::Deliveries(f)) = app.view().map(|v| v.kind.clone()) else {
                return vec![];
            };
            if a == Action::Export {
                app.flash("exporting…", Level::Info);
                return vec![Effect::Export(f)];
            }
            vec![Effect::CountOpen(f)]
        }
        Action::Copy => {
            let Some(v) = app.view() else { return vec![] };
            let id = match &v.data {
                ViewData::Item(d) => Some(d.item.id.to_string()),
                ViewData::Delivery(d) => Some(d.summary.id.to_string()),
                _ => targets(v).into_iter().next(),
            };
            match id {
                Some(id) => vec![Effect::Copy(id)],
                None => vec![],
            }
        }
    }
}

fn workflow_under_cursor(app: &App) -> Option<WorkflowId> {
    let v = app.view()?;
    let ViewData::Workflows(rows) = &v.data else {
        return None;
    };
    v.visible_indices()
        .get(v.cursor)
        .map(|i| rows[*i].id.clone())
}

fn assign(app: &mut App) -> Vec<Effect> {
    let Some(v) = app.view() else { return vec![] };
    match &v.kind {
        ViewKind::Stages(w) => {
            let Some(s) = current_stage_row(v) else {
                return vec![];
            };
            vec![Effect::CountStage {
                workflow: w.clone(),
                from: s.id.clone(),
            }]
        }
        ViewKind::Items { .. } | ViewKind::Item(_) => {
            let ids = item_versions(v, &targets(v));
            let workflow = match &v.data {
                ViewData::Item(d) => Some(d.item.workflow.clone()),
                ViewData::Items { rows, .. } => rows.first().map(|r| r.workflow.clone()),
                _ => None,
            };
            let Some(workflow) = workflow.filter(|_| !ids.is_empty()) else {
                return vec![];
            };
            if !app.stages.contains_key(&workflow) {
                // The picker needs the stage list: load it; the picker opens when it arrives.
                app.pending_picker = Some((workflow.clone(), AssignWhat::Items(ids)));
                return vec![Effect::Load {
                    view: 0,
                    kind: ViewKind::Stages(workflow),
                    search: String::new(),
                    order: ItemOrder::Waiting,
                    after: None,
                }];
            }
            open_picker(app, workflow, AssignWhat::Items(ids));
            vec![]
        }
        _ => vec![],
    }
}

fn open(app: &mut App) -> Vec<Effect> {
    let Some(v) = app.view() else { return vec![] };
    let vis = v.visible_indices();
    let Some(i) = vis.get(v.cursor).copied() else {
        return vec![];
    };
    let next = match &v.data {
        ViewData::Workflows(rows) => ViewKind::Stages(rows[i].id.clone()),
        ViewData::Stages(d) => ViewKind::Items {
            workflow: Some(d.summary.id.clone()),
            stage: Some(d.stage_list[i].id.clone()),
        },
        ViewData::Items { rows, .. } => ViewKind::Item(rows[i].id.clone()),
        ViewData::Item(d) => ViewKind::Delivery(d.deliveries[i].id.clone()),
        ViewData::Deliveries { rows, .. } => ViewKind::Delivery(rows[i].id.clone()),
        _ => return vec![],
    };
    app.push(next)
}

fn text_edit(s: &mut String, k: &KeyEvent) -> bool {
    match k.code {
        KeyCode::Char(c) if !k.modifiers.contains(KeyModifiers::CONTROL) => {
            s.push(c);
            true
        }
        KeyCode::Backspace => {
            s.pop();
            true
        }
        _ => false,
    }
}

fn overlay_key(app: &mut App, overlay: Overlay, k: KeyEvent) -> Vec<Effect> {
    let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
    match overlay {
        Overlay::Help | Overlay::Popup { .. } => {
            if ctrl_c {
                app.quit = true;
            }
            vec![]
        }
        // Ctrl-C quits from the text prompts too, as everywhere (the key map's `quit`).
        Overlay::Command(_) | Overlay::Filter(_) if ctrl_c => {
            app.quit = true;
            vec![]
        }
        Overlay::Command(mut s) => match k.code {
            KeyCode::Esc => vec![],
            KeyCode::Enter => command(app, s.trim()),
            _ => {
                text_edit(&mut s, &k);
                app.overlay = Some(Overlay::Command(s));
                vec![]
            }
        },
        Overlay::Filter(mut s) => {
            let apply = |app: &mut App, text: String| -> Vec<Effect> {
                if app.focus_log {
                    app.log.filter = text;
                    return vec![];
                }
                let Some(v) = app.view_mut() else {
                    return vec![];
                };
                v.filter = text;
                v.cursor = 0;
                if matches!(v.kind, ViewKind::Items { .. }) {
                    return app.load_current(None);
                }
                vec![]
            };
            match k.code {
                KeyCode::Esc => apply(app, String::new()),
                KeyCode::Enter => vec![],
                _ => {
                    if text_edit(&mut s, &k) {
                        let fx = apply(app, s.clone());
                        app.overlay = Some(Overlay::Filter(s));
                        return fx;
                    }
                    app.overlay = Some(Overlay::Filter(s));
                    vec![]
                }
            }
        }
        Overlay::Picker {
            title,
            workflow,
            choices,
            mut query,
            mut cursor,
            target,
        } => {
            let matching: Vec<&(StageId, StageKind)> = choices
                .iter()
                .filter(|(id, _)| id.as_str().contains(query.as_str()))
                .collect();
            match k.code {
                KeyCode::Esc => return vec![],
                KeyCode::Enter => {
                    let Some((to, _)) = matching.get(cursor).cloned() else {
                        app.overlay = Some(Overlay::Picker {
                            title,
                            workflow,
                            choices,
                            query,
                            cursor,
                            target,
                        });
                        return vec![];
                    };
                    let to = to.clone();
                    let action = Pending::Assign {
                        workflow: workflow.clone(),
                        to: to.clone(),
                        target: target.clone(),
                    };
                    app.overlay = Some(match &target {
                        AssignWhat::Items(ids) => Overlay::Confirm {
                            text: if ids.len() == 1 {
                                format!("Assign item {} to stage {to}?", ids[0].0)
                            } else {
                                format!("Assign {} items to stage {to}?", ids.len())
                            },
                            focus: 0,
                            action,
                        },
                        AssignWhat::Stage { from, count } => Overlay::Typed {
                            text: format!(
                                "Assign all {count} items of stage {from} to stage {to}."
                            ),
                            expected: count.to_string(),
                            typed: String::new(),
                            action,
                        },
                    });
                    return vec![];
                }
                KeyCode::Up => cursor = cursor.saturating_sub(1),
                KeyCode::Down => cursor = (cursor + 1).min(matching.len().saturating_sub(1)),
                _ => {
                    if text_edit(&mut query, &k) {
                        cursor = 0;
                    }
                }
            }
            app.overlay = Some(Overlay::Picker {
                title,
                workflow,
                choices,
                query,
                cursor,
                target,
            });
            vec![]
        }
        Overlay::Confirm {
            text,
            mut focus,
            action,
        } => match k.code {
            KeyCode::Esc => {
                app.flash("cancelled", Level::Info);
                vec![]
            }
            KeyCode::Tab | KeyCode::Left | KeyCode::Right | KeyCode::BackTab => {
                focus = 1 - focus.min(1);
                app.overlay = Some(Overlay::Confirm {
                    text,
                    focus,
                    action,
                });
                vec![]
            }
            KeyCode::Enter => {
                if focus == 1 {
                    app.flash("working…", Level::Info);
                    run(app, action)
                } else {
                    app.flash("cancelled", Level::Info);
                    vec![]
                }
            }
            _ => {
                if ctrl_c {
                    app.quit = true;
                    return vec![];
                }
                app.overlay = Some(Overlay::Confirm {
                    text,
                    focus,
                    action,
                });
                vec![]
            }
        },
        Overlay::Typed {
            text,
            expected,
            mut typed,
            action,
        } => match k.code {
            KeyCode::Esc => {
                app.flash("cancelled", Level::Info);
                vec![]
            }
            KeyCode::Enter => {
                if typed == expected {
                    app.flash("working…", Level::Info);
                    run(app, action)
                } else {
                    app.flash(format!("type {expected} to confirm"), Level::Warn);
                    app.overlay = Some(Overlay::Typed {
                        text,
                        expected,
                        typed,
                        action,
                    });
                    vec![]
                }
            }
            _ => {
                if let KeyCode::Char(c) = k.code
                    && c.is_ascii_digit()
                {
                    typed.push(c);
                } else if k.code == KeyCode::Backspace {
                    typed.pop();
                }
                app.overlay = Some(Overlay::Typed {
                    text,
                    expected,
                    typed,
                    action,
                });
                vec![]
            }
        },
    }
}

/// Runs a `:` command.
fn command(app: &mut App, cmd: &str) -> Vec<Effect> {
    let mut words = cmd.split_whitespace();
    let head = words.next().unwrap_or("");
    let arg = words.next();
    match head {
        "q" | "quit" | "q!" => {
            app.quit = true;
            vec![]
        }
        "workflows" | "wf" => app.jump(ViewKind::Workflows),
        "stages" => match arg.map(WorkflowId::new).or_else(|| app.current_workflow()) {
            Some(w) => app.jump(ViewKind::Stages(w)),
            None => {
                app.flash("say which workflow: :stages ID", Level::Warn);
                vec![]
            }
        },
        "items" => {
            let workflow = app.current_workflow();
            let stage = arg.map(StageId::new);
            app.jump(ViewKind::Items { workflow, stage })
        }
        "deliveries" | "dl" => {
            // Words in any order: a state (`failed`), an error kind (`timeout`), a status (`503`).
            let mut f = DeliveryFilter {
                workflow: app.current_workflow(),
                ..Default::default()
            };
            for w in arg.into_iter().chain(words) {
                if let Ok(s) = w.parse::<DeliveryState>() {
                    f.state = Some(s);
                } else if let Ok(k) = w.parse() {
                    f.error_kind = Some(k);
                } else if let Ok(code) = w.parse::<u16>() {
                    f.status = Some(code);
                } else {
                    let e = w
                        .parse::<DeliveryState>()
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    app.flash(
                        format!("{e}; or an error kind (timeout, connect, …) or an HTTP status"),
                        Level::Error,
                    );
                    return vec![];
                }
            }
            app.jump(ViewKind::Deliveries(f))
        }
        "audit" => app.jump(ViewKind::Audit),
        "health" => app.jump(ViewKind::Health),
        "" => vec![],
        other => {
            app.flash(
                format!("unknown command `{other}` (try :workflows :stages :items :deliveries failed :audit :q)"),
                Level::Error,
            );
            vec![]
        }
    }
}
