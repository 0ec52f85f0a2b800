//! Proof under stress (issue 6): the crash, fault, bad-input and security suites.
//!
//! Every test runs the real binary (`hookops serve`, the CLI, the console in a pseudo-terminal)
//! on SQLite files in temp dirs against the bundled receiver on 127.0.0.1, and reads the
//! outcome from the database and the receiver's record. Processes run with
//! `HOOKOPS_LOOPBACK_ONLY=1`, so nothing a test does can reach beyond loopback (design §6):
//! names other than `localhost` are never looked up, and `HOOKOPS_RESOLVE` makes test names
//! resolve to chosen addresses without DNS.
//!
//! The crash suite's size is bounded by default (~1 minute on 2 cores); more with
//! `HOOKOPS_STRESS_ITEMS=N HOOKOPS_STRESS_CYCLES=N` (see README).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hookops::receiver::{Received, Receiver, ReceiverOptions};
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_hookops");

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn receiver(rt: &tokio::runtime::Runtime, script: &str) -> Receiver {
    rt.block_on(Receiver::start(ReceiverOptions {
        script: script.parse().unwrap(),
        ..ReceiverOptions::default()
    }))
    .unwrap()
}

/// A `hookops` command on `db` that can only reach loopback.
fn hookops(db: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--db")
        .arg(db)
        .args(["--operator", "stress"])
        .env("HOOKOPS_LOOPBACK_ONLY", "1")
        .env_remove("HOOKOPS_DB")
        .stdin(Stdio::null());
    c
}

