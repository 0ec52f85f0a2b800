//! The executor: performs the effects [`super::state::update`] asks for, off the UI task
//! (store calls on blocking threads, HTTP on the runtime), and answers with messages. The
//! store reads a view shows ([`load`]) and the confirmed actions ([`run_pending`]) are plain
//! functions, shared with the headless console.

use std::io::Write;

use tokio::sync::mpsc;

use super::ops;
use super::report;
use super::state::{self, App, Effect, Level, LoadAfter, Msg, PAGE, Pending, ViewData, ViewKind};
use crate::actions::{self, ActionError, Actor, BulkAction, Control, Selection, Via};
use crate::store::{AssignTarget, DeliveryFilter, ItemFilter, Store};

/// Performs effects off the UI task and answers with messages.
pub(super) struct Executor {
    pub(super) store: Store,
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) operator: String,
}

impl Executor {
    fn blocking(&self, f: impl FnOnce(&Store) -> Msg + Send + 'static) {
        let (store, tx) = (self.store.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(f(&store));
        });
    }

    pub(super) fn run(&self, effect: Effect, app: &mut App) {
        match effect {
            Effect::Load {
                view,
                kind,
                search,
                order,
                after,
            } => {
                let (store, tx) = (self.store.clone(), self.tx.clone());
                tokio::task::spawn_blocking(move || {
                    for m in load_msgs(&store, view, &kind, &search, order, after) {
                        let _ = tx.send(m);
                    }
                });
            }
            Effect::Count { action, filter } => self.blocking(move |s| count(s, action, filter)),
            Effect::Export(filter) => self.blocking(move |s| ops::export(s, &filter)),
            Effect::CountStage { workflow, from } => self.blocking(move |s| {
                let count = s.workflow_detail(&workflow).map(|d| {
                    d.stage_list
                        .iter()
                        .find(|st| st.id == from)
                        .map(|st| st.items)
                        .unwrap_or(0)
                });
                match count {
                    Ok(count) => Msg::StageCount {
                        workflow,
                        from,
                        count,
                    },
                    Err(e) => Msg::Done {
                        text: e.to_string(),
                        level: Level::Error,
                    },
                }
            }),
            Effect::Copy(text) => match clipboard(&text) {
                Ok(how) => app.flash(format!("copied {text} ({how})"), Level::Info),
                Err(why) => app.flash(format!("{why}: {text} was not copied"), Level::Warn),
            },
            Effect::CopyText { what, text } => {
                let size = if text.len() < 1024 {
                    format!("{} bytes", text.len())
                } else {
                    format!("{:.1} KiB", text.len() as f64 / 1024.0)
                };
                match clipboard(&text) {
                    Ok(how) => app.flash(
                        format!(
                            "copied {what}, {size} ({how}) · clipboard unchanged? the terminal ignores OSC 52: o shows it in $PAGER"
                        ),
                        Level::Info,
                    ),
                    Err(why) => app.flash(
                        format!("{why}: {what} was not copied; o shows it in $PAGER to select by hand"),
                        Level::Warn,
                    ),
                }
            }
            Effect::CopyCurl { delivery, reveal } => {
                self.blocking(move |s| match curl_for(s, &delivery, reveal) {
                    Ok(text) => Msg::Copy {
                        what: if reveal {
                            "a curl command WITH SECRETS".into()
                        } else {
                            "a curl command (secrets masked)".into()
                        },
                        text,
                    },
                    Err(e) => Msg::Done {
                        text: e,
                        level: Level::Error,
                    },
                })
            }
            // The event loop runs the pager itself (it owns the terminal); a pager asked for
            // anywhere else has no screen to leave.
            Effect::Pager(_) => app.flash("no pager from here", Level::Warn),
            Effect::Test { workflow, stage } => {
                let op = self.operator.clone();
                let tx = self.tx.clone();
                self.blocking(move |store| {
                    let rt = tokio::runtime::Handle::current();
                    let actor = Actor::new(op, Via::Console);
                    let of = actions::TestOf::Stage {
                        workflow: workflow.clone(),
                        stage: stage.clone(),
                        item: None,
                    };
                    match actions::test_stage(
                        store,
                        &actor,
                        of,
                        &rt,
                        crate::dispatch::http::DEFAULT_MAX_BODY,
                    ) {
                        Ok(r) => {
                            let ev = r.attempt;
                            let _ = tx.send(Msg::Attempt(Box::new(ev.clone())));
                            let status = match (ev.status, &ev.error_message) {
                                (Some(s), _) => crate::engine::classify::status_message(s),
                                (None, Some(m)) => m.clone(),
                                _ => "-".into(),
                            };
                            Msg::TestResult {
                                title: format!("test {workflow}/{stage}"),
                                text: format!(
                                    "{status} in {} ms\n\n{}",
                                    ev.duration_ms,
                                    r.response_body
                                        .unwrap_or_default()
                                        .chars()
                                        .take(2000)
                                        .collect::<String>()
                                ),
                            }
                        }
                        Err(e) => Msg::Done {
                            text: e.to_string(),
                            level: Level::Error,
                        },
                    }
                });
            }
            Effect::Run(p) => self.action(p),
        }
    }

    fn action(&self, p: Pending) {
        let op = self.operator.clone();
        match p {
            Pending::Replay(ids) => {
                let tx = self.tx.clone();
                self.blocking(move |s| {
                    let rt = tokio::runtime::Handle::current();
                    replay_done(s, &op, Selection::Ids(ids), &rt, &tx)
                });
            }
            Pending::Filtered {
                action: BulkAction::Replay,
                filter,
                ..
            } => {
                let tx = self.tx.clone();
                self.blocking(move |s| {
                    let rt = tokio::runtime::Handle::current();
                    let all = Selection::Filter {
                        filter,
                        limit: None,
                    };
                    replay_done(s, &op, all, &rt, &tx)
                });
            }
            other => self.blocking(move |s| run_pending(s, other, &op)),
        }
    }
}

