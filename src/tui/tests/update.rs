//! The pure update: keys, messages, the state they leave and the effects they ask for.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::*;
use crate::actions::BulkAction;
use crate::model::ErrorKind;
use crate::store::ItemRow;
use crate::store::{DeliveryFilter, ItemOrder, StatusMatch};
use crate::tui::keymap::{self, Action, BINDINGS, Key, Scope};
use crate::tui::state::{
    AssignWhat, Effect, LOG_CAPACITY, Level, LoadAfter, LogEntry, Overlay, PAGE, Pending, ViewKind,
};

fn kind(app: &App) -> ViewKind {
    app.view().unwrap().kind.clone()
}

fn cursor(app: &App) -> usize {
    app.view().unwrap().cursor
}

/// The executor's answer to the action last sent (`Msg::ActionDone`).
fn answered(app: &mut App) {
    update(
        app,
        Msg::ActionDone {
            text: "done".into(),
            level: Level::Info,
            refused: vec![],
        },
    );
}

fn flash(app: &App) -> String {
    app.flash
        .as_ref()
        .map(|f| f.text.clone())
        .unwrap_or_default()
}

/// The single `Load` among `fx`: (view kind, search).
fn loads(fx: &[Effect]) -> Vec<(ViewKind, String)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Load { kind, search, .. } => Some((kind.clone(), search.clone())),
            _ => None,
        })
        .collect()
}

fn wf() -> WorkflowId {
    WorkflowId::new(WF)
}

fn items_kind() -> ViewKind {
    ViewKind::Items {
        workflow: Some(wf()),
        stage: Some(StageId::new("dataset")),
    }
}

// ---------------------------------------------------------------------------------------------
// Start, navigation, views
// ---------------------------------------------------------------------------------------------

#[test]
fn starts_on_workflows_with_the_log_pane_and_asks_for_them() {
    let (app, fx) = App::new(false);
    assert_eq!(loads(&fx), vec![(ViewKind::Workflows, String::new())]);
    assert_eq!(kind(&app), ViewKind::Workflows);
    assert!(app.log.visible && app.log.follow && !app.focus_log);
    assert!(app.overlay.is_none() && !app.quit);
}

#[test]
fn a_late_load_for_a_view_that_is_gone_is_ignored() {
    let mut app = on_stages(false);
    let stages_id = app.view().unwrap().id;
    press(&mut app, KeyCode::Esc);
    update(
        &mut app,
        Msg::Loaded {
            view: stages_id,
            data: ViewData::Audit(audit()),
            append: false,
        },
    );
    assert!(matches!(app.view().unwrap().data, ViewData::Workflows(_)));
}

#[test]
fn j_k_g_shift_g_and_arrows_move_the_cursor_within_bounds() {
    let mut app = on_items(false, 30);
    assert_eq!(cursor(&app), 0);
    ch(&mut app, 'k');
    assert_eq!(cursor(&app), 0, "up at the top stays");
    ch(&mut app, 'j');
    ch(&mut app, 'j');
    assert_eq!(cursor(&app), 2);
    press(&mut app, KeyCode::Down);
    assert_eq!(cursor(&app), 3);
    press(&mut app, KeyCode::Up);
    assert_eq!(cursor(&app), 2);
    ch(&mut app, 'G');
    assert_eq!(cursor(&app), 29);
    ch(&mut app, 'j');
    assert_eq!(cursor(&app), 29, "down at the bottom stays");
    ch(&mut app, 'g');
    assert_eq!(cursor(&app), 0);
    press(&mut app, KeyCode::End);
    assert_eq!(cursor(&app), 29);
    press(&mut app, KeyCode::Home);
    assert_eq!(cursor(&app), 0);
}

#[test]
fn page_keys_move_by_the_visible_height() {
    let mut app = on_items(false, 30);
    app.page_rows = 7;
    press(&mut app, KeyCode::PageDown);
    assert_eq!(cursor(&app), 7);
    update(
        &mut app,
        Msg::Key(KeyEvent::new(KeyCode::Char('d'), KeyModifiers::CONTROL)),
    );
    assert_eq!(cursor(&app), 14);
    press(&mut app, KeyCode::PageUp);
    assert_eq!(cursor(&app), 7);
    update(
        &mut app,
        Msg::Key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL)),
    );
    assert_eq!(cursor(&app), 0);
    press(&mut app, KeyCode::PageUp);
    assert_eq!(cursor(&app), 0);
    for _ in 0..10 {
        press(&mut app, KeyCode::PageDown);
    }
    assert_eq!(cursor(&app), 29);
}

#[test]
fn moving_near_the_end_of_a_full_page_fetches_the_next_page_by_keyset() {
    let mut app = on_stages(false);
    press(&mut app, KeyCode::Enter);
    load(
        &mut app,
        ViewData::Items {
            rows: items(PAGE),
            more: true,
        },
    );
    app.page_rows = 10;
    assert!(
        loads(&ch(&mut app, 'j')).is_empty(),
        "far from the end: no fetch"
    );
    // Paging down to the loaded rows' end asks for the next page once (not once a key).
    let mut fx = Vec::new();
    for _ in 0..PAGE / 10 {
        fx.extend(press(&mut app, KeyCode::PageDown));
    }
    let last = items(PAGE).last().unwrap().cursor.clone();
    assert_eq!(loads(&fx).len(), 1, "{fx:?}");
    assert!(
        fx.iter().any(
            |e| matches!(e, Effect::Load { after: Some(LoadAfter::Item(c)), .. } if *c == last)
        ),
        "{fx:?}"
    );
    // The page arrives appended.
    let view = app.view().unwrap().id;
    let more: Vec<_> = (PAGE + 1..PAGE + 6).map(item_row).collect();
    update(
        &mut app,
        Msg::Loaded {
            view,
            data: ViewData::Items {
                rows: more,
                more: false,
            },
            append: true,
        },
    );
    assert_eq!(app.view().unwrap().len(), PAGE + 5);
}

#[test]
fn enter_pushes_the_next_view_and_asks_for_its_data_and_esc_pops() {
    let mut app = on_workflows(false);
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(loads(&fx), vec![(ViewKind::Stages(wf()), String::new())]);
    assert_eq!(app.stack.len(), 2);
    load(&mut app, ViewData::Stages(Box::new(stages())));

    ch(&mut app, 'j'); // validate
    let fx = press(&mut app, KeyCode::Enter);
    let validate = ViewKind::Items {
        workflow: Some(wf()),
        stage: Some(StageId::new("validate")),
    };
    assert_eq!(loads(&fx), vec![(validate.clone(), String::new())]);
    load(
        &mut app,
        ViewData::Items {
            rows: items(3),
            more: false,
        },
    );

    ch(&mut app, 'j');
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        loads(&fx),
        vec![(ViewKind::Item(ItemId::new("item-002")), String::new())]
    );
    load(&mut app, ViewData::Item(Box::new(item_detail())));

    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        loads(&fx),
        vec![(
            ViewKind::Delivery(DeliveryId::new("msg_0001")),
            String::new()
        )]
    );
    assert_eq!(app.stack.len(), 5);
    load(&mut app, ViewData::Delivery(Box::new(delivery_detail())));

    let fx = press(&mut app, KeyCode::Esc);
    assert_eq!(app.stack.len(), 4);
    assert_eq!(
        loads(&fx),
        vec![(ViewKind::Item(ItemId::new("item-002")), String::new())]
    );
    press(&mut app, KeyCode::Esc);
    let fx = press(&mut app, KeyCode::Esc);
    assert_eq!(loads(&fx), vec![(ViewKind::Stages(wf()), String::new())]);
    press(&mut app, KeyCode::Esc);
    assert_eq!(kind(&app), ViewKind::Workflows);
    assert!(
        press(&mut app, KeyCode::Esc).is_empty(),
        "esc on the first view does nothing"
    );
    assert_eq!(app.stack.len(), 1);
}

#[test]
fn enter_on_a_deliveries_row_opens_that_delivery() {
    let mut app = on_deliveries(false);
    ch(&mut app, 'j');
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        loads(&fx),
        vec![(
            ViewKind::Delivery(DeliveryId::new("msg_0002")),
            String::new()
        )]
    );
}

#[test]
fn delivery_detail_scrolls_instead_of_moving_a_cursor() {
    let mut app = on_deliveries(false);
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Delivery(Box::new(delivery_detail())));
    ch(&mut app, 'j');
    ch(&mut app, 'j');
    assert_eq!(app.view().unwrap().scroll, 2);
    ch(&mut app, 'k');
    assert_eq!(app.view().unwrap().scroll, 1);
    ch(&mut app, 'g');
    assert_eq!(app.view().unwrap().scroll, 0);
}

#[test]
fn d_and_i_open_deliveries_and_items_of_what_is_under_the_cursor() {
    let mut app = on_stages(false);
    ch(&mut app, 'j');
    let fx = ch(&mut app, 'd');
    let filter = DeliveryFilter {
        workflow: Some(wf()),
        stage: Some(StageId::new("validate")),
        ..Default::default()
    };
    assert_eq!(
        loads(&fx),
        vec![(ViewKind::Deliveries(filter), String::new())]
    );
    load(&mut app, deliveries_data());
    press(&mut app, KeyCode::Esc);
    let fx = ch(&mut app, 'i');
    let validate = ViewKind::Items {
        workflow: Some(wf()),
        stage: Some(StageId::new("validate")),
    };
    assert_eq!(loads(&fx), vec![(validate, String::new())]);

    let mut app = on_workflows(false);
    let fx = ch(&mut app, 'i');
    assert_eq!(
        loads(&fx),
        vec![(
            ViewKind::Items {
                workflow: Some(wf()),
                stage: None
            },
            String::new()
        )]
    );
    arrived(&mut app);
    press(&mut app, KeyCode::Esc);
    let fx = ch(&mut app, 'd');
    let filter = DeliveryFilter {
        workflow: Some(wf()),
        ..Default::default()
    };
    assert_eq!(
        loads(&fx),
        vec![(ViewKind::Deliveries(filter), String::new())]
    );

    let mut app = on_items(false, 3);
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Item(Box::new(item_detail())));
    let fx = ch(&mut app, 'd');
    let filter = DeliveryFilter {
        item: Some(ItemId::new("item-001")),
        ..Default::default()
    };
    assert_eq!(
        loads(&fx),
        vec![(ViewKind::Deliveries(filter), String::new())]
    );
}

#[test]
fn s_sorts_items_by_name_and_back_and_reloads() {
    let mut app = on_items(false, 5);
    ch(&mut app, 'j');
    let fx = ch(&mut app, 's');
    assert!(
        matches!(
            &fx[..],
            [Effect::Load {
                order: ItemOrder::Name,
                ..
            }]
        ),
        "{fx:?}"
    );
    assert_eq!(cursor(&app), 0);
    ch(&mut app, 'j');
    assert_eq!(cursor(&app), 0, "keys wait for the list in the new order");
    let view = app.view().unwrap().id;
    let fx = update(
        &mut app,
        Msg::Loaded {
            view,
            data: ViewData::Items {
                rows: items(5),
                more: false,
            },
            append: false,
        },
    );
    assert!(fx.is_empty());
    assert_eq!(cursor(&app), 1, "the waiting key ran on the new list");
    let fx = ch(&mut app, 's');
    assert!(
        matches!(
            &fx[..],
            [Effect::Load {
                order: ItemOrder::Waiting,
                ..
            }]
        ),
        "{fx:?}"
    );
}

