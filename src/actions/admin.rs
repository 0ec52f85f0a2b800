//! The day-two operator actions (issue 18): workflow apply, item import and prune, audited
//! like every other action: one row per action, begun before it changes anything, naming the
//! operator, the front end and how it ended. The store does the work and writes no audit
//! row for it: a store call made by code (the demo, a benchmark) is not an operator action.

use super::{Actor, Audit, Outcome};
use crate::model::{DatasetRef, NewItem, WorkflowId};
use crate::store::{ApplyReport, ImportInterrupted, ImportReport, MoveMap, PruneOptions};
use crate::store::{PruneReport, Store, StoreError};
use crate::workflow::Workflow;

/// Applies a validated workflow (`workflow apply`) and audits it with its new revision.
pub fn apply(
    store: &Store,
    actor: &Actor,
    wf: &Workflow,
    moves: &MoveMap,
) -> Result<ApplyReport, StoreError> {
    store.ensure_writable("apply")?;
    let audit = Audit::begin(
        store,
        actor,
        "apply",
        format!("workflow {}", wf.id),
        None,
        1,
    )?;
    match store.apply_workflow(wf, moves, &actor.operator) {
        Ok(r) => {
            audit.finish(store, Outcome::Done, 1, &[])?;
            Ok(r)
        }
        Err(e) => {
            audit.finish(store, Outcome::Failed, 0, &[])?;
            Err(e)
        }
    }
}

/// Imports items given whole (the API's `POST /v1/items`) and audits it with the ids
/// imported (up to the audit bound; beyond, the count).
#[allow(clippy::result_large_err)]
pub fn import(
    store: &Store,
    actor: &Actor,
    workflow: &WorkflowId,
    items: Vec<NewItem>,
    dataset: Option<DatasetRef>,
) -> Result<ImportReport, ImportInterrupted> {
    let begun = Audit::begin(
        store,
        actor,
        "import",
        format!("workflow {workflow}"),
        None,
        items.len() as i64,
    );
    let audit = match begun {
        Ok(a) => a,
        Err(source) => {
            return Err(ImportInterrupted {
                done: 0,
                total: items.len(),
                report: ImportReport::default(),
                source,
            });
        }
    };
    let r = store.import_items(workflow, items, dataset, &actor.operator, &mut |_, _| {});
    let (outcome, report) = match &r {
        Ok(report) => (Outcome::Done, report),
        Err(e) => (Outcome::Failed, &e.report),
    };
    let ids: Vec<String> = report
        .created
        .iter()
        .take(crate::store::AUDIT_IDS + 1)
        .map(|l| l.id.to_string())
        .collect();
    if let Err(source) = audit.finish(store, outcome, report.imported, &ids) {
        return Err(ImportInterrupted {
            done: report.imported as usize,
            total: report.imported as usize,
            report: report.clone(),
            source,
        });
    }
    r
}

/// Runs a streamed import (`item import FILE`, which hands the store its batches itself)
/// under one audit row: `run` returns how many items went in, whether it ended well, and its
/// own result.
pub fn import_streamed<T>(
    store: &Store,
    actor: &Actor,
    workflow: &WorkflowId,
    file: &str,
    run: impl FnOnce() -> (i64, bool, T),
) -> Result<T, StoreError> {
    let target = format!("workflow {workflow}");
    let audit = Audit::begin(store, actor, "import", target, Some(file.to_string()), 0)?;
    let (imported, ok, out) = run();
    let outcome = if ok { Outcome::Done } else { Outcome::Failed };
    audit.finish(store, outcome, imported, &[])?;
    Ok(out)
}

/// Prunes old finished deliveries (and, when asked, old audit rows) and audits it; a dry
/// run changes nothing and writes no row.
pub fn prune(
    store: &Store,
    actor: &Actor,
    opts: &PruneOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PruneReport, StoreError> {
    if opts.dry_run {
        return store.prune_with_progress(opts, &actor.operator, progress);
    }
    store.ensure_writable("prune")?;
    let age = |d| humantime::format_duration(d).to_string();
    let mut flags = format!("--older-than {}", age(opts.older_than));
    if let Some(a) = opts.audit_older_than {
        flags.push_str(&format!(" --audit-older-than {}", age(a)));
    }
    let target = format!(
        "finished deliveries older than {}",
        humantime::format_duration(opts.older_than)
    );
    // The row is written after the prune, not begun before it: a prune of the audit log
    // (`--audit-older-than 0s`) would remove a row begun before it.
    let r = store.prune_with_progress(opts, &actor.operator, progress);
    let (outcome, count) = match &r {
        Ok(r) => (Outcome::Done, r.deliveries),
        Err(_) => (Outcome::Failed, 0),
    };
    Audit::begin(store, actor, "prune", target, Some(flags), count)?.finish(
        store,
        outcome,
        count,
        &[],
    )?;
    r
}
