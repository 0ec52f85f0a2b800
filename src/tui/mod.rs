//! The operator console: state, update, views, key map, terminal guard; the executor lives in
//! `executor.rs`.
//!
//! One UI task owns the [`state::App`]. Keys, store results, attempt events and ticks arrive
//! as [`state::Msg`]s; [`state::update`] turns each into effects, which the executor runs off
//! the UI task (store calls on blocking threads, HTTP on the runtime) and answers with more
//! messages. All pending messages are applied before one frame is drawn; a key press is
//! answered by a frame at once, and redraws caused by the attempt stream are coalesced to at
//! most ~30 a second. Only this module touches crossterm.

mod executor;
pub mod headless;
pub mod keymap;
mod ops;
pub mod payload;
pub mod report;
pub mod state;
pub mod theme;
pub mod view;

#[cfg(test)]
mod tests;

use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event};
use ratatui::crossterm::{cursor, execute, terminal};
use tokio::sync::{broadcast, mpsc, watch};

use crate::dispatch::{DispatchNotice, DispatcherOptions};
use crate::store::Store;
use state::{App, Header, Level, Msg};

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
    // `--mouse`, or `mouse = true` in the config file.
    let mouse = opts.mouse || opts.config.as_deref().is_some_and(keymap::mouse_in_config);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal(mouse);
        previous(info);
    }));
    let guard =
        TerminalGuard::enter(mouse).map_err(|e| format!("cannot set up the terminal: {e}"))?;
    let result = rt.block_on(main_loop(store, opts, mouse));
    drop(guard);
    result
}

