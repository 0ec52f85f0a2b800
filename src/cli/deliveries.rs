//! `hookops deliveries` (and `deliveries export`), `delivery show|cancel`, `refire`, `test-webhook`,
//! `stage pause|resume`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::args::{BULK_CHUNK, FilterArgs, ListArgs, confirm, filter, parse_since};
use super::{CliError, Global, output, require_workflow};
use crate::dispatch::send_manual;
use crate::model::AttemptEvent;
use crate::model::{DeliveryId, DeliveryState, StageId};
use crate::store::Store;

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
    Cancel(CancelArgs),
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
        DeliveryCommand::Cancel(a) => cancel(g, a),
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

/// A test or a replay of a rate-limited stage waits for its token (issue 21): say so when
/// that is a second or more.
fn say_wait(lease: &crate::store::Lease) {
    let Some(at) = lease.not_before else { return };
    let wait = at - chrono::Utc::now().timestamp_millis();
    if wait >= 1000 {
        eprintln!(
            "waiting {} s for a token of stage {}'s rate limit",
            (wait + 999) / 1000,
            lease.stage
        );
    }
}

fn replay(g: &Global, store: &Store, ids: Vec<DeliveryId>, json: bool) -> Result<(), CliError> {
    let rt = super::deliveries_runtime()?;
    let mut failures = 0;
    let mut events = Vec::new();
    for id in ids {
        let lease = store.begin_replay(&id, &g.operator())?;
        say_wait(&lease);
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
    say_wait(&lease);
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

/// `hookops deliveries`: a listing, or `deliveries export`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeliveriesArgs {
    #[command(flatten)]
    pub list: ListArgs,
    #[command(subcommand)]
    pub command: Option<DeliveriesCommand>,
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Write matching deliveries as JSON Lines, each with every attempt (secrets masked)
    #[command(after_long_help = super::examples::DELIVERIES_EXPORT)]
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Write to this file (created 0600) instead of stdout
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite --output when it exists
    #[arg(long)]
    pub force: bool,
    /// At most N deliveries, newest first (0 = all)
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Deliveries to cancel
    pub ids: Vec<String>,
    /// Without ids: every open delivery matching these filters
    #[command(flatten)]
    pub filter: FilterArgs,
    /// At most N deliveries (oldest first)
    #[arg(long, value_parser = super::action_limit)]
    pub limit: Option<usize>,
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn deliveries(g: &Global, a: DeliveriesArgs) -> Result<(), CliError> {
    match a.command {
        None => list(g, a.list),
        Some(DeliveriesCommand::Export(e)) => export(g, e),
    }
}

/// Creates `path` with mode 0600 for writing; an existing file only with `force`.
fn create_private(path: &Path, force: bool) -> Result<std::fs::File, CliError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::failure(format!(
                "{} exists; pass --force to overwrite it",
                path.display()
            ))
        } else {
            CliError::failure(format!("cannot create {}: {e}", path.display()))
        }
    })
}

fn export(g: &Global, a: ExportArgs) -> Result<(), CliError> {
    let store = g.open()?;
    let f = a.filter.filter()?;
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(create_private(p, a.force)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let limit = (a.limit != 0).then_some(a.limit);
    let written = store.export_deliveries(&f, limit, &mut out)?;
    if let Some(p) = &a.output {
        eprintln!("exported {written} delivery(ies) to {}", p.display());
    }
    Ok(())
}

pub fn cancel(g: &Global, a: CancelArgs) -> Result<(), CliError> {
    let store = g.open()?;
    let bulk = a.ids.is_empty();
    let ids: Vec<DeliveryId> = if bulk {
        if a.filter.is_empty() {
            return Err(CliError::usage(
                "name the deliveries to cancel, or select them with filters such as --state retry_scheduled --workflow ID",
            ));
        }
        super::check_scope(
            &store,
            a.filter.workflow.as_ref(),
            a.filter.stage.as_ref(),
            "delivery cancel",
        )?;
        store.open_deliveries(&a.filter.filter()?, a.limit)?
    } else {
        if !a.filter.is_empty() || a.limit.is_some() {
            return Err(CliError::usage("give delivery ids or filters, not both"));
        }
        a.ids.iter().map(|i| DeliveryId::new(i.as_str())).collect()
    };
    if ids.is_empty() {
        outln!("nothing to cancel: no open delivery matches");
        return Ok(());
    }
    store.ensure_writable("cancel")?;
    if bulk && !a.yes && !confirm(&format!("cancel {} open delivery(ies)", ids.len()))? {
        return Err(CliError::failure("nothing was cancelled"));
    }
    let mut report = crate::store::CancelReport::default();
    let mut progress = output::Progress::new("cancelled", ids.len(), a.json);
    for (i, chunk) in ids.chunks(BULK_CHUNK).enumerate() {
        let r = store.cancel_deliveries(chunk, &g.operator())?;
        report.cancelled += r.cancelled;
        report.routed.extend(r.routed);
        report.refused.extend(r.refused);
        progress.update(((i + 1) * BULK_CHUNK).min(ids.len()));
    }
    drop(progress);
    if a.json {
        output::json(&report)?;
    } else {
        outln!(
            "cancelled {} delivery(ies); {} item(s) routed on failure",
            report.cancelled,
            report.routed.len()
        );
        for (item, to) in &report.routed {
            outln!("  {item} → {to}");
        }
    }
    for (id, why) in &report.refused {
        eprintln!("refused {id}: {why}");
    }
    if !report.refused.is_empty() {
        return Err(CliError::failure(format!(
            "{} of {} delivery(ies) were refused",
            report.refused.len(),
            ids.len()
        )));
    }
    Ok(())
}
