//! `insta` snapshots of every screen at 50×12, 80×24, 120×40 and 300×80, drawn in the monochrome theme from
//! the fixed data of this module's parent (fixed ids and a fixed "now", so nothing needs
//! filtering). Review changes with `INSTA_UPDATE=always cargo test --lib tui::tests::screens`
//! and `git diff src/tui/tests/snapshots`.

use super::*;

#[test]
fn every_screen_at_every_size() {
    for (name, mut app) in screens() {
        for (w, h) in [(50u16, 12u16), (80, 24), (120, 40), (300, 80)] {
            let frame = text(&render(&mut app, w, h));
            insta::assert_snapshot!(format!("{name}_{w}x{h}"), frame);
        }
    }
}

#[test]
fn the_size_notice_at_10x3() {
    let (mut app, _) = App::new(false);
    insta::assert_snapshot!("too_small_10x3", text(&render(&mut app, 10, 3)));
}
