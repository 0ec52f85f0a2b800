//! End-to-end tests of the console: the real `hookops` binary in a pseudo-terminal
//! (`portable-pty`), its output read through a terminal emulator (`vt100`), on SQLite files
//! prepared with the CLI and real HTTP receivers on 127.0.0.1.
//!
//! The screen is read by waiting, with a deadline, until what is expected appears; nothing
//! sleeps to synchronise. Each test starts its own console, database and receiver, so they run
//! in parallel.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hookops::receiver::{Receiver, ReceiverOptions};
use portable_pty::{Child, CommandBuilder, MasterPty, PtySize, native_pty_system};

const BIN: &str = env!("CARGO_BIN_EXE_hookops");
/// Debug builds on a busy machine: generous, but a hang still fails.
const DEADLINE: Duration = Duration::from_secs(40);

/// What the reader thread has seen so far.
struct Seen {
    parser: vt100::Parser,
    raw: Vec<u8>,
    closed: bool,
}

/// The console running in a pseudo-terminal.
struct Console {
    child: Box<dyn Child + Send + Sync>,
    master: Box<dyn MasterPty + Send>,
    writer: Box<dyn Write + Send>,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

#[path = "support/pg.rs"]
mod pg;

fn size(cols: u16, rows: u16) -> PtySize {
    PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

fn nz(n: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(n.max(1)).unwrap()
}

impl Console {
    fn start(dir: &Path, args: &[&str], cols: u16, rows: u16) -> Console {
        Console::start_with(dir, args, cols, rows, &[])
    }

    /// [`Console::start`] with these environment variables set.
    fn start_with(
        dir: &Path,
        args: &[&str],
        cols: u16,
        rows: u16,
        env: &[(&str, &str)],
    ) -> Console {
        let pair = native_pty_system().openpty(size(cols, rows)).unwrap();
        let mut cmd = CommandBuilder::new(BIN);
        cmd.args(args);
        cmd.cwd(dir);
        cmd.env("TERM", "xterm-256color");
        // A copy goes through OSC 52 alone, never into the tmux of whoever runs the tests.
        cmd.env_remove("TMUX");
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Nothing from the user's own setup: no config file, no default database.
        cmd.env("HOME", dir);
        cmd.env("XDG_CONFIG_HOME", dir.join("config"));
        cmd.env("XDG_DATA_HOME", dir.join("data"));
        cmd.env_remove("HOOKOPS_DB");
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = pair.master.take_writer().unwrap();
        let seen = Arc::new((
            Mutex::new(Seen {
                parser: vt100::Parser::new(nz(rows), nz(cols), 0),
                raw: Vec::new(),
                closed: false,
            }),
            Condvar::new(),
        ));
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            loop {
                let n = reader.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*s;
                let mut seen = lock.lock().unwrap();
                if n == 0 {
                    seen.closed = true;
                    cv.notify_all();
                    break;
                }
                seen.parser.process(&buf[..n]);
                seen.raw.extend_from_slice(&buf[..n]);
                cv.notify_all();
            }
        });
        Console {
            child,
            master: pair.master,
            writer,
            seen,
        }
    }

    fn screen(&self) -> String {
        self.seen.0.lock().unwrap().parser.screen().contents()
    }

    fn raw(&self) -> Vec<u8> {
        self.seen.0.lock().unwrap().raw.clone()
    }

    /// Waits until `ok` holds for the screen; panics with the screen after the deadline.
    fn wait_until(&self, what: &str, ok: impl Fn(&vt100::Screen) -> bool) -> String {
        let (lock, cv) = &*self.seen;
        let end = Instant::now() + DEADLINE;
        let mut seen = lock.lock().unwrap();
        loop {
            if ok(seen.parser.screen()) {
                return seen.parser.screen().contents();
            }
            let now = Instant::now();
            if now >= end || seen.closed {
                let why = if seen.closed {
                    "the console exited"
                } else {
                    "timed out"
                };
                let screen = seen.parser.screen().contents();
                // Not while holding the lock: the reader thread still needs it.
                drop(seen);
                panic!("{why} waiting for {what}; the screen:\n{screen}");
            }
            seen = cv.wait_timeout(seen, end - now).unwrap().0;
        }
    }

    /// Waits until the screen shows `needle`.
    fn wait_for(&self, needle: &str) -> String {
        self.wait_until(&format!("{needle:?}"), |s| s.contents().contains(needle))
    }

    /// Waits until one line of the screen holds every one of `parts`.
    fn wait_for_line(&self, parts: &[&str]) -> String {
        self.wait_until(&format!("a line with {parts:?}"), |s| {
            s.contents()
                .lines()
                .any(|l| parts.iter().all(|p| l.contains(p)))
        })
    }

