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
