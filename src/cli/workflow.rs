//! `hookops workflow apply|list|show`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{CliError, Global, output};
use crate::model::{StageId, WorkflowId};

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Validate a workflow file and apply it (idempotent; keeps items in surviving stages)
    #[command(after_long_help = super::examples::WORKFLOW_APPLY)]
    Apply {
        /// The workflow file (TOML); `-` reads it from standard input
        file: PathBuf,
        /// Move the items of a stage the file removes: --move OLD=NEW (repeatable)
        #[arg(long = "move", value_name = "OLD=NEW")]
        moves: Vec<String>,
        /// Only validate the file; write nothing
        #[arg(long)]
        check: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List workflows with item totals
    #[command(after_long_help = super::examples::WORKFLOW_LIST)]
    List {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Show a workflow's stages, edges, per-stage counts and pause state
    #[command(after_long_help = super::examples::WORKFLOW_SHOW)]
    Show {
        /// The workflow's id
        id: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

pub fn run(g: &Global, c: WorkflowCommand) -> Result<(), CliError> {
    match c {
        WorkflowCommand::Apply {
            file,
            moves,
            check,
            json,
        } => apply(g, file, moves, check, json),
        WorkflowCommand::List { json } => list(g, json),
        WorkflowCommand::Show { id, json } => show(g, &WorkflowId::new(id), json),
    }
}

fn apply(
    g: &Global,
    file: PathBuf,
    moves: Vec<String>,
    check: bool,
    json: bool,
) -> Result<(), CliError> {
    let moves = moves
        .iter()
        .map(|m| match m.split_once('=') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => {
                Ok((StageId::new(a), StageId::new(b)))
            }
            _ => Err(CliError::usage(format!(
                "--move `{m}` must look like OLD_STAGE=NEW_STAGE"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let env = |name: &str| std::env::var(name).ok();
    let wf = if file.as_os_str() == "-" {
        // Diagnostics name it `<stdin>:line:column`.
        let stdin = std::io::stdin().lock();
        crate::workflow::load_reader(std::path::Path::new("<stdin>"), stdin, &env)
    } else {
        crate::workflow::load_file(&file, &env)
    }
    .map_err(|e| CliError::usage(e.to_string()))?;
    if check {
        outln!(
            "{}: valid workflow `{}` with {} stages",
            file.display(),
            wf.id,
            wf.stages.len()
        );
        return Ok(());
    }
    let store = g.open_or_create()?;
    let actor = crate::actions::Actor::new(g.operator(), crate::actions::Via::Cli);
    let report = crate::actions::admin::apply(&store, &actor, &wf, &moves)?;
    if json {
        return output::json(&report);
    }
    if report.unchanged {
        outln!(
            "workflow {} unchanged (revision {})",
            report.workflow,
            report.revision
        );
        return Ok(());
    }
    let verb = if report.created { "created" } else { "updated" };
    outln!(
        "workflow {} {verb}: revision {}, {} stages",
        report.workflow,
        report.revision,
        wf.stages.len()
    );
    let list = |ids: &[StageId]| {
        ids.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !report.created && !report.added_stages.is_empty() {
        outln!("  added: {}", list(&report.added_stages));
    }
    if !report.changed_stages.is_empty() {
        outln!("  changed: {}", list(&report.changed_stages));
    }
    if !report.retired_stages.is_empty() {
        outln!("  retired: {}", list(&report.retired_stages));
    }
    for (from, to, n) in &report.moved {
        outln!("  moved {n} item(s) from {from} to {to}");
    }
    Ok(())
}

fn list(g: &Global, json: bool) -> Result<(), CliError> {
    let store = g.open()?;
    let rows = store.list_workflows()?;
    if json {
        return output::json(&rows);
    }
    let mut t = output::Table::new(&[
        "ID",
        "NAME",
        "REV",
        "STAGES",
        "ITEMS",
        "WAITING",
        "IN_DELIVERY",
        "FAILED",
        "DONE",
    ]);
    for w in rows {
        t.row(vec![
            w.id.to_string(),
            w.name,
            w.revision.to_string(),
            w.stages.to_string(),
            w.items.to_string(),
            w.waiting.to_string(),
            w.in_delivery.to_string(),
            w.failed.to_string(),
            w.done.to_string(),
        ]);
    }
    t.print();
    Ok(())
}

fn show(g: &Global, id: &WorkflowId, json: bool) -> Result<(), CliError> {
    let store = g.open()?;
    let detail = store.workflow_detail(id)?;
    if json {
        // The API's shape (design §6): webhook settings included, every secret masked.
        return output::json(&detail);
    }
    let w = &detail.summary;
    outln!(
        "{} ({}) team {} revision {}: {} items ({} waiting, {} in delivery, {} failed, {} done)",
        w.id,
        w.name,
        w.team,
        w.revision,
        w.items,
        w.waiting,
        w.in_delivery,
        w.failed,
        w.done
    );
    let mut t = output::Table::new(&[
        "STAGE",
        "KIND",
        "ITEMS",
        "WAITING",
        "ACTIVE",
        "IN_DELIVERY",
        "FAILED",
        "DONE",
        "STATUS",
        "EDGES",
    ]);
    for s in &detail.stage_list {
        let mut status = Vec::new();
        if s.paused {
            status.push(format!(
                "paused ({})",
                s.paused_reason.as_deref().unwrap_or("by an operator")
            ));
        }
        if s.needs_assignment && s.waiting > 0 {
            status.push("needs assignment".to_string());
        }
        if let Some(held) = s.hold_text(chrono::Utc::now()) {
            status.push(held);
        }
        if let Some(limit) = s.concurrency_limit {
            status.push(format!("concurrency {limit} (429s)"));
        }
        t.row(vec![
            s.id.to_string(),
            s.kind.to_string(),
            s.items.to_string(),
            s.waiting.to_string(),
            s.active.to_string(),
            s.in_delivery.to_string(),
            s.failed.to_string(),
            s.done.to_string(),
            if status.is_empty() {
                "-".into()
            } else {
                status.join(", ")
            },
            s.edges
                .iter()
                .map(|(label, to)| format!("{label}→{to}"))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    t.print();
    for s in &detail.stage_list {
        if let Some(w) = &s.webhook {
            outln!(
                "{}: POST {}{}{}",
                s.id,
                w.url,
                w.authorization
                    .as_ref()
                    .map(|a| format!("  authorization {a}"))
                    .unwrap_or_default(),
                if w.secrets.is_empty() {
                    String::new()
                } else {
                    format!("  signed ({})", w.secrets.join(", "))
                }
            );
            if let (Some(rate), Some(burst)) = (s.rate_text(), w.burst) {
                outln!("{}: rate limit {rate} (burst {burst})", s.id);
            }
        }
    }
    Ok(())
}
