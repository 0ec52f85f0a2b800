//! Bulk re-fire benchmark (design §5: "re-firing 100,000 failed deliveries completes in
//! seconds and never holds the write lock long enough for the console to stutter").
//!
//! `cargo bench --bench refire [-- --deliveries N] [--via api]` (default 100,000; `--via api`
//! re-fires through `POST /v1/deliveries/refire` on an in-process API server and polls the
//! job, as an operator's script would, instead of calling the store):
//!
//! 1. imports N items and assigns them to a webhook stage without `on_failure` (N pending
//!    deliveries), then marks every delivery failed after one attempt with plain SQL, as a
//!    dispatcher would have left them (set-up, not measured);
//! 2. lists them (`Store::failed_deliveries`, what `refire --failed` does) and re-fires them
//!    all (`Store::refire`, chunked transactions), timed;
//! 3. meanwhile a probe on a second connection takes the write lock for a tiny transaction
//!    over and over (what the console's or another process's write would wait), and the
//!    store reports its longest transaction.
//!
//! Nothing is asserted: the figures and their targets are printed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hookops::model::{NewItem, StageId, WorkflowId};
use hookops::store::{AssignTarget, DeliveryFilter, OpenOptions, Store};
use rusqlite::Connection;

const WORKFLOW: &str = r#"
id = "bench"
name = "Re-fire benchmark"
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

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args().skip_while(|a| a != name);
    it.next()?;
    it.next()
}

