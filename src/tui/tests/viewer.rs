//! The payload viewer: the delivery detail's keys (scroll, copy, curl, pager) and how it
//! draws a large body, a body that is not JSON, and JSON in colour or without.

use ratatui::crossterm::event::KeyCode;
use ratatui::style::Color;

use super::*;

/// A console on the delivery detail of `d` (the failed deliveries underneath).
fn on_delivery(read_only: bool, d: DeliveryDetail) -> App {
    let mut app = on_deliveries(read_only);
    press(&mut app, KeyCode::Enter);
    load(&mut app, ViewData::Delivery(Box::new(d)));
    app
}

/// A JSON array of `n` objects, the last one marked, about 16 bytes each.
fn big_json(n: usize) -> String {
    let mut items: Vec<String> = (0..n).map(|i| format!("{{\"n\":{i}}}")).collect();
    items.push("{\"last\":\"THE-END\"}".into());
    format!("[{}]", items.join(","))
}

fn title_line(buf: &ratatui::buffer::Buffer) -> String {
    text(buf).lines().nth(2).unwrap_or("").to_string()
}

#[test]
fn the_keys_copy_the_body_the_headers_and_a_curl_command() {
    let mut app = on_delivery(false, delivery_detail());
    let body = serde_json::to_string(&delivery_detail().body).unwrap();
    assert_eq!(
        ch(&mut app, 'b'),
        vec![Effect::CopyText {
            what: "the request body".into(),
            text: body
        }]
    );
    match &ch(&mut app, 'B')[..] {
        [Effect::CopyText { text, .. }] => assert_eq!(text, "{\"ok\":false,\n \"status\":500}"),
        fx => panic!("{fx:?}"),
    }
    match &ch(&mut app, 'h')[..] {
        [Effect::CopyText { text, .. }] => {
            assert!(text.contains("webhook-id: msg_0001\n"), "{text}");
            assert!(text.contains("authorization: ****\n"), "{text}");
        }
        fx => panic!("{fx:?}"),
    }
    let id = DeliveryId("msg_0001".into());
    assert_eq!(
        ch(&mut app, 'u'),
        vec![Effect::CopyCurl {
            delivery: id.clone(),
            reveal: false
        }]
    );
    assert_eq!(
        ch(&mut app, 'U'),
        vec![Effect::CopyCurl {
            delivery: id,
            reveal: true
        }]
    );
    // The executor's curl text comes back as a message and goes to the clipboard.
    assert_eq!(
        update(
            &mut app,
            Msg::Copy {
                what: "a curl command".into(),
                text: "curl …".into()
            }
        ),
        vec![Effect::CopyText {
            what: "a curl command".into(),
            text: "curl …".into()
        }]
    );
}

#[test]
fn read_only_copies_masked_text_but_never_the_secrets() {
    let mut app = on_delivery(true, delivery_detail());
    assert!(matches!(
        &ch(&mut app, 'u')[..],
        [Effect::CopyCurl { reveal: false, .. }]
    ));
    assert_eq!(ch(&mut app, 'U'), vec![]);
    assert!(
        app.flash
            .as_ref()
            .is_some_and(|f| f.text.contains("read-only")),
        "{:?}",
        app.flash
    );
    let buf = render(&mut app, 120, 40);
    assert!(!text(&buf).contains("with the real secrets"));
    ch(&mut app, '?');
    let help = text(&render(&mut app, 120, 40));
    assert!(help.contains("copy as curl (secrets masked)"), "{help}");
    assert!(!help.contains("real secrets"), "{help}");
}

#[test]
fn the_pager_gets_the_whole_document_as_plain_text() {
    let mut d = delivery_detail();
    d.attempt_log[0].response_body = Some(big_json(3000));
    let mut app = on_delivery(false, d);
    let fx = ch(&mut app, 'o');
    let [Effect::Pager(text)] = &fx[..] else {
        panic!("{fx:?}")
    };
    assert!(text.contains("\"last\": \"THE-END\""), "{}", &text[..200]);
    assert!(text.contains("request body · "));
    assert!(!text.contains('\x1b'));
}

