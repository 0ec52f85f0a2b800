//! `hookops deliveries`, `delivery show`, `refire`, `test-webhook`, `stage pause|resume`.

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};

use super::{CliError, Global, output, require_workflow};
use crate::dispatch::send_manual;
use crate::model::AttemptEvent;
use crate::model::{DeliveryId, DeliveryState, EventType, ItemId, StageId, WorkflowId};
use crate::store::{DeliveryFilter, Store};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// pending, in_flight, retry_scheduled, succeeded, failed or cancelled
    #[arg(long)]
    pub state: Option<DeliveryState>,
    /// Only deliveries of this stage (id; without --workflow, that stage id in every workflow)
    #[arg(long)]
    pub stage: Option<String>,
    /// Only deliveries of this workflow (id)
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only deliveries of this item (id)
    #[arg(long)]
    pub item: Option<String>,
    /// stage.webhook or webhook.test
    #[arg(long)]
    pub event: Option<EventType>,
    /// Error kind of the last attempt: connect, timeout, tls, protocol, redirect, http_status, body, policy, interrupted
    #[arg(long, value_name = "KIND")]
    pub error_kind: Option<crate::model::ErrorKind>,
    /// HTTP status of the last attempt, e.g. 503
    #[arg(long, value_name = "CODE")]
    pub status: Option<u16>,
    /// At most N rows, newest first (0 = all)
    #[arg(long, default_value_t = super::item::DEFAULT_LIMIT)]
    pub limit: usize,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeliveryCommand {
    /// Show a delivery: every attempt with request and response
    #[command(after_long_help = super::examples::DELIVERY_SHOW)]
    Show {
        /// The delivery's id (msg_…)
        id: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Cancel open deliveries by id or by filter; items route along on_failure
    #[command(after_long_help = super::examples::DELIVERY_CANCEL)]
    Cancel(super::ops::CancelArgs),
}

#[derive(Debug, Args)]
pub struct RefireArgs {
    /// Deliveries to re-fire (or replay)
    pub ids: Vec<String>,
    /// Every failed delivery matching the filters (the latest of each item)
    #[arg(long)]
    pub failed: bool,
    /// With --failed: only this workflow's deliveries (id)
    #[arg(long, requires = "failed")]
    pub workflow: Option<String>,
    /// With --failed: only this stage's deliveries (id; needs --workflow)
    #[arg(long, requires = "failed")]
    pub stage: Option<String>,
    /// Only deliveries created at or after this time (RFC 3339, or a duration like 2h ago)
    #[arg(long, requires = "failed")]
    pub since: Option<String>,
    /// At most N deliveries
    #[arg(long, requires = "failed", value_parser = super::action_limit)]
    pub limit: Option<usize>,
    /// Re-send the stored bytes as a manual attempt instead; the item does not move
    #[arg(long)]
    pub replay: bool,
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The workflow of the stage (id; required)
    #[arg(long)]
    pub workflow: Option<String>,
    /// The webhook stage to test (id)
    #[arg(long)]
    pub stage: String,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// Keep a webhook stage's deliveries pending until it is resumed
    #[command(after_long_help = super::examples::STAGE_PAUSE)]
    Pause(StageArgs),
    /// Resume a paused stage (resets its failure count)
    #[command(after_long_help = super::examples::STAGE_RESUME)]
    Resume(StageArgs),
}

#[derive(Debug, Args)]
pub struct StageArgs {
    /// The workflow of the stage (id; required)
    #[arg(long)]
    pub workflow: Option<String>,
    /// The webhook stage (id)
    pub stage: String,
}

fn filter(
    workflow: Option<&String>,
    stage: Option<&String>,
    state: Option<DeliveryState>,
    item: Option<&String>,
    event: Option<EventType>,
) -> DeliveryFilter {
    DeliveryFilter {
        workflow: workflow.map(|w| WorkflowId::new(w.as_str())),
        stage: stage.map(|s| StageId::new(s.as_str())),
        state,
        item: item.map(|i| ItemId::new(i.as_str())),
        event,
        ..DeliveryFilter::default()
    }
}

pub fn list(g: &Global, a: ListArgs) -> Result<(), CliError> {
    let store = g.open()?;
    let mut f = filter(
        a.workflow.as_ref(),
        a.stage.as_ref(),
        a.state,
        a.item.as_ref(),
        a.event,
    );
    f.error_kind = a.error_kind;
    f.status = a.status;
    let limit = if a.limit == 0 { usize::MAX } else { a.limit };
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let want = (limit - rows.len()).min(5000);
        let page = store.list_deliveries(&f, after, want + 1)?;
        let more = page.len() > want;
        after = page.get(want.saturating_sub(1)).map(|(_, c)| *c);
        rows.extend(page.into_iter().take(want).map(|(d, _)| d));
        if !more || rows.len() >= limit {
            if more {
                let total = store.count_deliveries(&f)?;
                eprintln!(
                    "{} more delivery(ies) match; use --limit 0 to see all",
                    total - rows.len() as i64
                );
            }
            break;
        }
    }
    if a.json {
        return output::json(&rows);
    }
    let mut t = output::Table::new(&[
        "ID", "STAGE", "ITEM", "NAME", "STATE", "ATTEMPTS", "LAST", "EVENT", "CREATED",
    ]);
    for d in rows {
        t.row(vec![
            d.id.to_string(),
            d.stage.to_string(),
            d.item_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
            output::clean(d.item_name.as_deref().unwrap_or("-")),
            d.state.to_string(),
            d.attempts.to_string(),
            last_result(d.last_status, d.last_error_kind),
            d.event.to_string(),
            output::time(&d.created_at),
        ]);
    }
    t.print();
    Ok(())
}

