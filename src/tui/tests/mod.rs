//! Console tests that need neither a terminal nor a database: the pure update (`update`), the
//! drawing on `TestBackend` buffers (`render`) and `insta` snapshots of every screen
//! (`screens`). The data is hand-built here with fixed ids and times, so the same state
//! always draws the same frame.

mod navigation;
mod render;
mod screens;
mod update;
mod viewer;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::state::{App, Effect, Msg, ViewData, update};
use crate::actions::BulkAction;
use crate::model::AttemptEvent;
use crate::model::{
    AttemptTrigger, DatasetRef, DeliveryId, DeliveryState, DeliveryTrigger, ErrorKind, EventType,
    HistoryCause, Item, ItemId, ItemState, StageId, StageKind, WorkflowId,
};
use crate::store::{
    AttemptRecord, AuditEntry, DeliveryDetail, DeliverySummary, HistoryEntry, ItemCursor,
    ItemDetail, ItemRow, StageSummary, WorkflowDetail, WorkflowSummary,
};

/// The fixed "now" every test draws at.
pub fn now() -> DateTime<Utc> {
    "2025-03-04T05:06:07Z".parse().unwrap()
}

fn ago(secs: i64) -> DateTime<Utc> {
    now() - Duration::seconds(secs)
}

pub const WF: &str = "defects";

pub fn workflows() -> Vec<WorkflowSummary> {
    vec![
        WorkflowSummary {
            id: WorkflowId::new(WF),
            name: "Defect labelling".into(),
            team: "acme".into(),
            revision: 3,
            stages: 6,
            items: 120,
            waiting: 40,
            in_delivery: 12,
            failed: 3,
            done: 65,
            updated_at: ago(3600),
        },
        WorkflowSummary {
            id: WorkflowId::new("intake"),
            name: "Intake checks".into(),
            team: "acme".into(),
            revision: 1,
            stages: 3,
            items: 7,
            waiting: 0,
            in_delivery: 0,
            failed: 0,
            done: 7,
            updated_at: ago(7200),
        },
        WorkflowSummary {
            id: WorkflowId::new("audit-trail"),
            name: "Audit trail".into(),
            team: "ops".into(),
            revision: 2,
            stages: 2,
            items: 0,
            waiting: 0,
            in_delivery: 0,
            failed: 0,
            done: 0,
            updated_at: ago(9000),
        },
    ]
}

fn stage(id: &str, name: &str, kind: StageKind) -> StageSummary {
    StageSummary {
        id: StageId::new(id),
        name: name.into(),
        kind,
        edges: vec![],
        items: 0,
        waiting: 0,
        active: 0,
        in_delivery: 0,
        failed: 0,
        done: 0,
        paused: false,
        paused_reason: None,
        deliveries: BTreeMap::new(),
        needs_assignment: false,
        webhook: None,
        held_until: None,
        held_reason: None,
        concurrency_limit: None,
        drain_seconds: None,
    }
}

/// The stages of [`WF`]: a dataset waiting for assignment, two webhook stages (one paused,
/// one with failures and retries), an annotate stage and the end.
pub fn stages() -> WorkflowDetail {
    let mut dataset = stage("dataset", "Weld inspection images", StageKind::Dataset);
    dataset.items = 40;
    dataset.waiting = 40;
    dataset.needs_assignment = true;
    dataset.edges = vec![("next".into(), StageId::new("validate"))];
    let mut validate = stage("validate", "Validate", StageKind::Webhook);
    validate.items = 15;
    validate.in_delivery = 12;
    validate.failed = 3;
    validate.deliveries = BTreeMap::from([
        ("failed".into(), 3),
        ("retry_scheduled".into(), 2),
        ("succeeded".into(), 50),
    ]);
    let mut annotate = stage("annotate", "Annotate defects", StageKind::Annotate);
    annotate.items = 5;
    annotate.active = 5;
    let mut export = stage("export", "Export", StageKind::Webhook);
    export.paused = true;
    export.paused_reason = Some("operator".into());
    export.deliveries = BTreeMap::from([("succeeded".into(), 15)]);
    let mut done = stage("done", "Complete", StageKind::Complete);
    done.items = 65;
    done.done = 65;
    let review = stage("review", "Review", StageKind::Review);
    WorkflowDetail {
        summary: workflows().remove(0),
        stage_list: vec![dataset, validate, annotate, review, export, done],
    }
}