#[test]
fn a_64_kib_body_scrolls_to_its_end_and_back() {
    let mut d = delivery_detail();
    let body = big_json(6000);
    assert!(body.len() >= 60 * 1024, "{}", body.len());
    // The oldest attempt's response is the document's end.
    d.attempt_log[0].response_body = Some(body);
    let mut app = on_delivery(false, d);
    let buf = render(&mut app, 80, 24);
    assert!(
        title_line(&buf).contains("lines 1–10 of "),
        "{}",
        title_line(&buf)
    );
    ch(&mut app, 'G');
    let end = text(&render(&mut app, 80, 24));
    assert!(end.contains("THE-END"), "{end}");
    // The last screenful ends with the last attempt's body: `k` moves up at once.
    ch(&mut app, 'k');
    let up = title_line(&render(&mut app, 80, 24));
    ch(&mut app, 'g');
    let top = title_line(&render(&mut app, 80, 24));
    assert!(top.contains("lines 1–10 of "), "{top}");
    let total: usize = top
        .split(" of ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(total > 12_000, "{top}");
    assert!(
        up.contains(&format!("lines {}–{} of {total}", total - 10, total - 1)),
        "{up}"
    );
    // Page keys move a page.
    ch(&mut app, 'G');
    render(&mut app, 80, 24);
    press(&mut app, KeyCode::PageUp);
    let paged = title_line(&render(&mut app, 80, 24));
    assert!(
        paged.contains(&format!("lines {}–{} of {total}", total - 19, total - 10)),
        "{paged}"
    );
}

#[test]
fn a_body_that_is_not_json_is_shown_raw_and_long_lines_wrap() {
    let mut d = delivery_detail();
    let long = format!("<html>{}</html>", "x".repeat(300));
    d.attempt_log[0].response_body = Some(format!("{long}\nsecond {{\"half\":"));
    let mut app = on_delivery(false, d);
    let mut seen = String::new();
    ch(&mut app, 'G');
    seen.push_str(&text(&render(&mut app, 80, 40)));
    assert!(seen.contains("not JSON, as received"), "{seen}");
    assert!(seen.contains("second {\"half\":"), "{seen}");
    // The 313 characters are all there, over several lines.
    let xs: usize = seen.matches('x').count();
    assert!(xs >= 300, "{xs}\n{seen}");
    // Cut by cell where the line meets the edge, and continued on the next line.
    assert!(seen.contains("xx</ht│\n│ml>"), "{seen}");
    assert!(app.flash.is_none(), "{:?}", app.flash);
}

#[test]
fn json_is_coloured_unless_no_color() {
    let mut app = on_delivery(false, delivery_detail());
    let find = |buf: &ratatui::buffer::Buffer, needle: &str| {
        let t = text(buf);
        let (y, line) = t
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .unwrap();
        let x = line[..line.find(needle).unwrap()].chars().count() as u16;
        buf[(x + 1, y as u16)].fg
    };
    let colour = render_with(&mut app, 80, 24, &crate::tui::theme::Theme::colour());
    assert_eq!(find(&colour, "\"event\""), Color::Cyan);
    assert_eq!(find(&colour, "\"stage.webhook\""), Color::Green);
    let mono = render(&mut app, 80, 24);
    assert_eq!(find(&mono, "\"event\""), Color::Reset);
    assert_eq!(find(&mono, "\"stage.webhook\""), Color::Reset);
}

#[test]
fn secrets_in_recorded_headers_are_masked_when_drawn() {
    let mut d = delivery_detail();
    d.attempt_log[1].request_headers.push((
        "authorization".into(),
        "Bearer sk-live-0123456789abcdef".into(),
    ));
    d.attempt_log[1]
        .response_headers
        .push(("set-cookie".into(), "session=0123456789abcdefghij".into()));
    let mut app = on_delivery(false, d);
    let mut all = String::new();
    for _ in 0..10 {
        all.push_str(&text(&render(&mut app, 120, 40)));
        press(&mut app, KeyCode::PageDown);
    }
    assert!(all.contains("authorization: Bearer ****cdef"), "{all}");
    assert!(!all.contains("sk-live-0123456789"), "{all}");
    assert!(!all.contains("session=0123"), "{all}");
}

#[test]
fn the_help_box_scrolls_to_its_last_key_on_a_small_terminal() {
    let mut app = on_delivery(false, delivery_detail());
    ch(&mut app, '?');
    let first = text(&render(&mut app, 50, 12));
    assert!(first.contains("keys 1–"), "{first}");
    assert!(!first.contains("ctrl-c  quit"), "{first}");
    for _ in 0..40 {
        ch(&mut app, 'j');
    }
    let last = text(&render(&mut app, 50, 12));
    assert!(last.contains("q ctrl-c  quit"), "{last}");
    assert!(matches!(
        app.overlay,
        Some(super::super::state::Overlay::Help { .. })
    ));
    // Back up with k, then any other key closes it.
    ch(&mut app, 'k');
    press(&mut app, KeyCode::Esc);
    assert!(app.overlay.is_none());
    // At 120×40 everything fits: no scrolling, every key shown.
    ch(&mut app, '?');
    let all = text(&render(&mut app, 120, 40));
    assert!(
        all.contains("keys in delivery") && all.contains("quit"),
        "{all}"
    );
}
