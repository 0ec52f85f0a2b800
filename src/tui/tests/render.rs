//! Drawing on `TestBackend` buffers: every screen at every size without a panic, the size
//! notice, the selection's reverse video and marker, and untrusted text kept off the screen.

use ratatui::buffer::Buffer;
use ratatui::crossterm::event::KeyCode;
use ratatui::style::Modifier;

use super::*;
use crate::tui::keymap::{self, Scope};
use crate::tui::state::Header;
use crate::tui::theme::Theme;

const SIZES: &[(u16, u16)] = &[
    (0, 0),
    (1, 1),
    (10, 3),
    (20, 5),
    (49, 11),
    (49, 40),
    (120, 11),
    (50, 12),
    (80, 24),
    (120, 40),
    (300, 3),
    (300, 100),
];

fn collapsed(buf: &Buffer) -> String {
    text(buf).split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn every_screen_draws_at_every_size_and_small_ones_ask_for_more_room() {
    for (name, mut app) in screens() {
        for &(w, h) in SIZES {
            for theme in [Theme::mono(), Theme::colour()] {
                let buf = render_with(&mut app, w, h, &theme);
                let small = w < 50 || h < 12;
                let notice = collapsed(&buf).contains("(needs 50×12)");
                if small && w >= 10 && h >= 3 {
                    assert!(notice, "{name} at {w}×{h}:\n{}", text(&buf));
                }
                if !small {
                    assert!(!notice, "{name} at {w}×{h}");
                }
                if !small && h >= 24 {
                    assert!(
                        text(&buf).contains("hookops"),
                        "{name} at {w}×{h}: no header"
                    );
                }
            }
        }
    }
}

#[test]
fn the_size_notice_names_the_minimum() {
    let mut app = on_workflows(false);
    let buf = render(&mut app, 49, 11);
    assert!(
        collapsed(&buf).contains("make the terminal larger (needs 50×12)"),
        "{}",
        text(&buf)
    );
    let buf = render(&mut app, 300, 3);
    assert!(
        collapsed(&buf).contains("make the terminal larger (needs 50×12)"),
        "{}",
        text(&buf)
    );
}

#[test]
fn drawing_remembers_the_page_height_for_page_keys() {
    let mut app = on_items(false, 100);
    render(&mut app, 80, 24);
    let small = app.page_rows;
    render(&mut app, 120, 40);
    assert!(
        app.page_rows > small && small >= 3,
        "{small} then {}",
        app.page_rows
    );
    press(&mut app, KeyCode::PageDown);
    assert_eq!(app.view().unwrap().cursor, app.page_rows);
}

/// The row of the buffer whose text contains `needle`.
fn row_of(buf: &Buffer, needle: &str) -> u16 {
    text(buf)
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not on screen:\n{}", text(buf))) as u16
}

/// Whether every cell of the row's text (between the borders of the main view) is reversed.
fn reversed(buf: &Buffer, y: u16, from: u16, to: u16) -> bool {
    (from..to).all(|x| buf[(x, y)].modifier.contains(Modifier::REVERSED))
}

#[test]
fn the_cursor_row_is_reverse_video_and_selected_rows_carry_a_marker() {
    for theme in [Theme::mono(), Theme::colour()] {
        let mut app = on_items(false, 5);
        ch(&mut app, ' '); // selects item-001, cursor to item-002
        ch(&mut app, 'j');
        ch(&mut app, ' '); // selects item-003, cursor to item-004
        ch(&mut app, 'k'); // cursor back on item-003: selected and under the cursor
        let buf = render_with(&mut app, 100, 30, &theme);
        let (sel, both, plain) = (
            row_of(&buf, "item-001"),
            row_of(&buf, "item-003"),
            row_of(&buf, "item-002"),
        );
        let line = |y: u16| text(&buf).lines().nth(y as usize).unwrap().to_string();
        // The cursor marker is the first column inside the border; the selection marker the
        // table's first column after it.
        assert_eq!(buf[(1, both)].symbol(), "▶", "{}", line(both));
        assert_eq!(buf[(1, sel)].symbol(), " ", "{}", line(sel));
        assert_eq!(buf[(2, sel)].symbol(), "●", "{}", line(sel));
        assert_eq!(buf[(2, both)].symbol(), "●", "{}", line(both));
        assert_eq!(buf[(2, plain)].symbol(), " ", "{}", line(plain));
        assert!(
            reversed(&buf, both, 1, 99),
            "the cursor row is reverse video: {}",
            line(both)
        );
        assert!(!buf[(5, sel)].modifier.contains(Modifier::REVERSED));
        assert!(!buf[(5, plain)].modifier.contains(Modifier::REVERSED));
        assert!(
            text(&buf).contains("2 selected"),
            "the title counts the selection"
        );
    }
}

#[test]
fn the_cursor_row_is_reverse_video_in_every_list() {
    for (name, mut app, needle) in [
        ("workflows", on_workflows(false), "intake"),
        ("stages", on_stages(false), "Validate"),
        ("deliveries", on_deliveries(false), "weld_0002.jpg"),
    ] {
        ch(&mut app, 'j');
        let buf = render(&mut app, 120, 40);
        let y = row_of(&buf, needle);
        assert!(reversed(&buf, y, 1, 119), "{name}: {}", text(&buf));
        // Only that row.
        assert!(
            !buf[(3, y - 1)].modifier.contains(Modifier::REVERSED) || y == 0,
            "{name}"
        );
        // The log pane has no cursor while the main view has the focus.
    }
}

#[test]
fn the_log_pane_shows_its_cursor_only_when_focused() {
    let mut app = on_stages(false);
    with_attempts(&mut app);
    let buf = render(&mut app, 120, 40);
    let y = row_of(&buf, "weld_0004.jpg");
    assert!(!buf[(3, y)].modifier.contains(Modifier::REVERSED));
    press(&mut app, KeyCode::Tab);
    let buf = render(&mut app, 120, 40);
    assert!(reversed(&buf, y, 1, 60), "{}", text(&buf));
    // And the main view's cursor row loses its highlight while the log has the focus.
    let stage_row = row_of(&buf, "Weld inspection images");
    assert!(!buf[(3, stage_row)].modifier.contains(Modifier::REVERSED));
}

/// Item names that are long, wide, or carry zero-width and bidi characters keep the log
/// pane's columns where they belong: each is cut to its column (with `…`) counting cells.
#[test]
fn the_log_pane_keeps_its_columns_whatever_the_item_names() {
    let mut app = on_stages(false);
    let names = [
        "plain.png".to_string(),
        "L".repeat(300),
        format!("wide{}", "日本語🎉".repeat(40)),
        "\u{202e}RTL override\u{200b}\u{301}".to_string(),
    ];
    for (i, name) in names.iter().enumerate() {
        let mut a = attempt(i + 1, 1, Some(500), DeliveryState::Failed);
        a.item_name = Some(name.clone());
        update(&mut app, Msg::Attempt(Box::new(a)));
    }
    let buf = render(&mut app, 120, 40);
    let lines: Vec<String> = text(&buf)
        .lines()
        .filter(|l| l.contains("#1/4"))
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), names.len(), "{}", text(&buf));
    // The attempt column starts in the same cell on every line (cells, not bytes).
    let cells = |l: &str| {
        use unicode_width::UnicodeWidthStr;
        l[..l.find("#1/4").unwrap()].width()
    };
    let first = cells(&lines[0]);
    for l in &lines {
        assert_eq!(cells(l), first, "{l}");
        assert!(l.contains("500 Internal Server Error"), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains('…')), "{lines:?}");
    assert!(!text(&buf).contains('\u{202e}'));
}

