//! Drawing: a pure function of the state onto a frame. Never performs IO.
//!
//! Every piece guards its own minimum size and uses saturating arithmetic, so any terminal
//! size (0×0 included) draws without panicking. Text from outside is sanitised here, at the
//! last moment, so nothing unsanitised reaches the screen.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap};

use super::keymap;
use super::payload::{DocLine, Tok};
use super::state::{App, Level, LogEntry, Overlay, ViewData};
use super::theme::Theme;
use crate::model::AttemptEvent;
use crate::model::{DeliveryState, StageKind};
use crate::sanitize::{strip_controls, strip_controls_multiline};

/// Smallest terminal the console draws in.
pub const MIN_WIDTH: u16 = 50;
pub const MIN_HEIGHT: u16 = 12;

fn clean(s: &str) -> String {
    strip_controls(s)
}

/// `s` in exactly `width` terminal cells: cut with `…` when longer, padded when shorter.
/// Counted in cells, not characters, so wide and combining characters keep columns aligned.
fn fit(s: &str, width: usize) -> String {
    use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};
    let full = s.width();
    if full <= width {
        return format!("{s}{}", " ".repeat(width - full));
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out.push_str(&" ".repeat(width.saturating_sub(used + 1)));
    out
}

fn ago(t: &chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> String {
    let s = (now - *t).num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The notice of a terminal too small to draw in: the longest wording that fits, so the size
/// it needs is never the part cut off (at 10×3: "larger (needs 50×12)").
pub fn size_notice(width: u16, height: u16) -> String {
    let need = format!("(needs {MIN_WIDTH}×{MIN_HEIGHT})");
    let words = [
        format!("make the terminal larger {need}"),
        format!("terminal too small {need}"),
        format!("larger {need}"),
        need.clone(),
        format!("{MIN_WIDTH}×{MIN_HEIGHT}"),
    ];
    let fits = |s: &str| {
        s.split_whitespace()
            .all(|w| unicode_width::UnicodeWidthStr::width(w) <= width as usize)
            && wrapped_height(s, width as usize) <= height as usize
    };
    words
        .iter()
        .find(|s| fits(s))
        .unwrap_or(&words[words.len() - 1])
        .clone()
}

/// `path` in at most `width` cells, shortened from the left (`…/hookops/demo.db`): the end of
/// a path (the file) is the part that tells files apart.
pub fn fit_path_left(path: &str, width: usize) -> String {
    use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};
    if path.width() <= width {
        return path.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut kept: Vec<char> = Vec::new();
    let mut used = 0;
    for c in path.chars().rev() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        kept.push(c);
        used += w;
    }
    kept.reverse();
    let mut tail: String = kept.into_iter().collect();
    // Start at a directory boundary when the cut left one (not when it would leave only "/").
    if let Some(i) = tail.find('/')
        && i > 0
        && i + 1 < tail.len()
    {
        tail = tail[i..].to_string();
    }
    format!("…{tail}")
}

/// Draws the whole console.
pub fn draw(f: &mut Frame, app: &mut App, theme: &Theme, now: chrono::DateTime<chrono::Utc>) {
    let area = f.area();
    // Rebuilt by this frame: a list not drawn cannot be clicked.
    app.hit = Default::default();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        f.render_widget(
            Paragraph::new(size_notice(area.width, area.height)).wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let log_h = if app.log.visible {
        (area.height / 3).clamp(4, 14)
    } else {
        0
    };
    // A long flash message wraps onto up to three lines instead of being cut.
    let flash_h = app
        .flash
        .as_ref()
        .map(|fl| wrapped_height(&format!("ℹ {}", clean(&fl.text)), area.width as usize))
        .unwrap_or(1)
        .clamp(1, 3) as u16;
    let [header, main, log, flash, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(log_h),
        Constraint::Length(flash_h),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, app, theme, header);
    draw_main(f, app, theme, main, now);
    if app.log.visible {
        draw_log(f, app, theme, log, now);
    }
    draw_flash(f, app, theme, flash);
    draw_footer(f, app, theme, footer);
    if let Some(o) = &app.overlay {
        draw_overlay(f, app, o, theme, area);
    }
}

fn draw_header(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    // The sparkline gives way first on a narrow terminal: the counts must fit whole.
    let spark_width = if area.width >= 80 { 24 } else { 14 };
    let [left, right] =
        Layout::horizontal([Constraint::Min(20), Constraint::Length(spark_width)]).areas(area);
    let count = |s: DeliveryState| {
        app.header
            .counts
            .iter()
            .find(|(st, _)| *st == s)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    let dispatcher_style = if app.header.dispatcher_warning {
        theme.warn
    } else {
        theme.dim
    };
    // Line 1: read-only, who dispatches (the thing to worry about first) and the file
    // (shortened from the left); line 2: counts, which must survive an 80-column terminal.
    let mut line1 = vec![Span::styled(" hookops ", theme.title), Span::raw(" ")];
    // Read-only first: it changes what every key does, so no width may cut it off.
    if app.read_only {
        line1.push(Span::styled("[read-only] ", theme.warn));
    }
    line1.extend([
        Span::styled(
            if app.header.dispatcher_warning {
                "⚠ "
            } else {
                ""
            },
            dispatcher_style,
        ),
        Span::styled(clean(&app.header.dispatcher), dispatcher_style),
    ]);
    let used: usize = line1.iter().map(|s| s.width()).sum();
    let room = (left.width as usize).saturating_sub(used + 2);
    if room >= 8 {
        line1.push(Span::styled(
            format!("  {}", fit_path_left(&clean(&app.header.db), room)),
            theme.dim,
        ));
    }
    let line2 = vec![
        Span::styled(
            format!(" ◷ pending {}", count(DeliveryState::Pending)),
            theme.normal,
        ),
        Span::raw(" · "),
        Span::styled(
            format!("↗ in flight {}", count(DeliveryState::InFlight)),
            theme.normal,
        ),
        Span::raw(" · "),
        Span::styled(
            format!("↻ retry {}", count(DeliveryState::RetryScheduled)),
            theme.warn,
        ),
        Span::raw(" · "),
        Span::styled(
            format!("✗ failed {}", count(DeliveryState::Failed)),
            theme.bad,
        ),
    ];
    // Too narrow for the words: the glyphs and numbers alone (never a cut number).
    let line2 = if Line::from(line2.clone()).width() <= left.width as usize {
        line2
    } else {
        vec![
            Span::styled(format!(" ◷{}", count(DeliveryState::Pending)), theme.normal),
            Span::styled(
                format!(" ↗{}", count(DeliveryState::InFlight)),
                theme.normal,
            ),
            Span::styled(
                format!(" ↻{}", count(DeliveryState::RetryScheduled)),
                theme.warn,
            ),
            Span::styled(format!(" ✗{}", count(DeliveryState::Failed)), theme.bad),
        ]
    };
    // The dispatcher's words are cut with `…` rather than at the edge.
    let used: usize = line1.iter().map(|s| s.width()).sum();
    if used > left.width as usize
        && let Some(last) = line1.pop()
    {
        // Whole words only, so a pid is never cut through.
        let room = (left.width as usize).saturating_sub(used - last.width() + 1);
        let mut kept = String::new();
        for word in last.content.split(' ') {
            let next = if kept.is_empty() {
                word.to_string()
            } else {
                format!("{kept} {word}")
            };
            if unicode_width::UnicodeWidthStr::width(next.as_str()) > room {
                break;
            }
            kept = next;
        }
        line1.push(Span::styled(format!("{kept}…"), last.style));
    }
    f.render_widget(
        Paragraph::new(vec![Line::from(line1), Line::from(line2)]),
        left,
    );
    // Attempts per second and, beside them on the same scale, failures per second (the last
    // complete second in words; glyphs, not only colour, tell them apart).
    let last = |r: &std::collections::VecDeque<u64>| r.iter().rev().nth(1).copied().unwrap_or(0);
    let [label, spark] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(right);
    let fails = last(&app.fail_rate);
    let n = last(&app.rate);
    let text = [
        format!("{n} attempts/s · ✗ {fails}/s"),
        format!("{n}/s · ✗ {fails}/s"),
        format!("{n}/s ✗{fails}"),
    ]
    .into_iter()
    .find(|t| unicode_width::UnicodeWidthStr::width(t.as_str()) <= right.width as usize)
    .unwrap_or_else(|| format!("{n}/s"));
    f.render_widget(
        Paragraph::new(text)
            .style(if fails > 0 { theme.warn } else { theme.dim })
            .alignment(ratatui::layout::Alignment::Right),
        label,
    );
    let [ok_area, _, fail_area] = Layout::horizontal([
        Constraint::Ratio(3, 5),
        Constraint::Length(1),
        Constraint::Fill(1),
    ])
    .areas(spark);
    let tail = |r: &std::collections::VecDeque<u64>, width: usize| -> Vec<u64> {
        r.iter().rev().skip(1).take(width).rev().copied().collect()
    };
    let ok_tail = tail(&app.rate, ok_area.width as usize);
    let fail_tail = tail(&app.fail_rate, fail_area.width as usize);
    let max = ok_tail
        .iter()
        .chain(&fail_tail)
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    f.render_widget(
        Sparkline::default()
            .data(&ok_tail)
            .max(max)
            .style(theme.good),
        ok_area,
    );
    f.render_widget(
        Sparkline::default()
            .data(&fail_tail)
            .max(max)
            .style(theme.bad),
        fail_area,
    );
}

fn hit_rect(r: Rect) -> super::state::Area {
    super::state::Area {
        x: r.x,
        y: r.y,
        width: r.width,
        height: r.height,
    }
}

fn block<'a>(title: String, theme: &Theme, focused: bool) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(if focused { theme.focus } else { theme.dim })
        .title(Span::styled(format!(" {title} "), theme.title))
}

/// Keeps the cursor row visible: the first row to draw for a window of `height` rows.
fn window(cursor: usize, len: usize, height: usize) -> usize {
    if height == 0 || len <= height {
        return 0;
    }
    cursor
        .saturating_sub(height / 2)
        .min(len.saturating_sub(height))
}

fn draw_main(
    f: &mut Frame,
    app: &mut App,
    theme: &Theme,
    area: Rect,
    now: chrono::DateTime<chrono::Utc>,
) {
    let focused = !app.focus_log;
    let Some(v) = app.stack.last() else { return };
    // The title in parts, most useful first; a narrow terminal drops whole parts from the
    // right rather than cut one through (a count or a row number is never half shown).
    let mut title = v.kind.title();
    if let ViewData::Health(r) = &v.data {
        title.push_str(&super::ops::health_title(r));
    }
    let mut parts = vec![title];
    if !v.selected.is_empty() {
        let shown = v.visible_ids();
        let hidden = v
            .selected
            .keys()
            .filter(|id| !shown.contains(id.as_str()))
            .count();
        parts.push(if hidden > 0 {
            format!("{} selected ({hidden} not shown)", v.selected.len())
        } else {
            format!("{} selected", v.selected.len())
        });
    }
    if !v.filter.is_empty() {
        parts.push(format!("/{}", clean(&v.filter)));
    }
    if let Some(pos) = position(v) {
        parts.push(pos);
    }
    // The payload viewer: its lines wrapped to the width, the position in the title.
    let doc = match &v.data {
        ViewData::Delivery(_) => {
            let width = area.width.saturating_sub(2) as usize;
            let height = area.height.saturating_sub(2) as usize;
            let (lines, top, total) = doc_window(&v.doc, width, height, v.scroll, theme);
            if total > height {
                parts.push(format!(
                    "lines {}–{} of {total}",
                    top + 1,
                    (top + height).min(total),
                ));
            }
            Some((lines, top))
        }
        _ => None,
    };
    let title = fit_title(parts, area.width.saturating_sub(4) as usize);
    let b = block(title, theme, focused);
    let inner = b.inner(area);
    f.render_widget(b, area);
    if let Some((lines, top)) = doc {
        app.page_rows = inner.height.max(1) as usize;
        f.render_widget(Paragraph::new(lines), inner);
        // Kept at the last screenful, so `k` after `G` moves at once.
        if let Some(v) = app.stack.last_mut() {
            v.scroll = top;
        }
        return;
    }
    // Header row of tables takes one line.
    app.page_rows = inner.height.saturating_sub(1).max(1) as usize;
    // Where the rows are, for the mouse: list row `main_first` is drawn below the header line.
    let (cursor, len) = app
        .stack
        .last()
        .map(|v| (v.cursor, v.len()))
        .unwrap_or((0, 0));
    app.hit.main = Some(hit_rect(inner));
    app.hit.main_first = window(cursor, len, inner.height.saturating_sub(1) as usize);
    let Some(v) = app.stack.last() else { return };
    let height = inner.height.saturating_sub(1) as usize;
    let vis = v.visible_indices();
    let start = window(v.cursor, vis.len(), height);
    let shown: Vec<usize> = vis.iter().skip(start).take(height).copied().collect();
    let cursor_row = v.cursor.saturating_sub(start);
    // The table's highlight symbol takes one cell before the columns.
    let table_width = inner.width.saturating_sub(1) as usize;
    let mark = |id: &str| {
        if v.selected.contains_key(id) {
            "●"
        } else {
            " "
        }
    };
    let (header, rows, widths): (Vec<&str>, Vec<Row>, Vec<Constraint>) = match &v.data {
        ViewData::Loading => {
            f.render_widget(Paragraph::new("loading…").style(theme.dim), inner);
            return;
        }
        ViewData::Failed(e) => {
            f.render_widget(
                Paragraph::new(clean(e))
                    .style(theme.bad)
                    .wrap(Wrap { trim: true }),
                inner,
            );
            return;
        }
        ViewData::Workflows(rows) => grid(
            &[
                ("ID", Col::Text { min: 8, keep: 9 }),
                ("NAME", Col::Text { min: 8, keep: 3 }),
                ("STAGES", Col::Num(2)),
                ("ITEMS", Col::Num(6)),
                ("WAITING", Col::Num(5)),
                ("IN DELIVERY", Col::Num(4)),
                ("FAILED", Col::Num(7)),
                ("DONE", Col::Num(1)),
            ],
            shown
                .iter()
                .map(|i| {
                    let w = &rows[*i];
                    vec![
                        Line::from(w.id.to_string()),
                        Line::from(clean(&w.name)),
                        Line::from(w.stages.to_string()),
                        Line::from(w.items.to_string()),
                        Line::from(w.waiting.to_string()),
                        Line::from(w.in_delivery.to_string()),
                        Line::from(fail_cell(w.failed, theme)),
                        Line::from(w.done.to_string()),
                    ]
                })
                .collect(),
            table_width,
        ),
        ViewData::Stages(d) => grid(
            &[
                ("STAGE", Col::Text { min: 10, keep: 9 }),
                ("KIND", Col::Text { min: 8, keep: 3 }),
                ("ITEMS", Col::Num(6)),
                ("WAITING", Col::Num(5)),
                ("IN DELIVERY", Col::Num(2)),
                ("FAILED", Col::Num(7)),
                ("STATUS", Col::Text { min: 12, keep: 10 }),
                // Of the attempts this console saw in the last five minutes.
                ("FAIL 5M", Col::Num(3)),
            ],
            shown
                .iter()
                .map(|i| {
                    let s = &d.stage_list[*i];
                    let (tried, failed) = app.stage_failures(&d.summary.id, &s.id);
                    let rate = if tried == 0 {
                        Span::styled("-", theme.dim)
                    } else {
                        let pct = (failed as f64 * 100.0 / tried as f64).round();
                        if failed > 0 {
                            Span::styled(format!("✗ {pct:.0}% of {tried}"), theme.bad)
                        } else {
                            Span::styled(format!("0% of {tried}"), theme.good)
                        }
                    };
                    let mut status: Vec<Span> = Vec::new();
                    if s.paused {
                        status.push(Span::styled("⏸ paused ", theme.warn));
                    }
                    if s.needs_assignment && s.waiting > 0 {
                        status.push(Span::styled(
                            format!("▶ {} to assign (a) ", s.waiting),
                            theme.warn,
                        ));
                    }
                    if let Some(held) = s.hold_text(now) {
                        status.push(Span::styled(format!("⏳ {held} "), theme.warn));
                    }
                    if s.kind == StageKind::Webhook {
                        let d = |k: &str| s.deliveries.get(k).copied().unwrap_or(0);
                        // In flight, and the stage's concurrency while 429s hold it down.
                        match s.concurrency_limit {
                            Some(limit) => status.push(Span::styled(
                                format!("↗ {}/{limit} in flight (429s) ", d("in_flight")),
                                theme.warn,
                            )),
                            None if d("in_flight") > 0 => {
                                status.push(Span::raw(format!("↗ {} in flight ", d("in_flight"))))
                            }
                            None => {}
                        }
                        if let Some(rate) = s.rate_text() {
                            status.push(Span::raw(format!("⏱ {rate} ")));
                        }
                        if d("failed") > 0 {
                            status.push(Span::styled(
                                format!("✗ {} failed ", d("failed")),
                                theme.bad,
                            ));
                        }
                        if d("retry_scheduled") > 0 {
                            status.push(Span::styled(
                                format!("↻ {} retrying ", d("retry_scheduled")),
                                theme.warn,
                            ));
                        }
                        if d("succeeded") > 0 {
                            status.push(Span::styled(format!("✓ {} ", d("succeeded")), theme.good));
                        }
                    }
                    vec![
                        Line::from(clean(&s.name)),
                        Line::from(s.kind.to_string()),
                        Line::from(s.items.to_string()),
                        Line::from(s.waiting.to_string()),
                        Line::from(s.in_delivery.to_string()),
                        Line::from(fail_cell(s.failed, theme)),
                        Line::from(status),
                        Line::from(rate),
                    ]
                })
                .collect(),
            table_width,
        ),
        ViewData::Items { rows, .. } => grid(
            &[
                ("", Col::Num(10)),
                ("NAME", Col::Text { min: 10, keep: 9 }),
                ("ID", Col::Text { min: 8, keep: 6 }),
                ("STAGE", Col::Text { min: 8, keep: 4 }),
                ("STATE", Col::Text { min: 9, keep: 5 }),
                ("WAITING", Col::Num(7)),
            ],
            shown
                .iter()
                .map(|i| {
                    let r = &rows[*i];
                    vec![
                        Line::from(mark(r.id.as_str())),
                        Line::from(clean(&r.name)),
                        Line::from(r.id.to_string()),
                        Line::from(r.stage.to_string()),
                        Line::from(state_span(r.state, theme)),
                        Line::from(ago(&r.entered_at, now)),
                    ]
                })
                .collect(),
            table_width,
        ),
        ViewData::Deliveries { rows, .. } => grid(
            &[
                ("", Col::Num(10)),
                ("STATE", Col::Text { min: 9, keep: 8 }),
                ("STAGE", Col::Text { min: 8, keep: 5 }),
                ("ITEM", Col::Text { min: 10, keep: 9 }),
                ("ATTEMPTS", Col::Num(4)),
                ("LAST", Col::Num(7)),
                ("AGE", Col::Num(3)),
                ("ID", Col::Text { min: 10, keep: 6 }),
                // Shown when the terminal is wide enough (dropped first otherwise).
                ("NEXT", Col::Num(2)),
                ("TRIGGER", Col::Text { min: 6, keep: 1 }),
                ("ERROR", Col::Text { min: 20, keep: 0 }),
            ],
            shown
                .iter()
                .map(|i| {
                    let r = &rows[*i];
                    vec![
                        Line::from(mark(r.id.as_str())),
                        Line::from(delivery_state_span(r.state, theme)),
                        Line::from(r.stage.to_string()),
                        Line::from(clean(
                            r.item_name
                                .as_deref()
                                .or(r.item_id.as_ref().map(|i| i.as_str()))
                                .unwrap_or(r.event.as_str()),
                        )),
                        Line::from(r.attempts.to_string()),
                        Line::from(result_span(r.last_status, r.last_error_kind, theme)),
                        Line::from(ago(&r.created_at, now)),
                        Line::from(r.id.to_string()),
                        Line::from(
                            r.next_attempt_at
                                .filter(|_| r.state.is_open())
                                .map(|t| format!("in {}", ago(&now, t)))
                                .unwrap_or_else(|| "-".into()),
                        ),
                        Line::from(r.trigger.to_string()),
                        Line::from(clean(r.last_error_message.as_deref().unwrap_or(""))),
                    ]
                })
                .collect(),
            table_width,
        ),
        ViewData::Audit(rows) => grid(
            &[
                ("AT", Col::Num(6)),
                ("OPERATOR", Col::Text { min: 6, keep: 5 }),
                ("ACTION", Col::Text { min: 6, keep: 7 }),
                ("TARGET", Col::Text { min: 10, keep: 8 }),
                ("COUNT", Col::Num(9)),
                ("FILTER", Col::Text { min: 6, keep: 2 }),
            ],
            shown
                .iter()
                .map(|i| {
                    let r = &rows[*i];
                    vec![
                        Line::from(r.at.format("%m-%d %H:%M:%S").to_string()),
                        Line::from(clean(&r.operator)),
                        Line::from(r.action.clone()),
                        Line::from(clean(&r.target)),
                        Line::from(r.count.to_string()),
                        Line::from(clean(r.filter.as_deref().unwrap_or(""))),
                    ]
                })
                .collect(),
            table_width,
        ),
        ViewData::Failures(groups) => grid(
            &[
                ("COUNT", Col::Num(9)),
                ("ITEMS", Col::Num(4)),
                ("STAGE", Col::Text { min: 6, keep: 8 }),
                ("CAUSE", Col::Num(7)),
                ("LAST", Col::Num(5)),
                ("MESSAGE", Col::Text { min: 6, keep: 3 }),
            ],
            shown
                .iter()
                .map(|i| {
                    let g = &groups[*i];
                    let cause = match (g.status, g.error_kind) {
                        (Some(s), _) => format!("✗ {s}"),
                        (None, Some(k)) => format!("✗ {k}"),
                        (None, None) => "-".into(),
                    };
                    vec![
                        Line::from(g.count.to_string()),
                        Line::from(g.items.to_string()),
                        Line::from(clean(g.stage.as_str())),
                        Line::from(cause),
                        Line::from(
                            g.last_at
                                .map(|t| t.format("%m-%d %H:%M").to_string())
                                .unwrap_or_default(),
                        ),
                        Line::from(clean(g.message.as_deref().unwrap_or(""))),
                    ]
                })
                .collect(),
            table_width,
        ),
        ViewData::Health(r) => super::ops::health_table(r, &shown, theme),
        ViewData::Item(d) => {
            draw_item(f, d, v.cursor, v.scroll, theme, inner, now);
            return;
        }
        ViewData::Delivery(_) => return,
    };
    if rows.is_empty() {
        let empty = if v.filter.is_empty() {
            empty_hint(app, v)
        } else {
            format!("nothing matches /{} (esc in / clears it)", clean(&v.filter))
        };
        f.render_widget(
            Paragraph::new(empty)
                .style(theme.dim)
                .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }
    // The cursor row: reverse video plus a marker, so it survives NO_COLOR and monochrome.
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme.header))
        .column_spacing(1)
        .row_highlight_style(theme.selected)
        .highlight_symbol("▶")
        .highlight_spacing(ratatui::widgets::HighlightSpacing::Always);
    let mut state = ratatui::widgets::TableState::default();
    state.select(focused.then_some(cursor_row));
    f.render_stateful_widget(table, inner, &mut state);
}

/// Title parts joined with ` · `, as many whole parts as fit in `width` cells (the first
/// always, cut with `…` when even it is too long).
fn fit_title(parts: Vec<String>, width: usize) -> String {
    use unicode_width::UnicodeWidthStr;
    let mut out = String::new();
    for (i, p) in parts.into_iter().enumerate() {
        if i == 0 {
            out = if p.width() > width {
                fit(&p, width).trim_end().to_string()
            } else {
                p
            };
            continue;
        }
        if out.width() + 3 + p.width() > width {
            break;
        }
        out.push_str(" · ");
        out.push_str(&p);
    }
    out
}

/// `row N of M` for a list: N counts from the whole list's first row (a view that went to
/// the end with `G` holds its last rows only), M from the counters (`M+` when they cannot
/// tell and more rows follow the loaded ones). A list filtered on screen counts its matches.
fn position(v: &super::state::View) -> Option<String> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    let (loaded, more) = match &v.data {
        ViewData::Items { rows, more } => (rows.len(), *more),
        ViewData::Deliveries { rows, more, .. } => (rows.len(), *more),
        ViewData::Workflows(_)
        | ViewData::Stages(_)
        | ViewData::Audit(_)
        | ViewData::Failures(_) => (n, false),
        _ => return None,
    };
    let local_filter = !v.filter.is_empty() && !matches!(v.data, ViewData::Items { .. });
    if local_filter {
        return Some(format!("match {} of {n}", v.cursor + 1));
    }
    let row = v.base + v.cursor + 1;
    let seen = v.base + loaded;
    let of = match v.total {
        Some(t) if t as usize >= seen => t.to_string(),
        _ if more => format!("{seen}+"),
        _ => seen.to_string(),
    };
    Some(format!("row {row} of {of}"))
}

