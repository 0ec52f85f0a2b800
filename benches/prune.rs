//! The retention benchmark behind README's prune figure (issue 9).
//!
//! `cargo bench --bench prune [-- --attempts N]` (default 5,000,000):
//!
//! 1. generates, with plain SQL inserts on a fresh database, N/50 items each with 10 finished
//!    deliveries of 5 attempts in one webhook stage (N attempts in all), all ended 40 days ago;
//!    each item's latest delivery is kept by the rule, and 1,000 open deliveries (which are
//!    their items' latest) are never touched;
//! 2. a same-run baseline: a console-like reader (a page of the deliveries view, the delivery
//!    totals, its change feed) and a write probe (`BEGIN IMMEDIATE; UPDATE settings; COMMIT` on a
//!    connection of its own, as another process would) run for 3 s with nothing else going on;
//! 3. `Store::prune(older_than = 30 days)` runs while both keep going.
//!
//! Reported: prune time, rows removed, the store's longest write transaction
//! (`Store::writer_stats`), the reader's and the probe's worst latency during the prune against
//! their baseline, and the file size before and after. Nothing is asserted: these machines are
//! shared and noisy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hookops::model::{DeliveryState, StageId, WorkflowId};
use hookops::store::{DeliveryFilter, OpenOptions, PruneOptions, Store, human_bytes};
use rusqlite::Connection;

const WORKFLOW: &str = r#"
id = "bench"
name = "Prune benchmark"
team = "bench"

[[stage]]
id = "dataset"
kind = "dataset"
next = "hook"

[[stage]]
id = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/hook"
on_success = "done"

[[stage]]
id = "done"
kind = "complete"
"#;

const DELIVERIES_PER_ITEM: i64 = 10;
const ATTEMPTS_PER_DELIVERY: i64 = 5;
const OPEN: i64 = 1000;
const DAY_MS: i64 = 86_400_000;

fn attempts_arg() -> i64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == "--attempts")
        .and_then(|w| w[1].replace('_', "").parse().ok())
        .unwrap_or(5_000_000)
}

/// Fills the database with plain SQL: items, deliveries and attempts.
fn generate(path: &std::path::Path, attempts: i64) -> (i64, i64) {
    let items = (attempts / (DELIVERIES_PER_ITEM * ATTEMPTS_PER_DELIVERY)).max(1);
    let deliveries = items * DELIVERIES_PER_ITEM;
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(60)).unwrap();
    c.pragma_update(None, "synchronous", "OFF").unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let old = now - 40 * DAY_MS;
    c.execute_batch("BEGIN").unwrap();
    c.execute(
        "WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < ?1 - 1)
         INSERT INTO items (id, workflow_id, stage_id, state, name, path, dataset_name, dataset_slug,
             tags, fingerprint, version, created_at, updated_at, entered_at)
         SELECT printf('item-%07d', x), 'bench', 'done', 'done', printf('item-%07d.jpg', x), '/',
             'bench', 'bench', '[]', '', 1, ?2, ?2, ?2 FROM n",
        rusqlite::params![items, old],
    )
    .unwrap();
    c.execute(
        "INSERT INTO item_content (seq, properties, slots, annotations)
         SELECT seq, '{}', '[]', '[]' FROM items",
        [],
    )
    .unwrap();
    // Delivery k of item i has seq i * 10 + k + 1; k = 9 is the item's latest.
    c.execute(
        "WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < ?1 - 1)
         INSERT INTO deliveries (seq, id, workflow_id, stage_id, item_id, event, trigger, state,
             item_version, attempts, next_number, last_status, last_error_kind, last_attempt_at,
             created_at, updated_at)
         SELECT x + 1, printf('msg_%026d', x), 'bench', 'hook', printf('item-%07d', x / 10),
             'stage.webhook', 'route', CASE WHEN x % 3 = 0 THEN 'failed' ELSE 'succeeded' END,
             1, 5, 6, CASE WHEN x % 3 = 0 THEN 503 ELSE 200 END,
             CASE WHEN x % 3 = 0 THEN 'http_status' END,
             ?3,
             ?3,
             ?3
         FROM n",
        rusqlite::params![deliveries, now - 60_000, old],
    )
    .unwrap();
    c.execute(
        "WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < ?1 - 1)
         INSERT INTO attempts (delivery_id, number, trigger, counted, started_at, duration_ms, url,
             request_headers, status, response_headers, response_body)
         SELECT printf('msg_%026d', x / 5), x % 5 + 1, 'scheduled', 1,
             ?3, 12, 'http://127.0.0.1:9/hook',
             '[[\"content-type\",\"application/json\"],[\"webhook-id\",\"msg\"]]',
             CASE WHEN (x / 5) % 3 = 0 THEN 503 ELSE 200 END, '[]', X'7B226F6B223A747275657D'
         FROM n",
        rusqlite::params![deliveries * ATTEMPTS_PER_DELIVERY, now - 60_000, old],
    )
    .unwrap();
    // Open deliveries: never touched.
    c.execute(
        "WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < ?1 - 1)
         INSERT INTO deliveries (id, workflow_id, stage_id, item_id, event, trigger, state,
             item_version, next_attempt_at, created_at, updated_at)
         SELECT printf('msg_open%022d', x), 'bench', 'hook', printf('item-%07d', x), 'stage.webhook',
             'route', 'pending', 1, ?2, ?3, ?3 FROM n",
        rusqlite::params![OPEN.min(items), now + 365 * DAY_MS, old],
    )
    .unwrap();
    // Every delivery's frozen body (migration 3 keeps them apart from the delivery rows).
    c.execute(
        "INSERT INTO delivery_bodies (seq, body) SELECT seq, zeroblob(600) FROM deliveries",
        [],
    )
    .unwrap();
    c.execute_batch("COMMIT").unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    (items, deliveries)
}

