//! `hookops item import|list|show|advance` and `hookops assign`.

use std::io::BufReader;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::{CliError, Global, output, require_workflow, stage_id};
use crate::engine::Outcome;
use crate::model::{DatasetRef, ItemId, ItemState, StageId, WorkflowId};
use crate::store::{AssignTarget, Expect, ItemFilter, ItemOrder, MoveReport};

/// Rows a listing shows unless `--limit` says otherwise (design §6).
pub const DEFAULT_LIMIT: usize = 1000;

#[derive(Debug, Subcommand)]
pub enum ItemCommand {
    /// Import JSON Lines: plain items or whole Darwin JSON 2.0 exports, one per line
    #[command(after_long_help = super::examples::ITEM_IMPORT)]
    Import {
        /// The JSON Lines file; `-` reads it from standard input
        file: PathBuf,
        /// The workflow to import into (its dataset stage receives the items)
        #[arg(long)]
        workflow: String,
        /// Dataset name for items whose line names none [default: the workflow id]
        #[arg(long)]
        dataset: Option<String>,
        /// Import the good lines even when some lines are invalid
        #[arg(long)]
        skip_invalid: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List items, oldest first in their stage
    #[command(after_long_help = super::examples::ITEM_LIST)]
    List(ListArgs),
    /// Show an item: fields, annotations summary, history and deliveries
    #[command(after_long_help = super::examples::ITEM_SHOW)]
    Show {
        /// The item's id
        id: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Complete an item's annotate stage, or decide its review
    #[command(after_long_help = super::examples::ITEM_ADVANCE)]
    Advance {
        /// Ids of the items to advance
        #[arg(required = true)]
        ids: Vec<String>,
        /// Required in a review stage
        #[arg(long, value_enum)]
        outcome: Option<OutcomeArg>,
        /// Refuse items that are not in this stage (compare-and-set for scripts)
        #[arg(long)]
        expect_stage: Option<String>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutcomeArg {
    Approve,
    Reject,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only items of this workflow (id)
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only items in this stage (id; without --workflow, that stage id in every workflow)
    #[arg(long)]
    pub stage: Option<String>,
    /// waiting, active, in_delivery, failed or done
    #[arg(long)]
    pub state: Option<ItemState>,
    /// Substring of the item's name or id
    #[arg(long)]
    pub search: Option<String>,
    /// Sort by name instead of waiting time
    #[arg(long)]
    pub by_name: bool,
    /// At most N rows (0 = all)
    #[arg(long, default_value_t = DEFAULT_LIMIT)]
    pub limit: usize,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AssignArgs {
    /// The workflow of the stage (id; required)
    #[arg(long, value_name = "ID")]
    pub workflow: Option<String>,
    /// The stage to move the items into (id); an automated stage runs at once (a webhook
    /// stage queues a delivery per item)
    #[arg(long, value_name = "ID")]
    pub stage: String,
    /// Instead of ids: move every item of this stage, longest waiting first
    #[arg(long, value_name = "ID", conflicts_with = "ids")]
    pub from_stage: Option<String>,
    /// With --from-stage: at most N items
    #[arg(long, value_name = "N", requires = "from_stage", value_parser = super::action_limit)]
    pub limit: Option<usize>,
    /// Refuse items that are not in this stage now (compare-and-set for scripts; implied by
    /// --from-stage)
    #[arg(long, value_name = "ID", conflicts_with = "from_stage")]
    pub expect_stage: Option<String>,
    /// Ids of the items to move
    #[arg(value_name = "ITEM_ID")]
    pub ids: Vec<String>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Global, c: ItemCommand) -> Result<(), CliError> {
    match c {
        ItemCommand::Import {
            file,
            workflow,
            dataset,
            skip_invalid,
            json,
        } => import(
            g,
            file,
            WorkflowId::new(workflow),
            dataset,
            skip_invalid,
            json,
        ),
        ItemCommand::List(a) => list(g, a),
        ItemCommand::Show { id, json } => show(g, &ItemId::new(id), json),
        ItemCommand::Advance {
            ids,
            outcome,
            expect_stage,
            json,
        } => {
            let store = g.open()?;
            let outcome = outcome.map(|o| match o {
                OutcomeArg::Approve => Outcome::Approve,
                OutcomeArg::Reject => Outcome::Reject,
            });
            let expect = Expect {
                stage: expect_stage.map(StageId::new),
                version: None,
            };
            let ids: Vec<ItemId> = ids.into_iter().map(ItemId::new).collect();
            let report = store.advance(&ids, outcome, &expect, &g.operator())?;
            print_moves("advanced", &report, json)
        }
    }
}

fn import(
    g: &Global,
    file: PathBuf,
    workflow: WorkflowId,
    dataset: Option<String>,
    skip_invalid: bool,
    json: bool,
) -> Result<(), CliError> {
    // `-` is standard input; the parser reads any buffered reader.
    let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&file)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
        Box::new(BufReader::new(f))
    };
    let mut parsed = crate::import::parse_jsonl(input)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
    let store = g.open()?;
    // An id that belongs to another workflow is a line error too (design §6), reported and
    // skipped like the others.
    let foreign = store.ids_in_other_workflows(&workflow, &parsed.items)?;
    if !foreign.is_empty() {
        // One pass (indices ascend), not a `remove` per line: a file of another workflow's
        // ids must not take quadratic time.
        let mut foreign = foreign.into_iter().peekable();
        let mut kept = Vec::with_capacity(parsed.items.len());
        for (i, item) in std::mem::take(&mut parsed.items).into_iter().enumerate() {
            match foreign.next_if(|(f, _)| *f == i) {
                Some((_, other)) => parsed.errors.push(crate::import::LineError {
                    line: item.line,
                    column: None,
                    message: format!("item id `{}` already exists in workflow `{other}`", item.id),
                }),
                None => kept.push(item),
            }
        }
        parsed.items = kept;
        parsed.errors.sort_by_key(|e| e.line);
    }
    if !parsed.errors.is_empty() {
        for e in parsed.errors.iter().take(50) {
            eprintln!("{}:{e}", file.display());
        }
        if parsed.errors.len() > 50 {
            eprintln!("… and {} more invalid lines", parsed.errors.len() - 50);
        }
        if !skip_invalid {
            return Err(CliError::usage(format!(
                "{} invalid line(s) in {}; nothing was imported (fix them, or pass --skip-invalid to import the {} good lines)",
                parsed.errors.len(),
                file.display(),
                parsed.items.len()
            )));
        }
    }
    let default_dataset = dataset.map(|name| DatasetRef {
        slug: crate::import::dataset_from_name(&name)
            .map(|d| d.slug)
            .unwrap_or_else(|| name.clone()),
        name,
    });
    let mut progress = output::Progress::new("imported", parsed.items.len(), json);
    let report = store
        .import_checked_items(&workflow, parsed.items, default_dataset, &g.operator(), &mut |done, _| {
            progress.update(done)
        })
        .map_err(|e| {
            let code = if e.source.is_refusal() { 1 } else { 2 };
            // Refused before anything was written (unknown workflow, read-only, an id of
            // another workflow): say only why; "run it again" is for an interrupted import.
            let message = if e.done == 0 && e.report.imported == 0 {
                e.source.to_string()
            } else {
                format!(
                    "{e}; run the same import again to add the rest (items already present are skipped)"
                )
            };
            CliError { code, message }
        })?;
    drop(progress);
    for id in report.differing.iter().take(20) {
        eprintln!(
            "warning: item `{id}` is already present with different content; it was not changed"
        );
    }
    if json {
        output::json(&serde_json::json!({
            "imported": report.imported,
            "already_present": report.already_present,
            "differing": report.differing,
            "invalid": parsed.errors.len(),
            "landed": report.landed,
        }))?;
    } else {
        outln!(
            "imported {} item(s) into {workflow}; {} already present{}",
            report.imported,
            report.already_present,
            if parsed.errors.is_empty() {
                String::new()
            } else {
                format!("; {} invalid line(s) skipped", parsed.errors.len())
            }
        );
        for (stage, n) in &report.landed {
            outln!("  {stage}: {n}");
        }
    }
    if !parsed.errors.is_empty() {
        // Some lines were refused: the operation was only partly done.
        return Err(CliError::failure(format!(
            "{} line(s) were not imported",
            parsed.errors.len()
        )));
    }
    Ok(())
}

fn list(g: &Global, a: ListArgs) -> Result<(), CliError> {
    let store = g.open()?;
    let filter = ItemFilter {
        workflow: a.workflow.map(WorkflowId::new),
        stage: a.stage.map(StageId::new),
        state: a.state,
        search: a.search,
        order: if a.by_name {
            ItemOrder::Name
        } else {
            ItemOrder::Waiting
        },
    };
    let limit = if a.limit == 0 { usize::MAX } else { a.limit };
    let mut rows = Vec::new();
    let mut cursor = None;
    // Page through in bounded reads so even `--limit 0` never holds one huge query.
    loop {
        let want = (limit - rows.len()).min(5000);
        let page = store.list_items(&filter, cursor.as_ref(), want + 1)?;
        let more = page.len() > want;
        cursor = page.get(want.saturating_sub(1)).map(|r| r.cursor.clone());
        rows.extend(page.into_iter().take(want));
        if !more || rows.len() >= limit {
            if more {
                let total = store.count_items(&filter)?;
                eprintln!(
                    "{} more item(s) match; use --limit 0 to see all",
                    total - rows.len() as i64
                );
            }
            break;
        }
    }
    if a.json {
        return output::json(&rows);
    }
    let mut t = output::Table::new(&["ID", "NAME", "WORKFLOW", "STAGE", "STATE", "SINCE"]);
    for r in rows {
        t.row(vec![
            r.id.to_string(),
            output::clean(&r.name),
            r.workflow.to_string(),
            r.stage.to_string(),
            r.state.to_string(),
            output::time(&r.entered_at),
        ]);
    }
    t.print();
    Ok(())
}

fn show(g: &Global, id: &ItemId, json: bool) -> Result<(), CliError> {
    let store = g.open()?;
    let d = store.item_detail(id)?;
    if json {
        return output::json(&d);
    }
    let it = &d.item;
    outln!("item      {}", it.id);
    outln!("name      {}", output::clean(&it.name));
    outln!("path      {}", output::clean(&it.path));
    outln!("workflow  {}", it.workflow);
    outln!("stage     {} ({})", it.stage, it.state);
    outln!("dataset   {}", output::clean(&it.dataset.name));
    outln!("version   {}", it.version);
    if !it.tags.is_empty() {
        outln!("tags      {}", output::clean(&it.tags.join(", ")));
    }
    if !it.properties.is_empty() {
        outln!(
            "properties {}",
            output::clean(&serde_json::Value::Object(it.properties.clone()).to_string())
        );
    }
    outln!("slots     {}", it.slots.len());
    outln!("annotations {}", annotation_summary(&it.annotations));
    outln!("\nhistory");
    let mut t = output::Table::new(&["AT", "FROM", "TO", "CAUSE", "OPERATOR", "REV"]);
    for h in &d.history {
        t.row(vec![
            output::time(&h.at),
            h.from
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            h.to.to_string(),
            h.cause.to_string(),
            h.operator.clone().unwrap_or_else(|| "-".into()),
            h.revision.to_string(),
        ]);
    }
    t.print();
    if !d.deliveries.is_empty() {
        outln!("\ndeliveries");
        let mut t = output::Table::new(&["ID", "STAGE", "STATE", "ATTEMPTS", "LAST", "CREATED"]);
        for del in &d.deliveries {
            t.row(vec![
                del.id.to_string(),
                del.stage.to_string(),
                del.state.to_string(),
                del.attempts.to_string(),
                del.last_status
                    .map(|s| s.to_string())
                    .or(del.last_error_kind.map(|k| k.to_string()))
                    .unwrap_or_else(|| "-".into()),
                output::time(&del.created_at),
            ]);
        }
        t.print();
    }
    Ok(())
}

/// "5 (2 bounding_box, 2 polygon, 1 tag)": counts per annotation type.
pub fn annotation_summary(annotations: &[serde_json::Value]) -> String {
    const TYPES: &[&str] = &[
        "bounding_box",
        "polygon",
        "complex_polygon",
        "ellipse",
        "keypoint",
        "line",
        "skeleton",
        "tag",
        "mask",
        "raster_layer",
        "cuboid",
        "text",
        "attributes",
    ];
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for a in annotations {
        let kind = TYPES
            .iter()
            .find(|t| a.get(**t).is_some())
            .copied()
            .unwrap_or("other");
        *counts.entry(kind).or_default() += 1;
    }
    if counts.is_empty() {
        return "0".into();
    }
    format!(
        "{} ({})",
        annotations.len(),
        counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub fn assign(g: &Global, a: AssignArgs) -> Result<(), CliError> {
    let workflow = require_workflow(&a.workflow, "assign")?;
    let to = stage_id(&a.stage);
    let target = match (&a.from_stage, a.ids.is_empty()) {
        (Some(from), true) => AssignTarget::FromStage {
            stage: StageId::new(from.as_str()),
            limit: a.limit,
        },
        (None, false) => {
            AssignTarget::Items(a.ids.iter().map(|i| ItemId::new(i.as_str())).collect())
        }
        _ => {
            return Err(CliError::usage(
                "name the items to assign, or give --from-stage STAGE",
            ));
        }
    };
    let store = g.open()?;
    let expect = a.expect_stage.map(StageId::new);
    let report = store.assign(&workflow, &to, &target, expect.as_ref(), &g.operator())?;
    print_moves("assigned", &report, a.json)
}

fn print_moves(verb: &str, r: &MoveReport, json: bool) -> Result<(), CliError> {
    if json {
        output::json(r)?;
    } else {
        outln!(
            "{verb} {} item(s){}",
            r.moved,
            if r.deliveries > 0 {
                format!(", {} delivery(ies) queued", r.deliveries)
            } else {
                String::new()
            }
        );
        for (stage, n) in &r.landed {
            outln!("  now in {stage}: {n}");
        }
    }
    for refusal in &r.refused {
        eprintln!("refused: {}", refusal.reason);
    }
    if !r.refused.is_empty() {
        return Err(CliError::failure(format!(
            "{} of {} item(s) were refused",
            r.refused.len(),
            r.refused.len() as i64 + r.moved
        )));
    }
    Ok(())
}