pub fn item_row(i: usize) -> ItemRow {
    ItemRow {
        id: ItemId::new(format!("item-{i:03}")),
        name: format!("weld_{i:04}.jpg"),
        workflow: WorkflowId::new(WF),
        stage: StageId::new("dataset"),
        state: ItemState::Waiting,
        version: 10 + i as i64,
        tags: vec!["night-shift".into()],
        entered_at: ago(3600 - i as i64 * 60),
        updated_at: ago(60),
        cursor: ItemCursor::for_tests(&format!("{i:06}"), i as i64),
    }
}

/// `n` items waiting in the dataset stage, oldest first.
pub fn items(n: usize) -> Vec<ItemRow> {
    (1..=n).map(item_row).collect()
}

pub fn delivery(i: usize, state: DeliveryState) -> DeliverySummary {
    let (status, kind) = match state {
        DeliveryState::Succeeded => (Some(200), None),
        DeliveryState::Failed => (Some(500), Some(ErrorKind::HttpStatus)),
        DeliveryState::RetryScheduled => (None, Some(ErrorKind::Timeout)),
        _ => (None, None),
    };
    DeliverySummary {
        id: DeliveryId::new(format!("msg_{i:04}")),
        item_id: Some(ItemId::new(format!("item-{i:03}"))),
        item_name: Some(format!("weld_{i:04}.jpg")),
        workflow: WorkflowId::new(WF),
        stage: StageId::new("validate"),
        event: EventType::StageWebhook,
        state,
        trigger: DeliveryTrigger::Assign,
        attempts: if status.is_some() || kind.is_some() {
            2
        } else {
            0
        },
        last_status: status,
        last_error_kind: kind,
        last_attempt_at: Some(ago(30)),
        last_error_message: match kind {
            Some(ErrorKind::Timeout) => Some("timed out after 2 s".into()),
            Some(_) => Some("500 Internal Server Error".into()),
            None => None,
        },
        next_attempt_at: (state == DeliveryState::RetryScheduled)
            .then(|| now() + Duration::seconds(4)),
        refire_of: None,
        cancel_reason: None,
        created_at: ago(600 - i as i64),
        updated_at: ago(30),
    }
}

/// Deliveries in every state, newest first.
pub fn deliveries() -> Vec<DeliverySummary> {
    let states = [
        DeliveryState::Failed,
        DeliveryState::Succeeded,
        DeliveryState::RetryScheduled,
        DeliveryState::Pending,
        DeliveryState::InFlight,
        DeliveryState::Failed,
        DeliveryState::Cancelled,
    ];
    states
        .iter()
        .enumerate()
        .map(|(i, s)| delivery(i + 1, *s))
        .collect()
}

pub fn deliveries_data() -> ViewData {
    let rows = deliveries();
    let cursors = (1..=rows.len() as i64)
        .map(crate::store::DeliveryCursor::for_tests)
        .collect();
    ViewData::Deliveries {
        rows,
        cursors,
        more: false,
    }
}

pub fn item_detail() -> ItemDetail {
    let row = item_row(1);
    ItemDetail {
        item: Item {
            id: row.id.clone(),
            workflow: row.workflow.clone(),
            stage: StageId::new("validate"),
            state: ItemState::InDelivery,
            name: row.name.clone(),
            path: "/line-3/2024-09-07".into(),
            dataset: DatasetRef {
                name: "Weld inspection".into(),
                slug: "weld-inspection".into(),
            },
            tags: vec!["night-shift".into(), "urgent".into()],
            properties: serde_json::json!({"camera": "cam-south-1", "line": 3})
                .as_object()
                .cloned()
                .unwrap(),
            slots: vec![],
            annotations: vec![
                serde_json::json!({"id": "f93aa8b7-b215-519a-ae41-bde49e0d6410", "name": "crack", "bounding_box": {"x": 1, "y": 2, "w": 3, "h": 4}}),
                serde_json::json!({"id": "0f309c56-8abe-5223-b624-82a0a8c29194", "name": "urgent", "tag": {}}),
            ],
            version: 12,
            created_at: ago(7200),
            updated_at: ago(120),
        },
        history: vec![
            HistoryEntry {
                at: ago(7200),
                from: None,
                to: StageId::new("dataset"),
                cause: HistoryCause::Import,
                operator: Some("ana".into()),
                revision: 1,
                delivery_id: None,
            },
            HistoryEntry {
                at: ago(120),
                from: Some(StageId::new("dataset")),
                to: StageId::new("validate"),
                cause: HistoryCause::Assign,
                operator: Some("ana".into()),
                revision: 3,
                delivery_id: Some(DeliveryId::new("msg_0001")),
            },
        ],
        deliveries: vec![
            delivery(1, DeliveryState::Failed),
            delivery(8, DeliveryState::Succeeded),
        ],
    }
}