#[test]
fn y_copies_the_id_under_the_cursor() {
    let mut app = on_items(false, 3);
    ch(&mut app, 'j');
    assert_eq!(ch(&mut app, 'y'), vec![Effect::Copy("item-002".into())]);
    let mut app = on_deliveries(false);
    assert_eq!(ch(&mut app, 'y'), vec![Effect::Copy("msg_0001".into())]);
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Delivery(Box::new(delivery_detail())));
    assert_eq!(ch(&mut app, 'y'), vec![Effect::Copy("msg_0001".into())]);
}

// ---------------------------------------------------------------------------------------------
// Filter and selection
// ---------------------------------------------------------------------------------------------

#[test]
fn slash_filter_narrows_as_you_type_enter_keeps_esc_clears() {
    let mut app = on_stages(false);
    ch(&mut app, '/');
    assert!(matches!(app.overlay, Some(Overlay::Filter(_))));
    assert_eq!(app.view().unwrap().len(), 6);
    ch(&mut app, 'w');
    ch(&mut app, 'e');
    ch(&mut app, 'b');
    // "web" matches the two webhook stages (by kind).
    assert_eq!(app.view().unwrap().len(), 2);
    type_str(&mut app, "hook ex");
    assert_eq!(
        app.view().unwrap().len(),
        0,
        "\"webhook ex\" matches nothing"
    );
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    assert_eq!(app.view().unwrap().filter, "webhook");
    // Enter keeps the filter and closes the line.
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(app.overlay.is_none());
    assert_eq!(app.view().unwrap().len(), 2);
    // Enter opens the first matching row, not the first row.
    let fx = press(&mut app, KeyCode::Enter);
    let validate = ViewKind::Items {
        workflow: Some(wf()),
        stage: Some(StageId::new("validate")),
    };
    assert_eq!(loads(&fx), vec![(validate, String::new())]);
    load(
        &mut app,
        ViewData::Items {
            rows: items(3),
            more: false,
        },
    );
    press(&mut app, KeyCode::Esc);
    assert_eq!(
        app.view().unwrap().filter,
        "webhook",
        "the kept filter survives a visit"
    );
    // `/` again starts from the kept text; Esc clears it.
    ch(&mut app, '/');
    assert!(matches!(&app.overlay, Some(Overlay::Filter(s)) if s == "webhook"));
    press(&mut app, KeyCode::Esc);
    assert!(app.overlay.is_none());
    assert_eq!(app.view().unwrap().filter, "");
    assert_eq!(app.view().unwrap().len(), 6);
}

#[test]
fn items_filter_asks_the_store_with_the_search() {
    let mut app = on_items(false, 5);
    ch(&mut app, 'j');
    ch(&mut app, '/');
    ch(&mut app, 'w');
    let fx = ch(&mut app, '2');
    assert_eq!(loads(&fx), vec![(items_kind(), "w2".to_string())]);
    assert_eq!(cursor(&app), 0, "a new filter starts at the top");
    let fx = press(&mut app, KeyCode::Backspace);
    assert_eq!(loads(&fx), vec![(items_kind(), "w".to_string())]);
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert_eq!(app.view().unwrap().filter, "w");
    load(
        &mut app,
        ViewData::Items {
            rows: items(5),
            more: false,
        },
    );
    ch(&mut app, '/');
    let fx = press(&mut app, KeyCode::Esc);
    assert_eq!(loads(&fx), vec![(items_kind(), String::new())]);
}

/// The rows of [`deliveries_data`] whose id is `id`, as the store answers a `/` filter.
fn deliveries_only(id: &str) -> ViewData {
    let rows: Vec<_> = deliveries()
        .into_iter()
        .filter(|d| d.id.as_str() == id)
        .collect();
    let cursors = (1..=rows.len() as i64)
        .map(crate::store::DeliveryCursor::for_tests)
        .collect();
    ViewData::Deliveries {
        rows,
        cursors,
        more: false,
    }
}

#[test]
fn deliveries_filter_in_sql_and_audit_locally() {
    let mut app = on_deliveries(false);
    ch(&mut app, '/');
    let fx = type_str(&mut app, "weld_0002");
    assert_eq!(loads(&fx).len(), 1, "the store is asked: {fx:?}");
    update(
        &mut app,
        Msg::Loaded {
            view: load_view(&fx),
            data: deliveries_only("msg_0002"),
            append: false,
        },
    );
    assert_eq!(app.view().unwrap().len(), 1);
    press(&mut app, KeyCode::Enter);
    assert_eq!(ch(&mut app, 'y'), vec![Effect::Copy("msg_0002".into())]);

    let mut app = on_workflows(false);
    ch(&mut app, ':');
    type_str(&mut app, "audit");
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Audit(audit()));
    ch(&mut app, '/');
    type_str(&mut app, "bo");
    assert_eq!(app.view().unwrap().len(), 1);
}

#[test]
fn space_toggles_the_row_and_moves_down_and_esc_clears_the_selection() {
    let mut app = on_items(false, 5);
    ch(&mut app, ' ');
    assert_eq!(cursor(&app), 1);
    ch(&mut app, ' ');
    assert_eq!(cursor(&app), 2);
    let sel: Vec<_> = app.view().unwrap().selected.keys().cloned().collect();
    assert_eq!(sel, vec!["item-001", "item-002"]);
    ch(&mut app, 'k');
    ch(&mut app, ' ');
    let sel: Vec<_> = app.view().unwrap().selected.keys().cloned().collect();
    assert_eq!(sel, vec!["item-001"], "space again unselects");
    // Esc clears a selection before it goes back.
    assert!(press(&mut app, KeyCode::Esc).is_empty());
    assert!(app.view().unwrap().selected.is_empty());
    assert_eq!(app.stack.len(), 3);
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.stack.len(), 2);
}

#[test]
fn space_on_the_last_row_stays_there() {
    let mut app = on_items(false, 2);
    ch(&mut app, 'G');
    ch(&mut app, ' ');
    assert_eq!(cursor(&app), 1);
    assert!(app.view().unwrap().selected.contains_key("item-002"));
}

#[test]
fn star_selects_every_loaded_row() {
    let mut app = on_items(false, 12);
    ch(&mut app, '*');
    assert_eq!(app.view().unwrap().selected.len(), 12);
    assert!(flash(&app).contains("12 rows selected"), "{}", flash(&app));
    let mut app = on_deliveries(false);
    ch(&mut app, '/');
    let fx = type_str(&mut app, "msg_0002");
    update(
        &mut app,
        Msg::Loaded {
            view: load_view(&fx),
            data: deliveries_only("msg_0002"),
            append: false,
        },
    );
    press(&mut app, KeyCode::Enter);
    ch(&mut app, '*');
    assert_eq!(
        app.view().unwrap().selected.len(),
        1,
        "only the rows the filter shows"
    );
}

#[test]
fn a_reload_neither_drops_nor_duplicates_the_selection() {
    let mut app = on_items(false, 5);
    ch(&mut app, '*');
    // Rows 3–5 moved out of the list; row 1 comes twice (a page and a reload overlapping).
    let mut rows = items(2);
    rows.push(item_row(1));
    load(&mut app, ViewData::Items { rows, more: false });
    let v = app.view().unwrap();
    assert_eq!(v.selected.len(), 5, "the selection is kept whole, by id");
    assert_eq!(v.visible_ids().len(), 2);
    // The confirmation says how many selected rows are not on screen.
    ch(&mut app, 'a');
    type_str(&mut app, "valid");
    press(&mut app, KeyCode::Enter);
    let Some(Overlay::Confirm { text, action, .. }) = &app.overlay else {
        panic!("no dialog: {:?}", app.overlay)
    };
    assert!(
        text.starts_with("Assign 5 items to stage validate: "),
        "{text}"
    );
    assert!(text.contains("3 of them are not on screen"), "{text}");
    // Each with the version the operator saw.
    let Pending::Assign {
        target: AssignWhat::Items(ids),
        ..
    } = action
    else {
        panic!("{action:?}")
    };
    assert_eq!(ids.len(), 5);
}

// ---------------------------------------------------------------------------------------------
// A fast typist (issue 19): keys act on the list the screen shows
// ---------------------------------------------------------------------------------------------

/// The page a load asked for arrives (for the view id the load named).
fn answer(app: &mut App, view: u64, rows: Vec<ItemRow>) -> Vec<Effect> {
    update(
        app,
        Msg::Loaded {
            view,
            data: ViewData::Items { rows, more: false },
            append: false,
        },
    )
}

fn load_view(fx: &[Effect]) -> u64 {
    fx.iter()
        .find_map(|e| match e {
            Effect::Load { view, .. } => Some(*view),
            _ => None,
        })
        .expect("a load")
}

/// The sequence: `/`, a filter, Enter, Space, Space, `a`, a stage, Tab, Enter, all
/// before the filtered page arrives. The keys wait for it and then act on its rows only.
#[test]
fn keys_typed_before_the_filtered_page_arrives_wait_for_it() {
    let mut app = on_items(false, 5);
    ch(&mut app, '/');
    ch(&mut app, '4');
    let early = load_view(&ch(&mut app, '0'));
    let fx = ch(&mut app, '5');
    let last = load_view(&fx);
    assert_ne!(early, last, "each filter asks under its own id");
    press(&mut app, KeyCode::Enter);
    for k in [' ', ' ', 'a', 'v', 'a', 'l'] {
        assert!(ch(&mut app, k).is_empty(), "{k:?} waits");
    }
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Tab);
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert_eq!(app.deferred.len(), 9);
    assert!(app.view().unwrap().selected.is_empty(), "nothing acted yet");
    // The page of an earlier filter text comes late: ignored, the keys still wait.
    assert!(answer(&mut app, early, items(5)).is_empty());
    assert_eq!(app.deferred.len(), 9);
    assert_eq!(app.view().unwrap().len(), 5);
    // The filtered page: two rows. The keys run on them, in order, up to the action.
    let rows = vec![item_row(40), item_row(45)];
    let fx = answer(&mut app, last, rows);
    assert!(app.deferred.is_empty());
    assert_eq!(
        fx,
        vec![Effect::Run(Pending::Assign {
            workflow: wf(),
            to: StageId::new("validate"),
            target: AssignWhat::Items(vec![
                (ItemId::new("item-040"), 50),
                (ItemId::new("item-045"), 55)
            ]),
        })]
    );
}