/// What an empty view would show, and the command or key that fills it (issue 19: empty
/// states that teach).
fn empty_hint(app: &App, v: &super::state::View) -> String {
    use super::state::ViewKind;
    match &v.kind {
        ViewKind::Workflows => "no workflows yet: add one with `hookops workflow apply FILE`, \
             or try `hookops demo` (a demo database with a scripted receiver)"
            .into(),
        ViewKind::Items {
            workflow: Some(w),
            stage: Some(s),
        } => {
            let kind = app
                .stages
                .get(w)
                .and_then(|st| st.iter().find(|(id, _)| id == s).map(|(_, k)| *k));
            match kind {
                Some(StageKind::Dataset) => format!(
                    "no items in {s}: import some with `hookops item import --workflow {w} FILE` \
                     (JSON Lines, or a V7 Darwin JSON export); they wait here to be assigned (a)"
                ),
                _ => format!(
                    "no items in {s}: items arrive when assigned here (a on items) or routed \
                     by the workflow"
                ),
            }
        }
        ViewKind::Items { workflow, .. } => format!(
            "no items yet: import some with `hookops item import --workflow {} FILE`",
            workflow.as_ref().map(|w| w.as_str()).unwrap_or("ID")
        ),
        ViewKind::Deliveries(f) => {
            let scope = crate::store::DeliveryFilter {
                workflow: f.workflow.clone(),
                stage: f.stage.clone(),
                ..Default::default()
            };
            if *f == scope {
                return "no deliveries match: one is made each time an item enters a webhook \
                        stage (assign items to it with a), and by t (test webhook) in the stages view"
                    .into();
            }
            // A filter hides them: say so, and how to see them all (a `/` search that
            // matches nothing has its own line, with how to clear it).
            let what = match f.state {
                Some(s) => format!("no {s} deliveries match"),
                None => "no deliveries match".into(),
            };
            format!(
                "{what} the filter ({}): Esc goes back; :dl alone lists every delivery",
                super::state::filter_words(f)
            )
        }
        ViewKind::Audit => "no operator actions recorded yet".into(),
        ViewKind::Failures(_) => "no failed deliveries match: nothing to re-fire".into(),
        _ => "nothing here yet".into(),
    }
}