/// Replays through the actions layer; each attempt goes to the log pane, the answer is per
/// id: answered 2xx, or why not.
fn replay_done(
    s: &Store,
    op: &str,
    selection: Selection,
    rt: &tokio::runtime::Handle,
    tx: &mpsc::UnboundedSender<Msg>,
) -> Msg {
    let r = match act(s, op, BulkAction::Replay, selection, Some(rt)) {
        Ok(r) => r,
        Err(e) => return action_failed(e),
    };
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for ev in &r.attempts {
        let id = ev.delivery_id.to_string();
        match ev.status {
            Some(st) if (200..300).contains(&st) => ok.push(format!("{id} ({st})")),
            Some(st) => bad.push((id, format!("answered {st}"))),
            None => bad.push((
                id,
                ev.error_message
                    .clone()
                    .unwrap_or_else(|| "no answer".into()),
            )),
        }
        let _ = tx.send(Msg::Attempt(Box::new(ev.clone())));
    }
    bad.extend(
        r.refused
            .iter()
            .map(|x| (x.delivery_id.to_string(), x.reason.clone())),
    );
    report::per_id("replayed", Some(&ok), bad, "")
}

/// What a bulk action on `filter` would take, counted by the actions layer (which refuses a
/// filter it cannot act on, such as a stage without its workflow).
pub(crate) fn count(s: &Store, action: BulkAction, filter: DeliveryFilter) -> Msg {
    let all = Selection::Filter {
        filter: filter.clone(),
        limit: None,
    };
    match actions::plan(s, action, all) {
        Ok(plan) => Msg::Counted {
            action,
            filter,
            count: plan.matched as i64,
        },
        Err(e) => action_failed(e),
    }
}

/// Counts, then acts through the actions layer as the console (`via console`).
fn act(
    s: &Store,
    op: &str,
    action: BulkAction,
    selection: Selection,
    rt: Option<&tokio::runtime::Handle>,
) -> Result<actions::BulkReport, ActionError> {
    let plan = actions::plan(s, action, selection)?;
    actions::execute(
        s,
        &Actor::new(op, Via::Console),
        plan,
        Control {
            stop: None,
            progress: &mut |_, _| {},
            rt,
            max_send_body: crate::dispatch::http::DEFAULT_MAX_BODY,
        },
    )
}

/// An action refused as a whole, for the flash line.
fn action_failed(e: ActionError) -> Msg {
    match e {
        ActionError::Store(e) => report::failed(e),
        ActionError::BadInput(m) => Msg::ActionDone {
            text: m,
            level: Level::Error,
            refused: vec![],
        },
    }
}