#[test]
fn an_action_key_with_nothing_to_act_on_says_so() {
    let mut app = on_items(false, 0);
    assert!(ch(&mut app, 'a').is_empty());
    assert!(app.overlay.is_none());
    assert!(flash(&app).contains("nothing to act on"), "{}", flash(&app));
}

#[test]
fn the_confirmation_names_up_to_five_items() {
    let mut app = on_items(false, 5);
    ch(&mut app, ' ');
    ch(&mut app, ' ');
    ch(&mut app, 'a');
    type_str(&mut app, "valid");
    press(&mut app, KeyCode::Enter);
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm { text, .. }) if text == "Assign 2 items to stage validate: weld_0001.jpg (item-001), weld_0002.jpg (item-002)?"),
        "{:?}",
        app.overlay
    );
    let mut app = on_items(false, 6);
    ch(&mut app, '*');
    ch(&mut app, 'a');
    type_str(&mut app, "valid");
    press(&mut app, KeyCode::Enter);
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm { text, .. }) if text == "Assign 6 items to stage validate?"),
        "{:?}",
        app.overlay
    );
}

#[test]
fn a_new_filter_unselects_the_rows_it_hides_and_says_so() {
    // Items: the filter runs in SQL; its page decides what stays selected.
    let mut app = on_items(false, 5);
    ch(&mut app, ' ');
    ch(&mut app, ' ');
    ch(&mut app, '/');
    let fx = ch(&mut app, '2');
    assert_eq!(
        app.view().unwrap().selected.len(),
        2,
        "kept until the page comes"
    );
    answer(&mut app, load_view(&fx), vec![item_row(2)]);
    let kept: Vec<_> = app.view().unwrap().selected.keys().cloned().collect();
    assert_eq!(kept, vec!["item-002"]);
    assert!(
        flash(&app).contains("the filter hides 1 selected row(s): unselected; 1 still selected"),
        "{}",
        flash(&app)
    );
    // A reload that is not a new filter keeps the selection whole.
    let view = app.view().unwrap().id;
    answer(&mut app, view, vec![]);
    assert_eq!(app.view().unwrap().selected.len(), 1);

    // Deliveries: the filter runs in SQL too; the rows it no longer holds are unselected.
    let mut app = on_deliveries(false);
    ch(&mut app, ' ');
    ch(&mut app, ' ');
    ch(&mut app, '/');
    let fx = type_str(&mut app, "msg_0002");
    update(
        &mut app,
        Msg::Loaded {
            view: load_view(&fx),
            data: deliveries_only("msg_0002"),
            append: false,
        },
    );
    let kept: Vec<_> = app.view().unwrap().selected.keys().cloned().collect();
    assert_eq!(kept, vec!["msg_0002"]);
    assert!(
        flash(&app).contains("hides 1 selected row"),
        "{}",
        flash(&app)
    );
}

#[test]
fn keys_wait_for_a_new_view_and_for_the_picker_stage_list() {
    let mut app = on_stages(false);
    let fx = press(&mut app, KeyCode::Enter);
    // Typed before the first page: they run on it.
    assert!(ch(&mut app, 'j').is_empty());
    assert!(ch(&mut app, ' ').is_empty());
    answer(&mut app, load_view(&fx), items(3));
    let kept: Vec<_> = app.view().unwrap().selected.keys().cloned().collect();
    assert_eq!(kept, vec!["item-002"]);

    // `a` before the workflow's stage list is known: the stage name waits for the picker.
    app.stages.clear();
    let fx = ch(&mut app, 'a');
    assert!(matches!(&fx[..], [Effect::Load { view: 0, .. }]), "{fx:?}");
    type_str(&mut app, "valid");
    assert!(app.overlay.is_none());
    update(
        &mut app,
        Msg::Loaded {
            view: 0,
            data: ViewData::Stages(Box::new(stages())),
            append: false,
        },
    );
    assert_eq!(picker_matches(&app), vec!["validate"]);
}

#[test]
fn keys_that_wait_too_long_are_dropped_for_a_stale_list_and_run_on_an_empty_one() {
    // A new filter whose page never comes: the keys are dropped, with a message.
    let mut app = on_items(false, 5);
    ch(&mut app, '/');
    ch(&mut app, 'x');
    press(&mut app, KeyCode::Enter);
    ch(&mut app, ' ');
    for _ in 0..3 {
        update(&mut app, Msg::Tick);
    }
    assert!(app.deferred.is_empty());
    assert!(app.view().unwrap().selected.is_empty());
    assert!(flash(&app).contains("1 key(s) dropped"), "{}", flash(&app));
    // A new view still loading: nothing to act on by mistake; Esc goes back.
    let mut app = on_stages(false);
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.stack.len(), 3);
    for _ in 0..3 {
        update(&mut app, Msg::Tick);
    }
    assert_eq!(app.stack.len(), 2);
}

#[test]
fn ctrl_c_never_waits() {
    let mut app = on_stages(false);
    press(&mut app, KeyCode::Enter);
    update(
        &mut app,
        Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
    );
    assert!(app.quit);
}

#[test]
fn a_paste_goes_into_the_open_prompt_and_never_acts_as_keys() {
    let mut app = on_items(false, 5);
    // No prompt open: nothing happens (an `a` in the text must not assign).
    assert!(update(&mut app, Msg::Paste("a r item-003".into())).is_empty());
    assert!(app.overlay.is_none());
    assert!(
        flash(&app).contains("open / (filter) or : (command)"),
        "{}",
        flash(&app)
    );
    // Into `/`: its first line, without controls, applied once.
    ch(&mut app, '/');
    let fx = update(&mut app, Msg::Paste("item-\x1b[31m003\nsecond line".into()));
    assert_eq!(loads(&fx), vec![(items_kind(), "item-003".to_string())]);
    assert!(matches!(&app.overlay, Some(Overlay::Filter(s)) if s == "item-003"));
    // A paste that arrives while keys wait for a list waits too, in order.
    press(&mut app, KeyCode::Enter);
    ch(&mut app, ':');
    update(&mut app, Msg::Paste("audit".into()));
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.deferred.len(), 3);
    let view = app.view().unwrap().id;
    let fx = update(
        &mut app,
        Msg::Loaded {
            view,
            data: ViewData::Items {
                rows: vec![item_row(3)],
                more: false,
            },
            append: false,
        },
    );
    assert_eq!(loads(&fx), vec![(ViewKind::Audit, String::new())]);
}

#[test]
fn an_action_reports_per_id_and_shows_every_refusal() {
    use crate::tui::report;
    let msg = report::per_id(
        "assigned to validate",
        Some(&["item-001".into()]),
        vec![(
            "item-002".into(),
            "stale: it is now in stage validate".into(),
        )],
        " · 1 deliveries queued",
    );
    let mut app = on_items(false, 3);
    app.running = (1, 0);
    update(&mut app, msg);
    assert_eq!(
        flash(&app),
        "assigned to validate: item-001 · 1 deliveries queued · refused item-002: stale: it is now in stage validate"
    );
    let Some(Overlay::Popup { title, text, .. }) = &app.overlay else {
        panic!("{:?}", app.overlay)
    };
    assert_eq!(title, "1 not done");
    assert!(
        text.ends_with("item-002: stale: it is now in stage validate"),
        "{text}"
    );
    assert_eq!(app.running.0, 0);
    // Many ids: five named, the rest counted.
    let ids: Vec<String> = (1..=8).map(|i| format!("i{i}")).collect();
    let Msg::ActionDone { text, refused, .. } = report::per_id("re-fired", Some(&ids), vec![], "")
    else {
        panic!()
    };
    assert_eq!(text, "re-fired: i1, i2, i3, i4, i5 and 3 more");
    assert!(refused.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Assign
// ---------------------------------------------------------------------------------------------

fn picker_matches(app: &App) -> Vec<String> {
    match &app.overlay {
        Some(Overlay::Picker { choices, query, .. }) => choices
            .iter()
            .filter(|(id, _)| id.as_str().contains(query.as_str()))
            .map(|(id, _)| id.to_string())
            .collect(),
        other => panic!("no picker: {other:?}"),
    }
}

#[test]
fn assign_picks_a_stage_then_confirms_with_focus_on_cancel() {
    let mut app = on_items(false, 5);
    ch(&mut app, ' ');
    ch(&mut app, ' ');
    assert!(ch(&mut app, 'a').is_empty());
    assert_eq!(picker_matches(&app).len(), 6);
    // Narrows as you type; arrows move within the matches.
    type_str(&mut app, "a");
    assert_eq!(
        picker_matches(&app),
        vec!["dataset", "validate", "annotate"]
    );
    type_str(&mut app, "t");
    assert_eq!(
        picker_matches(&app),
        vec!["dataset", "validate", "annotate"]
    );
    type_str(&mut app, "e");
    assert_eq!(picker_matches(&app), vec!["validate", "annotate"]);
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Up);
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    press(&mut app, KeyCode::Backspace);
    type_str(&mut app, "vali");
    assert_eq!(picker_matches(&app), vec!["validate"]);
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    let Some(Overlay::Confirm { text, focus, .. }) = &app.overlay else {
        panic!("no confirmation: {:?}", app.overlay)
    };
    assert_eq!(*focus, 0, "focus starts on Cancel");
    assert!(text.contains("Assign 2 items to stage validate"), "{text}");

    // Enter on Cancel does nothing but close.
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(app.overlay.is_none());
    assert_eq!(flash(&app), "cancelled");

    // Again, and this time move to OK.
    ch(&mut app, 'a');
    type_str(&mut app, "validate");
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Tab);
    assert!(matches!(
        app.overlay,
        Some(Overlay::Confirm { focus: 1, .. })
    ));
    press(&mut app, KeyCode::Left);
    assert!(matches!(
        app.overlay,
        Some(Overlay::Confirm { focus: 0, .. })
    ));
    press(&mut app, KeyCode::Right);
    assert!(matches!(
        app.overlay,
        Some(Overlay::Confirm { focus: 1, .. })
    ));
    ch(&mut app, 'z'); // other keys leave the dialog as it is
    assert!(matches!(
        app.overlay,
        Some(Overlay::Confirm { focus: 1, .. })
    ));
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        fx,
        vec![Effect::Run(Pending::Assign {
            workflow: wf(),
            to: StageId::new("validate"),
            target: AssignWhat::Items(vec![
                (ItemId::new("item-001"), 11),
                (ItemId::new("item-002"), 12)
            ]),
        })]
    );
    assert!(app.overlay.is_none());
}

#[test]
fn assign_without_a_selection_takes_the_row_under_the_cursor() {
    let mut app = on_items(false, 5);
    ch(&mut app, 'j');
    ch(&mut app, 'j');
    ch(&mut app, 'a');
    type_str(&mut app, "valid");
    press(&mut app, KeyCode::Enter);
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm { text, .. }) if text == "Assign item weld_0003.jpg (item-003) to stage validate?"),
        "{:?}",
        app.overlay
    );
    press(&mut app, KeyCode::Tab);
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        fx,
        vec![Effect::Run(Pending::Assign {
            workflow: wf(),
            to: StageId::new("validate"),
            target: AssignWhat::Items(vec![(ItemId::new("item-003"), 13)]),
        })]
    );
}