#[derive(Default)]
struct Probe {
    worst: Duration,
    samples: Vec<Duration>,
}

impl Probe {
    fn p99(&mut self) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        self.samples.sort();
        self.samples[(self.samples.len() * 99 / 100).min(self.samples.len() - 1)]
    }
}

/// A console-like reader: what the deliveries view and the header ask for on every change.
fn reader(store: Store, stop: Arc<AtomicBool>) -> Probe {
    let f = DeliveryFilter {
        workflow: Some(WorkflowId::new("bench")),
        stage: Some(StageId::new("hook")),
        state: Some(DeliveryState::Failed),
        ..DeliveryFilter::default()
    };
    let mut p = Probe::default();
    let mut changes = store.change_watcher().unwrap();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let page = store.list_deliveries(&f, None, 200).unwrap();
        std::hint::black_box(page);
        std::hint::black_box(store.delivery_totals().unwrap());
        std::hint::black_box(changes.changed().unwrap());
        let took = t.elapsed();
        p.worst = p.worst.max(took);
        p.samples.push(took);
        thread::sleep(Duration::from_millis(5));
    }
    p
}

/// Another process's smallest write: how long it waits for the write lock.
fn write_probe(path: std::path::PathBuf, stop: Arc<AtomicBool>) -> Probe {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(60)).unwrap();
    let mut p = Probe::default();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        c.execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO settings (key, value) VALUES ('bench.probe', '1')
               ON CONFLICT (key) DO UPDATE SET value = value + 1;
             COMMIT;",
        )
        .unwrap();
        let took = t.elapsed();
        p.worst = p.worst.max(took);
        p.samples.push(took);
        thread::sleep(Duration::from_millis(20));
    }
    p
}

