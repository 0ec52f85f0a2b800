//! The store alone, for instruction counts (`valgrind --tool=callgrind`), which do not drift
//! with the machine's load: README, Performance, "The store seam".
//!
//! ```sh
//! cargo bench --no-run --bench store_alone          # prints the binary's path
//! BIN=target/release/deps/store_alone-…
//! $BIN prepare /tmp/sa.db 3000                       # 3,000 pending deliveries (not measured)
//! cp /tmp/sa.db /tmp/run.db                          # a fresh copy per run (no -wal beside it)
//! valgrind --tool=callgrind $BIN run /tmp/run.db            # lease + record (200)
//! valgrind --tool=callgrind $BIN run /tmp/run.db refire     # record 400s, then re-fire all
//! $BIN prepare /tmp/sa-rate.db 3000 rate             # the same, its stage rate-limited (issue 21)
//! ```
//!
//! `prepare … rate` gives the webhook stage `rate_limit = "1000000/s"` and a burst as large:
//! every lease then reads the stage's bucket and writes it once per lease transaction, but
//! never waits, so the run does the same work plus the bucket's (README, "Rate limits").
//!
//! `run` leases and records every due delivery 64 at a time, the way the dispatcher's batcher
//! does; with `refire` each attempt fails with 400 and then every failed delivery is re-fired
//! at once. The file uses only API that older versions have too, so it can be copied into an
//! older checkout to compare the two in one way.

use std::path::Path;
use std::sync::Arc;

use hookops::model::{StageId, WorkflowId};
use hookops::store::{AssignTarget, AttemptOutcome, DeliveryFilter, OpenOptions, Store};

const WORKFLOW: &str = r#"id = "bench"
name = "bench"
team = "t"

[[stage]]
id = "dataset"
kind = "dataset"
next = "hook"

[[stage]]
id = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/hook"
on_success = "done"
pause_after_failures = 0

[[stage]]
id = "done"
kind = "complete"
"#;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["prepare", db, n] => prepare(Path::new(db), n.parse().expect("a number"), false),
        ["prepare", db, n, "rate"] => prepare(Path::new(db), n.parse().expect("a number"), true),
        ["run", db] => run(Path::new(db), false),
        ["run", db, "refire"] => run(Path::new(db), true),
        // `cargo bench` runs every bench with `--bench`: say how to use this one instead.
        _ => eprintln!(
            "usage: store_alone prepare DB N [rate] | run DB [refire] (see the file's header)"
        ),
    }
}

fn open(db: &Path) -> Store {
    Store::open(db, &OpenOptions::default()).expect("open the database")
}

/// A `webhook → complete` workflow with `n` items assigned to its webhook stage.
fn prepare(db: &Path, n: usize, rate: bool) {
    let store = open(db);
    let text = if rate {
        WORKFLOW.replace(
            "pause_after_failures = 0",
            "pause_after_failures = 0\nrate_limit = \"1000000/s\"\nburst = 1000000",
        )
    } else {
        WORKFLOW.to_string()
    };
    let wf = hookops::workflow::parse("bench.toml", &text, &|_| None).expect("workflow");
    store
        .apply_workflow(&wf, &Vec::new(), "bench")
        .expect("apply");
    let lines: String = (0..n)
        .map(|i| {
            format!(
                "{{\"id\":\"it-{i:06}\",\"name\":\"item-{i}.jpg\",\"tags\":[\"a\"],\"annotations\":[{{\"id\":\"00000000-0000-0000-0000-{i:012}\",\"name\":\"car\",\"bounding_box\":{{\"x\":1,\"y\":2,\"w\":3,\"h\":4}}}}]}}\n"
            )
        })
        .collect();
    let parsed = hookops::import::parse_jsonl(lines.as_bytes()).expect("items");
    let id = WorkflowId::new("bench");
    store
        .import_items(&id, parsed.items, None, "bench", &mut |_, _| {})
        .expect("import");
    let target = AssignTarget::FromStage {
        stage: StageId::new("dataset"),
        limit: None,
    };
    let r = store
        .assign(&id, &StageId::new("hook"), &target, None, "bench")
        .expect("assign");
    drop(store);
    // One file, no WAL beside it, so that a copy is the whole database.
    let c = rusqlite::Connection::open(db).expect("reopen");
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    println!("{} deliveries pending in {}", r.deliveries, db.display());
}

fn run(db: &Path, refire: bool) {
    let store = open(db);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = AttemptOutcome {
        started_at: chrono::Utc::now().timestamp_millis(),
        duration_ms: 1,
        url: "http://127.0.0.1:9/hook".into(),
        request_headers: vec![("content-type".into(), "application/json".into())],
        status: Some(if refire { 400 } else { 200 }),
        response_headers: vec![("content-length".into(), "11".into())],
        response_body: Some(b"{\"ok\":true}".to_vec()),
        ..AttemptOutcome::default()
    };
    let n = rt.block_on(async {
        let owner = "store-alone";
        let mut leases = store.lease_due(owner, 64, Vec::new()).await.expect("lease");
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
        n
    });
    println!("{n} deliveries recorded");
    if refire {
        let ids = store
            .failed_deliveries(&DeliveryFilter::default(), None)
            .expect("failed deliveries");
        let r = store.refire(&ids, "store-alone").expect("refire");
        println!("{} re-fired", r.refired);
    }
}