/// How a table column gives way on a narrow terminal (issue 19: numbers never lie).
#[derive(Clone, Copy, Debug)]
enum Col {
    /// Always as wide as its widest value, never cut; `keep` orders which columns are dropped
    /// first (lowest) when even shrunk text columns leave too little room.
    Num(u8),
    /// Shrinks down to `min` cells, cut with `…`.
    Text { min: u16, keep: u8 },
}

impl Col {
    fn keep(self) -> u8 {
        match self {
            Col::Num(k) | Col::Text { keep: k, .. } => k,
        }
    }
}

/// A table whose numbers are never cut: number columns get their full width first, text
/// columns share what is left (down to their minimum, cut with `…`), and when even that does
/// not fit, whole columns are dropped, lowest `keep` first (rightmost among equals).
fn grid(
    cols: &[(&'static str, Col)],
    rows: Vec<Vec<Line<'static>>>,
    width: usize,
) -> (Vec<&'static str>, Vec<Row<'static>>, Vec<Constraint>) {
    use unicode_width::UnicodeWidthStr;
    let content: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(c, (title, _))| {
            rows.iter()
                .map(|r| r.get(c).map(Line::width).unwrap_or(0))
                .max()
                .unwrap_or(0)
                .max(title.width())
        })
        .collect();
    let need_of = |c: usize| match cols[c].1 {
        Col::Num(_) => content[c],
        Col::Text { min, .. } => content[c].min(min as usize),
    };
    let mut kept: Vec<usize> = (0..cols.len()).collect();
    loop {
        let need: usize =
            kept.iter().map(|c| need_of(*c)).sum::<usize>() + kept.len().saturating_sub(1);
        if need <= width || kept.len() <= 1 {
            break;
        }
        let Some(pos) = (0..kept.len())
            .rev()
            .min_by_key(|p| cols[kept[*p]].1.keep())
        else {
            break;
        };
        kept.remove(pos);
    }
    // Minimums first; then text columns grow toward their content, the ones kept longest
    // first. What is left stays at the right: on a wide terminal the numbers stay next to the
    // names they belong to instead of drifting to the far edge.
    let widths_of = |kept: &[usize]| -> Vec<usize> {
        let mut widths: Vec<usize> = kept.iter().map(|c| need_of(*c)).collect();
        let used: usize = widths.iter().sum::<usize>() + kept.len().saturating_sub(1);
        let mut extra = width.saturating_sub(used);
        let mut order: Vec<usize> = (0..kept.len()).collect();
        order.sort_by_key(|i| std::cmp::Reverse(cols[kept[*i]].1.keep()));
        for i in order {
            let c = kept[i];
            if matches!(cols[c].1, Col::Text { .. }) {
                let add = content[c].saturating_sub(widths[i]).min(extra);
                widths[i] += add;
                extra -= add;
            }
        }
        widths
    };
    let mut widths = widths_of(&kept);
    // Optional columns (`keep` ≤ 2) only take room that no more useful text column needs.
    loop {
        let cut = kept.iter().zip(&widths).any(|(c, w)| {
            matches!(cols[*c].1, Col::Text { keep, .. } if keep > 2) && *w < content[*c]
        });
        let optional = (0..kept.len())
            .rev()
            .filter(|p| cols[kept[*p]].1.keep() <= 2)
            .min_by_key(|p| cols[kept[*p]].1.keep());
        match optional {
            Some(pos) if cut => {
                kept.remove(pos);
                widths = widths_of(&kept);
            }
            _ => break,
        }
    }
    let header = kept.iter().map(|c| cols[*c].0).collect();
    let rows = rows
        .into_iter()
        .map(|mut r| {
            let cells: Vec<Cell> = kept
                .iter()
                .zip(&widths)
                .map(|(c, w)| {
                    let line = std::mem::take(&mut r[*c]);
                    Cell::from(fit_line(line, *w))
                })
                .collect();
            Row::new(cells)
        })
        .collect();
    let constraints = widths
        .iter()
        .map(|w| Constraint::Length(*w as u16))
        .collect();
    (header, rows, constraints)
}

/// `line` in at most `width` cells: when it is longer, whole spans are kept while they fit
/// (so a phrase like "✗ 3 failed" is never cut through its number), the first one cut by
/// character if it alone is too long, and `…` marks the cut.
fn fit_line(line: Line<'static>, width: usize) -> Line<'static> {
    use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};
    if line.width() <= width || width == 0 {
        return line;
    }
    let mut out: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    let style = line.style;
    let mut last_style = ratatui::style::Style::default();
    for span in line.spans {
        // A span's trailing blank (a separator) need not fit.
        let w = span.content.trim_end().width();
        if used + w < width {
            last_style = span.style;
            if used + span.content.width() < width {
                used += span.content.width();
                out.push(span);
            } else {
                used += w;
                out.push(Span::styled(
                    span.content.trim_end().to_string(),
                    span.style,
                ));
            }
            continue;
        }
        if out.is_empty() {
            let mut cut = String::new();
            for ch in span.content.chars() {
                let cw = ch.width().unwrap_or(0);
                if used + cw + 1 > width {
                    break;
                }
                cut.push(ch);
                used += cw;
            }
            last_style = span.style;
            out.push(Span::styled(cut, span.style));
        }
        break;
    }
    out.push(Span::styled("…", last_style));
    Line::from(out).style(style)
}

fn fail_cell(n: i64, theme: &Theme) -> Span<'static> {
    if n > 0 {
        Span::styled(format!("✗ {n}"), theme.bad)
    } else {
        Span::raw("0")
    }
}

