//! Delivery benchmark (issue 4, design §5 and §6 "Durability"): the engine's throughput against
//! plain keep-alive HTTP in the same run, and the idle stage-entry → on-the-wire latency.
//!
//! `cargo bench --bench delivery [-- --deliveries N --concurrency 64 --samples 200 --api]`
//! `cargo bench --bench delivery -- --receiver-ms 100 [--concurrency N]` (issue 21): only the
//! engine, against a receiver that answers after that long, beside the Little's-law limit of
//! the concurrency (concurrency ÷ latency).
//!
//! Fixed conditions: ~2 KiB Darwin bodies (annotations included), concurrency 64, the bundled
//! receiver answering 200 at once, a `dataset → hook (webhook) → complete` workflow, every
//! attempt recorded with `synchronous=FULL` in a database on the machine's disk.
//!
//! The receiver runs as a subprocess (`hookops receiver`): a real receiver is another process,
//! and this keeps it off the tokio runtime of the client being measured (the baseline's or the
//! engine's). Both still share the machine's cores, equally for both measurements, which is why
//! the ratio (not the absolute rates) is the figure that carries a target.
//!
//! 1. Baseline: N POSTs of the engine's own frozen bodies from a reqwest client, 64 tasks,
//!    once before the engine and once right after it; the ratio uses the mean of the two.
//! 2. Engine: N deliveries already assigned into the webhook stage (setup not timed), then
//!    `hookops::dispatch::run` until all N succeeded.
//! 3. Idle latency: with the dispatcher idle, one item at a time enters a webhook stage that
//!    points at a second, recording receiver; from this process (Store API) and from another
//!    (`hookops assign`, which the dispatcher notices through its `data_version` poll). Latency
//!    is the receiver's arrival timestamp minus the delivery's `created_at`, which is taken
//!    inside the entering transaction just before its COMMIT (so the commit's own fsync is
//!    counted too).
//!
//! 4. Store alone: 2N more deliveries leased and recorded with a 200's outcome through the
//!    store calls the dispatcher makes, with no HTTP at all, in rounds that alternate two ways:
//!    batched (`record_and_lease` for 64 at a time, what the dispatcher's batcher does when
//!    every slot finishes together) and unbatched (64 tasks, one `lease_due` and one
//!    `record_attempt` job per delivery). Not a target: it shows how much of the engine's time
//!    is the store's, and what batching saves.
//!
//! Besides the rates it prints CPU per request or delivery of each side (from /proc): the
//! client's runtime threads, the receiver process and the store's writer thread, and how busy
//! each phase kept the cores. Every side shares the same cores and the baseline keeps them
//! nearly all busy, so the engine's ratio, had it kept them as busy, would be the baseline's
//! CPU per request over the engine's CPU per delivery: the bench prints that figure (the part
//! of the gap that is CPU) and the CPU per delivery the target would allow.
//!
//! The bench reads a few figures straight from the database file (bodies, creation times),
//! read-only: the store API has no call for "every body", and none is wanted.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookops::dispatch::{DispatcherOptions, run};
use hookops::model::{DeliveryState, ItemId, StageId, WorkflowId};
use hookops::store::{AssignTarget, AttemptOutcome, OpenOptions, Store};
use tokio::sync::{broadcast, watch};

#[path = "support/engine.rs"]
mod engine;

use engine::{
    ReceiverProcess, RecordTail, baseline, hookops, items_jsonl, peak_rss_mb, percentile,
    process_cpu, thread_cpu, workflow_toml,
};
const THROUGHPUT_TARGET: f64 = 0.5;
const P99_TARGET_MS: f64 = 50.0;