#[test]
fn dialogs_mark_the_focused_choice_with_a_glyph_and_reverse_video() {
    let mut app = on_items(false, 5);
    ch(&mut app, 'a');
    type_str(&mut app, "val");
    let buf = render(&mut app, 80, 24);
    let y = row_of(&buf, "▶ validate");
    let x = text(&buf)
        .lines()
        .nth(y as usize)
        .unwrap()
        .chars()
        .position(|c| c == '▶')
        .unwrap() as u16;
    assert!(buf[(x, y)].modifier.contains(Modifier::REVERSED));
    press(&mut app, KeyCode::Enter);
    let buf = render(&mut app, 80, 24);
    assert!(text(&buf).contains("▶ Cancel ◀"), "{}", text(&buf));
    assert!(!text(&buf).contains("▶ OK ◀"));
    press(&mut app, KeyCode::Tab);
    let buf = render(&mut app, 80, 24);
    assert!(text(&buf).contains("▶ OK ◀") && !text(&buf).contains("▶ Cancel ◀"));
    let y = row_of(&buf, "▶ OK ◀");
    let x = text(&buf)
        .lines()
        .nth(y as usize)
        .unwrap()
        .chars()
        .position(|c| c == '▶')
        .unwrap() as u16;
    assert!(buf[(x, y)].modifier.contains(Modifier::REVERSED));
}

