//! Integration tests of the delivery engine (issue 4) against a real receiver on 127.0.0.1
//! (random port) and real SQLite files in temp dirs: the fault matrix, retries and their
//! spacing, routing, request contents and signatures, re-fire and replay, test webhooks,
//! pause and auto-pause, fencing, two dispatchers on one file, graceful shutdown and a restart
//! after `kill -9`.
//!
//! Most tests run the dispatcher in-process (`hookops::dispatch::run` on a tokio runtime the
//! test owns) and call the store's sync API from the test thread, outside the runtime. Tests of
//! processes (serve, signals, the CLI) run the real binary. Every wait is on a condition with a
//! deadline; timing is only ever asserted as a lower bound.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookops::dispatch::{self, DispatchNotice, DispatcherOptions};
use hookops::model::{
    AttemptTrigger, CancelReason, DeliveryId, DeliveryState, DeliveryTrigger, ErrorKind, EventType,
    HistoryCause, ItemId, ItemState, StageId, WorkflowId,
};
use hookops::receiver::{Received, Receiver, ReceiverOptions, Script};
use hookops::store::{
    AssignTarget, AttemptCursor, DeliveryDetail, DeliveryFilter, DeliverySummary, Location,
    MoveReport, OpenOptions, Store,
};
use hookops::workflow::Workflow;
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, watch};

const WF: &str = "wf";
const OPERATOR: &str = "tester";
/// The Standard Webhooks test-vector key (any valid `whsec_` key would do).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1zdGFnZXM=";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// One test's world: a temp database, a receiver, and any in-process dispatchers.
struct Harness {
    receiver: Receiver,
    store: Store,
    db: PathBuf,
    /// Where the store is: `db`, or a PostgreSQL database ([`Harness::on_postgres`]).
    location: Location,
    events: broadcast::Sender<DispatchNotice>,
    stops: Vec<watch::Sender<bool>>,
    // Dropped last: the runtime runs the receiver and the dispatchers.
    rt: Runtime,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(script: &str) -> Harness {
        Harness::with_secrets(script, Vec::new())
    }

    /// A harness whose store is a database of the PostgreSQL test cluster.
    fn on_postgres(script: &str) -> Harness {
        let url = pg::cluster().database();
        Harness::at(script, Vec::new(), Some(Location::parse(&url).unwrap()))
    }

    fn with_secrets(script: &str, secrets: Vec<String>) -> Harness {
        Harness::at(script, secrets, None)
    }