fn cli(db: &Path, args: &[&str]) -> Output {
    hookops(db).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(db: &Path, args: &[&str]) -> String {
    let o = cli(db, args);
    assert!(
        o.status.success(),
        "hookops {args:?}: {}\n{}",
        o.status,
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A `serve` child that is killed if a test fails before it stops it.
struct Serve(Child);

impl std::ops::Deref for Serve {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Serve {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `hookops serve` with stdout and stderr in `log`.
fn serve(db: &Path, log: &Path, extra: &[&str], env: &[(&str, &str)]) -> Serve {
    let out = std::fs::File::create(log).unwrap();
    let mut c = hookops(db);
    c.arg("serve");
    if !extra.contains(&"--concurrency") {
        c.args(["--concurrency", "16"]);
    }
    c.args(extra).stdout(out.try_clone().unwrap()).stderr(out);
    for (k, v) in env {
        c.env(k, v);
    }
    Serve(c.spawn().unwrap())
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn term(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sql(db: &Path) -> Connection {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c
}

fn count(c: &Connection, q: &str) -> i64 {
    c.query_row(q, [], |r| r.get(0)).unwrap()
}

fn write_workflow(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("wf.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn import(db: &Path, dir: &Path, lines: impl Iterator<Item = String>) {
    let file = dir.join("items.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    drop(f);
    ok(
        db,
        &["item", "import", "--workflow", "wf", file.to_str().unwrap()],
    );
}

fn open_deliveries(c: &Connection) -> i64 {
    count(
        c,
        "SELECT COUNT(*) FROM deliveries WHERE state IN ('pending','in_flight','retry_scheduled')",
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Crash suite
// ---------------------------------------------------------------------------------------------

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Items that are in a webhook stage waiting on a delivery must have an open delivery of that
/// stage, and every open delivery's item must be in its stage waiting on it.
fn assert_outbox_consistent(c: &Connection, when: &str) {
    let orphans = count(
        c,
        "SELECT COUNT(*) FROM items i WHERE i.state = 'in_delivery' AND NOT EXISTS (
             SELECT 1 FROM deliveries d WHERE d.item_id = i.id AND d.stage_id = i.stage_id
             AND d.event = 'stage.webhook' AND d.state IN ('pending','in_flight','retry_scheduled'))",
    );
    assert_eq!(
        orphans, 0,
        "{when}: items in delivery without an open delivery"
    );
    let strays = count(
        c,
        "SELECT COUNT(*) FROM deliveries d JOIN items i ON i.id = d.item_id
         WHERE d.event = 'stage.webhook' AND d.state IN ('pending','in_flight','retry_scheduled')
         AND (i.stage_id != d.stage_id OR i.state != 'in_delivery')",
    );
    assert_eq!(
        strays, 0,
        "{when}: open deliveries of items that left their stage"
    );
    let doubles = count(
        c,
        "SELECT COUNT(*) FROM (SELECT item_id FROM deliveries WHERE event = 'stage.webhook'
         AND state IN ('pending','in_flight','retry_scheduled') GROUP BY item_id HAVING COUNT(*) > 1)",
    );
    assert_eq!(doubles, 0, "{when}: items with two open deliveries");
    let bodiless = count(
        c,
        "SELECT COUNT(*) FROM deliveries d
         WHERE NOT EXISTS (SELECT 1 FROM delivery_bodies b WHERE b.seq = d.seq)",
    );
    assert_eq!(bodiless, 0, "{when}: deliveries without their frozen body");
    let empty = count(
        c,
        "SELECT COUNT(*) FROM items i
         WHERE NOT EXISTS (SELECT 1 FROM item_content c WHERE c.seq = i.seq)",
    );
    assert_eq!(empty, 0, "{when}: items without their content");
    // The counters behind headers and stage lists agree with the rows (design §6).
    for (counts, table) in [("item_counts", "items"), ("delivery_counts", "deliveries")] {
        let wrong = count(
            c,
            &format!(
                "SELECT COUNT(*) FROM (
                     SELECT workflow_id, stage_id, state, COUNT(*) AS n FROM {table} GROUP BY 1, 2, 3
                 ) a FULL JOIN (SELECT * FROM {counts} WHERE n != 0) k
                 USING (workflow_id, stage_id, state) WHERE a.n IS NOT k.n"
            ),
        );
        assert_eq!(wrong, 0, "{when}: {counts} disagree with the {table}");
    }
}

fn crash_workflow(a: &str, b: &str) -> String {
    format!(
        r#"id = "wf"
name = "Crash"
team = "qa"

[[stage]]
id = "dataset"
kind = "dataset"
next = "a"

[[stage]]
id = "a"
kind = "webhook"
url = "{a}"
on_success = "b"
on_failure = "park-a"
max_attempts = 2
timeout = "5s"
retry_schedule = ["100ms"]
pause_after_failures = 0

[[stage]]
id = "b"
kind = "webhook"
url = "{b}"
on_success = "done"
on_failure = "park-b"
max_attempts = 2
timeout = "5s"
retry_schedule = ["100ms"]
pause_after_failures = 0

[[stage]]
id = "park-a"
kind = "annotate"
next = "done"

[[stage]]
id = "park-b"
kind = "annotate"
next = "done"

[[stage]]
id = "done"
kind = "complete"
"#
    )
}

/// The crash suite's store: its workflow, `items` items, half of them assigned into `a`.
fn crash_setup(db: &Path, dir: &Path, workflow: &str, items: usize) {
    let wf = write_workflow(dir, workflow);
    ok(db, &["workflow", "apply", wf.to_str().unwrap()]);
    import(
        db,
        dir,
        (0..items)
            .map(|i| json!({"id": format!("c{i:05}"), "name": format!("c{i}.jpg")}).to_string()),
    );
    let half = (items / 2).to_string();
    ok(
        db,
        &[
            "assign",
            "--workflow",
            "wf",
            "--stage",
            "a",
            "--from-stage",
            "dataset",
            "--limit",
            &half,
        ],
    );
}

/// What a crash cycle runs beside `serve`: the rest of the items in cycle 2, bulk re-fires
/// every third cycle; the command and its child.
fn side_action(db: &Path, cycle: usize) -> Option<(Vec<&'static str>, Child)> {
    let args = match cycle {
        2 => vec![
            "assign",
            "--workflow",
            "wf",
            "--stage",
            "a",
            "--from-stage",
            "dataset",
        ],
        c if c % 3 == 2 => vec!["refire", "--failed", "--workflow", "wf", "--yes"],
        _ => return None,
    };
    let mut c = hookops(db);
    c.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped());
    Some((args, c.spawn().unwrap()))
}

#[test]
fn kill_9_at_random_moments_loses_nothing() {
    let items = env_num("HOOKOPS_STRESS_ITEMS", 2000);
    let cycles = env_num("HOOKOPS_STRESS_CYCLES", 12).max(10);
    let seed = env_num("HOOKOPS_STRESS_SEED", fastrand::usize(..1_000_000)) as u64;
    eprintln!("crash suite: {items} items, {cycles} cycles, HOOKOPS_STRESS_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let rt = runtime();
    let recv = receiver(&rt, "/a=flaky:35%,/b=flaky:25%,*=ok");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    crash_setup(
        &db,
        dir.path(),
        &crash_workflow(&recv.url("/a"), &recv.url("/b")),
        items,
    );

    // (delivery, attempt number) of every lease a kill left behind: the only places where an
    // `interrupted` row may appear.
    let mut taken_over: HashSet<(String, i64)> = HashSet::new();
    let mut bulk = Vec::new();
    for cycle in 0..cycles {
        let log = dir.path().join(format!("serve-{cycle}.log"));
        let mut s = serve(&db, &log, &[], &[]);
        // Something to do at the same time (one of them killed mid-way, like the dispatcher).
        let mut side = side_action(&db, cycle);
        std::thread::sleep(Duration::from_millis(rng.u64(300..1500)));
        if cycle == 5
            && let Some((_, child)) = side.as_mut()
        {
            let _ = child.kill(); // the bulk re-fire itself dies mid-way
        }
        s.kill().unwrap(); // SIGKILL
        s.wait().unwrap();
        if let Some((args, child)) = side {
            let out = child.wait_with_output().unwrap();
            let said = text(&out);
            assert!(
                !said.contains("database is locked"),
                "{args:?} said: {said}"
            );
            if cycle != 5 {
                assert!(
                    out.status.code().is_some_and(|c| c <= 1),
                    "{args:?}: {said}"
                );
            }
            bulk.push(said);
        }
        let c = sql(&db);
        let mut st = c
            .prepare("SELECT id, lease_number FROM deliveries WHERE state = 'in_flight'")
            .unwrap();
        let inflight: Vec<(String, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        eprintln!(
            "cycle {cycle}: killed with {} in flight, {} open",
            inflight.len(),
            open_deliveries(&c)
        );
        taken_over.extend(inflight);
        assert_outbox_consistent(&c, &format!("after kill {cycle}"));
    }
    assert!(!taken_over.is_empty(), "no kill caught a request in flight");

    // Settle: a last dispatcher finishes everything, including one more bulk re-fire.
    let log = dir.path().join("serve-final.log");
    let mut s = serve(&db, &log, &[], &[]);
    let c = sql(&db);
    let settled = |c: &Connection| {
        open_deliveries(c) == 0
            && count(c, "SELECT COUNT(*) FROM items WHERE stage_id = 'dataset'") == 0
    };
    wait_until("the run to settle", Duration::from_secs(180), || {
        settled(&c)
    });
    ok(&db, &["refire", "--failed", "--workflow", "wf", "--yes"]);
    wait_until("the re-fires to settle", Duration::from_secs(120), || {
        settled(&c)
    });
    term(&mut s);
    let serve_log = std::fs::read_to_string(&log).unwrap();
    assert!(!serve_log.contains("database is locked"), "{serve_log}");

    check_crash_invariants(&c, &recv, items, &taken_over);
    rt.block_on(recv.shutdown());
}

#[path = "support/pg.rs"]
mod pg;

/// Issue 17: the crash suite on PostgreSQL, with two `serve` processes on two hosts (named by
/// `HOOKOPS_HOST`) sharing one database. Each cycle kills one of them with SIGKILL and starts
/// it again on its host, which takes its predecessor's leases at once (a dead pid on this
/// host). At the end one host never comes back: the other may take its leases only once they
/// expire (timeout + 30 s, design §7), and must. Then every item has exactly one outcome and
/// no attempt was sent twice. The store is read through `db copy` snapshots into SQLite files,
/// so the same invariants as the SQLite crash suite are checked.
#[test]
fn kill_9_of_one_of_two_serves_on_two_hosts_on_postgresql_loses_nothing() {
    let items = env_num("HOOKOPS_STRESS_ITEMS", 2000) / 2;
    let cycles = env_num("HOOKOPS_STRESS_CYCLES", 12).max(10) * 2 / 3;
    let seed = env_num("HOOKOPS_STRESS_SEED", fastrand::usize(..1_000_000)) as u64;
    eprintln!(
        "crash suite on PostgreSQL: {items} items, {cycles} cycles, HOOKOPS_STRESS_SEED={seed}"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let rt = runtime();
    // `b` is slow, so a kill nearly always finds requests in flight.
    let recv = receiver(&rt, "/a=flaky:35%,/b=slow:300ms,*=ok");
    let dir = tempfile::tempdir().unwrap();
    let url = pg::cluster().database();
    let db = Path::new(&url);
    crash_setup(
        db,
        dir.path(),
        &crash_workflow(&recv.url("/a"), &recv.url("/b"))
            .replace("timeout = \"5s\"", "timeout = \"2s\""),
        items,
    );
    // A consistent snapshot of the shared database, as a SQLite file.
    let snapshot = |name: &str| {
        let copy = dir.path().join(format!("{name}.db"));
        assert!(!copy.exists(), "{name}: a snapshot is taken once");
        ok(db, &["db", "copy", &url, copy.to_str().unwrap()]);
        sql(&copy)
    };
    let hosts = ["host-a", "host-b"];
    let start = |host: &str, n: usize| {
        let log = dir.path().join(format!("serve-{host}-{n}.log"));
        serve(db, &log, &[], &[("HOOKOPS_HOST", host)])
    };
    let mut running = [start(hosts[0], 0), start(hosts[1], 0)];
    // (delivery, attempt number) of every lease in flight when a serve was killed.
    let mut taken_over: HashSet<(String, i64)> = HashSet::new();
    let in_flight = |c: &Connection| -> Vec<(String, i64, String)> {
        let mut st = c
            .prepare(
                "SELECT id, lease_number, lease_owner FROM deliveries WHERE state = 'in_flight'",
            )
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    for cycle in 0..cycles {
        let side = side_action(db, cycle);
        std::thread::sleep(Duration::from_millis(rng.u64(300..1500)));
        let victim = rng.usize(..2);
        running[victim].kill().unwrap(); // SIGKILL
        running[victim].wait().unwrap();
        if let Some((args, child)) = side {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.code().is_some_and(|c| c <= 1),
                "{args:?}: {}",
                text(&out)
            );
        }
        let c = snapshot(&format!("cycle-{cycle}"));
        let inflight = in_flight(&c);
        eprintln!(
            "cycle {cycle}: killed {} with {} in flight (both hosts), {} open",
            hosts[victim],
            inflight.len(),
            open_deliveries(&c)
        );
        taken_over.extend(inflight.into_iter().map(|(id, n, _)| (id, n)));
        assert_outbox_consistent(&c, &format!("after kill {cycle}"));
        running[victim] = start(hosts[victim], cycle + 1);
    }
    assert!(!taken_over.is_empty(), "no kill caught a request in flight");

    // host-a dies for good while its requests are in flight: host-b takes them over once
    // their leases expire, never before.
    let mut watch = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut pg_count = |q: &str| -> i64 { watch.query_one(q, &[]).unwrap().get(0) };
    wait_until("host-a to hold a lease", Duration::from_secs(60), || {
        pg_count(
            "SELECT COUNT(*) FROM deliveries WHERE state = 'in_flight' AND lease_owner LIKE 'host-a:%'",
        ) > 0
    });
    running[0].kill().unwrap();
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    running[0].wait().unwrap();
    let c = snapshot("last-kill");
    let orphaned: Vec<(String, i64)> = in_flight(&c)
        .into_iter()
        .filter(|(_, _, owner)| owner.starts_with("host-a:"))
        .map(|(id, n, _)| (id, n))
        .collect();
    taken_over.extend(in_flight(&c).into_iter().map(|(id, n, _)| (id, n)));
    let mut settled = || {
        pg_count(
            "SELECT COUNT(*) FROM deliveries WHERE state IN ('pending','in_flight','retry_scheduled')",
        ) == 0
            && pg_count("SELECT COUNT(*) FROM items WHERE stage_id = 'dataset'") == 0
    };
    wait_until(
        "host-b to settle the run",
        Duration::from_secs(240),
        &mut settled,
    );
    ok(db, &["refire", "--failed", "--workflow", "wf", "--yes"]);
    wait_until(
        "the re-fires to settle",
        Duration::from_secs(120),
        &mut settled,
    );
    term(&mut running[1]);
    let c = snapshot("final");
    // Each lease host-a left behind was taken over by host-b (an interrupted attempt row),
    // and not before it expired: its deadline was at most 2.3 s (the slow receiver's answer
    // and the request's timeout) short of the kill + 30 s.
    assert!(
        !orphaned.is_empty(),
        "the last kill caught no lease of host-a"
    );
    for (id, n) in &orphaned {
        let taken_at = count(
            &c,
            &format!(
                "SELECT COALESCE(MIN(started_at), 0) FROM attempts WHERE delivery_id = '{id}' AND number = {n}
                 AND error_kind = 'interrupted'"
            ),
        );
        assert!(taken_at > 0, "{id}: host-a's lease {n} was not taken over");
        assert!(
            taken_at >= killed_ms + 27_000,
            "{id}: host-a's lease {n} was taken {} ms after the kill, before it expired",
            taken_at - killed_ms
        );
    }
    check_crash_invariants(&c, &recv, items, &taken_over);
    rt.block_on(recv.shutdown());
}

fn check_crash_invariants(
    c: &Connection,
    recv: &Receiver,
    items: usize,
    taken_over: &HashSet<(String, i64)>,
) {
    assert_outbox_consistent(c, "at the end");
    // Every item reached an outcome: done, or parked after a failure.
    assert_eq!(count(c, "SELECT COUNT(*) FROM items"), items as i64);
    let stray = count(
        c,
        "SELECT COUNT(*) FROM items WHERE NOT ((stage_id = 'done' AND state = 'done')
         OR (stage_id IN ('park-a','park-b') AND state = 'active'))",
    );
    assert_eq!(stray, 0, "items not at an outcome");
    // Exactly one routed outcome per finished delivery, none for cancelled ones.
    let wrong = count(
        c,
        "SELECT COUNT(*) FROM deliveries d WHERE d.event = 'stage.webhook' AND
           (SELECT COUNT(*) FROM history h WHERE h.delivery_id = d.id
              AND h.cause IN ('webhook_success','webhook_failure'))
           != CASE WHEN d.state IN ('succeeded','failed') THEN 1 ELSE 0 END",
    );
    assert_eq!(wrong, 0, "deliveries routed other than once");
    // An item's outcome follows its last delivery: done after b succeeded, parked after a failure.
    let mismatched = count(
        c,
        "SELECT COUNT(*) FROM items i JOIN deliveries d ON d.seq =
           (SELECT MAX(seq) FROM deliveries WHERE item_id = i.id AND event = 'stage.webhook')
         WHERE NOT ((i.stage_id = 'done' AND d.stage_id = 'b' AND d.state = 'succeeded')
                 OR (i.stage_id = 'park-a' AND d.stage_id = 'a' AND d.state = 'failed')
                 OR (i.stage_id = 'park-b' AND d.stage_id = 'b' AND d.state = 'failed'))",
    );
    assert_eq!(
        mismatched, 0,
        "an item's place disagrees with its last delivery"
    );

    // The attempt log: numbers 1..n without gaps, counted ≤ max_attempts and equal to the
    // delivery's count, interrupted rows uncounted, never last, and only where a kill left a
    // lease behind.
    let mut st = c
        .prepare(
            "SELECT d.id, d.state, d.attempts, b.body, a.number, a.counted, a.status, a.error_kind
             FROM deliveries d JOIN delivery_bodies b ON b.seq = d.seq
             JOIN attempts a ON a.delivery_id = d.id
             WHERE d.event = 'stage.webhook' ORDER BY d.seq, a.number",
        )
        .unwrap();
    type Row = (
        String,
        String,
        i64,
        Vec<u8>,
        i64,
        bool,
        Option<i64>,
        Option<String>,
    );
    let rows: Vec<Row> = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut by_delivery: HashMap<String, Vec<&Row>> = HashMap::new();
    for r in &rows {
        by_delivery.entry(r.0.clone()).or_default().push(r);
    }
    let finished = count(
        c,
        "SELECT COUNT(*) FROM deliveries WHERE event = 'stage.webhook' AND state IN ('succeeded','failed')",
    );
    assert_eq!(
        by_delivery.len() as i64,
        finished,
        "a finished delivery without attempts"
    );
    let mut interrupted = 0;
    for (id, log) in &by_delivery {
        let numbers: Vec<i64> = log.iter().map(|r| r.4).collect();
        let want: Vec<i64> = (1..=log.len() as i64).collect();
        assert_eq!(numbers, want, "{id}: attempt numbers have gaps or repeats");
        let counted = log.iter().filter(|r| r.5).count() as i64;
        assert_eq!(
            counted, log[0].2,
            "{id}: counted rows differ from the delivery's count"
        );
        assert!(
            counted <= 2,
            "{id}: {counted} counted attempts, max_attempts is 2"
        );
        for r in log {
            if r.7.as_deref() == Some("interrupted") {
                interrupted += 1;
                assert!(!r.5, "{id}: an interrupted row was counted");
                assert!(
                    taken_over.contains(&(id.clone(), r.4)),
                    "{id}: interrupted attempt {} where no kill left a lease",
                    r.4
                );
            } else {
                assert!(r.5, "{id}: a scheduled attempt not counted");
                assert!(r.6.is_some(), "{id}: attempt {} has no status", r.4);
            }
        }
        let last = log.last().unwrap();
        match last.1.as_str() {
            "succeeded" => assert!(last.6.is_some_and(|s| (200..300).contains(&s)), "{id}"),
            "failed" => {
                assert_eq!(counted, 2, "{id}: failed before max_attempts");
                assert_eq!(last.6, Some(500), "{id}");
            }
            other => panic!("{id}: finished in state {other}"),
        }
    }
    eprintln!(
        "crash suite: {} deliveries, {} attempts, {interrupted} interrupted",
        by_delivery.len(),
        rows.len()
    );

    // The receiver's record: every finished delivery arrived, under its own webhook-id, with
    // the frozen body every time (a duplicate is the same delivery again), and every attempt
    // number it saw is in the attempt log.
    let got: Vec<Received> = recv.received();
    let mut seen: HashMap<&str, Vec<&Received>> = HashMap::new();
    for r in &got {
        let id = r
            .webhook_id
            .as_deref()
            .expect("every request has a webhook-id");
        seen.entry(id).or_default().push(r);
    }
    let mut duplicates = 0;
    for (id, log) in &by_delivery {
        let Some(reqs) = seen.get(id.as_str()) else {
            panic!("{id} was never received");
        };
        let body = &log[0].3;
        let mut numbers = HashSet::new();
        for r in reqs {
            assert_eq!(&r.body, body, "{id}: a request with another body");
            let n = r.attempt.expect("hookops-attempt") as i64;
            assert!(numbers.insert(n), "{id}: attempt number {n} sent twice");
            assert!(
                log.iter().any(|a| a.4 == n),
                "{id}: sent attempt {n} has no row"
            );
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["hookops"]["delivery_id"], id.as_str());
        }
        duplicates += reqs
            .len()
            .saturating_sub(log.iter().filter(|a| a.5).count());
    }
    for id in seen.keys() {
        assert!(
            by_delivery.contains_key(*id),
            "received {id}, which the database does not know"
        );
    }
    eprintln!(
        "crash suite: {} requests, {duplicates} re-sent after a crash",
        got.len()
    );
}

/// The terminal emulator and the raw bytes the console wrote, shared with a reader thread.
type Seen = Arc<(Mutex<(vt100::Parser, Vec<u8>)>, Condvar)>;

/// A pseudo-terminal running the console, its screen read through `vt100`.
struct Pty {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    seen: Seen,
    _master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Pty {
    fn start(dir: &Path, args: &[&str]) -> Pty {
        use portable_pty::{CommandBuilder, PtySize, native_pty_system};
        let size = PtySize {
            rows: 40,
            cols: 140,
            pixel_width: 0,
            pixel_height: 0,
        };
        let pair = native_pty_system().openpty(size).unwrap();
        let mut cmd = CommandBuilder::new(BIN);
        cmd.args(args);
        cmd.cwd(dir);
        cmd.env("TERM", "xterm-256color");
        cmd.env("HOME", dir);
        cmd.env("XDG_CONFIG_HOME", dir.join("config"));
        cmd.env("XDG_DATA_HOME", dir.join("data"));
        cmd.env("HOOKOPS_LOOPBACK_ONLY", "1");
        cmd.env_remove("HOOKOPS_DB");
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = pair.master.take_writer().unwrap();
        let seen = Arc::new((
            Mutex::new((
                vt100::Parser::new(
                    std::num::NonZeroU16::new(40).unwrap(),
                    std::num::NonZeroU16::new(140).unwrap(),
                    0,
                ),
                Vec::new(),
            )),
            Condvar::new(),
        ));
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            loop {
                let n = reader.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let mut g = s.0.lock().unwrap();
                g.0.process(&buf[..n]);
                g.1.extend_from_slice(&buf[..n]);
                s.1.notify_all();
            }
        });
        Pty {
            child,
            writer,
            seen,
            _master: pair.master,
        }
    }

    fn screen(&self) -> String {
        self.seen.0.lock().unwrap().0.screen().contents()
    }

    fn raw(&self) -> String {
        String::from_utf8_lossy(&self.seen.0.lock().unwrap().1).into_owned()
    }

    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(40);
        let (lock, cv) = &*self.seen;
        let mut g = lock.lock().unwrap();
        loop {
            let screen = g.0.screen().contents();
            if screen.contains(needle) {
                return screen;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {needle:?}:\n{screen}"
            );
            g = cv
                .wait_timeout(g, left.min(Duration::from_millis(200)))
                .unwrap()
                .0;
        }
    }

    fn send(&mut self, keys: &str) {
        self.writer.write_all(keys.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn console_serve_and_cli_write_one_database_without_lock_errors() {
    let rt = runtime();
    let recv = receiver(&rt, "/a=flaky:30%,*=ok");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let wf = write_workflow(
        dir.path(),
        &crash_workflow(&recv.url("/a"), &recv.url("/b")),
    );
    ok(&db, &["workflow", "apply", wf.to_str().unwrap()]);
    import(
        &db,
        dir.path(),
        (0..3000)
            .map(|i| json!({"id": format!("s{i:05}"), "name": format!("s{i}.jpg")}).to_string()),
    );
    // The console with its own dispatcher, serve, and the CLI, all writing at once.
    let mut console = Pty::start(
        dir.path(),
        &["--db", db.to_str().unwrap(), "--concurrency", "8"],
    );
    console.wait_for("workflows");
    let log = dir.path().join("serve.log");
    let mut s = serve(&db, &log, &[], &[]);
    let mut said = Vec::new();
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(8) || round < 6 {
        let commands: Vec<Vec<&str>> = vec![
            vec![
                "assign",
                "--workflow",
                "wf",
                "--stage",
                "a",
                "--from-stage",
                "dataset",
                "--limit",
                "300",
            ],
            vec!["refire", "--failed", "--workflow", "wf", "--yes"],
            vec!["stage", "pause", "--workflow", "wf", "b"],
            vec!["item", "list", "--workflow", "wf", "--limit", "50"],
            vec!["stage", "resume", "--workflow", "wf", "b"],
            vec!["policy", "set", "max_body_bytes", "8388608"],
            vec!["deliveries", "--state", "failed", "--limit", "20"],
        ];
        for args in commands {
            let out = cli(&db, &args);
            let t = text(&out);
            // Exit 1 is a refusal worded for the user (nothing to re-fire); never a lock.
            assert!(out.status.code().is_some_and(|c| c <= 1), "{args:?}: {t}");
            said.push(t);
        }
        console.send(if round % 2 == 0 {
            ":deliveries\r"
        } else {
            ":workflows\r"
        });
        round += 1;
    }
    let screen = console.screen();
    term(&mut s);
    let serve_log = std::fs::read_to_string(&log).unwrap();
    let all = format!(
        "{}\n{serve_log}\n{screen}\n{}",
        said.join("\n"),
        console.raw()
    );
    for bad in ["database is locked", "database is busy", "SQLITE_BUSY"] {
        assert!(!all.contains(bad), "{bad:?} reached a user:\n{all}");
    }
    // Everyone did write: deliveries made by the CLI's assigns were sent by both dispatchers.
    let c = sql(&db);
    assert!(count(&c, "SELECT COUNT(*) FROM attempts") > 0);
    assert!(count(&c, "SELECT COUNT(*) FROM audit WHERE action = 'assign'") >= 6);
    rt.block_on(recv.shutdown());
}

// ---------------------------------------------------------------------------------------------
// 2. Fault suite
// ---------------------------------------------------------------------------------------------

/// A small tmpfs mounted for one test (CI runs as root); unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        st.success().then_some(Tmpfs { dir })
    }

    fn remount(&self, opts: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "remount {opts}");
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn one_stage_workflow(url: &str, extra: &str) -> String {
    format!(
        r#"id = "wf"
name = "Faults"
team = "qa"

[[stage]]
id = "dataset"
kind = "dataset"
next = "hook"

[[stage]]
id = "hook"
kind = "webhook"
url = "{url}"
on_success = "done"
on_failure = "failed"
{extra}

[[stage]]
id = "failed"
kind = "annotate"
next = "done"

[[stage]]
id = "done"
kind = "complete"
"#
    )
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_full_disk_pauses_dispatch_which_resumes_without_loss_and_a_read_only_one_is_refused() {
    let Some(fs) = Tmpfs::mount("64m") else {
        // Mounting needs root, which CI has (design §6); say so rather than pass silently.
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root)");
        return;
    };
    let rt = runtime();
    // Each attempt keeps 64 KiB of the response: the database grows fast.
    let recv = receiver(&rt, "*=big-body");
    let db = fs.path().join("faults.db");
    let work = tempfile::tempdir().unwrap();
    let wf = write_workflow(
        work.path(),
        &one_stage_workflow(&recv.url("/hook"), "max_attempts = 3\ntimeout = \"10s\""),
    );
    ok(&db, &["workflow", "apply", wf.to_str().unwrap()]);
    let n = 400;
    import(
        &db,
        work.path(),
        (0..n).map(|i| json!({"id": format!("f{i:04}"), "name": "f.jpg"}).to_string()),
    );
    ok(
        &db,
        &[
            "assign",
            "--workflow",
            "wf",
            "--stage",
            "hook",
            "--from-stage",
            "dataset",
        ],
    );
    // Leave ~3 MB: room for a few dozen attempts.
    let used: u64 = std::fs::read_dir(fs.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    fs.remount(&format!("size={}", used + 3 * 1024 * 1024));
    let log = work.path().join("serve.log");
    let mut s = serve(&db, &log, &["--concurrency", "4"], &[]);
    wait_until(
        "dispatch to pause on a full disk",
        Duration::from_secs(60),
        || log_text(&log).contains("dispatch paused:"),
    );
    let paused = log_text(&log);
    let line = paused
        .lines()
        .find(|l| l.contains("dispatch paused:"))
        .unwrap()
        .to_string();
    assert!(line.contains("full"), "the pause should say why: {line}");
    let c = sql(&db);
    let done_while_full = count(&c, "SELECT COUNT(*) FROM items WHERE stage_id = 'done'");
    assert!(done_while_full < n, "the disk filled before the run ended");
    assert_outbox_consistent(&c, "while the disk is full");

    // Space returns: dispatch resumes on its own and every item is delivered.
    fs.remount("size=512m");
    wait_until("dispatch to resume", Duration::from_secs(30), || {
        log_text(&log).contains("dispatch resumed")
    });
    // Then the file becomes read-only mid-run.
    wait_until("a few more deliveries", Duration::from_secs(30), || {
        count(&c, "SELECT COUNT(*) FROM items WHERE stage_id = 'done'") > done_while_full + 20
    });
    // Then the file system goes read-only (a remount needs no open writers, so serve stops
    // first): a dispatcher started on it refuses to start in one sentence, nothing changes.
    term(&mut s);
    drop(c); // a reader keeps the WAL index open for writing too
    fs.remount("ro");
    let out = cli(&db, &["serve"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 1, "one sentence: {said}");
    assert!(lines[0].contains("read"), "{said}");
    fs.remount("rw");
    let mut s = serve(&db, &log, &["--concurrency", "4"], &[]);
    let c = sql(&db);
    wait_until(
        "every item to be delivered",
        Duration::from_secs(120),
        || count(&c, "SELECT COUNT(*) FROM items WHERE stage_id = 'done'") == n,
    );
    term(&mut s);
    let c = sql(&db);
    assert_outbox_consistent(&c, "at the end");
    assert_eq!(open_deliveries(&c), 0);
    let failed = count(
        &c,
        "SELECT COUNT(*) FROM deliveries WHERE state != 'succeeded'",
    );
    assert_eq!(failed, 0, "a fault lost or failed a delivery");
    // Nothing lost: every delivery reached the receiver.
    let ids: HashSet<String> = recv
        .received()
        .into_iter()
        .filter_map(|r| r.webhook_id)
        .collect();
    let mut st = c.prepare("SELECT id FROM deliveries").unwrap();
    let all: Vec<String> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(all.len(), n as usize);
    for id in &all {
        assert!(ids.contains(id), "{id} was never sent");
    }
    // No outcome was lost while the disk was full: every attempt that was sent was recorded
    // once space returned (a lost one would show as an `interrupted` row and a second send
    // after its lease expired).
    let interrupted = count(
        &c,
        "SELECT COUNT(*) FROM attempts WHERE error_kind = 'interrupted'",
    );
    assert_eq!(
        interrupted, 0,
        "attempt outcomes were lost to the full disk"
    );
    let received = recv.received().len();
    assert_eq!(received, n as usize, "deliveries were sent twice");
    rt.block_on(recv.shutdown());
}

/// Moves everything from the WAL into the database file and removes the WAL, so damage
/// done to the file is what SQLite reads.
fn checkpoint(db: &Path) {
    let c = Connection::open(db).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
        .unwrap();
    drop(c);
    assert!(!db.with_extension("db-wal").exists());
}

#[test]
fn a_corrupt_or_foreign_database_is_refused_at_start_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    // A real hookops database whose header is then overwritten.
    let corrupt = dir.path().join("corrupt.db");
    let tw = dir.path().join("wf.toml");
    std::fs::write(&tw, one_stage_workflow("http://127.0.0.1:9/x", "")).unwrap();
    ok(&corrupt, &["workflow", "apply", tw.to_str().unwrap()]);
    checkpoint(&corrupt);
    let mut bytes = std::fs::read(&corrupt).unwrap();
    for b in bytes.iter_mut().take(100) {
        *b = 0x5a;
    }
    std::fs::write(&corrupt, &bytes).unwrap();
    // A database whose page 2 onward is garbage (the header is intact).
    let torn = dir.path().join("torn.db");
    ok(&torn, &["workflow", "apply", tw.to_str().unwrap()]);
    checkpoint(&torn);
    let mut bytes = std::fs::read(&torn).unwrap();
    let page = 4096.min(bytes.len() / 2);
    for (i, b) in bytes.iter_mut().enumerate().skip(page) {
        *b = (i * 7 % 251) as u8;
    }
    std::fs::write(&torn, &bytes).unwrap();
    // Another program's SQLite file.
    let foreign = dir.path().join("foreign.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
        .unwrap();
    for (db, words) in [
        (&corrupt, "not an SQLite database"),
        (&torn, "malformed"),
        (&foreign, "belongs to another program"),
    ] {
        for args in [&["serve"][..], &["item", "list"], &[]] {
            let mut c = hookops(db);
            c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
            let out = c.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let name = db.file_name().unwrap().to_string_lossy();
            assert!(
                matches!(out.status.code(), Some(1 | 2)),
                "{name} {args:?}: {} {err}",
                out.status
            );
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{name} {args:?}: one sentence, got {err}");
            assert!(
                lines[0].contains(words) && lines[0].contains(&*name),
                "{name} {args:?}: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn a_silent_or_trickling_receiver_is_cut_off_without_starving_others() {
    let rt = runtime();
    let recv = receiver(&rt, "/hang=hang,/trickle=trickle,*=ok");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("slow.db");
    let stage = |id: &str, path: &str| {
        format!(
            r#"
[[stage]]
id = "{id}"
kind = "webhook"
url = "{}"
on_success = "done"
on_failure = "parked"
max_attempts = 1
timeout = "3s"
"#,
            recv.url(path)
        )
    };
    let wf = format!(
        r#"id = "wf"
name = "Slow"
team = "qa"

[[stage]]
id = "dataset"
kind = "dataset"
next = "fast"
{}{}{}
[[stage]]
id = "parked"
kind = "annotate"
next = "done"

[[stage]]
id = "done"
kind = "complete"
"#,
        stage("fast", "/fast"),
        stage("hang", "/hang"),
        stage("trickle", "/trickle")
    );
    let wf = write_workflow(dir.path(), &wf);
    ok(&db, &["workflow", "apply", wf.to_str().unwrap()]);
    import(
        &db,
        dir.path(),
        (0..212).map(|i| json!({"id": format!("t{i:03}"), "name": "t.jpg"}).to_string()),
    );
    let slow: Vec<String> = (0..12).map(|i| format!("t{i:03}")).collect();
    let mut hang = vec!["assign", "--workflow", "wf", "--stage", "hang"];
    hang.extend(slow[..6].iter().map(String::as_str));
    let mut trickle = vec!["assign", "--workflow", "wf", "--stage", "trickle"];
    trickle.extend(slow[6..].iter().map(String::as_str));
    ok(&db, &hang);
    ok(&db, &trickle);
    let log = dir.path().join("serve.log");
    let started = Instant::now();
    // 16 slots: 12 are held by the slow receivers; the other stage still flows.
    let mut s = serve(&db, &log, &[], &[]);
    wait_until(
        "the slow requests to arrive",
        Duration::from_secs(20),
        || recv.received().iter().filter(|r| r.path != "/fast").count() == 12,
    );
    ok(
        &db,
        &[
            "assign",
            "--workflow",
            "wf",
            "--stage",
            "fast",
            "--from-stage",
            "dataset",
        ],
    );
    let c = sql(&db);
    wait_until("the fast stage to finish", Duration::from_secs(20), || {
        count(
            &c,
            "SELECT COUNT(*) FROM deliveries WHERE stage_id = 'fast' AND state = 'succeeded'",
        ) == 200
    });
    let slow_open = count(
        &c,
        "SELECT COUNT(*) FROM deliveries WHERE stage_id IN ('hang','trickle') AND state = 'in_flight'",
    );
    assert_eq!(
        slow_open, 12,
        "the fast stage finished while the slow ones were still waiting"
    );
    wait_until(
        "the slow ones to be cut off",
        Duration::from_secs(20),
        || open_deliveries(&c) == 0,
    );
    let took = started.elapsed();
    term(&mut s);
    assert!(took < Duration::from_secs(15), "cut off after {took:?}");
    let mut st = c
        .prepare(
            "SELECT d.stage_id, d.state, a.duration_ms, a.status, a.error_kind, a.error_message
             FROM deliveries d JOIN attempts a ON a.delivery_id = d.id
             WHERE d.stage_id IN ('hang','trickle')",
        )
        .unwrap();
    type Row = (
        String,
        String,
        i64,
        Option<i64>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 12);
    for (stage, state, ms, status, kind, msg) in rows {
        assert!((3000..6000).contains(&ms), "{stage}: cut off after {ms} ms");
        let msg = msg.unwrap_or_default();
        assert!(
            msg.contains("timed out after 3 s") || msg.contains("timed out after 3"),
            "{stage}: {msg}"
        );
        if stage == "hang" {
            assert_eq!(
                (state.as_str(), status, kind.as_deref()),
                ("failed", None, Some("timeout"))
            );
        } else {
            // The status arrived: it decides; the endless body is recorded beside it.
            assert_eq!(
                (state.as_str(), status, kind.as_deref()),
                ("succeeded", Some(200), Some("body"))
            );
        }
    }
    rt.block_on(recv.shutdown());
}

#[test]
fn names_that_do_not_resolve_are_a_clear_connect_error_and_nothing_leaves_loopback() {
    let rt = runtime();
    let recv = receiver(&rt, "*=ok");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dns.db");
    let port = recv
        .url("/")
        .split(':')
        .nth(2)
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let stage = |id: &str, url: &str| {
        format!(
            "\n[[stage]]\nid = \"{id}\"\nkind = \"webhook\"\nurl = \"{url}\"\non_success = \"done\"\non_failure = \"parked\"\nmax_attempts = 1\ntimeout = \"2s\"\n"
        )
    };
    let wf = format!(
        "id = \"wf\"\nname = \"DNS\"\nteam = \"qa\"\n\n[[stage]]\nid = \"dataset\"\nkind = \"dataset\"\nnext = \"nx\"\n{}{}{}{}\n[[stage]]\nid = \"parked\"\nkind = \"annotate\"\nnext = \"done\"\n\n[[stage]]\nid = \"done\"\nkind = \"complete\"\n",
        stage("nx", "http://receiver.does-not-exist.invalid/hook"),
        stage("public", "http://example.com/hook"),
        stage("mapped", &format!("http://hooks.test:{port}/mapped")),
        stage("local", &format!("http://localhost:{port}/local")),
    );
    let wf = write_workflow(dir.path(), &wf);
    ok(&db, &["workflow", "apply", wf.to_str().unwrap()]);
    import(
        &db,
        dir.path(),
        (0..4).map(|i| json!({"id": format!("d{i}"), "name": "d.jpg"}).to_string()),
    );
    for (item, stage) in [
        ("d0", "nx"),
        ("d1", "public"),
        ("d2", "mapped"),
        ("d3", "local"),
    ] {
        ok(&db, &["assign", "--workflow", "wf", "--stage", stage, item]);
    }
    let log = dir.path().join("serve.log");
    let mut s = serve(
        &db,
        &log,
        &[],
        &[("HOOKOPS_RESOLVE", "hooks.test=127.0.0.1")],
    );
    let c = sql(&db);
    wait_until("the four deliveries", Duration::from_secs(30), || {
        open_deliveries(&c) == 0 && count(&c, "SELECT COUNT(*) FROM deliveries") == 4
    });
    term(&mut s);
    let attempt = |stage: &str| -> (String, Option<String>, String) {
        c.query_row(
            "SELECT d.state, a.error_kind, COALESCE(a.error_message, '') FROM deliveries d
             JOIN attempts a ON a.delivery_id = d.id WHERE d.stage_id = ?1",
            [stage],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    let (state, kind, msg) = attempt("nx");
    assert_eq!(
        (state.as_str(), kind.as_deref()),
        ("failed", Some("connect"))
    );
    assert_eq!(
        msg,
        "could not resolve host receiver.does-not-exist.invalid"
    );
    // The guard refuses a public name without asking DNS.
    let (state, kind, msg) = attempt("public");
    assert_eq!(
        (state.as_str(), kind.as_deref()),
        ("failed", Some("policy")),
        "{msg}"
    );
    assert!(msg.contains("HOOKOPS_LOOPBACK_ONLY"), "{msg}");
    // Names mapped to loopback, and localhost, are delivered.
    assert_eq!(attempt("mapped").0, "succeeded");
    assert_eq!(attempt("local").0, "succeeded");
    let paths: Vec<String> = recv.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    // `delivery show` words it.
    let id: String = c
        .query_row("SELECT id FROM deliveries WHERE stage_id = 'nx'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let shown = ok(&db, &["delivery", "show", &id]);
    assert!(
        shown.contains("could not resolve host receiver.does-not-exist.invalid"),
        "{shown}"
    );
    rt.block_on(recv.shutdown());
}

// ---------------------------------------------------------------------------------------------
// 3. Bad input suite (the fixture corpora are tests/fixtures; their runners are unit tests)
// ---------------------------------------------------------------------------------------------

mod bad_input {
    use proptest::prelude::*;

    /// TOML-ish text: fragments of real workflow files in any order, with junk in between.
    fn arb_workflowish() -> impl Strategy<Value = String> {
        let fragment = prop_oneof![
            Just("id = \"wf\"\n".to_string()),
            Just("name = \"n\"\nteam = \"t\"\n".to_string()),
            Just("[[stage]]\n".to_string()),
            Just("[[notify]]\n".to_string()),
            "kind = \"(dataset|annotate|review|webhook|logic|sampling|complete|discard|x)\"\n",
            "id = \"[a-z]{1,3}\"\n",
            "(next|on_success|on_failure|on_approve|on_reject|else) = \"[a-z]{1,3}\"\n",
            "url = \"(http|https|ftp)://[a-z.]{0,10}(:[0-9]{1,6})?/\\$\\{[A-Z]{0,4}\\}\"\n",
            "(max_attempts|pause_after_failures|max_in_flight) = -?[0-9]{1,12}\n",
            "(timeout|retry_schedule) = (\"[0-9]{1,4}(ms|s|m|h|x)\"|\\[\"1s\", *\"[0-9]*m\"\\]|\\[\\])\n",
            "split = \\[\\{ to = \"[a-z]\", percent = -?[0-9]{1,3} \\}\\]\n",
            "rules = \\[\\{ (tag|property) = \"[a-z]\", to = \"[a-z]\" \\}\\]\n",
            "headers = \\{ \"[ -~]{0,8}\" = \"[ -~]{0,8}\" \\}\n",
            any::<String>(),
            "[\\[\\]{}=\",.\n\\\\$]{1,8}",
        ];
        prop::collection::vec(fragment, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Parsing and validation never panic, and an error always names a line and column.
        #[test]
        fn workflow_parsing_never_panics(text in arb_workflowish()) {
            let env = |name: &str| (name == "SET").then(|| "value".to_string());
            match hookops::workflow::parse("fuzz.toml", &text, &env) {
                Ok(wf) => prop_assert!(!wf.stages.is_empty()),
                Err(diags) => prop_assert!(!diags.is_empty()),
            }
        }

        #[test]
        fn workflow_parsing_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = hookops::workflow::parse("bytes.toml", &text, &|_| None);
        }

        #[test]
        fn jsonl_parsing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = hookops::import::parse_jsonl(&bytes[..]);
        }
    }
}

#[test]
fn a_50_mb_import_line_and_an_oversized_payload_are_refused_in_words() {
    let rt = runtime();
    let recv = receiver(&rt, "*=ok");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let wf = write_workflow(
        dir.path(),
        &one_stage_workflow(&recv.url("/hook"), "max_attempts = 2"),
    );
    ok(&db, &["workflow", "apply", wf.to_str().unwrap()]);
    // A 50 MB line through the real CLI: exit 2, the line named, memory bounded (the parser's
    // own test measures that), the good line beside it still counted.
    let file = dir.path().join("big.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        writeln!(f, "{}", json!({"id": "fine", "name": "fine.jpg"})).unwrap();
        write!(f, "{{\"id\": \"huge\", \"name\": \"").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..50 {
            f.write_all(&chunk).unwrap();
        }
        writeln!(f, "\"}}").unwrap();
    }
    let out = cli(
        &db,
        &["item", "import", "--workflow", "wf", file.to_str().unwrap()],
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("line 2") && said.contains("the limit is 16 MiB"),
        "{said}"
    );

    // One item whose payload is over the default 8 MiB maximum body: a `policy` failure,
    // never sent; a small one beside it is delivered.
    let blob = "y".repeat(9 * 1024 * 1024);
    import(
        &db,
        dir.path(),
        [
            json!({"id": "big", "name": "big.jpg",
                "slots": [{"type": "image", "slot_name": "0", "file_name": "big.jpg", "blob": blob}]})
            .to_string(),
            json!({"id": "small", "name": "small.jpg"}).to_string(),
        ]
        .into_iter(),
    );
    ok(
        &db,
        &[
            "assign",
            "--workflow",
            "wf",
            "--stage",
            "hook",
            "big",
            "small",
        ],
    );
    let log = dir.path().join("serve.log");
    let mut s = serve(&db, &log, &[], &[]);
    let c = sql(&db);
    wait_until("both deliveries", Duration::from_secs(60), || {
        open_deliveries(&c) == 0 && count(&c, "SELECT COUNT(*) FROM attempts") >= 2
    });
    term(&mut s);
    let (state, attempts, kind, msg): (String, i64, String, String) = c
        .query_row(
            "SELECT d.state, d.attempts, a.error_kind, a.error_message FROM deliveries d
             JOIN attempts a ON a.delivery_id = d.id WHERE d.item_id = 'big'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (state.as_str(), attempts, kind.as_str()),
        ("failed", 1, "policy"),
        "{msg}"
    );
    assert!(msg.contains("8388608") || msg.contains("8 MiB"), "{msg}");
    let paths: Vec<Received> = recv.received();
    assert_eq!(paths.len(), 1, "only the small item was sent");
    assert!(paths[0].body.len() < 64 * 1024);
    rt.block_on(recv.shutdown());
}

// ---------------------------------------------------------------------------------------------
// 4. Security
// ---------------------------------------------------------------------------------------------

const AUTHZ: &str = "Bearer sk_live_AUTHZ_7f3a9c2e41b8d6f0";
const WHSEC: &str = "whsec_c2VjcmV0LWtleS1mb3Itc3RyZXNzLXN1aXRlLTAxMjM0NQ==";
const URL_TOKEN: &str = "tok_URLSECRET_5d8e2b7a9c1f";

fn secret_workflow(base: &str, refused: &str) -> String {
    // A stage whose host name is the secret, reaching the receiver through HOOKOPS_RESOLVE.
    let port = base.rsplit(':').next().unwrap_or_default();
    format!(
        r#"id = "wf"
name = "Secrets"
team = "qa"

[[stage]]
id = "dataset"
kind = "dataset"
next = "hook"

[[stage]]
id = "hook"
kind = "webhook"
url = "{base}/hook?token=${{STRESS_TOKEN}}"
authorization = "${{STRESS_AUTHZ}}"
secret = "${{STRESS_WHSEC}}"
headers = {{ "x-api-key" = "${{STRESS_TOKEN}}" }}
on_success = "done"
on_failure = "failed"
max_attempts = 2
retry_schedule = ["100ms"]

[[stage]]
id = "down"
kind = "webhook"
url = "{refused}/down?token=${{STRESS_TOKEN}}"
authorization = "${{STRESS_AUTHZ}}"
secret = "${{STRESS_WHSEC}}"
on_success = "done"
on_failure = "failed"
max_attempts = 1

[[stage]]
id = "nowhere"
kind = "webhook"
url = "http://${{STRESS_TOKEN}}.invalid/x?token=${{STRESS_TOKEN}}"
on_success = "done"
on_failure = "failed"
max_attempts = 1

[[stage]]
id = "named"
kind = "webhook"
url = "http://${{STRESS_TOKEN}}.test:{port}/named"
on_success = "done"
on_failure = "failed"
max_attempts = 1

[[stage]]
id = "failed"
kind = "annotate"
next = "done"

[[stage]]
id = "done"
kind = "complete"
"#
    )
}

/// Every place a secret could leak to, as text.
fn assert_no_secret(place: &str, text: &str) {
    // Case-blind: a URL parser lowercases a secret that is part of a host name.
    let text = &text.to_lowercase();
    for secret in [AUTHZ, WHSEC, URL_TOKEN] {
        // The whole value, and anything longer than the 4 characters masking keeps.
        let probe = &secret[..secret.len() - 4].to_lowercase();
        let bare = probe
            .trim_start_matches("bearer ")
            .trim_start_matches("whsec_");
        assert!(
            !text.contains(probe.as_str()) && !text.contains(&bare[..bare.len().min(12)]),
            "a secret ({}…) appears in {place}:\n{}",
            &secret[..8],
            &text[..text.len().min(4000)]
        );
    }
}

#[test]
fn secrets_never_appear_in_logs_outputs_audit_attempts_exports_or_the_screen() {
    let rt = runtime();
    let recv = receiver(&rt, "/hook=fail-first-1,*=ok");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("secrets.db");
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let base = recv.url("/").trim_end_matches('/').to_string();
    let wf = write_workflow(dir.path(), &secret_workflow(&base, &refused));
    let envs = [
        ("STRESS_TOKEN", URL_TOKEN),
        ("STRESS_AUTHZ", AUTHZ),
        ("STRESS_WHSEC", WHSEC),
    ];
    let mut apply = hookops(&db);
    apply.args(["workflow", "apply", wf.to_str().unwrap()]);
    for (k, v) in envs {
        apply.env(k, v);
    }
    let applied = apply.output().unwrap();
    assert!(applied.status.success(), "{}", text(&applied));
    let mut everything = vec![("workflow apply".to_string(), text(&applied))];
    import(
        &db,
        dir.path(),
        (0..4).map(|i| json!({"id": format!("k{i}"), "name": "k.jpg"}).to_string()),
    );
    ok(
        &db,
        &["assign", "--workflow", "wf", "--stage", "hook", "k0"],
    );
    ok(
        &db,
        &["assign", "--workflow", "wf", "--stage", "down", "k1"],
    );
    ok(
        &db,
        &["assign", "--workflow", "wf", "--stage", "nowhere", "k2"],
    );
    ok(
        &db,
        &["assign", "--workflow", "wf", "--stage", "named", "k3"],
    );
    // The host of stage `named`, as the URL parser writes it (lowercase).
    let named_host = format!("{}.test", URL_TOKEN.to_lowercase());
    let log = dir.path().join("serve.log");
    let trace = dir.path().join("trace.log");
    let mut s = serve(
        &db,
        &log,
        &["--log-file", trace.to_str().unwrap(), "--json"],
        &[
            ("HOOKOPS_LOG", "trace"),
            ("HOOKOPS_RESOLVE", &format!("{named_host}=127.0.0.1")),
        ],
    );
    let c = sql(&db);
    wait_until("the deliveries", Duration::from_secs(30), || {
        open_deliveries(&c) == 0 && count(&c, "SELECT COUNT(*) FROM attempts") >= 5
    });
    assert!(
        recv.received().iter().any(|r| r.path == "/named"),
        "the secret host reached the receiver"
    );
    // The receiver did get the real values: the masking is of what is kept and shown.
    let got = recv.received();
    let first = got.iter().find(|r| r.path == "/hook").unwrap();
    assert_eq!(first.header("authorization"), Some(AUTHZ));
    assert!(first.query.contains(URL_TOKEN));
    // A manual replay and a test send record attempts too.
    let hook_id: String = c
        .query_row(
            "SELECT id FROM deliveries WHERE stage_id = 'hook'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let down_id: String = c
        .query_row(
            "SELECT id FROM deliveries WHERE stage_id = 'down'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    for args in [
        vec!["refire", "--replay", hook_id.as_str(), "--yes"],
        vec!["test-webhook", "--workflow", "wf", "--stage", "hook"],
        vec!["refire", down_id.as_str(), "--yes"],
    ] {
        let o = cli(&db, &args);
        everything.push((format!("{args:?}"), text(&o)));
    }
    wait_until("the re-fire", Duration::from_secs(30), || {
        open_deliveries(&c) == 0
    });
    term(&mut s);
    everything.push(("serve output".into(), log_text(&log)));
    let traced = log_text(&trace);
    assert!(traced.len() > 100, "the log file has content: {traced}");
    everything.push(("serve --log-file".into(), traced));
    for args in [
        vec!["workflow", "show", "wf"],
        vec!["workflow", "show", "wf", "--json"],
        vec!["workflow", "list", "--json"],
        vec!["deliveries", "--limit", "0"],
        vec!["deliveries", "--json", "--limit", "0"],
        vec!["delivery", "show", hook_id.as_str()],
        vec!["delivery", "show", hook_id.as_str(), "--json"],
        vec!["delivery", "show", down_id.as_str(), "--json"],
        vec!["deliveries", "export"],
        vec!["audit", "--json"],
        vec!["audit"],
        vec!["item", "show", "k0", "--json"],
        vec!["check"],
        vec!["check", "--json"],
    ] {
        everything.push((format!("hookops {args:?}"), ok(&db, &args)));
    }
    // Attempt rows and audit rows, as stored.
    let mut st = c
        .prepare(
            "SELECT url || ' ' || request_headers || ' ' || COALESCE(error_message, '') FROM attempts",
        )
        .unwrap();
    let rows: Vec<String> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(rows.len() >= 5, "{rows:?}");
    assert!(
        rows.iter().any(|r| r.contains("authorization")),
        "request headers are recorded: {rows:?}"
    );
    everything.push(("attempt rows".into(), rows.join("\n")));
    let mut st = c
        .prepare("SELECT operator || action || target || COALESCE(filter, '') FROM audit")
        .unwrap();
    let audit: Vec<String> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    everything.push(("audit rows".into(), audit.join("\n")));
    // The console: delivery detail of the stage with every secret, on screen.
    let mut console = Pty::start(dir.path(), &["--db", db.to_str().unwrap(), "--read-only"]);
    console.wait_for("workflows");
    console.send(":deliveries\r");
    console.wait_for("msg_");
    console.send("\r");
    console.wait_for("delivery · msg_");
    everything.push(("console screen".into(), console.screen()));
    everything.push(("console output".into(), console.raw()));
    drop(console);
    for (place, t) in &everything {
        assert_no_secret(place, t);
    }
}

#[cfg(unix)]
#[test]
fn database_log_backup_and_export_files_are_created_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("modes.db");
    let wf = write_workflow(dir.path(), &one_stage_workflow("http://127.0.0.1:9/x", ""));
    ok(&db, &["workflow", "apply", wf.to_str().unwrap()]);
    let log = dir.path().join("hookops.log");
    let out = dir.path().join("serve.out");
    let mut s = serve(&db, &out, &["--log-file", log.to_str().unwrap()], &[]);
    wait_until("the log file", Duration::from_secs(20), || {
        log.exists() && dir.path().join("modes.db-wal").exists()
    });
    term(&mut s);
    let backup = dir.path().join("copy.db");
    ok(&db, &["backup", backup.to_str().unwrap()]);
    for f in [
        &db,
        &log,
        &backup,
        &dir.path().join("modes.db-wal"),
        &dir.path().join("modes.db-shm"),
    ] {
        if !f.exists() {
            continue; // the WAL is gone after a clean close
        }
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", f.display());
    }
}

#[test]
fn deny_private_targets_refuses_by_resolved_address_and_binds_every_dispatcher() {
    let rt = runtime();
    let recv = receiver(&rt, "*=ok");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("policy.db");
    let port = recv
        .url("/")
        .split(':')
        .nth(2)
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let stage = |id: &str, url: &str| {
        format!(
            "\n[[stage]]\nid = \"{id}\"\nkind = \"webhook\"\nurl = \"{url}\"\non_success = \"done\"\non_failure = \"parked\"\nmax_attempts = 1\n"
        )
    };
    let wf = format!(
        "id = \"wf\"\nname = \"Policy\"\nteam = \"qa\"\n\n[[stage]]\nid = \"dataset\"\nkind = \"dataset\"\nnext = \"literal\"\n{}{}{}{}\n[[stage]]\nid = \"parked\"\nkind = \"annotate\"\nnext = \"done\"\n\n[[stage]]\nid = \"done\"\nkind = \"complete\"\n",
        stage("literal", &format!("http://127.0.0.1:{port}/literal")),
        stage("named", &format!("http://localhost:{port}/named")),
        // A public-looking name that resolves to the metadata address (DNS rebinding).
        stage(
            "rebound",
            &format!("http://hooks.example.test:{port}/rebound")
        ),
        stage("v6", &format!("http://[::ffff:127.0.0.1]:{port}/v6")),
    );
    let wf = write_workflow(dir.path(), &wf);
    ok(&db, &["workflow", "apply", wf.to_str().unwrap()]);
    import(
        &db,
        dir.path(),
        (0..12).map(|i| json!({"id": format!("p{i:02}"), "name": "p.jpg"}).to_string()),
    );
    let stages = ["literal", "named", "rebound", "v6"];
    let resolve = [("HOOKOPS_RESOLVE", "hooks.example.test=169.254.169.254")];
    let c = sql(&db);
    let run = |round: usize, extra: &[&str]| {
        for (i, st) in stages.iter().enumerate() {
            let item = format!("p{:02}", round * 4 + i);
            ok(&db, &["assign", "--workflow", "wf", "--stage", st, &item]);
        }
        let log = dir.path().join(format!("serve-{round}.log"));
        let mut s = serve(&db, &log, extra, &resolve);
        wait_until("the round's deliveries", Duration::from_secs(30), || {
            open_deliveries(&c) == 0
                && count(&c, "SELECT COUNT(*) FROM attempts") >= (round as i64 + 1) * 4
        });
        term(&mut s);
        log_text(&log)
    };
    let outcome = |item: &str| -> (String, String, String) {
        c.query_row(
            "SELECT d.state, COALESCE(a.error_kind, ''), COALESCE(a.error_message, '')
             FROM deliveries d JOIN attempts a ON a.delivery_id = d.id WHERE d.item_id = ?1",
            [item],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };

    // Off by default: loopback targets are fine. (The guard still refuses the metadata
    // address: tests never leave loopback.)
    let said = run(0, &[]);
    assert!(said.contains("deny_private_targets off"), "{said}");
    for item in ["p00", "p01", "p03"] {
        assert_eq!(outcome(item).0, "succeeded", "{item}: {:?}", outcome(item));
    }
    assert_eq!(outcome("p02").1, "policy");

    // On, stored in the database: every target is refused by policy, by its resolved address.
    let shown = ok(&db, &["policy", "set", "deny_private_targets", "true"]);
    assert!(shown.contains("deny_private_targets  true"), "{shown}");
    let check = ok(&db, &["check"]);
    assert!(check.contains("deny_private_targets on"), "{check}");
    let sent_before = recv.received().len();
    let said = run(1, &[]);
    assert!(said.contains("deny_private_targets on"), "{said}");
    for (item, words) in [
        ("p04", "127.0.0.1 is a loopback address"),
        (
            "p05",
            "localhost resolves to 127.0.0.1, which is a loopback address",
        ),
        (
            "p06",
            "hooks.example.test resolves to 169.254.169.254, which is a cloud metadata address",
        ),
        ("p07", "is a loopback address"),
    ] {
        let (state, kind, msg) = outcome(item);
        assert_eq!(
            (state.as_str(), kind.as_str()),
            ("failed", "policy"),
            "{item}: {msg}"
        );
        assert!(
            msg.contains("refused by policy deny_private_targets") && msg.contains(words),
            "{item}: {msg}"
        );
    }
    assert_eq!(recv.received().len(), sent_before, "nothing was sent");
    // The console header says so.
    let console = Pty::start(dir.path(), &["--db", db.to_str().unwrap(), "--read-only"]);
    console.wait_for("private targets denied");
    drop(console);

    // Off in the database, on by flag for one serve: the flag only tightens.
    ok(&db, &["policy", "set", "deny_private_targets", "false"]);
    let said = run(2, &["--deny-private-targets"]);
    assert!(said.contains("deny_private_targets on"), "{said}");
    for item in ["p08", "p09", "p11"] {
        assert_eq!(outcome(item).1, "policy", "{item}");
    }
    let audit = ok(&db, &["audit"]);
    assert!(audit.contains("deny_private_targets=true"), "{audit}");
    let bad = cli(&db, &["policy", "set", "deny_private_targets", "maybe"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    rt.block_on(recv.shutdown());
}

#[test]
fn a_read_only_store_refuses_every_mutation() {
    use hookops::model::{ItemId, StageId, WorkflowId};
    use hookops::store::{
        AssignTarget, Expect, OpenOptions, PolicyKey, PruneOptions, Store, StoreError,
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ro.db");
    let wf_path = write_workflow(dir.path(), &one_stage_workflow("http://127.0.0.1:9/x", ""));
    ok(&db, &["workflow", "apply", wf_path.to_str().unwrap()]);
    import(
        &db,
        dir.path(),
        std::iter::once(json!({"id": "r1", "name": "r.jpg"}).to_string()),
    );
    ok(
        &db,
        &["assign", "--workflow", "wf", "--stage", "hook", "r1"],
    );
    let before = std::fs::read(&db).unwrap();
    let store = Store::open(
        &db,
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let wf = WorkflowId::new("wf");
    let spec = store.workflow_spec(&wf).unwrap();
    let delivery = store.item_detail(&ItemId::new("r1")).unwrap().deliveries[0]
        .id
        .clone();
    let items = hookops::import::parse_jsonl(&b"{\"id\":\"r2\",\"name\":\"n\"}\n"[..])
        .unwrap()
        .items;
    let rt = runtime();
    let refused = |what: &str, r: Result<(), StoreError>| match r {
        Err(StoreError::ReadOnly { .. }) => {}
        other => panic!("{what} on a read-only store: {other:?}"),
    };
    let op = "ro";
    refused(
        "apply_workflow",
        store.apply_workflow(&spec, &Vec::new(), op).map(drop),
    );
    refused(
        "import_items",
        store
            .import_items(&wf, items, None, op, &mut |_, _| {})
            .map(drop)
            .map_err(|e| e.source),
    );
    refused(
        "assign",
        store
            .assign(
                &wf,
                &StageId::new("failed"),
                &AssignTarget::Items(vec![ItemId::new("r1")]),
                None,
                op,
            )
            .map(drop),
    );
    refused(
        "advance",
        store
            .advance(&[ItemId::new("r1")], None, &Expect::default(), op)
            .map(drop),
    );
    refused(
        "refire",
        store.refire(std::slice::from_ref(&delivery), op).map(drop),
    );
    refused("begin_replay", store.begin_replay(&delivery, op).map(drop));
    refused(
        "begin_test",
        store.begin_test(&wf, &StageId::new("hook"), op).map(drop),
    );
    refused(
        "set_paused",
        store
            .set_paused(&wf, &StageId::new("hook"), true, op)
            .map(drop),
    );
    refused(
        "cancel_deliveries",
        store
            .cancel_deliveries(std::slice::from_ref(&delivery), op)
            .map(drop),
    );
    let prune = PruneOptions {
        older_than: Duration::ZERO,
        audit_older_than: Some(Duration::ZERO),
        dry_run: false,
    };
    refused("prune", store.prune(&prune, op).map(drop));
    refused("repair", store.repair(op).map(drop));
    refused(
        "record_audit",
        store.record_audit(op, "assign", "x".into(), 1),
    );
    refused(
        "set_policy",
        store
            .set_policy(PolicyKey::DenyPrivateTargets, "true", op)
            .map(drop),
    );
    refused(
        "lease_due",
        rt.block_on(store.lease_due("me", 4, Vec::new())).map(drop),
    );
    refused(
        "release_leases",
        rt.block_on(store.release_leases("me")).map(drop),
    );
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let (events, _) = tokio::sync::broadcast::channel(4);
    let run = rt.block_on(hookops::dispatch::run(
        store.clone(),
        Default::default(),
        events,
        stop,
    ));
    refused("dispatch::run", run);
    drop(store);
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the file was not touched"
    );
}