#[test]
fn states_carry_a_glyph_not_only_a_colour() {
    let mut app = on_deliveries(false);
    let buf = render(&mut app, 120, 40);
    let t = text(&buf);
    for glyph in [
        "✗ failed",
        "✓ succeeded",
        "↻ retrying",
        "◷ pending",
        "↗ in flight",
        "⊘ cancelled",
        "✗ 500",
        "✓ 200",
    ] {
        assert!(t.contains(glyph), "{glyph} missing:\n{t}");
    }
}

#[test]
fn footer_hints_come_from_the_key_map_and_read_only_hides_actions() {
    let mut app = on_stages(false);
    let t = text(&render(&mut app, 300, 40));
    for hint in [
        "<a> assign to stage",
        "<t> test webhook",
        "<p> pause / resume stage",
        "<F> re-fire all failed",
        "<?> help",
        "<q> quit",
    ] {
        assert!(t.contains(hint), "{hint} missing:\n{t}");
    }
    let mut app = on_stages(true);
    let t = text(&render(&mut app, 300, 40));
    assert!(t.contains("[read-only]"));
    assert!(t.contains("<?> help"));
    for hint in ["<a>", "<t>", "<p>", "<F>", "<r>"] {
        assert!(!t.contains(hint), "{hint} shown in read-only:\n{t}");
    }
    ch(&mut app, '?');
    let t = text(&render(&mut app, 120, 40));
    assert!(t.contains("read-only: actions are hidden"));
    assert!(!t.contains("assign to stage"), "{t}");
}

#[test]
fn the_stages_view_makes_items_waiting_for_assignment_stand_out() {
    let mut app = on_stages(false);
    let t = text(&render(&mut app, 120, 40));
    assert!(t.contains("▶ 40 to assign (a)"), "{t}");
    assert!(t.contains("⏸ paused"), "{t}");
}

// ---------------------------------------------------------------------------------------------
// Untrusted text
// ---------------------------------------------------------------------------------------------

/// Every way a hostile string might try to reach the terminal.
const EVIL: &str = "A\x1b]52;c;ZXZpbA==\x07B\x1b[2JC\x1b]8;;http://x\x1b\\D\u{9b}31mE\u{9d}0;title\u{9c}F\x07\x08\r\tG\u{85}H";