fn state_span(s: crate::model::ItemState, theme: &Theme) -> Span<'static> {
    use crate::model::ItemState as S;
    match s {
        S::Waiting => Span::styled("◷ waiting", theme.warn),
        S::Active => Span::styled("● active", theme.normal),
        S::InDelivery => Span::styled("↗ in delivery", theme.normal),
        S::Failed => Span::styled("✗ failed", theme.bad),
        S::Done => Span::styled("✓ done", theme.good),
    }
}

fn delivery_state_span(s: DeliveryState, theme: &Theme) -> Span<'static> {
    match s {
        DeliveryState::Pending => Span::styled("◷ pending", theme.normal),
        DeliveryState::InFlight => Span::styled("↗ in flight", theme.normal),
        DeliveryState::RetryScheduled => Span::styled("↻ retrying", theme.warn),
        DeliveryState::Succeeded => Span::styled("✓ succeeded", theme.good),
        DeliveryState::Failed => Span::styled("✗ failed", theme.bad),
        DeliveryState::Cancelled => Span::styled("⊘ cancelled", theme.dim),
    }
}

fn result_span(
    status: Option<u16>,
    kind: Option<crate::model::ErrorKind>,
    theme: &Theme,
) -> Span<'static> {
    match (status, kind) {
        (Some(s), _) if (200..300).contains(&s) => Span::styled(format!("✓ {s}"), theme.good),
        (Some(s), _) => Span::styled(format!("✗ {s}"), theme.bad),
        (None, Some(k)) => Span::styled(format!("✗ {k}"), theme.bad),
        (None, None) => Span::raw("-"),
    }
}

