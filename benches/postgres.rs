//! PostgreSQL benchmarks (issue 17, design §5 and §7), on a throwaway cluster that writes as a
//! production one does (fsync on, every commit `synchronous_commit = on`), started from the
//! installed server binaries like the tests' (`tests/support/pg.rs`).
//!
//! `cargo bench --bench postgres [-- --deliveries N --concurrency 64 --samples 200]`
//!
//! 1. Baseline: N keep-alive POSTs of the engine's own frozen bodies (64 tasks), before and
//!    after the engine; the ratio uses their mean.
//! 2. Engine: N deliveries already in the webhook stage, `hookops::dispatch::run` on the
//!    PostgreSQL store until all N succeeded, against the bundled receiver answering at once.
//!    CPU per delivery split into this process (the dispatcher), the PostgreSQL server (its
//!    postmaster and every session process) and the receiver process.
//! 3. Idle latency across processes: a `hookops serve` process idles; this process puts one
//!    item at a time into a webhook stage; latency is the recording receiver's arrival time
//!    minus the delivery's `created_at` (taken in the entering transaction, by the server's
//!    clock, which is this machine's). The commit, the NOTIFY, the other process's wake-up,
//!    its lease and the request are all inside it.
//!
//! `cargo bench --bench postgres -- --scale-out [--receiver-ms 100 --seconds 8]`
//!
//! Scale-out where receivers are slow: the receiver answers after 100 ms, so a `serve` at
//! concurrency c can reach at most c ÷ 0.1 s (Little's law). Each row starts k `serve`
//! processes on one fresh store with `seconds` × the limit deliveries waiting, and times them
//! from their start to the last success: SQLite, one process at concurrency 64, 128 and 256;
//! PostgreSQL, 1, 2 and 4 processes at concurrency 64 each. Each figure is printed next to
//! its limit (target: at least 0.9 of it).

#[path = "support/engine.rs"]
mod engine;
#[path = "../tests/support/pg.rs"]
#[allow(dead_code)] // the tests' shared cluster is not used here
mod pg;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{
    BIN, ReceiverProcess, RecordTail, baseline, hookops, items_jsonl, percentile, process_cpu,
    thread_cpu, workflow_toml,
};
use hookops::dispatch::{DispatcherOptions, run};
use hookops::model::{DeliveryState, ItemId, StageId, WorkflowId};
use hookops::store::{AssignTarget, Location, OpenOptions, Store};
use tokio::sync::{broadcast, watch};

const THROUGHPUT_TARGET: f64 = 0.1;
const P99_TARGET_MS: f64 = 50.0;
const SCALE_TARGET: f64 = 0.9;

struct Args {
    deliveries: usize,
    concurrency: usize,
    samples: usize,
    scale_out: bool,
    receiver_ms: usize,
    seconds: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        deliveries: 10_000,
        concurrency: 64,
        samples: 200,
        scale_out: false,
        receiver_ms: 100,
        seconds: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--deliveries" => a.deliveries = num("--deliveries"),
            "--concurrency" => a.concurrency = num("--concurrency"),
            "--samples" => a.samples = num("--samples"),
            "--scale-out" => a.scale_out = true,
            "--receiver-ms" => a.receiver_ms = num("--receiver-ms"),
            "--seconds" => a.seconds = num("--seconds"),
            // `cargo bench` passes --bench; other harness flags mean nothing here.
            _ => {}
        }
    }
    a
}

