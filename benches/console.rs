//! Console benchmark (issue 5, design §5): a database of 1,000,000 items and 5,000,000
//! attempts; time to first frame, key-press-to-frame latency over a scripted key sequence,
//! peak RSS, and frame rate while 5,000 attempts a second stream into the log pane.
//!
//! `cargo bench --bench console [-- --items N --attempts M --db PATH]`
//!
//! The database is generated once (plain SQL inserts, with the store's own schema and
//! triggers) and kept for later runs. The measurement runs in a child process so its peak RSS
//! is the console's alone. The console is driven through `hookops::tui::headless`: the same
//! state, update, loads and drawing as the terminal console, into a 120×40 buffer.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hookops::store::{OpenOptions, Store};
use hookops::tui::headless::Headless;
use hookops::tui::state::Msg;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

const WORKFLOW: &str = r#"
id = "bench"
name = "Console benchmark"
team = "acme"

[[stage]]
id = "dataset"
kind = "dataset"
next = "annotate"

[[stage]]
id = "annotate"
kind = "annotate"
next = "review"

[[stage]]
id = "review"
kind = "review"
on_approve = "export"
on_reject = "annotate"

[[stage]]
id = "export"
kind = "webhook"
url = "http://127.0.0.1:9/export"
on_success = "complete"

[[stage]]
id = "complete"
kind = "complete"
"#;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    if let Some(db) = arg("--measure") {
        measure(Path::new(&db));
        return;
    }
    let items: usize = arg("--items")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let attempts: usize = arg("--attempts")
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000_000);
    let db = arg("--db").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("console-{items}-{attempts}.db"))
    });
    if !db.exists() {
        let t = Instant::now();
        seed(&db, items, attempts);
        println!(
            "generated {} ({items} items, {attempts} attempts, {:.0} MB) in {:.1} s",
            db.display(),
            std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
    } else {
        println!("reusing {}", db.display());
    }
    let status = std::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("--measure")
        .arg(&db)
        .status()
        .expect("run the measurement");
    assert!(status.success(), "measurement failed");
}