    fn at(script: &str, secrets: Vec<String>, location: Option<Location>) -> Harness {
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
        let location = location.unwrap_or_else(|| Location::File(db.clone()));
        let store = Store::open_at(&location, &OpenOptions::default()).unwrap();
        let (events, _) = broadcast::channel(4096);
        Harness {
            receiver,
            store,
            db,
            location,
            events,
            stops: Vec::new(),
            rt,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.receiver.url(path)
    }

    /// Another handle on the store, as another process opens it.
    fn other_process(&self) -> Store {
        Store::open_at(&self.location, &OpenOptions::default()).unwrap()
    }

    /// Applies a workflow made of the common sink stages plus `stages` (TOML `[[stage]]`s).
    fn apply(&self, stages: &str) -> Arc<Workflow> {
        let text = workflow_toml(stages);
        let wf = hookops::workflow::parse("test.toml", &text, &|_| None)
            .unwrap_or_else(|e| panic!("workflow does not validate: {e:?}\n{text}"));
        self.store
            .apply_workflow(&wf, &Vec::new(), OPERATOR)
            .unwrap();
        self.store.workflow_spec(&WorkflowId::new(WF)).unwrap()
    }

    /// Imports items with these ids into the dataset stage.
    fn import(&self, ids: &[&str]) {
        let text: String = ids.iter().map(|id| item_line(id) + "\n").collect();
        let parsed = hookops::import::parse_jsonl(text.as_bytes()).unwrap();
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let report = self
            .store
            .import_items(&wf(), parsed.items, None, OPERATOR, &mut |_, _| {})
            .unwrap();
        assert_eq!(report.imported, ids.len() as i64);
    }

    fn assign(&self, ids: &[&str], stage: &str) -> MoveReport {
        let ids = ids.iter().map(|i| ItemId::new(*i)).collect();
        let report = self
            .store
            .assign(
                &wf(),
                &StageId::new(stage),
                &AssignTarget::Items(ids),
                None,
                OPERATOR,
            )
            .unwrap();
        assert!(report.refused.is_empty(), "{:?}", report.refused);
        report
    }

    /// Starts a dispatcher in this process on `store` (a handle of its own, or a clone).
    fn start_dispatcher(&mut self, store: Store, concurrency: usize) {
        let opts = DispatcherOptions {
            concurrency,
            ..DispatcherOptions::default()
        };
        self.start_dispatcher_with(store, opts);
    }

    fn start_dispatcher_with(&mut self, store: Store, opts: DispatcherOptions) {
        let (stop, stopped) = watch::channel(false);
        let events = self.events.clone();
        self.rt.spawn(async move {
            if let Err(e) = dispatch::run(store, opts, events, stopped).await {
                panic!("dispatcher failed: {e}");
            }
        });
        self.stops.push(stop);
    }

    fn received(&self, path: &str) -> Vec<Received> {
        self.receiver
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    fn received_for(&self, id: &DeliveryId) -> Vec<Received> {
        self.receiver
            .received()
            .into_iter()
            .filter(|r| r.webhook_id.as_deref() == Some(id.as_str()))
            .collect()
    }

    fn wait_received(&self, n: usize, timeout: Duration) {
        let ok = self.rt.block_on(self.receiver.wait_for(n, timeout));
        assert!(
            ok,
            "the receiver got {} request(s), expected {n} within {timeout:?}",
            self.receiver.count()
        );
    }

    /// The item's deliveries, newest first.
    fn deliveries_of(&self, item: &str) -> Vec<DeliverySummary> {
        self.store
            .item_detail(&ItemId::new(item))
            .unwrap()
            .deliveries
    }

    /// The item's only delivery (panics when it has another number of them).
    fn delivery_of(&self, item: &str) -> DeliverySummary {
        let mut d = self.deliveries_of(item);
        assert_eq!(d.len(), 1, "deliveries of {item}: {d:?}");
        d.remove(0)
    }

    fn detail(&self, id: &DeliveryId) -> DeliveryDetail {
        self.store.delivery_detail(id).unwrap()
    }

    fn item_stage(&self, item: &str) -> (StageId, ItemState, i64) {
        let it = self.store.item(&ItemId::new(item)).unwrap();
        (it.stage, it.state, it.version)
    }

    fn history_causes(&self, item: &str) -> Vec<HistoryCause> {
        self.store
            .item_detail(&ItemId::new(item))
            .unwrap()
            .history
            .into_iter()
            .map(|h| h.cause)
            .collect()
    }

    /// Waits until every delivery of each item has ended (none open) and each item has one.
    fn wait_settled(&self, items: &[&str], timeout: Duration) {
        wait_until(
            &format!("deliveries of {items:?} to settle"),
            timeout,
            || {
                items.iter().all(|i| {
                    let d = self.deliveries_of(i);
                    !d.is_empty() && d.iter().all(|d| !d.state.is_open())
                })
            },
        );
    }

    fn stage_paused(&self, stage: &str) -> (bool, Option<String>) {
        let d = self.store.workflow_detail(&wf()).unwrap();
        let s = d
            .stage_list
            .into_iter()
            .find(|s| s.id.as_str() == stage)
            .unwrap();
        (s.paused, s.paused_reason)
    }

    fn hookops(&self, args: &[&str]) -> Output {
        run_cli(&self.db, args)
    }

    fn spawn_serve(&self, concurrency: u32, log: &str) -> Child {
        let db = match &self.location {
            Location::File(path) => path.clone(),
            Location::Postgres { url, .. } => PathBuf::from(url),
        };
        spawn_serve(&db, concurrency, &self._dir.path().join(log))
    }
}

#[path = "support/pg.rs"]
mod pg;

fn wf() -> WorkflowId {
    WorkflowId::new(WF)
}

fn workflow_toml(stages: &str) -> String {
    format!(
        r#"id = "{WF}"
name = "Delivery tests"
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
id = "elsewhere"
kind = "annotate"
next = "done"

[[stage]]
id = "done"
kind = "complete"
{stages}"#
    )
}

/// A webhook stage routing to `ok-sink` / `fail-sink`, with `extra` keys (timeouts, schedule).
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

const FAST: &str = r#"on_failure = "fail-sink"
max_attempts = 2
timeout = "300ms"
retry_schedule = ["50ms"]"#;

fn annotation(item: &str) -> Value {
    // A fixed, valid 36-character UUID per item, so the payload can be compared exactly.
    let n: u64 = item.bytes().map(u64::from).sum();
    json!({
        "id": format!("6f1c2a3b-0000-4000-8000-{n:012}"),
        "name": "crack",
        "bounding_box": {"h": 10.5, "w": 20.25, "x": 3.0, "y": 4.0},
        "slot_names": ["0"],
        "properties": []
    })
}

fn item_line(id: &str) -> String {
    json!({
        "id": id,
        "name": format!("{id}.jpg"),
        "path": "/line-1",
        "tags": ["night-shift"],
        "properties": {"camera": "cam-1"},
        "annotations": [annotation(id)]
    })
    .to_string()
}

/// Polls `cond` every 10 ms until it holds; panics after `timeout`.
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

fn run_cli(db: &Path, args: &[&str]) -> Output {
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

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spawn_serve(db: &Path, concurrency: u32, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Command::new(env!("CARGO_BIN_EXE_hookops"))
        .arg("--db")
        .arg(db)
        .args(["serve", "--concurrency", &concurrency.to_string()])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} failed");
}

/// Waits for a child to exit, at most `timeout`; returns its status and how long it took.
fn wait_exit(child: &mut Child, timeout: Duration) -> (ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st, start.elapsed());
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The next `n` attempt events of a dispatcher (published just after their commit, so they
/// may trail what the database already shows).
fn attempt_events(
    rx: &mut broadcast::Receiver<DispatchNotice>,
    n: usize,
) -> Vec<hookops::model::AttemptEvent> {
    let mut out = Vec::new();
    wait_until(
        &format!("{n} attempt event(s)"),
        Duration::from_secs(10),
        || {
            while let Ok(notice) = rx.try_recv() {
                if let DispatchNotice::Attempt(e) = notice {
                    out.push(*e);
                }
            }
            out.len() >= n
        },
    );
    out
}

fn body_json(r: &Received) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn all_deliveries(store: &Store) -> Vec<DeliverySummary> {
    store
        .list_deliveries(&DeliveryFilter::default(), None, 100_000)
        .unwrap()
        .into_iter()
        .map(|(d, _)| d)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The fault matrix
// ---------------------------------------------------------------------------------------------

/// What one receiver behaviour must lead to.
struct Case {
    stage: &'static str,
    behaviour: &'static str,
    state: DeliveryState,
    /// Counted attempts, which is also how many requests the receiver must see.
    attempts: usize,
    status: Option<u16>,
    kind: Option<ErrorKind>,
    message: Option<&'static str>,
    /// Where the item must end, and in which state.
    to: &'static str,
    item_state: ItemState,
}

#[test]
fn fault_matrix_records_retries_and_routes_each_outcome() {
    use DeliveryState::{Failed, Succeeded};
    use ErrorKind::*;
    let ok = |stage, behaviour, status| Case {
        stage,
        behaviour,
        state: Succeeded,
        attempts: 1,
        status: Some(status),
        kind: None,
        message: None,
        to: "ok-sink",
        item_state: ItemState::Active,
    };
    let fail = |stage, behaviour, attempts, status, kind, message| Case {
        stage,
        behaviour,
        state: Failed,
        attempts,
        status,
        kind: Some(kind),
        message: Some(message),
        to: "fail-sink",
        item_state: ItemState::Active,
    };
    let cases = vec![
        ok("s200", "ok", 200),
        ok("s201", "201", 201),
        ok("s204", "204", 204),
        fail(
            "s301",
            "redirect",
            1,
            Some(301),
            Redirect,
            "301 Moved Permanently: redirect to / not followed",
        ),
        fail("s400", "400", 1, Some(400), HttpStatus, "400 Bad Request"),
        fail("s404", "404", 1, Some(404), HttpStatus, "404 Not Found"),
        fail(
            "s408",
            "408",
            2,
            Some(408),
            HttpStatus,
            "408 Request Timeout",
        ),
        fail("s410", "410", 1, Some(410), HttpStatus, "410 Gone"),
        fail(
            "s429",
            "429:retry-after=1",
            2,
            Some(429),
            HttpStatus,
            "429 Too Many Requests",
        ),
        fail(
            "s500",
            "500",
            2,
            Some(500),
            HttpStatus,
            "500 Internal Server Error",
        ),
        fail(
            "s503",
            "503",
            2,
            Some(503),
            HttpStatus,
            "503 Service Unavailable",
        ),
        fail("hang", "hang", 2, None, Timeout, "timed out after 300 ms"),
        // Bytes that are not HTTP: `protocol`, no status, retried like a connection fault.
        fail("garbage", "garbage", 2, None, Protocol, "not valid HTTP"),
        // Not on the receiver at all: a port nobody listens on.
        fail("refused", "", 2, None, Connect, "connection refused"),
        // The status decides; the cut-off body is recorded beside it.
        Case {
            kind: Some(Body),
            message: Some("response body cut off"),
            ..ok("reset", "reset", 200)
        },
        ok("big", "big-body", 200),
        Case {
            kind: Some(Body),
            message: Some("timed out after 300 ms"),
            ..ok("trickle", "trickle", 200)
        },
        ok("slow", "slow:150ms", 200),
        // A failure without `on_failure`: the item stays, marked failed.
        Case {
            to: "stay",
            item_state: ItemState::Failed,
            ..fail("stay", "400", 1, Some(400), HttpStatus, "400 Bad Request")
        },
    ];
    let script: Vec<String> = cases
        .iter()
        .filter(|c| !c.behaviour.is_empty())
        .map(|c| format!("/{}={}", c.stage, c.behaviour))
        .collect();
    let mut h = Harness::new(&script.join(","));
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut stages = String::new();
    for c in &cases {
        let url = match c.stage {
            "refused" => format!("http://127.0.0.1:{closed_port}/refused"),
            s => h.url(&format!("/{s}")),
        };
        let extra = match c.stage {
            "slow" => FAST.replace("300ms", "3s"),
            "stay" => FAST.replace("on_failure = \"fail-sink\"", ""),
            _ => FAST.to_string(),
        };
        stages.push_str(&hook(c.stage, &url, &extra));
    }
    h.apply(&stages);
    let items: Vec<String> = cases.iter().map(|c| format!("item-{}", c.stage)).collect();
    let ids: Vec<&str> = items.iter().map(String::as_str).collect();
    h.import(&ids);
    h.start_dispatcher(h.store.clone(), 64);
    for c in &cases {
        let r = h.assign(&[&format!("item-{}", c.stage)], c.stage);
        assert_eq!(r.deliveries, 1, "{}", c.stage);
    }
    h.wait_settled(&ids, Duration::from_secs(30));

    for c in &cases {
        let item = format!("item-{}", c.stage);
        let d = h.delivery_of(&item);
        let detail = h.detail(&d.id);
        let ctx = format!("stage {} ({}): {detail:#?}", c.stage, c.behaviour);
        assert_eq!(d.state, c.state, "{ctx}");
        assert_eq!(d.attempts, c.attempts as i64, "{ctx}");
        assert_eq!(d.last_status, c.status, "{ctx}");
        assert_eq!(d.last_error_kind, c.kind, "{ctx}");
        assert_eq!(d.trigger, DeliveryTrigger::Assign, "{ctx}");
        // One row per try, numbered from 1, all counted, each with the same outcome.
        let log = &detail.attempt_log;
        assert_eq!(log.len(), c.attempts, "{ctx}");
        for (i, a) in log.iter().enumerate() {
            assert_eq!(a.number, i as i64 + 1, "{ctx}");
            assert!(a.counted, "{ctx}");
            assert_eq!(a.trigger, AttemptTrigger::Scheduled, "{ctx}");
            assert_eq!(a.status, c.status, "{ctx}");
            assert_eq!(a.error_kind, c.kind, "{ctx}");
            match c.message {
                Some(m) => assert!(
                    a.error_message
                        .as_deref()
                        .is_some_and(|msg| msg.contains(m)),
                    "message should contain {m:?}: {ctx}"
                ),
                None => assert_eq!(a.error_message, None, "{ctx}"),
            }
            assert!(a.url.ends_with(&format!("/{}", c.stage)), "{ctx}");
        }
        // Retries: the receiver saw exactly the recorded tries, with one webhook-id.
        if c.stage != "refused" {
            let got = h.received(&format!("/{}", c.stage));
            assert_eq!(got.len(), c.attempts, "{ctx}");
            let attempts: Vec<Option<u32>> = got.iter().map(|r| r.attempt).collect();
            let want: Vec<Option<u32>> = (1..=c.attempts as u32).map(Some).collect();
            assert_eq!(attempts, want, "{ctx}");
            assert!(
                got.iter()
                    .all(|r| r.webhook_id.as_deref() == Some(d.id.as_str())),
                "{ctx}"
            );
        }
        // Routing: along on_success / on_failure, or staying put, marked failed.
        let (stage, state, _) = h.item_stage(&item);
        assert_eq!(stage.as_str(), c.to, "{ctx}");
        assert_eq!(state, c.item_state, "{ctx}");
        let causes = h.history_causes(&item);
        let want = if c.state == Succeeded {
            Some(HistoryCause::WebhookSuccess)
        } else if c.to == "fail-sink" {
            Some(HistoryCause::WebhookFailure)
        } else {
            None
        };
        assert_eq!(
            causes.last().copied(),
            Some(want.unwrap_or(HistoryCause::Assign)),
            "{ctx}"
        );
    }

    let get = |stage: &str| h.detail(&h.delivery_of(&format!("item-{stage}")).id);
    // Redirects are never followed: nothing but the POST reached the receiver's `/`.
    assert!(h.received("/").is_empty());
    // 204 has no body; a 10 MiB body is cut to the first 64 KiB.
    assert_eq!(
        get("s204").attempt_log[0].response_body.as_deref(),
        Some("")
    );
    let big = get("big");
    let kept = big.attempt_log[0].response_body.as_ref().unwrap();
    assert_eq!(kept.len(), 64 * 1024);
    assert!(kept.bytes().all(|b| b == b'x'));
    // The slow answer was waited for; the 300 ms stages gave up after their timeout.
    assert!(get("slow").attempt_log[0].duration_ms.unwrap() >= 150);
    for a in &get("hang").attempt_log {
        assert!(a.duration_ms.unwrap() >= 300, "{a:?}");
    }
    // Retry-After: 1 replaced the 50 ms schedule.
    let ra = get("s429");
    let (a1, a2) = (&ra.attempt_log[0], &ra.attempt_log[1]);
    let end1 = a1.started_at.timestamp_millis() + a1.duration_ms.unwrap();
    let gap = a2.started_at.timestamp_millis() - end1;
    assert!(gap >= 1000, "429 retry-after=1 retried after {gap} ms");
    assert_eq!(
        a1.response_headers
            .iter()
            .find(|(k, _)| k == "retry-after")
            .map(|(_, v)| v.as_str()),
        Some("1")
    );
    // A final 4xx and the failure edge counted toward nothing but their own stage.
    assert!(!h.stage_paused("s400").0);

    // `delivery show` explains a failure in words.
    for (stage, words) in [
        ("s503", "503 Service Unavailable"),
        ("hang", "timed out after 300 ms"),
        ("refused", "connection refused"),
    ] {
        let id = h.delivery_of(&format!("item-{stage}")).id;
        let out = h.hookops(&["delivery", "show", id.as_str()]);
        assert_ok(&out, "delivery show");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(words), "{stage}: {text}");
        assert!(text.contains("attempt 2"), "{stage}: {text}");
    }

    // `deliveries --state failed` lists exactly the failed ones, with the listed JSON keys.
    let out = h.hookops(&[
        "deliveries",
        "--state",
        "failed",
        "--workflow",
        WF,
        "--json",
    ]);
    assert_ok(&out, "deliveries --state failed --json");
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed_items: Vec<String> = listed
        .iter()
        .map(|d| d["item_id"].as_str().unwrap().to_string())
        .collect();
    listed_items.sort();
    let mut failed: Vec<String> = cases
        .iter()
        .filter(|c| c.state == Failed)
        .map(|c| format!("item-{}", c.stage))
        .collect();
    failed.sort();
    assert_eq!(listed_items, failed);
    for d in &listed {
        assert_eq!(d["state"], "failed");
        assert_eq!(d["event"], "stage.webhook");
        assert_eq!(d["workflow"], WF);
        assert!(d["attempts"].as_i64().unwrap() >= 1);
    }
}

#[test]
fn an_oversized_body_fails_by_policy_without_being_sent() {
    let mut h = Harness::new("*=ok");
    h.apply(&hook("hook", &h.url("/hook"), FAST));
    h.import(&["o1"]);
    h.start_dispatcher_with(
        h.store.clone(),
        DispatcherOptions {
            concurrency: 4,
            max_body: 200,
            ..DispatcherOptions::default()
        },
    );
    h.assign(&["o1"], "hook");
    h.wait_settled(&["o1"], Duration::from_secs(10));
    let d = h.delivery_of("o1");
    assert_eq!(d.state, DeliveryState::Failed, "a policy error is final");
    assert_eq!(d.attempts, 1);
    assert_eq!(d.last_error_kind, Some(ErrorKind::Policy));
    let log = h.detail(&d.id).attempt_log;
    assert_eq!(log.len(), 1);
    let msg = log[0].error_message.clone().unwrap();
    assert!(msg.contains("over the") && msg.contains("maximum"), "{msg}");
    assert_eq!(log[0].status, None);
    assert!(h.received("/hook").is_empty(), "nothing was sent");
    assert_eq!(h.item_stage("o1").0.as_str(), "fail-sink");
}

#[test]
fn pending_retries_use_the_stage_config_applied_since() {
    // An operator fixes a wrong URL and re-applies: the retry already scheduled uses it.
    let mut h = Harness::new("/wrong=500,/right=ok");
    let extra = r#"on_failure = "fail-sink"
max_attempts = 3
timeout = "2s"
retry_schedule = ["1s"]"#;
    h.apply(&hook("hook", &h.url("/wrong"), extra));
    h.import(&["u1"]);
    h.start_dispatcher(h.store.clone(), 4);
    h.assign(&["u1"], "hook");
    let d = h.delivery_of("u1");
    wait_until("the first try to fail", Duration::from_secs(10), || {
        h.detail(&d.id).summary.state == DeliveryState::RetryScheduled
    });
    let frozen = h.detail(&d.id).body;
    h.apply(&hook("hook", &h.url("/right?fixed=1"), extra));
    h.wait_settled(&["u1"], Duration::from_secs(10));
    let after = h.detail(&d.id);
    assert_eq!(after.summary.state, DeliveryState::Succeeded);
    assert_eq!(after.summary.attempts, 2);
    assert_eq!(h.received("/wrong").len(), 1);
    let right = h.received("/right");
    assert_eq!(right.len(), 1);
    assert_eq!(right[0].query, "fixed=1");
    assert_eq!(right[0].webhook_id.as_deref(), Some(d.id.as_str()));
    assert_eq!(right[0].attempt, Some(2));
    assert_eq!(
        body_json(&right[0]),
        frozen,
        "the body stays as it was frozen"
    );
    assert_eq!(h.item_stage("u1").0.as_str(), "ok-sink");
}

#[test]
fn max_in_flight_caps_concurrent_requests_across_dispatchers() {
    max_in_flight_across_dispatchers(Harness::new("/capped=slow:300ms"));
}

/// The same with the store in PostgreSQL, where the two dispatchers' lease transactions run
/// at once (design §7: the cap holds across all processes).
#[test]
fn max_in_flight_caps_concurrent_requests_across_dispatchers_on_postgresql() {
    max_in_flight_across_dispatchers(Harness::on_postgres("/capped=slow:300ms"));
}

fn max_in_flight_across_dispatchers(mut h: Harness) {
    let extra = format!("max_in_flight = 2\n{}", FAST.replace("300ms", "5s"));
    h.apply(&hook("capped", &h.url("/capped"), &extra));
    let items: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let ids: Vec<&str> = items.iter().map(String::as_str).collect();
    h.import(&ids);
    let second = h.other_process();
    h.start_dispatcher(h.store.clone(), 16);
    h.start_dispatcher(second, 16);
    h.assign(&ids, "capped");
    h.wait_settled(&ids, Duration::from_secs(20));
    // Each request is answered 300 ms after it arrives, and a slot frees only then: with at
    // most two in flight, the third request after any one cannot arrive within 300 ms of it.
    let mut at: Vec<i64> = h
        .received("/capped")
        .iter()
        .map(|r| r.at.timestamp_millis())
        .collect();
    assert_eq!(at.len(), ids.len());
    at.sort_unstable();
    for w in at.windows(3) {
        assert!(
            w[2] - w[0] >= 290,
            "three requests in flight at once: arrivals {w:?}"
        );
    }
}

#[test]
fn a_stage_at_its_cap_does_not_hold_up_the_deliveries_behind_it() {
    let mut h = Harness::new("/capped=slow:100ms,/fast=ok");
    let capped_extra = format!("max_in_flight = 1\n{}", FAST.replace("300ms", "5s"));
    h.apply(&format!(
        "{}{}",
        hook("capped", &h.url("/capped"), &capped_extra),
        hook("fast", &h.url("/fast"), FAST)
    ));
    let capped: Vec<String> = (0..100).map(|i| format!("c{i:03}")).collect();
    let capped: Vec<&str> = capped.iter().map(String::as_str).collect();
    let fast = ["f1", "f2", "f3"];
    h.import(&capped);
    h.import(&fast);
    // The capped stage's deliveries are due first, all 100 ahead of the fast stage's.
    h.assign(&capped, "capped");
    h.assign(&fast, "fast");
    h.start_dispatcher(h.store.clone(), 8);
    h.wait_settled(&fast, Duration::from_secs(20));
    // One capped request at a time, 100 ms each: the fast stage's three went out while the
    // capped backlog had barely started, not after it shrank.
    let sent = h.received("/capped").len();
    assert!(
        sent < 50,
        "the fast stage waited behind {sent} deliveries of the capped stage"
    );
}

// ---------------------------------------------------------------------------------------------
// Retries, identity and signatures
// ---------------------------------------------------------------------------------------------

#[test]
fn retries_follow_the_schedule_with_stable_id_and_valid_signatures() {
    let mut h = Harness::with_secrets("/retry=fail-first-3,/exhaust=500", vec![SECRET.into()]);
    let extra = format!(
        r#"on_failure = "fail-sink"
secret = "{SECRET}"
max_attempts = 4
timeout = "2s"
retry_schedule = ["100ms", "200ms"]"#
    );
    h.apply(&format!(
        "{}{}",
        hook("retry", &h.url("/retry"), &extra),
        hook("exhaust", &h.url("/exhaust"), &extra)
    ));
    h.import(&["r1", "x1"]);
    h.start_dispatcher(h.store.clone(), 8);
    h.assign(&["r1"], "retry");
    h.assign(&["x1"], "exhaust");
    h.wait_settled(&["r1", "x1"], Duration::from_secs(20));

    // fail-first-3 with 4 attempts: succeeds on the last; 500 forever: fails after 4.
    for (item, stage, state, to, last) in [
        ("r1", "/retry", DeliveryState::Succeeded, "ok-sink", 200),
        ("x1", "/exhaust", DeliveryState::Failed, "fail-sink", 500),
    ] {
        let d = h.delivery_of(item);
        let detail = h.detail(&d.id);
        assert_eq!(d.state, state, "{detail:#?}");
        assert_eq!(d.attempts, 4);
        assert_eq!(d.last_status, Some(last));
        assert_eq!(h.item_stage(item).0.as_str(), to);

        // Spacing: retry k waits schedule entry min(k, len) − 1 (the last repeats), ±20 %.
        let log = &detail.attempt_log;
        assert_eq!(log.len(), 4);
        for (k, want) in [(1usize, 100i64), (2, 200), (3, 200)] {
            let prev = &log[k - 1];
            let end = prev.started_at.timestamp_millis() + prev.duration_ms.unwrap();
            let gap = log[k].started_at.timestamp_millis() - end;
            let min = want * 8 / 10 - 1; // −20 % jitter, less a millisecond of rounding
            assert!(
                gap >= min,
                "{item}: retry {k} after {gap} ms, schedule {want} ms"
            );
        }

        // The receiver saw 4 tries: one webhook-id, attempts 1..4, one frozen body, each
        // signed for its own timestamp, which the receiver (given the secret) verified.
        let got = h.received(stage);
        assert_eq!(got.len(), 4);
        let body = &got[0].body;
        let doc: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(doc["hookops"]["delivery_id"], d.id.as_str());
        assert_eq!(doc["hookops"]["event"], "stage.webhook");
        assert_eq!(doc, detail.body, "the stored body is what was sent");
        let mut timestamps = Vec::new();
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.webhook_id.as_deref(), Some(d.id.as_str()));
            assert_eq!(r.attempt, Some(i as u32 + 1));
            assert_eq!(
                r.header("hookops-attempt"),
                Some((i + 1).to_string().as_str())
            );
            assert_eq!(&r.body, body, "the body never changes between attempts");
            assert_eq!(r.signature_valid, Some(true));
            let ts = r.header("webhook-timestamp").unwrap();
            let sig = r.header("webhook-signature").unwrap();
            let ts_num: i64 = ts.parse().unwrap();
            assert!(hookops::dispatch::sign::verify(
                SECRET,
                d.id.as_str(),
                ts_num,
                &r.body,
                sig
            ));
            assert!(!hookops::dispatch::sign::verify(
                OTHER_SECRET,
                d.id.as_str(),
                ts_num,
                &r.body,
                sig
            ));
            // Signed for this id and timestamp only.
            assert!(!hookops::dispatch::sign::verify(
                SECRET,
                d.id.as_str(),
                ts_num + 1,
                &r.body,
                sig
            ));
            let now = chrono::Utc::now().timestamp();
            assert!(
                (now - ts_num).abs() < 120,
                "timestamp {ts_num} vs now {now}"
            );
            timestamps.push(ts_num);
            // The stored attempt row says the same.
            let row = &log[i];
            let hdr = |n: &str| {
                row.request_headers
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(hdr("webhook-id").as_deref(), Some(d.id.as_str()));
            assert_eq!(hdr("hookops-attempt"), Some((i + 1).to_string()));
            assert_eq!(hdr("webhook-timestamp").as_deref(), Some(ts));
        }
        assert!(timestamps.windows(2).all(|w| w[0] <= w[1]));
    }
}

#[test]
fn a_receiver_with_another_secret_rejects_the_signature() {
    // The receiver answers 401 to any request whose signature it cannot verify: a final
    // failure at once, which shows the signature is checked and not merely present.
    let mut h = Harness::with_secrets("*=ok", vec![OTHER_SECRET.into()]);
    let extra = format!("secret = \"{SECRET}\"\n{FAST}");
    h.apply(&hook("hook", &h.url("/hook"), &extra));
    h.import(&["i1"]);
    h.start_dispatcher(h.store.clone(), 4);
    h.assign(&["i1"], "hook");
    h.wait_settled(&["i1"], Duration::from_secs(10));
    let d = h.delivery_of("i1");
    assert_eq!(d.state, DeliveryState::Failed);
    assert_eq!(d.last_status, Some(401));
    assert_eq!(d.attempts, 1);
    let got = h.received("/hook");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].signature_valid, Some(false));
    assert_eq!(h.item_stage("i1").0.as_str(), "fail-sink");
}