fn last_result(status: Option<u16>, kind: Option<crate::model::ErrorKind>) -> String {
    match (status, kind) {
        (Some(s), _) => s.to_string(),
        (None, Some(k)) => k.to_string(),
        (None, None) => "-".into(),
    }
}

pub fn run(g: &Global, c: DeliveryCommand) -> Result<(), CliError> {
    match c {
        DeliveryCommand::Show { id, json } => show(g, &DeliveryId::new(id), json),
        DeliveryCommand::Cancel(a) => super::ops::cancel(g, a),
    }
}

fn show(g: &Global, id: &DeliveryId, json: bool) -> Result<(), CliError> {
    let store = g.open()?;
    let d = store.delivery_detail(id)?;
    if json {
        return output::json(&d);
    }
    let s = &d.summary;
    outln!("delivery  {}", s.id);
    outln!("event     {} ({})", s.event, s.trigger);
    outln!("workflow  {}  stage {}", s.workflow, s.stage);
    if let Some(item) = &s.item_id {
        outln!(
            "item      {} {}",
            item,
            output::clean(s.item_name.as_deref().unwrap_or(""))
        );
    }
    outln!("state     {}  attempts {}", s.state, s.attempts);
    if let Some(t) = s.next_attempt_at {
        outln!("next      {}", output::time(&t));
    }
    if let Some(r) = &s.refire_of {
        outln!("re-fires  {r}");
    }
    if let Some(reason) = s.cancel_reason {
        outln!(
            "cancelled {reason} by {}",
            d.cancelled_by.as_deref().unwrap_or("-")
        );
    }
    for a in &d.attempt_log {
        outln!(
            "\nattempt {} ({}{})  {}  {}",
            a.number,
            a.trigger,
            if a.counted { "" } else { ", not counted" },
            output::time(&a.started_at),
            a.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default()
        );
        outln!("  POST {}", output::clean(&a.url));
        for (k, v) in &a.request_headers {
            outln!("  > {}: {}", output::clean(k), output::clean(v));
        }
        match (a.status, &a.error_message) {
            (Some(st), msg) => outln!(
                "  < {}{}",
                crate::engine::classify::status_message(st),
                msg.as_ref()
                    .filter(|_| a.error_kind == Some(crate::model::ErrorKind::Body))
                    .map(|m| format!(" ({})", output::clean(m)))
                    .unwrap_or_default()
            ),
            (None, Some(msg)) => outln!(
                "  ✗ {}: {}",
                a.error_kind.map(|k| k.to_string()).unwrap_or_default(),
                output::clean(msg)
            ),
            (None, None) => {}
        }
        for (k, v) in &a.response_headers {
            outln!("  < {}: {}", output::clean(k), output::clean(v));
        }
        if let Some(body) = a.response_body.as_ref().filter(|b| !b.is_empty()) {
            let excerpt: String = body.chars().take(500).collect();
            outln!("  < {}", output::clean(&excerpt));
        }
    }
    outln!(
        "\nbody\n{}",
        serde_json::to_string_pretty(&d.body).unwrap_or_default()
    );
    Ok(())
}