    fn send(&mut self, keys: &str) {
        self.writer.write_all(keys.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }

    fn resize(&mut self, cols: u16, rows: u16) {
        self.seen
            .0
            .lock()
            .unwrap()
            .parser
            .screen_mut()
            .set_size(nz(rows), nz(cols));
        self.master.resize(size(cols, rows)).unwrap();
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to end (the deadline applies) and for its last output.
    fn wait_exit(&mut self) -> portable_pty::ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader sees the end of the output once the process is gone.
                let (lock, cv) = &*self.seen;
                let mut seen = lock.lock().unwrap();
                while !seen.closed && Instant::now() < end {
                    seen = cv.wait_timeout(seen, Duration::from_millis(200)).unwrap().0;
                }
                return status;
            }
            assert!(
                Instant::now() < end,
                "the console did not exit:\n{}",
                self.screen()
            );
            // Exit is not signalled through the pty on every platform: poll it.
            let (lock, cv) = &*self.seen;
            let seen = lock.lock().unwrap();
            let _ = cv.wait_timeout(seen, Duration::from_millis(50)).unwrap();
        }
    }

    /// Quits with `q` and checks the terminal was given back: alternate screen left, cursor
    /// shown, exit status 0 (raw mode is restored by the same guard, before the exit).
    fn quit_and_check_restored(&mut self) {
        self.send("q");
        let status = self.wait_exit();
        assert!(status.success(), "exit status {status:?}");
        let raw = self.raw();
        let entered = find_last(&raw, b"\x1b[?1049h")
            .expect("the console never entered the alternate screen");
        let tail = &raw[entered..];
        assert!(
            find_last(tail, b"\x1b[?1049l").is_some(),
            "the alternate screen was not left"
        );
        assert!(
            find_last(tail, b"\x1b[?25h").is_some(),
            "the cursor was not shown again"
        );
        assert!(
            find_last(tail, b"\x1b[?2004l").is_some(),
            "bracketed paste was not turned off"
        );
        let seen = self.seen.0.lock().unwrap();
        let screen = seen.parser.screen();
        assert!(!screen.alternate_screen(), "still on the alternate screen");
        assert!(!screen.hide_cursor(), "the cursor is still hidden");
        assert!(!screen.bracketed_paste(), "bracketed paste is still on");
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Preparing a database with the CLI
// ---------------------------------------------------------------------------------------------

/// Runs a CLI command on `db` (a file or a postgres:// URL) and returns its stdout; it must
/// succeed.
fn cli(db: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(["--operator", "e2e"])
        .args(args)
        .env_remove("HOOKOPS_DB")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hookops {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A database with workflow `e2e`: `dataset` (waiting for assignment) → webhook `hook`
/// (one attempt, to `url`) → `done`; and these `(id, name)` items in the dataset stage.
fn prepare(dir: &Path, url: &str, items: &[(&str, &str)]) -> PathBuf {
    let db = dir.join("e2e.db");
    prepare_at(dir, db.as_os_str(), url, items);
    db
}

/// [`prepare`] into the store `db`, a file or a postgres:// URL.
fn prepare_at(dir: &Path, db: &std::ffi::OsStr, url: &str, items: &[(&str, &str)]) {
    let wf = dir.join("wf.toml");
    std::fs::write(
        &wf,
        format!(
            r#"id = "e2e"
name = "End to end"
team = "qa"

[[stage]]
id = "dataset"
name = "Incoming images"
kind = "dataset"
next = "hook"

[[stage]]
id = "hook"
name = "Notify"
kind = "webhook"
url = "{url}"
max_attempts = 1
timeout = "5s"
on_success = "done"

[[stage]]
id = "done"
name = "Done"
kind = "complete"
"#
        ),
    )
    .unwrap();
    cli(db, &["workflow", "apply", wf.to_str().unwrap()]);
    let lines: String = items
        .iter()
        .map(|(id, name)| serde_json::json!({"id": id, "name": name}).to_string() + "\n")
        .collect();
    let file = dir.join("items.jsonl");
    std::fs::write(&file, lines).unwrap();
    cli(
        db,
        &[
            "item",
            "import",
            "--workflow",
            "e2e",
            file.to_str().unwrap(),
        ],
    );
}

/// How many rows of `item list` (ID NAME WORKFLOW STAGE STATE SINCE) are in `stage` and `state`.
fn in_stage(list: &str, stage: &str, state: &str) -> usize {
    list.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|r| r.get(3) == Some(&stage) && r.get(4) == Some(&state))
        .count()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

const ITEMS: &[(&str, &str)] = &[
    ("it-1", "alpha.jpg"),
    ("it-2", "beta.jpg"),
    ("it-3", "gamma.jpg"),
];

// ---------------------------------------------------------------------------------------------
// (a) + (b): assign through the picker, watch the attempts, re-fire after a fix, quit
// ---------------------------------------------------------------------------------------------

/// Where the end-to-end test keeps its store.
enum Backend {
    Sqlite,
    Postgres,
}

fn assign_watch_refire_quit(cols: u16, rows: u16, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let receiver = rt
        .block_on(Receiver::start(ReceiverOptions {
            script: "/hook=500".parse().unwrap(),
            ..ReceiverOptions::default()
        }))
        .unwrap();
    let db: std::ffi::OsString = match backend {
        Backend::Sqlite => dir.path().join("e2e.db").into(),
        Backend::Postgres => pg::cluster().database().into(),
    };
    prepare_at(dir.path(), &db, &receiver.url("/hook"), ITEMS);
    let mut c = Console::start(
        dir.path(),
        &["--db", db.to_str().unwrap(), "--operator", "e2e"],
        cols,
        rows,
    );

    // Workflows → stages: the dataset stage says it waits for an operator.
    c.wait_for_line(&["e2e", "End to end"]);
    c.wait_for("dispatcher: this process");
    c.send("\r");
    c.wait_for("stages · e2e");
    // At 80 columns the status column may be cut after "▶ 3 to assign".
    let waiting = if cols >= 120 {
        "▶ 3 to assign (a)"
    } else {
        "▶ 3 to assign"
    };
    c.wait_for_line(&["Incoming", "dataset", waiting]);

    // Items of the dataset stage; select two with Space.
    c.send("\r");
    c.wait_for("items · e2e/dataset");
    c.wait_for("gamma.jpg");
    c.send(" ");
    c.wait_for("1 selected");
    c.send(" ");
    c.wait_for("2 selected");

    // `a`: the picker narrows as we type; Enter picks; the dialog starts on Cancel.
    c.send("a");
    c.wait_for("assign 2 item(s) to stage");
    c.send("ho");
    c.wait_until("the picker narrowed to hook", |s| {
        let t = s.contents();
        t.contains("▶ hook") && !t.contains("dataset  (dataset)")
    });
    c.send("\r");
    // The dialog names both items (issue 19).
    c.wait_for("Assign 2 items to stage hook");
    c.wait_for("alpha.jpg (it-1)");
    c.wait_for("(it-2)?");
    c.wait_for("▶ Cancel ◀");
    c.send("\t");
    c.wait_for("▶ OK ◀");
    c.send("\r");

    // The log pane shows both attempts failing (max_attempts 1: final at once).
    // The answer names each item it moved.
    c.wait_for("assigned to hook: it-1, it-2");
    c.wait_for_line(&["✗ 500", "hook", "alpha.jpg", "#1/1"]);
    c.wait_for_line(&["✗ 500", "hook", "beta.jpg", "#1/1"]);
    assert!(receiver.count() >= 2);

    // The failed deliveries, by command.
    c.send(":deliveries failed\r");
    c.wait_for("deliveries · failed");
    c.wait_for_line(&["✗ failed", "hook", "✗ 500"]);
    c.wait_until("both failed deliveries listed", |s| {
        s.contents().matches("✗ failed").count() >= 2
    });

    // Fix the receiver, re-fire the delivery under the cursor through its dialog.
    receiver.set_script("*=ok".parse().unwrap());
    c.send("r");
    c.wait_for("Re-fire delivery msg_");
    c.wait_for("▶ Cancel ◀");
    c.send("\t");
    c.wait_for("▶ OK ◀");
    c.send("\r");
    c.wait_for("re-fired: msg_");
    c.wait_for_line(&["✓ 200", "hook", "→ done"]);

    // `y` copies the id under the cursor with OSC 52 and says so.
    c.send("y");
    c.wait_for("copied msg_");
    assert!(
        contains(&c.raw(), b"\x1b]52;c;bXNnX"),
        "no OSC 52 copy of a msg_ id"
    );

    // The store agrees: one item went through, one is still failed, one never left.
    let list = cli(&db, &["item", "list", "--workflow", "e2e"]);
    assert_eq!(in_stage(&list, "done", "done"), 1, "{list}");
    assert_eq!(in_stage(&list, "hook", "failed"), 1, "{list}");
    assert_eq!(in_stage(&list, "dataset", "waiting"), 1, "{list}");

    c.quit_and_check_restored();
    rt.block_on(receiver.shutdown());
}

#[test]
fn assign_watch_and_refire_at_120x40() {
    assign_watch_refire_quit(120, 40, Backend::Sqlite);
}

#[test]
fn assign_watch_and_refire_at_80x24() {
    assign_watch_refire_quit(80, 24, Backend::Sqlite);
}

/// The same, with the store in PostgreSQL (design §7: every front end works on it unchanged).
#[test]
fn assign_watch_and_refire_on_postgresql() {
    assign_watch_refire_quit(120, 40, Backend::Postgres);
}

// ---------------------------------------------------------------------------------------------
// (c), (d): sizes
// ---------------------------------------------------------------------------------------------

/// Issue 18: on `:failures`, `R` replays and `r` re-fires the whole group under the cursor
/// (its members only, after the typed count), and `c` cancels the group's open retries (none
/// here, and it says so).
#[test]
fn failure_groups_are_replayed_and_refired_whole_from_the_failures_view() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let receiver = rt
        .block_on(Receiver::start(ReceiverOptions {
            script: "/hook=500".parse().unwrap(),
            ..ReceiverOptions::default()
        }))
        .unwrap();
    let items = [
        ("it-1", "alpha.jpg"),
        ("it-2", "beta.jpg"),
        ("it-3", "gamma.jpg"),
    ];
    let db = prepare(dir.path(), &receiver.url("/hook"), &items);
    let mut c = Console::start(
        dir.path(),
        &["--db", db.to_str().unwrap(), "--operator", "e2e"],
        120,
        40,
    );
    c.wait_for("dispatcher: this process");
    let assign = |ids: &[&str]| {
        let mut args = vec!["assign", "--workflow", "e2e", "--stage", "hook"];
        args.extend(ids);
        cli(&db, &args);
    };
    // Two causes: 500 for it-1 and it-2, then 400 for it-3.
    assign(&["it-1", "it-2"]);
    c.wait_for_line(&["✗ 500", "hook", "alpha.jpg", "#1/1"]);
    c.wait_for_line(&["✗ 500", "hook", "beta.jpg", "#1/1"]);
    receiver.set_script("/hook=400".parse().unwrap());
    assign(&["it-3"]);
    c.wait_for_line(&["✗ 400", "hook", "gamma.jpg", "#1/1"]);

    c.send(":failures\r");
    c.wait_for("failures by cause");
    c.wait_for_line(&["▶2", "hook", "✗ 500", "500 Internal Server Error"]);
    c.wait_for_line(&["1", "hook", "✗ 400", "400 Bad Request"]);

    // R: replay the 500 group, after typing its count; the items stay where they are.
    receiver.set_script("*=ok".parse().unwrap());
    let before = receiver.count();
    c.send("R");
    c.wait_for("Replay 2 failed deliveries");
    c.send("2\r");
    c.wait_for("replayed");
    assert!(
        rt.block_on(receiver.wait_for(before + 2, std::time::Duration::from_secs(10))),
        "two replays reach the receiver"
    );
    let list = cli(&db, &["item", "list", "--workflow", "e2e"]);
    assert_eq!(in_stage(&list, "hook", "failed"), 3, "{list}");

    // r: re-fire the same group; only its two items go through, the 400 stays failed.
    c.send("r");
    c.wait_for("Re-fire 2 failed deliveries");
    c.send("2\r");
    c.wait_for("re-fired 2 delivery(ies)");
    c.wait_for_line(&["✓ 200", "hook", "alpha.jpg", "→ done"]);
    c.wait_for_line(&["✓ 200", "hook", "beta.jpg", "→ done"]);
    let list = cli(&db, &["item", "list", "--workflow", "e2e"]);
    assert_eq!(in_stage(&list, "done", "done"), 2, "{list}");
    assert_eq!(in_stage(&list, "hook", "failed"), 1, "{list}");

    // The group is gone from the view; c on the 400 group finds no open retries.
    c.wait_until("only the 400 group is left", |s| {
        let t = s.contents();
        t.contains("failures by cause · all workflows · row 1 of 1")
            && t.contains("▶1     1     hook  ✗ 400")
    });
    c.send("c");
    c.wait_for("no open deliveries match: nothing to cancel");

    // Audited as the console's, with the ids.
    let audit = cli(&db, &["audit", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let mine: Vec<(&str, &str, i64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["via"] == "console")
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
                r["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(mine.contains(&("replay", "done", 2)), "{audit}");
    assert!(mine.contains(&("refire", "done", 2)), "{audit}");

    c.quit_and_check_restored();
    rt.block_on(receiver.shutdown());
}

#[test]
fn a_tiny_terminal_shows_a_notice_and_keeps_running_until_q() {
    let dir = tempfile::tempdir().unwrap();
    let db = prepare(dir.path(), "http://127.0.0.1:9/hook", ITEMS);
    let mut c = Console::start(
        dir.path(),
        &["--db", db.to_str().unwrap(), "--no-dispatch"],
        10,
        3,
    );
    // The wording shrinks to fit; the size it needs is never cut off.
    c.wait_until("the size notice", |s| {
        s.contents()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains("larger (needs 50×12)")
    });
    assert!(c.running(), "the console exited in a 10×3 terminal");
    // Keys still work: open the help (invisible at this size), scroll it (j), close it with
    // any other key, quit.
    c.send("?");
    c.send("j");
    c.send("x");
    assert!(c.running());
    c.quit_and_check_restored();
}

/// `item import`'s progress line on a terminal narrower than it: the line is cut to the width,
/// since `\r` goes back only to the start of the last screen line and each redraw of a
/// wrapped line would leave its first part behind (it scrolled an 80-column terminal).
#[test]
fn import_progress_fits_a_narrow_terminal_and_is_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let db = prepare(dir.path(), "http://127.0.0.1:9/hook", ITEMS);
    let lines: String = (0..20_000)
        .map(|i| {
            serde_json::json!({"id": format!("n-{i}"), "name": format!("narrow {i}")}).to_string()
                + "\n"
        })
        .collect();
    let file = dir.path().join("narrow.jsonl");
    std::fs::write(&file, lines).unwrap();
    let (cols, rows) = (30, 8);
    let mut c = Console::start(
        dir.path(),
        &[
            "--db",
            db.to_str().unwrap(),
            "item",
            "import",
            file.to_str().unwrap(),
            "--workflow",
            "e2e",
        ],
        cols,
        rows,
    );
    let status = c.wait_exit();
    assert!(status.success(), "{status:?}\n{}", c.screen());
    // Every status line drawn: the text after each `\r` up to the next one (the final report
    // follows the last, after a newline).
    let raw = String::from_utf8_lossy(&c.raw()).into_owned();
    let drawn: Vec<&str> = raw
        .split('\r')
        .map(|s| s.trim_start_matches("\x1b[K"))
        .filter(|s| s.starts_with("checking") || s.starts_with("importing"))
        .collect();
    assert!(!drawn.is_empty(), "no progress was drawn: {raw:?}");
    for line in &drawn {
        let text = line.split(['\x1b', '\n']).next().unwrap();
        assert!(
            text.chars().count() < usize::from(cols),
            "a progress line of {} characters on a {cols}-column terminal: {text:?}",
            text.chars().count()
        );
    }
    let screen = c.screen();
    assert!(screen.contains("imported 20000"), "{screen}");
    assert!(
        !screen.contains("checking") && !screen.contains("importing"),
        "progress left on the screen:\n{screen}"
    );
}

#[test]
fn resizing_redraws_and_never_kills_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let db = prepare(dir.path(), "http://127.0.0.1:9/hook", ITEMS);
    let mut c = Console::start(
        dir.path(),
        &["--db", db.to_str().unwrap(), "--no-dispatch"],
        80,
        24,
    );
    c.wait_for_line(&["e2e", "End to end"]);
    c.resize(30, 8);
    c.wait_until("the size notice", |s| {
        s.contents()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains("make the terminal larger")
    });
    assert!(c.running());
    c.resize(1, 1);
    c.resize(300, 3);
    c.wait_until("the size notice on one wide line", |s| {
        s.contents()
            .contains("make the terminal larger (needs 50×12)")
    });
    c.resize(120, 40);
    c.wait_for_line(&["e2e", "End to end"]);
    c.wait_for("no attempts yet");
    // The layout follows the new size: the box spans the new width.
    c.wait_until("a 120-column frame", |s| {
        s.contents()
            .lines()
            .any(|l| l.starts_with('└') && l.chars().count() == 120)
    });
    assert!(c.running());
    c.send("\r");
    c.wait_for("stages · e2e");
    c.quit_and_check_restored();
}

// ---------------------------------------------------------------------------------------------
// (e) read-only
// ---------------------------------------------------------------------------------------------

#[test]
fn read_only_hides_action_hints_and_refuses_actions() {
    let dir = tempfile::tempdir().unwrap();
    let db = prepare(dir.path(), "http://127.0.0.1:9/hook", ITEMS);
    // The same view without --read-only shows the actions.
    let mut c = Console::start(
        dir.path(),
        &["--db", db.to_str().unwrap(), "--no-dispatch"],
        200,
        30,
    );
    c.wait_for_line(&["e2e", "End to end"]);
    c.send("\r");
    c.wait_for_line(&["<a> assign to stage", "<t> test webhook"]);
    c.quit_and_check_restored();

    let mut c = Console::start(
        dir.path(),
        &["--db", db.to_str().unwrap(), "--read-only"],
        200,
        30,
    );
    c.wait_for("[read-only]");
    c.wait_for_line(&["e2e", "End to end"]);
    c.send("\r");
    let screen = c.wait_for("stages · e2e");
    let footer = screen.lines().last().unwrap_or("").to_string();
    assert!(footer.contains("<?> help"), "{footer}");
    for hint in [
        "<a>",
        "<t>",
        "<p>",
        "<F>",
        "assign",
        "test webhook",
        "pause",
    ] {
        assert!(
            !footer.contains(hint),
            "{hint} in the read-only footer: {footer}"
        );
    }
    c.send("a");
    c.wait_for("read-only console: actions are disabled");
    c.send("?");
    c.wait_for("read-only: actions are hidden");
    // Esc closes it; wait, so that Esc and the next key are not read as one Alt-key.
    c.send("\x1b");
    c.wait_until("the help to close", |s| {
        !s.contents().contains("read-only: actions are hidden")
    });
    c.quit_and_check_restored();
    // Nothing was written: no item left the dataset stage.
    let list = cli(&db, &["item", "list", "--workflow", "e2e"]);
    assert_eq!(in_stage(&list, "dataset", "waiting"), 3, "{list}");
}

// ---------------------------------------------------------------------------------------------
// (f) untrusted text
// ---------------------------------------------------------------------------------------------

/// An item name that tries: OSC 52 (clipboard), clear screen, an OSC 8 link, C1 CSI.
const EVIL_NAME: &str =
    "evil\x1b]52;c;ZXZpbA==\x07name\x1b[2J\x1b]8;;http://x\x1b\\link\u{9b}31m.jpg";
const EVIL_BODY: &str = "BODY\x1b]52;c;ZXZpbA==\x07\x1b[2J\x1b]8;;http://x\x1b\\\u{9b}31mEND";

/// A loopback HTTP server that answers every request 500 with [`EVIL_BODY`] (the scripted
/// receiver only sends fixed bodies).
fn hostile_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let answer = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\nx-evil: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{EVIL_BODY}",
                    "head\u{9b}31mer",
                    EVIL_BODY.len()
                );
                let _ = stream.write_all(answer.as_bytes());
            });
        }
    });
    format!("http://{addr}/hook")
}

