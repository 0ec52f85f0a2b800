//! The import benchmark behind README's numbers (issues 3 and 22).
//!
//! `cargo bench --bench import [-- --items N --assign M]` (defaults 1,000,000 and 100,000):
//! small plain items through the library, as described below.
//!
//! `cargo bench --bench import -- --shape v7|mixed [--ids random|ordered] [--items N] [--keep FILE]`: V7-shaped lines
//! made from `../shared/fixtures/darwin-v2/` (or `$HOOKOPS_FIXTURES`), imported by the real
//! binary (`hookops item import FILE`, the streaming two-pass import) as a child process:
//! - `v7`: every fixture whole, repeated with fresh item ids, names and annotation ids, so
//!   sizes and annotation mixes are those of real exports (~3.4 KB a line);
//! - `mixed`: the file of issue 22's report: plain items and whole Darwin exports alternating,
//!   two annotations each (~1.5 KB a line).
//!
//! Item ids are time-ordered as V7 mints them (`--ids ordered`, the default: the fixtures' ids
//! begin with their creation time in milliseconds, `01920b88-51e0-…`, so an export whose
//! items come in about the order they were made adds them near the end of the `items(id)`
//! index) or random UUIDs (`--ids random`: each new item lands at a random place of that
//! index, the import's worst case, bound by the disk; see README, Performance).
//!
//! The file is written to disk first (not counted). The same-run baseline reads the file, parses
//! every line with `serde_json` alone and inserts its bytes with raw rusqlite, 1000 rows per
//! transaction, `synchronous=FULL`. It prints items/s, MB/s, the ratio to the baseline, the
//! child's peak RSS (`getrusage(RUSAGE_CHILDREN)`), the bytes it and the baseline wrote to the
//! file system, and the longest and p99 wait of another writer (the probe below) during the
//! import. `HOOKOPS_BENCH_BIN=PATH` imports with another build of hookops (an older commit's,
//! for alternating pairs). The baseline's database is removed before the
//! import runs, so a 1,000,000-line run needs about 4 GB of disk (the file and the import's
//! database), not 6. `--keep FILE` writes the generated file there and keeps it
//! (for trying the import by hand); `--generate-only` stops after writing it, and `--reuse`
//! imports a file kept there before instead of writing it again.
//!
//! The small-item mode:
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
    shape: Shape,
    /// Item ids in the order V7 mints them (time-ordered) instead of at random.
    ordered_ids: bool,
    keep: Option<std::path::PathBuf>,
    reuse: bool,
    generate_only: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Small,
    V7,
    Mixed,
}

