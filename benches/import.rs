//! The import benchmark behind README's numbers (issue 3).
//!
//! `cargo bench --bench import [-- --items N --assign M]` (defaults 1,000,000 and 100,000):
//!
//! 1. generates N small plain items as JSON Lines in memory and parses them
//!    (`hookops::import::parse_jsonl`);
//! 2. a same-run baseline: the same rows inserted with raw rusqlite into a plain table, one
//!    transaction per 1000 rows, `synchronous=FULL` like the store;
//! 3. imports them into a fresh database through `Store::import_items`;
//! 4. bulk-assigns M items from the dataset stage to an annotate stage (`Store::assign`).
//!
//! During 3 and 4 a probe thread on a second connection runs a tiny write transaction
//! (`BEGIN IMMEDIATE; UPDATE settings …; COMMIT`) over and over and records its worst wait for
//! the write lock; the store's own figure is `Store::writer_stats` (longest transaction).
//! The machines are shared and noisy, so ratios against the baseline matter more than the
//! absolute figures; nothing is asserted.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hookops::model::{ItemId, NewItem, StageId, WorkflowId};
use hookops::store::{AssignTarget, OpenOptions, Store};
use rusqlite::Connection;

const WORKFLOW: &str = r#"
id = "bench"
name = "Import benchmark"
team = "bench"

[[stage]]
id = "dataset"
kind = "dataset"
next = "check"

# A webhook stage right after the dataset stage: imported items wait to be assigned.
[[stage]]
id = "check"
kind = "webhook"
url = "http://127.0.0.1:9/check"
on_success = "annotate"

[[stage]]
id = "annotate"
kind = "annotate"
next = "done"

[[stage]]
id = "done"
kind = "complete"
"#;

struct Args {
    items: usize,
    assign: usize,
}

fn args() -> Args {
    let mut a = Args {
        items: 1_000_000,
        assign: 100_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> usize {
            let v = it.next().unwrap_or_default().replace('_', "");
            v.parse()
                .unwrap_or_else(|_| panic!("{name} needs a number, not `{v}`"))
        };
        match arg.as_str() {
            "--items" => a.items = number("--items"),
            "--assign" => a.assign = number("--assign"),
            // cargo bench passes --bench; libtest-style filters are not used here.
            _ => {}
        }
    }
    a.assign = a.assign.min(a.items);
    a
}

fn jsonl(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 120);
    for i in 0..n {
        writeln!(
            out,
            r#"{{"id":"item-{i:08}","name":"img_{i:08}.jpg","path":"/line-{}","tags":["t{}"],"properties":{{"camera":"cam-{}"}}}}"#,
            i % 10,
            i % 7,
            i % 3
        )
        .expect("writing to a Vec cannot fail");
    }
    out
}

/// A connection that keeps asking for the write lock and records how long it had to wait.
struct Probe {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<ProbeResult>,
}

#[derive(Debug, Default)]
struct ProbeResult {
    probes: u64,
    worst_wait: Duration,
    worst_txn: Duration,
}

impl Probe {
    fn start(path: &std::path::Path) -> Probe {
        let mut conn = Connection::open(path).expect("probe connection");
        // A fine-grained busy handler: SQLite's default one sleeps in growing steps (up to
        // 100 ms), which would measure its own back-off rather than the lock hold.
        conn.busy_handler(Some(|_n: i32| {
            thread::sleep(Duration::from_micros(250));
            true
        }))
        .expect("busy handler");
        // The probe measures waiting, not its own fsync.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .expect("pragma");
        conn.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES ('bench_probe', '0')",
            [],
        )
        .expect("probe row");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut r = ProbeResult::default();
            while !flag.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                conn.execute_batch("BEGIN IMMEDIATE").expect("probe begin");
                let waited = t0.elapsed();
                conn.execute_batch(
                    "UPDATE settings SET value = value + 1 WHERE key = 'bench_probe'; COMMIT",
                )
                .expect("probe write");
                r.worst_wait = r.worst_wait.max(waited);
                r.worst_txn = r.worst_txn.max(t0.elapsed());
                r.probes += 1;
                // Leave the lock alone for a moment so the probe is a light load.
                thread::sleep(Duration::from_millis(2));
            }
            r
        });
        Probe { stop, handle }
    }

    fn finish(self) -> ProbeResult {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("probe thread")
    }
}

/// Raw rusqlite: the same rows into a plain table, one transaction per 1000 rows.
fn baseline(path: &std::path::Path, items: &[NewItem]) -> Duration {
    let conn = Connection::open(path).expect("baseline db");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("sync");
    conn.execute_batch(
        "CREATE TABLE items (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
             path TEXT NOT NULL, tags TEXT NOT NULL, properties TEXT NOT NULL,
             fingerprint TEXT NOT NULL, created_at INTEGER NOT NULL)",
    )
    .expect("baseline schema");
    let t0 = Instant::now();
    for chunk in items.chunks(1000) {
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        {
            let mut ins = conn
                .prepare_cached(
                    "INSERT INTO items (id, name, path, tags, properties, fingerprint, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .expect("prepare");
            for it in chunk {
                ins.execute(rusqlite::params![
                    it.id.as_str(),
                    it.name,
                    it.path,
                    serde_json::to_string(&it.tags).expect("json"),
                    serde_json::to_string(&it.properties).expect("json"),
                    it.fingerprint,
                    0i64,
                ])
                .expect("insert");
            }
        }
        conn.execute_batch("COMMIT").expect("commit");
    }
    t0.elapsed()
}