#[test]
fn untrusted_names_and_bodies_never_reach_the_terminal_as_escape_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let url = hostile_server();
    let db = prepare(
        dir.path(),
        &url,
        &[("it-evil", EVIL_NAME), ("it-2", "plain.jpg")],
    );
    // Queued before the console starts; its dispatcher sends it.
    cli(
        &db,
        &["assign", "--workflow", "e2e", "--stage", "hook", "it-evil"],
    );
    let mut c = Console::start(dir.path(), &["--db", db.to_str().unwrap()], 120, 40);
    c.wait_for_line(&["✗ 500", "evilnamelink.jpg"]);
    c.send("\r");
    c.wait_for("stages · e2e");
    c.send(":items\r");
    c.wait_for_line(&["evilnamelink.jpg", "it-evil"]);
    c.send(":deliveries failed\r");
    c.wait_for("deliveries · failed");
    c.wait_for_line(&["✗ failed", "evilnamelink.jpg", "✗ 500"]);
    c.send("\r");
    c.wait_for("delivery · msg_");
    // The response, at the document's end: its body shown as received (it is not JSON),
    // cleaned.
    c.send("G");
    c.wait_for("not JSON, as received");
    c.wait_for("BODYEND");
    c.wait_for("x-evil: header");
    c.quit_and_check_restored();

    let raw = c.raw();
    for (what, bad) in [
        ("OSC 52", &b"\x1b]52"[..]),
        ("the OSC 52 payload", b"ZXZpbA"),
        ("OSC 8", b"\x1b]8;"),
        ("the OSC 8 target", b"http://x"),
        ("C1 CSI", "\u{9b}".as_bytes()),
        ("clear screen", b"\x1b[2J"),
    ] {
        assert!(!contains(&raw, bad), "{what} reached the terminal");
    }
}