fn draw_item(
    f: &mut Frame,
    d: &crate::store::ItemDetail,
    cursor: usize,
    scroll: usize,
    theme: &Theme,
    area: Rect,
    now: chrono::DateTime<chrono::Utc>,
) {
    let it = &d.item;
    let mut lines = vec![
        Line::from(vec![
            Span::styled("name      ", theme.dim),
            Span::raw(clean(&it.name)),
        ]),
        Line::from(vec![
            Span::styled("id        ", theme.dim),
            Span::raw(it.id.to_string()),
        ]),
        Line::from(vec![
            Span::styled("stage     ", theme.dim),
            Span::raw(format!("{} ", it.stage)),
            state_span(it.state, theme),
            Span::styled(format!("  v{}", it.version), theme.dim),
        ]),
        Line::from(vec![
            Span::styled("path      ", theme.dim),
            Span::raw(clean(&it.path)),
        ]),
        Line::from(vec![
            Span::styled("tags      ", theme.dim),
            Span::raw(clean(&it.tags.join(", "))),
        ]),
        Line::from(vec![
            Span::styled("properties ", theme.dim),
            Span::raw(clean(
                &serde_json::Value::Object(it.properties.clone()).to_string(),
            )),
        ]),
        Line::from(vec![
            Span::styled("annotations ", theme.dim),
            Span::raw(crate::model::annotation_summary(&it.annotations)),
        ]),
    ];
    // The whole history, newest first, in the rows the deliveries below leave (they keep at
    // least a few on a small screen); the page keys scroll it.
    // Below the fields: the history's title, then the deliveries' title and table header.
    let fixed = lines.len() + 3;
    let delivery_rows = d.deliveries.len().clamp(1, 4);
    let history_rows = (area.height as usize).saturating_sub(fixed + delivery_rows);
    let total = d.history.len();
    let shown_history = history_rows.min(total);
    let from = scroll.min(total - shown_history);
    lines.push(Line::from(Span::styled(
        if shown_history == 0 && total > 0 {
            format!(
                "history · {total} moves (no room here: a taller terminal, or hookops item show {})",
                it.id
            )
        } else if shown_history < total {
            format!(
                "history · {}–{} of {total} moves, newest first (pgup/pgdn scroll)",
                from + 1,
                from + shown_history
            )
        } else {
            format!("history · {total} moves, newest first")
        },
        theme.header,
    )));
    for h in d.history.iter().rev().skip(from).take(shown_history) {
        lines.push(Line::from(format!(
            "  {} ago  {} → {}  {}{}",
            ago(&h.at, now),
            h.from.as_ref().map(|s| s.as_str()).unwrap_or("·"),
            h.to,
            h.cause,
            h.operator
                .as_ref()
                .map(|o| format!(" by {}", clean(o)))
                .unwrap_or_default()
        )));
    }
    lines.push(Line::from(Span::styled(
        "deliveries (enter opens, r re-fires)",
        theme.header,
    )));
    let top = lines.len() as u16;
    f.render_widget(Paragraph::new(lines), area);
    let rest = Rect {
        y: area.y.saturating_add(top),
        height: area.height.saturating_sub(top),
        ..area
    };
    let start = window(cursor, d.deliveries.len(), rest.height as usize);
    let rows: Vec<Row> = d
        .deliveries
        .iter()
        .enumerate()
        .skip(start)
        .take(rest.height as usize)
        .map(|(i, del)| {
            let r = Row::new(vec![
                Cell::from(delivery_state_span(del.state, theme)),
                Cell::from(del.stage.to_string()),
                Cell::from(del.attempts.to_string()),
                Cell::from(result_span(del.last_status, del.last_error_kind, theme)),
                Cell::from(del.id.to_string()),
            ]);
            if i == cursor {
                r.style(theme.selected)
            } else {
                r
            }
        })
        .collect();
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(12),
                Constraint::Length(14),
                Constraint::Length(3),
                Constraint::Length(11),
                Constraint::Min(10),
            ],
        ),
        rest,
    );
}