pub fn delivery_detail() -> DeliveryDetail {
    let attempt = |n: i64, status: u16, body: &str| AttemptRecord {
        number: n,
        trigger: AttemptTrigger::Scheduled,
        counted: true,
        started_at: ago(90 - n * 30),
        duration_ms: Some(40 + n),
        url: "http://127.0.0.1:9000/validate?source=hookops".into(),
        request_headers: vec![
            ("content-type".into(), "application/json".into()),
            ("webhook-id".into(), "msg_0001".into()),
            ("authorization".into(), "****".into()),
        ],
        status: Some(status),
        response_headers: vec![("content-type".into(), "application/json".into())],
        response_body: Some(body.into()),
        error_kind: (status >= 300).then_some(ErrorKind::HttpStatus),
        error_message: (status >= 300).then(|| format!("{status} Internal Server Error")),
    };
    DeliveryDetail {
        summary: delivery(1, DeliveryState::Failed),
        item_version: Some(11),
        cancelled_by: None,
        body: serde_json::json!({
            "event": "stage.webhook",
            "item": {"id": "item-001", "name": "weld_0001.jpg"},
            "stage": {"id": "validate"}
        }),
        attempt_log: vec![
            attempt(1, 500, "{\"ok\":false,\"status\":500}"),
            attempt(2, 500, "{\"ok\":false,\n \"status\":500}"),
        ],
    }
}

pub fn audit() -> Vec<AuditEntry> {
    vec![
        AuditEntry {
            at: ago(60),
            operator: "ana".into(),
            action: "assign".into(),
            target: "defects/validate".into(),
            filter: Some("--from-stage dataset".into()),
            count: 40,
            id: 3,
            via: None,
            outcome: None,
            matched: None,
            ids: None,
        },
        AuditEntry {
            at: ago(300),
            operator: "bo".into(),
            action: "refire".into(),
            target: "msg_0001".into(),
            filter: None,
            count: 1,
            id: 2,
            via: None,
            outcome: None,
            matched: None,
            ids: None,
        },
        AuditEntry {
            at: ago(900),
            operator: "ana".into(),
            action: "pause".into(),
            target: "defects/export".into(),
            filter: None,
            count: 1,
            id: 1,
            via: None,
            outcome: None,
            matched: None,
            ids: None,
        },
    ]
}

/// A health report with one check in each state.
pub fn health() -> crate::store::HealthReport {
    use crate::store::{Check, CheckStatus};
    let check = |name: &'static str, status: CheckStatus, detail: &str, repairable: bool| Check {
        name,
        status,
        detail: detail.into(),
        repairable,
    };
    crate::store::HealthReport {
        path: "/srv/hookops/ops.db".into(),
        size_bytes: 3 << 20,
        ok: false,
        checks: vec![
            check("integrity", CheckStatus::Ok, "ok", false),
            check("schema", CheckStatus::Ok, "version 4", false),
            check(
                "counters",
                CheckStatus::Fail,
                "2 stage counters disagree with the rows",
                true,
            ),
            check(
                "paused",
                CheckStatus::Warn,
                "stage defects/export is paused",
                false,
            ),
            check("dispatcher", CheckStatus::Skipped, "not checked", false),
        ],
        repaired: vec![],
    }
}

/// An attempt event for the log pane.
pub fn attempt(
    delivery: usize,
    number: i64,
    status: Option<u16>,
    state: DeliveryState,
) -> AttemptEvent {
    AttemptEvent {
        at: ago(100 - delivery as i64),
        delivery_id: DeliveryId::new(format!("msg_{delivery:04}")),
        event: EventType::StageWebhook,
        workflow: WorkflowId::new(WF),
        stage: StageId::new("validate"),
        item_id: Some(ItemId::new(format!("item-{delivery:03}"))),
        item_name: Some(format!("weld_{delivery:04}.jpg")),
        number,
        trigger: AttemptTrigger::Scheduled,
        attempts: number,
        max_attempts: 4,
        status,
        error_kind: match status {
            Some(s) if s < 300 => None,
            Some(_) => Some(ErrorKind::HttpStatus),
            None => Some(ErrorKind::Timeout),
        },
        error_message: match status {
            Some(s) if s < 300 => None,
            Some(s) => Some(format!("{s} Internal Server Error")),
            None => Some("timed out after 2 s".into()),
        },
        duration_ms: 20 + delivery as i64,
        url: "http://127.0.0.1:9000/validate?source=hookops".into(),
        response_excerpt: status.map(|s| format!("{{\"status\": {s}, \"note\": \"seen\"}}")),
        state,
        next_attempt_at: (state == DeliveryState::RetryScheduled)
            .then(|| now() + Duration::seconds(3)),
        routed_to: (state == DeliveryState::Succeeded).then(|| StageId::new("triage")),
        paused_stage: false,
        lease_lost: false,
    }
}