struct Args {
    deliveries: usize,
    concurrency: usize,
    samples: usize,
    /// Serve the HTTP API (idle) on the engine's store while it runs (issue 7's figure).
    api: bool,
    /// The receiver answers after this many ms; only the engine is measured (issue 21).
    receiver_ms: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        deliveries: 10_000,
        concurrency: 64,
        samples: 200,
        api: false,
        receiver_ms: 0,
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
            "--api" => a.api = true,
            "--receiver-ms" => a.receiver_ms = num("--receiver-ms"),
            // `cargo bench` passes --bench; other harness flags mean nothing here.
            _ => {}
        }
    }
    a
}

fn read_db(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("the database opens read-only")
}

/// The outcome the dispatcher records for a plain 200 (the headers it sends and gets back).
fn ok_outcome() -> AttemptOutcome {
    let now = chrono::Utc::now().timestamp_millis();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    AttemptOutcome {
        started_at: now,
        duration_ms: 1,
        url: "http://127.0.0.1:9/solo".into(),
        request_headers: pairs(&[
            ("content-type", "application/json"),
            ("user-agent", "hookops/0.1.0"),
            ("webhook-id", "msg_2pqJ4q8pC9Xb1h0x3mZ7wKfR5sT"),
            ("webhook-timestamp", "1764316800"),
            ("hookops-attempt", "1"),
        ]),
        status: Some(200),
        response_headers: pairs(&[
            ("content-type", "application/json"),
            ("content-length", "11"),
            ("date", "Sat, 28 Nov 2026 07:00:00 GMT"),
        ]),
        response_body: Some(b"{\"ok\":true}".to_vec()),
        ..AttemptOutcome::default()
    }
}

/// Phase 4: every due delivery leased and recorded with `outcome` the way the dispatcher's
/// batcher does when all `concurrency` slots finish together: one write job records them
/// all and leases their next deliveries. Deliveries per second.
async fn store_alone(store: &Store, concurrency: usize) -> (f64, usize) {
    let owner = "bench-store";
    let outcome = ok_outcome();
    let started = Instant::now();
    let mut leases = store
        .lease_due(owner, concurrency, Vec::new())
        .await
        .expect("lease");
    let mut n = 0;
    while !leases.is_empty() {
        n += leases.len();
        let want = leases.len();
        let finished = Arc::new(leases.into_iter().map(|l| (l, outcome.clone())).collect());
        leases = store
            .record_and_lease(owner, move || (finished, want))
            .await
            .expect("record and lease")
            .1;
    }
    (n as f64 / started.elapsed().as_secs_f64(), n)
}

/// The same with one write job per lease and per record, as slots that finish one at a
/// time hand them in (the dispatcher before its batcher).
async fn store_alone_unbatched(store: &Store, concurrency: usize) -> (f64, usize) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..concurrency {
        let store = store.clone();
        tasks.spawn(async move {
            let owner = format!("bench-store-{slot}");
            let outcome = ok_outcome();
            let mut n = 0;
            while let Some(lease) = store
                .lease_due(&owner, 1, Vec::new())
                .await
                .expect("lease")
                .pop()
            {
                store
                    .record_attempt(&lease, outcome.clone())
                    .await
                    .expect("record");
                n += 1;
            }
            n
        });
    }
    let mut n = 0;
    while let Some(done) = tasks.join_next().await {
        n += done.expect("store task");
    }
    (n as f64 / started.elapsed().as_secs_f64(), n)
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