fn hostile_screens() -> Vec<(&'static str, App)> {
    let evil = || EVIL.to_string();
    let mut out = Vec::new();
    let mut rows = items(3);
    rows[0].name = evil();
    out.push(("items", {
        let mut app = on_stages(false);
        press(&mut app, KeyCode::Enter);
        load(
            &mut app,
            ViewData::Items {
                rows: rows.clone(),
                more: false,
            },
        );
        app
    }));
    out.push(("item", {
        let mut d = item_detail();
        d.item.name = evil();
        d.item.path = evil();
        d.item.tags = vec![evil()];
        d.item
            .properties
            .insert(evil(), serde_json::Value::String(evil()));
        d.history[0].operator = Some(evil());
        d.deliveries[0].item_name = Some(evil());
        let mut app = on_items(false, 3);
        press(&mut app, KeyCode::Enter);
        load(&mut app, ViewData::Item(Box::new(d)));
        app
    }));
    out.push(("delivery", {
        let mut d = delivery_detail();
        d.summary.item_name = Some(evil());
        d.cancelled_by = Some(evil());
        d.summary.cancel_reason = Some(crate::model::CancelReason::Operator);
        for a in &mut d.attempt_log {
            a.response_body = Some(format!("{EVIL}\nline two {EVIL}\n"));
            a.response_headers.push((evil(), evil()));
            a.request_headers.push(("x-evil".into(), evil()));
            a.error_message = Some(evil());
            a.url = format!("http://127.0.0.1/{EVIL}");
        }
        d.body = serde_json::json!({ "name": evil() });
        let mut app = on_deliveries(false);
        press(&mut app, KeyCode::Enter);
        load(&mut app, ViewData::Delivery(Box::new(d)));
        app
    }));
    out.push(("deliveries", {
        let mut rows = deliveries();
        rows[0].item_name = Some(evil());
        let mut app = on_stages(false);
        ch(&mut app, 'd');
        load(
            &mut app,
            ViewData::Deliveries {
                rows,
                cursors: (1..=7)
                    .map(crate::store::DeliveryCursor::for_tests)
                    .collect(),
                more: false,
            },
        );
        app
    }));
    out.push(("workflows_and_stages", {
        let mut w = workflows();
        w[0].name = evil();
        let mut app = on_workflows(false);
        load(&mut app, ViewData::Workflows(w));
        press(&mut app, KeyCode::Enter);
        let mut s = stages();
        s.stage_list[0].name = evil();
        load(&mut app, ViewData::Stages(Box::new(s)));
        app
    }));
    out.push(("audit", {
        let mut a = audit();
        a[0].operator = evil();
        a[0].target = evil();
        a[0].filter = Some(evil());
        let mut app = on_workflows(false);
        ch(&mut app, ':');
        type_str(&mut app, "audit");
        press(&mut app, KeyCode::Enter);
        load(&mut app, ViewData::Audit(a));
        app
    }));
    out.push(("popup", {
        let mut app = on_stages(false);
        update(
            &mut app,
            Msg::TestResult {
                title: evil(),
                text: format!("500 in 3 ms\n\n{EVIL}"),
            },
        );
        app
    }));
    out.push(("log_header_flash", {
        let mut app = on_workflows(false);
        let mut e = attempt(1, 1, Some(500), DeliveryState::Failed);
        e.item_name = Some(evil());
        e.error_message = Some(evil());
        update(&mut app, Msg::Attempt(Box::new(e)));
        update(
            &mut app,
            Msg::Header(Header {
                db: evil(),
                dispatcher: format!("dispatcher: serve pid 7 on {EVIL}"),
                ..header()
            }),
        );
        update(
            &mut app,
            Msg::Done {
                text: evil(),
                level: crate::tui::state::Level::Error,
            },
        );
        app
    }));
    out.push(("filter_and_confirm", {
        let mut app = on_deliveries(false);
        ch(&mut app, '/');
        // Typed text is ours, but a paste could carry anything.
        for c in EVIL.chars() {
            ch(&mut app, c);
        }
        app
    }));
    out
}

fn assert_clean(name: &str, buf: &Buffer) {
    for cell in buf.content() {
        let sym = cell.symbol();
        assert!(
            !sym.chars()
                .any(|c| c.is_control() || ('\u{80}'..='\u{9f}').contains(&c)),
            "{name}: a control character reached the buffer: {sym:?}\n{}",
            text(buf)
        );
    }
    // What is left when only the escape character goes: the sequence's body next to the
    // letters around it (a JSON-escaped `\u001b]52;…` in a pretty-printed body is plain text).
    let t = text(buf);
    for leak in [
        "A]52",
        "\u{fffd}]52",
        "==B",
        "B[2J",
        "\u{fffd}[2J",
        "C]8",
        "\u{fffd}]8",
        "http://xD",
        "31mE",
        "E0;title",
        "\u{fffd}0;title",
    ] {
        assert!(
            !t.contains(leak),
            "{name}: `{leak}` of an escape sequence reached the screen:\n{t}"
        );
    }
}

#[test]
fn untrusted_text_never_reaches_the_buffer_as_escape_sequences() {
    for (name, mut app) in hostile_screens() {
        for (w, h) in [(80, 24), (120, 40), (300, 60)] {
            let buf = render(&mut app, w, h);
            assert_clean(name, &buf);
        }
        // The visible parts of the text survive, so the operator still sees the name.
        let t = text(&render(&mut app, 300, 60));
        assert!(
            t.contains("ABCD") || name == "filter_and_confirm" || name == "workflows_and_stages",
            "{name}:\n{t}"
        );
    }
}

