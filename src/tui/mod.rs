//! The operator console: state, update, views, key map, terminal guard and the executor.
//!
//! One UI task owns the [`state::App`]. Keys, store results, attempt events and ticks arrive
//! as [`state::Msg`]s; [`state::update`] turns each into effects, which the executor runs off
//! the UI task (store calls on blocking threads, HTTP on the runtime) and answers with more
//! messages. All pending messages are applied before one frame is drawn; a key press is
//! answered by a frame at once, and redraws caused by the attempt stream are coalesced to at
//! most ~30 a second. Only this module touches crossterm.

pub mod headless;
pub mod keymap;
mod ops;
pub mod state;
pub mod theme;
pub mod view;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event};
use ratatui::crossterm::{cursor, execute, terminal};
use tokio::sync::{broadcast, mpsc, watch};

use crate::dispatch::{DispatchNotice, DispatcherOptions};
use crate::store::{AssignTarget, Expect, ItemFilter, Store};
use state::{App, Effect, Header, Level, LoadAfter, Msg, PAGE, Pending, ViewData, ViewKind};

/// How the console was started.
#[derive(Clone, Debug)]
pub struct ConsoleOptions {
    pub read_only: bool,
    /// Run a dispatcher in this process.
    pub dispatch: bool,
    pub concurrency: usize,
    pub operator: String,
    pub mouse: bool,
    /// The config file with `[keys]` overrides.
    pub config: Option<std::path::PathBuf>,
}

/// `$XDG_CONFIG_HOME/hookops/config.toml`, else `~/.config/hookops/config.toml`.
pub fn default_config_path() -> Option<std::path::PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config")))
        .map(|d| d.join("hookops").join("config.toml"))
}

/// Owns raw mode, the alternate screen and bracketed paste; restores them when dropped, on
/// every exit path. Panics restore through the hook installed by [`run`].
struct TerminalGuard {
    mouse: bool,
}

impl TerminalGuard {
    fn enter(mouse: bool) -> std::io::Result<TerminalGuard> {
        terminal::enable_raw_mode()?;
        let guard = TerminalGuard { mouse };
        let mut out = std::io::stdout();
        execute!(
            out,
            terminal::EnterAlternateScreen,
            event::EnableBracketedPaste,
            cursor::Hide
        )?;
        if mouse {
            execute!(out, event::EnableMouseCapture)?;
        }
        Ok(guard)
    }
}

fn restore_terminal(mouse: bool) {
    let mut out = std::io::stdout();
    if mouse {
        let _ = execute!(out, event::DisableMouseCapture);
    }
    let _ = execute!(
        out,
        event::DisableBracketedPaste,
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
    let _ = terminal::disable_raw_mode();
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal(self.mouse);
    }
}

/// Runs the console until the operator quits.
pub fn run(store: Store, opts: ConsoleOptions) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    // Reverse video must survive NO_COLOR (style.md).
    ratatui::crossterm::style::force_color_output(true);
    let mouse = opts.mouse;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal(mouse);
        previous(info);
    }));
    let guard =
        TerminalGuard::enter(mouse).map_err(|e| format!("cannot set up the terminal: {e}"))?;
    let result = rt.block_on(main_loop(store, opts));
    drop(guard);
    result
}

