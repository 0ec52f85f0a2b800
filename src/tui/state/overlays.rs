//! Prompts, pickers and dialogs: the keys they take while open, the filter line, and
//! pasted text (which only ever goes into an open prompt).

use super::*;

pub(super) fn text_edit(s: &mut String, k: &KeyEvent) -> bool {
    match k.code {
        KeyCode::Char(c) if !k.modifiers.contains(KeyModifiers::CONTROL) => {
            s.push(c);
            true
        }
        KeyCode::Backspace => {
            s.pop();
            true
        }
        _ => false,
    }
}

/// Keys that scroll a popup or the help: j/k, the arrows, the page keys.
fn scroll_key(k: &KeyEvent) -> bool {
    matches!(
        k.code,
        KeyCode::Char('j' | 'k')
            | KeyCode::Up
            | KeyCode::Down
            | KeyCode::PageUp
            | KeyCode::PageDown
    )
}

fn scrolled(scroll: usize, k: &KeyEvent, page: usize) -> usize {
    match k.code {
        KeyCode::Char('k') | KeyCode::Up => scroll.saturating_sub(1),
        KeyCode::PageUp => scroll.saturating_sub(page),
        KeyCode::PageDown => scroll.saturating_add(page),
        _ => scroll.saturating_add(1),
    }
}

pub(super) fn overlay_key(app: &mut App, overlay: Overlay, k: KeyEvent) -> Vec<Effect> {
    let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
    match overlay {
        // A popup scrolls with j/k, the arrows and the page keys; any other key closes it.
        Overlay::Popup {
            title,
            text,
            mut scroll,
        } if !ctrl_c && scroll_key(&k) => {
            let page = app.page_rows.max(2) / 2;
            // No further than its last line (the view stops at the last screenful).
            scroll = scrolled(scroll, &k, page).min(text.lines().count());
            app.overlay = Some(Overlay::Popup {
                title,
                text,
                scroll,
            });
            vec![]
        }
        // Help scrolls like a popup, as far as its last key.
        Overlay::Help { scroll } if !ctrl_c && scroll_key(&k) => {
            let keys = keymap::active(app.scope(), app.focus_log, app.read_only).count();
            let page = app.page_rows.max(2) / 2;
            app.overlay = Some(Overlay::Help {
                scroll: scrolled(scroll, &k, page).min(keys),
            });
            vec![]
        }
        Overlay::Help { .. } | Overlay::Popup { .. } => {
            if ctrl_c {
                app.quit = true;
            }
            vec![]
        }
        // Ctrl-C quits from the text prompts too, as everywhere (the key map's `quit`).
        Overlay::Command(_) | Overlay::Filter(_) if ctrl_c => {
            app.quit = true;
            vec![]
        }
        Overlay::Command(mut s) => match k.code {
            KeyCode::Esc => vec![],
            KeyCode::Enter => command(app, s.trim()),
            _ => {
                text_edit(&mut s, &k);
                app.overlay = Some(Overlay::Command(s));
                vec![]
            }
        },
        Overlay::Filter(mut s) => {
            let apply = apply_filter;
            match k.code {
                KeyCode::Esc => apply(app, String::new()),
                KeyCode::Enter => vec![],
                _ => {
                    if text_edit(&mut s, &k) {
                        let fx = apply(app, s.clone());
                        app.overlay = Some(Overlay::Filter(s));
                        return fx;
                    }
                    app.overlay = Some(Overlay::Filter(s));
                    vec![]
                }
            }
        }
        Overlay::Picker {
            title,
            workflow,
            choices,
            mut query,
            mut cursor,
            target,
            naming,
        } => {
            let matching: Vec<&(StageId, StageKind)> = choices
                .iter()
                .filter(|(id, _)| id.as_str().contains(query.as_str()))
                .collect();
            match k.code {
                KeyCode::Esc => return vec![],
                KeyCode::Enter => {
                    let Some((to, _)) = matching.get(cursor).cloned() else {
                        app.overlay = Some(Overlay::Picker {
                            title,
                            workflow,
                            choices,
                            query,
                            cursor,
                            target,
                            naming,
                        });
                        return vec![];
                    };
                    let to = to.clone();
                    let action = Pending::Assign {
                        workflow: workflow.clone(),
                        to: to.clone(),
                        target: target.clone(),
                    };
                    app.overlay = Some(match &target {
                        AssignWhat::Items(ids) => Overlay::Confirm {
                            text: if ids.len() == 1 {
                                naming.ask(&format!("Assign item {} to stage {to}", naming.one()))
                            } else {
                                naming.ask(&format!("Assign {} items to stage {to}", ids.len()))
                            },
                            focus: 0,
                            action,
                        },
                        AssignWhat::Stage { from, count } => Overlay::Typed {
                            text: format!(
                                "Assign all {count} items of stage {from} to stage {to}."
                            ),
                            expected: count.to_string(),
                            typed: String::new(),
                            action,
                        },
                    });
                    return vec![];
                }
                KeyCode::Up => cursor = cursor.saturating_sub(1),
                KeyCode::Down => cursor = (cursor + 1).min(matching.len().saturating_sub(1)),
                _ => {
                    if text_edit(&mut query, &k) {
                        cursor = 0;
                    }
                }
            }
            app.overlay = Some(Overlay::Picker {
                title,
                workflow,
                choices,
                query,
                cursor,
                target,
                naming,
            });
            vec![]
        }
        Overlay::Confirm {
            text,
            mut focus,
            action,
        } => match k.code {
            KeyCode::Esc => {
                app.flash("cancelled", Level::Info);
                vec![]
            }
            KeyCode::Tab | KeyCode::Left | KeyCode::Right | KeyCode::BackTab => {
                focus = 1 - focus.min(1);
                app.overlay = Some(Overlay::Confirm {
                    text,
                    focus,
                    action,
                });
                vec![]
            }
            KeyCode::Enter => {
                if focus == 1 {
                    app.flash("working…", Level::Info);
                    let fx = run(app, action);
                    // The selection was for this action; the answer says what became of it.
                    if !fx.is_empty()
                        && let Some(v) = app.view_mut()
                    {
                        v.selected.clear();
                    }
                    fx
                } else {
                    app.flash("cancelled", Level::Info);
                    vec![]
                }
            }
            _ => {
                if ctrl_c {
                    app.quit = true;
                    return vec![];
                }
                app.overlay = Some(Overlay::Confirm {
                    text,
                    focus,
                    action,
                });
                vec![]
            }
        },
        Overlay::Typed {
            text,
            expected,
            mut typed,
            action,
        } => match k.code {
            KeyCode::Esc => {
                app.flash("cancelled", Level::Info);
                vec![]
            }
            KeyCode::Enter => {
                if typed == expected {
                    app.flash("working…", Level::Info);
                    run(app, action)
                } else {
                    app.flash(format!("type {expected} to confirm"), Level::Warn);
                    app.overlay = Some(Overlay::Typed {
                        text,
                        expected,
                        typed,
                        action,
                    });
                    vec![]
                }
            }
            _ => {
                if let KeyCode::Char(c) = k.code
                    && c.is_ascii_digit()
                {
                    typed.push(c);
                } else if k.code == KeyCode::Backspace {
                    typed.pop();
                }
                app.overlay = Some(Overlay::Typed {
                    text,
                    expected,
                    typed,
                    action,
                });
                vec![]
            }
        },
    }
}