/// Re-fire or cancel through the actions layer (one audit row naming the ids, `via
/// console`). `named`: the ids the operator chose, for a per-id answer; a filter's answer
/// is counts (`summary` words it).
fn bulk_done(
    s: &Store,
    op: &str,
    action: BulkAction,
    selection: Selection,
    named: Option<Vec<String>>,
    summary: impl FnOnce(usize) -> String,
) -> Msg {
    let r = match act(s, op, action, selection, None) {
        Ok(r) => r,
        Err(e) => return action_failed(e),
    };
    if let Some(e) = r.error {
        return Msg::ActionDone {
            text: format!(
                "{} stopped after {} of {}: {e}",
                action.verb(),
                r.processed,
                r.matched
            ),
            level: Level::Error,
            refused: vec![],
        };
    }
    let refused: Vec<(String, String)> = r
        .refused
        .iter()
        .map(|x| (x.delivery_id.to_string(), x.reason.clone()))
        .collect();
    let extra = match action {
        BulkAction::Cancel => format!("; {} item(s) routed on failure", r.routed.len()),
        _ => String::new(),
    };
    match named {
        Some(ids) => report::per_id(
            action.past(),
            Some(&report::not_refused(&ids, &refused)),
            refused,
            &extra,
        ),
        None => report::per_id(&summary(r.acted), None, refused, &extra),
    }
}

/// Largest text sent through OSC 52, in base64 bytes: terminals drop (or choke on) longer
/// sequences; hterm stops near 100 KB, xterm and tmux take about 1 MB.
const OSC52_MAX: usize = 1 << 20;

/// Puts `text` on the clipboard: OSC 52 (the terminal's clipboard, over SSH too) and, inside
/// tmux, tmux's paste buffer as well (tmux drops an application's OSC 52 unless
/// `set-clipboard on`; `load-buffer -w` also hands it to the outer terminal). Says how, or
/// why nothing could be copied. Whether the terminal honoured OSC 52 cannot be known.
fn clipboard(text: &str) -> Result<&'static str, String> {
    use base64::Engine as _;
    let term = std::env::var("TERM").unwrap_or_default();
    if matches!(term.as_str(), "" | "dumb" | "linux") {
        return Err(format!(
            "this terminal (TERM={}) takes no OSC 52 copies",
            if term.is_empty() { "unset" } else { &term }
        ));
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    if b64.len() > OSC52_MAX {
        return Err(format!("{} KiB is too long for OSC 52", text.len() / 1024));
    }
    let mut out = std::io::stdout();
    let _ = write!(out, "\x1b]52;c;{b64}\x07");
    let _ = out.flush();
    if std::env::var_os("TMUX").is_some_and(|v| !v.is_empty()) && tmux_buffer(text) {
        return Ok("OSC 52 and the tmux buffer");
    }
    Ok("OSC 52")
}

/// `tmux load-buffer -w -` (tmux 3.2+; older ones without `-w`): true when tmux took it.
fn tmux_buffer(text: &str) -> bool {
    use std::process::{Command, Stdio};
    for args in [&["load-buffer", "-w", "-"][..], &["load-buffer", "-"][..]] {
        let Ok(mut child) = Command::new("tmux")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return false;
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(text.as_bytes());
        }
        if child.wait().is_ok_and(|s| s.success()) {
            return true;
        }
    }
    false
}

/// The `curl` command for a delivery, from its stage's current settings.
fn curl_for(s: &Store, id: &crate::model::DeliveryId, reveal: bool) -> Result<String, String> {
    let d = s.delivery_detail(id).map_err(|e| e.to_string())?;
    let wf = s
        .workflow_spec(&d.summary.workflow)
        .map_err(|e| e.to_string())?;
    let cfg = wf.delivery_config(&d.summary.stage).ok_or_else(|| {
        format!(
            "stage {} is no longer a webhook stage of {}: no request to repeat",
            d.summary.stage, d.summary.workflow
        )
    })?;
    let body = super::payload::request_body(&d);
    Ok(super::payload::curl(
        cfg,
        &wf.secrets,
        id,
        body.as_bytes(),
        chrono::Utc::now().timestamp(),
        reveal,
    ))
}

/// What a load answers: the page (or the window at the list's end, or the rows before the
/// first loaded one), and, with a list's first or last page, how many rows it has.
pub(crate) fn load_msgs(
    s: &Store,
    view: u64,
    kind: &ViewKind,
    search: &str,
    order: crate::store::ItemOrder,
    after: Option<LoadAfter>,
) -> Vec<Msg> {
    let at = match &after {
        Some(LoadAfter::End) => Some(state::At::End),
        Some(LoadAfter::ItemBefore(_) | LoadAfter::DeliveryBefore(_)) => Some(state::At::Before),
        _ => None,
    };
    let first = after.is_none();
    let data = load(s, kind, search, order, after).unwrap_or_else(ViewData::Failed);
    let failed = matches!(data, ViewData::Failed(_));
    match at {
        None => {
            let mut out = vec![Msg::Loaded {
                view,
                data,
                append: !first,
            }];
            if first && !failed {
                out.push(Msg::Total {
                    view,
                    total: total(s, kind, search, false),
                });
            }
            out
        }
        Some(at) => {
            let total = if at == state::At::End && !failed {
                total(s, kind, search, true)
            } else {
                None
            };
            vec![Msg::Window {
                view,
                data,
                at,
                total,
            }]
        }
    }
}