fn tok_style(t: Tok, theme: &Theme) -> ratatui::style::Style {
    match t {
        Tok::Plain | Tok::Punct => theme.normal,
        Tok::Dim => theme.dim,
        Tok::Head => theme.header,
        Tok::Good => theme.good,
        Tok::Bad => theme.bad,
        Tok::Key => theme.json_key,
        Tok::Str => theme.json_str,
        Tok::Num => theme.json_num,
        Tok::Lit => theme.json_lit,
    }
}

/// Rows `line` takes wrapped to `width` cells (cut by cell, as [`wrap_line`] cuts it).
fn wrapped_rows(line: &DocLine, width: usize) -> usize {
    use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};
    let width = width.max(1);
    let total: usize = line.iter().map(|(_, t)| t.width()).sum();
    if total <= width {
        return 1;
    }
    let (mut rows, mut used) = (1, 0);
    for c in line.iter().flat_map(|(_, t)| t.chars()) {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            rows += 1;
            used = 0;
        }
        used += w;
    }
    rows
}

/// One line of the payload viewer's document wrapped to `width` cells: a long line goes on
/// over the next rows (a 64 KiB line of minified text is all there, never cut off).
fn wrap_line(line: &DocLine, width: usize, theme: &Theme, out: &mut Vec<Line<'static>>) {
    use unicode_width::UnicodeWidthChar;
    let width = width.max(1);
    let mut spans: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for (k, t) in line {
        let style = tok_style(*k, theme);
        let mut piece = String::new();
        for c in t.chars() {
            let w = c.width().unwrap_or(0);
            if used + w > width {
                if !piece.is_empty() {
                    spans.push(Span::styled(std::mem::take(&mut piece), style));
                }
                out.push(Line::from(std::mem::take(&mut spans)));
                used = 0;
            }
            piece.push(c);
            used += w;
        }
        if !piece.is_empty() {
            spans.push(Span::styled(piece, style));
        }
    }
    out.push(Line::from(spans));
}

/// The rows of the document a `height`-row window shows from row `scroll` (kept within the
/// last screenful), that first row, and how many rows there are. Only the rows shown are
/// built, so a frame over a 64 KiB body costs a width count, not thousands of lines.
fn doc_window(
    doc: &[DocLine],
    width: usize,
    height: usize,
    scroll: usize,
    theme: &Theme,
) -> (Vec<Line<'static>>, usize, usize) {
    let rows: Vec<usize> = doc.iter().map(|l| wrapped_rows(l, width)).collect();
    let total: usize = rows.iter().sum();
    let top = scroll.min(total.saturating_sub(height));
    let mut out = Vec::with_capacity(height + 1);
    let mut row = 0;
    for (line, n) in doc.iter().zip(&rows) {
        if row + n > top {
            let mut lines = Vec::new();
            wrap_line(line, width, theme, &mut lines);
            let skip = top.saturating_sub(row);
            out.extend(lines.into_iter().skip(skip));
            if out.len() >= height {
                break;
            }
        }
        row += n;
    }
    out.truncate(height);
    (out, top, total)
}

/// A terminal at least this wide shows more in its lists: the log pane the URL path and the
/// start of the response, the deliveries view the last error message.
pub const WIDE: u16 = 200;

