//! `hookops demo`: a fresh database with the demo workflow and items, the bundled receiver on
//! a free loopback port scripted so each stage behaves differently, and the console on top
//! (or, with `--no-tui`, the dispatcher until the deliveries settle and a summary).
//!
//! Half the items are assigned at start (most to the first webhook stage, some to later webhook
//! stages whose receiver paths retry, time out and fail), so the log pane has attempts,
//! retries and failures to show within seconds; the other half wait in the dataset stage for
//! the operator to assign.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{CliError, ConsoleArgs, DemoArgs, Global, data_dir};
use crate::model::{DeliveryState, StageId, WorkflowId};
use crate::receiver::{Receiver, ReceiverOptions, Script};
use crate::store::{AssignTarget, OpenOptions, Store};

/// The demo's files, compiled into the binary so `hookops demo` works from anywhere.
pub const DEMO_WORKFLOW: &str = include_str!("../../demo/workflow.toml");
pub const DEMO_ITEMS: &str = include_str!("../../demo/items.jsonl");
/// How the demo receiver answers each stage's path (see the comment atop demo/workflow.toml).
pub const DEMO_SCRIPT: &str =
    "/validate=fail-first-2,/export=ok,/qa=flaky:30%,/notify-slow=hang,/archive=400,*=ok";
/// Items assigned when the demo starts, per stage: the first webhook stage, and two later
/// webhook stages whose receivers retry, time out and fail, so every outcome shows at once.
/// The remaining items wait in the dataset stage for the operator.
const DEMO_ASSIGNED: &[(&str, usize)] = &[("validate", 60), ("export", 25), ("qa-export", 15)];

/// Creates a fresh demo database: applies the demo workflow (its URLs pointing at `base_url`)
/// and imports the demo items.
pub fn seed_demo(path: &Path, operator: &str, base_url: Option<&str>) -> Result<Store, CliError> {
    let env = |name: &str| match (name, base_url) {
        ("HOOKOPS_DEMO_URL", Some(url)) => Some(url.to_string()),
        _ => std::env::var(name).ok(),
    };
    let wf = crate::workflow::parse("demo/workflow.toml", DEMO_WORKFLOW, &env).map_err(|errs| {
        CliError::failure(format!(
            "the built-in demo workflow is invalid: {}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    let store = Store::open(path, &OpenOptions::default())?;
    store.apply_workflow(&wf, &Vec::new(), operator)?;
    let parsed = crate::import::parse_jsonl(DEMO_ITEMS.as_bytes())
        .map_err(|e| CliError::failure(format!("cannot read the demo items: {e}")))?;
    if let Some(e) = parsed.errors.first() {
        return Err(CliError::failure(format!(
            "the built-in demo items are invalid: {e}"
        )));
    }
    store
        .import_items(&wf.id, parsed.items, None, operator, &mut |_, _| {})
        .map_err(|e| CliError::failure(e.to_string()))?;
    Ok(store)
}

fn fresh_path(g: &Global, a: &DemoArgs) -> Result<PathBuf, CliError> {
    let given = match (&a.demo_db, &g.db) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(db)) => match crate::store::Location::parse(db).map_err(CliError::usage)? {
            crate::store::Location::File(p) => Some(p),
            crate::store::Location::Postgres { .. } => {
                return Err(CliError::usage(
                    "the demo always starts from a fresh file: give --db a file path (then `hookops db copy` it into PostgreSQL)",
                ));
            }
        },
        (None, None) => None,
    };
    let path = match given {
        Some(p) => p,
        None => {
            let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
            data_dir()
                .join("demo")
                .join(format!("demo-{stamp}-{}.db", std::process::id()))
        }
    };
    if path.exists() {
        return Err(CliError::failure(format!(
            "{} already exists; the demo always starts from a fresh file",
            path.display()
        )));
    }
    Ok(path)
}

pub fn run(g: &Global, c: &ConsoleArgs, a: DemoArgs) -> Result<(), CliError> {
    super::serve::init_log_file(c.log_file.as_ref())?;
    let path = fresh_path(g, &a)?;
    // The receiver runs on its own runtime for the whole demo, console included.
    let rt = super::deliveries_runtime()?;
    let script: Script = DEMO_SCRIPT
        .parse()
        .map_err(|e| CliError::failure(format!("demo script: {e}")))?;
    let receiver = rt
        .block_on(Receiver::start(ReceiverOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            script,
            secrets: Vec::new(),
            quiet: true,
            ..ReceiverOptions::default()
        }))
        .map_err(|e| CliError::failure(format!("cannot start the demo receiver: {e}")))?;
    let base = format!("http://{}", receiver.addr);
    let operator = g.operator();
    let store = seed_demo(&path, &operator, Some(&base))?;
    let wf = WorkflowId::new("defects");
    for (stage, n) in DEMO_ASSIGNED {
        store.assign(
            &wf,
            &StageId::new(*stage),
            &AssignTarget::FromStage {
                stage: StageId::new("dataset"),
                limit: Some(*n),
            },
            None,
            &operator,
        )?;
    }
    let result = if a.no_tui {
        headless(&rt, &store, a.timeout)
    } else {
        super::run_console(store, g, c)
    };
    rt.block_on(receiver.shutdown());
    println!("demo database: {}", path.display());
    println!(
        "open it again with: hookops --db {} (receiver stopped; deliveries wait until one runs)",
        path.display()
    );
    result
}

/// Runs the dispatcher until no delivery is open (or `timeout`), then prints a summary.
fn headless(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    timeout: Duration,
) -> Result<(), CliError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let s = store.clone();
    let dispatcher = rt.spawn(crate::dispatch::run(
        s,
        crate::dispatch::DispatcherOptions::default(),
        events,
        stop_rx,
    ));
    let started = std::time::Instant::now();
    let mut commits = store.commits();
    let open = |store: &Store| -> Result<i64, CliError> {
        Ok(store
            .delivery_totals()?
            .into_iter()
            .filter(|(s, _)| s.is_open())
            .map(|(_, n)| n)
            .sum())
    };
    // Wait for commits (not a fixed sleep) until nothing is open or the time is up.
    while open(store)? > 0 && started.elapsed() < timeout {
        let left = timeout.saturating_sub(started.elapsed());
        rt.block_on(async {
            match commits.as_mut() {
                Some(c) => {
                    let _ =
                        tokio::time::timeout(left.min(Duration::from_secs(1)), c.changed()).await;
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        });
    }
    let _ = stop_tx.send(true);
    let _ = rt.block_on(dispatcher);
    let detail = store.workflow_detail(&WorkflowId::new("defects"))?;
    println!(
        "demo ran for {:.1} s: {} items",
        started.elapsed().as_secs_f64(),
        detail.summary.items
    );
    for s in &detail.stage_list {
        if s.items > 0 {
            println!("  {:<16} {:>4} item(s)", s.id, s.items);
        }
    }
    let totals = store.delivery_totals()?;
    let get = |st: DeliveryState| {
        totals
            .iter()
            .find(|(s, _)| *s == st)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    println!(
        "deliveries: {} succeeded, {} failed, {} retrying, {} pending",
        get(DeliveryState::Succeeded),
        get(DeliveryState::Failed),
        get(DeliveryState::RetryScheduled),
        get(DeliveryState::Pending)
    );
    Ok(())
}
