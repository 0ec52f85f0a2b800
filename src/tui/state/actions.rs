//! What the view keys do: moving, selecting, opening, and the actions that ask for a
//! confirmation (assign, advance, re-fire, replay, cancel, pause); the log pane's keys; the
//! mouse. Pure, like all of [`super::update`].

use super::*;

pub(super) fn log_action(app: &mut App, a: Action) -> Option<Vec<Effect>> {
    let visible = app.log.visible_indices();
    let n = visible.len();
    let pos = visible
        .iter()
        .position(|i| *i >= app.log.cursor)
        .unwrap_or(n.saturating_sub(1));
    let set = |app: &mut App, p: usize| {
        if let Some(i) = visible.get(p) {
            app.log.cursor = *i;
        }
    };
    match a {
        Action::Up => {
            app.log.follow = false;
            set(app, pos.saturating_sub(1));
        }
        Action::Down => {
            set(app, (pos + 1).min(n.saturating_sub(1)));
            app.log.follow = pos + 1 >= n.saturating_sub(1);
        }
        Action::Top => {
            app.log.follow = false;
            set(app, 0);
        }
        Action::Bottom | Action::Follow => {
            app.log.follow = true;
            set(app, n.saturating_sub(1));
        }
        Action::PageUp => {
            app.log.follow = false;
            set(app, pos.saturating_sub(app.page_rows.max(1)));
        }
        Action::PageDown => set(app, (pos + app.page_rows.max(1)).min(n.saturating_sub(1))),
        Action::PauseLog => {
            app.log.paused = !app.log.paused;
            if !app.log.paused {
                let held = std::mem::take(&mut app.log.held);
                let k = held.len();
                for e in held {
                    app.log.entries.push_back(e);
                }
                while app.log.entries.len() > LOG_CAPACITY {
                    app.log.entries.pop_front();
                    app.log.cursor = app.log.cursor.saturating_sub(1);
                }
                if app.log.follow {
                    app.log.cursor = app.log.entries.len().saturating_sub(1);
                }
                app.flash(
                    format!("stream resumed ({k} attempts were held)"),
                    Level::Info,
                );
            } else {
                app.flash("stream paused: new attempts are held", Level::Info);
            }
        }
        Action::Filter => app.overlay = Some(Overlay::Filter(app.log.filter.clone())),
        Action::Open | Action::Refire | Action::Replay | Action::Copy => {
            // With nothing under the log cursor the key does nothing (it must not fall
            // through to the main view, which does not have the focus).
            let Some(e) = visible
                .get(pos)
                .and_then(|i| app.log.entries.get(*i))
                .and_then(LogEntry::attempt)
            else {
                return Some(vec![]);
            };
            let id = e.delivery_id.clone();
            return Some(match a {
                Action::Open => app.push(ViewKind::Delivery(id)),
                Action::Refire => confirm_refire(app, vec![id], Naming::default()),
                Action::Replay => confirm_replay(app, vec![id], Naming::default()),
                _ => vec![Effect::Copy(id.to_string())],
            });
        }
        _ => return None,
    }
    Some(vec![])
}

pub(super) fn move_cursor(app: &mut App, f: impl Fn(usize, usize, usize) -> usize) -> Vec<Effect> {
    let page = app.page_rows.max(1);
    let Some(v) = app.view_mut() else {
        return vec![];
    };
    if matches!(v.data, ViewData::Delivery(_)) {
        v.scroll = f(v.scroll, usize::MAX / 2, page);
        return vec![];
    }
    let n = v.len();
    if n == 0 {
        return vec![];
    }
    v.cursor = f(v.cursor, n, page).min(n - 1);
    if v.paging {
        return vec![];
    }
    // Near the end of what is loaded: fetch the next page (keyset); near its start when the
    // view reads from the end (`G`): the page before.
    let near_end = v.cursor + page >= n;
    let near_start = v.cursor < page && v.base > 0;
    let after = match &v.data {
        ViewData::Items { rows, more: true } if near_end => {
            rows.last().map(|r| LoadAfter::Item(r.cursor.clone()))
        }
        ViewData::Deliveries {
            cursors,
            more: true,
            ..
        } if near_end => cursors.last().map(|c| LoadAfter::Delivery(*c)),
        ViewData::Items { rows, .. } if near_start => rows
            .first()
            .map(|r| LoadAfter::ItemBefore(r.cursor.clone())),
        ViewData::Deliveries { cursors, .. } if near_start => {
            cursors.first().map(|c| LoadAfter::DeliveryBefore(*c))
        }
        _ => None,
    };
    match after {
        Some(a) => {
            v.paging = true;
            app.load_current(Some(a))
        }
        None => vec![],
    }
}