fn args() -> Args {
    let mut a = Args {
        items: 1_000_000,
        assign: 100_000,
        shape: Shape::Small,
        ordered_ids: true,
        keep: None,
        reuse: false,
        generate_only: false,
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
            "--shape" => {
                a.shape = match it.next().as_deref() {
                    Some("small") => Shape::Small,
                    Some("v7") => Shape::V7,
                    Some("mixed") => Shape::Mixed,
                    other => panic!("--shape is small, v7 or mixed, not {other:?}"),
                }
            }
            "--ids" => {
                a.ordered_ids = match it.next().as_deref() {
                    Some("random") => false,
                    Some("ordered") => true,
                    other => panic!("--ids is random or ordered, not {other:?}"),
                }
            }
            "--keep" => a.keep = it.next().map(Into::into),
            "--generate-only" => a.generate_only = true,
            "--reuse" => a.reuse = true,
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
    /// Every wait, to tell one stall (a busy disk's fsync) from the usual wait.
    waits: Vec<Duration>,
}

impl ProbeResult {
    fn p99(&self) -> Duration {
        let mut w = self.waits.clone();
        w.sort_unstable();
        w.get(w.len() * 99 / 100).copied().unwrap_or_default()
    }
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
                r.waits.push(waited);
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
    if a.shape != Shape::Small {
        return v7_bench(&a);
    }
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

// ---------------------------------------------------------------------------------------------
// V7-shaped lines through the real binary (issue 22)

/// The Darwin JSON 2.0 fixtures, sorted by file name.
fn fixtures() -> Vec<(String, serde_json::Value)> {
    let dir = std::env::var_os("HOOKOPS_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/darwin-v2")
        });
    let mut out: Vec<(String, serde_json::Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read fixtures in {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("fixture");
            let name = p.file_stem().expect("name").to_string_lossy().into_owned();
            (name, serde_json::from_str(&text).expect("fixture JSON"))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

/// A UUID-shaped id, fresh for each (line, index): V7 item and annotation ids are UUIDs.
/// Multiplying by an odd constant is a bijection on u128, so distinct pairs give distinct
/// digits (but for the two fixed version and variant digits).
fn uuid_like(line: usize, index: u32) -> String {
    let x = ((line as u128) << 64) | (u128::from(index) + 1);
    let h = x.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    let h = h ^ (h >> 67);
    let s = format!("{h:032x}");
    format!(
        "{}-{}-7{}-8{}-{}",
        &s[0..8],
        &s[8..12],
        &s[13..16],
        &s[17..20],
        &s[20..32]
    )
}

/// An item id as V7 mints them (the fixtures' ids: `01920b88-51e0-…`): a UUID whose first 48
/// bits are the milliseconds of its creation, here one line per millisecond from the fixtures'
/// time on, the rest as fresh as [`uuid_like`]'s. Lines in the order their items were made.
fn time_ordered_id(line: usize) -> String {
    let ms = 0x0192_0b88_51e0_u64 + line as u64;
    let rest = uuid_like(line, u32::MAX);
    format!("{:08x}-{:04x}-{}", ms >> 16, ms & 0xffff, &rest[14..])
}

/// Line `i` of a V7-shaped file.
fn v7_line(
    shape: Shape,
    ordered_ids: bool,
    fixtures: &[(String, serde_json::Value)],
    i: usize,
) -> String {
    use serde_json::{Value, json};
    let (stem, fixture) = &fixtures[i % fixtures.len()];
    let mut doc = fixture.clone();
    let id = if ordered_ids {
        time_ordered_id(i)
    } else {
        uuid_like(i, u32::MAX)
    };
    let name = format!("{stem}_{i:08}.jpg");
    if let Some(Value::Array(anns)) = doc.get_mut("annotations") {
        if shape == Shape::Mixed {
            anns.truncate(2);
        }
        for (j, a) in anns.iter_mut().enumerate() {
            if let Some(obj) = a.as_object_mut() {
                obj.insert("id".into(), Value::String(uuid_like(i, j as u32)));
            }
        }
    }
    let item = &mut doc["item"];
    item["name"] = Value::String(name.clone());
    item["source_info"]["item_id"] = Value::String(id.clone());
    if shape == Shape::Mixed && i % 2 == 1 {
        // A plain item with the same content.
        let plain = json!({
            "id": id,
            "name": name,
            "path": item["path"],
            "dataset": item["source_info"]["dataset"]["name"],
            "tags": ["imported", format!("batch-{}", i % 10)],
            "properties": {"camera": format!("cam-{}", i % 3)},
            "slots": item["slots"],
            "annotations": doc["annotations"],
        });
        return plain.to_string();
    }
    doc.to_string()
}

/// Peak RSS of the largest waited-for child so far, in bytes, the CPU time (user + system)
/// of all of them, and the bytes they wrote to the file system (`ru_oublock`, counted in
/// 512-byte blocks when pages are dirtied: what `/usr/bin/time` calls file system outputs).
fn children_usage() -> (u64, Duration, u64) {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (
        ru.ru_maxrss as u64 * 1024,
        tv(ru.ru_utime) + tv(ru.ru_stime),
        ru.ru_oublock as u64 * 512,
    )
}

/// Bytes this process has written to the file system (`write_bytes` of `/proc/self/io`).
fn self_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Baseline: read the file, parse each line with serde_json alone, insert its bytes raw.
fn v7_baseline(path: &std::path::Path, file: &std::path::Path) -> (Duration, usize) {
    use std::io::BufRead as _;
    let conn = Connection::open(path).expect("baseline db");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("sync");
    conn.execute_batch("CREATE TABLE lines (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        .expect("baseline schema");
    let t0 = Instant::now();
    let mut reader =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(file).expect("file"));
    let mut line = Vec::new();
    let mut n = 0;
    let mut done = false;
    while !done {
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        {
            let mut ins = conn
                .prepare_cached("INSERT INTO lines (body) VALUES (?1)")
                .expect("prepare");
            for _ in 0..1000 {
                line.clear();
                if reader.read_until(b'\n', &mut line).expect("read") == 0 {
                    done = true;
                    break;
                }
                let v: serde_json::Value = serde_json::from_slice(&line).expect("valid line");
                std::hint::black_box(&v);
                ins.execute([&line[..]]).expect("insert");
                n += 1;
            }
        }
        conn.execute_batch("COMMIT").expect("commit");
    }
    (t0.elapsed(), n)
}

fn v7_bench(a: &Args) {
    let dir = tempfile::tempdir().expect("temp dir");
    let shape = if a.shape == Shape::V7 { "v7" } else { "mixed" };
    let file = a
        .keep
        .clone()
        .unwrap_or_else(|| dir.path().join(format!("{shape}.jsonl")));
    let fixtures = fixtures();
    let t = Instant::now();
    // `--reuse`: a file kept by an earlier run with the same options is imported again as it is
    // (alternating pairs of two builds, without writing 1.5 GB before each).
    if !(a.reuse && file.exists()) {
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&file).expect("create the file"),
        );
        for i in 0..a.items {
            out.write_all(v7_line(a.shape, a.ordered_ids, &fixtures, i).as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .expect("write the file");
        }
        out.flush().expect("write the file");
    }
    let generate = t.elapsed();
    let bytes = std::fs::metadata(&file).expect("file").len();
    println!(
        "hookops import benchmark, {shape} shape, {} item ids: {} lines, {:.0} MB ({} bytes a line) from {} fixtures",
        if a.ordered_ids {
            "time-ordered"
        } else {
            "random"
        },
        a.items,
        bytes as f64 / 1e6,
        bytes / a.items.max(1) as u64,
        fixtures.len()
    );
    if a.generate_only {
        println!("wrote {}", file.display());
        return;
    }

    let c = cpu();
    let w = self_written();
    let base_db = dir.path().join("baseline.db");
    let (base, n) = v7_baseline(&base_db, &file);
    let base_cpu = cpu() - c;
    let base_written = self_written() - w;
    assert_eq!(n, a.items);
    // Gone before the import writes as much again: a 1,000,000-line run needs 2 GB less disk.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", base_db.display()));
    }

    let db = dir.path().join("bench.db");
    // `HOOKOPS_BENCH_BIN` runs another build (e.g. an older commit's) against the same file,
    // for alternating pairs. The database is made by the binary that imports into it, so its
    // schema is that build's.
    let bin = std::env::var_os("HOOKOPS_BENCH_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_hookops").into());
    println!("binary: {}", std::path::Path::new(&bin).display());
    let toml = dir.path().join("bench.toml");
    std::fs::write(&toml, WORKFLOW).expect("write the workflow");
    let applied = std::process::Command::new(&bin)
        .arg("--db")
        .arg(&db)
        .args(["workflow", "apply"])
        .arg(&toml)
        .output()
        .expect("run hookops workflow apply");
    assert!(applied.status.success(), "workflow apply: {applied:?}");
    // Only the import's CPU and writes are counted (`workflow apply` was a child too).
    let (_, apply_cpu, apply_written) = children_usage();
    let probe = Probe::start(&db);
    let t = Instant::now();
    let out = std::process::Command::new(&bin)
        .arg("--db")
        .arg(&db)
        .args(["item", "import", "--workflow", "bench", "--json"])
        .arg(&file)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run hookops item import");
    let import = t.elapsed();
    let probe = probe.finish();
    let (rss, import_cpu, written) = children_usage();
    let (import_cpu, written) = (import_cpu - apply_cpu, written - apply_written);
    assert!(out.status.success(), "import failed: {:?}", out.status);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["imported"], a.items, "{report}");

    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let mbs = |d: Duration| format!("{:.1} MB/s", bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9));
    println!();
    println!(
        "{:<34}  {:>9}  {:>9}  {:>11}  {:>11}  wall vs baseline  cpu vs baseline",
        "phase", "wall", "cpu", "items/s", "MB/s"
    );
    println!("{:<34}  {:>9}", "generate (not counted)", secs(generate));
    println!(
        "{:<34}  {:>9}  {:>9}  {:>11}  {:>11}  1.00x  1.00x",
        "baseline: serde_json + raw insert",
        secs(base),
        secs(base_cpu),
        rate(a.items, base),
        mbs(base)
    );
    println!(
        "{:<34}  {:>9}  {:>9}  {:>11}  {:>11}  {:.2}x  {:.2}x",
        format!("hookops item import ({shape})"),
        secs(import),
        secs(import_cpu),
        rate(a.items, import),
        mbs(import),
        import.as_secs_f64() / base.as_secs_f64(),
        import_cpu.as_secs_f64() / base_cpu.as_secs_f64().max(1e-9)
    );
    println!();
    println!(
        "{:<34}  {:.1} MB",
        "peak RSS of the import",
        rss as f64 / 1e6
    );
    println!(
        "{:<34}  {:.2} GB (baseline {:.2} GB)",
        "written by the import",
        written as f64 / 1e9,
        base_written as f64 / 1e9
    );
    println!(
        "{:<34}  {} ({} probes; p99 {})",
        "longest write hold (probe wait)",
        ms(probe.worst_wait),
        probe.probes,
        ms(probe.p99())
    );
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: peak RSS under 300 MB: {}; no hold over ~100 ms: {}{}",
        verdict(rss < 300_000_000),
        verdict(probe.worst_wait <= Duration::from_millis(100)),
        if a.shape == Shape::Mixed && a.items >= 1_000_000 {
            format!(
                "; 1,000,000 lines under 45 s: {}",
                verdict(import < Duration::from_secs(45))
            )
        } else {
            String::new()
        }
    );
}