async fn main_loop(store: Store, opts: ConsoleOptions, mouse: bool) -> Result<(), String> {
    let backend = CrosstermBackend::new(std::io::stdout());
    let mut terminal = Terminal::new(backend).map_err(|e| e.to_string())?;
    let theme = theme::Theme::from_env();
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();

    // Keys and resizes: crossterm's reader on its own thread, which parks while a pager
    // has the terminal (it would otherwise take the pager's keys).
    let keys = tx.clone();
    let started = std::time::Instant::now();
    let gate = InputGate::default();
    let reader_gate = gate.clone();
    std::thread::spawn(move || {
        loop {
            reader_gate.park_if_asked();
            match event::poll(Duration::from_millis(50)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) => break,
            }
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
                Ok(Event::Paste(text)) => {
                    if keys.send(Msg::Paste(text)).is_err() {
                        break;
                    }
                }
                Ok(Event::Mouse(m)) => {
                    use ratatui::crossterm::event::{MouseButton, MouseEventKind as K};
                    let what = match m.kind {
                        K::Down(MouseButton::Left) => state::PointerKind::Click,
                        K::ScrollUp => state::PointerKind::WheelUp,
                        K::ScrollDown => state::PointerKind::WheelDown,
                        _ => continue,
                    };
                    let p = state::Pointer {
                        what,
                        col: m.column,
                        row: m.row,
                        at_ms: started.elapsed().as_millis() as u64,
                    };
                    if keys.send(Msg::Mouse(p)).is_err() {
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
                urgent |= matches!(
                    m,
                    Msg::Key(_) | Msg::Paste(_) | Msg::Mouse(_) | Msg::Resize | Msg::Loaded { .. }
                );
                for e in state::update(&mut app, m) {
                    if let state::Effect::Pager(text) = e {
                        let r = tokio::task::block_in_place(|| pager(&text, mouse, &gate));
                        if let Err(why) = r {
                            app.flash(why, Level::Error);
                        }
                        // Everything is drawn anew on the restored screen: it is cleared, and
                        // both buffers are emptied so the next frame draws every cell.
                        // (`Terminal::clear` would ask the terminal where its cursor is, an
                        // answer the key reader may take, over SSH too.)
                        let _ =
                            execute!(std::io::stdout(), terminal::Clear(terminal::ClearType::All));
                        terminal.swap_buffers();
                        terminal.swap_buffers();
                        urgent = true;
                        app.dirty = true;
                        continue;
                    }
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

/// Holds the key reader while another program (the pager) reads the terminal.
#[derive(Clone, Default)]
struct InputGate(std::sync::Arc<(std::sync::Mutex<Gate>, std::sync::Condvar)>);

#[derive(Default)]
struct Gate {
    asked: bool,
    parked: bool,
}

impl InputGate {
    /// The reader's side: waits here while asked to.
    fn park_if_asked(&self) {
        let (lock, cv) = &*self.0;
        let Ok(mut g) = lock.lock() else { return };
        if !g.asked {
            return;
        }
        g.parked = true;
        cv.notify_all();
        while g.asked {
            g = match cv.wait(g) {
                Ok(g) => g,
                Err(_) => return,
            };
        }
        g.parked = false;
    }

    /// Asks the reader to stop reading and waits until it has (at most one poll, 50 ms).
    fn hold(&self) {
        let (lock, cv) = &*self.0;
        let Ok(mut g) = lock.lock() else { return };
        g.asked = true;
        while !g.parked {
            g = match cv.wait_timeout(g, Duration::from_secs(1)) {
                Ok((g, t)) if t.timed_out() => {
                    // The reader is gone (its terminal closed): nothing to wait for.
                    drop(g);
                    return;
                }
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
    }

    fn release(&self) {
        let (lock, cv) = &*self.0;
        if let Ok(mut g) = lock.lock() {
            g.asked = false;
            cv.notify_all();
        }
    }
}

/// Shows `text` in `$PAGER` (`less` when unset): the key reader parks, the terminal goes back
/// to normal (main screen, cooked mode), the pager runs with the text on its standard input,
/// and everything is set up again however it ended.
fn pager(text: &str, mouse: bool, gate: &InputGate) -> Result<(), String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let cmd = std::env::var("PAGER")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "less".into());
    gate.hold();
    restore_terminal(mouse);
    // Through the shell, as git and man run it: `$PAGER` may carry arguments (`less -S`).
    let run = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run $PAGER ({cmd}): {e}"))
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                // A pager quit before reading it all closes the pipe: not an error.
                let _ = stdin.write_all(text.as_bytes());
            }
            child
                .wait()
                .map_err(|e| format!("$PAGER ({cmd}) failed: {e}"))
        });
    let back = TerminalGuard::enter(mouse).map(std::mem::forget);
    gate.release();
    back.map_err(|e| format!("cannot set the terminal up again: {e}"))?;
    match run? {
        status if status.success() => Ok(()),
        status => Err(format!("$PAGER ({cmd}) ended with {status}")),
    }
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
    let opened = store.file().and_then(crate::fileid::identity);
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
                h.file_problem = s2.file().and_then(|p| crate::fileid::problem(p, opened));
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
            Ok::<_, crate::store::StoreError>((s.change_watcher()?, s.attempts_end()?))
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
    h.holds = store
        .stage_flows()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| {
            let until = f.held_until?;
            Some((
                f.workflow,
                f.stage,
                until,
                f.held_reason.unwrap_or_default(),
            ))
        })
        .collect();
    h
}

fn dispatcher_header(store: &Store, own: bool, concurrency: usize) -> Header {
    let now = chrono::Utc::now();
    let mut h = Header {
        db: store.location().to_string(),
        counts: store.delivery_totals().unwrap_or_default(),
        db_bytes: store
            .file()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len()),
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
                h.dispatcher = match process_role(&d.host, d.pid) {
                    Some(role) => format!("dispatcher: {role} pid {} on {}", d.pid, d.host),
                    None => format!("dispatcher: pid {} on {}", d.pid, d.host),
                };
            }
        }
        None => {
            h.dispatcher = "no dispatcher running: deliveries are queued".into();
            h.dispatcher_warning = true;
        }
    }
    h
}

/// What the process behind a heartbeat is, when it runs on this host: `serve`, or a `console`
/// (which also dispatches unless started with `--no-dispatch`). The heartbeat row does not say,
/// so this reads the process's command line; another host's process is not named.
fn process_role(host: &str, pid: u32) -> Option<&'static str> {
    if host != crate::store::hostname() {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).skip(1).collect();
    Some(if args.contains(&&b"serve"[..]) {
        "serve"
    } else {
        "console"
    })
}

use executor::Executor;
pub(crate) use executor::{count, load_msgs, run_pending};