#[test]
fn request_carries_query_headers_authorization_and_annotations_as_configured() {
    let token = "Bearer tok-0123456789abcdef-XYZW";
    let mut h = Harness::new("*=ok");
    let with = format!(
        r#"authorization = "{token}"
headers = {{ "x-team" = "acme", "x-trace" = "t-1" }}
include_annotations = true
{FAST}"#
    );
    let without = format!("include_annotations = false\n{FAST}");
    let query = "team=acme&route=a%20b&dup=1&dup=2";
    let envelope = format!(
        "payload = \"envelope\"\nevent_type = \"task_completed_event\"\ninclude_annotations = true\n{FAST}"
    );
    h.apply(&format!(
        "{}{}{}",
        hook("with-ann", &h.url(&format!("/hdr?{query}")), &with),
        hook("no-ann", &h.url("/plain"), &without),
        hook("env", &h.url("/env"), &envelope)
    ));
    h.import(&["a1", "b1", "e1"]);
    h.start_dispatcher(h.store.clone(), 4);
    h.assign(&["a1"], "with-ann");
    h.assign(&["b1"], "no-ann");
    h.assign(&["e1"], "env");
    h.wait_settled(&["a1", "b1", "e1"], Duration::from_secs(10));

    // The Encord-style envelope: uid is the webhook-id, the Darwin document inside.
    let env = h.received("/env");
    assert_eq!(env.len(), 1);
    let doc = body_json(&env[0]);
    assert_eq!(doc["uid"].as_str(), env[0].webhook_id.as_deref());
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["source"], "hookops");
    assert_eq!(doc["event_type"], "task_completed_event");
    assert_eq!(doc["payload"]["data_hash"], "e1");
    assert_eq!(doc["payload"]["stage_id"], "env");
    assert_eq!(doc["payload"]["annotations"], json!([annotation("e1")]));
    assert_eq!(
        doc["payload"]["darwin"]["item"]["source_info"]["item_id"],
        "e1"
    );
    assert_eq!(h.item_stage("e1").0.as_str(), "ok-sink");

    let d = h.delivery_of("a1");
    assert_eq!(d.state, DeliveryState::Succeeded);
    let got = h.received("/hdr");
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.query, query, "query parameters are kept as written");
    assert_eq!(r.header("authorization"), Some(token), "sent verbatim");
    assert_eq!(r.header("x-team"), Some("acme"));
    assert_eq!(r.header("x-trace"), Some("t-1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("user-agent").unwrap().starts_with("hookops/"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(r.header("transfer-encoding"), None, "never chunked");
    assert_eq!(
        r.header("webhook-signature"),
        None,
        "no secret, no signature"
    );
    assert_eq!(r.webhook_id.as_deref(), Some(d.id.as_str()));

    // Stored redacted: the attempt row, and everything `delivery show --json` prints.
    let detail = h.detail(&d.id);
    let row = &detail.attempt_log[0];
    let auth = row
        .request_headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str())
        .unwrap();
    assert!(auth.starts_with("Bearer ****"), "{auth}");
    assert!(!auth.contains("0123456789abcdef"), "{auth}");
    assert!(
        row.request_headers
            .iter()
            .any(|(k, v)| k == "x-team" && v == "acme")
    );
    assert_eq!(row.url, h.url(&format!("/hdr?{query}")));
    let shown = h.hookops(&["delivery", "show", d.id.as_str(), "--json"]);
    assert_ok(&shown, "delivery show --json");
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    for key in [
        "id", "item_id", "workflow", "stage", "event", "state", "attempts", "trigger",
    ] {
        assert!(
            shown.get(key).is_some(),
            "delivery show --json lacks `{key}`"
        );
    }
    assert_eq!(shown["attempt_log"].as_array().unwrap().len(), 1);

    // Darwin JSON 2.0 with annotations, and the namespaced `hookops` key.
    let doc = body_json(r);
    assert_eq!(doc["version"], "2.0");
    assert!(doc["schema_ref"].as_str().unwrap().starts_with("http"));
    assert_eq!(doc["item"]["name"], "a1.jpg");
    assert_eq!(doc["item"]["path"], "/line-1");
    assert_eq!(doc["item"]["source_info"]["item_id"], "a1");
    assert_eq!(doc["item"]["source_info"]["team"]["slug"], "qa");
    assert_eq!(doc["annotations"], json!([annotation("a1")]));
    assert_eq!(doc["hookops"]["stage"]["id"], "with-ann");
    assert_eq!(doc["hookops"]["workflow"]["id"], WF);
    assert_eq!(doc["hookops"]["trigger"], "assign");

    // include_annotations = false: the same document without annotations.
    let plain = h.received("/plain");
    assert_eq!(plain.len(), 1);
    let doc = body_json(&plain[0]);
    assert_eq!(doc["item"]["source_info"]["item_id"], "b1");
    assert!(
        doc.get("annotations").is_none_or(|a| a == &json!([])),
        "annotations sent although include_annotations = false: {doc}"
    );
    assert!(!String::from_utf8_lossy(&plain[0].body).contains("crack"));
    assert_eq!(plain[0].header("authorization"), None);
}