/// Whether the view is a keyset-paged list with rows after the loaded ones.
fn more_after(v: &View) -> bool {
    matches!(
        v.data,
        ViewData::Items { more: true, .. } | ViewData::Deliveries { more: true, .. }
    )
}

/// `G`: the true last row. A paged list with rows after the loaded ones asks for its last
/// page (a reverse keyset read); keys wait for it, as for a new filter.
fn to_bottom(app: &mut App) -> Vec<Effect> {
    if !app.view().is_some_and(more_after) {
        return move_cursor(app, |_, n, _| n.saturating_sub(1));
    }
    let id = app.next_view_id;
    app.next_view_id += 1;
    let Some(v) = app.view_mut() else {
        return vec![];
    };
    v.id = id;
    v.awaiting = true;
    v.paging = false;
    app.load_current(Some(LoadAfter::End))
}

/// `g`: the first row; a view reading from the end loads the list's first page again.
fn to_top(app: &mut App) -> Vec<Effect> {
    if app.view().is_some_and(|v| v.base > 0) {
        return app.relist(false);
    }
    move_cursor(app, |_, _, _| 0)
}

/// The rows an action applies to: the selection, else the row under the cursor.
pub(super) fn targets(v: &View) -> Vec<String> {
    if !v.selected.is_empty() {
        return v.selected.keys().cloned().collect();
    }
    let vis = v.visible_indices();
    let Some(i) = vis.get(v.cursor) else {
        return vec![];
    };
    match &v.data {
        ViewData::Items { rows, .. } => vec![rows[*i].id.to_string()],
        ViewData::Deliveries { rows, .. } => vec![rows[*i].id.to_string()],
        ViewData::Item(d) => d
            .deliveries
            .get(*i)
            .map(|d| vec![d.id.to_string()])
            .unwrap_or_default(),
        _ => vec![],
    }
}

/// Each item with the version the operator saw: the loaded row's, else (a selected row no
/// longer loaded) the one it had when it was selected, so the store refuses it if it moved.
pub(super) fn item_versions(v: &View, ids: &[String]) -> Vec<(ItemId, i64)> {
    match &v.data {
        ViewData::Items { rows, .. } => {
            let loaded: HashMap<&str, i64> =
                rows.iter().map(|r| (r.id.as_str(), r.version)).collect();
            ids.iter()
                .filter_map(|id| {
                    let version = loaded
                        .get(id.as_str())
                        .copied()
                        .or_else(|| v.selected.get(id).and_then(|p| p.version))?;
                    Some((ItemId::new(id), version))
                })
                .collect()
        }
        ViewData::Item(d) => vec![(d.item.id.clone(), d.item.version)],
        _ => vec![],
    }
}

pub(super) fn current_stage_row(v: &View) -> Option<&crate::store::StageSummary> {
    let ViewData::Stages(d) = &v.data else {
        return None;
    };
    v.visible_indices()
        .get(v.cursor)
        .and_then(|i| d.stage_list.get(*i))
}

pub(super) fn open_picker(app: &mut App, workflow: WorkflowId, target: AssignWhat, naming: Naming) {
    let choices = app.stages.get(&workflow).cloned().unwrap_or_default();
    if choices.is_empty() {
        app.flash(
            "open the workflow's stages first (its stage list is not loaded)",
            Level::Warn,
        );
        return;
    }
    let n = match &target {
        AssignWhat::Items(ids) => ids.len() as i64,
        AssignWhat::Stage { count, .. } => *count,
    };
    app.overlay = Some(Overlay::Picker {
        title: format!("assign {n} item(s) to stage"),
        workflow,
        choices,
        query: String::new(),
        cursor: 0,
        target,
        naming,
    });
}