// ---------------------------------------------------------------------------------------------
// (g) a fast typist: an action touches only what the screen showed and the dialog named
// ---------------------------------------------------------------------------------------------

/// Items in `stage` of workflow `e2e`, by id.
fn ids_in(store: &hookops::store::Store, stage: &str) -> std::collections::BTreeSet<String> {
    let filter = hookops::store::ItemFilter {
        workflow: Some(hookops::model::WorkflowId::new("e2e")),
        stage: Some(hookops::model::StageId::new(stage)),
        state: None,
        search: None,
        order: hookops::store::ItemOrder::Waiting,
    };
    store
        .list_items(&filter, None, 100_000)
        .unwrap()
        .into_iter()
        .map(|r| r.id.to_string())
        .collect()
}

/// Issue 19: `/`, a filter, Enter, Space, Space, `a`, a stage, Tab, Enter sent in one write,
/// as a fast typist or `tmux send-keys` sends them, while deliveries flow. Before the fix
/// about one run in three selected a row of the unfiltered list (the filtered page had not
/// arrived) and assigned an item that was never visible under the filter. Each run must move
/// exactly its two filtered items, and the console must name them.
#[test]
fn fast_keys_act_only_on_the_filtered_rows_while_deliveries_flow() {
    const RUNS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let receiver = rt
        .block_on(Receiver::start(ReceiverOptions {
            script: "*=slow:100ms".parse().unwrap(),
            ..ReceiverOptions::default()
        }))
        .unwrap();
    // Import order is the order of `:items` across stages: decoys on top, then each run's
    // two targets, then the fillers that keep the dispatcher busy.
    let mut items: Vec<(String, String)> = (0..10)
        .map(|i| (format!("d{i:02}"), format!("decoy-{i:02}.jpg")))
        .collect();
    for r in 0..RUNS {
        items.push((format!("t{r:02}a"), format!("run{r:02}-a.jpg")));
        items.push((format!("t{r:02}b"), format!("run{r:02}-b.jpg")));
    }
    let fillers: Vec<String> = (0..1200).map(|i| format!("f{i:04}")).collect();
    items.extend(
        fillers
            .iter()
            .map(|f| (f.clone(), format!("filler-{f}.jpg"))),
    );
    let refs: Vec<(&str, &str)> = items
        .iter()
        .map(|(i, n)| (i.as_str(), n.as_str()))
        .collect();
    let db = prepare(dir.path(), &receiver.url("/hook"), &refs);
    // Queued before the console starts: its dispatcher (2 slots, 100 ms a request) delivers
    // them for the whole test, so the list reloads under the keys.
    let mut args = vec!["assign", "--workflow", "e2e", "--stage", "hook"];
    args.extend(fillers.iter().map(|f| f.as_str()));
    cli(&db, &args);
    let store = hookops::store::Store::open(
        &db,
        &hookops::store::OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let decoys: std::collections::BTreeSet<String> = (0..10).map(|i| format!("d{i:02}")).collect();

    let mut c = Console::start(
        dir.path(),
        &[
            "--db",
            db.to_str().unwrap(),
            "--operator",
            "e2e",
            "--concurrency",
            "2",
        ],
        120,
        40,
    );
    c.wait_for_line(&["e2e", "End to end"]);
    c.wait_for("dispatcher: this process");
    c.send("\r");
    c.wait_for("stages · e2e");
    c.send(":items\r");
    c.wait_for("decoy-00.jpg");
    let sent_before = receiver.count();
    let mut previous = String::new();
    for r in 0..RUNS {
        let filter = format!("run{r:02}-");
        // Clear the last filter with Backspace (Esc then `/` would read as Alt-/).
        let keys = format!(
            "/{}{filter}\r  ahook\r\t\r",
            "\x7f".repeat(previous.chars().count())
        );
        c.send(&keys);
        let (a, b) = (format!("t{r:02}a"), format!("t{r:02}b"));
        // The console names what it did, per id.
        c.wait_for_line(&["assigned", &a, &b]);
        let dataset = ids_in(&store, "dataset");
        assert!(
            !dataset.contains(&a) && !dataset.contains(&b),
            "run {r}: a filtered item stayed waiting\n{}",
            c.screen()
        );
        let moved: Vec<&String> = decoys.difference(&dataset).collect();
        assert!(
            moved.is_empty(),
            "run {r}: items the filter hid were moved: {moved:?}\n{}",
            c.screen()
        );
        for later in r + 1..RUNS {
            for id in [format!("t{later:02}a"), format!("t{later:02}b")] {
                assert!(
                    dataset.contains(&id),
                    "run {r}: {id} of a later run was moved\n{}",
                    c.screen()
                );
            }
        }
        previous = filter;
    }
    // A pasted id (bracketed paste) goes into the filter line, whole.
    c.send("/");
    c.send(&"\x7f".repeat(previous.chars().count()));
    c.send("\x1b[200~t29b\x1b[201~\r");
    c.wait_for("items · e2e · /t29b");
    c.wait_for_line(&["run29-b.jpg", "t29b"]);
    c.wait_until("only the pasted id listed", |s| {
        let t = s.contents();
        !t.contains("decoy-00.jpg") && !t.contains("run29-a.jpg")
    });
    // The deliveries really flowed under the keys.
    assert!(
        receiver.count() > sent_before,
        "no delivery was sent during the runs"
    );
    c.quit_and_check_restored();
    rt.block_on(receiver.shutdown());
}

// ---------------------------------------------------------------------------------------------
// (h) --mouse: clicks and the wheel (SGR mouse reports, as xterm and tmux send them)
// ---------------------------------------------------------------------------------------------

/// The 1-based screen row of the first line holding `needle`.
fn row_of(screen: &str, needle: &str) -> u16 {
    screen
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} on the screen:\n{screen}")) as u16
        + 1
}