// ---------------------------------------------------------------------------------------------
// Operator actions: re-fire, replay, test, pause
// ---------------------------------------------------------------------------------------------

#[test]
fn replay_resends_the_same_delivery_and_refire_makes_a_new_one() {
    let mut h = Harness::new("/hook=400,/stay=400");
    h.apply(&format!(
        "{}{}",
        hook("hook", &h.url("/hook"), FAST),
        hook(
            "stay",
            &h.url("/stay"),
            &FAST.replace("on_failure = \"fail-sink\"", "")
        )
    ));
    h.import(&["i1", "s1"]);
    h.start_dispatcher(h.store.clone(), 4);
    h.assign(&["i1"], "hook");
    h.assign(&["s1"], "stay");
    h.wait_settled(&["i1", "s1"], Duration::from_secs(10));
    assert_eq!(h.item_stage("s1").0.as_str(), "stay");
    assert_eq!(h.item_stage("s1").1, ItemState::Failed);
    let d1 = h.delivery_of("i1");
    assert_eq!(d1.state, DeliveryState::Failed);
    let (stage, _, version) = h.item_stage("i1");
    assert_eq!(stage.as_str(), "fail-sink");

    // The receiver is fixed.
    h.receiver
        .set_script("/hook=ok,/stay=ok".parse::<Script>().unwrap());

    // Replay: the stored bytes again, same webhook-id, as a manual attempt; nothing else moves.
    // Through the actions layer, as every front end replays (and audits).
    use hookops::actions::{self, Actor, BulkAction, Control, Selection, Via};
    let plan = actions::plan(
        &h.store,
        BulkAction::Replay,
        Selection::Ids(vec![d1.id.clone()]),
    )
    .unwrap();
    let report = actions::execute(
        &h.store,
        &Actor::new(OPERATOR, Via::Cli),
        plan,
        Control {
            stop: None,
            progress: &mut |_, _| {},
            rt: Some(h.rt.handle()),
            max_send_body: hookops::dispatch::http::DEFAULT_MAX_BODY,
        },
    )
    .unwrap();
    let ev = report.attempts[0].clone();
    assert_eq!(ev.status, Some(200));
    assert_eq!(ev.routed_to, None);
    let got = h.received_for(&d1.id);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body, "a replay sends the frozen bytes");
    assert_eq!(got[1].attempt, Some(2));
    assert!(got[1].header("webhook-timestamp").is_some());
    let after = h.detail(&d1.id);
    assert_eq!(
        after.summary.state,
        DeliveryState::Failed,
        "state unchanged"
    );
    assert_eq!(after.summary.attempts, 1, "a replay is not counted");
    assert_eq!(after.summary.next_attempt_at, None);
    assert_eq!(after.attempt_log.len(), 2);
    let replayed = &after.attempt_log[1];
    assert_eq!(replayed.trigger, AttemptTrigger::Manual);
    assert!(!replayed.counted);
    assert_eq!(replayed.status, Some(200));
    assert_eq!(
        h.item_stage("i1"),
        (stage.clone(), ItemState::Active, version)
    );
    assert_eq!(h.deliveries_of("i1").len(), 1, "a replay is not a delivery");

    // Re-fire (the CLI, another process, while this process dispatches): a new delivery
    // linked to the old one, the item back in the stage, and routing goes on from there.
    // The item that stayed in its stage, marked failed, is re-fired from there.
    let out = h.hookops(&["refire", "--failed", "--workflow", WF, "--yes"]);
    assert_ok(&out, "refire --failed --yes");
    wait_until(
        "the re-fired deliveries to succeed",
        Duration::from_secs(10),
        || {
            ["i1", "s1"].iter().all(|i| {
                let d = h.deliveries_of(i);
                d.len() == 2 && d[0].state == DeliveryState::Succeeded
            })
        },
    );
    assert_eq!(h.item_stage("s1").0.as_str(), "ok-sink");
    let d2 = h.deliveries_of("i1").remove(0);
    assert_ne!(d2.id, d1.id);
    assert_eq!(d2.refire_of.as_ref(), Some(&d1.id));
    assert_eq!(d2.trigger, DeliveryTrigger::Refire);
    assert_eq!(d2.attempts, 1);
    assert_eq!(h.item_stage("i1").0.as_str(), "ok-sink");
    let causes = h.history_causes("i1");
    assert_eq!(
        causes[causes.len() - 2..],
        [HistoryCause::Refire, HistoryCause::WebhookSuccess]
    );
    let got = h.received_for(&d2.id);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attempt, Some(1));
    assert_eq!(body_json(&got[0])["hookops"]["trigger"], "refire");
    assert_eq!(
        h.detail(&d1.id).summary.state,
        DeliveryState::Failed,
        "the old delivery keeps its outcome"
    );

    // The old delivery can no longer be re-fired: a newer one exists.
    let r = h
        .store
        .refire(std::slice::from_ref(&d1.id), OPERATOR)
        .unwrap();
    assert_eq!(r.refired, 0);
    assert_eq!(r.refused.len(), 1);
    assert!(
        r.refused[0].reason.contains(d2.id.as_str()),
        "{:?}",
        r.refused
    );
    assert!(r.refused[0].reason.contains("ok-sink"), "{:?}", r.refused);

    // Once the item moved on by hand, the latest one is refused too, saying where it is.
    h.assign(&["i1"], "elsewhere");
    let r = h
        .store
        .refire(std::slice::from_ref(&d2.id), OPERATOR)
        .unwrap();
    assert_eq!(r.refired, 0);
    assert!(r.refused[0].reason.contains("elsewhere"), "{:?}", r.refused);
    assert_eq!(h.deliveries_of("i1").len(), 2, "nothing was created");
    // Still the latest and unmoved since it routed the item: s1's re-fire may be re-fired.
    let s2 = h.deliveries_of("s1").remove(0);
    let r = h
        .store
        .refire(std::slice::from_ref(&s2.id), OPERATOR)
        .unwrap();
    assert_eq!((r.refired, r.created.len()), (1, 1), "{:?}", r.refused);
    let out = h.hookops(&["refire", d2.id.as_str(), "--yes"]);
    assert_eq!(out.status.code(), Some(1), "a refused re-fire exits 1");

    let actions: Vec<String> = h
        .store
        .audit_log(50)
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert!(actions.contains(&"replay".to_string()), "{actions:?}");
    assert!(actions.contains(&"refire".to_string()), "{actions:?}");
}

