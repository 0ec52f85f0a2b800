//! `hookops item import|list|show|advance` and `hookops assign`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::deliveries::action_error;
use super::{CliError, Global, output, require_workflow, stage_id};
use crate::actions::{self, Actor, Via};
use crate::engine::Outcome;
use crate::model::{ItemId, ItemState, StageId, WorkflowId};
use crate::store::{AssignTarget, Expect, ItemFilter, ItemOrder, MoveReport};

/// Rows a listing shows unless `--limit` says otherwise (design §6).
pub const DEFAULT_LIMIT: usize = 1000;

#[derive(Debug, Subcommand)]
pub enum ItemCommand {
    /// Import JSON Lines: plain items or whole Darwin JSON 2.0 exports, one per line
    ///
    /// Every line is checked before anything is written; then the file is read again and
    /// written in short chunks. Ctrl-C stops between chunks; running the same import again
    /// adds only what is missing.
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
    /// Print what would be moved (the count and the ids, oldest first) and move nothing
    #[arg(long)]
    pub dry_run: bool,
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
        } => super::import::run(
            g,
            super::import::ImportArgs {
                file,
                workflow: WorkflowId::new(workflow),
                dataset,
                skip_invalid,
                json,
            },
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
            let report = actions::items::advance(
                &store,
                &Actor::new(g.operator(), Via::Cli),
                actions::items::AdvanceWhat::Ids(ids, expect),
                outcome,
            )
            .map_err(action_error)?;
            print_moves("advanced", &report, json)
        }
    }
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
    outln!(
        "annotations {}",
        crate::model::annotation_summary(&it.annotations)
    );
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
    let assign = actions::items::Assign {
        workflow,
        to,
        target,
        expect_stage: a.expect_stage.map(StageId::new),
    };
    if a.dry_run {
        let plan = actions::items::assign_plan(&store, &assign).map_err(action_error)?;
        if a.json {
            return output::json(&plan);
        }
        outln!(
            "would assign {} item(s) to {}/{}",
            plan.matched,
            assign.workflow,
            assign.to
        );
        for id in &plan.ids {
            outln!("{id}");
        }
        return Ok(());
    }
    let report = actions::items::assign(&store, &Actor::new(g.operator(), Via::Cli), assign)
        .map_err(action_error)?;
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