/// One log line: time, glyph, status, stage, item, attempt n/max, duration, next retry; when
/// `wide`, the URL's path and the start of the response too.
pub fn log_line(
    e: &AttemptEvent,
    theme: &Theme,
    now: chrono::DateTime<chrono::Utc>,
    wide: bool,
) -> Line<'static> {
    let (glyph, style) = match (e.status, e.state) {
        (_, DeliveryState::RetryScheduled) => ("↻", theme.warn),
        (Some(s), _) if (200..300).contains(&s) => ("✓", theme.good),
        (_, DeliveryState::Cancelled) => ("⊘", theme.dim),
        _ => ("✗", theme.bad),
    };
    let result = match (e.status, e.error_kind) {
        (Some(s), _) => s.to_string(),
        (None, Some(k)) => k.to_string(),
        _ => "-".into(),
    };
    let item = clean(
        e.item_name
            .as_deref()
            .or(e.item_id.as_ref().map(|i| i.as_str()))
            .unwrap_or(e.event.as_str()),
    );
    let max = if e.max_attempts > 0 {
        e.max_attempts.to_string()
    } else {
        "?".into()
    };
    let mut spans = vec![
        Span::styled(e.at.format("%H:%M:%S ").to_string(), theme.dim),
        Span::styled(format!("{glyph} {result:<7}"), style),
        Span::raw(format!(
            " {} {} #{}/{} {:>5}ms",
            fit(e.stage.as_str(), 12),
            fit(&item, 22),
            e.number,
            max,
            e.duration_ms
        )),
    ];
    if wide {
        // In a column of its own, before the parts whose length varies.
        spans.push(Span::styled(
            format!(" {}", fit(&url_path(&e.url), 32)),
            theme.dim,
        ));
    }
    if e.state == DeliveryState::RetryScheduled
        && let Some(t) = e.next_attempt_at
    {
        let secs = (t - now).num_milliseconds().max(0) as f64 / 1000.0;
        spans.push(Span::styled(format!("  retry in {secs:.0}s"), theme.warn));
    }
    if let Some(m) = e
        .error_message
        .as_ref()
        .filter(|_| e.status.is_none_or(|s| s >= 300))
    {
        spans.push(Span::styled(format!("  {}", clean(m)), theme.dim));
    }
    if let Some(to) = &e.routed_to {
        spans.push(Span::styled(format!("  → {to}"), theme.dim));
    }
    if wide
        && let Some(x) = e
            .response_excerpt
            .as_deref()
            .filter(|x| !x.trim().is_empty())
    {
        let one_line = x.split_whitespace().collect::<Vec<_>>().join(" ");
        spans.push(Span::styled(format!("  {}", clean(&one_line)), theme.dim));
    }
    Line::from(spans)
}

/// A URL's path and query: what tells two endpoints of one receiver apart.
fn url_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    clean(rest.find('/').map_or("/", |i| &rest[i..]))
}

