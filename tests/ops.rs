//! Day-two operations (issue 9): prune, backup, check and repair, export and the new delivery
//! filters, operator cancel, secret rotation, shell completions and the man page.
//!
//! Real SQLite files in temp dirs, a real receiver on 127.0.0.1 (random port), the real binary
//! for the CLI. Defects are planted with plain SQL on the file, as a broken process or a careless
//! operator would leave them. Every wait is on a condition with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hookops::actions::BulkAction;
use hookops::dispatch::{self, DispatchNotice, DispatcherOptions};
use hookops::model::{
    CancelReason, DeliveryId, DeliveryState, ErrorKind, HistoryCause, ItemId, ItemState, StageId,
    WorkflowId,
};
use hookops::receiver::{Receiver, ReceiverOptions};
use hookops::store::{AssignTarget, DeliveryFilter, DeliverySummary, OpenOptions, Store};
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, watch};

const WF: &str = "wf";
const OPERATOR: &str = "tester";
const NEW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD_SECRET: &str = "whsec_c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1zdGFnZXM=";
const TOKEN: &str = "sk-live-0123456789abcdef0123";
const DAY_MS: i64 = 86_400_000;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

struct World {
    receiver: Receiver,
    store: Store,
    db: PathBuf,
    events: broadcast::Sender<DispatchNotice>,
    stops: Vec<watch::Sender<bool>>,
    rt: Runtime,
    dir: tempfile::TempDir,
}

impl World {
    fn new(script: &str) -> World {
        World::with_secrets(script, Vec::new())
    }

    fn with_secrets(script: &str, secrets: Vec<String>) -> World {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let receiver = rt
            .block_on(Receiver::start(ReceiverOptions {
                script: script.parse().unwrap(),
                secrets,
                ..ReceiverOptions::default()
            }))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hookops.db");
        let store = Store::open(&db, &OpenOptions::default()).unwrap();
        let (events, _) = broadcast::channel(65536);
        World {
            receiver,
            store,
            db,
            events,
            stops: Vec::new(),
            rt,
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.receiver.url(path)
    }

    /// Applies the common sinks plus `stages`, expanding `${NAME}` from `env`.
    fn apply(&self, stages: &str, env: &[(&str, &str)]) {
        let text = workflow_toml(stages);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let wf = hookops::workflow::parse("ops.toml", &text, &lookup)
            .unwrap_or_else(|e| panic!("workflow does not validate: {e:?}\n{text}"));
        self.store
            .apply_workflow(&wf, &Vec::new(), OPERATOR)
            .unwrap();
    }

    fn import(&self, ids: &[String]) {
        let text: String = ids
            .iter()
            .map(|id| json!({"id": id, "name": format!("{id}.jpg")}).to_string() + "\n")
            .collect();
        let parsed = hookops::import::parse_jsonl(text.as_bytes()).unwrap();
        let report = self
            .store
            .import_items(&wf(), parsed.items, None, OPERATOR, &mut |_, _| {})
            .unwrap();
        assert_eq!(report.imported, ids.len() as i64);
    }

    fn assign(&self, ids: &[String], stage: &str) {
        let ids = ids.iter().map(|i| ItemId::new(i.as_str())).collect();
        let r = self
            .store
            .assign(
                &wf(),
                &StageId::new(stage),
                &AssignTarget::Items(ids),
                None,
                OPERATOR,
            )
            .unwrap();
        assert!(r.refused.is_empty(), "{:?}", r.refused);
    }

    fn start_dispatcher(&mut self, concurrency: usize) {
        let (stop, stopped) = watch::channel(false);
        let (store, events) = (self.store.clone(), self.events.clone());
        let opts = DispatcherOptions {
            concurrency,
            ..DispatcherOptions::default()
        };
        self.rt.spawn(async move {
            if let Err(e) = dispatch::run(store, opts, events, stopped).await {
                panic!("dispatcher failed: {e}");
            }
        });
        self.stops.push(stop);
    }

    fn deliveries_of(&self, item: &str) -> Vec<DeliverySummary> {
        self.store
            .item_detail(&ItemId::new(item))
            .unwrap()
            .deliveries
    }

    fn item(&self, id: &str) -> (StageId, ItemState, i64) {
        let it = self.store.item(&ItemId::new(id)).unwrap();
        (it.stage, it.state, it.version)
    }

    fn wait_settled(&self, items: &[String], timeout: Duration) {
        wait_until(
            &format!("{} item(s) to settle", items.len()),
            timeout,
            || {
                items.iter().all(|i| {
                    let d = self.deliveries_of(i);
                    !d.is_empty() && d.iter().all(|d| !d.state.is_open())
                })
            },
        );
    }

    fn hookops(&self, args: &[&str]) -> Output {
        hookops(&self.db, args)
    }

    /// A plain SQLite connection to the file, for planting defects.
    fn sql(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(&self.db).unwrap();
        c.busy_timeout(Duration::from_secs(30)).unwrap();
        c
    }
}

fn wf() -> WorkflowId {
    WorkflowId::new(WF)
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

fn workflow_toml(stages: &str) -> String {
    format!(
        r#"id = "{WF}"
name = "Ops tests"
team = "qa"

[[stage]]
id = "dataset"
kind = "dataset"
next = "ok-sink"

[[stage]]
id = "ok-sink"
kind = "annotate"
next = "done"

[[stage]]
id = "fail-sink"
kind = "annotate"
next = "done"

[[stage]]
id = "done"
kind = "complete"
{stages}"#
    )
}

fn hook(id: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[stage]]
id = "{id}"
kind = "webhook"
url = "{url}"
on_success = "ok-sink"
{extra}
"#
    )
}