#[test]
fn refire_failed_takes_only_the_latest_delivery_of_each_item() {
    // An item whose re-fire failed again has two failed deliveries; a bulk re-fire of
    // everything failed re-fires the newer one and does not trip over the older.
    let mut h = Harness::new("/hook=400");
    h.apply(&hook("hook", &h.url("/hook"), FAST));
    h.import(&["i1"]);
    h.start_dispatcher(h.store.clone(), 4);
    h.assign(&["i1"], "hook");
    h.wait_settled(&["i1"], Duration::from_secs(10));
    let d1 = h.delivery_of("i1").id;
    let r = h.store.refire(std::slice::from_ref(&d1), OPERATOR).unwrap();
    assert_eq!(r.created.len(), 1);
    h.wait_settled(&["i1"], Duration::from_secs(10));
    let d2 = h.deliveries_of("i1").remove(0);
    assert_eq!(d2.state, DeliveryState::Failed);

    h.receiver.set_script("/hook=ok".parse::<Script>().unwrap());
    let out = h.hookops(&["refire", "--failed", "--workflow", WF, "--yes", "--json"]);
    assert_ok(&out, "refire --failed --yes");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["acted"], 1, "{report}");
    assert_eq!(report["refused"], json!([]), "{report}");
    wait_until(
        "the third delivery to succeed",
        Duration::from_secs(10),
        || {
            let d = h.deliveries_of("i1");
            d.len() == 3 && d[0].state == DeliveryState::Succeeded
        },
    );
    assert_eq!(h.deliveries_of("i1")[0].refire_of.as_ref(), Some(&d2.id));
    assert_eq!(h.item_stage("i1").0.as_str(), "ok-sink");
}