#[test]
fn with_mouse_a_double_click_opens_a_row_and_the_wheel_scrolls() {
    let dir = tempfile::tempdir().unwrap();
    let many: Vec<(String, String)> = (0..60)
        .map(|i| (format!("m-{i:02}"), format!("photo-{i:02}.jpg")))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let db = prepare(dir.path(), "http://127.0.0.1:9/hook", &refs);
    let mut c = Console::start(
        dir.path(),
        &["--db", db.to_str().unwrap(), "--no-dispatch", "--mouse"],
        120,
        40,
    );
    let screen = c.wait_for_line(&["e2e", "End to end"]);
    assert!(
        contains(&c.raw(), b"\x1b[?1000h"),
        "mouse capture was not turned on"
    );
    let click = |c: &mut Console, row: u16| {
        c.send(&format!("\x1b[<0;10;{row}M\x1b[<0;10;{row}m"));
    };
    // Double-click the workflow: its stages.
    let r = row_of(&screen, "End to end");
    click(&mut c, r);
    click(&mut c, r);
    let screen = c.wait_for("stages · e2e");
    // Double-click the dataset stage: its items.
    let screen = if screen.contains("Incoming images") {
        screen
    } else {
        c.wait_for("Incoming images")
    };
    let r = row_of(&screen, "Incoming images");
    click(&mut c, r);
    click(&mut c, r);
    c.wait_for("items · e2e/dataset");
    let screen = c.wait_for("photo-00.jpg");
    // The wheel moves down the list (three rows a notch), past what fits on the screen.
    let r = row_of(&screen, "photo-00.jpg");
    for _ in 0..15 {
        c.send(&format!("\x1b[<65;10;{r}M"));
    }
    c.wait_for("photo-45.jpg");
    // A single click selects the row under it: Space then marks that row.
    let screen = c.wait_for_line(&["▶", "photo-45.jpg"]);
    let r = row_of(&screen, "photo-40.jpg");
    click(&mut c, r);
    c.wait_for_line(&["▶", "photo-40.jpg"]);
    c.send(" ");
    c.wait_for_line(&["●", "photo-40.jpg"]);
    c.quit_and_check_restored();
    assert!(
        find_last(&c.raw(), b"\x1b[?1000l").is_some(),
        "mouse capture was not turned off"
    );
}