fn main() {
    let args = parse_args();
    let cluster = pg::start_durable();
    if args.scale_out {
        scale_out(&cluster, &args);
    } else {
        throughput_and_latency(&cluster, &args);
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write setup file");
    p
}

/// A store with `n` items of workflow `id` waiting in its webhook stage, which sends to `url`.
fn setup(db: &Path, dir: &Path, id: &str, url: &str, n: usize, assign: bool) {
    let wf = write(dir, &format!("{id}.toml"), &workflow_toml(id, url));
    let items = write(dir, &format!("{id}.jsonl"), &items_jsonl(id, n));
    hookops(db, &["workflow", "apply", wf.to_str().unwrap_or_default()]);
    hookops(
        db,
        &[
            "item",
            "import",
            "--workflow",
            id,
            items.to_str().unwrap_or_default(),
        ],
    );
    if assign {
        hookops(
            db,
            &[
                "assign",
                "--workflow",
                id,
                "--stage",
                "hook",
                "--from-stage",
                "dataset",
            ],
        );
    }
}

fn open(location: &str) -> Store {
    let location = Location::parse(location).expect("a store location");
    Store::open_at(&location, &OpenOptions::default()).expect("store opens")
}

fn succeeded(store: &Store) -> i64 {
    store
        .delivery_totals()
        .expect("delivery totals")
        .into_iter()
        .filter(|(s, _)| *s == DeliveryState::Succeeded)
        .map(|(_, n)| n)
        .sum()
}

fn wait_succeeded(store: &Store, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(900);
    while succeeded(store) < n as i64 {
        assert!(Instant::now() < deadline, "{what} did not finish in 15 min");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// CPU time of the PostgreSQL server: its postmaster (with the sessions that have ended,
/// counted into it when reaped) and every session process still running.
fn server_cpu(postmaster: u32) -> Duration {
    let fields = |pid: &str| -> Vec<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rfind(')')
            .map(|close| {
                stat[close + 1..]
                    .split_whitespace()
                    .map(|v| v.parse().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default()
    };
    // After the name: state (0), ppid (1), …, utime (11), stime (12), cutime (13), cstime (14).
    let own = fields(&postmaster.to_string());
    let mut ticks: u64 = own.get(11..15).map_or(0, |f| f.iter().sum());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let f = fields(pid);
        if f.get(1) == Some(&u64::from(postmaster)) {
            ticks += f.get(11..13).map_or(0, |f| f.iter().sum::<u64>());
        }
    }
    Duration::from_millis(ticks * 10)
}

fn serve(location: &str, concurrency: usize, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("serve log");
    Command::new(BIN)
        .args(["--db", location, "serve", "--concurrency"])
        .arg(concurrency.to_string())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("hookops serve starts")
}

fn stop(mut children: Vec<Child>) {
    for c in &children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for c in &mut children {
        let _ = c.wait();
    }
}

fn throughput_and_latency(cluster: &pg::Cluster, args: &Args) {
    let n = args.deliveries;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = cluster.database();
    let db = Path::new(&url);
    let record = dir.path().join("received.jsonl");
    std::fs::File::create(&record).expect("record file");
    let fast = ReceiverProcess::start(None);
    let recording = ReceiverProcess::start(Some(&record));
    let t0 = Instant::now();
    setup(
        db,
        dir.path(),
        "bench",
        &format!("{}/hook", fast.base),
        n,
        true,
    );
    setup(
        db,
        dir.path(),
        "idle",
        &format!("{}/idle", recording.base),
        args.samples,
        false,
    );
    let mut sql = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let bodies: Vec<Vec<u8>> = sql
        .query(
            "SELECT b.body FROM deliveries d JOIN delivery_bodies b ON b.seq = d.seq
             WHERE d.workflow_id = 'bench' ORDER BY d.seq",
            &[],
        )
        .expect("bodies")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(bodies.len(), n, "every item has a delivery");
    let mean_body = bodies.iter().map(Vec::len).sum::<usize>() / n.max(1);
    eprintln!(
        "setup: {n} deliveries of {mean_body} B mean in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let receiver_pid = fast.child.id();
    let server_pid = cluster.server_pid();

    // (a) Baseline.
    let (client0, receiver0) = (thread_cpu("tokio-rt"), process_cpu(receiver_pid));
    let bodies = Arc::new(bodies);
    let baseline_url = format!("{}/baseline", fast.base);
    let base_before = rt.block_on(baseline(&baseline_url, bodies.clone(), args.concurrency));
    let base_client_us = per(thread_cpu("tokio-rt") - client0);
    let base_receiver_us = per(process_cpu(receiver_pid) - receiver0);
    eprintln!("baseline: {base_before:.0} requests/s");

    // (b) The engine on PostgreSQL.
    let store = open(&url);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (events, _) = broadcast::channel(16);
    let opts = DispatcherOptions {
        concurrency: args.concurrency,
        ..DispatcherOptions::default()
    };
    let me = std::process::id();
    let (own0, server0, receiver0) = (
        process_cpu(me),
        server_cpu(server_pid),
        process_cpu(receiver_pid),
    );
    let started = Instant::now();
    let dispatcher = rt.spawn(run(store.clone(), opts, events, stop_rx));
    wait_succeeded(&store, n, "the engine");
    let engine_secs = started.elapsed().as_secs_f64();
    let engine_rate = n as f64 / engine_secs;
    let dispatcher_us = per(process_cpu(me) - own0);
    let server_us = per(server_cpu(server_pid) - server0);
    let receiver_us = per(process_cpu(receiver_pid) - receiver0);
    let _ = stop_tx.send(true);
    let _ = rt.block_on(dispatcher);
    let attempts: i64 = sql
        .query_one(
            "SELECT COUNT(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             WHERE d.workflow_id = 'bench' AND a.status = 200",
            &[],
        )
        .expect("count attempts")
        .get(0);
    assert_eq!(attempts, n as i64, "every attempt is recorded");
    let synchronous: String = sql
        .query_one("SHOW synchronous_commit", &[])
        .expect("synchronous_commit")
        .get(0);
    let fsync: String = sql.query_one("SHOW fsync", &[]).expect("fsync").get(0);
    eprintln!("engine: {engine_rate:.0} deliveries/s");
    let base_after = rt.block_on(baseline(&baseline_url, bodies, args.concurrency));
    let base_rate = (base_before + base_after) / 2.0;
    eprintln!("baseline again: {base_after:.0} requests/s");

    // (c) Idle latency across processes: `serve` idles, this process enters the items.
    let mut child = vec![serve(&url, 64, &dir.path().join("serve.log"))];
    let serve_pid = child[0].id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store
        .dispatchers()
        .expect("dispatchers")
        .iter()
        .any(|d| d.pid == serve_pid)
    {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut tail = RecordTail {
        file: std::fs::File::open(&record).expect("record file"),
        pending: String::new(),
    };
    tail.file.seek(SeekFrom::End(0)).expect("seek");
    let (idle, hook) = (WorkflowId::new("idle"), StageId::new("hook"));
    let mut latencies = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let item = format!("idle-{i:06}");
        store
            .assign(
                &idle,
                &hook,
                &AssignTarget::Items(vec![ItemId::new(&item)]),
                None,
                "bench",
            )
            .expect("assign");
        let row = sql
            .query_one(
                "SELECT id, created_at FROM deliveries WHERE item_id = $1 ORDER BY seq DESC LIMIT 1",
                &[&item],
            )
            .expect("the item's delivery");
        let (delivery, created_ms): (String, i64) = (row.get(0), row.get(1));
        let (arrived, at_us) = tail.next(Instant::now() + Duration::from_secs(10));
        assert_eq!(arrived, delivery, "requests arrive one at a time");
        latencies.push((at_us - created_ms * 1000) as f64 / 1000.0);
        // Idle again (the attempt recorded) before the next one, then a random pause so
        // samples fall at every phase of the dispatcher's 15 ms look at its change feed.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state: String = sql
                .query_one("SELECT state FROM deliveries WHERE id = $1", &[&delivery])
                .expect("state")
                .get(0);
            if state == "succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "{delivery} is still {state}");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(fastrand::u64(5..40)));
    }
    stop(std::mem::take(&mut child));
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));

    let ratio = engine_rate / base_rate;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!(
        "hookops PostgreSQL benchmark · {} · {n} deliveries · concurrency {} · {mean_body} B bodies · synchronous_commit={synchronous}, fsync={fsync} · {} cores",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("{:<46} {:>24}  {:<14}", "measure", "figure", "target");
    println!(
        "{:<46} {:>24}",
        "(a) baseline: keep-alive POSTs",
        format!("{base_rate:.0} req/s")
    );
    println!(
        "{:<46} {:>24}",
        "    before / after the engine",
        format!("{base_before:.0} / {base_after:.0}")
    );
    println!(
        "{:<46} {:>24}",
        "(b) engine on PostgreSQL, every attempt durable",
        format!("{engine_rate:.0} deliveries/s")
    );
    println!(
        "{:<46} {:>24}  {:<14} {}",
        "    engine / baseline",
        format!("{ratio:.3}"),
        format!(">= {THROUGHPUT_TARGET:.2}"),
        verdict(ratio >= THROUGHPUT_TARGET)
    );
    println!(
        "{:<46} {:>24}  {:<14} {}",
        format!("(c) idle latency, across processes (n={})", latencies.len()),
        format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
        format!("p99 < {P99_TARGET_MS:.0} ms"),
        verdict(p99 < P99_TARGET_MS)
    );
    println!(
        "CPU per request during (a): client threads {base_client_us:.0} µs, receiver {base_receiver_us:.0} µs"
    );
    println!(
        "CPU per delivery during (b): dispatcher process {dispatcher_us:.0} µs, PostgreSQL server {server_us:.0} µs, receiver {receiver_us:.0} µs (total {:.0} µs)",
        dispatcher_us + server_us + receiver_us
    );
}

fn scale_out(cluster: &pg::Cluster, args: &Args) {
    let ms = args.receiver_ms.max(1);
    let slow = ReceiverProcess::scripted(None, Some(&format!("/hook=slow:{ms}ms,*=ok")));
    let hook = format!("{}/hook", slow.base);
    let dir = tempfile::tempdir().expect("temp dir");
    let rows: [(&str, usize, usize); 6] = [
        ("SQLite", 1, 64),
        ("SQLite", 1, 128),
        ("SQLite", 1, 256),
        ("PostgreSQL", 1, 64),
        ("PostgreSQL", 2, 64),
        ("PostgreSQL", 4, 64),
    ];
    let mut report = Vec::new();
    for (i, (backend, k, concurrency)) in rows.into_iter().enumerate() {
        let limit = (k * concurrency * 1000) as f64 / ms as f64;
        let n = (limit * args.seconds as f64) as usize;
        let location = if backend == "SQLite" {
            dir.path()
                .join(format!("scale-{i}.db"))
                .to_string_lossy()
                .into_owned()
        } else {
            cluster.database()
        };
        let row_dir = dir.path().join(format!("row-{i}"));
        std::fs::create_dir_all(&row_dir).expect("row dir");
        setup(Path::new(&location), &row_dir, "bench", &hook, n, true);
        let store = open(&location);
        let started = Instant::now();
        let children: Vec<Child> = (0..k)
            .map(|j| {
                serve(
                    &location,
                    concurrency,
                    &row_dir.join(format!("serve-{j}.log")),
                )
            })
            .collect();
        wait_succeeded(&store, n, "the serve processes");
        let secs = started.elapsed().as_secs_f64();
        stop(children);
        let rate = n as f64 / secs;
        let ratio = rate / limit;
        let line = format!(
            "{:<40} {:>26}  {:<22} {}",
            format!("scale-out {backend}, {k} serve × {concurrency}"),
            format!("{rate:.0}/s of {limit:.0}/s ({ratio:.2})"),
            format!(">= {SCALE_TARGET:.2} of the limit"),
            if ratio >= SCALE_TARGET {
                "met"
            } else {
                "MISSED"
            }
        );
        eprintln!("{line} · {n} deliveries in {secs:.1} s");
        eprintln!("{line}");
        report.push(line);
    }
    println!();
    println!(
        "hookops scale-out benchmark · {} · receiver answers after {ms} ms · {} s of work per row · {} cores",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "{:<40} {:>26}  {:<22}",
        "measure", "deliveries/s of limit", "target"
    );
    for line in report {
        println!("{line}");
    }
}