/// Worst and 99th-percentile wait for the write lock seen by another connection.
fn probe(db: std::path::PathBuf, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<Duration>> {
    thread::spawn(move || {
        let mut c = Connection::open(&db).expect("probe connection");
        // Waits for the lock as every hookops connection does: polling every millisecond.
        c.busy_handler(Some(|tries| {
            thread::sleep(Duration::from_millis(1));
            tries < 60_000
        }))
        .expect("busy handler");
        let mut waits = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            c.execute_batch(
                "BEGIN IMMEDIATE; INSERT OR REPLACE INTO settings (key, value) VALUES ('bench.probe', '1'); COMMIT",
            )
            .expect("probe write");
            waits.push(t.elapsed());
            thread::sleep(Duration::from_millis(5));
        }
        waits
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test harness probes
    }
    let n: usize = arg("--deliveries")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("refire.db");
    let store = Store::open(&db, &OpenOptions::default()).expect("store");
    let wf = hookops::workflow::parse("bench.toml", WORKFLOW, &|_| None).expect("workflow");
    store
        .apply_workflow(&wf, &Vec::new(), "bench")
        .expect("apply");
    let wid = WorkflowId::new("bench");
    let setup = Instant::now();
    let items: Vec<NewItem> = (0..n)
        .map(|i| {
            let line = format!("{{\"id\":\"r{i:07}\",\"name\":\"r{i}.jpg\"}}\n");
            let mut p = hookops::import::parse_jsonl(line.as_bytes()).expect("parse");
            p.items.remove(0)
        })
        .collect();
    store
        .import_items(&wid, items, None, "bench", &mut |_, _| {})
        .expect("import");
    store
        .assign(
            &wid,
            &StageId::new("hook"),
            &AssignTarget::FromStage {
                stage: StageId::new("dataset"),
                limit: None,
            },
            None,
            "bench",
        )
        .expect("assign");
    {
        let c = Connection::open(&db).expect("setup connection");
        c.busy_timeout(Duration::from_secs(60)).expect("busy");
        c.execute_batch(
            "BEGIN IMMEDIATE;
             UPDATE deliveries SET state = 'failed', attempts = 1, last_status = 500,
               last_error_kind = 'http_status', next_attempt_at = NULL, routed_version = item_version;
             UPDATE items SET state = 'failed' WHERE stage_id = 'hook';
             COMMIT;",
        )
        .expect("mark failed");
    }
    let setup = setup.elapsed();
    let _ = store.writer_stats(true);

    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe(db.clone(), stop.clone());
    let started = Instant::now();
    let filter = DeliveryFilter {
        workflow: Some(wid.clone()),
        ..DeliveryFilter::default()
    };
    let via_api = arg("--via").as_deref() == Some("api");
    let (listed, took, refired) = if via_api {
        through_api(&store, started)
    } else {
        let ids = store.failed_deliveries(&filter, None).expect("list");
        let listed = started.elapsed();
        let report = store.refire(&ids, "bench").expect("refire");
        (listed, started.elapsed(), report.refired)
    };
    stop.store(true, Ordering::Relaxed);
    let mut waits = prober.join().expect("probe");
    waits.sort();
    let (max_hold_us, txns, _) = store.writer_stats(false);
    let p99 = waits
        .get(waits.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    let worst = waits.last().copied().unwrap_or_default();
    assert_eq!(refired, n as i64, "every delivery is re-fired");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!();
    println!(
        "hookops re-fire benchmark · {n} failed deliveries{} · {} cores · set-up {:.1} s (not counted)",
        if via_api {
            " · through the API's job"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        setup.as_secs_f64()
    );
    println!("{:<44} {:>16}  target", "figure", "measured");
    println!(
        "{:<44} {:>16}  < 10 s",
        format!("bulk re-fire of {n} (list + re-fire)"),
        format!("{:.2} s", took.as_secs_f64())
    );
    println!(
        "{:<44} {:>16}",
        if via_api {
            "    of which counting (until the job's answer)"
        } else {
            "    of which listing"
        },
        format!("{:.2} s", listed.as_secs_f64())
    );
    println!(
        "{:<44} {:>16}",
        "re-fire rate",
        format!("{:.0} deliveries/s", n as f64 / took.as_secs_f64())
    );
    println!(
        "{:<44} {:>16}  < 100 ms",
        format!("longest write transaction ({txns} transactions)"),
        ms(Duration::from_micros(max_hold_us))
    );
    println!(
        "{:<44} {:>16}  < 100 ms",
        format!(
            "other writer's wait for the lock, worst (n={})",
            waits.len()
        ),
        ms(worst)
    );
    println!(
        "{:<44} {:>16}",
        "other writer's wait for the lock, p99",
        ms(p99)
    );
}

/// The API's way: `POST /v1/deliveries/refire` with the workflow as the filter, then
/// `GET /v1/jobs/{id}` until the job has ended. Returns (until the job's answer, until it
/// ended, re-fired).
fn through_api(store: &Store, started: Instant) -> (Duration, Duration, i64) {
    use hookops::api::{ApiOptions, Metrics, Server, Tokens};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let token = "bench-token-0123456789";
    rt.block_on(async {
        let server = Server::bind(
            store.clone(),
            ApiOptions {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                tokens: Tokens::single("bench", token).expect("token"),
                max_body: hookops::api::DEFAULT_MAX_BODY,
                max_send_body: hookops::dispatch::http::DEFAULT_MAX_BODY,
            },
            Arc::new(Metrics::default()),
            None,
        )
        .await
        .expect("API");
        let api = format!("http://{}", server.local_addr().expect("address"));
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(server.run(stopped));
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let job: serde_json::Value = client
            .post(format!("{api}/v1/deliveries/refire"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"filter": {"workflow": "bench"}}"#)
            .send()
            .await
            .expect("POST")
            .text()
            .await
            .map(|t| serde_json::from_str(&t).expect("a job"))
            .expect("job");
        let answered = started.elapsed();
        let id = job["id"].as_str().expect("a job id").to_string();
        loop {
            let job: serde_json::Value = client
                .get(format!("{api}/v1/jobs/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("GET")
                .text()
                .await
                .map(|t| serde_json::from_str(&t).expect("a job"))
                .expect("job");
            if job["state"] != "running" {
                return (
                    answered,
                    started.elapsed(),
                    job["acted"].as_i64().unwrap_or(0),
                );
            }
            // How often a script would poll; the job does not wait for it.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}