/// Asks "Proceed? [y/N]" on the terminal; refuses without one (use --yes in scripts).
pub(super) fn confirm(question: &str) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::failure(format!(
            "{question}: refusing without a terminal to confirm on; pass --yes"
        )));
    }
    eprint!("{question}. Proceed? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::failure(format!("cannot read the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

pub(super) fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, CliError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = s.trim().trim_end_matches("ago").trim();
    humantime::parse_duration(d)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| chrono::Utc::now() - d)
        .ok_or_else(|| {
            CliError::usage(format!(
                "--since `{s}` is neither an RFC 3339 time nor a duration like `2h`"
            ))
        })
}

pub fn refire(g: &Global, a: RefireArgs) -> Result<(), CliError> {
    let store = g.open()?;
    let ids: Vec<DeliveryId> = if a.failed {
        if !a.ids.is_empty() {
            return Err(CliError::usage("give delivery ids or --failed, not both"));
        }
        let what = if a.replay {
            "refire --replay"
        } else {
            "refire"
        };
        super::check_scope(&store, a.workflow.as_ref(), a.stage.as_ref(), what)?;
        let mut f = filter(a.workflow.as_ref(), a.stage.as_ref(), None, None, None);
        f.since = a.since.as_deref().map(parse_since).transpose()?;
        store.failed_deliveries(&f, a.limit)?
    } else {
        if a.ids.is_empty() {
            return Err(CliError::usage(
                "name the deliveries to re-fire, or give --failed with filters",
            ));
        }
        a.ids.iter().map(|i| DeliveryId::new(i.as_str())).collect()
    };
    let verb = if a.replay { "replay" } else { "re-fire" };
    if ids.is_empty() {
        outln!("nothing to {verb}: no delivery matches");
        return Ok(());
    }
    store.ensure_writable(if a.replay { "replay" } else { "refire" })?;
    if a.failed && !a.yes && !confirm(&format!("{verb} {} failed delivery(ies)", ids.len()))? {
        return Err(CliError::failure(format!(
            "{verb} cancelled; nothing was sent"
        )));
    }
    if a.replay {
        return replay(g, &store, ids, a.json);
    }
    let total = ids.len();
    let mut report = crate::store::RefireReport::default();
    let mut progress = output::Progress::new("re-fired", total, a.json);
    for (i, chunk) in ids.chunks(BULK_CHUNK).enumerate() {
        let r = store.refire(chunk, &g.operator())?;
        report.refired += r.refired;
        report.created.extend(r.created);
        report.refused.extend(r.refused);
        progress.update(((i + 1) * BULK_CHUNK).min(total));
    }
    drop(progress);
    if a.json {
        output::json(&report)?;
    } else {
        outln!(
            "re-fired {} delivery(ies); {} new delivery(ies) queued",
            report.refired,
            report.created.len()
        );
    }
    for r in &report.refused {
        eprintln!("refused {}: {}", r.delivery_id, r.reason);
    }
    if !report.refused.is_empty() {
        return Err(CliError::failure(format!(
            "{} of {total} delivery(ies) were refused",
            report.refused.len()
        )));
    }
    Ok(())
}

fn replay(g: &Global, store: &Store, ids: Vec<DeliveryId>, json: bool) -> Result<(), CliError> {
    let rt = super::deliveries_runtime()?;
    let mut failures = 0;
    let mut events = Vec::new();
    for id in ids {
        let lease = store.begin_replay(&id, &g.operator())?;
        let st = store.clone();
        let ev = rt.block_on(send_manual(
            &st,
            lease,
            crate::dispatch::http::DEFAULT_MAX_BODY,
        ))?;
        if ev.status.is_none_or(|s| !(200..300).contains(&s)) {
            failures += 1;
        }
        if !json {
            outln!("{}", attempt_line(&ev));
        }
        events.push(ev);
    }
    if json {
        output::json(&events)?;
    }
    if failures > 0 {
        return Err(CliError::failure(format!(
            "{failures} replay(s) did not get a 2xx"
        )));
    }
    Ok(())
}