/// An action that waits for the database (another process holding the write lock) says so
/// while it waits, instead of a "working…" that fades; its answer ends the notice.
#[test]
fn an_action_that_waits_for_the_database_says_so_until_it_is_done() {
    let mut app = on_items(false, 5);
    ch(&mut app, 'a');
    type_str(&mut app, "valid");
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Tab);
    let fx = press(&mut app, KeyCode::Enter);
    assert!(matches!(fx.as_slice(), [Effect::Run(_)]), "{fx:?}");
    assert_eq!(flash(&app), "working…");
    for _ in 0..3 {
        update(&mut app, Msg::Tick);
    }
    assert!(
        flash(&app).contains("still working after 3 s"),
        "{}",
        flash(&app)
    );
    for _ in 0..20 {
        update(&mut app, Msg::Tick);
    }
    assert!(flash(&app).contains("database is busy"), "{}", flash(&app));
    // A second action meanwhile is refused, not queued behind the first.
    ch(&mut app, 'a');
    type_str(&mut app, "valid");
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Tab);
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(flash(&app).contains("still running"), "{}", flash(&app));
    // Other results (an export, the dispatcher's notices) are not the action's answer.
    update(
        &mut app,
        Msg::Done {
            text: "dispatch resumed".into(),
            level: Level::Info,
        },
    );
    assert_eq!(app.running.0, 1);
    update(
        &mut app,
        Msg::ActionDone {
            text: "assigned 1 item(s)".into(),
            level: Level::Info,
            refused: vec![],
        },
    );
    assert_eq!(flash(&app), "assigned 1 item(s)");
    for _ in 0..3 {
        update(&mut app, Msg::Tick);
    }
    assert!(!flash(&app).contains("still working"), "{}", flash(&app));
}

/// A database file deleted or replaced under the console: what an action wrote would be
/// lost, so actions go off and the console keeps saying why.
#[test]
fn a_database_file_that_is_gone_turns_actions_off_and_says_why() {
    let mut app = on_items(false, 5);
    update(
        &mut app,
        Msg::Header(crate::tui::state::Header {
            file_problem: Some("the database file /srv/ops.db was deleted".into()),
            ..header()
        }),
    );
    assert!(app.read_only);
    assert!(
        flash(&app).contains("was deleted: nothing more is written or sent"),
        "{}",
        flash(&app)
    );
    ch(&mut app, 'a');
    assert!(
        app.overlay.is_none(),
        "no assign picker on a file that is gone"
    );
}

#[test]
fn esc_cancels_the_picker_and_the_dialog() {
    let mut app = on_items(false, 5);
    ch(&mut app, 'a');
    assert!(press(&mut app, KeyCode::Esc).is_empty());
    assert!(app.overlay.is_none());
    ch(&mut app, 'a');
    press(&mut app, KeyCode::Enter);
    assert!(matches!(app.overlay, Some(Overlay::Confirm { .. })));
    press(&mut app, KeyCode::Tab);
    assert!(press(&mut app, KeyCode::Esc).is_empty());
    assert!(app.overlay.is_none());
}

#[test]
fn enter_in_a_picker_that_matches_nothing_keeps_it_open() {
    let mut app = on_items(false, 5);
    ch(&mut app, 'a');
    type_str(&mut app, "nowhere");
    assert!(picker_matches(&app).is_empty());
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(matches!(app.overlay, Some(Overlay::Picker { .. })));
}

#[test]
fn assign_from_an_item_view_uses_that_items_version() {
    let mut app = on_items(false, 5);
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Item(Box::new(item_detail())));
    ch(&mut app, 'a');
    type_str(&mut app, "annotate");
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Tab);
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        fx,
        vec![Effect::Run(Pending::Assign {
            workflow: wf(),
            to: StageId::new("annotate"),
            target: AssignWhat::Items(vec![(ItemId::new("item-001"), 12)]),
        })]
    );
}

#[test]
fn assign_before_the_stage_list_is_known_loads_it_first() {
    // `:items` straight from the workflows view: the stages were never loaded.
    let mut app = on_workflows(false);
    ch(&mut app, ':');
    type_str(&mut app, "items");
    press(&mut app, KeyCode::Enter);
    load(
        &mut app,
        ViewData::Items {
            rows: items(3),
            more: false,
        },
    );
    let fx = ch(&mut app, 'a');
    assert_eq!(loads(&fx), vec![(ViewKind::Stages(wf()), String::new())]);
    assert!(
        app.overlay.is_none(),
        "no picker before the stages are known"
    );
    let Effect::Load { view, .. } = fx[0].clone() else {
        unreachable!()
    };
    update(
        &mut app,
        Msg::Loaded {
            view,
            data: ViewData::Stages(Box::new(stages())),
            append: false,
        },
    );
    assert!(
        matches!(app.view().unwrap().data, ViewData::Items { .. }),
        "the items stay on screen"
    );
    // The picker opens by itself once the stage list arrives.
    assert_eq!(picker_matches(&app).len(), 6);
}

#[test]
fn bulk_assign_from_the_stages_view_counts_then_needs_the_exact_count_typed() {
    let mut app = on_stages(false);
    let fx = ch(&mut app, 'a');
    assert_eq!(
        fx,
        vec![Effect::CountStage {
            workflow: wf(),
            from: StageId::new("dataset")
        }]
    );
    assert!(app.overlay.is_none());
    update(
        &mut app,
        Msg::StageCount {
            workflow: wf(),
            from: StageId::new("dataset"),
            count: 40,
        },
    );
    assert!(matches!(&app.overlay, Some(Overlay::Picker { title, .. }) if title.contains("40")));
    type_str(&mut app, "validate");
    press(&mut app, KeyCode::Enter);
    let Some(Overlay::Typed { text, expected, .. }) = &app.overlay else {
        panic!("no typed confirmation: {:?}", app.overlay)
    };
    assert_eq!(expected, "40");
    assert!(
        text.contains("all 40 items of stage dataset to stage validate"),
        "{text}"
    );
    // Letters are ignored; a wrong number is refused and the dialog stays.
    type_str(&mut app, "4x");
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(matches!(&app.overlay, Some(Overlay::Typed { typed, .. }) if typed == "4"));
    assert!(flash(&app).contains("type 40"), "{}", flash(&app));
    type_str(&mut app, "00");
    assert!(press(&mut app, KeyCode::Enter).is_empty(), "400 is not 40");
    press(&mut app, KeyCode::Backspace);
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        fx,
        vec![Effect::Run(Pending::Assign {
            workflow: wf(),
            to: StageId::new("validate"),
            target: AssignWhat::Stage {
                from: StageId::new("dataset"),
                count: 40
            },
        })]
    );
    assert!(app.overlay.is_none());
}

/// A fast typist's `a`, the stage's name and Enter in the stages view: the name is typed
/// before the stage's count (which opens the picker) arrives. The keys wait for the picker
/// instead of running as view keys (`l` toggling the log pane, `d` opening deliveries).
#[test]
fn keys_typed_before_the_bulk_assign_picker_opens_go_into_it() {
    let mut app = on_stages(false);
    let fx = ch(&mut app, 'a');
    assert_eq!(fx.len(), 1, "{fx:?}");
    let log_before = app.log.visible;
    let depth = app.stack.len();
    type_str(&mut app, "valid");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.stack.len(), depth, "a typed letter opened a view");
    assert_eq!(app.log.visible, log_before, "`l` toggled the log pane");
    update(
        &mut app,
        Msg::StageCount {
            workflow: wf(),
            from: StageId::new("dataset"),
            count: 40,
        },
    );
    let Some(Overlay::Typed { text, expected, .. }) = &app.overlay else {
        panic!("the waiting keys did not pick a stage: {:?}", app.overlay)
    };
    assert_eq!(expected, "40");
    assert!(
        text.contains("all 40 items of stage dataset to stage validate"),
        "{text}"
    );
}

#[test]
fn bulk_assign_of_an_empty_stage_says_so_and_esc_cancels_a_typed_confirmation() {
    let mut app = on_stages(false);
    update(
        &mut app,
        Msg::StageCount {
            workflow: wf(),
            from: StageId::new("review"),
            count: 0,
        },
    );
    assert!(app.overlay.is_none());
    assert!(flash(&app).contains("holds no items"));
    update(
        &mut app,
        Msg::StageCount {
            workflow: wf(),
            from: StageId::new("dataset"),
            count: 3,
        },
    );
    press(&mut app, KeyCode::Enter);
    type_str(&mut app, "3");
    assert!(press(&mut app, KeyCode::Esc).is_empty());
    assert!(app.overlay.is_none());
    assert_eq!(flash(&app), "cancelled");
}

#[test]
fn advance_approve_and_reject_confirm_with_the_item_versions() {
    use crate::engine::Outcome;
    for (c, outcome, verb) in [
        ('v', None, "Advance"),
        ('o', Some(Outcome::Approve), "Approve"),
        ('x', Some(Outcome::Reject), "Reject"),
    ] {
        let mut app = on_items(false, 4);
        ch(&mut app, ' ');
        ch(&mut app, ' ');
        assert!(ch(&mut app, c).is_empty());
        assert!(
            matches!(&app.overlay, Some(Overlay::Confirm { text, focus: 0, .. }) if text.starts_with(&format!("{verb} 2 items"))),
            "{:?}",
            app.overlay
        );
        press(&mut app, KeyCode::Tab);
        let fx = press(&mut app, KeyCode::Enter);
        assert_eq!(
            fx,
            vec![Effect::Run(Pending::Advance {
                ids: vec![(ItemId::new("item-001"), 11), (ItemId::new("item-002"), 12)],
                outcome,
            })]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Re-fire, replay, test, pause
// ---------------------------------------------------------------------------------------------

#[test]
fn r_and_shift_r_in_deliveries_confirm_then_refire_or_replay() {
    let mut app = on_deliveries(false);
    assert!(ch(&mut app, 'r').is_empty());
    let Some(Overlay::Confirm {
        text,
        focus: 0,
        action,
    }) = &app.overlay
    else {
        panic!("{:?}", app.overlay)
    };
    assert!(text.contains("Re-fire delivery msg_0001"), "{text}");
    assert_eq!(*action, Pending::Refire(vec![DeliveryId::new("msg_0001")]));
    assert!(
        press(&mut app, KeyCode::Enter).is_empty(),
        "Cancel has the focus"
    );

    ch(&mut app, ' ');
    ch(&mut app, 'j');
    ch(&mut app, 'j');
    ch(&mut app, ' ');
    ch(&mut app, 'R');
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm { text, .. }) if text.starts_with("Replay 2 deliveries"))
    );
    press(&mut app, KeyCode::Right);
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        fx,
        vec![Effect::Run(Pending::Replay(vec![
            DeliveryId::new("msg_0001"),
            DeliveryId::new("msg_0004")
        ]))]
    );
    answered(&mut app);
    // The selection was for the action it confirmed.
    assert!(app.view().unwrap().selected.is_empty());

    ch(&mut app, ' ');
    ch(&mut app, 'k');
    ch(&mut app, 'k');
    ch(&mut app, ' ');
    ch(&mut app, 'r');
    press(&mut app, KeyCode::BackTab);
    let fx = press(&mut app, KeyCode::Enter);
    let [Effect::Run(Pending::Refire(ids))] = &fx[..] else {
        panic!("{fx:?}")
    };
    assert_eq!(ids.len(), 2, "{ids:?}");
}