fn draw_log(
    f: &mut Frame,
    app: &mut App,
    theme: &Theme,
    area: Rect,
    now: chrono::DateTime<chrono::Utc>,
) {
    let mut title = String::from("log");
    if app.log.follow {
        title.push_str(" · following");
    }
    if app.log.paused {
        title.push_str(&format!(" · ⏸ paused ({} held)", app.log.held.len()));
    }
    if !app.log.filter.is_empty() {
        title.push_str(&format!(" · /{}", clean(&app.log.filter)));
    }
    let b = block(title, theme, app.focus_log);
    let inner = b.inner(area);
    f.render_widget(b, area);
    app.hit.log = Some(hit_rect(inner));
    app.hit.log_first = 0;
    let vis = app.log.visible_indices();
    if vis.is_empty() {
        let text = if !app.log.filter.is_empty() && !app.log.entries.is_empty() {
            format!("no attempt matches /{}", clean(&app.log.filter))
        } else if app.header.dispatcher.starts_with("no dispatcher") {
            "no attempts yet, and no dispatcher is running: deliveries wait, queued, until \
             `hookops serve` runs (or a console without --no-dispatch)"
                .to_string()
        } else {
            "no attempts yet: deliveries show up here as they are sent".to_string()
        };
        f.render_widget(
            Paragraph::new(text)
                .style(theme.dim)
                .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }
    let h = inner.height as usize;
    let pos = vis
        .iter()
        .position(|i| *i >= app.log.cursor)
        .unwrap_or(vis.len().saturating_sub(1));
    let start = if app.log.follow {
        vis.len().saturating_sub(h)
    } else {
        window(pos, vis.len(), h)
    };
    app.hit.log_first = start;
    let lines: Vec<Line> = vis
        .iter()
        .skip(start)
        .take(h)
        .map(|i| {
            let line = match &app.log.entries[*i] {
                LogEntry::Attempt(e) => log_line(e, theme, now, inner.width >= WIDE),
                LogEntry::Stage { at, stage, text } => Line::from(vec![
                    Span::styled(at.format("%H:%M:%S ").to_string(), theme.dim),
                    Span::styled(format!("⏳ {} ", fit(stage.as_str(), 12)), theme.warn),
                    Span::raw(clean(text)),
                ]),
            };
            if app.focus_log && *i == app.log.cursor {
                line.style(theme.selected)
            } else {
                line
            }
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_flash(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let Some(fl) = &app.flash else { return };
    let (glyph, style) = match fl.level {
        Level::Info => ("ℹ", theme.normal),
        Level::Warn => ("⚠", theme.warn),
        Level::Error => ("✗", theme.bad),
    };
    f.render_widget(
        Paragraph::new(format!("{glyph} {}", clean(&fl.text)))
            .style(style)
            .wrap(Wrap { trim: true }),
        area,
    );
}

fn draw_footer(f: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let mut spans = Vec::new();
    // Help and quit first, so they survive a narrow terminal; then the view's own keys.
    let mut hints: Vec<&keymap::Binding> =
        keymap::active(app.scope(), app.focus_log, app.read_only)
            .filter(|b| b.hint)
            .collect();
    hints.sort_by_key(|b| !matches!(b.action, keymap::Action::Help | keymap::Action::Quit));
    for b in hints {
        let keys = keymap::keys_of(b);
        let Some(first) = keys.first() else { continue };
        // The footer keeps descriptions short; `?` shows them whole.
        let short = b.description.split(" (").next().unwrap_or(b.description);
        spans.push(Span::styled(format!("<{}>", first.label()), theme.key));
        spans.push(Span::styled(format!(" {short}  "), theme.dim));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// Lines `text` takes when word-wrapped to `width` cells (as `Wrap { trim: true }` wraps it,
/// near enough to size a box: a word longer than the width counts its own lines).
fn wrapped_height(text: &str, width: usize) -> usize {
    use unicode_width::UnicodeWidthStr;
    if width == 0 {
        return 1;
    }
    let mut lines = 0;
    for para in text.split('\n') {
        let mut used = 0;
        lines += 1;
        for word in para.split_whitespace() {
            let w = word.width();
            if used > 0 && used + 1 + w <= width {
                used += 1 + w;
            } else if used == 0 && w <= width {
                used = w;
            } else {
                lines += usize::from(used > 0) + w.saturating_sub(1) / width;
                used = w % width;
            }
        }
    }
    lines
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn draw_overlay(f: &mut Frame, app: &App, o: &Overlay, theme: &Theme, area: Rect) {
    match o {
        Overlay::Command(s) | Overlay::Filter(s) => {
            let prefix = if matches!(o, Overlay::Command(_)) {
                ":"
            } else {
                "/"
            };
            let r = Rect {
                y: area.y + area.height.saturating_sub(2),
                height: 1,
                ..area
            };
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(format!("{prefix}{}▏", clean(s))).style(theme.focus),
                r,
            );
        }
        Overlay::Help { scroll } => {
            let entries: Vec<(String, &str)> =
                keymap::active(app.scope(), app.focus_log, app.read_only)
                    .map(|b| {
                        let keys: Vec<String> =
                            keymap::keys_of(b).iter().map(|k| k.label()).collect();
                        (keys.join(" "), b.description)
                    })
                    .collect();
            let mut notes = vec![
                Line::from(""),
                Line::from(Span::styled(
                    "tab focuses the log pane; in dialogs tab/←/→ move, enter presses, esc cancels",
                    theme.dim,
                )),
            ];
            if app.read_only {
                notes.push(Line::from(Span::styled(
                    "read-only: actions are hidden",
                    theme.warn,
                )));
            }
            // One column when every key fits (title, keys, notes, borders); else two side by
            // side over the whole width, so 80×24 still shows every key; else (50×12) one
            // column that scrolls.
            let height = area.height.saturating_sub(2);
            let fits = |rows: usize| rows + notes.len() + 3 <= height as usize;
            let two = !fits(entries.len());
            let scrolls = !fits(entries.len().div_ceil(2));
            let r = centered(
                area,
                if two {
                    area.width.saturating_sub(2)
                } else {
                    72
                },
                height,
            );
            f.render_widget(Clear, r);
            let b = block("help".into(), theme, true);
            let inner = b.inner(r);
            f.render_widget(b, r);
            let key_width = entries
                .iter()
                .map(|(k, _)| k.chars().count())
                .max()
                .unwrap_or(0);
            let lines_of = |part: &[(String, &str)]| -> Vec<Line<'static>> {
                part.iter()
                    .map(|(k, d)| {
                        Line::from(vec![
                            Span::styled(format!("{k:>key_width$}  "), theme.key),
                            Span::raw(d.to_string()),
                        ])
                    })
                    .collect()
            };
            let view_title = app.view().map(|v| v.kind.title()).unwrap_or_default();
            if scrolls {
                let [title, body] =
                    Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner);
                let mut lines = lines_of(&entries);
                lines.extend(notes);
                let shown = body.height as usize;
                let top = (*scroll).min(lines.len().saturating_sub(shown));
                f.render_widget(
                    Paragraph::new(Span::styled(
                        format!(
                            "keys {}–{} of {} (j/k scroll, esc closes)",
                            top + 1,
                            (top + shown).min(entries.len()),
                            entries.len()
                        ),
                        theme.header,
                    )),
                    title,
                );
                let lines: Vec<Line> = lines.into_iter().skip(top).take(shown).collect();
                f.render_widget(Paragraph::new(lines), body);
                return;
            }
            let per_column = if two {
                entries.len().div_ceil(2)
            } else {
                entries.len()
            };
            let [title, body, rest] = Layout::vertical([
                Constraint::Length(1),
                Constraint::Length(per_column as u16),
                Constraint::Min(0),
            ])
            .areas(inner);
            f.render_widget(
                Paragraph::new(Span::styled(
                    format!("keys in {view_title} (esc closes)"),
                    theme.header,
                )),
                title,
            );
            if two {
                let [left, right] =
                    Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)])
                        .areas(body);
                let (a, b) = entries.split_at(per_column.min(entries.len()));
                f.render_widget(Paragraph::new(lines_of(a)), left);
                f.render_widget(Paragraph::new(lines_of(b)), right);
            } else {
                f.render_widget(Paragraph::new(lines_of(&entries)), body);
            }
            f.render_widget(Paragraph::new(notes).wrap(Wrap { trim: true }), rest);
        }
        Overlay::Picker {
            title,
            choices,
            query,
            cursor,
            ..
        } => {
            let matching: Vec<_> = choices
                .iter()
                .filter(|(id, _)| id.as_str().contains(query.as_str()))
                .collect();
            let r = centered(area, 50, (matching.len() as u16 + 4).min(area.height));
            f.render_widget(Clear, r);
            let mut lines = vec![Line::from(format!("› {}▏", clean(query)))];
            for (i, (id, kind)) in matching.iter().enumerate() {
                let l = Line::from(format!(
                    "{} {id}  ({kind})",
                    if i == *cursor { "▶" } else { " " }
                ));
                lines.push(if i == *cursor {
                    l.style(theme.selected)
                } else {
                    l
                });
            }
            if matching.is_empty() {
                lines.push(Line::from(Span::styled("no stage matches", theme.dim)));
            }
            f.render_widget(
                Paragraph::new(lines).block(block(title.clone(), theme, true)),
                r,
            );
        }
        Overlay::Confirm { text, focus, .. } => {
            // As tall as the text needs (it names up to five rows), the buttons always on
            // their own last line, so a long text can never push them out of the box.
            let text = clean(text);
            let width = 60.min(area.width);
            let lines = wrapped_height(&text, width.saturating_sub(2) as usize);
            let r = centered(area, width, (lines as u16).saturating_add(4).max(7));
            f.render_widget(Clear, r);
            let b = block("confirm".into(), theme, true);
            let inner = b.inner(r);
            f.render_widget(b, r);
            let [body, buttons] =
                Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(inner);
            let button = |label: &str, on: bool| {
                if on {
                    Span::styled(format!("▶ {label} ◀"), theme.selected)
                } else {
                    Span::styled(format!("  {label}  "), theme.normal)
                }
            };
            f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), body);
            f.render_widget(
                Paragraph::new(Line::from(vec![
                    button("Cancel", *focus == 0),
                    Span::raw("    "),
                    button("OK", *focus == 1),
                ])),
                buttons,
            );
        }
        Overlay::Typed {
            text,
            expected,
            typed,
            ..
        } => {
            let r = centered(area, 64, 8);
            f.render_widget(Clear, r);
            let lines = vec![
                Line::from(clean(text)),
                Line::from(""),
                Line::from(format!("type {expected} and press enter (esc cancels)")),
                Line::from(Span::styled(format!("› {typed}▏"), theme.focus)),
            ];
            f.render_widget(
                Paragraph::new(lines).wrap(Wrap { trim: true }).block(block(
                    "confirm bulk action".into(),
                    theme,
                    true,
                )),
                r,
            );
        }
        Overlay::Popup {
            title,
            text,
            scroll,
        } => {
            let r = centered(area, 72, 14);
            f.render_widget(Clear, r);
            let text = strip_controls_multiline(text);
            let inner_h = r.height.saturating_sub(2) as usize;
            let total = wrapped_height(&text, r.width.saturating_sub(2) as usize);
            let top = (*scroll).min(total.saturating_sub(inner_h));
            let title = if total > inner_h {
                format!(
                    "{} · lines {}–{} of {total} (j/k scroll, esc closes)",
                    clean(title),
                    top + 1,
                    (top + inner_h).min(total)
                )
            } else {
                format!("{} (esc closes)", clean(title))
            };
            f.render_widget(
                Paragraph::new(text)
                    .wrap(Wrap { trim: false })
                    .scroll((top.min(u16::MAX as usize) as u16, 0))
                    .block(block(title, theme, true)),
                r,
            );
        }
    }
}