#[test]
fn pause_holds_deliveries_test_webhook_moves_nothing_and_resume_sends() {
    let mut h = Harness::new("/hook=ok,/ctl=ok");
    h.apply(&format!(
        "{}{}",
        hook("hook", &h.url("/hook"), FAST),
        hook("ctl", &h.url("/ctl"), FAST)
    ));
    h.import(&["p1", "p2", "c1"]);
    h.start_dispatcher(h.store.clone(), 4);

    assert_ok(
        &h.hookops(&["stage", "pause", "--workflow", WF, "hook"]),
        "stage pause",
    );
    assert!(h.stage_paused("hook").0);
    h.assign(&["p1", "p2"], "hook");
    // A delivery of another stage created after them goes through: the dispatcher ran and
    // had every chance to lease the paused ones, which came first.
    h.assign(&["c1"], "ctl");
    h.wait_settled(&["c1"], Duration::from_secs(10));
    assert_eq!(h.delivery_of("c1").state, DeliveryState::Succeeded);
    for p in ["p1", "p2"] {
        assert_eq!(h.delivery_of(p).state, DeliveryState::Pending);
        assert_eq!(h.item_stage(p).1, ItemState::InDelivery);
    }
    assert!(h.received("/hook").is_empty());

    // A test webhook is sent at once on a paused stage, is recorded, and moves nothing.
    let before: Vec<_> = ["p1", "p2", "c1"].iter().map(|i| h.item_stage(i)).collect();
    let out = h.hookops(&["test-webhook", "--workflow", WF, "--stage", "hook"]);
    assert_ok(&out, "test-webhook");
    let got = h.received("/hook");
    assert_eq!(got.len(), 1);
    let doc = body_json(&got[0]);
    assert_eq!(doc["hookops"]["event"], "webhook.test");
    let test_id = DeliveryId::new(got[0].webhook_id.clone().unwrap());
    let t = h.detail(&test_id);
    assert_eq!(t.summary.event, EventType::WebhookTest);
    assert_eq!(t.summary.trigger, DeliveryTrigger::Test);
    assert_eq!(t.summary.state, DeliveryState::Succeeded);
    assert_eq!(t.summary.item_id, None);
    assert_eq!(t.attempt_log.len(), 1);
    assert_eq!(t.attempt_log[0].trigger, AttemptTrigger::Manual);
    let after: Vec<_> = ["p1", "p2", "c1"].iter().map(|i| h.item_stage(i)).collect();
    assert_eq!(before, after, "a test webhook moves nothing");
    assert!(h.stage_paused("hook").0, "still paused");
    // A replay is sent at once on a paused stage too, and leaves the delivery pending.
    let held = h.delivery_of("p1");
    let out = h.hookops(&["refire", "--replay", held.id.as_str(), "--yes"]);
    assert_ok(&out, "refire --replay");
    let replayed = h.received_for(&held.id);
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].attempt, Some(1));
    for p in ["p1", "p2"] {
        assert_eq!(h.delivery_of(p).state, DeliveryState::Pending);
    }

    // A read-only operator sends nothing and changes nothing.
    let before = h.receiver.count();
    for args in [
        &[
            "--read-only",
            "test-webhook",
            "--workflow",
            WF,
            "--stage",
            "hook",
        ][..],
        &[
            "--read-only",
            "refire",
            "--replay",
            held.id.as_str(),
            "--yes",
        ],
        &["--read-only", "stage", "resume", "--workflow", WF, "hook"],
    ] {
        let out = h.hookops(args);
        assert_eq!(out.status.code(), Some(1), "{args:?} should be refused");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("read-only"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(h.receiver.count(), before);
    assert!(h.stage_paused("hook").0);

    // Resume: the held deliveries are sent and route on.
    assert_ok(
        &h.hookops(&["stage", "resume", "--workflow", WF, "hook"]),
        "stage resume",
    );
    h.wait_settled(&["p1", "p2"], Duration::from_secs(10));
    for p in ["p1", "p2"] {
        assert_eq!(h.delivery_of(p).state, DeliveryState::Succeeded);
        assert_eq!(h.item_stage(p).0.as_str(), "ok-sink");
    }
    assert_eq!(h.received("/hook").len(), 4);
    // The replay took attempt number 1; the scheduled try after it is number 2, counted.
    let held = h.detail(&held.id);
    assert_eq!(held.summary.attempts, 1);
    let numbers: Vec<(i64, AttemptTrigger, bool)> = held
        .attempt_log
        .iter()
        .map(|a| (a.number, a.trigger, a.counted))
        .collect();
    assert_eq!(
        numbers,
        [
            (1, AttemptTrigger::Manual, false),
            (2, AttemptTrigger::Scheduled, true)
        ]
    );
    let actions: Vec<String> = h
        .store
        .audit_log(50)
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    for a in ["pause", "test", "resume"] {
        assert!(
            actions.iter().any(|x| x == a),
            "audit lacks {a}: {actions:?}"
        );
    }
}

#[test]
fn a_stage_pauses_itself_after_consecutive_failures() {
    let mut h = Harness::new("/bad=400,/good=ok");
    let bad = format!("pause_after_failures = 3\n{FAST}");
    h.apply(&format!(
        "{}{}",
        hook("bad", &h.url("/bad"), &bad),
        hook("good", &h.url("/good"), FAST)
    ));
    h.import(&["f1", "f2", "f3", "f4", "f5", "g1"]);
    let mut notices = h.events.subscribe();
    h.start_dispatcher(h.store.clone(), 8);
    h.assign(&["f1", "f2", "f3"], "bad");
    h.wait_settled(&["f1", "f2", "f3"], Duration::from_secs(10));
    let (paused, reason) = h.stage_paused("bad");
    assert!(paused, "three failed deliveries in a row pause the stage");
    assert!(reason.unwrap_or_default().contains('3'));
    let paused_events = attempt_events(&mut notices, 3)
        .iter()
        .filter(|e| e.paused_stage)
        .count();
    assert_eq!(
        paused_events, 1,
        "exactly one attempt says it paused the stage"
    );
    assert!(!h.stage_paused("good").0);

    // Paused: new deliveries wait; the other stage still sends.
    h.assign(&["f4", "f5"], "bad");
    h.assign(&["g1"], "good");
    h.wait_settled(&["g1"], Duration::from_secs(10));
    assert_eq!(h.delivery_of("g1").state, DeliveryState::Succeeded);
    assert_eq!(h.received("/bad").len(), 3);
    for f in ["f4", "f5"] {
        assert_eq!(h.delivery_of(f).state, DeliveryState::Pending);
    }

    // Resume resets the count: two more failures do not pause it again.
    assert!(
        h.store
            .set_paused(&wf(), &StageId::new("bad"), false, OPERATOR)
            .unwrap()
    );
    h.wait_settled(&["f4", "f5"], Duration::from_secs(10));
    assert_eq!(h.received("/bad").len(), 5);
    assert!(!h.stage_paused("bad").0);
    for f in ["f1", "f2", "f3", "f4", "f5"] {
        assert_eq!(h.delivery_of(f).state, DeliveryState::Failed);
        assert_eq!(h.item_stage(f).0.as_str(), "fail-sink");
    }
}

// ---------------------------------------------------------------------------------------------
// Fencing and concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn an_item_moved_by_hand_mid_flight_is_not_routed_by_the_late_outcome() {
    let mut h = Harness::new("/slow=slow:2s");
    let extra = FAST.replace("300ms", "5s");
    h.apply(&hook("slow", &h.url("/slow"), &extra));
    h.import(&["m1"]);
    let mut notices = h.events.subscribe();
    h.start_dispatcher(h.store.clone(), 4);
    h.assign(&["m1"], "slow");
    let d = h.delivery_of("m1");
    h.wait_received(1, Duration::from_secs(10));
    assert_eq!(h.detail(&d.id).summary.state, DeliveryState::InFlight);

    // The operator moves the item while the request is on the wire.
    h.assign(&["m1"], "elsewhere");
    let (stage, state, version) = h.item_stage("m1");
    assert_eq!(stage.as_str(), "elsewhere");
    let cancelled = h.detail(&d.id);
    assert_eq!(cancelled.summary.state, DeliveryState::Cancelled);
    assert_eq!(
        cancelled.summary.cancel_reason,
        Some(CancelReason::ItemMoved)
    );
    assert_eq!(cancelled.cancelled_by.as_deref(), Some(OPERATOR));

    // The attempt finishes and is recorded, and routes nothing.
    wait_until(
        "the late attempt to be recorded",
        Duration::from_secs(10),
        || h.detail(&d.id).attempt_log.len() == 1,
    );
    let after = h.detail(&d.id);
    assert_eq!(after.attempt_log[0].status, Some(200));
    assert!(!after.attempt_log[0].counted);
    assert_eq!(after.summary.state, DeliveryState::Cancelled);
    assert_eq!(after.summary.cancel_reason, Some(CancelReason::ItemMoved));
    assert_eq!(h.item_stage("m1"), (stage, state, version));
    assert!(
        !h.history_causes("m1")
            .contains(&HistoryCause::WebhookSuccess)
    );
    let lost: Vec<_> = attempt_events(&mut notices, 1)
        .into_iter()
        .map(|e| (e.lease_lost, e.routed_to))
        .collect();
    assert_eq!(lost, [(true, None)], "the recorder knew it lost the lease");
    assert_eq!(
        h.received("/slow").len(),
        1,
        "a cancelled delivery is not retried"
    );

    // And it cannot be re-fired: the item has moved since.
    let r = h
        .store
        .refire(std::slice::from_ref(&d.id), OPERATOR)
        .unwrap();
    assert_eq!(r.refired, 0);
    assert!(r.refused[0].reason.contains("elsewhere"), "{:?}", r.refused);
}

#[test]
fn dispatchers_sharing_one_database_send_each_attempt_once() {
    dispatchers_sharing_one_database(Harness::new("/hook=fail-first-1"));
}

/// The same with the two in-process dispatchers and `serve` on one PostgreSQL database: the
/// assignments of this process reach `serve` through NOTIFY.
#[test]
fn dispatchers_sharing_one_database_send_each_attempt_once_on_postgresql() {
    dispatchers_sharing_one_database(Harness::on_postgres("/hook=fail-first-1"));
}