#[test]
fn r_in_the_delivery_and_item_views_takes_that_delivery() {
    let mut app = on_deliveries(false);
    ch(&mut app, 'j');
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Delivery(Box::new(delivery_detail())));
    ch(&mut app, 'R');
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm { action: Pending::Replay(ids), .. }) if ids == &vec![DeliveryId::new("msg_0001")])
    );
    press(&mut app, KeyCode::Esc);

    let mut app = on_items(false, 3);
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Item(Box::new(item_detail())));
    ch(&mut app, 'j');
    ch(&mut app, 'r');
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm { action: Pending::Refire(ids), .. }) if ids == &vec![DeliveryId::new("msg_0008")])
    );
}

/// Issue 18: `/` on the deliveries view asks the store again with the text (matched in SQL
/// over the whole store, not in the loaded page), and `F`, `C` and export act on that same
/// filter; `:dl` takes the whole filter as words.
#[test]
fn slash_on_deliveries_filters_in_sql_and_the_bulk_keys_act_on_it() {
    let mut app = on_deliveries(false);
    ch(&mut app, '/');
    let fx = type_str(&mut app, "weld");
    let got = loads(&fx);
    assert_eq!(got.len(), 1, "{fx:?}");
    assert!(matches!(&got[0].0, ViewKind::Deliveries(_)));
    assert_eq!(got[0].1, "weld");
    press(&mut app, KeyCode::Enter);
    load(&mut app, deliveries_data());
    let searched = DeliveryFilter {
        workflow: Some(wf()),
        state: Some(DeliveryState::Failed),
        search: Some("weld".into()),
        ..Default::default()
    };
    assert_eq!(
        ch(&mut app, 'F'),
        vec![Effect::Count {
            action: BulkAction::Refire,
            filter: searched.clone()
        }]
    );
    assert_eq!(
        ch(&mut app, 'C'),
        vec![Effect::Count {
            action: BulkAction::Cancel,
            filter: searched
        }]
    );

    let fx = command(
        &mut app,
        "dl failed 5xx 408 timeout stage=export since=2026-12-07T02:10:00Z until=2026-12-07T02:40:00Z",
    );
    let got = loads(&fx);
    let Some((ViewKind::Deliveries(f), _)) = got.first() else {
        panic!("{fx:?}")
    };
    assert_eq!(f.statuses, [StatusMatch::Class(5), StatusMatch::Code(408)]);
    assert_eq!(f.error_kinds, [ErrorKind::Timeout]);
    assert_eq!(f.stage, Some(StageId::new("export")));
    load(&mut app, deliveries_data());
    assert_eq!(
        f.workflow,
        Some(wf()),
        "the current workflow unless one is named"
    );
    assert_eq!(
        f.until.map(|t| t.to_rfc3339()),
        Some("2026-12-07T02:40:00+00:00".into())
    );
    assert!(command(&mut app, "dl until=yesterday").is_empty());
    assert!(flash(&app).contains("until"), "{}", flash(&app));
}

/// Issue 18: `:failures` lists the causes; Enter opens a group's deliveries (a group is a
/// filter) and `r` re-fires the group under the cursor through the typed count.
#[test]
fn failures_by_cause_open_as_a_filter_and_r_refires_a_group() {
    let mut app = on_failures(false);
    assert!(matches!(
        app.view().map(|v| &v.kind),
        Some(ViewKind::Failures(f)) if f.workflow == Some(wf())
    ));
    ch(&mut app, 'j');
    let timeouts = DeliveryFilter {
        workflow: Some(wf()),
        stage: Some(StageId::new("export")),
        state: Some(DeliveryState::Failed),
        error_kinds: vec![ErrorKind::Timeout],
        message_class: Some("timed out after #s".into()),
        ..Default::default()
    };
    assert_eq!(
        ch(&mut app, 'r'),
        vec![Effect::Count {
            action: BulkAction::Refire,
            filter: timeouts.clone()
        }]
    );
    update(
        &mut app,
        Msg::Counted {
            action: BulkAction::Refire,
            filter: timeouts.clone(),
            count: 550,
        },
    );
    let Some(Overlay::Typed { text, expected, .. }) = &app.overlay else {
        panic!("{:?}", app.overlay)
    };
    assert_eq!(expected, "550");
    assert!(text.contains("error kind timeout"), "{text}");
    press(&mut app, KeyCode::Esc);
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        loads(&fx),
        vec![(ViewKind::Deliveries(timeouts), String::new())]
    );
}

/// `r`, `R` and `c` on a failure group act on the whole group through the typed count, as
/// `F` does: re-fire and replay its failed deliveries, cancel the open ones that failed the
/// same way (the retries still to come).
#[test]
fn r_shift_r_and_c_act_on_the_whole_group_under_the_cursor() {
    let mut app = on_failures(false);
    ch(&mut app, 'j');
    let group = DeliveryFilter {
        workflow: Some(wf()),
        stage: Some(StageId::new("export")),
        state: Some(DeliveryState::Failed),
        error_kinds: vec![ErrorKind::Timeout],
        message_class: Some("timed out after #s".into()),
        ..Default::default()
    };
    let count = |action, filter: &DeliveryFilter| {
        vec![Effect::Count {
            action,
            filter: filter.clone(),
        }]
    };
    assert_eq!(ch(&mut app, 'r'), count(BulkAction::Refire, &group));
    assert_eq!(ch(&mut app, 'R'), count(BulkAction::Replay, &group));
    let retries = DeliveryFilter {
        state: None,
        ..group.clone()
    };
    assert_eq!(ch(&mut app, 'c'), count(BulkAction::Cancel, &retries));
    for (action, filter, words) in [
        (BulkAction::Replay, &group, "Replay 550 failed deliveries"),
        (BulkAction::Cancel, &retries, "Cancel 550 open deliveries"),
    ] {
        update(
            &mut app,
            Msg::Counted {
                action,
                filter: filter.clone(),
                count: 550,
            },
        );
        let Some(Overlay::Typed { text, expected, .. }) = &app.overlay else {
            panic!("{:?}", app.overlay)
        };
        assert_eq!(expected, "550");
        assert!(text.starts_with(words), "{text}");
        type_str(&mut app, "550");
        assert_eq!(
            press(&mut app, KeyCode::Enter),
            vec![Effect::Run(Pending::Filtered {
                action,
                filter: filter.clone(),
                count: 550
            })]
        );
        // The executor's answer (a second action waits for it).
        update(
            &mut app,
            Msg::ActionDone {
                text: format!("{} 550 delivery(ies)", action.past()),
                level: Level::Info,
                refused: vec![],
            },
        );
    }
    // Nothing in it: said, and no dialog.
    update(
        &mut app,
        Msg::Counted {
            action: BulkAction::Cancel,
            filter: retries,
            count: 0,
        },
    );
    assert!(app.overlay.is_none());
    // Read-only: the keys are not there.
    let mut app = on_failures(true);
    for c in ['r', 'R', 'c', 'F'] {
        assert!(ch(&mut app, c).is_empty(), "{c}");
    }
}

#[test]
fn shift_f_counts_then_asks_for_the_count_typed() {
    let mut app = on_deliveries(false);
    let filter = DeliveryFilter {
        workflow: Some(wf()),
        state: Some(DeliveryState::Failed),
        ..Default::default()
    };
    let fx = ch(&mut app, 'F');
    assert_eq!(
        fx,
        vec![Effect::Count {
            action: BulkAction::Refire,
            filter: filter.clone()
        }]
    );
    update(
        &mut app,
        Msg::Counted {
            action: BulkAction::Refire,
            filter: filter.clone(),
            count: 0,
        },
    );
    assert!(app.overlay.is_none());
    assert!(flash(&app).contains("nothing to re-fire"));

    update(
        &mut app,
        Msg::Counted {
            action: BulkAction::Refire,
            filter: filter.clone(),
            count: 123,
        },
    );
    let Some(Overlay::Typed { text, expected, .. }) = &app.overlay else {
        panic!("{:?}", app.overlay)
    };
    assert_eq!(expected, "123");
    assert!(
        text.contains("Re-fire 123 failed deliveries (workflow defects)"),
        "{text}"
    );
    type_str(&mut app, "12");
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    ch(&mut app, '3');
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        fx,
        vec![Effect::Run(Pending::Filtered {
            action: BulkAction::Refire,
            filter,
            count: 123
        })]
    );

    // From the stages view: the stage under the cursor.
    let mut app = on_stages(false);
    ch(&mut app, 'j');
    let fx = ch(&mut app, 'F');
    let filter = DeliveryFilter {
        workflow: Some(wf()),
        stage: Some(StageId::new("validate")),
        ..Default::default()
    };
    assert_eq!(
        fx,
        vec![Effect::Count {
            action: BulkAction::Refire,
            filter
        }]
    );
}

#[test]
fn c_cancels_with_a_confirmation_and_shift_c_counts_then_asks_for_the_count() {
    let mut app = on_deliveries(false);
    ch(&mut app, 'j');
    ch(&mut app, 'j');
    assert!(ch(&mut app, 'c').is_empty());
    let Some(Overlay::Confirm {
        text,
        focus: 0,
        action,
    }) = &app.overlay
    else {
        panic!("{:?}", app.overlay)
    };
    assert!(text.contains("Cancel delivery msg_0003"), "{text}");
    assert_eq!(*action, Pending::Cancel(vec![DeliveryId::new("msg_0003")]));
    assert!(
        press(&mut app, KeyCode::Enter).is_empty(),
        "Cancel has the focus"
    );
    ch(&mut app, 'c');
    press(&mut app, KeyCode::Tab);
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        vec![Effect::Run(Pending::Cancel(vec![DeliveryId::new(
            "msg_0003"
        )]))]
    );
    answered(&mut app);

    let filter = DeliveryFilter {
        workflow: Some(wf()),
        state: Some(DeliveryState::Failed),
        ..Default::default()
    };
    assert_eq!(
        ch(&mut app, 'C'),
        vec![Effect::Count {
            action: BulkAction::Cancel,
            filter: filter.clone()
        }]
    );
    update(
        &mut app,
        Msg::Counted {
            action: BulkAction::Cancel,
            filter: filter.clone(),
            count: 0,
        },
    );
    assert!(app.overlay.is_none());
    assert!(flash(&app).contains("nothing to cancel"), "{}", flash(&app));
    update(
        &mut app,
        Msg::Counted {
            action: BulkAction::Cancel,
            filter: filter.clone(),
            count: 7,
        },
    );
    assert!(matches!(&app.overlay, Some(Overlay::Typed { expected, .. }) if expected == "7"));
    assert!(
        press(&mut app, KeyCode::Enter).is_empty(),
        "nothing typed yet"
    );
    ch(&mut app, '7');
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        vec![Effect::Run(Pending::Filtered {
            action: BulkAction::Cancel,
            filter,
            count: 7
        })]
    );
}