/// A handful of attempts: a success, a retry, a failure.
pub fn attempts() -> Vec<AttemptEvent> {
    vec![
        attempt(1, 1, Some(500), DeliveryState::RetryScheduled),
        attempt(2, 1, Some(200), DeliveryState::Succeeded),
        attempt(3, 1, None, DeliveryState::RetryScheduled),
        attempt(1, 2, Some(500), DeliveryState::Failed),
        attempt(4, 1, Some(200), DeliveryState::Succeeded),
    ]
}

// ---------------------------------------------------------------------------------------------
// Driving the state
// ---------------------------------------------------------------------------------------------

pub fn ev(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

pub fn press(app: &mut App, code: KeyCode) -> Vec<Effect> {
    update(app, Msg::Key(ev(code)))
}

pub fn ch(app: &mut App, c: char) -> Vec<Effect> {
    press(app, KeyCode::Char(c))
}

/// Types every character of `s`, returning the effects of the last one.
pub fn type_str(app: &mut App, s: &str) -> Vec<Effect> {
    let mut fx = vec![];
    for c in s.chars() {
        fx = ch(app, c);
    }
    fx
}

pub fn release(code: KeyCode) -> KeyEvent {
    KeyEvent::new_with_kind(code, KeyModifiers::NONE, KeyEventKind::Release)
}

/// Answers the load the current view asked for.
pub fn load(app: &mut App, data: ViewData) {
    let view = app.view().unwrap().id;
    update(
        app,
        Msg::Loaded {
            view,
            data,
            append: false,
        },
    );
}

/// A console on the workflows view, loaded.
pub fn on_workflows(read_only: bool) -> App {
    let (mut app, _) = App::new(read_only);
    load(&mut app, ViewData::Workflows(workflows()));
    app
}

/// A console on the stages of [`WF`], loaded (workflows underneath).
pub fn on_stages(read_only: bool) -> App {
    let mut app = on_workflows(read_only);
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Stages(Box::new(stages())));
    app
}

/// A console on the dataset stage's items (stages and workflows underneath).
pub fn on_items(read_only: bool, n: usize) -> App {
    let mut app = on_stages(read_only);
    press(&mut app, KeyCode::Enter);
    load(
        &mut app,
        ViewData::Items {
            rows: items(n),
            more: false,
        },
    );
    app
}

/// A console on the failed deliveries of [`WF`] (via `:deliveries failed` from the stages).
pub fn on_deliveries(read_only: bool) -> App {
    let mut app = on_stages(read_only);
    ch(&mut app, ':');
    type_str(&mut app, "deliveries failed");
    press(&mut app, KeyCode::Enter);
    load(&mut app, deliveries_data());
    app
}

pub fn with_attempts(app: &mut App) {
    for a in attempts() {
        update(app, Msg::Attempt(Box::new(a)));
    }
}

// ---------------------------------------------------------------------------------------------
// Screens and drawing
// ---------------------------------------------------------------------------------------------

/// Header figures as the executor would report them.
pub fn header() -> super::state::Header {
    super::state::Header {
        db: "/srv/hookops/ops.db".into(),
        dispatcher: "dispatcher: this process ×64".into(),
        dispatcher_warning: false,
        counts: vec![
            (DeliveryState::Pending, 17),
            (DeliveryState::InFlight, 8),
            (DeliveryState::RetryScheduled, 5),
            (DeliveryState::Failed, 3),
        ],
        db_bytes: 1 << 20,
        file_problem: None,
        holds: Vec::new(),
    }
}