pub(super) fn confirm_refire(app: &mut App, ids: Vec<DeliveryId>, naming: Naming) -> Vec<Effect> {
    let what = match ids.as_slice() {
        [one] => format!("Re-fire delivery {one}"),
        _ => format!("Re-fire {} deliveries", ids.len()),
    };
    let how = if ids.len() == 1 {
        "The item goes back into its webhook stage and is delivered anew."
    } else {
        "Each item goes back into its webhook stage."
    };
    confirm(
        app,
        format!("{} {how}", naming.ask(&what)),
        Pending::Refire(ids),
    )
}

pub(super) fn confirm_replay(app: &mut App, ids: Vec<DeliveryId>, naming: Naming) -> Vec<Effect> {
    let what = match ids.as_slice() {
        [one] => format!("Replay delivery {one}"),
        _ => format!("Replay {} deliveries", ids.len()),
    };
    let how = if ids.len() == 1 {
        "The stored bytes are sent again; the item does not move."
    } else {
        "The stored bytes are sent again; items do not move."
    };
    confirm(
        app,
        format!("{} {how}", naming.ask(&what)),
        Pending::Replay(ids),
    )
}

/// Opens the confirmation dialog for `action`, on Cancel.
fn confirm(app: &mut App, text: String, action: Pending) -> Vec<Effect> {
    app.overlay = Some(Overlay::Confirm {
        text,
        focus: 0,
        action,
    });
    vec![]
}

/// Sends a confirmed action to the executor, counting it until its [`Msg::ActionDone`]. While one
/// is still waiting (for another process's write lock) a second is refused rather than
/// queued behind it: pressing `p` twice must not pause twice.
pub(super) fn run(app: &mut App, action: Pending) -> Vec<Effect> {
    if app.running.0 > 0 && app.running.1 < STILL_WORKING_UNTIL {
        app.flash(
            "an action is still running (waiting for the database): try again when it is done",
            Level::Warn,
        );
        return vec![];
    }
    app.running = (app.running.0 + 1, 0);
    vec![Effect::Run(action)]
}