#[test]
fn untrusted_item_names_are_cleaned_in_dialogs_too() {
    let mut rows = items(2);
    rows[0].name = EVIL.into();
    let mut app = on_stages(false);
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Items { rows, more: false });
    ch(&mut app, 'a');
    type_str(&mut app, "validate");
    press(&mut app, KeyCode::Enter);
    assert_clean("confirm", &render(&mut app, 80, 24));
}

#[test]
fn help_lists_every_key_of_the_scope_even_at_80x24() {
    for (mut app, scope) in [
        (on_items(false, 5), Scope::Items),
        (on_stages(true), Scope::Stages),
    ] {
        ch(&mut app, '?');
        let t = text(&render(&mut app, 80, 24));
        for b in keymap::active(scope, false, app.read_only) {
            // Long descriptions may be cut at the column's edge; their start must show.
            let start: String = b.description.chars().take(12).collect();
            assert!(
                t.contains(&start),
                "`{}` missing from help at 80×24:\n{t}",
                b.description
            );
        }
        assert!(t.contains("keys in"));
    }
}

#[test]
fn the_size_notice_always_keeps_the_size_it_needs() {
    use crate::tui::view::size_notice;
    assert_eq!(
        size_notice(49, 11),
        "make the terminal larger (needs 50×12)"
    );
    assert_eq!(size_notice(10, 3), "larger (needs 50×12)");
    assert_eq!(size_notice(7, 2), "(needs 50×12)");
    assert_eq!(size_notice(5, 1), "50×12");
    for (w, h) in [(10, 3), (20, 5), (30, 8), (300, 3), (1, 1)] {
        let (mut app, _) = App::new(false);
        let screen = text(&render(&mut app, w, h));
        let flat = screen.split_whitespace().collect::<Vec<_>>().join(" ");
        if w >= 6 {
            assert!(flat.contains("50×12"), "{w}×{h}: {flat}");
        }
    }
}

#[test]
fn the_database_path_is_shortened_from_the_left() {
    use crate::tui::view::fit_path_left;
    let p = "/home/operator/.local/share/hookops/demo/demo-20261206.db";
    assert_eq!(fit_path_left(p, 200), p);
    assert_eq!(fit_path_left(p, 30), "…/demo/demo-20261206.db");
    assert_eq!(fit_path_left(p, 32), "…/hookops/demo/demo-20261206.db");
    assert_eq!(fit_path_left(p, 20), "…/demo-20261206.db");
    assert_eq!(fit_path_left(p, 10), "…261206.db");
    assert!(fit_path_left(p, 10).chars().count() <= 10);
    // In the header at 80 columns: the file name shows, not the start of the path.
    let (mut app, _) = App::new(false);
    app.header.db = p.into();
    app.header.dispatcher = "dispatcher: this process ×64".into();
    let screen = text(&render(&mut app, 80, 24));
    let first = screen.lines().next().unwrap();
    assert!(
        first.contains("…") && first.contains("20261206.db"),
        "{first}"
    );
    let screen = text(&render(&mut app, 120, 24));
    let first = screen.lines().next().unwrap();
    assert!(
        first.contains("…/operator/.local/share/hookops/demo/demo-20261206.db"),
        "{first}"
    );
}