/// Writes `items` items (with history) and `attempts` attempts (5 per delivery) straight
/// into a store created by the library, so schema, counters and indexes are the real ones.
fn seed(db: &Path, items: usize, attempts: usize) {
    let env = |_: &str| None;
    let wf = hookops::workflow::parse("bench.toml", WORKFLOW, &env).expect("bench workflow");
    {
        let store = Store::open(db, &OpenOptions::default()).expect("create");
        store
            .apply_workflow(&wf, &Vec::new(), "bench")
            .expect("apply");
    }
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;")
        .expect("pragmas");
    let now = chrono::Utc::now().timestamp_millis();
    let per_delivery = 5;
    let deliveries = attempts.div_ceil(per_delivery).min(items);
    let chunk = 50_000;
    let mut i = 0;
    while i < items {
        conn.execute_batch("BEGIN").expect("begin");
        {
            let mut ins = conn
                .prepare(
                    "INSERT INTO items (id, workflow_id, stage_id, state, name, path, dataset_name, dataset_slug,
                         tags, fingerprint, version, created_at, updated_at, entered_at)
                     VALUES (?1, 'bench', ?2, ?3, ?4, '/', 'bench', 'bench', '[]', '', 2, ?5, ?5, ?5)",
                )
                .expect("prepare");
            let mut content = conn
                .prepare(
                    "INSERT INTO item_content (seq, properties, slots, annotations)
                     VALUES (last_insert_rowid(), '{\"camera\":\"a\"}', '[]', '[]')",
                )
                .expect("prepare");
            let mut hist = conn
                .prepare(
                    "INSERT INTO history (item_seq, item_id, workflow_id, from_stage, to_stage, cause, operator, revision, at)
                     VALUES ((SELECT seq FROM items WHERE id = ?1), ?1, 'bench', ?2, ?3, ?4, 'bench', 1, ?5)",
                )
                .expect("prepare");
            for n in i..(i + chunk).min(items) {
                let id = format!("item-{n:07}");
                // Deliveries belong to the first items: they went through export.
                let (stage, state) = if n < deliveries {
                    if n % 10 == 0 {
                        ("export", "failed")
                    } else {
                        ("complete", "done")
                    }
                } else if n % 3 == 0 {
                    ("dataset", "waiting")
                } else if n % 3 == 1 {
                    ("annotate", "active")
                } else {
                    ("review", "active")
                };
                let t = now - (items - n) as i64 * 10;
                ins.execute(rusqlite::params![
                    id,
                    stage,
                    state,
                    format!("image_{n:07}.jpg"),
                    t
                ])
                .expect("item");
                content.execute([]).expect("item content");
                hist.execute(rusqlite::params![
                    id,
                    Option::<&str>::None,
                    "dataset",
                    "import",
                    t
                ])
                .expect("history");
                if stage != "dataset" {
                    hist.execute(rusqlite::params![id, "dataset", stage, "assign", t + 1])
                        .expect("history");
                }
            }
        }
        conn.execute_batch("COMMIT").expect("commit");
        i += chunk;
    }
    let mut d = 0;
    while d < deliveries {
        conn.execute_batch("BEGIN").expect("begin");
        {
            let mut del = conn
                .prepare(
                    "INSERT INTO deliveries (id, workflow_id, stage_id, item_id, event, trigger, state,
                         item_version, attempts, next_number, last_status, last_error_kind, last_attempt_at, created_at, updated_at)
                     VALUES (?1, 'bench', 'export', ?2, 'stage.webhook', 'route', ?3, 2, ?4, ?5, ?6, ?7, ?8, ?8, ?8)",
                )
                .expect("prepare");
            let mut frozen = conn
                .prepare("INSERT INTO delivery_bodies (seq, body) VALUES (last_insert_rowid(), ?1)")
                .expect("prepare");
            let mut att = conn
                .prepare(
                    "INSERT INTO attempts (delivery_id, number, trigger, counted, started_at, duration_ms, url,
                         request_headers, status, response_headers, response_body, error_kind, error_message)
                     VALUES (?1, ?2, 'scheduled', 1, ?3, 12, 'http://127.0.0.1:9/export', '[]', ?4, '[]', ?5, ?6, ?7)",
                )
                .expect("prepare");
            for n in d..(d + chunk).min(deliveries) {
                let id = format!("msg_{n:032}");
                let failed = n % 10 == 0;
                let t = now - (deliveries - n) as i64 * 50;
                let body =
                    format!("{{\"item\":{{\"name\":\"image_{n:07}.jpg\"}},\"annotations\":[]}}");
                let (state, status, kind) = if failed {
                    ("failed", 503, Some("http_status"))
                } else {
                    ("succeeded", 200, None)
                };
                del.execute(rusqlite::params![
                    id,
                    format!("item-{n:07}"),
                    state,
                    per_delivery as i64,
                    per_delivery as i64 + 1,
                    status,
                    kind,
                    t
                ])
                .expect("delivery");
                frozen.execute([body.as_bytes()]).expect("body");
                for k in 1..=per_delivery {
                    let last = k == per_delivery;
                    let (st, kind, msg, body) = if last && !failed {
                        (200, None, None, "{\"ok\":true}")
                    } else {
                        (
                            503,
                            Some("http_status"),
                            Some("503 Service Unavailable"),
                            "busy",
                        )
                    };
                    att.execute(rusqlite::params![
                        id,
                        k as i64,
                        t + k as i64,
                        st,
                        body.as_bytes(),
                        kind,
                        msg
                    ])
                    .expect("attempt");
                }
            }
        }
        conn.execute_batch("COMMIT").expect("commit");
        d += chunk;
    }
    // The rows were written with plain SQL: the store counts them once.
    Store::open(db, &OpenOptions::default())
        .and_then(|store| store.recount())
        .expect("counters");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
}