pub(super) fn action(app: &mut App, a: Action) -> Vec<Effect> {
    match a {
        Action::Up => move_cursor(app, |c, _, _| c.saturating_sub(1)),
        Action::Down => move_cursor(app, |c, _, _| c + 1),
        Action::Top => to_top(app),
        Action::Bottom => to_bottom(app),
        // In the item detail, j/k move among its deliveries and the page keys scroll its
        // history (the view clamps the offset to what there is).
        Action::PageUp | Action::PageDown
            if app
                .view()
                .is_some_and(|v| matches!(v.data, ViewData::Item(_))) =>
        {
            let page = app.page_rows.max(1) / 2;
            if let Some(v) = app.view_mut() {
                v.scroll = if a == Action::PageUp {
                    v.scroll.saturating_sub(page.max(1))
                } else {
                    v.scroll.saturating_add(page.max(1))
                };
            }
            vec![]
        }
        Action::PageUp => move_cursor(app, |c, _, p| c.saturating_sub(p)),
        Action::PageDown => move_cursor(app, |c, _, p| c + p),
        Action::Quit => {
            app.quit = true;
            vec![]
        }
        Action::Help => {
            app.overlay = Some(Overlay::Help { scroll: 0 });
            vec![]
        }
        Action::Command => {
            app.overlay = Some(Overlay::Command(String::new()));
            vec![]
        }
        Action::Filter => {
            let f = app.view().map(|v| v.filter.clone()).unwrap_or_default();
            app.overlay = Some(Overlay::Filter(f));
            vec![]
        }
        Action::ToggleLog => {
            app.log.visible = !app.log.visible;
            if !app.log.visible {
                app.focus_log = false;
            }
            vec![]
        }
        Action::FocusLog => {
            if app.log.visible {
                app.focus_log = !app.focus_log;
            }
            vec![]
        }
        Action::Follow | Action::PauseLog => vec![],
        Action::Back => {
            if let Some(v) = app.view_mut()
                && !v.selected.is_empty()
            {
                v.selected.clear();
                return vec![];
            }
            if app.stack.len() > 1 {
                app.stack.pop();
                return app.load_current(None);
            }
            vec![]
        }
        Action::Open => open(app),
        Action::Select => {
            let Some(v) = app.view_mut() else {
                return vec![];
            };
            let Some((id, picked)) = v.row_under_cursor() else {
                return vec![];
            };
            if v.selected.remove(&id).is_none() {
                v.selected.insert(id, picked);
            }
            move_cursor(app, |c, _, _| c + 1)
        }
        Action::SelectAll => {
            let Some(v) = app.view_mut() else {
                return vec![];
            };
            let picked: Vec<(String, Picked)> = v
                .visible_indices()
                .into_iter()
                .filter_map(|i| v.picked_at(i))
                .collect();
            let n = picked.len();
            v.selected.extend(picked);
            app.flash(
                format!("{n} rows selected (all loaded rows; Esc clears)"),
                Level::Info,
            );
            vec![]
        }
        Action::SortByName => {
            let Some(v) = app.view_mut() else {
                return vec![];
            };
            v.order = if v.order == ItemOrder::Name {
                ItemOrder::Waiting
            } else {
                ItemOrder::Name
            };
            let word = if v.order == ItemOrder::Name {
                "name"
            } else {
                "waiting time"
            };
            app.flash(format!("sorted by {word}"), Level::Info);
            app.relist(false)
        }
        Action::Deliveries => {
            let filter = match app.view().map(|v| &v.kind) {
                Some(ViewKind::Stages(w)) => {
                    let stage = app.view().and_then(current_stage_row).map(|s| s.id.clone());
                    DeliveryFilter {
                        workflow: Some(w.clone()),
                        stage,
                        ..Default::default()
                    }
                }
                Some(ViewKind::Workflows) => {
                    let w = workflow_under_cursor(app);
                    DeliveryFilter {
                        workflow: w,
                        ..Default::default()
                    }
                }
                Some(ViewKind::Items { workflow, stage }) => DeliveryFilter {
                    workflow: workflow.clone(),
                    stage: stage.clone(),
                    ..Default::default()
                },
                Some(ViewKind::Item(id)) => DeliveryFilter {
                    item: Some(id.clone()),
                    ..Default::default()
                },
                _ => DeliveryFilter::default(),
            };
            app.push(ViewKind::Deliveries(filter))
        }
        Action::Items => {
            let (workflow, stage) = match app.view().map(|v| &v.kind) {
                Some(ViewKind::Stages(w)) => (
                    Some(w.clone()),
                    app.view().and_then(current_stage_row).map(|s| s.id.clone()),
                ),
                Some(ViewKind::Workflows) => (workflow_under_cursor(app), None),
                _ => (app.current_workflow(), None),
            };
            app.push(ViewKind::Items { workflow, stage })
        }
        Action::Assign => assign(app),
        Action::Advance | Action::Approve | Action::Reject => {
            let Some(v) = app.view() else { return vec![] };
            let chosen = targets(v);
            let naming = Naming::of(v, &chosen);
            let ids = item_versions(v, &chosen);
            if ids.is_empty() {
                return nothing_to_act_on(app);
            }
            let (outcome, verb) = match a {
                Action::Approve => (Some(crate::engine::Outcome::Approve), "Approve"),
                Action::Reject => (Some(crate::engine::Outcome::Reject), "Reject"),
                _ => (None, "Advance"),
            };
            let text = if ids.len() == 1 {
                naming.ask(&format!("{verb} item {}", naming.one()))
            } else {
                naming.ask(&format!("{verb} {} items", ids.len()))
            };
            confirm(app, text, Pending::Advance { ids, outcome })
        }
        // On the failures view, `r`, `R` and `c` act on the whole group under the cursor,
        // through the typed count.
        Action::Refire | Action::Replay | Action::Cancel
            if matches!(app.view().map(|v| &v.kind), Some(ViewKind::Failures(_))) =>
        {
            let action = match a {
                Action::Refire => BulkAction::Refire,
                Action::Replay => BulkAction::Replay,
                _ => BulkAction::Cancel,
            };
            match group_filter(app, action) {
                Some(filter) => vec![Effect::Count { action, filter }],
                None => nothing_to_act_on(app),
            }
        }
        Action::Refire | Action::Replay => {
            let Some(v) = app.view() else { return vec![] };
            let chosen: Vec<String> = match &v.data {
                ViewData::Delivery(d) => vec![d.summary.id.to_string()],
                _ => targets(v),
            };
            if chosen.is_empty() {
                return nothing_to_act_on(app);
            }
            let naming = Naming::of(v, &chosen);
            let ids = chosen.into_iter().map(DeliveryId).collect();
            if a == Action::Refire {
                confirm_refire(app, ids, naming)
            } else {
                confirm_replay(app, ids, naming)
            }
        }
        Action::RefireAll => {
            let filter = match app.view().map(|v| &v.kind) {
                Some(ViewKind::Stages(w)) => DeliveryFilter {
                    workflow: Some(w.clone()),
                    stage: app.view().and_then(current_stage_row).map(|s| s.id.clone()),
                    ..Default::default()
                },
                Some(ViewKind::Deliveries(f)) => {
                    with_search(f, app.view().map_or("", |v| v.filter.as_str()))
                }
                _ => return vec![],
            };
            vec![Effect::Count {
                action: BulkAction::Refire,
                filter,
            }]
        }
        Action::Test | Action::PauseStage => {
            let Some(ViewKind::Stages(w)) = app.view().map(|v| v.kind.clone()) else {
                return vec![];
            };
            let Some(s) = app.view().and_then(current_stage_row).cloned() else {
                return vec![];
            };
            if s.kind != StageKind::Webhook {
                app.flash(
                    format!(
                        "stage {} is a {} stage; only webhook stages can be {}",
                        s.id,
                        s.kind,
                        if a == Action::Test {
                            "tested"
                        } else {
                            "paused"
                        }
                    ),
                    Level::Warn,
                );
                return vec![];
            }
            if a == Action::Test {
                app.flash(format!("testing {}…", s.id), Level::Info);
                return vec![Effect::Test {
                    workflow: w,
                    stage: s.id,
                }];
            }
            // A held stage (issue 21) resumes: that lifts its hold; `p` again pauses it.
            let pause = !s.paused && s.held_until.is_none();
            if pause {
                app.overlay = Some(Overlay::Confirm {
                    text: format!(
                        "Pause stage {}? Its deliveries stay pending until it is resumed.",
                        s.id
                    ),
                    focus: 0,
                    action: Pending::Pause {
                        workflow: w,
                        stage: s.id,
                        pause,
                    },
                });
                vec![]
            } else {
                run(
                    app,
                    Pending::Pause {
                        workflow: w,
                        stage: s.id,
                        pause,
                    },
                )
            }
        }
        Action::Cancel => {
            let Some(v) = app.view() else { return vec![] };
            let chosen: Vec<String> = match &v.data {
                ViewData::Delivery(d) => vec![d.summary.id.to_string()],
                _ => targets(v),
            };
            if chosen.is_empty() {
                return nothing_to_act_on(app);
            }
            let naming = Naming::of(v, &chosen);
            let ids: Vec<DeliveryId> = chosen.into_iter().map(DeliveryId).collect();
            let text = if ids.len() == 1 {
                format!(
                    "{} The item routes along on_failure; an attempt on the wire routes nothing.",
                    naming.ask(&format!("Cancel delivery {}", ids[0]))
                )
            } else {
                format!(
                    "{} Each item routes along on_failure.",
                    naming.ask(&format!("Cancel {} deliveries", ids.len()))
                )
            };
            confirm(app, text, Pending::Cancel(ids))
        }
        Action::CancelAll | Action::Export => {
            let Some(f) = app.view().and_then(|v| match &v.kind {
                ViewKind::Deliveries(f) => Some(with_search(f, &v.filter)),
                _ => None,
            }) else {
                return vec![];
            };
            if a == Action::Export {
                app.flash("exporting…", Level::Info);
                return vec![Effect::Export(f)];
            }
            vec![Effect::Count {
                action: BulkAction::Cancel,
                filter: f,
            }]
        }
        Action::CopyBody
        | Action::CopyResponse
        | Action::CopyHeaders
        | Action::CopyCurl
        | Action::CopyCurlSecrets
        | Action::Pager => payload_key(app, a),
        Action::Copy => {
            let Some(v) = app.view() else { return vec![] };
            let id = match &v.data {
                ViewData::Item(d) => Some(d.item.id.to_string()),
                ViewData::Delivery(d) => Some(d.summary.id.to_string()),
                _ => targets(v).into_iter().next(),
            };
            match id {
                Some(id) => vec![Effect::Copy(id)],
                None => vec![],
            }
        }
    }
}