fn dispatchers_sharing_one_database(mut h: Harness) {
    let extra = FAST.replace("300ms", "5s");
    h.apply(&hook("hook", &h.url("/hook"), &extra));
    let items: Vec<String> = (0..60).map(|i| format!("d{i:03}")).collect();
    let ids: Vec<&str> = items.iter().map(String::as_str).collect();
    h.import(&ids);
    // Two in-process dispatchers on two store handles (two writers, two connections) and a
    // `hookops serve` process, all on one file.
    let second = h.other_process();
    h.start_dispatcher(h.store.clone(), 8);
    h.start_dispatcher(second, 8);
    let mut serve = h.spawn_serve(8, "serve.log");
    wait_until("three dispatchers to beat", Duration::from_secs(10), || {
        h.store.dispatchers().unwrap().len() == 3
    });
    for chunk in ids.chunks(10) {
        h.assign(chunk, "hook");
    }
    h.wait_settled(&ids, Duration::from_secs(30));
    signal(&serve, "-TERM");
    let (st, _) = wait_exit(&mut serve, Duration::from_secs(10));
    assert!(st.success(), "serve exited with {st}");

    let got = h.received("/hook");
    let mut seen = HashSet::new();
    for r in &got {
        let key = (r.webhook_id.clone().unwrap(), r.attempt.unwrap());
        assert!(seen.insert(key.clone()), "attempt {key:?} was sent twice");
    }
    // fail-first-1: each delivery takes exactly two tries.
    assert_eq!(got.len(), 2 * ids.len());
    for i in &ids {
        let d = h.delivery_of(i);
        assert_eq!(d.state, DeliveryState::Succeeded, "{i}");
        assert_eq!(d.attempts, 2, "{i}");
        let log = h.detail(&d.id).attempt_log;
        assert_eq!(log.len(), 2, "{i}: {log:#?}");
        assert!(
            log.iter()
                .all(|a| a.error_kind != Some(ErrorKind::Interrupted))
        );
        assert_eq!(h.item_stage(i).0.as_str(), "ok-sink");
        let successes = h
            .history_causes(i)
            .iter()
            .filter(|c| **c == HistoryCause::WebhookSuccess)
            .count();
        assert_eq!(successes, 1, "{i} was routed {successes} times");
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: graceful shutdown and kill -9
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_cleanly() {
    let h = Harness::new("/slow=slow:700ms,/hang=hang");
    let slow = FAST.replace("300ms", "5s");
    let hang = FAST.replace("300ms", "60s");
    h.apply(&format!(
        "{}{}",
        hook("slow", &h.url("/slow"), &slow),
        hook("hang", &h.url("/hang"), &hang)
    ));
    h.import(&["s1", "s2", "h1"]);
    h.assign(&["s1", "s2"], "slow");
    h.assign(&["h1"], "hang");
    let mut serve = h.spawn_serve(8, "serve.log");
    h.wait_received(3, Duration::from_secs(10));

    signal(&serve, "-TERM");
    let (st, took) = wait_exit(&mut serve, Duration::from_secs(10));
    assert!(st.success(), "serve exited with {st}");
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");

    // The slow requests finished within the grace period and were recorded and routed.
    for s in ["s1", "s2"] {
        assert_eq!(h.delivery_of(s).state, DeliveryState::Succeeded, "{s}");
        assert_eq!(h.item_stage(s).0.as_str(), "ok-sink");
    }
    // The hanging one was handed back: an uncounted `interrupted` row, due again now.
    let d = h.delivery_of("h1");
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.attempts, 0);
    let log = h.detail(&d.id).attempt_log;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].error_kind, Some(ErrorKind::Interrupted));
    assert!(!log[0].counted);
    assert_eq!(h.item_stage("h1").0.as_str(), "hang");
    assert!(
        all_deliveries(&h.store)
            .iter()
            .all(|d| d.state != DeliveryState::InFlight),
        "nothing is left in flight"
    );
    assert!(
        h.store.dispatchers().unwrap().is_empty(),
        "heartbeat removed"
    );
}

#[test]
fn a_restart_after_kill_9_resumes_without_loss() {
    let h = Harness::new("/k=slow:300ms");
    let extra = FAST.replace("300ms", "5s");
    h.apply(&hook("k", &h.url("/k"), &extra));
    let items: Vec<String> = (0..24).map(|i| format!("k{i:02}")).collect();
    let ids: Vec<&str> = items.iter().map(String::as_str).collect();
    h.import(&ids);
    h.assign(&ids, "k");

    let mut serve = h.spawn_serve(4, "serve-1.log");
    h.wait_received(6, Duration::from_secs(15));
    serve.kill().unwrap(); // SIGKILL
    serve.wait().unwrap(); // reaped: its pid is gone, as after a crash
    let in_flight: Vec<DeliveryId> = all_deliveries(&h.store)
        .into_iter()
        .filter(|d| d.state == DeliveryState::InFlight)
        .map(|d| d.id)
        .collect();
    assert!(
        !in_flight.is_empty(),
        "the kill should catch requests in flight"
    );

    // The restarted dispatcher sees its predecessor is dead and retakes the leases at once,
    // well before they expire (timeout + 30 s).
    let restarted = Instant::now();
    let mut serve = h.spawn_serve(4, "serve-2.log");
    h.wait_settled(&ids, Duration::from_secs(25));
    assert!(restarted.elapsed() < Duration::from_secs(25));
    signal(&serve, "-TERM");
    let (st, _) = wait_exit(&mut serve, Duration::from_secs(10));
    assert!(st.success(), "serve exited with {st}");

    let got = h.received("/k");
    let received: HashSet<&str> = got.iter().filter_map(|r| r.webhook_id.as_deref()).collect();
    for i in &ids {
        let d = h.delivery_of(i);
        assert_eq!(d.state, DeliveryState::Succeeded, "{i}");
        assert_eq!(d.attempts, 1, "{i}: an interrupted try does not count");
        assert!(received.contains(d.id.as_str()), "{i} was never received");
        assert_eq!(h.item_stage(i).0.as_str(), "ok-sink", "{i}");
        let outcomes = h
            .history_causes(i)
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    HistoryCause::WebhookSuccess | HistoryCause::WebhookFailure
                )
            })
            .count();
        assert_eq!(outcomes, 1, "{i} reached {outcomes} outcomes");
    }
    // Each lease taken over left an `interrupted` row, and the delivery was sent again with
    // the same webhook-id under a new attempt number.
    let per_id: HashMap<&str, Vec<u32>> = got.iter().fold(HashMap::new(), |mut m, r| {
        m.entry(r.webhook_id.as_deref().unwrap())
            .or_default()
            .push(r.attempt.unwrap());
        m
    });
    for id in &in_flight {
        let log = h.detail(id).attempt_log;
        let interrupted: Vec<_> = log
            .iter()
            .filter(|a| a.error_kind == Some(ErrorKind::Interrupted))
            .collect();
        assert_eq!(interrupted.len(), 1, "{id}: {log:#?}");
        assert!(!interrupted[0].counted);
        let last = log.last().unwrap();
        assert_eq!(last.status, Some(200));
        assert!(last.number > interrupted[0].number);
        let attempts = &per_id[id.as_str()];
        assert!(
            attempts.contains(&(last.number as u32)),
            "{id}: {attempts:?}"
        );
        let mut unique = attempts.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            attempts.len(),
            "{id}: an attempt number sent twice"
        );
    }
    assert!(h.store.dispatchers().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Flow control (issue 21): rate limits, holds, restarts
// ---------------------------------------------------------------------------------------------

/// Arrival times (ms) of the requests to `path`, sorted.
fn arrivals(h: &Harness, path: &str) -> Vec<i64> {
    let mut at: Vec<i64> = h
        .received(path)
        .iter()
        .map(|r| r.at.timestamp_millis())
        .collect();
    at.sort_unstable();
    at
}

/// The most arrivals in any window of one second that starts at an arrival.
fn busiest_second(at: &[i64]) -> usize {
    (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t < at[i] + 1000).count())
        .max()
        .unwrap_or(0)
}

fn item_ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

/// Issue 21: a stage with `rate_limit = "20/s"` and `burst = 5` never gets more than
/// rate + burst requests in any second, and drains its queue in the time the rate says: the
/// burst at once, then one every 50 ms (within 10 %).
#[test]
fn a_rate_limited_stage_keeps_to_its_rate_and_drains_in_the_time_it_says() {
    let mut h = Harness::new("*=ok");
    let extra = "rate_limit = \"20/s\"\nburst = 5";
    h.apply(&hook("metered", &h.url("/metered"), extra));
    let items = item_ids("r", 105);
    let ids: Vec<&str> = items.iter().map(String::as_str).collect();
    h.import(&ids);
    h.start_dispatcher(h.store.clone(), dispatch::DEFAULT_CONCURRENCY);
    h.assign(&ids, "metered");
    h.wait_received(ids.len(), Duration::from_secs(30));
    let at = arrivals(&h, "/metered");
    assert_eq!(at.len(), ids.len(), "each sent once");
    assert!(
        busiest_second(&at) <= 25,
        "{} in one second",
        busiest_second(&at)
    );
    // 5 at once, then 100 more at 20/s: 5 s.
    let drain = (at[at.len() - 1] - at[0]) as f64 / 1000.0;
    assert!(
        (drain - 5.0).abs() <= 0.5,
        "drained in {drain:.2} s, not ~5 s"
    );
}

/// Issue 21: two `serve` processes on one database share one bucket: together they keep to
/// the rate (and both send).
#[test]
fn two_serve_processes_share_one_bucket() {
    let h = Harness::new("*=ok");
    let extra = "rate_limit = \"10/s\"\nburst = 2";
    h.apply(&hook("metered", &h.url("/metered"), extra));
    let items = item_ids("s", 42);
    let ids: Vec<&str> = items.iter().map(String::as_str).collect();
    h.import(&ids);
    let mut a = h.spawn_serve(8, "a.log");
    let mut b = h.spawn_serve(8, "b.log");
    wait_until("both dispatchers", Duration::from_secs(10), || {
        h.store.dispatchers().unwrap().len() == 2
    });
    h.assign(&ids, "metered");
    h.wait_received(ids.len(), Duration::from_secs(30));
    signal(&a, "-TERM");
    signal(&b, "-TERM");
    wait_exit(&mut a, Duration::from_secs(10));
    wait_exit(&mut b, Duration::from_secs(10));
    let at = arrivals(&h, "/metered");
    assert_eq!(at.len(), ids.len(), "each sent once");
    assert!(
        busiest_second(&at) <= 12,
        "{} in one second",
        busiest_second(&at)
    );
    // 2 at once, then 40 more at 10/s: 4 s.
    let drain = (at[at.len() - 1] - at[0]) as f64 / 1000.0;
    assert!(
        (drain - 4.0).abs() <= 0.4,
        "drained in {drain:.2} s, not ~4 s"
    );
    let sent = |log: &str| {
        std::fs::read_to_string(h._dir.path().join(log))
            .unwrap()
            .lines()
            .filter(|l| l.contains("metered"))
            .count()
    };
    assert!(
        sent("a.log") > 0 && sent("b.log") > 0,
        "both processes sent"
    );
}