/// How many rows a list has: from the counter rows where they can tell (a stage's items, a
/// workflow's deliveries in a state), never counting rows for a frame; `exact` counts the
/// rest (the `G` that asked for the list's end needs it to number the rows it shows).
fn total(s: &Store, kind: &ViewKind, search: &str, exact: bool) -> Option<i64> {
    match kind {
        ViewKind::Items { workflow, stage } => {
            if search.is_empty() {
                let counted = match (workflow, stage) {
                    (Some(w), Some(st)) => s
                        .workflow_detail(w)
                        .ok()
                        .and_then(|d| d.stage_list.iter().find(|x| &x.id == st).map(|x| x.items)),
                    (Some(w), None) => s.workflow_detail(w).ok().map(|d| d.summary.items),
                    (None, None) => s
                        .list_workflows()
                        .ok()
                        .map(|ws| ws.iter().map(|w| w.items).sum()),
                    (None, Some(_)) => None,
                };
                if counted.is_some() {
                    return counted;
                }
            }
            exact
                .then(|| {
                    s.count_items(&ItemFilter {
                        workflow: workflow.clone(),
                        stage: stage.clone(),
                        state: None,
                        search: Some(search.to_string()).filter(|s| !s.is_empty()),
                        order: crate::store::ItemOrder::Waiting,
                    })
                    .ok()
                })
                .flatten()
        }
        ViewKind::Deliveries(f) => {
            let f = &state::with_search(f, search);
            if f.by_counters()
                && let Ok(rows) = s.delivery_counts()
            {
                return Some(
                    rows.iter()
                        .filter(|r| f.workflow.as_ref().is_none_or(|w| *w == r.workflow))
                        .filter(|r| f.stage.as_ref().is_none_or(|st| *st == r.stage))
                        .filter(|r| f.state.is_none_or(|x| x == r.state))
                        .map(|r| r.n)
                        .sum(),
                );
            }
            exact.then(|| s.count_deliveries(f).ok()).flatten()
        }
        _ => None,
    }
}

fn load(
    s: &Store,
    kind: &ViewKind,
    search: &str,
    order: crate::store::ItemOrder,
    after: Option<LoadAfter>,
) -> Result<ViewData, String> {
    let e = |e: crate::store::StoreError| e.to_string();
    Ok(match kind {
        ViewKind::Workflows => ViewData::Workflows(s.list_workflows().map_err(e)?),
        ViewKind::Stages(w) => ViewData::Stages(Box::new(s.workflow_detail(w).map_err(e)?)),
        ViewKind::Items { workflow, stage } => {
            let filter = ItemFilter {
                workflow: workflow.clone(),
                stage: stage.clone(),
                state: None,
                search: Some(search.to_string()).filter(|s| !s.is_empty()),
                order,
            };
            match after {
                Some(LoadAfter::End) => ViewData::Items {
                    rows: s.list_items_before(&filter, None, PAGE).map_err(e)?,
                    more: false,
                },
                Some(LoadAfter::ItemBefore(c)) => ViewData::Items {
                    rows: s.list_items_before(&filter, Some(&c), PAGE).map_err(e)?,
                    more: true,
                },
                after => {
                    let cursor = match after {
                        Some(LoadAfter::Item(c)) => Some(c),
                        _ => None,
                    };
                    let mut rows = s
                        .list_items(&filter, cursor.as_ref(), PAGE + 1)
                        .map_err(e)?;
                    let more = rows.len() > PAGE;
                    rows.truncate(PAGE);
                    ViewData::Items { rows, more }
                }
            }
        }
        ViewKind::Item(id) => ViewData::Item(Box::new(s.item_detail(id).map_err(e)?)),
        ViewKind::Deliveries(f) => {
            // `/` filters in SQL, over the whole store (issue 18).
            let f = &state::with_search(f, search);
            let (page, more) = match after {
                Some(LoadAfter::End) => {
                    (s.list_deliveries_before(f, None, PAGE).map_err(e)?, false)
                }
                Some(LoadAfter::DeliveryBefore(c)) => {
                    (s.list_deliveries_before(f, Some(c), PAGE).map_err(e)?, true)
                }
                after => {
                    let after = match after {
                        Some(LoadAfter::Delivery(c)) => Some(c),
                        _ => None,
                    };
                    let mut page = s.list_deliveries(f, after, PAGE + 1).map_err(e)?;
                    let more = page.len() > PAGE;
                    page.truncate(PAGE);
                    (page, more)
                }
            };
            let cursors = page.iter().map(|(_, c)| *c).collect();
            ViewData::Deliveries {
                rows: page.into_iter().map(|(d, _)| d).collect(),
                cursors,
                more,
            }
        }
        ViewKind::Delivery(id) => ViewData::Delivery(Box::new(s.delivery_detail(id).map_err(e)?)),
        ViewKind::Audit => ViewData::Audit(s.audit_log(500).map_err(e)?),
        ViewKind::Failures(f) => ViewData::Failures(s.failure_groups(f).map_err(e)?),
        ViewKind::Health => ViewData::Health(Box::new(s.health().map_err(e)?)),
    })
}

