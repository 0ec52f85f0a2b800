//! `hookops deliveries` (and `deliveries export`), `delivery show|cancel`, `refire`, `test-webhook`,
//! `stage pause|resume`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::args::{FilterArgs, ListArgs, confirm};
use super::{CliError, Global, output, require_workflow};
use crate::actions::{self, ActionError, Actor, BulkAction, Control, Selection, Via};
use crate::model::AttemptEvent;
use crate::model::{DeliveryId, DeliveryState, ItemId, StageId, WorkflowId};
use crate::store::{DeliveryFilter, Store};

// Parsed once per run: the size of the filter-bearing variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    #[command(flatten)]
    pub filter: FilterArgs,
    /// At most N deliveries
    #[arg(long, requires = "failed", value_parser = super::action_limit)]
    pub limit: Option<usize>,
    /// Re-send the stored bytes as a manual attempt instead; the item does not move
    #[arg(long)]
    pub replay: bool,
    /// Print what would be touched (the count and the ids) and do nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// A delivery (msg_…): test its stage with its item's document as it is now
    pub id: Option<String>,
    /// The workflow of the stage (id; required with --stage)
    #[arg(long)]
    pub workflow: Option<String>,
    /// The webhook stage to test (id)
    #[arg(long)]
    pub stage: Option<String>,
    /// Send this item's document instead of a sample; without --stage, to the stage of the item's latest delivery
    #[arg(long, value_name = "ID")]
    pub item: Option<String>,
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
    let f = a.filter.filter()?;
    let store = g.open()?;
    if a.follow {
        return follow(&store, &f, a.json);
    }
    if a.group_by.is_some() {
        return group_by_cause(&store, &f, a.limit, a.json);
    }
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

/// `deliveries --follow`: every attempt of a matching delivery as it is committed, in the
/// attempt log's order (`Store::attempts_after` and its cursor, the console log pane's
/// rules: none skipped, none repeated), from now or from `--since`, until interrupted or
/// until standard output closes.
fn follow(store: &Store, f: &DeliveryFilter, json: bool) -> Result<(), CliError> {
    if let Some(e) = crate::actions::filter::follow_refusal(f) {
        return Err(CliError::usage(format!(
            "--{} {}",
            e.field.replace('_', "-"),
            e.message
        )));
    }
    let mut watcher = store.change_watcher()?;
    // From --since: from the first attempt that started then, older ones interleaved after
    // it skipped by the filter.
    let mut after = store.follow_start(f.since)?;
    let mut out = std::io::stdout().lock();
    let mut read = true;
    loop {
        if read {
            let rows = store.attempts_after(after, 5000)?;
            let full = rows.len() == 5000;
            for (cursor, e) in rows {
                after = after.max(cursor);
                if !crate::actions::filter::matches_attempt(f, &e) {
                    continue;
                }
                let line = if json {
                    serde_json::to_string(&e).map_err(|e| CliError::failure(e.to_string()))?
                } else {
                    attempt_line(&e)
                };
                if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                    // The reader went away (a closed pipe): that ends the follow.
                    return Ok(());
                }
            }
            if full {
                continue;
            }
        }
        // The store's change feed (data_version, LISTEN) says when to read again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        read = watcher.changed()?;
    }
}