/// Issue 19: at any width a number is shown whole or its column is left out, never cut.
/// Each numeric cell is read back from the buffer under its header and compared.
#[test]
fn numbers_are_never_cut_at_any_width() {
    let mut wfs = workflows();
    wfs[0].items = 19_837;
    wfs[0].waiting = 123_456;
    wfs[0].in_delivery = 7_654_321;
    wfs[0].failed = 98_765;
    wfs[0].done = 1_000_000;
    wfs[0].name = "A workflow with a rather long name that must give way".into();
    let mut st = stages();
    st.stage_list[0].items = 19_837;
    st.stage_list[0].waiting = 19_837;
    st.stage_list[1].in_delivery = 4_321_000;
    st.stage_list[1].failed = 88_888;
    for w in [50u16, 60, 80, 120, 200, 300] {
        let (mut app, _) = App::new(false);
        load(&mut app, ViewData::Workflows(wfs.clone()));
        app.header.counts = vec![
            (DeliveryState::Pending, 1_234_567),
            (DeliveryState::InFlight, 64),
            (DeliveryState::RetryScheduled, 19_837),
            (DeliveryState::Failed, 2_000_001),
        ];
        app.header.dispatcher = "dispatcher: console pid 123456 on a-rather-long-host".into();
        let screen = text(&render(&mut app, w, 24));
        let counts = screen.lines().nth(1).unwrap_or("");
        for n in ["1234567", "64", "19837", "2000001"] {
            assert!(
                counts.split(|c: char| !c.is_ascii_digit()).any(|t| t == n),
                "{n} in the header at {w}: {counts}"
            );
        }
        let first = screen.lines().next().unwrap_or("");
        assert!(
            first.contains("123456") || !first.contains("pid 1"),
            "the pid cut at {w}: {first}"
        );
        let expect = [
            ("STAGES", "6"),
            ("ITEMS", "19837"),
            ("WAITING", "123456"),
            ("IN DELIVERY", "7654321"),
            ("FAILED", "✗ 98765"),
            ("DONE", "1000000"),
        ];
        check_cells(&screen, "defects", &expect, w);

        let mut app = on_stages(false);
        load(&mut app, ViewData::Stages(Box::new(st.clone())));
        with_attempts(&mut app);
        let screen = text(&render(&mut app, w, 24));
        check_cells(
            &screen,
            "Weld insp",
            &[("ITEMS", "19837"), ("WAITING", "19837"), ("FAIL 5M", "-")],
            w,
        );
        check_cells(
            &screen,
            "Validate",
            &[
                ("IN DELIVERY", "4321000"),
                ("FAILED", "✗ 88888"),
                ("FAIL 5M", "✗ 60% of 5"),
            ],
            w,
        );
        // The title's position is whole or left out: `row 1 of 6`, never `row 1 of`.
        let title = screen.lines().nth(2).unwrap_or("");
        assert!(
            title.contains("row 1 of 6") || !title.contains("row"),
            "{w}: {title}"
        );
    }
}

/// In the table of `screen`, the row starting with `row` has, under each header of `cells`
/// that is shown, exactly that value; a header that is not shown is a dropped column.
fn check_cells(screen: &str, row: &str, cells: &[(&str, &str)], w: u16) {
    let lines: Vec<&str> = screen.lines().collect();
    let Some(header) = lines.iter().find(|l| l.contains("ITEMS")) else {
        panic!("no header at {w}:\n{screen}")
    };
    let Some(line) = lines
        .iter()
        .find(|l| l.trim_start_matches(['│', '▶', ' ']).starts_with(row))
    else {
        panic!("no row {row} at {w}:\n{screen}")
    };
    let hc: Vec<char> = header.chars().collect();
    let lc: Vec<char> = line.chars().collect();
    for (title, value) in cells {
        let t: Vec<char> = title.chars().collect();
        let Some(at) = hc.windows(t.len()).position(|x| x == t.as_slice()) else {
            continue; // dropped whole, never cut
        };
        let cell: String = lc[at..].iter().collect();
        let got: String = cell
            .split("  ")
            .next()
            .unwrap_or("")
            .trim_end_matches('│')
            .trim()
            .split(' ')
            .take(value.split(' ').count())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(&got, value, "{title} at {w} columns:\n{header}\n{line}");
    }
    assert!(
        !line.contains('…')
            || !line
                .split('…')
                .any(|p| p.ends_with(|c: char| c.is_ascii_digit())),
        "a number was cut at {w}:\n{line}"
    );
}