pub(super) fn workflow_under_cursor(app: &App) -> Option<WorkflowId> {
    let v = app.view()?;
    let ViewData::Workflows(rows) = &v.data else {
        return None;
    };
    v.visible_indices()
        .get(v.cursor)
        .map(|i| rows[*i].id.clone())
}

pub(super) fn assign(app: &mut App) -> Vec<Effect> {
    let Some(v) = app.view() else { return vec![] };
    match &v.kind {
        ViewKind::Stages(w) => {
            let Some(s) = current_stage_row(v) else {
                return vec![];
            };
            let fx = vec![Effect::CountStage {
                workflow: w.clone(),
                from: s.id.clone(),
            }];
            app.counting_stage = true;
            fx
        }
        ViewKind::Items { .. } | ViewKind::Item(_) => {
            let chosen = targets(v);
            let naming = Naming::of(v, &chosen);
            let ids = item_versions(v, &chosen);
            let workflow = match (&v.kind, &v.data) {
                (
                    ViewKind::Items {
                        workflow: Some(w), ..
                    },
                    _,
                ) => Some(w.clone()),
                (_, ViewData::Item(d)) => Some(d.item.workflow.clone()),
                (_, ViewData::Items { rows, .. }) => rows.first().map(|r| r.workflow.clone()),
                _ => None,
            };
            let Some(workflow) = workflow.filter(|_| !ids.is_empty()) else {
                return nothing_to_act_on(app);
            };
            if !app.stages.contains_key(&workflow) {
                // The picker needs the stage list: load it; the picker opens when it arrives,
                // and keys typed meanwhile (the stage's name) wait for it.
                app.pending_picker = Some((workflow.clone(), AssignWhat::Items(ids), naming));
                return vec![Effect::Load {
                    view: 0,
                    kind: ViewKind::Stages(workflow),
                    search: String::new(),
                    order: ItemOrder::Waiting,
                    after: None,
                }];
            }
            open_picker(app, workflow, AssignWhat::Items(ids), naming);
            vec![]
        }
        _ => vec![],
    }
}