fn hookops(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookops"))
        .arg("--db")
        .arg(db)
        .arg("--operator")
        .arg(OPERATOR)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `hookops --db DB ARGS` with a pseudo-terminal for its standard streams and returns
/// everything it wrote there.
fn in_pty(db: &Path, args: &[&str]) -> String {
    use portable_pty::{CommandBuilder, PtySize, native_pty_system};
    use std::io::Read;
    let pair = native_pty_system()
        .openpty(PtySize {
            rows: 24,
            cols: 200,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_hookops"));
    cmd.arg("--db");
    cmd.arg(db);
    cmd.args(["--operator", OPERATOR]);
    cmd.args(args);
    let mut child = pair.slave.spawn_command(cmd).unwrap();
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().unwrap();
    let mut out = Vec::new();
    // The read ends with an error (EIO) once the child has exited and closed the terminal;
    // what it read until then is kept.
    let _ = reader.read_to_end(&mut out);
    assert!(
        child.wait().unwrap().success(),
        "{}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count(c: &rusqlite::Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The status of one named check in `check --json` output.
fn status_of(report: &Value, name: &str) -> String {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Restore under a running serve
// ---------------------------------------------------------------------------------------------

/// A `hookops serve` child, killed if the test ends (or fails) while it still runs.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hookops serve` on `db`, its stderr kept for reading after it exits.
fn spawn_serve(db: &Path) -> Serve {
    let child = Command::new(env!("CARGO_BIN_EXE_hookops"))
        .arg("--db")
        .arg(db)
        .args(["serve", "--concurrency", "4"])
        .env("HOOKOPS_LOOPBACK_ONLY", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Serve(child)
}

/// Waits for `serve` to exit; returns its exit code and stderr.
fn exit_of(mut serve: Serve, timeout: Duration) -> (i32, String) {
    let mut status = None;
    wait_until("serve to exit", timeout, || {
        status = serve.0.try_wait().unwrap();
        status.is_some()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut serve.0.stderr.take().unwrap(), &mut err).unwrap();
    (status.and_then(|s| s.code()).unwrap_or(-1), err)
}

/// Whether the receiver has had a request for item `id`.
fn received_item(r: &Receiver, id: &str) -> bool {
    let needle = format!("\"item_id\":\"{id}\"");
    r.received()
        .iter()
        .any(|q| String::from_utf8_lossy(&q.body).contains(&needle))
}

#[test]
fn serve_exits_1_when_its_file_is_deleted_or_replaced_and_restarted_sends_from_the_new_one() {
    let w = World::new("*=ok");
    w.apply(&hook("hook", &w.url("/hook"), ""), &[]);
    let items = ids("r", 4);
    w.import(&items);
    let copy = w.dir.path().join("copy.db");
    assert_ok(&w.hookops(&["backup", &copy.to_string_lossy()]), "backup");

    // Deleted under a running serve: it stops and says why, exit 1.
    let serve = spawn_serve(&w.db);
    w.assign(&items[..1], "hook");
    wait_until("serve to send r0000", Duration::from_secs(30), || {
        received_item(&w.receiver, "r0000")
    });
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", w.db.display()));
    }
    let (code, err) = exit_of(serve, Duration::from_secs(20));
    assert_eq!(code, 1, "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains("was deleted") && last.contains("serve stopped"),
        "one line says why: {err}"
    );

    // Restored (a new file at the path), serve started again sends from it.
    std::fs::rename(&copy, &w.db).unwrap();
    let mut serve = spawn_serve(&w.db);
    assert_ok(
        &w.hookops(&["assign", "--workflow", WF, "--stage", "hook", "r0001"]),
        "assign on the restored file",
    );
    wait_until("serve to send r0001", Duration::from_secs(30), || {
        if let Some(status) = serve.0.try_wait().unwrap() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut serve.0.stderr.take().unwrap(), &mut err);
            panic!("serve on the restored file exited ({status}): {err}");
        }
        received_item(&w.receiver, "r0001")
    });
    // The restored file records what it sent.
    wait_until("r0001 to be routed", Duration::from_secs(30), || {
        json_out(&w.hookops(&["item", "show", "r0001", "--json"]))["stage"] == "ok-sink"
    });
    // Replaced by another file while it runs: the same.
    let copy2 = w.dir.path().join("copy2.db");
    assert_ok(&w.hookops(&["backup", &copy2.to_string_lossy()]), "backup");
    std::fs::rename(&copy2, &w.db).unwrap();
    let (code, err) = exit_of(serve, Duration::from_secs(20));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("was replaced by another file"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Prune
// ---------------------------------------------------------------------------------------------

#[test]
fn prune_keeps_latest_per_stage_and_open_deliveries_and_removes_the_rest() {
    let mut w = World::new("/hook=500,*=ok");
    let hook_url = w.url("/hook");
    let parked_url = w.url("/parked");
    w.apply(
        &(hook(
            "hook",
            &hook_url,
            r#"on_failure = "fail-sink"
max_attempts = 2
retry_schedule = ["10ms"]"#,
        ) + &hook("parked", &parked_url, "")),
        &[],
    );
    let items = ids("p", 3);
    w.import(&items);
    w.import(&["q0000".to_string()]);
    w.store
        .set_paused(&wf(), &StageId::new("parked"), true, OPERATOR)
        .unwrap();
    w.start_dispatcher(8);

    // Three failed deliveries of two attempts each per item: the first and two re-fires.
    w.assign(&items, "hook");
    for round in 0..3 {
        w.wait_settled(&items, Duration::from_secs(30));
        if round < 2 {
            let latest: Vec<DeliveryId> = items
                .iter()
                .map(|i| w.deliveries_of(i)[0].id.clone())
                .collect();
            let r = w.store.refire(&latest, OPERATOR).unwrap();
            assert_eq!(r.refired, 3, "{:?}", r.refused);
        }
    }
    // Item q: in the paused stage twice, so one cancelled (item_moved) and one pending.
    let q = vec!["q0000".to_string()];
    w.assign(&q, "parked");
    w.assign(&q, "parked");
    let qd = w.deliveries_of("q0000");
    assert_eq!(
        qd.iter().map(|d| d.state).collect::<Vec<_>>(),
        vec![DeliveryState::Pending, DeliveryState::Cancelled]
    );
    for i in &items {
        let d = w.deliveries_of(i);
        assert_eq!(d.len(), 3);
        assert!(
            d.iter()
                .all(|d| d.state == DeliveryState::Failed && d.attempts == 2)
        );
    }

    // Everything ends 40 days ago except item p0002's deliveries, which stay recent.
    let c = w.sql();
    let old = now_ms() - 40 * DAY_MS;
    c.execute(
        "UPDATE deliveries SET updated_at = ?1, created_at = ?1,
             last_attempt_at = CASE WHEN last_attempt_at IS NULL THEN NULL ELSE ?1 END
         WHERE item_id != 'p0002'",
        [old],
    )
    .unwrap();
    c.execute(
        "UPDATE attempts SET started_at = ?1 WHERE delivery_id IN
             (SELECT id FROM deliveries WHERE item_id != 'p0002')",
        [old],
    )
    .unwrap();
    let attempts_before = count(&c, "SELECT COUNT(*) FROM attempts");
    assert_eq!(attempts_before, 18);

    // On a terminal, prune says how far its scan got (never into a pipe or --json: the
    // JSON runs below have clean stdout and stderr).
    let shown = in_pty(&w.db, &["prune", "--older-than", "30d", "--dry-run"]);
    assert!(
        shown.contains("prune: delivery rows scanned 11 of 11"),
        "no progress on the terminal: {shown:?}"
    );
    assert!(shown.contains("would remove 5 finished"), "{shown:?}");
    let dry = w.hookops(&["prune", "--older-than", "30d", "--dry-run", "--json"]);
    assert_ok(&dry, "prune --dry-run");
    assert!(stderr(&dry).is_empty(), "{}", stderr(&dry));
    let dry = json_out(&dry);
    assert_eq!(dry["deliveries"], 5, "{dry}");
    assert_eq!(dry["attempts"], 8, "{dry}");
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM deliveries"),
        11,
        "a dry run removes nothing"
    );

    let out = w.hookops(&["prune", "--older-than", "30d", "--json"]);
    assert_ok(&out, "prune");
    let r = json_out(&out);
    // p0000 and p0001 lose their two older deliveries (2 attempts each); q loses the
    // cancelled one (no attempts). p0002's are recent; every latest and the open one stay.
    assert_eq!(r["deliveries"], 5, "{r}");
    assert_eq!(r["attempts"], 8, "{r}");
    assert_eq!(r["kept_latest"], 2, "{r}");
    assert_eq!(r["kept_open"], 1, "{r}");
    assert_eq!(count(&c, "SELECT COUNT(*) FROM deliveries"), 6);
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM attempts"),
        attempts_before - 8
    );
    assert_eq!(
        count(
            &c,
            "SELECT COUNT(*) FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id)"
        ),
        0,
        "no attempt outlives its delivery"
    );
    for (item, n) in [("p0000", 1), ("p0001", 1), ("p0002", 3), ("q0000", 1)] {
        assert_eq!(w.deliveries_of(item).len(), n, "deliveries of {item}");
    }
    // The item detail still explains where each item is and why.
    let kept = &w.deliveries_of("p0000")[0];
    assert_eq!(kept.state, DeliveryState::Failed);
    assert_eq!(w.deliveries_of("q0000")[0].state, DeliveryState::Pending);
    // Counters follow the deletions (the check recomputes them from the rows).
    let check = w.hookops(&["check", "--json"]);
    assert_eq!(status_of(&json_out(&check), "counters"), "ok");

    // Audit rows stay unless asked; then they go too, and the prune itself is audited.
    let audit_before = count(&c, "SELECT COUNT(*) FROM audit");
    assert!(audit_before > 0);
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM audit WHERE action = 'prune'"),
        1
    );
    let out = w.hookops(&[
        "prune",
        "--older-than",
        "30d",
        "--audit-older-than",
        "0s",
        "--json",
    ]);
    assert_ok(&out, "prune --audit-older-than");
    let r = json_out(&out);
    assert_eq!(r["deliveries"], 0);
    assert_eq!(r["audit_rows"], audit_before, "{r}");
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM audit"),
        1,
        "only this prune's own row"
    );

    // Read-only may look but not prune.
    let ro = w.hookops(&["--read-only", "prune", "--older-than", "1d"]);
    assert_eq!(ro.status.code(), Some(1), "{}", stderr(&ro));
    assert!(stderr(&ro).contains("read-only"), "{}", stderr(&ro));
    let ro = w.hookops(&["--read-only", "prune", "--older-than", "1d", "--dry-run"]);
    assert_ok(&ro, "read-only dry run");
}

#[test]
fn prune_and_backup_run_while_a_dispatcher_delivers() {
    let mut w = World::new("*=ok");
    let url = w.url("/hook");
    w.apply(&hook("hook", &url, ""), &[]);
    let items = ids("b", 1500);
    w.import(&items);
    // Paused: each assignment leaves a pending delivery; the second one cancels the first, so
    // every item has one prunable (cancelled, not latest) delivery.
    w.store
        .set_paused(&wf(), &StageId::new("hook"), true, OPERATOR)
        .unwrap();
    w.assign(&items, "hook");
    w.assign(&items, "hook");
    let mut notices = w.events.subscribe();
    w.store
        .set_paused(&wf(), &StageId::new("hook"), false, OPERATOR)
        .unwrap();
    w.start_dispatcher(32);
    wait_until("the first deliveries", Duration::from_secs(30), || {
        w.receiver.count() > 0
    });

    let backup = w.dir.path().join("copy.db");
    let backup_s = backup.to_string_lossy().into_owned();
    let (db1, db2) = (w.db.clone(), w.db.clone());
    let pruner =
        std::thread::spawn(move || hookops(&db1, &["prune", "--older-than", "0s", "--json"]));
    let backer = std::thread::spawn(move || hookops(&db2, &["backup", &backup_s, "--json"]));
    let (pruned, backed) = (pruner.join().unwrap(), backer.join().unwrap());
    let delivered_during = w.receiver.count();
    assert_ok(&pruned, "prune during delivery");
    assert_ok(&backed, "backup during delivery");
    for o in [&pruned, &backed] {
        assert!(!stderr(o).contains("locked"), "{}", stderr(o));
    }
    let r = json_out(&pruned);
    assert_eq!(
        r["deliveries"], 1500,
        "every cancelled, superseded delivery goes: {r}"
    );
    assert!(
        delivered_during < 1500 || w.receiver.count() == 1500,
        "the run should overlap the deliveries"
    );

    w.wait_settled(&items, Duration::from_secs(120));
    assert_eq!(w.receiver.count(), 1500);
    let mut store_errors = Vec::new();
    while let Ok(n) = notices.try_recv() {
        if let DispatchNotice::StoreError(m) = n {
            store_errors.push(m);
        }
    }
    assert!(
        store_errors.is_empty(),
        "dispatcher store errors: {store_errors:?}"
    );

    // The copy is a consistent, private, complete database that hookops opens as it is.
    let b = json_out(&backed);
    assert_eq!(b["items"], 1500);
    let c = rusqlite::Connection::open(&backup).unwrap();
    let ic: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ic, "ok");
    assert_eq!(count(&c, "SELECT COUNT(*) FROM items"), 1500);
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM deliveries"),
        b["deliveries"].as_i64().unwrap()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let restored = hookops(&backup, &["item", "list", "--limit", "0", "--json"]);
    assert_ok(&restored, "item list on the copy");
    assert_eq!(json_out(&restored).as_array().unwrap().len(), 1500);

    // Never over an existing file without --force.
    let again = w.hookops(&["backup", &backup.to_string_lossy()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let forced = w.hookops(&["backup", &backup.to_string_lossy(), "--force"]);
    assert_ok(&forced, "backup --force");
}

// ---------------------------------------------------------------------------------------------
// Check
// ---------------------------------------------------------------------------------------------

#[test]
fn each_check_fires_on_a_planted_defect_and_repair_clears_the_safe_ones() {
    let w = World::new("*=ok");
    let url = w.url("/hook");
    w.apply(
        &(hook("hook", &url, r#"on_failure = "fail-sink""#) + &hook("hold", &url, "")),
        &[],
    );
    let items = ids("c", 6);
    w.import(&items);
    // No dispatcher: every delivery stays pending.
    w.assign(&items[..4], "hook");
    w.assign(&items[4..], "hold");

    let clean = w.hookops(&["check"]);
    assert_ok(&clean, "check on a clean database");
    let text = stdout(&clean);
    for name in hookops::store::CHECKS {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{text}"));
        assert!(line.starts_with("ok"), "{line}");
    }

    let c = w.sql();
    let now = now_ms();
    let delivery = |item: &str| -> String {
        c.query_row(
            "SELECT id FROM deliveries WHERE item_id = ?1 ORDER BY seq DESC LIMIT 1",
            [item],
            |r| r.get(0),
        )
        .unwrap()
    };
    // An expired lease: c0000's delivery was leased by a dispatcher that vanished.
    let leased = delivery("c0000");
    c.execute(
        "UPDATE deliveries SET state = 'in_flight', lease_token = 'gone', lease_owner = 'ghost',
             lease_until = ?2, lease_number = next_number, next_number = next_number + 1
         WHERE id = ?1",
        rusqlite::params![leased, now - 60_000],
    )
    .unwrap();
    // An orphan: c0001 moved without its delivery being cancelled.
    let orphan = delivery("c0001");
    c.execute(
        "UPDATE items SET stage_id = 'ok-sink', state = 'active' WHERE id = 'c0001'",
        [],
    )
    .unwrap();
    // A stuck item: c0002's delivery ended but the item still says in_delivery.
    c.execute(
        "UPDATE deliveries SET state = 'failed' WHERE item_id = 'c0002'",
        [],
    )
    .unwrap();
    // Overdue: c0003's delivery was due ten minutes ago.
    c.execute(
        "UPDATE deliveries SET next_attempt_at = ?1 WHERE item_id = 'c0003'",
        [now - 600_000],
    )
    .unwrap();
    // A stale heartbeat of a dispatcher on another host.
    c.execute(
        "INSERT INTO dispatchers (id, pid, host, process_start, started_at, last_beat, concurrency)
         VALUES ('old', 4242, 'elsewhere.example', '1', ?1, ?1, 8)",
        [now - 120_000],
    )
    .unwrap();
    // A counter that drifted.
    c.execute(
        "UPDATE item_counts SET n = n + 5 WHERE stage_id = 'hook'",
        [],
    )
    .unwrap();
    // A paused stage, and a world-readable file.
    w.store
        .set_paused(&wf(), &StageId::new("hold"), true, OPERATOR)
        .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&w.db, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    let out = w.hookops(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let r = json_out(&out);
    assert_eq!(r["ok"], false);
    for (name, status) in [
        ("integrity", "ok"),
        ("schema", "ok"),
        ("file_mode", "fail"),
        ("dispatcher", "fail"),
        ("expired_leases", "fail"),
        ("stuck_items", "fail"),
        ("orphaned_deliveries", "fail"),
        ("paused_stages", "warn"),
        ("oldest_pending", "fail"),
        ("counters", "fail"),
    ] {
        assert_eq!(status_of(&r, name), status, "{name}: {r}");
    }
    // The text form says the same, one line per check.
    let text = stdout(&w.hookops(&["check"]));
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("expired_leases")),
        "{text}"
    );
    assert!(text.contains("paused by tester"), "{text}");

    let out = w.hookops(&["check", "--repair", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "what is not safe stays: {}",
        stdout(&out)
    );
    let r = json_out(&out);
    let repaired = r["repaired"].to_string();
    assert!(repaired.contains("released 1 expired lease"), "{repaired}");
    assert!(repaired.contains("cancelled 1 delivery"), "{repaired}");
    assert!(repaired.contains("recomputed"), "{repaired}");
    for (name, status) in [
        ("expired_leases", "ok"),
        ("orphaned_deliveries", "ok"),
        ("counters", "ok"),
        // Not safe to fix automatically: reported, untouched.
        ("stuck_items", "fail"),
        ("file_mode", "fail"),
        ("dispatcher", "fail"),
    ] {
        assert_eq!(status_of(&r, name), status, "{name} after repair: {r}");
    }
    // The lease went back through the dispatcher's own path: an interrupted attempt, due again.
    let d = w
        .store
        .delivery_detail(&DeliveryId::new(leased.as_str()))
        .unwrap();
    assert_eq!(d.summary.state, DeliveryState::Pending);
    assert_eq!(d.attempt_log.len(), 1);
    assert_eq!(d.attempt_log[0].error_kind, Some(ErrorKind::Interrupted));
    let d = w
        .store
        .delivery_detail(&DeliveryId::new(orphan.as_str()))
        .unwrap();
    assert_eq!(d.summary.state, DeliveryState::Cancelled);
    assert_eq!(d.summary.cancel_reason, Some(CancelReason::ItemMoved));
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM audit WHERE action = 'repair'"),
        3
    );
    // Repair needs write access.
    let ro = w.hookops(&["--read-only", "check", "--repair"]);
    assert_eq!(ro.status.code(), Some(1));
    assert!(stderr(&ro).contains("read-only"), "{}", stderr(&ro));
}

#[test]
fn check_reports_corruption_a_foreign_schema_and_a_large_wal() {
    let w = World::new("*=ok");
    let url = w.url("/hook");
    w.apply(&hook("hook", &url, ""), &[]);
    w.import(&ids("x", 50));

    // A WAL held open by a long reader grows past the warning size.
    let reader = w.sql();
    reader
        .execute_batch("BEGIN; SELECT COUNT(*) FROM items;")
        .unwrap();
    let writer = w.sql();
    writer
        .execute_batch("CREATE TABLE ballast (b BLOB)")
        .unwrap();
    for _ in 0..70 {
        writer
            .execute("INSERT INTO ballast VALUES (zeroblob(1048576))", [])
            .unwrap();
    }
    let r = json_out(&w.hookops(&["check", "--json"]));
    assert_eq!(status_of(&r, "wal"), "warn", "{r}");
    reader.execute_batch("COMMIT").unwrap();
    writer.execute_batch("DROP TABLE ballast").unwrap();

    // A schema this binary did not write: reported, and the table checks are skipped.
    let foreign = w.dir.path().join("future.db");
    assert_ok(
        &w.hookops(&["backup", &foreign.to_string_lossy()]),
        "backup",
    );
    let f = rusqlite::Connection::open(&foreign).unwrap();
    f.pragma_update(None, "user_version", 999).unwrap();
    drop(f);
    let out = hookops(&foreign, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json_out(&out);
    assert_eq!(status_of(&r, "schema"), "fail");
    assert!(r.to_string().contains("newer than this binary"), "{r}");
    assert_eq!(status_of(&r, "counters"), "skipped");

    // An index that no longer matches its table: integrity_check says so.
    let broken = w.dir.path().join("broken.db");
    assert_ok(&w.hookops(&["backup", &broken.to_string_lossy()]), "backup");
    let b = rusqlite::Connection::open(&broken).unwrap();
    b.execute_batch(
        "PRAGMA writable_schema = ON;
         UPDATE sqlite_master SET sql = 'CREATE INDEX items_by_name ON items(workflow_id, seq, name)'
           WHERE name = 'items_by_name';
         PRAGMA writable_schema = OFF;",
    )
    .unwrap();
    drop(b);
    let out = hookops(&broken, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json_out(&out);
    assert_eq!(status_of(&r, "integrity"), "fail", "{r}");

    // A damaged page of a table: reported as the integrity finding, the table checks (which
    // would stop at the bad page) skipped, and the report still printed.
    let damaged = w.dir.path().join("damaged.db");
    assert_ok(
        &w.hookops(&["backup", &damaged.to_string_lossy()]),
        "backup",
    );
    let d = rusqlite::Connection::open(&damaged).unwrap();
    let root: i64 = d
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'items'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let page: i64 = d.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    drop(d);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&damaged)
            .unwrap();
        f.seek(SeekFrom::Start((root * page - 600) as u64)).unwrap();
        f.write_all(&[0xde, 0xad].repeat(300)).unwrap();
    }
    let out = hookops(&damaged, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = json_out(&out);
    assert_eq!(status_of(&r, "integrity"), "fail", "{r}");
    assert_eq!(status_of(&r, "counters"), "skipped", "{r}");
}

// ---------------------------------------------------------------------------------------------
// Finding and exporting failures
// ---------------------------------------------------------------------------------------------

#[test]
fn filters_find_failures_and_export_lines_parse_and_hold_no_secret() {
    let mut w = World::new("/hook=503,/slow=hang,*=ok");
    let (hook_url, slow_url) = (w.url("/hook"), w.url("/slow"));
    w.apply(
        &(hook(
            "hook",
            &hook_url,
            r#"on_failure = "fail-sink"
max_attempts = 2
retry_schedule = ["10ms"]
secret = "${SECRET}"
authorization = "Bearer ${TOKEN}"
headers = { "x-api-key" = "${TOKEN}" }"#,
        ) + &hook(
            "slow",
            &slow_url,
            r#"on_failure = "fail-sink"
max_attempts = 1
timeout = "200ms""#,
        )),
        &[("SECRET", NEW_SECRET), ("TOKEN", TOKEN)],
    );
    let (a, b) = (ids("e", 4), ids("t", 2));
    w.import(&a);
    w.import(&b);
    w.assign(&a, "hook");
    w.assign(&b, "slow");
    w.start_dispatcher(8);
    let all: Vec<String> = a.iter().chain(&b).cloned().collect();
    w.wait_settled(&all, Duration::from_secs(30));

    let list = |args: &[&str]| -> Vec<Value> {
        let mut full = vec!["deliveries", "--json"];
        full.extend_from_slice(args);
        let o = w.hookops(&full);
        assert_ok(&o, "deliveries");
        json_out(&o).as_array().unwrap().clone()
    };
    let s503 = list(&["--status", "503"]);
    assert_eq!(s503.len(), 4);
    assert!(
        s503.iter()
            .all(|d| d["stage"] == "hook" && d["last_status"] == 503)
    );
    let timeouts = list(&["--error-kind", "timeout"]);
    assert_eq!(timeouts.len(), 2);
    assert!(timeouts.iter().all(|d| d["stage"] == "slow"));
    assert_eq!(list(&["--status", "503", "--stage", "slow"]).len(), 0);
    // The store filter is the one the console uses.
    let f = DeliveryFilter {
        error_kinds: vec![ErrorKind::Timeout],
        ..DeliveryFilter::default()
    };
    assert_eq!(w.store.count_deliveries(&f).unwrap(), 2);

    let file = w.dir.path().join("failed.jsonl");
    let out = w.hookops(&[
        "deliveries",
        "export",
        "--state",
        "failed",
        "--status",
        "503",
        "--output",
        &file.to_string_lossy(),
    ]);
    assert_ok(&out, "deliveries export");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    assert_eq!(lines.len(), 4);
    for l in &lines {
        assert_eq!(l["state"], "failed");
        let log = l["attempt_log"].as_array().unwrap();
        assert_eq!(log.len(), 2, "{l}");
        for at in log {
            assert_eq!(at["status"], 503);
            assert!(at["request_headers"].as_array().unwrap().len() > 3);
            assert!(at["response_body"].is_string());
        }
        // The same shape as `delivery show --json`.
        let id = l["id"].as_str().unwrap();
        let show = json_out(&w.hookops(&["delivery", "show", id, "--json"]));
        assert_eq!(&show, l);
    }
    for secret in [TOKEN, NEW_SECRET, NEW_SECRET.trim_start_matches("whsec_")] {
        assert!(!text.contains(secret), "the export holds a secret");
    }
    assert!(
        text.contains("authorization"),
        "headers are exported, masked"
    );

    // To stdout as well, and never over a file without --force.
    let o = w.hookops(&["deliveries", "export", "--error-kind", "timeout"]);
    assert_ok(&o, "export to stdout");
    assert_eq!(stdout(&o).lines().count(), 2);
    let o = w.hookops(&["deliveries", "export", "--output", &file.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1));
}

// ---------------------------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------------------------

#[test]
fn cancel_routes_exactly_once_even_when_the_attempt_is_in_flight() {
    let mut w = World::new("/hook=slow:3s,/retry=500,*=ok");
    let (hook_url, retry_url, bare_url) = (w.url("/hook"), w.url("/retry"), w.url("/bare"));
    w.apply(
        &(hook(
            "hook",
            &hook_url,
            r#"on_failure = "fail-sink"
timeout = "10s"
pause_after_failures = 1"#,
        ) + &hook(
            "retry",
            &retry_url,
            r#"on_failure = "fail-sink"
max_attempts = 5
retry_schedule = ["1h"]"#,
        ) + &hook("bare", &bare_url, "")),
        &[],
    );
    w.import(&["slow".into(), "later".into(), "plain".into()]);
    w.store
        .set_paused(&wf(), &StageId::new("bare"), true, OPERATOR)
        .unwrap();
    w.assign(&["plain".into()], "bare");
    w.start_dispatcher(8);
    w.assign(&["slow".into()], "hook");
    w.assign(&["later".into()], "retry");

    // The receiver holds the request: the attempt is on the wire.
    assert!(w.rt.block_on(w.receiver.wait_for(2, Duration::from_secs(20))));
    let d = w.deliveries_of("slow")[0].clone();
    assert_eq!(d.state, DeliveryState::InFlight);
    let (_, _, version) = w.item("slow");

    let out = w.hookops(&["delivery", "cancel", d.id.as_str()]);
    assert_ok(&out, "delivery cancel");
    assert!(stdout(&out).contains("cancelled 1"), "{}", stdout(&out));
    let (stage, state, v2) = w.item("slow");
    assert_eq!(stage.as_str(), "fail-sink");
    assert_eq!(state, ItemState::Active);
    assert_eq!(v2, version + 1);

    // The held request is answered 200 later; it is recorded and routes nothing.
    wait_until(
        "the in-flight attempt to be recorded",
        Duration::from_secs(20),
        || {
            w.store
                .delivery_detail(&d.id)
                .unwrap()
                .attempt_log
                .iter()
                .any(|a| a.status == Some(200))
        },
    );
    let detail = w.store.delivery_detail(&d.id).unwrap();
    assert_eq!(detail.summary.state, DeliveryState::Cancelled);
    assert_eq!(detail.summary.cancel_reason, Some(CancelReason::Operator));
    assert_eq!(detail.cancelled_by.as_deref(), Some(OPERATOR));
    assert!(!detail.attempt_log[0].counted);
    let history = w.store.item_detail(&ItemId::new("slow")).unwrap().history;
    let moves: Vec<(HistoryCause, Option<String>)> = history
        .iter()
        .filter(|h| h.from.as_ref().is_some_and(|f| f.as_str() == "hook"))
        .map(|h| (h.cause, h.operator.clone()))
        .collect();
    assert_eq!(
        moves,
        vec![(HistoryCause::Cancelled, Some(OPERATOR.to_string()))]
    );
    assert_eq!(
        w.item("slow"),
        (StageId::new("fail-sink"), ItemState::Active, v2)
    );
    // A cancel never counts toward auto-pause (the stage pauses after one failure).
    let stages = w.store.workflow_detail(&wf()).unwrap().stage_list;
    assert!(
        !stages
            .iter()
            .find(|s| s.id.as_str() == "hook")
            .unwrap()
            .paused
    );

    // Bulk, by filter: the retrying delivery.
    wait_until("a retry to be scheduled", Duration::from_secs(20), || {
        w.deliveries_of("later")[0].state == DeliveryState::RetryScheduled
    });
    let no_tty = w.hookops(&[
        "delivery",
        "cancel",
        "--state",
        "retry_scheduled",
        "--workflow",
        WF,
    ]);
    assert_eq!(no_tty.status.code(), Some(1), "bulk cancel asks first");
    assert_eq!(
        w.deliveries_of("later")[0].state,
        DeliveryState::RetryScheduled
    );
    let no_wf = w.hookops(&["delivery", "cancel", "--stage", "retry", "--yes"]);
    assert_eq!(
        no_wf.status.code(),
        Some(2),
        "a mutation by --stage needs --workflow"
    );
    let out = w.hookops(&[
        "delivery",
        "cancel",
        "--state",
        "retry_scheduled",
        "--workflow",
        WF,
        "--yes",
        "--json",
    ]);
    assert_ok(&out, "bulk cancel");
    let r = json_out(&out);
    assert_eq!(r["acted"], 1, "{r}");
    assert_eq!(w.item("later").0.as_str(), "fail-sink");

    // Without on_failure the item stays in the stage, marked failed.
    let plain = w.deliveries_of("plain")[0].id.clone();
    let r = w
        .store
        .cancel_deliveries(std::slice::from_ref(&plain), OPERATOR)
        .unwrap();
    assert_eq!(r.cancelled, 1);
    assert!(
        r.routed.is_empty(),
        "staying put is not a route: {:?}",
        r.routed
    );
    assert_eq!(w.item("plain").0.as_str(), "bare");
    assert_eq!(w.item("plain").1, ItemState::Failed);

    // Cancelling twice is refused, saying why.
    let again = w.hookops(&["delivery", "cancel", plain.as_str()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already cancelled"),
        "{}",
        stderr(&again)
    );
    let ro = w.hookops(&["--read-only", "delivery", "cancel", plain.as_str()]);
    assert_eq!(ro.status.code(), Some(1));
    let c = w.sql();
    // One row per cancel of a front end (the store's own call above is not an operator
    // action: the actions layer audits), the refused one saying so.
    assert_eq!(
        count(&c, "SELECT COUNT(*) FROM audit WHERE action = 'cancel'"),
        3
    );
    assert_eq!(
        count(
            &c,
            "SELECT COUNT(*) FROM audit WHERE action = 'cancel' AND outcome = 'refused' AND via = 'cli'"
        ),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Secret rotation
// ---------------------------------------------------------------------------------------------

#[test]
fn two_secret_signatures_verify_with_each_secret_alone() {
    use hookops::dispatch::sign;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A receiver that knows only the new key, and one that knows only the old one.
    let start = |secret: &str| {
        rt.block_on(Receiver::start(ReceiverOptions {
            secrets: vec![secret.to_string()],
            ..ReceiverOptions::default()
        }))
        .unwrap()
    };
    let (new_rx, old_rx) = (start(NEW_SECRET), start(OLD_SECRET));
    let mut w = World::new("*=ok");
    let rotate = r#"secret = ["${NEW}", "${OLD}"]"#;
    w.apply(
        &(hook("to-new", &new_rx.url("/n"), rotate) + &hook("to-old", &old_rx.url("/o"), rotate)),
        &[("NEW", NEW_SECRET), ("OLD", OLD_SECRET)],
    );
    w.import(&["r1".into(), "r2".into()]);
    w.assign(&["r1".into()], "to-new");
    w.assign(&["r2".into()], "to-old");
    w.start_dispatcher(4);
    w.wait_settled(&["r1".into(), "r2".into()], Duration::from_secs(20));
    assert_eq!(
        w.item("r1").0.as_str(),
        "ok-sink",
        "the new-key receiver accepted"
    );
    assert_eq!(
        w.item("r2").0.as_str(),
        "ok-sink",
        "the old-key receiver accepted"
    );

    for rx in [&new_rx, &old_rx] {
        let got = rx.received();
        assert_eq!(got.len(), 1);
        let req = &got[0];
        assert_eq!(req.signature_valid, Some(true));
        let id = req.header("webhook-id").unwrap();
        let ts = req.header("webhook-timestamp").unwrap();
        let header = req.header("webhook-signature").unwrap();
        let t: i64 = ts.parse().unwrap();
        // One `v1,` signature per key, in order, space-separated.
        let expected = format!(
            "{} {}",
            sign::sign(NEW_SECRET, id, t, &req.body).unwrap(),
            sign::sign(OLD_SECRET, id, t, &req.body).unwrap()
        );
        assert_eq!(header, expected);
        assert_eq!(header.split(' ').count(), 2);
        for secret in [NEW_SECRET, OLD_SECRET] {
            assert!(sign::verify(secret, id, t, &req.body, header));
            assert!(
                hookops::receiver::verify_signature(secret, id, ts, &req.body, header).unwrap()
            );
            // Each signature alone verifies with its own key only.
            let own = sign::sign(secret, id, t, &req.body).unwrap();
            assert!(sign::verify(secret, id, t, &req.body, &own));
        }
        let stranger = "whsec_dGhpcy1pcy1ub3QtYS1rZXktb2YtdGhpcy1zdGFnZQ==";
        assert!(!sign::verify(stranger, id, t, &req.body, header));
        let mut tampered = req.body.clone();
        tampered.push(b' ');
        assert!(!sign::verify(NEW_SECRET, id, t, &tampered, header));
    }
    drop((new_rx, old_rx));
    drop(rt);
}

// ---------------------------------------------------------------------------------------------
// Shell integration
// ---------------------------------------------------------------------------------------------

#[test]
fn completion_scripts_parse_and_the_man_page_renders() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("unused.db");
    for shell in ["bash", "zsh", "fish"] {
        let o = hookops(&db, &["completions", shell]);
        assert_ok(&o, shell);
        let script = stdout(&o);
        for word in ["prune", "backup", "check", "cancel", "export", "older-than"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
        let file = dir.path().join(format!("hookops.{shell}"));
        std::fs::write(&file, &script).unwrap();
        let checker = match shell {
            "bash" => Some("bash"),
            other => which(other).then_some(other),
        };
        if let Some(sh) = checker {
            let st = Command::new(sh).arg("-n").arg(&file).status().unwrap();
            assert!(
                st.success(),
                "{sh} -n rejects the {shell} completion script"
            );
        }
    }
    let o = hookops(&db, &["man"]);
    assert_ok(&o, "man");
    let page = stdout(&o);
    assert!(
        page.starts_with(".ie") || page.contains(".TH hookops"),
        "{}",
        &page[..200.min(page.len())]
    );
    assert!(page.contains("prune"));
    assert!(
        !db.exists(),
        "printing completions or the man page creates no database"
    );
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

// ---------------------------------------------------------------------------------------------
// Console: :health, the delivery filter words, cancel and export keys
// ---------------------------------------------------------------------------------------------

mod console {
    use super::*;
    use hookops::tui::state::{App, Effect, Msg, Overlay, Pending, ViewData, ViewKind, update};
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    fn key(app: &mut App, code: KeyCode) -> Vec<Effect> {
        update(app, Msg::Key(KeyEvent::new(code, KeyModifiers::NONE)))
    }

    fn command(app: &mut App, text: &str) -> Vec<Effect> {
        key(app, KeyCode::Char(':'));
        for c in text.chars() {
            key(app, KeyCode::Char(c));
        }
        key(app, KeyCode::Enter)
    }

    fn loaded_kind(fx: &[Effect]) -> (u64, ViewKind) {
        fx.iter()
            .find_map(|e| match e {
                Effect::Load { view, kind, .. } => Some((*view, kind.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no load in {fx:?}"))
    }

    fn screen(app: &mut App) -> String {
        let backend = ratatui::backend::TestBackend::new(120, 30);
        let mut term = ratatui::Terminal::new(backend).unwrap();
        let theme = hookops::tui::theme::Theme::mono();
        term.draw(|f| hookops::tui::view::draw(f, app, &theme, chrono::Utc::now()))
            .unwrap();
        let buf = term.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn health_view_filters_and_cancel_keys() {
        let w = World::new("*=ok");
        let url = w.url("/hook");
        w.apply(&hook("hook", &url, r#"on_failure = "fail-sink""#), &[]);
        let items = ids("k", 3);
        w.import(&items);
        w.assign(&items, "hook");

        let (mut app, fx) = App::new(false);
        // Keys wait for a view's first list (issue 19): let the workflows arrive.
        let (first, _) = loaded_kind(&fx);
        update(
            &mut app,
            Msg::Loaded {
                view: first,
                data: ViewData::Workflows(vec![]),
                append: false,
            },
        );
        // :health loads the check report and draws one line per check.
        let (view, kind) = loaded_kind(&command(&mut app, "health"));
        assert_eq!(kind, ViewKind::Health);
        let report = w.store.health().unwrap();
        update(
            &mut app,
            Msg::Loaded {
                view,
                data: ViewData::Health(Box::new(report)),
                append: false,
            },
        );
        let text = screen(&mut app);
        for name in hookops::store::CHECKS {
            assert!(
                text.contains(name),
                "{name} missing from the health view:\n{text}"
            );
        }
        assert!(text.contains("✓ ok"), "{text}");
        assert!(
            text.contains("KiB") || text.contains("MiB"),
            "size in the title:\n{text}"
        );

        // The delivery filter takes a state, an error kind and a status, in any order.
        let (view, kind) = loaded_kind(&command(&mut app, "deliveries 503 failed timeout"));
        let ViewKind::Deliveries(f) = kind else {
            panic!("{kind:?}")
        };
        update(
            &mut app,
            Msg::Loaded {
                view,
                data: ViewData::Deliveries {
                    rows: vec![],
                    cursors: vec![],
                    more: false,
                },
                append: false,
            },
        );
        assert_eq!(f.state, Some(DeliveryState::Failed));
        assert_eq!(f.error_kinds, [ErrorKind::Timeout]);
        assert_eq!(f.statuses, [hookops::store::StatusMatch::Code(503)]);
        assert!(command(&mut app, "deliveries sideways").is_empty());

        // A deliveries view of the three pending deliveries.
        let (view, kind) = loaded_kind(&command(&mut app, "deliveries pending"));
        let ViewKind::Deliveries(filter) = kind else {
            panic!()
        };
        let page = w.store.list_deliveries(&filter, None, 100).unwrap();
        assert_eq!(page.len(), 3);
        let cursors = page.iter().map(|(_, c)| *c).collect();
        let rows: Vec<DeliverySummary> = page.into_iter().map(|(d, _)| d).collect();
        let first = rows[0].id.clone();
        update(
            &mut app,
            Msg::Loaded {
                view,
                data: ViewData::Deliveries {
                    rows,
                    cursors,
                    more: false,
                },
                append: false,
            },
        );

        // c: a dialog naming the delivery, focus on Cancel; Enter there does nothing.
        assert!(key(&mut app, KeyCode::Char('c')).is_empty());
        match &app.overlay {
            Some(Overlay::Confirm {
                text,
                focus,
                action,
            }) => {
                assert!(text.contains(first.as_str()), "{text}");
                assert_eq!(*focus, 0);
                assert_eq!(action, &Pending::Cancel(vec![first.clone()]));
            }
            other => panic!("{other:?}"),
        }
        assert!(key(&mut app, KeyCode::Enter).is_empty());
        assert!(app.overlay.is_none());
        // Tab to OK, Enter: the cancel runs.
        key(&mut app, KeyCode::Char('c'));
        key(&mut app, KeyCode::Tab);
        let fx = key(&mut app, KeyCode::Enter);
        assert_eq!(fx, vec![Effect::Run(Pending::Cancel(vec![first.clone()]))]);
        // The executor's answer (a second action waits for it).
        update(
            &mut app,
            Msg::ActionDone {
                text: "cancelled 1 delivery(ies)".into(),
                level: hookops::tui::state::Level::Info,
                refused: vec![],
            },
        );

        // C: counts what the filter matches, then asks for the count to be typed.
        let fx = key(&mut app, KeyCode::Char('C'));
        let Some(Effect::Count {
            action: BulkAction::Cancel,
            filter: f,
        }) = fx.first().cloned()
        else {
            panic!("{fx:?}")
        };
        let n = w.store.open_deliveries(&f, None).unwrap().len() as i64;
        assert_eq!(n, 3);
        update(
            &mut app,
            Msg::Counted {
                action: BulkAction::Cancel,
                filter: f.clone(),
                count: n,
            },
        );
        assert!(matches!(&app.overlay, Some(Overlay::Typed { expected, .. }) if expected == "3"));
        assert!(
            key(&mut app, KeyCode::Enter).is_empty(),
            "nothing typed yet"
        );
        key(&mut app, KeyCode::Char('3'));
        let fx = key(&mut app, KeyCode::Enter);
        assert_eq!(
            fx,
            vec![Effect::Run(Pending::Filtered {
                action: BulkAction::Cancel,
                filter: f.clone(),
                count: 3
            })]
        );

        // e: export what the view's filter matches.
        let fx = key(&mut app, KeyCode::Char('e'));
        assert_eq!(fx, vec![Effect::Export(f)]);

        // Read-only: neither cancel key acts, export still does.
        let (mut ro, fx) = App::new(true);
        let (first, _) = loaded_kind(&fx);
        update(
            &mut ro,
            Msg::Loaded {
                view: first,
                data: ViewData::Workflows(vec![]),
                append: false,
            },
        );
        let (view, _) = loaded_kind(&command(&mut ro, "deliveries pending"));
        let page = w.store.list_deliveries(&filter, None, 100).unwrap();
        let cursors = page.iter().map(|(_, c)| *c).collect();
        let rows = page.into_iter().map(|(d, _)| d).collect();
        update(
            &mut ro,
            Msg::Loaded {
                view,
                data: ViewData::Deliveries {
                    rows,
                    cursors,
                    more: false,
                },
                append: false,
            },
        );
        assert!(key(&mut ro, KeyCode::Char('c')).is_empty());
        assert!(key(&mut ro, KeyCode::Char('C')).is_empty());
        assert!(ro.overlay.is_none());
        assert_eq!(key(&mut ro, KeyCode::Char('e')).len(), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Moving a store (issue 17): db copy
// ---------------------------------------------------------------------------------------------

#[path = "support/pg.rs"]
mod pg;

/// Everything a store shows of its rows, in one JSON value: every item with its history and
/// deliveries, every delivery with its body and attempts, the workflow's figures and the audit
/// log.
fn everything(store: &Store) -> Value {
    let mut items = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_items(&hookops::store::ItemFilter::default(), after.as_ref(), 100)
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|r| r.cursor.clone());
        for row in page {
            items.push(serde_json::to_value(store.item_detail(&row.id).unwrap()).unwrap());
        }
    }
    let mut deliveries = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_deliveries(&DeliveryFilter::default(), after, 100)
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|(_, c)| *c);
        for (d, _) in page {
            deliveries.push(serde_json::to_value(store.delivery_detail(&d.id).unwrap()).unwrap());
        }
    }
    let workflow = store.workflow_detail(&wf()).unwrap();
    json!({
        "items": items,
        "deliveries": deliveries,
        "workflow": serde_json::to_value(workflow.summary).unwrap(),
        "audit": serde_json::to_value(store.audit_log(1000).unwrap()).unwrap(),
    })
}

fn open_read_only(location: &str) -> Store {
    let location = hookops::store::Location::parse(location).unwrap();
    let opts = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    Store::open_at(&location, &opts).unwrap()
}

fn db_copy(from: &str, to: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookops"))
        .args(["db", "copy", from, to])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `db copy` moves a store that has been delivering (successes, final failures routed on
/// `on_failure`, attempts with headers and bodies) into PostgreSQL and from there into a new
/// file; all three read the same, item by item and delivery by delivery, and each copy prints
/// equal counts for both sides. A target that already holds a store is refused (exit 1) and
/// keeps what it had.
#[test]
fn db_copy_round_trips_a_store_through_postgresql_and_refuses_a_target_in_use() {
    let mut w = World::new("/ok=ok,/bad=500,*=ok");
    w.apply(
        &format!(
            "{}{}",
            hook("good", &w.url("/ok"), ""),
            hook(
                "bad",
                &w.url("/bad"),
                "max_attempts = 1\non_failure = \"fail-sink\""
            )
        ),
        &[],
    );
    let good = ids("g", 20);
    let bad = ids("b", 10);
    w.import(&good);
    w.import(&bad);
    w.start_dispatcher(16);
    w.assign(&good, "good");
    w.assign(&bad, "bad");
    let all: Vec<String> = good.iter().chain(&bad).cloned().collect();
    w.wait_settled(&all, Duration::from_secs(60));
    for stop in &w.stops {
        stop.send(true).unwrap();
    }
    let source = w.db.to_str().unwrap().to_string();
    let url = pg::cluster().database();
    let back = w.dir.path().join("back.db");
    let back = back.to_str().unwrap();

    for (from, to) in [(source.as_str(), url.as_str()), (url.as_str(), back)] {
        let o = db_copy(from, to);
        assert_ok(&o, "db copy");
        let table = stdout(&o);
        let rows: Vec<Vec<&str>> = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .filter(|r: &Vec<&str>| r.len() == 3)
            .collect();
        assert!(rows.len() >= 13, "a line per table: {table}");
        assert!(rows.iter().all(|r| r[1] == r[2]), "{table}");
        let deliveries = rows.iter().find(|r| r[0] == "deliveries").unwrap();
        assert_eq!(deliveries[1], "30", "{table}");
    }
    let expected = everything(&w.store);
    assert_eq!(expected["items"].as_array().unwrap().len(), 30);
    assert_eq!(
        everything(&open_read_only(&url)),
        expected,
        "the copy in PostgreSQL"
    );
    assert_eq!(
        everything(&open_read_only(back)),
        expected,
        "the copy back in a file"
    );

    let o = db_copy(&source, &url);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("already holds a store"),
        "{}",
        stderr(&o)
    );
    assert_eq!(everything(&open_read_only(&url)), expected, "untouched");
}

/// `sslmode` as libpq means it (design §7, "TLS as the URL asks"), against a cluster that takes
/// TCP connections only with TLS, its certificate signed by a test CA for `localhost`:
/// `require` (and the default, `prefer`) encrypt without checking the certificate, `disable`
/// is refused by the server, `verify-full` checks the chain and the host name, `verify-ca` the
/// chain only, and a missing or foreign CA is one sentence, the password never in it.
#[test]
fn sslmode_require_connects_over_tls_and_verify_modes_check_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl (it comes with the postgresql package)");
        assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, crt) = (format!("{ca}.key"), format!("{ca}.crt"));
        let subject = format!("/CN=hookops test {ca}");
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt]);
        openssl(&args);
    }
    let mut args = vec!["req", "-subj", "/CN=localhost", "-keyout", "server.key"];
    args.extend(ec);
    args.extend(["-out", "server.csr"]);
    openssl(&args);
    std::fs::write(
        at("ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "server.crt",
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cluster = pg::start_tls(port, &at("server.crt"), &at("server.key"));
    let name = cluster
        .database()
        .split_once("///")
        .and_then(|(_, rest)| rest.split_once('?'))
        .map(|(name, _)| name.to_string())
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let list = |host: &str, query: &str| {
        let url = format!("postgres://postgres:s3cret-pw@{host}:{port}/{name}{query}");
        let o = Command::new(env!("CARGO_BIN_EXE_hookops"))
            .args(["--db", &url, "workflow", "list"])
            .env("HOME", home.path())
            .env_remove("HOOKOPS_DB")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = format!("{}{}", stdout(&o), stderr(&o));
        assert!(
            !said.contains("s3cret-pw"),
            "the password was shown: {said}"
        );
        (o.status.code(), said)
    };
    let ca = format!("&sslrootcert={}", at("ca.crt").display());
    let other = format!("&sslrootcert={}", at("other-ca.crt").display());
    for (host, query) in [
        ("127.0.0.1", "?sslmode=require".to_string()),
        ("127.0.0.1", String::new()),
        ("localhost", format!("?sslmode=verify-full{ca}")),
        ("127.0.0.1", format!("?sslmode=verify-ca{ca}")),
    ] {
        let (code, said) = list(host, &query);
        assert_eq!(code, Some(0), "{host}{query}: {said}");
    }
    for (host, query, says) in [
        ("127.0.0.1", "?sslmode=disable".to_string(), "no encryption"),
        (
            "127.0.0.1",
            format!("?sslmode=verify-full{ca}"),
            "certificate not valid for name",
        ),
        (
            "localhost",
            format!("?sslmode=verify-full{other}"),
            "UnknownIssuer",
        ),
        (
            "localhost",
            format!("?sslmode=require{other}"),
            "UnknownIssuer",
        ),
        (
            "localhost",
            "?sslmode=verify-full".to_string(),
            "no CA is given",
        ),
    ] {
        let (code, said) = list(host, &query);
        assert_eq!(code, Some(1), "{host}{query}: {said}");
        assert!(said.contains(says), "{host}{query}: {said}");
        assert_eq!(said.trim().lines().count(), 1, "one sentence: {said}");
    }
}