/// Issue 19: an empty view says what would fill it and the command or key that does.
#[test]
fn empty_views_say_how_to_fill_them() {
    let collapsed_at = |app: &mut App| {
        text(&render(app, 120, 30))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (mut app, _) = App::new(false);
    load(&mut app, ViewData::Workflows(vec![]));
    app.header.dispatcher = "no dispatcher running: deliveries are queued".into();
    let t = collapsed_at(&mut app);
    assert!(t.contains("`hookops workflow apply FILE`"), "{t}");
    assert!(t.contains("`hookops demo`"), "{t}");
    assert!(t.contains("queued, until `hookops serve` runs"), "{t}");

    let mut app = on_stages(false);
    press(&mut app, KeyCode::Enter);
    load(
        &mut app,
        ViewData::Items {
            rows: vec![],
            more: false,
        },
    );
    let t = collapsed_at(&mut app);
    assert!(
        t.contains("`hookops item import --workflow defects FILE`"),
        "{t}"
    );

    // Deliveries: with only a scope, how deliveries are made; under a filter, that the filter
    // hides them and how to clear it.
    let none = || ViewData::Deliveries {
        rows: vec![],
        cursors: vec![],
        more: false,
    };
    let mut app = on_stages(false);
    ch(&mut app, 'd');
    load(&mut app, none());
    let t = collapsed_at(&mut app);
    assert!(t.contains("one is made each time an item enters"), "{t}");
    let mut app = on_stages(false);
    ch(&mut app, ':');
    type_str(&mut app, "dl failed 5xx");
    press(&mut app, KeyCode::Enter);
    load(&mut app, none());
    let t = collapsed_at(&mut app);
    assert!(
        t.contains("no failed deliveries match the filter (workflow defects, status 5xx): Esc goes back; :dl alone lists every delivery"),
        "{t}"
    );
    assert!(!t.contains("one is made each time"), "{t}");
    let mut app = on_stages(false);
    ch(&mut app, 'd');
    load(&mut app, none());
    ch(&mut app, '/');
    type_str(&mut app, "weld");
    press(&mut app, KeyCode::Enter);
    load(&mut app, none());
    let t = collapsed_at(&mut app);
    assert!(
        t.contains("nothing matches /weld (esc in / clears it)"),
        "{t}"
    );
}

/// Issue 19 (`--mouse`): a click selects the row drawn under it, a second click opens it, the
/// wheel scrolls the list or the log pane it is over.
#[test]
fn clicks_and_the_wheel_act_on_what_is_drawn_under_them() {
    use crate::tui::state::{Pointer, PointerKind};
    let at = |what, col, row, at_ms| {
        Msg::Mouse(Pointer {
            what,
            col,
            row,
            at_ms,
        })
    };
    let mut app = on_items(false, 30);
    with_attempts(&mut app);
    let screen = text(&render(&mut app, 80, 24));
    let lines: Vec<&str> = screen.lines().collect();
    let row = lines
        .iter()
        .position(|l| l.contains("weld_0004.jpg"))
        .unwrap() as u16;
    update(&mut app, at(PointerKind::Click, 10, row, 1_000));
    assert_eq!(app.view().unwrap().cursor, 3, "the clicked row");
    // A second click on it soon after opens it.
    let fx = update(&mut app, at(PointerKind::Click, 10, row, 1_200));
    assert!(
        matches!(&fx[..], [Effect::Load { kind: crate::tui::state::ViewKind::Item(id), .. }] if id.as_str() == "item-004"),
        "{fx:?}"
    );
    // The wheel over the list moves its cursor; over the log pane, the log's.
    let mut app = on_items(false, 30);
    with_attempts(&mut app);
    let screen = text(&render(&mut app, 80, 24));
    update(&mut app, at(PointerKind::WheelDown, 10, 5, 0));
    assert_eq!(app.view().unwrap().cursor, 3);
    let log_row = screen.lines().position(|l| l.contains("log ·")).unwrap() as u16 + 2;
    let before = app.log.cursor;
    update(&mut app, at(PointerKind::WheelUp, 10, log_row, 0));
    assert!(app.log.cursor < before && !app.log.follow);
    assert_eq!(app.view().unwrap().cursor, 3, "the list did not move");
    // The header line and the border are not rows.
    update(&mut app, at(PointerKind::Click, 10, 3, 5_000));
    assert_eq!(app.view().unwrap().cursor, 3);
}

/// Issue 19: the item detail shows its whole history (not 8 moves at most), scrolled with the
/// page keys while j/k stay on its deliveries.
#[test]
fn the_item_history_is_whole_and_scrolls() {
    use crate::model::HistoryCause;
    use crate::store::HistoryEntry;
    let mut d = item_detail();
    for i in 0..40 {
        d.history.push(HistoryEntry {
            at: now() - chrono::Duration::seconds(100 - i),
            from: Some(StageId::new("review")),
            to: StageId::new(format!("stage-{i:02}")),
            cause: HistoryCause::Route,
            operator: None,
            revision: 3,
            delivery_id: None,
        });
    }
    let mut app = on_items(false, 3);
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Item(Box::new(d)));
    let screen = text(&render(&mut app, 120, 40));
    assert!(screen.contains("history · 1–"), "{screen}");
    assert!(screen.contains("of 42 moves"), "{screen}");
    assert!(screen.contains("stage-39"), "newest first:\n{screen}");
    assert!(!screen.contains("stage-00"), "{screen}");
    for _ in 0..10 {
        press(&mut app, KeyCode::PageDown);
    }
    let screen = text(&render(&mut app, 120, 40));
    assert!(
        screen.contains("stage-00"),
        "scrolled to the oldest:\n{screen}"
    );
    assert!(screen.contains("dataset → validate"), "{screen}");
    assert!(screen.contains("of 42 moves"), "{screen}");
    assert_eq!(
        app.view().unwrap().cursor,
        0,
        "the deliveries' cursor did not move"
    );
}