async fn main_loop(store: Store, opts: ConsoleOptions) -> Result<(), String> {
    let backend = CrosstermBackend::new(std::io::stdout());
    let mut terminal = Terminal::new(backend).map_err(|e| e.to_string())?;
    let theme = theme::Theme::from_env();
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();

    // Keys and resizes: crossterm's blocking reader on its own thread.
    let keys = tx.clone();
    std::thread::spawn(move || {
        loop {
            match event::read() {
                Ok(Event::Key(k)) => {
                    if keys.send(Msg::Key(k)).is_err() {
                        break;
                    }
                }
                Ok(Event::Resize(..)) => {
                    if keys.send(Msg::Resize).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    // The dispatcher has its own stop: it also stops when the database file is deleted or
    // replaced under the console, while the screen goes on showing why.
    let (dispatch_stop_tx, dispatch_stop_rx) = watch::channel(false);
    let own_dispatcher = opts.dispatch && !opts.read_only;
    let mut dispatcher = None;
    if own_dispatcher {
        let (events, mut sub) = broadcast::channel(8192);
        let d_opts = DispatcherOptions {
            concurrency: opts.concurrency,
            ..DispatcherOptions::default()
        };
        dispatcher = Some(tokio::spawn(crate::dispatch::run(
            store.clone(),
            d_opts,
            events,
            dispatch_stop_rx,
        )));
        let t = tx.clone();
        tokio::spawn(async move {
            loop {
                match sub.recv().await {
                    Ok(DispatchNotice::Attempt(e)) => {
                        if t.send(Msg::Attempt(e)).is_err() {
                            break;
                        }
                    }
                    Ok(DispatchNotice::StoreError(m)) => {
                        let _ = t.send(Msg::Done {
                            text: m,
                            level: Level::Error,
                        });
                    }
                    Ok(DispatchNotice::Recovered) => {
                        let _ = t.send(Msg::Done {
                            text: "dispatch resumed".into(),
                            level: Level::Info,
                        });
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    // Ticks, the header, other processes' commits and attempts.
    spawn_watchers(
        store.clone(),
        tx.clone(),
        own_dispatcher,
        opts.concurrency,
        stop_rx.clone(),
    );

    let warnings = opts
        .config
        .as_deref()
        .map(keymap::load_overrides)
        .unwrap_or_default();
    let (mut app, effects) = App::new(opts.read_only);
    if !warnings.is_empty() {
        app.flash(warnings.join(" · "), Level::Warn);
    }
    let exec = Executor {
        store: store.clone(),
        tx: tx.clone(),
        operator: opts.operator.clone(),
    };
    for e in effects {
        exec.run(e, &mut app);
    }
    let frame_gap = Duration::from_millis(33);
    let mut last_draw = tokio::time::Instant::now() - frame_gap;
    loop {
        let next_frame = last_draw + frame_gap;
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(next_frame), if app.dirty => None,
        };
        let mut urgent = false;
        if let Some(first) = msg {
            let mut msgs = vec![first];
            while msgs.len() < 20_000 {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            for m in msgs {
                urgent |= matches!(m, Msg::Key(_) | Msg::Resize | Msg::Loaded { .. });
                for e in state::update(&mut app, m) {
                    exec.run(e, &mut app);
                }
            }
        }
        if app.quit {
            break;
        }
        if app.header.file_problem.is_some() && !*dispatch_stop_tx.borrow() {
            let _ = dispatch_stop_tx.send(true);
        }
        if app.dirty && (urgent || last_draw.elapsed() >= frame_gap) {
            let now = chrono::Utc::now();
            terminal
                .draw(|f| view::draw(f, &mut app, &theme, now))
                .map_err(|e| format!("cannot draw: {e}"))?;
            app.dirty = false;
            last_draw = tokio::time::Instant::now();
        }
    }
    let _ = stop_tx.send(true);
    let _ = dispatch_stop_tx.send(true);
    if let Some(d) = dispatcher {
        let _ = tokio::time::timeout(Duration::from_secs(6), d).await;
    }
    Ok(())
}

fn spawn_watchers(
    store: Store,
    tx: mpsc::UnboundedSender<Msg>,
    own_dispatcher: bool,
    concurrency: usize,
    stop: watch::Receiver<bool>,
) {
    // Once a second: tick and header.
    let (s, t, stop1) = (store.clone(), tx.clone(), stop.clone());
    let opened = crate::fileid::identity(store.path());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        while !*stop1.borrow() {
            every.tick().await;
            if t.send(Msg::Tick).is_err() {
                break;
            }
            let s2 = s.clone();
            let header = tokio::task::spawn_blocking(move || {
                let mut h = header(&s2, own_dispatcher, concurrency);
                h.file_problem = crate::fileid::problem(s2.path(), opened);
                if own_dispatcher && h.file_problem.is_some() {
                    h.dispatcher = "dispatcher stopped: the database file is gone".into();
                    h.dispatcher_warning = true;
                }
                h
            })
            .await;
            if let Ok(h) = header
                && t.send(Msg::Header(h)).is_err()
            {
                break;
            }
        }
    });
    // Every 100 ms: new attempts from any process; every 400 ms at most: reload on change.
    tokio::spawn(async move {
        let s = store.clone();
        let Ok(Ok((mut watcher, mut last_seq))) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((s.change_watcher()?, s.last_attempt_seq()?))
        })
        .await
        else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut since_reload = 0u32;
        let mut pending_change = false;
        while !*stop.borrow() {
            tick.tick().await;
            since_reload += 1;
            let s = store.clone();
            let after = last_seq;
            let res = tokio::task::spawn_blocking(move || {
                let changed = watcher.changed().unwrap_or(false);
                let rows = if changed {
                    s.attempts_after(after, 5000).unwrap_or_default()
                } else {
                    vec![]
                };
                (watcher, changed, rows)
            })
            .await;
            let Ok((w, changed, rows)) = res else { break };
            watcher = w;
            pending_change |= changed;
            for (seq, e) in rows {
                last_seq = last_seq.max(seq);
                if tx.send(Msg::Attempt(Box::new(e))).is_err() {
                    return;
                }
            }
            if pending_change && since_reload >= 4 {
                pending_change = false;
                since_reload = 0;
                if tx.send(Msg::Changed).is_err() {
                    return;
                }
            }
        }
    });
}

/// Header figures: database, dispatcher state (and the private-target policy when it is on),
/// delivery counts.
fn header(store: &Store, own: bool, concurrency: usize) -> Header {
    let mut h = dispatcher_header(store, own, concurrency);
    if store.policies().is_ok_and(|p| p.deny_private_targets) {
        h.dispatcher.push_str(" · private targets denied");
    }
    h
}

fn dispatcher_header(store: &Store, own: bool, concurrency: usize) -> Header {
    let now = chrono::Utc::now();
    let mut h = Header {
        db: store.path().display().to_string(),
        counts: store.delivery_totals().unwrap_or_default(),
        db_bytes: std::fs::metadata(store.path())
            .map(|m| m.len())
            .unwrap_or(0),
        ..Header::default()
    };
    if own {
        h.dispatcher = format!("dispatcher: this process ×{concurrency}");
        return h;
    }
    let beats = store.dispatchers().unwrap_or_default();
    match beats.first() {
        Some(d) => {
            let age = (now - d.last_beat).num_seconds();
            if age > 10 {
                h.dispatcher = format!(
                    "dispatcher pid {} silent for {age}s: deliveries may be queued",
                    d.pid
                );
                h.dispatcher_warning = true;
            } else {
                h.dispatcher = format!("dispatcher: serve pid {} on {}", d.pid, d.host);
            }
        }
        None => {
            h.dispatcher = "no dispatcher running: deliveries are queued".into();
            h.dispatcher_warning = true;
        }
    }
    h
}

/// Performs effects off the UI task and answers with messages.
struct Executor {
    store: Store,
    tx: mpsc::UnboundedSender<Msg>,
    operator: String,
}

impl Executor {
    fn blocking(&self, f: impl FnOnce(&Store) -> Msg + Send + 'static) {
        let (store, tx) = (self.store.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(f(&store));
        });
    }

    fn run(&self, effect: Effect, app: &mut App) {
        match effect {
            Effect::Load {
                view,
                kind,
                search,
                order,
                after,
            } => {
                self.blocking(move |s| {
                    let append = after.is_some();
                    let data =
                        load(s, &kind, &search, order, after).unwrap_or_else(ViewData::Failed);
                    Msg::Loaded { view, data, append }
                });
            }
            Effect::CountFailed(filter) => {
                self.blocking(move |s| match s.failed_deliveries(&filter, None) {
                    Ok(ids) => Msg::Counted {
                        filter,
                        count: ids.len() as i64,
                    },
                    Err(e) => Msg::Done {
                        text: e.to_string(),
                        level: Level::Error,
                    },
                })
            }
            Effect::CountOpen(filter) => {
                self.blocking(move |s| match s.open_deliveries(&filter, None) {
                    Ok(ids) => Msg::CountedOpen {
                        filter,
                        count: ids.len() as i64,
                    },
                    Err(e) => Msg::Done {
                        text: e.to_string(),
                        level: Level::Error,
                    },
                })
            }
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
            Effect::Copy(text) => {
                // OSC 52 asks the terminal (local or over SSH) to put the text on the clipboard.
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
                let mut out = std::io::stdout();
                let _ = write!(out, "\x1b]52;c;{b64}\x07");
                let _ = out.flush();
                app.flash(format!("copied {text} (OSC 52)"), Level::Info);
            }
            Effect::Test { workflow, stage } => {
                let (store, tx, op) = (self.store.clone(), self.tx.clone(), self.operator.clone());
                tokio::spawn(async move {
                    let s2 = store.clone();
                    let (w2, st2) = (workflow.clone(), stage.clone());
                    let lease =
                        tokio::task::spawn_blocking(move || s2.begin_test(&w2, &st2, &op)).await;
                    let msg = match lease {
                        Ok(Ok(lease)) => match crate::dispatch::send_manual(
                            &store,
                            lease,
                            crate::dispatch::http::DEFAULT_MAX_BODY,
                        )
                        .await
                        {
                            Ok(ev) => {
                                let _ = tx.send(Msg::Attempt(Box::new(ev.clone())));
                                let detail = {
                                    let s3 = store.clone();
                                    let id = ev.delivery_id.clone();
                                    tokio::task::spawn_blocking(move || s3.delivery_detail(&id))
                                        .await
                                        .ok()
                                        .and_then(|r| r.ok())
                                };
                                let body = detail
                                    .and_then(|d| {
                                        d.attempt_log.last().and_then(|a| a.response_body.clone())
                                    })
                                    .unwrap_or_default();
                                let status = match (ev.status, &ev.error_message) {
                                    (Some(s), _) => crate::dispatch::classify::status_message(s),
                                    (None, Some(m)) => m.clone(),
                                    _ => "-".into(),
                                };
                                Msg::TestResult {
                                    title: format!("test {workflow}/{stage}"),
                                    text: format!(
                                        "{status} in {} ms\n\n{}",
                                        ev.duration_ms,
                                        body.chars().take(2000).collect::<String>()
                                    ),
                                }
                            }
                            Err(e) => Msg::Done {
                                text: e.to_string(),
                                level: Level::Error,
                            },
                        },
                        Ok(Err(e)) => Msg::Done {
                            text: e.to_string(),
                            level: Level::Error,
                        },
                        Err(e) => Msg::Done {
                            text: e.to_string(),
                            level: Level::Error,
                        },
                    };
                    let _ = tx.send(msg);
                });
            }
            Effect::Run(p) => self.action(p),
        }
    }

    fn action(&self, p: Pending) {
        let op = self.operator.clone();
        match p {
            Pending::Replay(ids) => {
                let (store, tx) = (self.store.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let (mut ok, mut bad) = (0, 0);
                    for id in ids {
                        let (s2, op2) = (store.clone(), op.clone());
                        let lease =
                            tokio::task::spawn_blocking(move || s2.begin_replay(&id, &op2)).await;
                        let Ok(Ok(lease)) = lease else {
                            bad += 1;
                            continue;
                        };
                        match crate::dispatch::send_manual(
                            &store,
                            lease,
                            crate::dispatch::http::DEFAULT_MAX_BODY,
                        )
                        .await
                        {
                            Ok(ev) => {
                                if ev.status.is_some_and(|s| (200..300).contains(&s)) {
                                    ok += 1
                                } else {
                                    bad += 1
                                }
                                let _ = tx.send(Msg::Attempt(Box::new(ev)));
                            }
                            Err(_) => bad += 1,
                        }
                    }
                    let level = if bad > 0 { Level::Warn } else { Level::Info };
                    let _ = tx.send(Msg::ActionDone {
                        text: format!("replayed: {ok} got 2xx, {bad} did not"),
                        level,
                    });
                });
            }
            other => self.blocking(move |s| run_pending(s, other, &op)),
        }
    }
}

pub(crate) fn load(
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
        ViewKind::Item(id) => ViewData::Item(Box::new(s.item_detail(id).map_err(e)?)),
        ViewKind::Deliveries(f) => {
            let after = match after {
                Some(LoadAfter::Delivery(c)) => Some(c),
                _ => None,
            };
            let mut page = s.list_deliveries(f, after, PAGE + 1).map_err(e)?;
            let more = page.len() > PAGE;
            page.truncate(PAGE);
            let cursors = page.iter().map(|(_, c)| *c).collect();
            ViewData::Deliveries {
                rows: page.into_iter().map(|(d, _)| d).collect(),
                cursors,
                more,
            }
        }
        ViewKind::Delivery(id) => ViewData::Delivery(Box::new(s.delivery_detail(id).map_err(e)?)),
        ViewKind::Audit => ViewData::Audit(s.audit_log(500).map_err(e)?),
        ViewKind::Health => ViewData::Health(Box::new(s.health().map_err(e)?)),
    })
}

pub(crate) fn run_pending(s: &Store, p: Pending, op: &str) -> Msg {
    let done = |text: String, refused: usize| Msg::ActionDone {
        text,
        level: if refused > 0 {
            Level::Warn
        } else {
            Level::Info
        },
    };
    let fail = |e: crate::store::StoreError| Msg::ActionDone {
        text: e.to_string(),
        level: Level::Error,
    };
    let first_refusal = |r: &[crate::store::Refusal]| {
        r.first()
            .map(|r| format!(" — refused: {}", r.reason))
            .unwrap_or_default()
    };
    match p {
        Pending::Assign {
            workflow,
            to,
            target,
        } => {
            let t = match target {
                state::AssignWhat::Items(ids) => AssignTarget::Versions(ids),
                state::AssignWhat::Stage { from, .. } => AssignTarget::FromStage {
                    stage: from,
                    limit: None,
                },
            };
            match s.assign(&workflow, &to, &t, None, op) {
                Ok(r) => done(
                    format!(
                        "assigned {} item(s) to {to}{}{}",
                        r.moved,
                        if r.deliveries > 0 {
                            format!(", {} deliveries queued", r.deliveries)
                        } else {
                            String::new()
                        },
                        first_refusal(&r.refused)
                    ),
                    r.refused.len(),
                ),
                Err(e) => fail(e),
            }
        }
        Pending::Advance { ids, outcome } => {
            let mut moved = 0;
            let mut refused = Vec::new();
            for (id, version) in ids {
                let expect = Expect {
                    stage: None,
                    version: Some(version),
                };
                match s.advance(&[id], outcome, &expect, op) {
                    Ok(r) => {
                        moved += r.moved;
                        refused.extend(r.refused);
                    }
                    Err(e) => return fail(e),
                }
            }
            done(
                format!("moved {moved} item(s){}", first_refusal(&refused)),
                refused.len(),
            )
        }
        Pending::Refire(ids) => match s.refire(&ids, op) {
            Ok(r) => done(
                format!(
                    "re-fired {} delivery(ies){}",
                    r.refired,
                    r.refused
                        .first()
                        .map(|(_, why)| format!(" — refused: {why}"))
                        .unwrap_or_default()
                ),
                r.refused.len(),
            ),
            Err(e) => fail(e),
        },
        Pending::RefireFiltered { filter, .. } => {
            let ids = match s.failed_deliveries(&filter, None) {
                Ok(ids) => ids,
                Err(e) => return fail(e),
            };
            let (mut n, mut refused) = (0, 0);
            for chunk in ids.chunks(2000) {
                match s.refire(chunk, op) {
                    Ok(r) => {
                        n += r.refired;
                        refused += r.refused.len();
                    }
                    Err(e) => return fail(e),
                }
            }
            done(
                format!("re-fired {n} failed deliveries ({refused} refused)"),
                refused,
            )
        }
        Pending::Pause {
            workflow,
            stage,
            pause,
        } => match s.set_paused(&workflow, &stage, pause, op) {
            Ok(_) => done(
                format!("stage {stage} {}", if pause { "paused" } else { "resumed" }),
                0,
            ),
            Err(e) => fail(e),
        },
        Pending::Replay(_) => done("replay runs asynchronously".into(), 0),
        Pending::Cancel(ids) => ops::cancel_done(s.cancel_deliveries(&ids, op)),
        Pending::CancelFiltered { filter, .. } => match s.open_deliveries(&filter, None) {
            Ok(ids) => ops::cancel_done(s.cancel_deliveries(&ids, op)),
            Err(e) => fail(e),
        },
    }
}