/// CPU time of this process so far (all threads), from /proc: on a shared machine the wall
/// time includes waiting for a core, so the CPU time is printed beside it.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // Clock ticks are 100 per second on Linux.
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:.0}/s", n as f64 / d.as_secs_f64().max(1e-9))
}

fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "hookops import benchmark: {} items, bulk assign of {}",
        a.items, a.assign
    );

    let t = Instant::now();
    let input = jsonl(a.items);
    let generate = t.elapsed();

    let (t, c) = (Instant::now(), cpu());
    let parsed = hookops::import::parse_jsonl(&input[..]).expect("parse");
    let (parse, parse_cpu) = (t.elapsed(), cpu() - c);
    assert!(parsed.errors.is_empty(), "generated lines are valid");
    assert_eq!(parsed.items.len(), a.items);
    drop(input);

    let c = cpu();
    let base = baseline(&dir.path().join("baseline.db"), &parsed.items);
    let base_cpu = cpu() - c;

    // The store: apply the workflow, then import with a probe running.
    let db = dir.path().join("bench.db");
    let store = Store::open(&db, &OpenOptions::default()).expect("open store");
    let env = |_: &str| None;
    let wf = hookops::workflow::parse("bench.toml", WORKFLOW, &env).expect("bench workflow");
    store
        .apply_workflow(&wf, &Vec::new(), "bench")
        .expect("apply");
    let workflow = WorkflowId::new("bench");

    store.writer_stats(true);
    let probe = Probe::start(&db);
    let (t, c) = (Instant::now(), cpu());
    let report = store
        .import_items(&workflow, parsed.items, None, "bench", &mut |_, _| {})
        .expect("import");
    let (import, import_cpu) = (t.elapsed(), cpu() - c);
    let import_probe = probe.finish();
    let (import_hold_us, import_txns, _) = store.writer_stats(true);
    assert_eq!(report.imported as usize, a.items);

    let probe = Probe::start(&db);
    let (t, c) = (Instant::now(), cpu());
    let moved = store
        .assign(
            &workflow,
            &StageId::new("annotate"),
            &AssignTarget::FromStage {
                stage: StageId::new("dataset"),
                limit: Some(a.assign),
            },
            None,
            "bench",
        )
        .expect("assign");
    let (assign, assign_cpu) = (t.elapsed(), cpu() - c);
    let assign_probe = probe.finish();
    let (assign_hold_us, assign_txns, _) = store.writer_stats(true);
    assert_eq!(moved.moved as usize, a.assign);
    // Spot check that the store did what it said.
    let last = ItemId::new(format!("item-{:08}", a.assign.saturating_sub(1)));
    if a.assign > 0 {
        assert_eq!(
            store.item(&last).expect("item").stage,
            StageId::new("annotate")
        );
    }

    let import_total = parse + import;
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let row = |name: &str, wall: Duration, cpu: Duration, n: usize, ratio: String| {
        println!(
            "{name:<24}  {:>9}  {:>9}  {:>11}  {ratio}",
            secs(wall),
            secs(cpu),
            rate(n, wall)
        )
    };
    let ratio = |d: Duration| format!("{:.2}x", d.as_secs_f64() / base.as_secs_f64());
    println!();
    println!(
        "{:<24}  {:>9}  {:>9}  {:>11}  wall vs baseline",
        "phase", "wall", "cpu", "items/s"
    );
    println!("{:<24}  {:>9}", "generate (not counted)", secs(generate));
    row("parse", parse, parse_cpu, a.items, ratio(parse));
    row(
        "baseline raw inserts",
        base,
        base_cpu,
        a.items,
        "1.00x".into(),
    );
    row("store import", import, import_cpu, a.items, ratio(import));
    row(
        "parse + import",
        import_total,
        parse_cpu + import_cpu,
        a.items,
        ratio(import_total),
    );
    row("bulk assign", assign, assign_cpu, a.assign, String::new());
    println!();
    println!(
        "{:<24}  {:>21}  {:>16}  {:>6}  {:>12}",
        "write lock", "longest hold (writer)", "worst probe wait", "probes", "transactions"
    );
    println!(
        "{:<24}  {:>21}  {:>16}  {:>6}  {:>12}",
        "during import",
        ms(Duration::from_micros(import_hold_us)),
        ms(import_probe.worst_wait),
        import_probe.probes,
        import_txns
    );
    println!(
        "{:<24}  {:>21}  {:>16}  {:>6}  {:>12}",
        "during bulk assign",
        ms(Duration::from_micros(assign_hold_us)),
        ms(assign_probe.worst_wait),
        assign_probe.probes,
        assign_txns
    );
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: parse + import of {} items under 30 s: {}; no hold over ~100 ms: {}",
        a.items,
        verdict(import_total < Duration::from_secs(30)),
        verdict(import_hold_us.max(assign_hold_us) <= 100_000)
    );
    let _ = (import_probe.worst_txn, assign_probe.worst_txn);
}