pub(super) fn open(app: &mut App) -> Vec<Effect> {
    let Some(v) = app.view() else { return vec![] };
    let vis = v.visible_indices();
    let Some(i) = vis.get(v.cursor).copied() else {
        return vec![];
    };
    let next = match &v.data {
        ViewData::Workflows(rows) => ViewKind::Stages(rows[i].id.clone()),
        ViewData::Stages(d) => ViewKind::Items {
            workflow: Some(d.summary.id.clone()),
            stage: Some(d.stage_list[i].id.clone()),
        },
        ViewData::Items { rows, .. } => ViewKind::Item(rows[i].id.clone()),
        ViewData::Item(d) => ViewKind::Delivery(d.deliveries[i].id.clone()),
        ViewData::Deliveries { rows, .. } => ViewKind::Delivery(rows[i].id.clone()),
        // A group is a filter: its deliveries, where r, R, c, F and C act as on any list.
        ViewData::Failures(groups) => match &v.kind {
            ViewKind::Failures(base) => ViewKind::Deliveries(groups[i].filter(base)),
            _ => return vec![],
        },
        _ => return vec![],
    };
    app.push(next)
}

/// A click selects the row under it (a second within [`DOUBLE_CLICK_MS`] opens it); the
/// wheel scrolls the list or the log pane it is over. Dialogs and prompts take no mouse input.
pub(super) fn mouse_now(app: &mut App, p: Pointer) -> Vec<Effect> {
    if app.overlay.is_some() {
        return vec![];
    }
    let over_log = app.hit.log.is_some_and(|a| a.contains(p.col, p.row));
    let over_main = app.hit.main.is_some_and(|a| a.contains(p.col, p.row));
    match p.what {
        PointerKind::WheelUp | PointerKind::WheelDown => {
            let up = p.what == PointerKind::WheelUp;
            if over_log {
                for _ in 0..WHEEL_ROWS {
                    log_action(app, if up { Action::Up } else { Action::Down });
                }
                return vec![];
            }
            if over_main {
                return if up {
                    move_cursor(app, |c, _, _| c.saturating_sub(WHEEL_ROWS))
                } else {
                    move_cursor(app, |c, _, _| c + WHEEL_ROWS)
                };
            }
            vec![]
        }
        PointerKind::Click => {
            if over_log && let Some(a) = app.hit.log {
                let visible = app.log.visible_indices();
                let at = app.hit.log_first + (p.row - a.y) as usize;
                if let Some(i) = visible.get(at) {
                    app.focus_log = true;
                    app.log.follow = false;
                    app.log.cursor = *i;
                }
                return vec![];
            }
            let Some(a) = app.hit.main.filter(|_| over_main) else {
                return vec![];
            };
            app.focus_log = false;
            // The first line is the table header.
            let Some(line) = (p.row - a.y).checked_sub(1) else {
                return vec![];
            };
            let at = app.hit.main_first + line as usize;
            let Some(v) = app.view_mut() else {
                return vec![];
            };
            if matches!(v.data, ViewData::Item(_) | ViewData::Delivery(_)) || at >= v.len() {
                return vec![];
            }
            v.cursor = at;
            let double = app
                .last_click
                .is_some_and(|(row, t)| row == at && p.at_ms.saturating_sub(t) <= DOUBLE_CLICK_MS);
            if double {
                app.last_click = None;
                return open(app);
            }
            app.last_click = Some((at, p.at_ms));
            vec![]
        }
    }
}