pub fn test_webhook(g: &Global, a: TestArgs) -> Result<(), CliError> {
    let wf = require_workflow(&a.workflow, "test-webhook")?;
    let store = g.open()?;
    let lease = store
        .begin_test(&wf, &StageId::new(a.stage.as_str()), &g.operator())
        .map_err(refusal)?;
    let rt = super::deliveries_runtime()?;
    let ev = rt.block_on(send_manual(
        &store,
        lease,
        crate::dispatch::http::DEFAULT_MAX_BODY,
    ))?;
    if a.json {
        output::json(&ev)?;
    } else {
        outln!("{}", attempt_line(&ev));
        let detail = store.delivery_detail(&ev.delivery_id)?;
        if let Some(body) = detail
            .attempt_log
            .last()
            .and_then(|at| at.response_body.as_ref())
            .filter(|b| !b.is_empty())
        {
            let excerpt: String = body.chars().take(500).collect();
            outln!("response: {}", output::clean(&excerpt));
        }
    }
    if ev.status.is_none_or(|s| !(200..300).contains(&s)) {
        return Err(CliError::failure("the test webhook did not get a 2xx"));
    }
    Ok(())
}

pub fn stage(g: &Global, c: StageCommand) -> Result<(), CliError> {
    let (a, pause) = match c {
        StageCommand::Pause(a) => (a, true),
        StageCommand::Resume(a) => (a, false),
    };
    let wf = require_workflow(
        &a.workflow,
        if pause { "stage pause" } else { "stage resume" },
    )?;
    let store = g.open()?;
    let stage = StageId::new(a.stage.as_str());
    let changed = store
        .set_paused(&wf, &stage, pause, &g.operator())
        .map_err(refusal)?;
    let word = if pause { "paused" } else { "resumed" };
    if changed {
        outln!("stage {wf}/{stage} {word}");
    } else {
        outln!("stage {wf}/{stage} was already {word}");
    }
    Ok(())
}

/// Deliveries a bulk re-fire or cancel hands the store at once, between progress updates.
pub(crate) const BULK_CHUNK: usize = 5000;

/// A store error from an action on a stage the operator named correctly: one the stage
/// cannot take (pausing or testing a stage that is not a webhook stage) is a refusal (exit 1),
/// not bad usage; the store calls it `Invalid` because the API answers it 422.
fn refusal(e: crate::store::StoreError) -> CliError {
    CliError::failure(e.to_string())
}

/// One line per attempt, as `serve` prints it: glyph, status, stage, item, attempt n/max.
pub fn attempt_line(e: &AttemptEvent) -> String {
    let (glyph, result) = match (e.status, e.error_kind) {
        (Some(s), _) if (200..300).contains(&s) => ("✓", s.to_string()),
        (Some(s), _) => ("✗", s.to_string()),
        (None, Some(k)) => ("✗", k.to_string()),
        (None, None) => ("?", "-".to_string()),
    };
    let glyph = if e.state == DeliveryState::RetryScheduled {
        "↻"
    } else {
        glyph
    };
    let item = match (&e.item_id, &e.item_name) {
        (Some(id), Some(name)) => format!("{} ({id})", output::clean(name)),
        (Some(id), None) => id.to_string(),
        _ => e.event.to_string(),
    };
    let mut line = format!(
        "{} {glyph} {result} {}/{} {item} {} attempt {}/{} {} ms",
        e.at.format("%H:%M:%SZ"),
        e.workflow,
        e.stage,
        e.delivery_id,
        e.number,
        e.max_attempts,
        e.duration_ms
    );
    if let Some(m) = &e.error_message {
        line.push_str(&format!(": {}", output::clean(m)));
    }
    match (e.state, e.next_attempt_at, &e.routed_to) {
        (DeliveryState::RetryScheduled, Some(t), _) => {
            let secs = (t - chrono::Utc::now()).num_milliseconds().max(0) as f64 / 1000.0;
            line.push_str(&format!(" → retry in {secs:.1} s"));
        }
        (_, _, Some(to)) => line.push_str(&format!(" → {to}")),
        _ => {}
    }
    if e.paused_stage {
        line.push_str(" (stage paused after repeated failures)");
    }
    line
}