/// Sets the filter of the log pane (when it has the focus) or of the view.
pub(super) fn apply_filter(app: &mut App, text: String) -> Vec<Effect> {
    if app.focus_log {
        app.log.filter = text;
        return vec![];
    }
    let Some(v) = app.view_mut() else {
        return vec![];
    };
    if v.filter == text {
        return vec![];
    }
    v.filter = text;
    if matches!(v.kind, ViewKind::Items { .. } | ViewKind::Deliveries(_)) {
        // Items and deliveries filter in SQL, over the whole store: keys wait for the
        // filtered page (`relist`).
        return app.relist(true);
    }
    // Other lists filter the loaded rows, at once.
    v.cursor = 0;
    if let Some(text) = v.keep_visible_selection() {
        app.flash(text, Level::Warn);
    }
    vec![]
}

/// Pasted text (bracketed paste) goes into the prompt that is open: the filter (applied once,
/// not once per character), the command line, the picker's query or a typed confirmation.
/// Only its first line, without control characters. With no prompt open it does nothing: a
/// paste must never be read as keys (`a`, `r`, …).
pub(super) fn paste_now(app: &mut App, text: String) -> Vec<Effect> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let line = crate::sanitize::strip_controls(line);
    match app.overlay.take() {
        Some(Overlay::Filter(mut s)) => {
            s.push_str(&line);
            let fx = apply_filter(app, s.clone());
            app.overlay = Some(Overlay::Filter(s));
            fx
        }
        Some(o @ (Overlay::Command(_) | Overlay::Picker { .. } | Overlay::Typed { .. })) => {
            app.overlay = Some(o);
            let mut fx = Vec::new();
            for c in line.chars() {
                fx.extend(key_now(app, KeyEvent::from(KeyCode::Char(c))));
            }
            fx
        }
        other => {
            app.overlay = other;
            if !line.is_empty() {
                app.flash(
                    "pasted text goes into a prompt: open / (filter) or : (command) first",
                    Level::Info,
                );
            }
            vec![]
        }
    }
}