#[test]
fn e_exports_the_deliveries_view_with_its_filter() {
    let mut app = on_deliveries(false);
    let filter = DeliveryFilter {
        workflow: Some(wf()),
        state: Some(DeliveryState::Failed),
        ..Default::default()
    };
    assert_eq!(ch(&mut app, 'e'), vec![Effect::Export(filter)]);
    assert!(flash(&app).contains("exporting"));
}

#[test]
fn colon_health_opens_the_health_report() {
    let mut app = on_stages(false);
    let fx = command(&mut app, "health");
    assert_eq!(loads(&fx), vec![(ViewKind::Health, String::new())]);
    load(&mut app, ViewData::Health(Box::new(health())));
    assert_eq!(app.view().unwrap().len(), 5);
    ch(&mut app, 'G');
    assert_eq!(cursor(&app), 4);
}

fn to_stage(app: &mut App, id: &str) {
    let ViewData::Stages(d) = &app.view().unwrap().data else {
        panic!("not on stages")
    };
    let i = d
        .stage_list
        .iter()
        .position(|s| s.id.as_str() == id)
        .unwrap();
    ch(app, 'g');
    for _ in 0..i {
        ch(app, 'j');
    }
}

#[test]
fn t_tests_webhook_stages_only() {
    let mut app = on_stages(false);
    to_stage(&mut app, "validate");
    let fx = ch(&mut app, 't');
    assert_eq!(
        fx,
        vec![Effect::Test {
            workflow: wf(),
            stage: StageId::new("validate")
        }]
    );
    assert!(flash(&app).contains("testing validate"));
    update(
        &mut app,
        Msg::TestResult {
            title: "test defects/validate".into(),
            text: "200 OK in 3 ms".into(),
        },
    );
    assert!(matches!(&app.overlay, Some(Overlay::Popup { text, .. }) if text.contains("200 OK")));
    press(&mut app, KeyCode::Esc);
    assert!(app.overlay.is_none());

    to_stage(&mut app, "annotate");
    assert!(ch(&mut app, 't').is_empty());
    assert!(
        flash(&app).contains("only webhook stages can be tested"),
        "{}",
        flash(&app)
    );
}

#[test]
fn p_pauses_with_a_confirmation_and_resumes_at_once() {
    let mut app = on_stages(false);
    to_stage(&mut app, "validate");
    assert!(ch(&mut app, 'p').is_empty());
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm { text, focus: 0, .. }) if text.starts_with("Pause stage validate"))
    );
    press(&mut app, KeyCode::Tab);
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        vec![Effect::Run(Pending::Pause {
            workflow: wf(),
            stage: StageId::new("validate"),
            pause: true
        })]
    );
    answered(&mut app);

    to_stage(&mut app, "export"); // paused
    assert_eq!(
        ch(&mut app, 'p'),
        vec![Effect::Run(Pending::Pause {
            workflow: wf(),
            stage: StageId::new("export"),
            pause: false
        })]
    );

    to_stage(&mut app, "dataset");
    assert!(ch(&mut app, 'p').is_empty());
    assert!(app.overlay.is_none());
    assert!(
        flash(&app).contains("only webhook stages can be paused"),
        "{}",
        flash(&app)
    );
}

#[test]
fn a_result_is_flashed_and_reloads_the_view() {
    let mut app = on_stages(false);
    let fx = update(
        &mut app,
        Msg::Done {
            text: "assigned 2 item(s) to validate".into(),
            level: Level::Info,
        },
    );
    assert_eq!(loads(&fx), vec![(ViewKind::Stages(wf()), String::new())]);
    assert_eq!(flash(&app), "assigned 2 item(s) to validate");
}

#[test]
fn a_change_in_the_database_reloads_what_is_on_screen() {
    let mut app = on_stages(false);
    assert_eq!(
        loads(&update(&mut app, Msg::Changed)),
        vec![(ViewKind::Stages(wf()), String::new())]
    );
    let mut app = on_items(false, 3);
    assert_eq!(
        loads(&update(&mut app, Msg::Changed)),
        vec![(items_kind(), String::new())]
    );
}

// ---------------------------------------------------------------------------------------------
// Command line, help, quit
// ---------------------------------------------------------------------------------------------

fn command(app: &mut App, cmd: &str) -> Vec<Effect> {
    ch(app, ':');
    type_str(app, cmd);
    press(app, KeyCode::Enter)
}

/// The view's first load arrives (empty: what it holds does not matter to the test), so the
/// next keys need not wait for it.
fn arrived(app: &mut App) {
    load(app, ViewData::Workflows(vec![]));
}

#[test]
fn colon_commands_jump_to_views() {
    let mut app = on_stages(false);
    arrived(&mut app);
    let fx = command(&mut app, "deliveries failed");
    let filter = DeliveryFilter {
        workflow: Some(wf()),
        state: Some(DeliveryState::Failed),
        ..Default::default()
    };
    assert_eq!(
        loads(&fx),
        vec![(ViewKind::Deliveries(filter), String::new())]
    );
    assert_eq!(
        app.stack.len(),
        2,
        "a command replaces the stack above the first view"
    );
    assert!(app.overlay.is_none());

    arrived(&mut app);

    let fx = command(&mut app, "items");
    assert_eq!(
        loads(&fx),
        vec![(
            ViewKind::Items {
                workflow: Some(wf()),
                stage: None
            },
            String::new()
        )]
    );
    arrived(&mut app);
    let fx = command(&mut app, "items validate");
    let validate = ViewKind::Items {
        workflow: Some(wf()),
        stage: Some(StageId::new("validate")),
    };
    assert_eq!(loads(&fx), vec![(validate, String::new())]);
    arrived(&mut app);
    let fx = command(&mut app, "stages");
    assert_eq!(loads(&fx), vec![(ViewKind::Stages(wf()), String::new())]);
    arrived(&mut app);
    let fx = command(&mut app, "audit");
    assert_eq!(loads(&fx), vec![(ViewKind::Audit, String::new())]);
    arrived(&mut app);
    let fx = command(&mut app, "workflows");
    assert_eq!(loads(&fx), vec![(ViewKind::Workflows, String::new())]);
    assert_eq!(app.stack.len(), 1);
    arrived(&mut app);
    let fx = command(&mut app, "stages");
    assert!(fx.is_empty());
    assert!(flash(&app).contains(":stages ID"));
    arrived(&mut app);
    let fx = command(&mut app, "stages intake");
    assert_eq!(
        loads(&fx),
        vec![(ViewKind::Stages(WorkflowId::new("intake")), String::new())]
    );
    assert!(command(&mut app, "").is_empty());
}

#[test]
fn colon_unknown_command_and_bad_state_flash_an_error() {
    let mut app = on_workflows(false);
    assert!(command(&mut app, "frobnicate").is_empty());
    let f = app.flash.clone().unwrap();
    assert_eq!(f.level, Level::Error);
    assert!(
        f.text.contains("unknown command `frobnicate`"),
        "{}",
        f.text
    );
    assert_eq!(app.stack.len(), 1);
    assert!(command(&mut app, "deliveries broken").is_empty());
    assert!(
        flash(&app).contains("unknown delivery state `broken`"),
        "{}",
        flash(&app)
    );
}

#[test]
fn colon_line_edits_and_esc_abandons_it() {
    let mut app = on_workflows(false);
    ch(&mut app, ':');
    type_str(&mut app, "auditx");
    press(&mut app, KeyCode::Backspace);
    assert!(matches!(&app.overlay, Some(Overlay::Command(s)) if s == "audit"));
    assert!(press(&mut app, KeyCode::Esc).is_empty());
    assert!(app.overlay.is_none());
    assert_eq!(app.stack.len(), 1);
}

#[test]
fn colon_q_and_q_quit() {
    let mut app = on_workflows(false);
    command(&mut app, "q");
    assert!(app.quit);
    let mut app = on_stages(false);
    ch(&mut app, 'q');
    assert!(app.quit);
    let mut app = on_stages(false);
    update(
        &mut app,
        Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
    );
    assert!(app.quit);
}

#[test]
fn ctrl_c_quits_even_from_dialogs_and_help() {
    let ctrl_c = || Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    let mut app = on_items(false, 3);
    ch(&mut app, 'v');
    update(&mut app, ctrl_c());
    assert!(app.quit);
    let mut app = on_items(false, 3);
    ch(&mut app, '?');
    update(&mut app, ctrl_c());
    assert!(app.quit);
    // And from the text prompts, where `q` is a letter.
    for prompt in ['/', ':'] {
        let mut app = on_items(false, 3);
        ch(&mut app, prompt);
        ch(&mut app, 'q');
        assert!(!app.quit);
        update(&mut app, ctrl_c());
        assert!(app.quit, "Ctrl-C in `{prompt}`");
    }
}

#[test]
fn question_mark_opens_help_and_any_key_closes_it() {
    let mut app = on_items(false, 3);
    assert!(ch(&mut app, '?').is_empty());
    assert!(matches!(app.overlay, Some(Overlay::Help { .. })));
    // Keys do nothing else while help is open: j/k scroll it, others close it.
    assert!(ch(&mut app, 'j').is_empty());
    assert!(matches!(app.overlay, Some(Overlay::Help { .. })));
    assert!(ch(&mut app, 'x').is_empty());
    assert!(app.overlay.is_none());
    assert_eq!(cursor(&app), 0);
    ch(&mut app, '?');
    ch(&mut app, 'q');
    assert!(!app.quit, "q closes help, it does not quit");
}

// ---------------------------------------------------------------------------------------------
// The log pane
// ---------------------------------------------------------------------------------------------

#[test]
fn l_toggles_the_log_pane_and_hiding_it_drops_its_focus() {
    let mut app = on_workflows(false);
    ch(&mut app, 'l');
    assert!(!app.log.visible);
    press(&mut app, KeyCode::Tab);
    assert!(!app.focus_log, "a hidden pane cannot take the focus");
    ch(&mut app, 'l');
    assert!(app.log.visible);
    press(&mut app, KeyCode::Tab);
    assert!(app.focus_log);
    ch(&mut app, 'l');
    assert!(!app.log.visible && !app.focus_log);
}

#[test]
fn attempts_stream_into_the_log_pane_and_count_toward_the_rate() {
    let mut app = on_workflows(false);
    with_attempts(&mut app);
    assert_eq!(app.log.entries.len(), 5);
    assert_eq!(app.log.cursor, 4, "follow mode sticks to the newest");
    assert_eq!(*app.rate.back().unwrap(), 5);
    // Failures (no 2xx answer) have their own rate, beside it.
    assert_eq!(*app.fail_rate.back().unwrap(), 3);
    update(&mut app, Msg::Tick);
    assert_eq!(*app.rate.back().unwrap(), 0);
    assert_eq!(app.rate[app.rate.len() - 2], 5);
    assert_eq!(app.fail_rate[app.fail_rate.len() - 2], 3);
}