/// `deliveries --group-by cause`: the failed deliveries the filters select, one row per
/// cause, with the filter flags that select the group (for `refire --failed`).
fn group_by_cause(
    store: &Store,
    f: &DeliveryFilter,
    limit: usize,
    json: bool,
) -> Result<(), CliError> {
    let mut groups = store.failure_groups(f)?;
    // Failed deliveries whose item has been delivered again since are no failure to act on
    // (a re-fire would refuse them): say how many, so the counts add up.
    let failed = store.count_deliveries(&DeliveryFilter {
        state: Some(DeliveryState::Failed),
        ..f.clone()
    })?;
    let grouped: i64 = groups.iter().map(|g| g.count).sum();
    if failed > grouped {
        eprintln!(
            "{} more failed delivery(ies) match whose item has a newer delivery since; `deliveries --state failed` lists them",
            failed - grouped
        );
    }
    let total = groups.len();
    if limit != 0 && total > limit {
        groups.truncate(limit);
        eprintln!(
            "{} more group(s) match; use --limit 0 to see all",
            total - limit
        );
    }
    if json {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            #[serde(flatten)]
            group: &'a crate::store::FailureGroup,
            /// The group as `refire --failed` flags.
            filter: String,
        }
        let rows: Vec<Row> = groups
            .iter()
            .map(|g| Row {
                group: g,
                filter: g.filter(f).as_flags(),
            })
            .collect();
        return output::json(&rows);
    }
    let mut t = output::Table::new(&[
        "COUNT", "ITEMS", "WORKFLOW", "STAGE", "CAUSE", "FIRST", "LAST", "MESSAGE",
    ]);
    for g in &groups {
        t.row(vec![
            g.count.to_string(),
            g.items.to_string(),
            g.workflow.to_string(),
            g.stage.to_string(),
            last_result(g.status, g.error_kind),
            g.first_at.map(|t| output::time(&t)).unwrap_or_default(),
            g.last_at.map(|t| output::time(&t)).unwrap_or_default(),
            output::clean(
                &g.message
                    .as_deref()
                    .unwrap_or("-")
                    .chars()
                    .take(60)
                    .collect::<String>(),
            ),
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
    let action = if a.replay {
        BulkAction::Replay
    } else {
        BulkAction::Refire
    };
    let selection = if a.failed {
        if !a.ids.is_empty() {
            return Err(CliError::usage("give delivery ids or --failed, not both"));
        }
        Selection::Filter {
            filter: a.filter.filter()?,
            limit: a.limit,
        }
    } else if a.ids.is_empty() && a.filter.item.is_some() {
        if !a.filter.only_item() {
            return Err(CliError::usage(
                "with --item and no --failed, only --workflow and --stage narrow it; filters select failed deliveries with --failed",
            ));
        }
        item_latest(&a.filter, "refire")?
    } else {
        if !a.filter.is_empty() {
            return Err(CliError::usage(
                "filters select failed deliveries only with --failed",
            ));
        }
        if a.ids.is_empty() {
            return Err(CliError::usage(
                "name the deliveries to re-fire, an item with --item, or give --failed with filters",
            ));
        }
        Selection::Ids(a.ids.iter().map(|i| DeliveryId::new(i.as_str())).collect())
    };
    bulk(g, action, selection, a.failed && !a.yes, a.dry_run, a.json)
}

/// `--item ID [--workflow W --stage S]`: that item's latest stage delivery, the id form
/// `refire`, `delivery cancel` and `test-webhook` share (the caller has checked that
/// `--item` is given and that only `--workflow` and `--stage` go with it).
fn item_latest(f: &FilterArgs, cmd: &str) -> Result<Selection, CliError> {
    if f.stage.is_some() && f.workflow.is_none() {
        return Err(CliError::usage(format!(
            "{cmd} --stage needs --workflow ID"
        )));
    }
    Ok(Selection::ItemLatest {
        item: ItemId::new(f.item.as_deref().unwrap_or_default()),
        workflow: f.workflow.as_deref().map(WorkflowId::new),
        stage: f.stage.as_deref().map(StageId::new),
    })
}

/// Counts what the selection matches, says so (and asks when `ask`), then acts through the
/// actions layer and renders its report: the one path of `refire`, `refire --replay` and
/// `delivery cancel`.
fn bulk(
    g: &Global,
    action: BulkAction,
    selection: Selection,
    ask: bool,
    dry_run: bool,
    json: bool,
) -> Result<(), CliError> {
    let store = g.open()?;
    let plan = actions::plan(&store, action, selection).map_err(action_error)?;
    let what = format!(
        "{} {} {} delivery(ies){}",
        action.verb(),
        plan.matched,
        action.selects(),
        plan.filter
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(|f| format!(" matching {f}"))
            .unwrap_or_default()
    );
    if dry_run {
        if json {
            return output::json(&plan);
        }
        outln!("would {what}");
        for id in &plan.ids {
            outln!("{id}");
        }
        return Ok(());
    }
    if plan.ids.is_empty() {
        outln!("nothing to {}: no delivery matches", action.verb());
        return Ok(());
    }
    store.ensure_writable(action.as_str())?;
    if ask && !confirm(&what)? {
        return Err(CliError::failure(format!(
            "{} stopped before it began; nothing was done",
            action.verb()
        )));
    }
    let rt = super::deliveries_runtime()?;
    let mut progress = output::Progress::new(action.past(), plan.matched, json);
    let report = actions::execute(
        &store,
        &Actor::new(g.operator(), Via::Cli),
        plan,
        Control {
            stop: None,
            progress: &mut |done, _| progress.update(done),
            rt: Some(rt.handle()),
            max_send_body: crate::dispatch::http::DEFAULT_MAX_BODY,
        },
    )
    .map_err(action_error)?;
    drop(progress);
    if json {
        output::json(&report)?;
    } else {
        match action {
            BulkAction::Refire => outln!(
                "re-fired {} delivery(ies); {} new delivery(ies) queued",
                report.acted,
                report.created.len()
            ),
            BulkAction::Cancel => {
                outln!(
                    "cancelled {} delivery(ies); {} item(s) routed on failure",
                    report.acted,
                    report.routed.len()
                );
                for (item, to) in &report.routed {
                    outln!("  {item} → {to}");
                }
            }
            BulkAction::Replay => {
                for ev in &report.attempts {
                    outln!("{}", attempt_line(ev));
                }
            }
        }
    }
    for r in &report.refused {
        eprintln!("refused {}: {}", r.delivery_id, r.reason);
    }
    if let Some(e) = &report.error {
        return Err(CliError::failure(format!(
            "{} stopped after {} of {}: {e}",
            action.verb(),
            report.processed,
            report.matched
        )));
    }
    if !report.refused.is_empty() {
        return Err(CliError::failure(format!(
            "{} of {} delivery(ies) were refused",
            report.refused.len(),
            report.matched
        )));
    }
    let failures = report
        .attempts
        .iter()
        .filter(|ev| ev.status.is_none_or(|s| !(200..300).contains(&s)))
        .count();
    if failures > 0 {
        return Err(CliError::failure(format!(
            "{failures} replay(s) did not get a 2xx"
        )));
    }
    Ok(())
}

/// An action refused as a whole: bad input is bad usage (exit 2); the store's refusals keep
/// their own codes.
pub(super) fn action_error(e: ActionError) -> CliError {
    match e {
        ActionError::BadInput(m) => CliError::usage(m),
        ActionError::Store(e) => e.into(),
    }
}

pub fn test_webhook(g: &Global, a: TestArgs) -> Result<(), CliError> {
    let of = match (&a.id, &a.stage, &a.item) {
        (Some(_), None, None) if a.workflow.is_none() => actions::TestOf::Delivery(Selection::Ids(
            vec![DeliveryId::new(a.id.as_deref().unwrap_or_default())],
        )),
        (Some(_), _, _) => {
            return Err(CliError::usage(
                "give a delivery id, or --stage and/or --item, not both",
            ));
        }
        (None, Some(stage), item) => actions::TestOf::Stage {
            workflow: require_workflow(&a.workflow, "test-webhook")?,
            stage: StageId::new(stage.as_str()),
            item: item.as_deref().map(ItemId::new),
        },
        (None, None, Some(_)) => actions::TestOf::Delivery(item_latest(
            &FilterArgs {
                item: a.item.clone(),
                workflow: a.workflow.clone(),
                ..FilterArgs::default()
            },
            "test-webhook",
        )?),
        (None, None, None) => {
            return Err(CliError::usage(
                "name what to test: --workflow W --stage S, a delivery id, or --item ID",
            ));
        }
    };
    let store = g.open()?;
    let rt = super::deliveries_runtime()?;
    let r = actions::test_stage(
        &store,
        &Actor::new(g.operator(), Via::Cli),
        of,
        rt.handle(),
        crate::dispatch::http::DEFAULT_MAX_BODY,
    )
    .map_err(|e| match e {
        // A stage that cannot be tested is a refusal (exit 1), not bad usage.
        ActionError::Store(e) => refusal(e),
        ActionError::BadInput(m) => CliError::usage(m),
    })?;
    if a.json {
        output::json(&r.attempt)?;
    } else {
        outln!("{}", attempt_line(&r.attempt));
        if let Some(body) = r.response_body.as_ref().filter(|b| !b.is_empty()) {
            let excerpt: String = body.chars().take(500).collect();
            outln!("response: {}", output::clean(&excerpt));
        }
    }
    if r.attempt.status.is_none_or(|s| !(200..300).contains(&s)) {
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
    let changed = actions::items::set_paused(
        &store,
        &Actor::new(g.operator(), Via::Cli),
        &wf,
        &stage,
        pause,
    )
    .map_err(|e| match e {
        ActionError::Store(e) => refusal(e),
        ActionError::BadInput(m) => CliError::usage(m),
    })?;
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
    /// Print what would be touched (the count and the ids) and do nothing
    #[arg(long)]
    pub dry_run: bool,
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
    // `--item ID` with at most --workflow and --stage: the item's latest stage delivery, as
    // for refire; any other filter makes `--item` one more filter over the open deliveries.
    let only_item = a.ids.is_empty() && a.filter.only_item();
    let bulk_filter = a.ids.is_empty() && !only_item;
    let selection = if only_item {
        if a.limit.is_some() {
            return Err(CliError::usage(
                "--item alone names one delivery; --limit goes with filters",
            ));
        }
        item_latest(&a.filter, "delivery cancel")?
    } else if bulk_filter {
        if a.filter.is_empty() {
            return Err(CliError::usage(
                "name the deliveries to cancel, or select them with filters such as --state retry_scheduled --workflow ID",
            ));
        }
        Selection::Filter {
            filter: a.filter.filter()?,
            limit: a.limit,
        }
    } else {
        if !a.filter.is_empty() || a.limit.is_some() {
            return Err(CliError::usage("give delivery ids or filters, not both"));
        }
        Selection::Ids(a.ids.iter().map(|i| DeliveryId::new(i.as_str())).collect())
    };
    bulk(
        g,
        BulkAction::Cancel,
        selection,
        bulk_filter && !a.yes,
        a.dry_run,
        a.json,
    )
}