/// Issue 19: a popup longer than its box scrolls to its end; a long flash wraps, not cut.
#[test]
fn popups_scroll_and_flash_messages_wrap() {
    let mut app = on_workflows(false);
    let body: Vec<String> = (1..=60).map(|i| format!("line {i:02}")).collect();
    update(
        &mut app,
        Msg::TestResult {
            title: "test defects/validate".into(),
            text: body.join("\n"),
        },
    );
    let screen = text(&render(&mut app, 80, 24));
    assert!(screen.contains("lines 1–12 of 60"), "{screen}");
    assert!(!screen.contains("line 60"));
    for _ in 0..30 {
        press(&mut app, KeyCode::PageDown);
    }
    let screen = text(&render(&mut app, 80, 24));
    assert!(screen.contains("line 60"), "scrolled to the end:\n{screen}");
    assert!(screen.contains("of 60"), "{screen}");
    ch(&mut app, 'k');
    assert!(app.overlay.is_some(), "scrolling keeps it open");
    press(&mut app, KeyCode::Esc);
    assert!(app.overlay.is_none());

    let long = format!("{} END-OF-MESSAGE", "word ".repeat(30));
    app.flash(long, crate::tui::state::Level::Warn);
    let screen = text(&render(&mut app, 80, 24));
    assert!(screen.contains("END-OF-MESSAGE"), "{screen}");
}

/// Issue 21: the stages view shows a hold with its countdown and reason, a reduced
/// concurrency beside the in-flight count, and a rate with its drain time.
#[test]
fn the_stages_view_shows_holds_limits_and_rates() {
    let mut app = on_workflows(false);
    press(&mut app, KeyCode::Enter);
    let mut detail = crate::tui::tests::stages();
    for s in &mut detail.stage_list {
        match s.id.as_str() {
            "validate" => {
                s.held_until =
                    Some(crate::tui::tests::now() + chrono::Duration::milliseconds(27_500));
                s.held_reason = Some("429 from receiver".into());
                s.concurrency_limit = Some(4);
                s.deliveries.insert("in_flight".into(), 3);
            }
            "export" => {
                s.webhook = Some(crate::store::WebhookView {
                    url: "http://127.0.0.1:9/export".into(),
                    authorization: None,
                    headers: vec![],
                    secrets: vec![],
                    include_annotations: true,
                    payload: crate::model::PayloadFormat::Darwin,
                    max_attempts: 6,
                    timeout_ms: 10_000,
                    retry_schedule_ms: vec![1000],
                    pause_after_failures: 50,
                    max_in_flight: None,
                    rate_limit: Some("5/s".into()),
                    burst: Some(5),
                    rate_per_second: Some(5.0),
                });
                s.drain_seconds = Some(20.0);
            }
            _ => {}
        }
    }
    load(&mut app, ViewData::Stages(Box::new(detail)));
    let t = text(&render(&mut app, 160, 40));
    for needle in [
        "⏳ held 28 s: 429 from receiver",
        "↗ 3/4 in flight (429s)",
        "⏱ 5/s, drains in 20 s",
    ] {
        assert!(t.contains(needle), "{needle} missing:\n{t}");
    }
}