#[test]
fn log_pane_drops_duplicate_attempts() {
    let mut app = on_workflows(false);
    with_attempts(&mut app);
    // The same (delivery, number) from the table poll after the channel delivered it.
    update(
        &mut app,
        Msg::Attempt(Box::new(attempt(1, 2, Some(500), DeliveryState::Failed))),
    );
    update(
        &mut app,
        Msg::Attempt(Box::new(attempt(2, 1, Some(200), DeliveryState::Succeeded))),
    );
    assert_eq!(app.log.entries.len(), 5);
    assert_eq!(*app.rate.back().unwrap(), 5, "duplicates are not counted");
    update(
        &mut app,
        Msg::Attempt(Box::new(attempt(2, 2, Some(200), DeliveryState::Succeeded))),
    );
    assert_eq!(app.log.entries.len(), 6);
}

#[test]
fn log_pane_keeps_at_most_log_capacity_attempts() {
    let mut app = on_workflows(false);
    for i in 0..LOG_CAPACITY + 50 {
        update(
            &mut app,
            Msg::Attempt(Box::new(attempt(i, 1, Some(200), DeliveryState::Succeeded))),
        );
    }
    assert_eq!(app.log.entries.len(), LOG_CAPACITY);
    assert_eq!(
        app.log
            .entries
            .front()
            .unwrap()
            .attempt()
            .unwrap()
            .delivery_id
            .as_str(),
        "msg_0050",
        "the oldest go"
    );
    assert_eq!(app.log.cursor, LOG_CAPACITY - 1);
    assert!(app.log.seen.len() <= LOG_CAPACITY * 2);
}

#[test]
fn tab_focuses_the_log_pane_where_keys_move_its_cursor() {
    let mut app = on_stages(false);
    with_attempts(&mut app);
    press(&mut app, KeyCode::Tab);
    assert!(app.focus_log);
    let stage_cursor = cursor(&app);
    ch(&mut app, 'k');
    assert_eq!(app.log.cursor, 3);
    assert!(!app.log.follow, "moving up leaves follow mode");
    ch(&mut app, 'g');
    assert_eq!(app.log.cursor, 0);
    ch(&mut app, 'j');
    assert_eq!(app.log.cursor, 1);
    assert_eq!(
        cursor(&app),
        stage_cursor,
        "the main view's cursor does not move"
    );
    // New attempts do not move a cursor that is not following.
    update(
        &mut app,
        Msg::Attempt(Box::new(attempt(9, 1, Some(200), DeliveryState::Succeeded))),
    );
    assert_eq!(app.log.cursor, 1);
    ch(&mut app, 'f');
    assert!(app.log.follow);
    assert_eq!(app.log.cursor, 5);
    press(&mut app, KeyCode::PageUp);
    assert_eq!(app.log.cursor, 0);
    press(&mut app, KeyCode::PageDown);
    assert_eq!(app.log.cursor, 5);
    ch(&mut app, 'g');
    ch(&mut app, 'G');
    assert!(app.log.follow);
    // Tab gives the focus back.
    press(&mut app, KeyCode::Tab);
    assert!(!app.focus_log);
}

#[test]
fn in_the_log_pane_main_view_actions_are_not_bound() {
    let mut app = on_stages(false);
    with_attempts(&mut app);
    press(&mut app, KeyCode::Tab);
    assert!(ch(&mut app, 'a').is_empty());
    assert!(ch(&mut app, 't').is_empty());
    assert!(app.overlay.is_none());
}

#[test]
fn shift_p_pauses_the_stream_and_holds_new_attempts_until_resumed() {
    let mut app = on_workflows(false);
    with_attempts(&mut app);
    press(&mut app, KeyCode::Tab);
    ch(&mut app, 'P');
    assert!(app.log.paused);
    assert!(flash(&app).contains("paused"));
    update(
        &mut app,
        Msg::Attempt(Box::new(attempt(7, 1, Some(200), DeliveryState::Succeeded))),
    );
    update(
        &mut app,
        Msg::Attempt(Box::new(attempt(8, 1, Some(500), DeliveryState::Failed))),
    );
    assert_eq!(app.log.entries.len(), 5, "held, not shown");
    assert_eq!(app.log.held.len(), 2);
    ch(&mut app, 'P');
    assert!(!app.log.paused);
    assert_eq!(app.log.entries.len(), 7);
    assert!(app.log.held.is_empty());
    assert!(
        flash(&app).contains("2 attempts were held"),
        "{}",
        flash(&app)
    );
    assert_eq!(
        app.log
            .entries
            .back()
            .unwrap()
            .attempt()
            .unwrap()
            .delivery_id
            .as_str(),
        "msg_0008"
    );
}

#[test]
fn a_paused_stream_holds_at_most_log_capacity_and_resumes_at_the_newest() {
    let mut app = on_workflows(false);
    with_attempts(&mut app);
    press(&mut app, KeyCode::Tab);
    ch(&mut app, 'P');
    for i in 10..LOG_CAPACITY * 3 + 110 {
        update(
            &mut app,
            Msg::Attempt(Box::new(attempt(i, 1, Some(200), DeliveryState::Succeeded))),
        );
    }
    assert!(
        app.log.held.len() <= LOG_CAPACITY * 2,
        "held grows without bound: {}",
        app.log.held.len()
    );
    ch(&mut app, 'P');
    assert_eq!(app.log.entries.len(), LOG_CAPACITY);
    assert!(app.log.follow);
    assert_eq!(
        app.log.cursor,
        LOG_CAPACITY - 1,
        "follow mode shows the newest after resuming"
    );
    let newest = format!("msg_{:04}", LOG_CAPACITY * 3 + 109);
    assert_eq!(
        app.log
            .entries
            .back()
            .unwrap()
            .attempt()
            .unwrap()
            .delivery_id
            .as_str(),
        newest
    );
}

#[test]
fn log_pane_enter_opens_the_delivery_and_r_refires_it() {
    let mut app = on_workflows(false);
    with_attempts(&mut app);
    press(&mut app, KeyCode::Tab);
    ch(&mut app, 'k'); // attempt 2 of msg_0001
    ch(&mut app, 'k'); // msg_0003
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        loads(&fx),
        vec![(
            ViewKind::Delivery(DeliveryId::new("msg_0003")),
            String::new()
        )]
    );
    assert!(!app.focus_log, "the opened view has the focus");
    load(&mut app, ViewData::Delivery(Box::new(delivery_detail())));

    press(&mut app, KeyCode::Tab);
    ch(&mut app, 'r');
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm { action: Pending::Refire(ids), .. }) if ids[0].as_str() == "msg_0003")
    );
    press(&mut app, KeyCode::Esc);
    ch(&mut app, 'R');
    assert!(
        matches!(&app.overlay, Some(Overlay::Confirm { action: Pending::Replay(ids), .. }) if ids[0].as_str() == "msg_0003")
    );
    press(&mut app, KeyCode::Esc);
    assert_eq!(ch(&mut app, 'y'), vec![Effect::Copy("msg_0003".into())]);
}

#[test]
fn log_pane_filter_narrows_the_pane_not_the_view() {
    let mut app = on_stages(false);
    with_attempts(&mut app);
    press(&mut app, KeyCode::Tab);
    ch(&mut app, '/');
    type_str(&mut app, "timeout");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.log.filter, "timeout");
    assert_eq!(app.log.visible_indices(), vec![2]);
    assert_eq!(app.view().unwrap().filter, "");
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(
        loads(&fx),
        vec![(
            ViewKind::Delivery(DeliveryId::new("msg_0003")),
            String::new()
        )]
    );
}

#[test]
fn keys_in_an_empty_log_pane_do_nothing() {
    let mut app = on_workflows(false);
    press(&mut app, KeyCode::Tab);
    for c in ['j', 'k', 'g', 'G', 'f', 'r', 'R', 'y'] {
        assert!(ch(&mut app, c).is_empty(), "{c}");
    }
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert!(app.overlay.is_none());
}

// ---------------------------------------------------------------------------------------------
// Read-only, key kinds, ticks
// ---------------------------------------------------------------------------------------------

#[test]
fn read_only_refuses_every_dangerous_key_with_a_flash_and_no_effect() {
    type Make = fn() -> App;
    let apps: Vec<(&str, Make)> = vec![
        ("stages", || on_stages(true)),
        ("items", || on_items(true, 4)),
        ("deliveries", || on_deliveries(true)),
        ("item", || {
            let mut app = on_items(true, 4);
            press(&mut app, KeyCode::Enter);
            load(&mut app, ViewData::Item(Box::new(item_detail())));
            app
        }),
        ("delivery", || {
            let mut app = on_deliveries(true);
            press(&mut app, KeyCode::Enter);
            load(&mut app, ViewData::Delivery(Box::new(delivery_detail())));
            app
        }),
        ("log", || {
            let mut app = on_stages(true);
            with_attempts(&mut app);
            press(&mut app, KeyCode::Tab);
            app
        }),
    ];
    let mut refused = 0;
    for (name, make) in apps {
        for b in BINDINGS.iter().filter(|b| b.dangerous) {
            for k in b.keys {
                let mut app = make();
                let scope = app.scope();
                if keymap::refused_read_only(&key_event(*k), scope, app.focus_log).is_none() {
                    continue; // not bound here at all
                }
                app.flash = None;
                let fx = update(&mut app, Msg::Key(key_event(*k)));
                assert!(fx.is_empty(), "{name}: {:?} gave {fx:?}", b.action);
                assert!(
                    app.overlay.is_none(),
                    "{name}: {:?} opened {:?}",
                    b.action,
                    app.overlay
                );
                assert!(
                    flash(&app).contains("read-only"),
                    "{name}: {:?}: {}",
                    b.action,
                    flash(&app)
                );
                refused += 1;
            }
        }
    }
    // a, v, o, x, r, F, R, t, p: each refused somewhere.
    assert!(refused >= 9, "{refused}");
}

#[test]
fn read_only_still_browses() {
    let mut app = on_stages(true);
    ch(&mut app, 'j');
    assert_eq!(cursor(&app), 1);
    let fx = press(&mut app, KeyCode::Enter);
    assert_eq!(loads(&fx).len(), 1);
    assert!(app.flash.is_none());
}