fn probes(
    store: &Store,
    path: &std::path::Path,
) -> (
    Arc<AtomicBool>,
    thread::JoinHandle<Probe>,
    thread::JoinHandle<Probe>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (store.clone(), stop.clone());
    let r = thread::spawn(move || reader(s, st));
    let (p, st) = (path.to_path_buf(), stop.clone());
    let w = thread::spawn(move || write_probe(p, st));
    (stop, r, w)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let attempts = attempts_arg();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prune.db");
    let store = Store::open(&path, &OpenOptions::default()).unwrap();
    let wf = hookops::workflow::parse("bench.toml", WORKFLOW, &|_| None).unwrap();
    store.apply_workflow(&wf, &Vec::new(), "bench").unwrap();

    let t = Instant::now();
    let (items, deliveries) = generate(&path, attempts);
    // The rows were written with plain SQL: the store counts them once.
    store.recount().unwrap();
    let generated = t.elapsed();
    let size_before = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "generated {items} items, {} deliveries, {} attempts in {:.1} s ({})",
        deliveries + OPEN.min(items),
        deliveries * ATTEMPTS_PER_DELIVERY,
        generated.as_secs_f64(),
        human_bytes(size_before)
    );

    // Baseline: the same probes with nothing else running.
    let (stop, r, w) = probes(&store, &path);
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (mut base_r, mut base_w) = (r.join().unwrap(), w.join().unwrap());

    let (stop, r, w) = probes(&store, &path);
    store.writer_stats(true);
    let t = Instant::now();
    let report = store
        .prune(
            &PruneOptions {
                older_than: Duration::from_secs(30 * 86_400),
                audit_older_than: None,
                dry_run: false,
            },
            "bench",
        )
        .unwrap();
    let took = t.elapsed();
    let (max_hold_us, transactions, _) = store.writer_stats(false);
    stop.store(true, Ordering::Relaxed);
    let (mut during_r, mut during_w) = (r.join().unwrap(), w.join().unwrap());

    let rows = [
        (
            "attempts generated",
            format!("{}", deliveries * ATTEMPTS_PER_DELIVERY),
        ),
        (
            "deliveries generated",
            format!("{}", deliveries + OPEN.min(items)),
        ),
        (
            "removed",
            format!(
                "{} deliveries, {} attempts",
                report.deliveries, report.attempts
            ),
        ),
        (
            "kept",
            format!(
                "{} latest per stage, {} open",
                report.kept_latest, report.kept_open
            ),
        ),
        ("prune time", format!("{:.1} s", took.as_secs_f64())),
        (
            "of which scanning / deleting / vacuuming",
            format!(
                "{:.1} s / {:.1} s / {:.1} s",
                report.scan_ms / 1000.0,
                report.delete_ms / 1000.0,
                report.vacuum_ms / 1000.0
            ),
        ),
        (
            "attempts removed per second",
            format!("{:.0}", report.attempts as f64 / took.as_secs_f64()),
        ),
        (
            "longest write-lock hold (Store::writer_stats)",
            ms(Duration::from_micros(max_hold_us)),
        ),
        (
            "write transactions",
            format!("{transactions} (prune: {})", report.chunks),
        ),
        (
            "longest prune write, as the caller waited for it",
            format!("{:.1} ms", report.longest_chunk_ms),
        ),
        (
            "reader worst / p99, baseline",
            format!("{} / {}", ms(base_r.worst), ms(base_r.p99())),
        ),
        (
            "reader worst / p99, during prune",
            format!("{} / {}", ms(during_r.worst), ms(during_r.p99())),
        ),
        (
            "other-process write wait worst / p99, baseline",
            format!("{} / {}", ms(base_w.worst), ms(base_w.p99())),
        ),
        (
            "other-process write wait worst / p99, during prune",
            format!("{} / {}", ms(during_w.worst), ms(during_w.p99())),
        ),
        (
            "database file",
            format!(
                "{} → {} (freed {}, {} pages vacuumed)",
                human_bytes(report.file_bytes_before),
                human_bytes(report.file_bytes_after),
                human_bytes(report.bytes_freed),
                report.pages_vacuumed
            ),
        ),
    ];
    println!(
        "\nprune benchmark ({} attempts)\n",
        deliveries * ATTEMPTS_PER_DELIVERY
    );
    println!("| figure | value |");
    println!("|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