// ---------------------------------------------------------------------------------------------
// The payload viewer: a 64 KiB response, OSC 52 copies, the $PAGER round trip
// ---------------------------------------------------------------------------------------------

/// A loopback HTTP server that answers every request 200 with `body` as JSON.
fn json_server(body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut request = vec![0u8; length];
                let _ = reader.read_exact(&mut request);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body.as_bytes());
            });
        }
    });
    format!("http://{addr}/hook")
}

/// The text of the last OSC 52 copy in `raw`, decoded.
fn last_copy(raw: &[u8]) -> String {
    use base64::Engine as _;
    let start = find_last(raw, b"\x1b]52;c;").expect("no OSC 52 sequence") + 7;
    let end = start + raw[start..].iter().position(|b| *b == 0x07).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&raw[start..end])
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn the_viewer_scrolls_a_64_kib_body_copies_with_osc_52_and_opens_the_pager() {
    let dir = tempfile::tempdir().unwrap();
    // Nearly 64 KiB of JSON (all of it is kept), its last element marked.
    let mut parts: Vec<String> = (0..5900).map(|i| format!("{{\"n\":{i}}}")).collect();
    parts.push("{\"last\":\"THE-END\"}".into());
    let body = format!("[{}]", parts.join(","));
    assert!(
        body.len() > 60 * 1024 && body.len() < 64 * 1024,
        "{}",
        body.len()
    );
    let url = json_server(body.clone());
    let db = prepare(dir.path(), &url, ITEMS);
    let pager_out = dir.path().join("pager.txt");
    // A pager that keeps what it was given, says so, and waits for a key from the terminal.
    let pager = format!(
        "cat > '{}'; echo PAGER-IS-WAITING; read answer < /dev/tty",
        pager_out.display()
    );
    let mut c = Console::start_with(
        dir.path(),
        &["--db", db.to_str().unwrap(), "--operator", "e2e"],
        100,
        30,
        &[("PAGER", pager.as_str())],
    );
    c.wait_for_line(&["e2e", "End to end"]);
    cli(
        &db,
        &["assign", "--workflow", "e2e", "--stage", "hook", "it-1"],
    );
    c.wait_for_line(&["✓ 200", "hook", "alpha.jpg"]);
    c.send(":deliveries\r");
    c.wait_for_line(&["✓ succeeded", "hook", "alpha.jpg"]);
    c.send("\r");
    c.wait_for("delivery · msg_");
    c.wait_for("request body · ");
    // The whole body, pretty-printed, to its last line.
    c.send("G");
    c.wait_for("\"last\": \"THE-END\"");
    c.wait_until("the position at the end", |s| {
        s.contents().lines().any(|l| {
            l.contains("lines ") && l.contains(" of ") && {
                let nums: Vec<&str> = l
                    .split(|ch: char| !ch.is_ascii_digit())
                    .filter(|t| !t.is_empty())
                    .collect();
                nums.len() >= 3 && nums[nums.len() - 2] == nums[nums.len() - 1]
            }
        })
    });

    // B copies the response body, b the request body: OSC 52 with the exact text.
    c.send("B");
    c.wait_for("copied the newest response body");
    assert_eq!(last_copy(&c.raw()), body);
    c.send("b");
    c.wait_for("copied the request body");
    let request: serde_json::Value = serde_json::from_str(&last_copy(&c.raw())).unwrap();
    assert_eq!(
        request["item"]["source_info"]["item_id"], "it-1",
        "{request}"
    );
    // u copies a curl command, secrets masked.
    c.send("u");
    c.wait_for("copied a curl command (secrets masked)");
    let curl = last_copy(&c.raw());
    assert!(
        curl.contains("curl -sS -X POST") && curl.contains("webhook-id: msg_"),
        "{curl}"
    );

    // o: the pager gets the terminal (the console's key reader waits), then the screen is back.
    c.send("o");
    c.wait_until("the pager on the main screen", |s| {
        !s.alternate_screen() && s.contents().contains("PAGER-IS-WAITING")
    });
    c.send("\r");
    c.wait_until("the console back on its screen", |s| {
        s.alternate_screen() && s.contents().contains("delivery · msg_")
    });
    let paged = std::fs::read_to_string(&pager_out).unwrap();
    assert!(paged.contains("\"last\": \"THE-END\""), "{}", &paged[..200]);
    assert!(paged.contains("request body · "));
    // Keys work again: back to the list.
    c.send("\x1b");
    c.wait_for("deliveries · row 1 of");
    c.quit_and_check_restored();
}