fn key(c: char) -> Msg {
    Msg::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

fn code(c: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn measure(db: &Path) {
    // First frame: open the file, load the first view, draw.
    let t = Instant::now();
    let store = Store::open(db, &OpenOptions::default()).expect("open");
    let mut c = Headless::new(store, false, 120, 40);
    c.draw();
    let first = t.elapsed();

    // A scripted walk: workflows → stages → the biggest stage's items, scrolling, paging,
    // sorting, a search, an item, the failed deliveries, a delivery, back out.
    let mut script: Vec<Msg> = vec![code(KeyCode::Enter), key('j'), code(KeyCode::Enter)];
    script.extend((0..40).map(|_| key('j')));
    script.extend((0..20).map(|_| code(KeyCode::PageDown)));
    script.push(key('G'));
    script.push(key('g'));
    script.push(key('s'));
    script.push(key('s'));
    script.push(key('/'));
    script.extend("0004".chars().map(key));
    script.push(code(KeyCode::Enter));
    script.push(code(KeyCode::Esc));
    script.push(code(KeyCode::Enter));
    script.push(code(KeyCode::Esc));
    script.push(key(':'));
    script.extend("deliveries failed".chars().map(key));
    script.push(code(KeyCode::Enter));
    script.extend((0..20).map(|_| key('j')));
    script.push(code(KeyCode::Enter));
    script.extend((0..10).map(|_| key('j')));
    script.push(code(KeyCode::Esc));
    script.push(key(':'));
    script.extend("workflows".chars().map(key));
    script.push(code(KeyCode::Enter));
    let mut frames = Vec::new();
    let mut with_data = Vec::new();
    for m in script {
        let (frame, data) = c.press(m);
        frames.push(frame);
        with_data.push(data);
    }
    let n = frames.len();
    let (p50, p99) = (percentile(&mut frames, 0.5), percentile(&mut frames, 0.99));
    let (d50, d99, dmax) = (
        percentile(&mut with_data, 0.5),
        percentile(&mut with_data, 0.99),
        percentile(&mut with_data, 1.0),
    );

    // Streaming: another connection inserts 5,000 attempts a second; the console polls them
    // (as its watcher does every 100 ms) and draws at most 30 frames a second.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let db = db.to_path_buf();
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).expect("open");
            conn.busy_timeout(Duration::from_secs(5)).expect("busy");
            // Attempt numbers continue after any a previous run streamed into this file: no
            // number is larger than the number of attempt rows ever written, the largest seq.
            // (MAX(number) read all 5,000,000 rows, longer than the 5 s this phase lasts, and
            // the phase measured no streaming at all.)
            let base: i64 = conn
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM attempts", [], |r| {
                    r.get(0)
                })
                .expect("max seq");
            let mut n: i64 = 0;
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // 100 attempts every 20 ms = 5,000 a second.
                let due = start + Duration::from_millis(20 * (n / 100) as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let tx = conn.unchecked_transaction().expect("tx");
                {
                    let mut st = tx
                        .prepare_cached(
                            "INSERT INTO attempts (delivery_id, number, trigger, counted, started_at, duration_ms, url,
                                 request_headers, status) VALUES (?1, ?2, 'manual', 0, ?3, 3, 'http://x', '[]', 200)",
                        )
                        .expect("prepare");
                    for _ in 0..100 {
                        let d = format!("msg_{:032}", n % 1000);
                        st.execute(rusqlite::params![
                            d,
                            base + 1 + n,
                            chrono::Utc::now().timestamp_millis()
                        ])
                        .expect("insert");
                        n += 1;
                    }
                }
                tx.commit().expect("commit");
            }
            n
        })
    };
    let mut last_seq = c.store().attempts_end().expect("seq");
    let start = Instant::now();
    let mut drawn = 0u32;
    let mut ingested = 0usize;
    let mut worst = Duration::ZERO;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut last_poll = Instant::now() - Duration::from_secs(1);
    while start.elapsed() < Duration::from_secs(5) {
        if last_poll.elapsed() >= Duration::from_millis(100) {
            last_poll = Instant::now();
            for (seq, e) in c.store().attempts_after(last_seq, 5000).expect("poll") {
                last_seq = seq;
                ingested += 1;
                c.send(Msg::Attempt(Box::new(e)));
            }
        }
        if last_draw.elapsed() >= Duration::from_millis(33) {
            last_draw = Instant::now();
            worst = worst.max(c.draw());
            drawn += 1;
        } else {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().expect("writer");
    let secs = start.elapsed().as_secs_f64();
    let rss = peak_rss_mb();

    println!();
    println!(
        "console benchmark: 120×40, {} ({n} scripted keys)",
        db.display()
    );
    println!("{:<44} {:>12} {:>10}", "figure", "measured", "target");
    println!(
        "{:<44} {:>12} {:>10}",
        "first frame (open + load + draw)",
        ms(first),
        "< 300 ms"
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "key press → frame, p50",
        ms(p50),
        ""
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "key press → frame, p99",
        ms(p99),
        "< 16 ms"
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "key press → frame with its data, p50",
        ms(d50),
        ""
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "key press → frame with its data, p99",
        ms(d99),
        ""
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "key press → frame with its data, max",
        ms(dmax),
        ""
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "peak RSS",
        format!("{rss:.1} MB"),
        "< 100 MB"
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "frames/s while attempts stream in",
        format!("{:.1}", drawn as f64 / secs),
        "≥ 20"
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "attempts/s written / ingested",
        format!(
            "{:.0} / {:.0}",
            written as f64 / secs,
            ingested as f64 / secs
        ),
        "5000"
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "worst frame while streaming",
        ms(worst),
        ""
    );
}