/// Header, throughput history and a few attempts: what every screen shows around its view.
pub fn dress(app: &mut App) {
    update(app, Msg::Header(header()));
    let focus = app.focus_log;
    app.focus_log = false;
    for n in [0u64, 3, 9, 14, 20, 18, 25, 31, 12, 4, 0, 7] {
        update(app, Msg::Tick);
        *app.rate.back_mut().unwrap() += n;
        *app.fail_rate.back_mut().unwrap() += n / 4;
    }
    with_attempts(app);
    app.focus_log = focus;
    app.flash = None;
}

fn dressed(mut app: App) -> App {
    dress(&mut app);
    app
}

/// Every screen of the console, each from fixed data, by name.
pub fn screens() -> Vec<(&'static str, App)> {
    let mut out: Vec<(&'static str, App)> = Vec::new();
    out.push(("workflows", dressed(on_workflows(false))));
    out.push(("stages", {
        let mut app = dressed(on_stages(false));
        ch(&mut app, 'j');
        app
    }));
    out.push(("items", {
        let mut app = dressed(on_items(false, 30));
        ch(&mut app, ' ');
        ch(&mut app, ' ');
        ch(&mut app, 'j');
        app
    }));
    out.push(("item", {
        let mut app = on_items(false, 3);
        press(&mut app, KeyCode::Enter);
        load(&mut app, ViewData::Item(Box::new(item_detail())));
        dressed(app)
    }));
    out.push(("deliveries", {
        let mut app = dressed(on_deliveries(false));
        ch(&mut app, 'j');
        ch(&mut app, ' ');
        app
    }));
    out.push(("delivery", {
        let mut app = on_deliveries(false);
        press(&mut app, KeyCode::Enter);
        load(&mut app, ViewData::Delivery(Box::new(delivery_detail())));
        dressed(app)
    }));
    out.push(("audit", {
        let mut app = on_workflows(false);
        ch(&mut app, ':');
        type_str(&mut app, "audit");
        press(&mut app, KeyCode::Enter);
        load(&mut app, ViewData::Audit(audit()));
        dressed(app)
    }));
    out.push(("help", {
        let mut app = dressed(on_items(false, 5));
        ch(&mut app, '?');
        app
    }));
    out.push(("picker", {
        let mut app = dressed(on_items(false, 5));
        ch(&mut app, ' ');
        ch(&mut app, ' ');
        ch(&mut app, 'a');
        type_str(&mut app, "at");
        press(&mut app, KeyCode::Down);
        app
    }));
    out.push(("confirm", {
        let mut app = dressed(on_items(false, 5));
        ch(&mut app, 'a');
        type_str(&mut app, "validate");
        press(&mut app, KeyCode::Enter);
        app
    }));
    // Three selected, one of which a reload no longer shows: named, and the hidden one counted.
    out.push(("confirm_names_and_hidden", {
        let mut app = dressed(on_items(false, 5));
        ch(&mut app, ' ');
        ch(&mut app, ' ');
        ch(&mut app, ' ');
        load(
            &mut app,
            ViewData::Items {
                rows: items(5).into_iter().skip(1).collect(),
                more: false,
            },
        );
        ch(&mut app, 'a');
        type_str(&mut app, "validate");
        press(&mut app, KeyCode::Enter);
        app
    }));
    out.push(("typed_confirm", {
        let mut app = dressed(on_deliveries(false));
        ch(&mut app, 'F');
        let filter = crate::store::DeliveryFilter {
            workflow: Some(WorkflowId::new(WF)),
            state: Some(DeliveryState::Failed),
            ..Default::default()
        };
        update(
            &mut app,
            Msg::Counted {
                action: BulkAction::Refire,
                filter,
                count: 42,
            },
        );
        type_str(&mut app, "4");
        app
    }));
    out.push(("popup", {
        let mut app = dressed(on_stages(false));
        ch(&mut app, 'j');
        ch(&mut app, 't');
        update(
            &mut app,
            Msg::TestResult {
                title: "test defects/validate".into(),
                text: "200 OK in 12 ms\n\n{\"ok\":true}".into(),
            },
        );
        app
    }));
    out.push(("failures_by_cause", dressed(on_failures(false))));
    out.push(("log_focused", {
        let mut app = dressed(on_stages(false));
        press(&mut app, KeyCode::Tab);
        ch(&mut app, 'k');
        ch(&mut app, 'k');
        app
    }));
    out.push(("log_paused_filtered", {
        let mut app = dressed(on_stages(false));
        press(&mut app, KeyCode::Tab);
        ch(&mut app, 'P');
        update(
            &mut app,
            Msg::Attempt(Box::new(attempt(9, 1, Some(200), DeliveryState::Succeeded))),
        );
        ch(&mut app, '/');
        type_str(&mut app, "500");
        press(&mut app, KeyCode::Enter);
        app
    }));
    out.push(("log_hidden", {
        let mut app = dressed(on_stages(false));
        ch(&mut app, 'l');
        app
    }));
    out.push(("read_only", {
        let mut app = dressed(on_stages(true));
        ch(&mut app, 'a');
        app
    }));
    out.push(("filter_line", {
        let mut app = dressed(on_stages(false));
        ch(&mut app, '/');
        type_str(&mut app, "web");
        app
    }));
    out.push(("command_line", {
        let mut app = dressed(on_stages(false));
        ch(&mut app, ':');
        type_str(&mut app, "deliveries fa");
        app
    }));
    out.push(("flash_error", {
        let mut app = dressed(on_workflows(false));
        ch(&mut app, ':');
        type_str(&mut app, "nope");
        press(&mut app, KeyCode::Enter);
        app
    }));
    out.push(("loading", {
        let (mut app, _) = App::new(false);
        dress(&mut app);
        app
    }));
    out.push(("load_failed", {
        let (mut app, _) = App::new(false);
        load(&mut app, ViewData::Failed("database is locked".into()));
        dressed(app)
    }));
    out.push(("empty", {
        let mut app = on_stages(false);
        press(&mut app, KeyCode::Enter);
        load(
            &mut app,
            ViewData::Items {
                rows: vec![],
                more: false,
            },
        );
        dressed(app)
    }));
    out.push(("nothing_matches", {
        let mut app = dressed(on_workflows(false));
        ch(&mut app, '/');
        type_str(&mut app, "zzz");
        press(&mut app, KeyCode::Enter);
        app
    }));
    out.push(("health", {
        let mut app = on_workflows(false);
        ch(&mut app, ':');
        type_str(&mut app, "health");
        press(&mut app, KeyCode::Enter);
        load(&mut app, ViewData::Health(Box::new(health())));
        dressed(app)
    }));
    out.push(("no_dispatcher", {
        let mut app = dressed(on_workflows(false));
        let mut h = header();
        h.dispatcher = "no dispatcher running: deliveries are queued".into();
        h.dispatcher_warning = true;
        update(&mut app, Msg::Header(h));
        app.log = Default::default();
        app
    }));
    out
}

/// Draws `app` on a `w`×`h` test terminal with the monochrome theme at [`now`].
pub fn render(app: &mut App, w: u16, h: u16) -> ratatui::buffer::Buffer {
    render_with(app, w, h, &super::theme::Theme::mono())
}

pub fn render_with(
    app: &mut App,
    w: u16,
    h: u16,
    theme: &super::theme::Theme,
) -> ratatui::buffer::Buffer {
    let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).unwrap();
    t.draw(|f| super::view::draw(f, app, theme, now())).unwrap();
    t.backend().buffer().clone()
}

