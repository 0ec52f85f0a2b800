//! The `:` command line.

use super::*;

/// Runs a `:` command.
pub(super) fn command(app: &mut App, cmd: &str) -> Vec<Effect> {
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
        "deliveries" | "dl" | "failures" => {
            // The one delivery filter (issue 18), typed as words: a state (`failed`), error
            // kinds (`timeout`), statuses or classes (`503`, `5xx`), or `key=value` for any
            // field (`stage=export`, `since=30m`, `until=…`). Matched in SQL over the store.
            let params =
                match crate::actions::FilterParams::from_words(arg.into_iter().chain(words)) {
                    Ok(p) => p,
                    Err(e) => {
                        app.flash(e.to_string(), Level::Error);
                        return vec![];
                    }
                };
            let mut f = match params.to_filter(chrono::Utc::now()) {
                Ok(f) => f,
                Err(e) => {
                    app.flash(e.to_string(), Level::Error);
                    return vec![];
                }
            };
            if params.workflow.is_none() {
                f.workflow = app.current_workflow();
            }
            if head == "failures" {
                return app.jump(ViewKind::Failures(f));
            }
            app.jump(ViewKind::Deliveries(f))
        }
        "audit" => app.jump(ViewKind::Audit),
        "health" => app.jump(ViewKind::Health),
        "" => vec![],
        other => {
            app.flash(
                format!("unknown command `{other}` (try :workflows :stages :items :deliveries failed :failures :audit :q)"),
                Level::Error,
            );
            vec![]
        }
    }
}
