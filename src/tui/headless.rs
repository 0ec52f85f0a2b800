//! The console without a terminal: the same state, update, loads and drawing, with effects run
//! synchronously on the caller's thread and frames drawn into a `TestBackend`. Used by the
//! console benchmark and by tests that need real data behind the screen.

use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::state::{self, App, Effect, Msg};
use super::theme::Theme;
use crate::store::Store;

/// A console driven by code.
pub struct Headless {
    pub app: App,
    store: Store,
    operator: String,
    terminal: Terminal<TestBackend>,
    theme: Theme,
}

impl Headless {
    /// Opens the console on `store` at `width`×`height` and performs its first loads.
    pub fn new(store: Store, read_only: bool, width: u16, height: u16) -> Headless {
        let (app, effects) = App::new(read_only);
        // TestBackend's constructor cannot fail.
        let terminal = match Terminal::new(TestBackend::new(width, height)) {
            Ok(t) => t,
            Err(e) => match e {},
        };
        let mut h = Headless {
            app,
            store,
            operator: "bench".into(),
            terminal,
            theme: Theme::mono(),
        };
        h.run(effects);
        h
    }

    fn run(&mut self, effects: Vec<Effect>) {
        let mut queue = effects;
        while let Some(e) = queue.pop() {
            let msg = match e {
                Effect::Load {
                    view,
                    kind,
                    search,
                    order,
                    after,
                } => {
                    for m in super::load_msgs(&self.store, view, &kind, &search, order, after) {
                        queue.extend(state::update(&mut self.app, m));
                    }
                    continue;
                }
                Effect::Run(p) => super::run_pending(&self.store, p, &self.operator),
                Effect::Count { action, filter } => super::count(&self.store, action, filter),
                // Network and terminal effects have no place here.
                Effect::CountStage { .. }
                | Effect::Export(_)
                | Effect::Test { .. }
                | Effect::Copy(_)
                | Effect::CopyText { .. }
                | Effect::CopyCurl { .. }
                | Effect::Pager(_) => continue,
            };
            queue.extend(state::update(&mut self.app, msg));
        }
    }

    /// Applies one message and everything it leads to.
    pub fn send(&mut self, msg: Msg) {
        let effects = state::update(&mut self.app, msg);
        self.run(effects);
    }

    /// A key press as the real console handles it: the state changes and a frame is drawn at
    /// once (`frame`); the loads it asked for then run and a second frame shows their data
    /// (`data`, measured from the key press).
    pub fn press(&mut self, msg: Msg) -> (Duration, Duration) {
        let start = Instant::now();
        let effects = state::update(&mut self.app, msg);
        self.draw();
        let frame = start.elapsed();
        if effects.is_empty() {
            return (frame, frame);
        }
        self.run(effects);
        self.draw();
        (frame, start.elapsed())
    }

    /// Draws a frame and says how long it took.
    pub fn draw(&mut self) -> Duration {
        let start = Instant::now();
        let now = chrono::Utc::now();
        let (app, theme) = (&mut self.app, &self.theme);
        let _ = self
            .terminal
            .draw(|f| super::view::draw(f, app, theme, now));
        start.elapsed()
    }

    /// The screen as text, one line per row.
    pub fn screen(&self) -> String {
        let buf = self.terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}