#[test]
fn key_release_and_repeat_events_are_ignored() {
    let mut app = on_items(false, 5);
    assert!(update(&mut app, Msg::Key(release(KeyCode::Char('j')))).is_empty());
    assert_eq!(cursor(&app), 0);
    update(&mut app, Msg::Key(release(KeyCode::Char('q'))));
    assert!(!app.quit);
    update(&mut app, Msg::Key(release(KeyCode::Char('a'))));
    assert!(app.overlay.is_none());
    let repeat = KeyEvent::new_with_kind(
        KeyCode::Char('j'),
        KeyModifiers::NONE,
        ratatui::crossterm::event::KeyEventKind::Repeat,
    );
    update(&mut app, Msg::Key(repeat));
    assert_eq!(cursor(&app), 0);
    // Releases do not reach dialogs either.
    ch(&mut app, 'a');
    update(&mut app, Msg::Key(release(KeyCode::Enter)));
    assert!(matches!(app.overlay, Some(Overlay::Picker { .. })));
}

#[test]
fn ticks_fade_the_flash() {
    let mut app = on_workflows(false);
    app.flash("hello", Level::Info);
    for _ in 0..4 {
        update(&mut app, Msg::Tick);
    }
    assert!(app.flash.is_some());
    update(&mut app, Msg::Tick);
    assert!(app.flash.is_none(), "info fades after 5 s");
    app.flash("bad", Level::Error);
    for _ in 0..9 {
        update(&mut app, Msg::Tick);
    }
    assert!(app.flash.is_some(), "errors stay longer");
    update(&mut app, Msg::Tick);
    assert!(app.flash.is_none());
}

#[test]
fn every_message_marks_the_state_dirty() {
    let mut app = on_workflows(false);
    app.dirty = false;
    update(&mut app, Msg::Resize);
    assert!(app.dirty);
    app.dirty = false;
    update(&mut app, Msg::Header(Default::default()));
    assert!(app.dirty);
}

// ---------------------------------------------------------------------------------------------
// Every binding
// ---------------------------------------------------------------------------------------------

fn key_event(k: Key) -> KeyEvent {
    match k {
        Key::Char(c) => KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE),
        Key::Ctrl(c) => KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL),
        Key::Enter => ev(KeyCode::Enter),
        Key::Esc => ev(KeyCode::Esc),
        Key::Tab => ev(KeyCode::Tab),
        Key::Up => ev(KeyCode::Up),
        Key::Down => ev(KeyCode::Down),
        Key::PageUp => ev(KeyCode::PageUp),
        Key::PageDown => ev(KeyCode::PageDown),
        Key::Home => ev(KeyCode::Home),
        Key::End => ev(KeyCode::End),
    }
}

/// A loaded console whose current scope is `scope` (the log pane focused for `Log`), with
/// attempts in the log pane.
fn app_in(scope: Scope) -> Vec<App> {
    let mut apps = match scope {
        Scope::Workflows => vec![on_workflows(false)],
        Scope::Stages => vec![on_stages(false)],
        Scope::Items => vec![on_items(false, 5)],
        Scope::Item => vec![{
            let mut app = on_items(false, 5);
            press(&mut app, KeyCode::Enter);
            load(&mut app, ViewData::Item(Box::new(item_detail())));
            app
        }],
        Scope::Deliveries => vec![on_deliveries(false)],
        Scope::Failures => vec![on_failures(false)],
        Scope::Delivery => vec![{
            let mut app = on_deliveries(false);
            press(&mut app, KeyCode::Enter);
            load(&mut app, ViewData::Delivery(Box::new(delivery_detail())));
            app
        }],
        Scope::Log => vec![{
            let mut app = on_stages(false);
            press(&mut app, KeyCode::Tab);
            app
        }],
        Scope::Report => vec![{
            let mut app = on_workflows(false);
            for c in ":audit".chars() {
                press(&mut app, KeyCode::Char(c));
            }
            press(&mut app, KeyCode::Enter);
            load(&mut app, ViewData::Audit(vec![]));
            app
        }],
        Scope::Global | Scope::List => {
            let mut all = vec![];
            for s in [
                Scope::Workflows,
                Scope::Stages,
                Scope::Items,
                Scope::Item,
                Scope::Deliveries,
                Scope::Delivery,
                Scope::Report,
                Scope::Log,
            ] {
                all.extend(app_in(s));
            }
            all
        }
    };
    for app in &mut apps {
        let focus = app.focus_log;
        app.focus_log = false;
        with_attempts(app);
        app.focus_log = focus;
    }
    apps
}

/// What a key can change, in one comparable string.
fn fingerprint(app: &App) -> String {
    let v = app.view().unwrap();
    format!(
        "{} {:?} {} {} {} {} {} {} {} {} {:?} {:?} {}",
        app.stack.len(),
        app.overlay,
        app.quit,
        app.log.visible,
        app.focus_log,
        app.log.follow,
        app.log.paused,
        app.log.cursor,
        v.cursor,
        v.scroll,
        v.selected,
        v.order,
        app.flash.as_ref().map(|f| f.text.as_str()).unwrap_or("")
    )
}

#[test]
fn every_binding_is_handled_in_each_of_its_scopes() {
    for b in BINDINGS {
        let mut hits = 0;
        for scope in b.scopes {
            for k in b.keys {
                for mut app in app_in(*scope) {
                    let here = app.scope();
                    let focus = app.focus_log;
                    let found =
                        keymap::lookup(&key_event(*k), here, focus, false).map(|f| f.action);
                    if found != Some(b.action) {
                        // Global and List rows apply in many views; elsewhere the key must mean
                        // exactly this action.
                        assert!(
                            matches!(scope, Scope::Global | Scope::List),
                            "{} means {found:?}, not {:?}, in {scope:?}",
                            k.label(),
                            b.action
                        );
                        continue;
                    }
                    hits += 1;
                    let before = fingerprint(&app);
                    let fx = update(&mut app, Msg::Key(key_event(*k)));
                    // At the top of a list, at the end of it, or with nothing to go back from,
                    // moves and Esc rightly change nothing.
                    let may_do_nothing = matches!(
                        b.action,
                        Action::Up
                            | Action::Down
                            | Action::Top
                            | Action::Bottom
                            | Action::PageUp
                            | Action::PageDown
                            | Action::Back
                            | Action::Follow
                    );
                    assert!(
                        may_do_nothing || !fx.is_empty() || fingerprint(&app) != before,
                        "{} ({:?}) did nothing in {here:?} (log focus {focus})",
                        k.label(),
                        b.action
                    );
                }
            }
        }
        assert!(hits > 0, "{:?} was never exercised", b.action);
    }
}

#[test]
fn every_action_in_the_table_is_reachable_by_some_key_somewhere() {
    let scopes = [
        Scope::Workflows,
        Scope::Stages,
        Scope::Items,
        Scope::Item,
        Scope::Deliveries,
        Scope::Delivery,
    ];
    for b in BINDINGS {
        let reachable = scopes.iter().any(|s| {
            [false, true].iter().any(|focus| {
                b.keys.iter().any(|k| {
                    keymap::lookup(&key_event(*k), *s, *focus, false)
                        .is_some_and(|f| f.action == b.action)
                })
            })
        });
        assert!(reachable, "{:?} is shadowed everywhere", b.action);
    }
}

#[test]
fn the_stages_view_gives_each_stages_failure_rate_over_five_minutes() {
    let mut app = on_stages(false);
    let (w, validate) = (WorkflowId::new(WF), StageId::new("validate"));
    with_attempts(&mut app);
    // Three of the five attempts failed (two 500s and a timeout).
    assert_eq!(app.stage_failures(&w, &validate), (5, 3));
    let rates = text(&render(&mut app, 120, 40));
    let row = rates.lines().find(|l| l.contains("Validate")).unwrap();
    assert!(row.contains("✗ 60% of 5"), "{row}");
    // Four minutes on, two successes: 3 of 7.
    for _ in 0..240 {
        update(&mut app, Msg::Tick);
    }
    update(
        &mut app,
        Msg::Attempt(Box::new(attempt(5, 1, Some(200), DeliveryState::Succeeded))),
    );
    update(
        &mut app,
        Msg::Attempt(Box::new(attempt(6, 1, Some(200), DeliveryState::Succeeded))),
    );
    assert_eq!(app.stage_failures(&w, &validate), (7, 3));
    // Two more minutes: the first five are older than five minutes and no longer count.
    for _ in 0..120 {
        update(&mut app, Msg::Tick);
    }
    assert_eq!(app.stage_failures(&w, &validate), (2, 0));
    let row = text(&render(&mut app, 120, 40));
    let row = row
        .lines()
        .find(|l| l.contains("Validate"))
        .unwrap()
        .to_string();
    assert!(row.contains("0% of 2"), "{row}");
    // Five minutes without attempts: the stage is forgotten, the cell says so.
    for _ in 0..300 {
        update(&mut app, Msg::Tick);
    }
    assert!(app.stage_rates.is_empty());
}

/// Issue 21: the log pane says when a stage's hold starts (with how long and why) and when it
/// ends, from the holds the header reads each second; Enter on such a line opens nothing.
#[test]
fn the_log_pane_says_when_a_hold_starts_and_ends() {
    let mut app = on_workflows(false);
    let until = chrono::Utc::now() + chrono::Duration::seconds(28);
    let held = (
        WorkflowId::new("defects"),
        StageId::new("validate"),
        until,
        "429 from receiver".to_string(),
    );
    let header = |holds| Msg::Header(crate::tui::state::Header { holds, ..header() });
    update(&mut app, header(vec![held.clone()]));
    update(&mut app, header(vec![held.clone()]));
    let lines: Vec<String> = app
        .log
        .entries
        .iter()
        .filter_map(|e| match e {
            LogEntry::Stage { stage, text, .. } => Some(format!("{stage}: {text}")),
            LogEntry::Attempt(_) => None,
        })
        .collect();
    assert_eq!(lines.len(), 1, "said once: {lines:?}");
    assert!(
        lines[0].starts_with("validate: stage held 2") && lines[0].contains("s: 429 from receiver"),
        "{lines:?}"
    );
    update(&mut app, header(vec![]));
    let last = app.log.entries.back().unwrap();
    assert!(
        matches!(last, LogEntry::Stage { text, .. } if text == "hold ended: requests resume"),
        "{last:?}"
    );
    press(&mut app, KeyCode::Tab);
    let fx = press(&mut app, KeyCode::Enter);
    assert!(fx.is_empty(), "a stage line opens nothing: {fx:?}");
}

/// Issue 21: `p` on a held stage resumes it (which lifts the hold) instead of pausing it.
#[test]
fn p_on_a_held_stage_lifts_the_hold() {
    let mut app = on_workflows(false);
    press(&mut app, KeyCode::Enter);
    let mut detail = stages();
    for s in &mut detail.stage_list {
        if s.id.as_str() == "validate" {
            s.held_until = Some(chrono::Utc::now() + chrono::Duration::seconds(28));
            s.held_reason = Some("429 from receiver".into());
        }
    }
    load(&mut app, ViewData::Stages(Box::new(detail)));
    to_stage(&mut app, "validate");
    assert_eq!(
        ch(&mut app, 'p'),
        vec![Effect::Run(Pending::Pause {
            workflow: wf(),
            stage: StageId::new("validate"),
            pause: false
        })]
    );
}