/// The buffer as lines of text (a wide character's hidden trailing cell is skipped).
pub fn text(buf: &ratatui::buffer::Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in 0..area.height {
        let mut skip = 0;
        let mut line = String::new();
        for x in 0..area.width {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let sym = buf[(x, y)].symbol();
            skip = ratatui::text::Span::raw(sym).width().saturating_sub(1);
            line.push_str(sym);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Three causes of failure in the `export` stage of [`WF`].
pub fn failure_groups() -> Vec<crate::store::FailureGroup> {
    let group = |status: Option<u16>, kind: Option<ErrorKind>, count: i64, message: &str| {
        crate::store::FailureGroup {
            workflow: WorkflowId::new(WF),
            stage: StageId::new("export"),
            error_kind: kind,
            status,
            message: Some(message.into()),
            count,
            items: count,
            first_at: Some(ago(3600)),
            last_at: Some(ago(60)),
        }
    };
    vec![
        group(
            Some(503),
            Some(ErrorKind::HttpStatus),
            2400,
            "503 Service Unavailable",
        ),
        group(None, Some(ErrorKind::Timeout), 550, "timed out after #s"),
        group(Some(400), Some(ErrorKind::HttpStatus), 50, "invalid label"),
    ]
}

/// A console on the failures of [`WF`] by cause (`:failures`).
pub fn on_failures(read_only: bool) -> App {
    let mut app = on_stages(read_only);
    ch(&mut app, ':');
    type_str(&mut app, "failures");
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Failures(failure_groups()));
    app
}