/// Issue 21: a 429 with `Retry-After: 2` holds its stage: no request to it for 2 s after the
/// answer (one in flight at a time here, so no request was on the wire already), while
/// another stage keeps flowing; the held deliveries' own outcome is as always (one attempt:
/// failed).
#[test]
fn a_429_with_retry_after_2_holds_its_stage_while_another_keeps_flowing() {
    let mut h = Harness::new("/held=429:retry-after=2,*=ok");
    let held = "max_in_flight = 1\nmax_attempts = 1\non_failure = \"fail-sink\"";
    let steady = "rate_limit = \"20/s\"\nburst = 1";
    h.apply(&format!(
        "{}{}",
        hook("held", &h.url("/held"), held),
        hook("steady", &h.url("/steady"), steady)
    ));
    let held_items = item_ids("h", 3);
    let steady_items = item_ids("f", 100);
    let all: Vec<&str> = held_items
        .iter()
        .chain(&steady_items)
        .map(String::as_str)
        .collect();
    h.import(&all);
    h.start_dispatcher(h.store.clone(), dispatch::DEFAULT_CONCURRENCY);
    h.assign(
        &held_items.iter().map(String::as_str).collect::<Vec<_>>(),
        "held",
    );
    h.assign(
        &steady_items.iter().map(String::as_str).collect::<Vec<_>>(),
        "steady",
    );
    // Recorded, not only received: the third answer may still be on its way back.
    wait_until(
        "the three held deliveries to be recorded",
        Duration::from_secs(20),
        || {
            held_items
                .iter()
                .all(|i| h.delivery_of(i).state == DeliveryState::Failed)
        },
    );
    let held_at = arrivals(&h, "/held");
    assert_eq!(held_at.len(), 3, "one request each");
    let steady_at = arrivals(&h, "/steady");
    for w in held_at.windows(2) {
        assert!(
            w[1] - w[0] >= 2000,
            "a request {} ms after a 429 with Retry-After: 2",
            w[1] - w[0]
        );
        let during = steady_at
            .iter()
            .filter(|t| **t > w[0] && **t < w[1])
            .count();
        assert!(
            during >= 20,
            "the other stage sent only {during} during the hold"
        );
    }
    for i in &held_items {
        assert_eq!(h.delivery_of(i).state, DeliveryState::Failed);
    }
}

/// Issue 21: a hold and a bucket are rows of the store, so a `serve` killed with SIGKILL and
/// started again keeps to them.
#[test]
fn holds_and_rates_survive_a_restart_of_serve() {
    let h = Harness::new("/held=503:retry-after=3,*=ok");
    let held = "max_in_flight = 1\nmax_attempts = 1\non_failure = \"fail-sink\"";
    let metered = "rate_limit = \"2/s\"\nburst = 1";
    h.apply(&format!(
        "{}{}",
        hook("held", &h.url("/held"), held),
        hook("metered", &h.url("/metered"), metered)
    ));
    let held_items = item_ids("h", 2);
    let metered_items = item_ids("m", 4);
    let all: Vec<&str> = held_items
        .iter()
        .chain(&metered_items)
        .map(String::as_str)
        .collect();
    h.import(&all);
    let mut first = h.spawn_serve(8, "first.log");
    h.assign(
        &held_items.iter().map(String::as_str).collect::<Vec<_>>(),
        "held",
    );
    h.assign(
        &metered_items.iter().map(String::as_str).collect::<Vec<_>>(),
        "metered",
    );
    wait_until(
        "the 503 recorded and a metered request",
        Duration::from_secs(20),
        || {
            h.store
                .workflow_detail(&wf())
                .unwrap()
                .stage_list
                .iter()
                .any(|s| s.id.as_str() == "held" && s.held_until.is_some())
                && !h.received("/metered").is_empty()
        },
    );
    signal(&first, "-KILL");
    wait_exit(&mut first, Duration::from_secs(10));
    let mut second = h.spawn_serve(8, "second.log");
    wait_until("every request", Duration::from_secs(30), || {
        h.received("/held").len() >= 2 && h.received("/metered").len() >= 4
    });
    signal(&second, "-TERM");
    wait_exit(&mut second, Duration::from_secs(10));
    let held_at = arrivals(&h, "/held");
    assert!(
        held_at[1] - held_at[0] >= 3000,
        "the hold was forgotten: {} ms",
        held_at[1] - held_at[0]
    );
    let metered_at = arrivals(&h, "/metered");
    assert!(metered_at.len() >= 4);
    assert!(
        busiest_second(&metered_at) <= 3,
        "rate + burst exceeded across the restart: {metered_at:?}"
    );
}

/// Issue 21: with 512 slots a wave of answers is wider than one batch job records
/// (`MAX_BATCH`, 128); every attempt of it is still recorded, once. (Whether a job leaves
/// attempts behind depends on how many arrived before the writer started it, so this does
/// not pin the path where no later hand-in comes for them; `Waiting::more` covers that.)
#[test]
fn the_default_concurrency_sends_and_records_every_delivery_of_a_wide_wave() {
    let mut h = Harness::new("*=ok");
    h.apply(&hook("wide", &h.url("/wide"), ""));
    let items = item_ids("w", 700);
    let ids: Vec<&str> = items.iter().map(String::as_str).collect();
    h.import(&ids);
    h.assign(&ids, "wide");
    h.start_dispatcher(h.store.clone(), dispatch::DEFAULT_CONCURRENCY);
    wait_until("every delivery recorded", Duration::from_secs(60), || {
        h.store
            .workflow_detail(&wf())
            .unwrap()
            .stage_list
            .iter()
            .find(|s| s.id.as_str() == "wide")
            .is_some_and(|s| s.deliveries.get("succeeded") == Some(&700))
    });
    assert_eq!(h.received("/wide").len(), 700, "each sent once");
}

// ---------------------------------------------------------------------------------------------
// Follow mode (issue 18)
// ---------------------------------------------------------------------------------------------

/// `deliveries --follow --json` prints every attempt of a busy run (retries and all) exactly
/// once, in the attempt log's order, and none that its filter leaves out: compared line by
/// line with the store's own log.
#[test]
fn follow_prints_every_attempt_of_a_busy_run_exactly_once() {
    let mut h = Harness::new("/hook=flaky:40%,/other=ok");
    h.apply(&format!(
        "{}{}",
        hook("hook", &h.url("/hook"), FAST),
        hook("other", &h.url("/other"), FAST)
    ));
    let busy: Vec<String> = (0..200).map(|i| format!("b{i:03}")).collect();
    let quiet: Vec<String> = (0..20).map(|i| format!("q{i:03}")).collect();
    let busy: Vec<&str> = busy.iter().map(String::as_str).collect();
    let quiet: Vec<&str> = quiet.iter().map(String::as_str).collect();
    h.import(&busy);
    h.import(&quiet);

    // From a moment before the run, so no attempt can come before the follower reads.
    let since = (chrono::Utc::now() - chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookops"))
        .arg("--db")
        .arg(&h.db)
        .args([
            "deliveries",
            "--follow",
            "--json",
            "--workflow",
            WF,
            "--stage",
            "hook",
            "--since",
        ])
        .arg(&since)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let reader = {
        let lines = lines.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        })
    };

    let store = h.store.clone();
    h.start_dispatcher(store, 16);
    h.assign(&busy, "hook");
    h.assign(&quiet, "other");
    h.wait_settled(&busy, Duration::from_secs(60));
    h.wait_settled(&quiet, Duration::from_secs(60));
    // A last attempt in the stage, after every other: once the follower prints it, it has
    // read everything before it.
    let marker = h.hookops(&[
        "test-webhook",
        "--workflow",
        WF,
        "--stage",
        "hook",
        "--json",
    ]);
    let marker: Value = serde_json::from_slice(&marker.stdout).unwrap();
    let marker_id = marker["delivery_id"].as_str().unwrap().to_string();
    wait_until(
        "the follower to print the marker",
        Duration::from_secs(30),
        || {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l["delivery_id"] == marker_id.as_str())
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();

    let printed: Vec<(String, i64)> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["delivery_id"].as_str().unwrap().to_string(),
                l["number"].as_i64().unwrap(),
            )
        })
        .collect();
    let logged: Vec<(String, i64)> = h
        .store
        .attempts_after(AttemptCursor::default(), 100_000)
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.stage.as_str() == "hook")
        .map(|(_, e)| (e.delivery_id.to_string(), e.number))
        .collect();
    let retries = logged.iter().filter(|(_, n)| *n > 1).count();
    assert!(retries > 0, "the run had retries");
    assert!(logged.len() > busy.len(), "{} attempts", logged.len());
    assert_eq!(
        printed.len(),
        printed.iter().collect::<HashSet<_>>().len(),
        "nothing printed twice"
    );
    assert_eq!(
        printed, logged,
        "every attempt of the stage, in the log's order"
    );
}