/// An action key with no selected row and no row under the cursor (an empty list, or a filter
/// that matches nothing) says so, so that a fast typist sees why the keys after it did not
/// go to a dialog.
/// The filter an action on the failure group under the cursor takes: the group's own for
/// re-fire and replay (its failed deliveries); for cancel, the open deliveries whose last
/// attempt failed the same way (the retries still to come), since a failed delivery is no
/// longer open.
fn group_filter(app: &App, action: BulkAction) -> Option<DeliveryFilter> {
    let v = app.view()?;
    let (ViewKind::Failures(base), ViewData::Failures(groups)) = (&v.kind, &v.data) else {
        return None;
    };
    let g = groups.get(*v.visible_indices().get(v.cursor)?)?;
    let mut f = g.filter(base);
    if action == BulkAction::Cancel {
        f.state = None;
    }
    Some(f)
}

fn nothing_to_act_on(app: &mut App) -> Vec<Effect> {
    app.flash(
        "nothing to act on: no row is selected or under the cursor",
        Level::Warn,
    );
    vec![]
}

/// The payload viewer's keys: copy the body, the headers or a `curl` command; open `$PAGER`.
fn payload_key(app: &mut App, a: Action) -> Vec<Effect> {
    let Some(v) = app.view() else { return vec![] };
    let ViewData::Delivery(d) = &v.data else {
        return vec![];
    };
    let copy = |what: &str, text: String| {
        vec![Effect::CopyText {
            what: what.into(),
            text,
        }]
    };
    match a {
        Action::CopyBody => copy("the request body", super::super::payload::request_body(d)),
        Action::CopyResponse => match super::super::payload::response_body(d) {
            Some(b) => copy("the newest response body", b),
            None => {
                app.flash("no response body to copy yet", Level::Info);
                vec![]
            }
        },
        Action::CopyHeaders => match super::super::payload::request_headers(d) {
            Some(h) => copy("the request headers (secrets masked)", h),
            None => {
                app.flash(
                    "not sent yet: no request headers to copy (u copies a curl command)",
                    Level::Info,
                );
                vec![]
            }
        },
        Action::CopyCurl | Action::CopyCurlSecrets => vec![Effect::CopyCurl {
            delivery: d.summary.id.clone(),
            reveal: a == Action::CopyCurlSecrets,
        }],
        _ => vec![Effect::Pager(super::super::payload::plain(&v.doc))],
    }
}