/// Performs a confirmed action and says, per id, what it did (see [`report`]).
pub(crate) fn run_pending(s: &Store, p: Pending, op: &str) -> Msg {
    match p {
        Pending::Assign {
            workflow,
            to,
            target,
        } => {
            let (t, named) = match target {
                state::AssignWhat::Items(ids) => {
                    let named: Vec<String> = ids.iter().map(|(i, _)| i.to_string()).collect();
                    (AssignTarget::Versions(ids), Some(named))
                }
                state::AssignWhat::Stage { from, .. } => (
                    AssignTarget::FromStage {
                        stage: from,
                        limit: None,
                    },
                    None,
                ),
            };
            let a = actions::items::Assign {
                workflow,
                to: to.clone(),
                target: t,
                expect_stage: None,
            };
            match actions::items::assign(s, &Actor::new(op, Via::Console), a) {
                Ok(r) => {
                    let queued = if r.deliveries > 0 {
                        format!(" · {} deliveries queued", r.deliveries)
                    } else {
                        String::new()
                    };
                    let refused = report::refusals(&r.refused);
                    match named {
                        Some(ids) => report::per_id(
                            &format!("assigned to {to}"),
                            Some(&report::not_refused(&ids, &refused)),
                            refused,
                            &queued,
                        ),
                        None => report::per_id(
                            &format!("assigned {} item(s) to {to}", r.moved),
                            None,
                            refused,
                            &queued,
                        ),
                    }
                }
                Err(e) => action_failed(e),
            }
        }
        Pending::Advance { ids, outcome } => {
            let named: Vec<String> = ids.iter().map(|(i, _)| i.to_string()).collect();
            let what = actions::items::AdvanceWhat::Versions(ids);
            let r = match actions::items::advance(s, &Actor::new(op, Via::Console), what, outcome) {
                Ok(r) => r,
                Err(e) => return action_failed(e),
            };
            let refused = report::refusals(&r.refused);
            let moved = report::not_refused(&named, &refused);
            let verb = match outcome {
                Some(crate::engine::Outcome::Approve) => "approved",
                Some(crate::engine::Outcome::Reject) => "rejected",
                _ => "advanced",
            };
            report::per_id(verb, Some(&moved), refused, "")
        }
        Pending::Refire(ids) => {
            let named = ids.iter().map(|i| i.to_string()).collect();
            bulk_done(
                s,
                op,
                BulkAction::Refire,
                Selection::Ids(ids),
                Some(named),
                |_| String::new(),
            )
        }
        Pending::Filtered { action, filter, .. } => bulk_done(
            s,
            op,
            action,
            Selection::Filter {
                filter,
                limit: None,
            },
            None,
            |n| format!("{} {n} delivery(ies)", action.past()),
        ),
        Pending::Pause {
            workflow,
            stage,
            pause,
        } => match actions::items::set_paused(
            s,
            &Actor::new(op, Via::Console),
            &workflow,
            &stage,
            pause,
        ) {
            Ok(_) => report::per_id(
                &format!("stage {stage} {}", if pause { "paused" } else { "resumed" }),
                None,
                vec![],
                "",
            ),
            Err(e) => action_failed(e),
        },
        // The executor replays on the runtime (HTTP); this path is the headless one.
        Pending::Replay(_) => report::per_id("replay runs asynchronously", None, vec![], ""),
        Pending::Cancel(ids) => {
            let named = ids.iter().map(|i| i.to_string()).collect();
            bulk_done(
                s,
                op,
                BulkAction::Cancel,
                Selection::Ids(ids),
                Some(named),
                |_| String::new(),
            )
        }
    }
}