fn delivery_of(conn: &rusqlite::Connection, item: &str) -> (String, i64) {
    conn.query_row(
        "SELECT id, created_at FROM deliveries WHERE item_id = ?1 ORDER BY seq DESC LIMIT 1",
        [item],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("the item's delivery")
}

fn wait_succeeded(conn: &rusqlite::Connection, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state: String = conn
            .query_row("SELECT state FROM deliveries WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .expect("delivery state");
        if state == "succeeded" {
            return;
        }
        assert!(Instant::now() < deadline, "delivery {id} is still {state}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One sample series of idle latency (ms), entering items `ids` one at a time with `enter`.
fn latency_series(
    db: &Path,
    tail: &mut RecordTail,
    ids: &[String],
    mut enter: impl FnMut(&str),
) -> Vec<f64> {
    let conn = read_db(db);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        enter(id);
        let (delivery, created_ms) = delivery_of(&conn, id);
        let (arrived_id, at_us) = tail.next(Instant::now() + Duration::from_secs(10));
        assert_eq!(arrived_id, delivery, "requests arrive one at a time");
        out.push((at_us - created_ms * 1000) as f64 / 1000.0);
        // Idle again (attempt recorded) before the next one, then a random pause so samples
        // fall at every phase of the dispatcher's 15 ms data_version poll.
        wait_succeeded(&conn, &delivery);
        std::thread::sleep(Duration::from_millis(fastrand::u64(5..40)));
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Issue 21: the engine alone against a receiver that answers after `receiver_ms`, beside the
/// Little's-law limit of its concurrency.
fn slow_receiver(rt: &tokio::runtime::Runtime, db: &Path, args: &Args) {
    let n = args.deliveries;
    let store = Store::open(db, &OpenOptions::default()).expect("store opens");
    let (stop_tx, stop_rx) = watch::channel(false);
    let (events, _) = broadcast::channel(16);
    let opts = DispatcherOptions {
        concurrency: args.concurrency,
        ..DispatcherOptions::default()
    };
    let started = Instant::now();
    let dispatcher = rt.spawn(run(store.clone(), opts, events, stop_rx));
    while succeeded(&store) < n as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the engine did not finish in 10 min"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = rt.block_on(dispatcher);
    let rate = n as f64 / secs;
    let limit = args.concurrency as f64 * 1000.0 / args.receiver_ms as f64;
    println!(
        "slow receiver ({} ms) · {n} deliveries · concurrency {}: {rate:.0} deliveries/s in \
         {secs:.1} s · Little's-law limit {limit:.0}/s · {:.2} of it · peak RSS {:.1} MB",
        args.receiver_ms,
        args.concurrency,
        rate / limit,
        peak_rss_mb()
    );
}

fn main() {
    let args = parse_args();
    let n = args.deliveries;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("bench.db");
    let record = dir.path().join("received.jsonl");
    std::fs::File::create(&record).expect("record file");

    let slow_script = format!("/hook=slow:{}ms,*=ok", args.receiver_ms);
    let fast = ReceiverProcess::scripted(None, (args.receiver_ms > 0).then_some(&*slow_script));
    let recording = ReceiverProcess::start(Some(&record));

    // Setup (not timed): two workflows, N items assigned into the webhook stage, and items
    // waiting in the dataset stage for the latency samples.
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::File::create(&p)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("write setup file");
        p
    };
    let wf = write(
        "bench.toml",
        &workflow_toml("bench", &format!("{}/hook", fast.base)),
    );
    let idle_wf = write(
        "idle.toml",
        &workflow_toml("idle", &format!("{}/idle", recording.base)),
    );
    let solo_wf = write(
        "solo.toml",
        &workflow_toml("solo", "http://127.0.0.1:9/solo"),
    );
    let items = write("items.jsonl", &items_jsonl("bench", n));
    let solo_items = write("solo.jsonl", &items_jsonl("solo", 2 * n));
    let idle_items = write("idle.jsonl", &items_jsonl("idle", 2 * args.samples));
    let db_s = db.to_str().expect("utf-8 temp path");
    let setup = Instant::now();
    hookops(&db, &["workflow", "apply", wf.to_str().unwrap_or_default()]);
    hookops(
        &db,
        &["workflow", "apply", idle_wf.to_str().unwrap_or_default()],
    );
    hookops(
        &db,
        &[
            "item",
            "import",
            "--workflow",
            "bench",
            items.to_str().unwrap_or_default(),
        ],
    );
    hookops(
        &db,
        &["workflow", "apply", solo_wf.to_str().unwrap_or_default()],
    );
    hookops(
        &db,
        &[
            "item",
            "import",
            "--workflow",
            "solo",
            solo_items.to_str().unwrap_or_default(),
        ],
    );
    hookops(
        &db,
        &[
            "item",
            "import",
            "--workflow",
            "idle",
            idle_items.to_str().unwrap_or_default(),
        ],
    );
    hookops(
        &db,
        &[
            "assign",
            "--workflow",
            "bench",
            "--stage",
            "hook",
            "--from-stage",
            "dataset",
        ],
    );
    let bodies: Vec<Vec<u8>> = {
        let conn = read_db(&db);
        let mut q = conn
            .prepare(
                "SELECT b.body FROM deliveries d JOIN delivery_bodies b ON b.seq = d.seq
                 WHERE d.workflow_id = 'bench' ORDER BY d.seq",
            )
            .expect("query bodies");
        q.query_map([], |r| r.get(0))
            .expect("bodies")
            .collect::<Result<_, _>>()
            .expect("bodies")
    };
    assert_eq!(bodies.len(), n, "every item has a delivery");
    let mean_body = bodies.iter().map(Vec::len).sum::<usize>() / n.max(1);
    eprintln!(
        "setup: {n} deliveries of {mean_body} B mean in {:.1} s ({db_s})",
        setup.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    if args.receiver_ms > 0 {
        slow_receiver(&rt, &db, &args);
        return;
    }

    // (a) Baseline.
    let receiver_pid = fast.child.id();
    let (client_cpu0, receiver_cpu0) = (thread_cpu("tokio-rt"), process_cpu(receiver_pid));
    let bodies = Arc::new(bodies);
    let baseline_url = format!("{}/baseline", fast.base);
    let base_before = rt.block_on(baseline(&baseline_url, bodies.clone(), args.concurrency));
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let base_client_us = per(thread_cpu("tokio-rt") - client_cpu0);
    let base_receiver_us = per(process_cpu(receiver_pid) - receiver_cpu0);
    eprintln!("baseline: {base_before:.0} requests/s");

    // (b) The engine, from a cold start of the dispatcher to the last success recorded.
    let store = Store::open(&db, &OpenOptions::default()).expect("store opens");
    let (stop_tx, stop_rx) = watch::channel(false);
    let (events, _) = broadcast::channel(16);
    let opts = DispatcherOptions {
        concurrency: args.concurrency,
        ..DispatcherOptions::default()
    };
    if args.api {
        // The API idles beside the dispatcher: bound, serving, its metrics fed from `events`.
        let server = rt
            .block_on(hookops::api::Server::bind(
                store.clone(),
                hookops::api::ApiOptions {
                    addr: ([127, 0, 0, 1], 0).into(),
                    tokens: hookops::api::Tokens::single("bench", "bench-token-0123456789")
                        .expect("token"),
                    max_body: hookops::api::DEFAULT_MAX_BODY,
                    max_send_body: hookops::dispatch::http::DEFAULT_MAX_BODY,
                },
                Arc::new(hookops::api::Metrics::default()),
                Some(events.clone()),
            ))
            .expect("API binds");
        eprintln!("api: serving on {}", server.local_addr().expect("address"));
        rt.spawn(server.run(stop_rx.clone()));
    }
    let (_, tx0, jobs0) = store.writer_stats(true);
    let busy0 = store.writer_busy_us();
    let (writer_cpu0, runtime_cpu0) = (thread_cpu("hookops-writer"), thread_cpu("tokio-rt"));
    let receiver_cpu0 = process_cpu(receiver_pid);
    let started = Instant::now();
    let dispatcher = rt.spawn(run(store.clone(), opts, events, stop_rx));
    let deadline = started + Duration::from_secs(600);
    while succeeded(&store) < n as i64 {
        assert!(
            Instant::now() < deadline,
            "the engine did not finish in 10 min"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let engine_secs = started.elapsed().as_secs_f64();
    let engine_rate = n as f64 / engine_secs;
    let (max_hold_us, tx1, jobs1) = store.writer_stats(false);
    let busy = (store.writer_busy_us() - busy0) as f64 / 1e6;
    let writer_cpu_us = (thread_cpu("hookops-writer") - writer_cpu0).as_secs_f64() * 1e6 / n as f64;
    let runtime_cpu_us = (thread_cpu("tokio-rt") - runtime_cpu0).as_secs_f64() * 1e6 / n as f64;
    let receiver_cpu_us = per(process_cpu(receiver_pid) - receiver_cpu0);
    let attempts: i64 = read_db(&db)
        .query_row(
            "SELECT COUNT(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             WHERE d.workflow_id = 'bench' AND a.status = 200",
            [],
            |r| r.get(0),
        )
        .expect("count attempts");
    assert_eq!(attempts, n as i64, "every attempt is recorded");
    eprintln!(
        "engine: {engine_rate:.0} deliveries/s · peak RSS so far {:.1} MB",
        peak_rss_mb()
    );
    // The baseline again right after the engine: this machine's speed drifts within a minute,
    // and the ratio is taken against the mean of the two.
    let base_after = rt.block_on(baseline(&baseline_url, bodies, args.concurrency));
    let base_rate = (base_before + base_after) / 2.0;
    eprintln!("baseline again: {base_after:.0} requests/s");

    // (c) Idle latency, the same dispatcher still running.
    let mut tail = RecordTail {
        file: std::fs::File::open(&record).expect("record file"),
        pending: String::new(),
    };
    tail.file.seek(SeekFrom::End(0)).expect("seek");
    let ids: Vec<String> = (0..2 * args.samples)
        .map(|i| format!("idle-{i:06}"))
        .collect();
    let (same_ids, cli_ids) = ids.split_at(args.samples);
    let (idle, hook) = (WorkflowId::new("idle"), StageId::new("hook"));
    let same = latency_series(&db, &mut tail, same_ids, |id| {
        store
            .assign(
                &idle,
                &hook,
                &AssignTarget::Items(vec![ItemId::new(id)]),
                None,
                "bench",
            )
            .expect("assign in process");
    });
    let other = latency_series(&db, &mut tail, cli_ids, |id| {
        hookops(
            &db,
            &["assign", "--workflow", "idle", "--stage", "hook", id],
        );
    });

    let _ = stop_tx.send(true);
    let _ = rt.block_on(dispatcher);

    // (d) The store alone, the dispatcher stopped: deliveries entered now (not timed), in
    // rounds that alternate batched and unbatched so both see the same machine.
    let mut solo = [(0.0f64, 0.0f64); 2];
    let rounds = 4;
    for round in 0..rounds * 2 {
        store
            .assign(
                &WorkflowId::new("solo"),
                &hook,
                &AssignTarget::FromStage {
                    stage: StageId::new("dataset"),
                    limit: Some(n / rounds),
                },
                None,
                "bench",
            )
            .expect("assign the store-alone items");
        let writer_cpu0 = thread_cpu("hookops-writer");
        let t0 = Instant::now();
        let (_, done) = if round % 2 == 0 {
            rt.block_on(store_alone(&store, args.concurrency))
        } else {
            rt.block_on(store_alone_unbatched(&store, args.concurrency))
        };
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (thread_cpu("hookops-writer") - writer_cpu0).as_secs_f64();
        solo[round % 2].0 += secs / done as f64;
        solo[round % 2].1 += cpu / done as f64;
    }
    let ratio = engine_rate / base_rate;
    // Every side runs on the same cores. Had the engine kept them as busy as the baseline did,
    // its ratio would be the baseline's CPU per request over its own CPU per delivery: the part
    // of the gap that is CPU, apart from the part that is waiting (README, "Performance").
    // Per request rather than per core: on a shared VM the cores a run gets vary.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let base_cpu = base_client_us + base_receiver_us;
    let engine_cpu = writer_cpu_us + runtime_cpu_us + receiver_cpu_us;
    let at_base_use = base_cpu / engine_cpu;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let (p50s, p99s) = (percentile(&same, 50.0), percentile(&same, 99.0));
    let (p50o, p99o) = (percentile(&other, 50.0), percentile(&other, 99.0));
    let txs = (tx1 - tx0).max(1);
    println!();
    println!(
        "hookops delivery benchmark · {} · {n} deliveries · concurrency {} · {mean_body} B bodies · synchronous=FULL · {} cores",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("{:<44} {:>22}  {:<14}", "measure", "figure", "target");
    println!(
        "{:<44} {:>22}",
        "(a) baseline: keep-alive POSTs",
        format!("{base_rate:.0} req/s")
    );
    println!(
        "{:<44} {:>22}",
        "    before / after the engine",
        format!("{base_before:.0} / {base_after:.0}")
    );
    println!(
        "{:<44} {:>22}",
        "(b) engine: deliveries, every attempt durable",
        format!("{engine_rate:.0} deliveries/s")
    );
    println!(
        "{:<44} {:>22}  {:<14} {}",
        "    engine / baseline",
        format!("{ratio:.2}"),
        format!(">= {THROUGHPUT_TARGET:.2}"),
        verdict(ratio >= THROUGHPUT_TARGET)
    );
    println!(
        "{:<44} {:>22}",
        "    ratio at the baseline's core use",
        format!("{at_base_use:.2}")
    );
    println!(
        "{:<44} {:>22}  {:<14} {}",
        format!("(c) idle latency, same process (n={})", same.len()),
        format!("p50 {p50s:.1} ms, p99 {p99s:.1} ms"),
        format!("p99 < {P99_TARGET_MS:.0} ms"),
        verdict(p99s < P99_TARGET_MS)
    );
    println!(
        "{:<44} {:>22}  {:<14} {}",
        format!("    idle latency, other process (n={})", other.len()),
        format!("p50 {p50o:.1} ms, p99 {p99o:.1} ms"),
        format!("p99 < {P99_TARGET_MS:.0} ms"),
        verdict(p99o < P99_TARGET_MS)
    );
    println!(
        "writer during (b): {} transactions, {:.1} jobs each, longest held {:.1} ms, busy {:.0} % of the time",
        tx1 - tx0,
        (jobs1 - jobs0) as f64 / txs as f64,
        max_hold_us as f64 / 1000.0,
        100.0 * busy / engine_secs
    );
    println!(
        "CPU per request during (a): client threads {base_client_us:.0} µs, receiver {base_receiver_us:.0} µs"
    );
    println!(
        "CPU per delivery during (b): writer thread {writer_cpu_us:.0} µs, runtime threads {runtime_cpu_us:.0} µs, receiver {receiver_cpu_us:.0} µs"
    );
    for (name, (secs, cpu)) in ["batched", "unbatched"].iter().zip(solo) {
        let rate = rounds as f64 / secs;
        println!(
            "(d) store alone, no HTTP, {name}: {rate:.0} deliveries/s ({:.2} × baseline), writer thread {:.0} µs per delivery",
            rate / base_rate,
            cpu * 1e6 / rounds as f64
        );
    }
    println!(
        "cores busy: baseline {:.0} %, engine {:.0} %",
        100.0 * base_cpu * base_before / (cores * 1e6),
        100.0 * engine_cpu * engine_rate / (cores * 1e6)
    );
    println!(
        "ratio at the baseline's core use: its {base_cpu:.0} µs per request / the engine's {engine_cpu:.0} µs per delivery = {at_base_use:.2}; the target would need {:.0} µs or less at that core use",
        base_cpu / THROUGHPUT_TARGET
    );
}
