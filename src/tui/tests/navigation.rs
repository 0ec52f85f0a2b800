//! Navigation that reaches the end: `G` reads a paged list's last page backward (keys wait for
//! it), scrolling up from there reads the pages before, `g` goes back to the first page, and
//! the title numbers the row under the cursor in the whole list.

use ratatui::crossterm::event::KeyCode;

use super::*;
use crate::tui::state::{At, LoadAfter};

/// Items `from..=to` (ids `item-NNN`), as one page.
fn page(from: usize, to: usize) -> Vec<ItemRow> {
    (from..=to).map(item_row).collect()
}

/// A console on a stage of 1,000 items, its first page (rows 1–200) loaded, the total told.
fn on_long_stage() -> App {
    let mut app = on_stages(false);
    press(&mut app, KeyCode::Enter);
    load(
        &mut app,
        ViewData::Items {
            rows: page(1, 200),
            more: true,
        },
    );
    let view = app.view().unwrap().id;
    update(
        &mut app,
        Msg::Total {
            view,
            total: Some(1000),
        },
    );
    app
}

fn title(app: &mut App) -> String {
    text(&render(app, 120, 40))
        .lines()
        .nth(2)
        .unwrap()
        .to_string()
}

fn under_cursor(app: &App) -> String {
    let v = app.view().unwrap();
    match &v.data {
        ViewData::Items { rows, .. } => rows[v.cursor].id.to_string(),
        _ => panic!("not items"),
    }
}

fn window(app: &mut App, data: ViewData, at: At, total: Option<i64>) -> Vec<Effect> {
    let view = app.view().unwrap().id;
    update(
        app,
        Msg::Window {
            view,
            data,
            at,
            total,
        },
    )
}

#[test]
fn g_reads_the_last_page_backward_and_numbers_the_rows() {
    let mut app = on_long_stage();
    assert!(
        title(&mut app).contains("row 1 of 1000"),
        "{}",
        title(&mut app)
    );
    let fx = ch(&mut app, 'G');
    assert!(
        matches!(
            &fx[..],
            [Effect::Load {
                after: Some(LoadAfter::End),
                ..
            }]
        ),
        "{fx:?}"
    );
    // Keys typed before the last page comes act on it, not on the first page.
    assert!(ch(&mut app, 'k').is_empty());
    ch(&mut app, ' ');
    assert!(app.view().unwrap().selected.is_empty());
    window(
        &mut app,
        ViewData::Items {
            rows: page(801, 1000),
            more: false,
        },
        At::End,
        Some(1000),
    );
    // `G` put the cursor on row 1000, `k` moved to 999, Space selected it and moved down.
    assert_eq!(under_cursor(&app), "item-1000");
    assert!(app.view().unwrap().selected.contains_key("item-999"));
    assert!(
        title(&mut app).contains("row 1000 of 1000"),
        "{}",
        title(&mut app)
    );
    // A late page of the list before `G` is ignored.
    let stale = app.view().unwrap().id - 1;
    update(
        &mut app,
        Msg::Loaded {
            view: stale,
            data: ViewData::Items {
                rows: page(201, 400),
                more: true,
            },
            append: true,
        },
    );
    assert_eq!(under_cursor(&app), "item-1000");
}

#[test]
fn scrolling_up_from_the_end_reads_the_pages_before() {
    let mut app = on_long_stage();
    ch(&mut app, 'G');
    window(
        &mut app,
        ViewData::Items {
            rows: page(801, 1000),
            more: false,
        },
        At::End,
        Some(1000),
    );
    render(&mut app, 120, 40);
    // Page up until the first loaded rows are near: the page before is asked for once.
    let mut asked = Vec::new();
    for _ in 0..12 {
        asked.extend(press(&mut app, KeyCode::PageUp));
    }
    let befores: Vec<&Effect> = asked
        .iter()
        .filter(|e| {
            matches!(
                e,
                Effect::Load {
                    after: Some(LoadAfter::ItemBefore(_)),
                    ..
                }
            )
        })
        .collect();
    assert_eq!(befores.len(), 1, "{asked:?}");
    let at = under_cursor(&app);
    let row = |app: &mut App| {
        let t = title(app);
        t.split("row ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    let before = row(&mut app);
    window(
        &mut app,
        ViewData::Items {
            rows: page(601, 800),
            more: true,
        },
        At::Before,
        None,
    );
    // The same row stays under the cursor, with the same number.
    assert_eq!(under_cursor(&app), at);
    assert_eq!(row(&mut app), before);
    assert_eq!(app.view().unwrap().base, 600);
    // `g` goes back to the list's first page.
    let fx = ch(&mut app, 'g');
    assert!(
        matches!(&fx[..], [Effect::Load { after: None, .. }]),
        "{fx:?}"
    );
    load(
        &mut app,
        ViewData::Items {
            rows: page(1, 200),
            more: true,
        },
    );
    assert_eq!(under_cursor(&app), "item-001");
    assert!(title(&mut app).contains("row 1 of "), "{}", title(&mut app));
}

#[test]
fn g_on_a_list_loaded_whole_moves_at_once_and_home_end_are_g() {
    let mut app = on_items(false, 30);
    assert!(ch(&mut app, 'G').is_empty());
    assert_eq!(under_cursor(&app), "item-030");
    press(&mut app, KeyCode::Home);
    assert_eq!(under_cursor(&app), "item-001");
    press(&mut app, KeyCode::End);
    assert_eq!(under_cursor(&app), "item-030");
    assert!(
        title(&mut app).contains("row 30 of 30"),
        "{}",
        title(&mut app)
    );
    press(&mut app, KeyCode::PageUp);
    let after_page = under_cursor(&app);
    assert_ne!(after_page, "item-030");
    press(&mut app, KeyCode::PageDown);
    assert_eq!(under_cursor(&app), "item-030");
}

#[test]
fn without_a_total_the_title_says_more_rows_follow() {
    let mut app = on_stages(false);
    press(&mut app, KeyCode::Enter);
    load(
        &mut app,
        ViewData::Items {
            rows: page(1, 200),
            more: true,
        },
    );
    assert!(
        title(&mut app).contains("row 1 of 200+"),
        "{}",
        title(&mut app)
    );
}

#[test]
fn a_reload_does_not_take_a_view_at_the_end_back_to_the_top() {
    let mut app = on_long_stage();
    ch(&mut app, 'G');
    window(
        &mut app,
        ViewData::Items {
            rows: page(801, 1000),
            more: false,
        },
        At::End,
        Some(1000),
    );
    assert!(update(&mut app, Msg::Changed).is_empty());
    assert_eq!(under_cursor(&app), "item-1000");
}
