//! The store conformance suite (issue 16, part 4): every store-level rule of design §2 and §6,
//! written against the public [`Store`] API only, so that it holds for any backend under the
//! seam. A backend joins the suite with one line beside the SQLite one:
//!
//! ```ignore
//! conformance_suite!(sqlite, super::open_sqlite);
//! conformance_suite!(postgres, super::open_postgres);
//! ```
//!
//! which instantiates every case of [`cases`] as a `#[test]` in a module named after the
//! backend. Each test gets a fresh store in a temp dir of its own.
//!
//! The suite drives the store the way the dispatcher does, without HTTP: it leases, and records
//! hand-made [`AttemptOutcome`]s (the store decides from the outcome, never from the wire). After
//! every operation it checks that the counters equal the rows ([`World::counts`]). It also takes
//! a lease from a dead process (a heartbeat row whose pid is gone) and from a shutdown.
//!
//! Time: each store runs on an adjustable [`Clock`] (the system clock plus an offset a case
//! moves forward), so leases expire, retries fall due and deliveries age without waiting. The
//! outcomes a case hands in carry their own times, as the dispatcher's do: a retry is due at the
//! end of the attempt the outcome describes. Only the jitter is not fixed (the store draws it),
//! so retry timing is checked as the ±20 % window around the schedule entry (the fixed-jitter
//! arithmetic is `engine::delivery`'s own unit test). No case sleeps.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookops::model::{
    AttemptTrigger, CancelReason, DeliveryId, DeliveryState, DeliveryTrigger, ErrorKind, EventType,
    HistoryCause, Item, ItemId, ItemState, RefusalKind, StageId, WorkflowId,
};
use hookops::store::{
    AUDIT_IDS, AssignTarget, AttemptCursor, AttemptOutcome, AuditQuery, AuditStart, CheckStatus,
    Clock, DeliveryCursor, DeliveryDetail, DeliveryFilter, DeliverySummary, DispatcherInfo, Expect,
    FailureGroup, ImportReport, ItemFilter, ItemOrder, ItemRow, Jitter, Lease, Location,
    MoveReport, OpenOptions, PruneOptions, Recorded, StatusMatch, Store,
};
use serde_json::json;

const WF: &str = "wf";
const OP: &str = "tester";
const MINUTE: i64 = 60_000;

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// The jitter every store of the suite draws (`Jitter::Fixed`), so retry due times are exact.
const JITTER: f64 = 0.5;

/// Opens a fresh SQLite store in `dir` whose times come from `clock`, with the suite's fixed
/// jitter.
fn open_sqlite(dir: &Path, clock: Clock) -> Store {
    let opts = OpenOptions {
        clock,
        jitter: Jitter::Fixed(JITTER),
        ..OpenOptions::default()
    };
    Store::open(&dir.join("hookops.db"), &opts).expect("open the store")
}

#[path = "support/pg.rs"]
mod pg;

/// Opens the PostgreSQL store of `dir`: a database of the test cluster made for it the first
/// time (its URL kept in `dir`), another handle on it after that. Fixed jitter, as for SQLite.
fn open_postgres(dir: &Path, clock: Clock) -> Store {
    let kept = dir.join("postgres-url");
    let url = match std::fs::read_to_string(&kept) {
        Ok(url) => url,
        Err(_) => {
            let url = pg::cluster().database();
            std::fs::write(&kept, &url).expect("keep the test database's URL");
            url
        }
    };
    let opts = OpenOptions {
        clock,
        jitter: Jitter::Fixed(JITTER),
        ..OpenOptions::default()
    };
    let location = Location::parse(&url).expect("a postgres URL");
    Store::open_at(&location, &opts).expect("open the store")
}

/// Instantiates every case of the suite as a test of one backend. `$open(dir, clock)` opens
/// the store of `dir` (a fresh one the first time; another handle on it after that, as another
/// process would open it) whose times come from `clock` (an adjustable one: cases move it
/// forward to let leases expire and retries fall due). The list of cases is written once, here.
macro_rules! conformance_suite {
    ($backend:ident, $open:expr) => {
        mod $backend {
            conformance_suite!(@cases $open;
                a_lease_takes_a_due_delivery_once_with_a_token_and_a_number,
                a_stale_lease_records_its_attempt_and_changes_nothing_else,
                an_expired_lease_is_taken_again_after_the_timeout_plus_30_s,
                health_sees_an_expired_lease_by_the_stores_clock_and_repair_reclaims_it,
                a_dead_local_dispatchers_leases_are_taken_at_once,
                a_silent_dispatcher_of_another_host_leaves_once_its_leases_were_taken,
                shutdown_releases_leases_as_interrupted_attempts_due_now,
                max_in_flight_caps_a_stage_across_dispatchers,
                max_in_flight_holds_when_processes_lease_at_once,
                processes_leasing_at_once_never_take_the_same_delivery,
                another_processs_commit_reaches_the_change_feed,
                record_and_lease_records_first_so_a_finished_slot_frees_its_stage,
                a_batch_that_fails_keeps_nothing_of_its_records_or_leases,
                attempt_numbers_are_unique_and_only_scheduled_uninterrupted_ones_count,
                outcomes_are_classified_by_status_then_error,
                retries_are_due_at_the_attempts_end_plus_the_schedule_entry,
                a_retry_is_leased_when_its_due_time_comes,
                retry_after_replaces_the_delay_without_jitter_and_is_clamped,
                a_final_outcome_routes_on_either_edge_in_the_record,
                a_reapplied_workflow_binds_the_next_attempt_and_body_stays_frozen,
                apply_is_idempotent_and_retires_a_stage_only_once_its_items_move,
                a_late_outcome_for_an_item_moved_by_hand_routes_nothing,
                reentering_a_webhook_stage_cancels_the_open_delivery_and_makes_a_new_one,
                refire_makes_a_new_linked_delivery_and_refuses_what_it_must,
                replay_is_a_manual_attempt_that_changes_nothing,
                a_test_delivery_is_manual_moves_nothing_and_is_never_retried,
                cancel_with_an_attempt_in_flight_routes_once,
                cancel_selects_open_deliveries_by_filter_oldest_first,
                bulk_refire_takes_only_each_items_latest_failed_delivery,
                moves_are_compare_and_set_on_stage_and_version,
                a_paused_stage_leases_nothing_but_replay_and_test_still_go,
                a_stage_pauses_itself_after_consecutive_failures,
                notifications_are_written_in_the_transaction_of_their_change,
                import_is_idempotent_and_never_overwrites,
                prune_keeps_the_latest_delivery_per_item_and_stage_and_open_ones,
                item_pages_never_skip_or_repeat_a_row,
                an_item_entering_a_stage_in_the_same_millisecond_is_not_skipped,
                an_item_entering_a_stage_from_a_process_whose_clock_is_behind_is_not_skipped,
                delivery_pages_never_skip_or_repeat_a_row,
                attempt_pages_never_skip_or_repeat_a_row,
                a_follow_since_a_time_starts_at_the_first_attempt_that_started_then,
                attempt_pages_stay_complete_while_processes_record_at_once,
                a_rate_limited_stage_leases_its_tokens_only_and_every_process_shares_them,
                a_test_or_replay_of_a_rate_limited_stage_waits_for_its_token_and_counts,
                a_429_or_503_with_retry_after_holds_the_stage_for_every_process,
                a_hold_is_not_a_pause_and_stage_resume_lifts_it,
                a_429_without_retry_after_halves_the_concurrency_and_successes_restore_it,
                the_delivery_filter_matches_statuses_classes_kinds_and_a_half_open_window,
                failures_group_by_cause_and_a_groups_filter_refires_exactly_its_members,
                audit_rows_name_their_ids_and_are_found_by_item_operator_action_and_time,
            );
        }
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                super::cases::$case(&super::World::new(&$open));
            }
        )*
    };
}

conformance_suite!(sqlite, super::open_sqlite);
conformance_suite!(postgres, super::open_postgres);

// ---------------------------------------------------------------------------------------------
// The world of one test
// ---------------------------------------------------------------------------------------------

/// One test's store, in a temp dir of its own, and a runtime for the dispatcher's async calls.
pub struct World {
    store: Store,
    /// Opens another handle on this store (another process), with a clock of its own.
    open: Box<dyn Fn(Clock) -> Store>,
    /// The store's clock: the system clock plus an offset the case moves forward.
    clock: Clock,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// The workflow every case uses. Items land in `hold` (an annotate stage) on import and are
/// assigned from there. URLs are never called: the suite hands the store its outcomes.
const WORKFLOW: &str = r#"id = "wf"
name = "Conformance"
team = "qa"

[[stage]]
id = "dataset"
kind = "dataset"
next = "hold"

[[stage]]
id = "hold"
kind = "annotate"
next = "done"

[[stage]]
id = "ok-sink"
kind = "annotate"
next = "done"

[[stage]]
id = "fail-sink"
kind = "annotate"
next = "done"

# Three tries, retries after 10 s then 1 min.
[[stage]]
id = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/hook"
timeout = "2s"
max_attempts = 3
retry_schedule = ["10s", "1m"]
on_success = "ok-sink"
on_failure = "fail-sink"

# Four tries on a two-entry schedule: the last entry repeats.
[[stage]]
id = "patient"
kind = "webhook"
url = "http://127.0.0.1:9/patient"
max_attempts = 4
retry_schedule = ["10s", "1m"]
on_success = "ok-sink"
on_failure = "fail-sink"

# One try and no failure edge: a failed item stays, marked failed.
[[stage]]
id = "bare"
kind = "webhook"
url = "http://127.0.0.1:9/bare"
max_attempts = 1
on_success = "ok-sink"

# Success goes on into another webhook stage, failure through a logic stage.
[[stage]]
id = "chain"
kind = "webhook"
url = "http://127.0.0.1:9/chain"
max_attempts = 1
on_success = "hook"
on_failure = "router"

[[stage]]
id = "router"
kind = "logic"
rules = [{ when = { tag = "urgent" }, to = "ok-sink" }]
else = "fail-sink"

[[stage]]
id = "capped"
kind = "webhook"
url = "http://127.0.0.1:9/capped"
max_attempts = 1
max_in_flight = 2
on_success = "ok-sink"
on_failure = "fail-sink"

[[stage]]
id = "fragile"
kind = "webhook"
url = "http://127.0.0.1:9/fragile"
max_attempts = 1
pause_after_failures = 2
on_success = "ok-sink"
on_failure = "fail-sink"

[[stage]]
id = "done"
kind = "complete"
"#;

/// A `[[notify]]` entry subscribed to every notification event.
const NOTIFY: &str = r#"
[[notify]]
url = "http://127.0.0.1:9/events"
events = ["item.created", "item.stage_changed", "item.completed", "delivery.failed", "stage.paused"]
"#;

fn wf() -> WorkflowId {
    WorkflowId::new(WF)
}

fn st(id: &str) -> StageId {
    StageId::new(id)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An outcome of an attempt that started at `started_at` and took 250 ms.
fn outcome_at(started_at: i64, status: Option<u16>, error: Option<ErrorKind>) -> AttemptOutcome {
    AttemptOutcome {
        started_at,
        duration_ms: 250,
        url: "http://127.0.0.1:9/".into(),
        status,
        error_kind: error,
        error_message: error.map(|k| format!("{k} (hand-made)")),
        ..AttemptOutcome::default()
    }
}

/// When an attempt described by `o` ended.
fn lease_end(o: &AttemptOutcome) -> i64 {
    o.started_at + o.duration_ms
}

/// An answer with `status`, now by the system clock (the store's unless a case moved it).
fn answer(status: u16) -> AttemptOutcome {
    outcome_at(now_ms(), Some(status), None)
}

/// An answer with `status` to an attempt that started ten minutes ago: any retry it schedules
/// (at most 1 min ± 20 % after its end) is due at once.
fn answer_long_ago(status: u16) -> AttemptOutcome {
    outcome_at(now_ms() - 10 * MINUTE, Some(status), None)
}

impl World {
    fn new(open: &'static dyn Fn(&Path, Clock) -> Store) -> World {
        // A file system in memory when there is one: the rules do not depend on the disk, and
        // every commit here is `synchronous=FULL`.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("hookops-store-")
                .tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        let clock = Clock::adjustable();
        let store = open(dir.path(), clock.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let path = dir.path().to_path_buf();
        let w = World {
            store,
            open: Box::new(move |clock| open(&path, clock)),
            clock,
            rt,
            _dir: dir,
        };
        w.apply("");
        w
    }

    /// Applies [`WORKFLOW`] followed by `extra` (more stages or `[[notify]]` entries).
    fn apply(&self, extra: &str) {
        let text = format!("{WORKFLOW}{extra}");
        let spec = hookops::workflow::parse("wf.toml", &text, &|_| None)
            .unwrap_or_else(|e| panic!("the workflow does not validate: {e:?}"));
        self.store.apply_workflow(&spec, &Vec::new(), OP).unwrap();
        self.counts();
    }

    fn import_lines(&self, workflow: &WorkflowId, lines: &[serde_json::Value]) -> ImportReport {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let parsed = hookops::import::parse_jsonl(text.as_bytes()).unwrap();
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let report = self
            .store
            .import_items(workflow, parsed.items, None, OP, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("import failed: {e}"));
        self.counts();
        report
    }

    /// Imports items with these ids (named `<id>.jpg`; an id starting with `u` is tagged
    /// `urgent`). They land in `hold`.
    fn import(&self, ids: &[&str]) {
        let lines: Vec<_> = ids
            .iter()
            .map(|id| {
                let tags: Vec<&str> = if id.starts_with('u') {
                    vec!["urgent"]
                } else {
                    vec![]
                };
                json!({"id": id, "name": format!("{id}.jpg"), "tags": tags})
            })
            .collect();
        let r = self.import_lines(&wf(), &lines);
        assert_eq!(r.imported, ids.len() as i64, "{r:?}");
    }

    fn assign(&self, ids: &[&str], stage: &str) -> MoveReport {
        let ids = ids.iter().map(|i| ItemId::new(*i)).collect();
        let r = self
            .store
            .assign(&wf(), &st(stage), &AssignTarget::Items(ids), None, OP)
            .unwrap();
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        self.counts();
        r
    }

    fn lease(&self, owner: &str, limit: usize) -> Vec<Lease> {
        self.lease_reclaiming(owner, limit, Vec::new())
    }

    fn lease_reclaiming(&self, owner: &str, limit: usize, dead: Vec<String>) -> Vec<Lease> {
        let leases = self
            .rt
            .block_on(self.store.lease_due(owner, limit, dead))
            .unwrap();
        self.counts();
        leases
    }

    /// Leases exactly one delivery, and checks it is `item`'s.
    fn lease_one(&self, owner: &str, item: &str) -> Lease {
        let leases = self.lease(owner, 10);
        assert_eq!(
            leases
                .iter()
                .map(|l| l.item_id.as_ref().map(|i| i.to_string()))
                .collect::<Vec<_>>(),
            vec![Some(item.to_string())],
            "expected one lease, of {item}"
        );
        leases.into_iter().next().unwrap()
    }

    fn record(&self, lease: &Lease, outcome: AttemptOutcome) -> Recorded {
        let r = self
            .rt
            .block_on(self.store.record_attempt(lease, outcome))
            .unwrap();
        self.counts();
        r
    }

    fn release(&self, owner: &str) -> usize {
        let n = self.rt.block_on(self.store.release_leases(owner)).unwrap();
        self.counts();
        n
    }

    /// A heartbeat of dispatcher `id`, as process `pid` (started at `start`) on `host`.
    fn beat(&self, id: &str, host: &str, pid: u32, start: Option<String>) {
        let info = DispatcherInfo {
            id: id.into(),
            pid,
            host: host.into(),
            process_start: start.unwrap_or_else(|| "0".into()),
            concurrency: 4,
            started_at: chrono::Utc::now(),
            last_beat: chrono::Utc::now(),
        };
        self.rt.block_on(self.store.heartbeat(&info)).unwrap();
    }

    /// The ids of the heartbeat rows, sorted.
    fn dispatcher_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .store
            .dispatchers()
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        ids.sort();
        ids
    }

    /// Another process's handle on this store, on the same clock.
    fn other_process(&self) -> Store {
        (self.open)(self.clock.clone())
    }

    /// Now by the store's clock.
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// An answer with `status`, now by the store's clock.
    fn answer(&self, status: u16) -> AttemptOutcome {
        outcome_at(self.now(), Some(status), None)
    }

    fn item(&self, id: &str) -> Item {
        self.store.item(&ItemId::new(id)).unwrap()
    }

    /// `(stage, state, version)` of an item.
    fn at(&self, id: &str) -> (String, ItemState, i64) {
        let i = self.item(id);
        (i.stage.to_string(), i.state, i.version)
    }

    /// The item's deliveries, newest first.
    fn deliveries_of(&self, id: &str) -> Vec<DeliverySummary> {
        self.store.item_detail(&ItemId::new(id)).unwrap().deliveries
    }

    fn latest(&self, id: &str) -> DeliverySummary {
        self.deliveries_of(id)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{id} has no delivery"))
    }

    fn detail(&self, id: &DeliveryId) -> DeliveryDetail {
        self.store.delivery_detail(id).unwrap()
    }

    /// `(number, trigger, counted, status, error kind)` of each attempt of a delivery.
    fn attempts(&self, id: &DeliveryId) -> Vec<AttemptRow> {
        self.detail(id)
            .attempt_log
            .iter()
            .map(|a| (a.number, a.trigger, a.counted, a.status, a.error_kind))
            .collect()
    }

    /// `(from, to, cause)` of an item's history.
    fn history(&self, id: &str) -> Vec<(Option<String>, String, HistoryCause)> {
        self.store
            .item_detail(&ItemId::new(id))
            .unwrap()
            .history
            .into_iter()
            .map(|h| (h.from.map(|s| s.to_string()), h.to.to_string(), h.cause))
            .collect()
    }

    fn stage(&self, stage: &str) -> hookops::store::StageSummary {
        self.store
            .workflow_detail(&wf())
            .unwrap()
            .stage_list
            .into_iter()
            .find(|s| s.id.as_str() == stage)
            .unwrap()
    }

    fn stage_paused(&self, stage: &str) -> (bool, Option<String>) {
        let s = self
            .store
            .workflow_detail(&wf())
            .unwrap()
            .stage_list
            .into_iter()
            .find(|s| s.id.as_str() == stage)
            .unwrap();
        (s.paused, s.paused_reason)
    }

    fn count_deliveries(&self, filter: DeliveryFilter) -> i64 {
        self.store.count_deliveries(&filter).unwrap()
    }

    /// The counters equal the rows (design §6 "Counters"): the store's own health check, and
    /// every public count against the rows its lists return.
    fn counts(&self) {
        assert_counts_match(&self.store);
    }
}

/// `(number, trigger, counted, status, error kind)` of one attempt.
type AttemptRow = (i64, AttemptTrigger, bool, Option<u16>, Option<ErrorKind>);

/// Counters equal the rows: the `counters` line of the health check, each stage's item and
/// delivery counts against the matching rows, and the delivery totals per state.
fn assert_counts_match(store: &Store) {
    let health = store.health().unwrap();
    let check = health.check("counters").expect("a counters check");
    assert_eq!(check.status, CheckStatus::Ok, "{}", check.detail);
    for w in store.list_workflows().unwrap() {
        let detail = store.workflow_detail(&w.id).unwrap();
        let mut items = 0;
        for s in &detail.stage_list {
            let by_state = [
                (ItemState::Waiting, s.waiting),
                (ItemState::Active, s.active),
                (ItemState::InDelivery, s.in_delivery),
                (ItemState::Failed, s.failed),
                (ItemState::Done, s.done),
            ];
            for (state, counted) in by_state {
                let filter = ItemFilter {
                    workflow: Some(w.id.clone()),
                    stage: Some(s.id.clone()),
                    state: Some(state),
                    ..ItemFilter::default()
                };
                let rows = store.count_items(&filter).unwrap();
                assert_eq!(counted, rows, "items of {}/{} in {state}", w.id, s.id);
            }
            assert_eq!(s.items, by_state.iter().map(|(_, n)| n).sum::<i64>());
            items += s.items;
            for state in DeliveryState::ALL {
                let filter = DeliveryFilter {
                    workflow: Some(w.id.clone()),
                    stage: Some(s.id.clone()),
                    state: Some(*state),
                    ..DeliveryFilter::default()
                };
                let rows = store.count_deliveries(&filter).unwrap();
                let counted = s.deliveries.get(state.as_str()).copied().unwrap_or(0);
                assert_eq!(counted, rows, "deliveries of {}/{} {state}", w.id, s.id);
            }
        }
        assert_eq!(w.items, items, "items of workflow {}", w.id);
    }
    let totals = store.delivery_totals().unwrap();
    for state in DeliveryState::ALL {
        let counted: i64 = totals
            .iter()
            .filter(|(s, _)| s == state)
            .map(|(_, n)| n)
            .sum();
        let filter = DeliveryFilter {
            state: Some(*state),
            ..DeliveryFilter::default()
        };
        assert_eq!(
            counted,
            store.count_deliveries(&filter).unwrap(),
            "deliveries {state}"
        );
    }
}

/// Every page of a list, read with `page(after, limit)` until a short page.
fn all_pages<T, C: Clone>(
    limit: usize,
    mut page: impl FnMut(Option<C>, usize) -> Vec<T>,
    cursor: impl Fn(&T) -> C,
) -> Vec<T> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let rows = page(after.clone(), limit);
        let done = rows.len() < limit;
        if let Some(last) = rows.last() {
            after = Some(cursor(last));
        }
        out.extend(rows);
        if done {
            return out;
        }
    }
}

fn ids_of(rows: &[ItemRow]) -> Vec<String> {
    rows.iter().map(|r| r.id.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

pub mod cases {
    use super::*;

    // --- Leases and fencing ---------------------------------------------------------------

    /// §2 at least once: a due delivery is leased once, with a token and attempt number 1;
    /// while leased nobody else gets it.
    pub fn a_lease_takes_a_due_delivery_once_with_a_token_and_a_number(w: &World) {
        w.import(&["a"]);
        let r = w.assign(&["a"], "hook");
        assert_eq!((r.moved, r.deliveries), (1, 1));
        let d = w.latest("a");
        assert_eq!(
            (d.state, d.trigger, d.event, d.attempts),
            (
                DeliveryState::Pending,
                DeliveryTrigger::Assign,
                EventType::StageWebhook,
                0
            )
        );
        assert_eq!(w.at("a").1, ItemState::InDelivery);

        let before = now_ms();
        let lease = w.lease_one("one", "a");
        let after = now_ms();
        assert_eq!(lease.delivery_id, d.id);
        assert!(lease.token.is_some());
        // §6: the deadline starts at lease time and is the stage timeout (2 s) + 30 s; the
        // dispatcher next wakes for it (nothing else is due).
        let deadline = w.store.next_wakeup().unwrap().expect("a lease deadline");
        assert!(
            (before + 32_000..=after + 32_000).contains(&deadline),
            "deadline {} ms after the lease",
            deadline - before
        );
        assert_eq!(
            (lease.number, lease.trigger, lease.attempts),
            (1, AttemptTrigger::Scheduled, 0)
        );
        assert_eq!(lease.stage, st("hook"));
        assert_eq!(lease.config().map(|c| c.max_attempts), Some(3));
        assert_eq!(w.latest("a").state, DeliveryState::InFlight);
        assert!(
            w.lease("two", 10).is_empty(),
            "a leased delivery is not due"
        );
        assert!(w.lease("one", 10).is_empty());

        let rec = w.record(&lease, answer(200));
        assert!(!rec.lease_lost);
        assert_eq!((rec.state, rec.attempts), (DeliveryState::Succeeded, 1));
        assert!(
            w.lease("two", 10).is_empty(),
            "a finished delivery is not due"
        );
    }

    /// §6 fencing: a dispatcher that lost its lease records the attempt it sent and changes
    /// nothing else (no state, no count, no route).
    pub fn a_stale_lease_records_its_attempt_and_changes_nothing_else(w: &World) {
        w.import(&["a"]);
        w.assign(&["a"], "hook");
        let stale = w.lease_one("one", "a");
        // The lease is lost (given back as at shutdown), and another dispatcher takes it.
        assert_eq!(w.release("one"), 1);
        let fresh = w.lease_one("two", "a");
        assert_eq!(fresh.number, 2);
        assert_ne!(fresh.token, stale.token);
        let before = w.at("a");

        let rec = w.record(&stale, answer(200));
        assert!(rec.lease_lost);
        assert_eq!(rec.routed_to, None);
        assert_eq!((rec.state, rec.attempts), (DeliveryState::InFlight, 0));
        assert_eq!(w.at("a"), before, "a stale lease moves nothing");
        let d = w.latest("a");
        assert_eq!((d.state, d.attempts), (DeliveryState::InFlight, 0));
        // The late recorder filled in the `interrupted` row written for its number.
        assert_eq!(
            w.attempts(&d.id),
            vec![(1, AttemptTrigger::Scheduled, false, Some(200), None)]
        );

        // The holder of the lease records normally, and routes.
        let rec = w.record(&fresh, answer(200));
        assert!(!rec.lease_lost);
        assert_eq!(rec.routed_to, Some(st("ok-sink")));
        assert_eq!(
            w.at("a"),
            ("ok-sink".into(), ItemState::Active, before.2 + 1)
        );
        assert_eq!(
            w.attempts(&d.id),
            vec![
                (1, AttemptTrigger::Scheduled, false, Some(200), None),
                (2, AttemptTrigger::Scheduled, true, Some(200), None),
            ]
        );
        // Recording the stale lease again still changes nothing.
        let rec = w.record(&stale, answer(500));
        assert!(rec.lease_lost);
        assert_eq!(w.latest("a").state, DeliveryState::Succeeded);
        assert_eq!(
            w.at("a"),
            ("ok-sink".into(), ItemState::Active, before.2 + 1)
        );
    }

    /// §6 leases: a lease's deadline is the stage timeout + 30 s after it was taken. Until
    /// then nobody else takes the delivery; after it, the next lease writes an `interrupted`
    /// attempt (not counted) for the number that may have been sent, and sends it again with
    /// the next number. The late recorder fills in its row and changes nothing else.
    /// `check` and `repair` judge lease deadlines by the store's clock: an expired lease is
    /// a failing check, and `repair` reclaims it the dispatcher's way (an `interrupted`
    /// attempt that does not count, the delivery due again).
    pub fn health_sees_an_expired_lease_by_the_stores_clock_and_repair_reclaims_it(w: &World) {
        w.import(&["a"]);
        w.assign(&["a"], "hook");
        let stale = w.lease_one("one", "a");
        let check = |w: &World| {
            w.store
                .health()
                .unwrap()
                .check("expired_leases")
                .map(|c| c.status)
        };
        assert_eq!(check(w), Some(CheckStatus::Ok));
        w.clock.advance(Duration::from_secs(60));
        assert_eq!(check(w), Some(CheckStatus::Fail));
        w.store.repair("ops").unwrap();
        assert_eq!(check(w), Some(CheckStatus::Ok));
        assert_eq!(w.latest("a").state, DeliveryState::Pending);
        assert_eq!(
            w.attempts(&stale.delivery_id),
            vec![(
                1,
                AttemptTrigger::Scheduled,
                false,
                None,
                Some(ErrorKind::Interrupted)
            )]
        );
        w.counts();
    }

    pub fn an_expired_lease_is_taken_again_after_the_timeout_plus_30_s(w: &World) {
        w.import(&["a"]);
        w.assign(&["a"], "hook");
        let taken_at = w.now();
        let stale = w.lease_one("one", "a");
        // 2 s of margin: the wall clock runs on between these calls.
        w.clock.advance(Duration::from_secs(30));
        assert!(w.lease("two", 10).is_empty(), "2 s + 30 s have not passed");
        assert_eq!(w.latest("a").state, DeliveryState::InFlight);
        w.clock.advance(Duration::from_secs(2));
        assert!(w.now() > taken_at + 32_000);
        let fresh = w.lease_one("two", "a");
        assert_eq!((fresh.number, fresh.attempts), (2, 0));
        let interrupted = w.detail(&stale.delivery_id).attempt_log;
        assert_eq!(interrupted.len(), 1);
        let a = &interrupted[0];
        assert_eq!(
            (a.number, a.trigger, a.counted, a.status, a.error_kind),
            (
                1,
                AttemptTrigger::Scheduled,
                false,
                None,
                Some(ErrorKind::Interrupted)
            )
        );
        assert!(
            a.started_at.timestamp_millis() >= taken_at + 32_000,
            "written at reclaim"
        );
        assert_eq!(w.latest("a").last_error_kind, Some(ErrorKind::Interrupted));

        // The first dispatcher's answer arrives late: recorded, nothing else.
        let before = w.at("a");
        let rec = w.record(&stale, w.answer(200));
        assert!(rec.lease_lost);
        assert_eq!(w.at("a"), before);
        assert_eq!(
            w.attempts(&stale.delivery_id),
            vec![(1, AttemptTrigger::Scheduled, false, Some(200), None)]
        );
        let rec = w.record(&fresh, w.answer(500));
        assert_eq!(
            (rec.state, rec.attempts),
            (DeliveryState::RetryScheduled, 1)
        );
        // The fresh lease expires too while its retry waits: nothing to reclaim.
        w.clock.advance(Duration::from_secs(40));
        let third = w.lease_one("three", "a");
        assert_eq!((third.number, third.attempts), (3, 1));
        assert_eq!(
            w.attempts(&stale.delivery_id).len(),
            2,
            "no interrupted row for a finished lease"
        );
    }

    /// §6 leasing: a lease held by a process on this host that no longer exists is taken at
    /// once, with an `interrupted` attempt; a live process's lease is not.
    pub fn a_dead_local_dispatchers_leases_are_taken_at_once(w: &World) {
        w.import(&["a", "b"]);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let here = hookops::store::hostname();
        let beat = |id: &str, pid: u32, start: Option<String>| w.beat(id, &here, pid, start);
        beat("dead", dead_pid, None);
        beat("live", me, hookops::store::process_start(me));
        assert_eq!(w.store.dispatchers().unwrap().len(), 2);

        w.assign(&["a"], "hook");
        let lost = w.lease_one("dead", "a");
        w.assign(&["b"], "hook");
        let kept = w.lease_one("live", "b");

        let dead = w.store.dead_local_dispatchers().unwrap();
        assert_eq!(dead, vec!["dead".to_string()]);
        let taken = w.lease_reclaiming("new", 10, dead);
        assert_eq!(taken.len(), 1, "only the dead process's lease");
        assert_eq!(taken[0].delivery_id, lost.delivery_id);
        assert_eq!(taken[0].number, 2);
        assert_eq!(
            w.attempts(&lost.delivery_id),
            vec![(
                1,
                AttemptTrigger::Scheduled,
                false,
                None,
                Some(ErrorKind::Interrupted)
            )]
        );
        assert_eq!(
            w.dispatcher_ids(),
            vec!["live"],
            "the dead one's row is gone"
        );
        assert_eq!(w.latest("b").state, DeliveryState::InFlight);
        assert!(w.attempts(&kept.delivery_id).is_empty());
        assert!(w.store.dead_local_dispatchers().unwrap().is_empty());
        w.rt.block_on(w.store.unregister_dispatcher("live"))
            .unwrap();
        assert!(w.store.dispatchers().unwrap().is_empty());
    }

    /// Design §7: a dispatcher on another host is never judged by its pid. Silent, its lease
    /// is taken only when it expires, and its heartbeat row goes (at another dispatcher's
    /// beat) only once it has been silent for two minutes and holds no lease, so `check`
    /// does not report a host that died long ago as a stale dispatcher forever.
    pub fn a_silent_dispatcher_of_another_host_leaves_once_its_leases_were_taken(w: &World) {
        w.import(&["a"]);
        let beat = |id: &str, host: &str| w.beat(id, host, 1, None);
        let ids = |w: &World| w.dispatcher_ids();
        beat("far", "far-host");
        beat("idle-far", "other-far-host");
        w.assign(&["a"], "hook");
        let lost = w.lease_one("far", "a");
        // Silent for a minute: both rows stay (nobody has leased since).
        w.clock.advance(Duration::from_secs(60));
        beat("near", &hookops::store::hostname());
        assert_eq!(ids(w), vec!["far", "idle-far", "near"]);
        // Silent for three minutes: the idle one goes; far still holds its (expired) lease.
        w.clock.advance(Duration::from_secs(120));
        beat("near", &hookops::store::hostname());
        assert_eq!(ids(w), vec!["far", "near"]);
        // Its lease expired long ago: another dispatcher takes it, then far's row goes too.
        let taken = w.lease("near", 10);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].delivery_id, lost.delivery_id);
        beat("near", &hookops::store::hostname());
        assert_eq!(ids(w), vec!["near"]);
        w.rt.block_on(w.store.unregister_dispatcher("near"))
            .unwrap();
    }

    /// §6 leasing: on shutdown a dispatcher's leases become `interrupted` attempts (not
    /// counted) and the deliveries are due again at once.
    pub fn shutdown_releases_leases_as_interrupted_attempts_due_now(w: &World) {
        w.import(&["a", "b", "c"]);
        w.assign(&["a", "b"], "hook");
        let leases = w.lease("one", 10);
        assert_eq!(leases.len(), 2);
        w.assign(&["c"], "hook");
        let other = w.lease_one("two", "c");
        let before = now_ms();
        assert_eq!(w.release("one"), 2);
        assert_eq!(w.release("one"), 0, "nothing left to release");
        for l in &leases {
            let d = w.detail(&l.delivery_id).summary;
            assert_eq!((d.state, d.attempts), (DeliveryState::Pending, 0));
            assert_eq!(d.last_error_kind, Some(ErrorKind::Interrupted));
            let due = d.next_attempt_at.unwrap().timestamp_millis();
            assert!(due >= before && due <= now_ms(), "due now: {due}");
            assert_eq!(
                w.attempts(&l.delivery_id),
                vec![(
                    1,
                    AttemptTrigger::Scheduled,
                    false,
                    None,
                    Some(ErrorKind::Interrupted)
                )]
            );
        }
        assert_eq!(
            w.latest("c").state,
            DeliveryState::InFlight,
            "not its lease"
        );
        let again = w.lease("three", 10);
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|l| l.number == 2 && l.attempts == 0));
        let rec = w.record(&other, answer(200));
        assert_eq!(rec.attempts, 1);
    }

    /// §6 leasing: `max_in_flight` caps a stage across all dispatchers, and a stage at its cap
    /// does not hold up the deliveries behind it.
    pub fn max_in_flight_caps_a_stage_across_dispatchers(w: &World) {
        w.import(&["c1", "c2", "c3", "c4", "h1"]);
        w.assign(&["c1", "c2", "c3", "c4"], "capped");
        w.assign(&["h1"], "hook");
        let first = w.lease("one", 10);
        let stages: Vec<&str> = first.iter().map(|l| l.stage.as_str()).collect();
        assert_eq!(stages, vec!["capped", "capped", "hook"]);
        assert!(
            w.lease("two", 10).is_empty(),
            "the cap holds for every owner"
        );
        // And for another process.
        let other = w.other_process();
        let leased =
            w.rt.block_on(other.lease_due("other", 10, Vec::new()))
                .unwrap();
        assert!(leased.is_empty(), "the cap holds across processes");
        assert_eq!(
            w.count_deliveries(DeliveryFilter {
                stage: Some(st("capped")),
                state: Some(DeliveryState::InFlight),
                ..DeliveryFilter::default()
            }),
            2
        );
        w.rt.block_on(other.record_attempt(&first[0], answer(200)))
            .unwrap();
        let next =
            w.rt.block_on(other.lease_due("other", 10, Vec::new()))
                .unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].stage, st("capped"));
        assert!(w.lease("three", 10).is_empty());
        w.counts();
    }

    /// §2, §7: `max_in_flight` holds when processes lease for the stage at the very same
    /// moment (on a server database their lease transactions overlap, and each reads the
    /// stage's in-flight count before the others commit): four processes lease together,
    /// round after round, and the stage never has more in flight than its cap.
    pub fn max_in_flight_holds_when_processes_lease_at_once(w: &World) {
        let ids: Vec<String> = (0..40).map(|i| format!("m{i:02}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        w.import(&refs);
        w.assign(&refs, "capped");
        let stores: Vec<Store> = (0..4).map(|_| w.other_process()).collect();
        for round in 0..15 {
            let start = Arc::new(std::sync::Barrier::new(stores.len()));
            let handles: Vec<_> = stores
                .iter()
                .enumerate()
                .map(|(n, store)| {
                    let (store, start) = (store.clone(), start.clone());
                    std::thread::spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .build()
                            .unwrap();
                        start.wait();
                        rt.block_on(store.lease_due(&format!("p{n}"), 10, Vec::new()))
                            .unwrap()
                    })
                })
                .collect();
            let leases: Vec<Lease> = handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect();
            assert!(
                leases.len() <= 2,
                "round {round}: {} leased at once, cap 2",
                leases.len()
            );
            for l in &leases {
                w.record(l, answer(200));
            }
        }
        w.counts();
    }

    /// §2: several processes lease from one store at once; none ever takes a delivery another
    /// holds, and together they take every due one.
    pub fn processes_leasing_at_once_never_take_the_same_delivery(w: &World) {
        let ids: Vec<String> = (0..60).map(|i| format!("x{i:02}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        w.import(&refs);
        w.assign(&refs, "hook");
        let handles: Vec<_> = (0..3)
            .map(|n| {
                let store = w.other_process();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    let owner = format!("p{n}");
                    let mut got = Vec::new();
                    loop {
                        let leases = rt.block_on(store.lease_due(&owner, 4, Vec::new())).unwrap();
                        if leases.is_empty() {
                            return got;
                        }
                        got.extend(leases.into_iter().map(|l| (l.delivery_id, l.number)));
                    }
                })
            })
            .collect();
        let mut all: Vec<(DeliveryId, i64)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.len(), 60, "every due delivery leased once");
        assert!(all.iter().all(|(_, n)| *n == 1));
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 60, "no delivery leased twice");
        assert_eq!(
            w.count_deliveries(DeliveryFilter {
                state: Some(DeliveryState::InFlight),
                ..DeliveryFilter::default()
            }),
            60
        );
        w.counts();
    }

    /// Wake-up (design §7): a commit of another process reaches this one's change feed (a
    /// NOTIFY on PostgreSQL, `data_version` on SQLite), every time, and once it has been seen
    /// the feed is quiet until the next one.
    pub fn another_processs_commit_reaches_the_change_feed(w: &World) {
        let mut feed = w.store.change_watcher().unwrap();
        let other = w.other_process();
        let noticed = |feed: &mut hookops::store::ChangeWatcher| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !feed.changed().unwrap() {
                assert!(
                    Instant::now() < deadline,
                    "another process's commit went unnoticed"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        for round in 0..3 {
            let line = format!("{{\"id\": \"wake{round}\", \"name\": \"wake{round}.jpg\"}}\n");
            let parsed = hookops::import::parse_jsonl(line.as_bytes()).unwrap();
            other
                .import_items(&wf(), parsed.items, None, OP, &mut |_, _| {})
                .unwrap();
            noticed(&mut feed);
            assert!(!feed.changed().unwrap(), "round {round}: noticed twice");
        }
    }

    /// The dispatcher's batch: records come before the leases of the same job, so the slot
    /// that just finished frees its stage's cap for the next lease.
    pub fn record_and_lease_records_first_so_a_finished_slot_frees_its_stage(w: &World) {
        w.import(&["c1", "c2", "c3"]);
        w.assign(&["c1", "c2", "c3"], "capped");
        let leases = w.lease("one", 10);
        assert_eq!(leases.len(), 2);
        let finished = Arc::new(vec![(leases[0].clone(), answer(200))]);
        let (recorded, next) =
            w.rt.block_on(w.store.record_and_lease("one", move || (finished, 5)))
                .unwrap();
        w.counts();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].state, DeliveryState::Succeeded);
        assert_eq!(recorded[0].routed_to, Some(st("ok-sink")));
        assert_eq!(next.len(), 1, "one slot of the cap came free");
        assert_eq!(next[0].item_id, Some(ItemId::new("c3")));
    }

    /// The dispatcher's batch is all or nothing: when one record fails, no record, lease or
    /// counter change of the job is kept, and each attempt can then be recorded alone.
    pub fn a_batch_that_fails_keeps_nothing_of_its_records_or_leases(w: &World) {
        w.import(&["a", "b", "c"]);
        w.assign(&["a", "b"], "hook");
        let leases = w.lease("one", 10);
        assert_eq!(leases.len(), 2);
        w.assign(&["c"], "hook");
        let mut bogus = leases[1].clone();
        bogus.seq = -1;
        bogus.delivery_id = DeliveryId::new("msg_not_a_delivery");
        let finished = Arc::new(vec![(leases[0].clone(), answer(200)), (bogus, answer(200))]);
        let result =
            w.rt.block_on(w.store.record_and_lease("one", move || (finished, 5)));
        assert!(
            result.is_err(),
            "a record of an unknown delivery fails the batch"
        );
        w.counts();
        assert_eq!(
            w.latest("a").state,
            DeliveryState::InFlight,
            "its record was undone"
        );
        assert!(w.attempts(&leases[0].delivery_id).is_empty());
        assert_eq!(w.at("a").0, "hook");
        assert_eq!(
            w.latest("c").state,
            DeliveryState::Pending,
            "its lease was undone"
        );
        // Alone, each record that can be made is made.
        assert_eq!(
            w.record(&leases[0], answer(200)).state,
            DeliveryState::Succeeded
        );
        assert_eq!(
            w.record(&leases[1], answer(200)).state,
            DeliveryState::Succeeded
        );
        let c = w.lease_one("one", "c");
        assert_eq!(c.number, 1);
    }

    // --- Attempts ----------------------------------------------------------------------------

    /// §6 attempt numbers: allocated at lease, unique per delivery; only scheduled attempts
    /// that were not interrupted count toward `max_attempts`; replays are numbered, not counted.
    pub fn attempt_numbers_are_unique_and_only_scheduled_uninterrupted_ones_count(w: &World) {
        w.import(&["a"]);
        w.assign(&["a"], "hook");
        let id = w.latest("a").id;
        let l1 = w.lease_one("one", "a");
        let r = w.record(&l1, answer_long_ago(503));
        assert_eq!(
            (r.state, r.attempts, r.max_attempts),
            (DeliveryState::RetryScheduled, 1, 3)
        );

        let replay = w.store.begin_replay(&id, OP).unwrap();
        w.counts();
        assert_eq!(
            (replay.number, replay.trigger, replay.token.is_none()),
            (2, AttemptTrigger::Manual, true)
        );
        w.record(&replay, answer(500));

        let l3 = w.lease_one("one", "a");
        assert_eq!((l3.number, l3.attempts), (3, 1));
        w.release("one");
        let l4 = w.lease_one("one", "a");
        assert_eq!((l4.number, l4.attempts), (4, 1));
        let r = w.record(&l4, answer_long_ago(503));
        assert_eq!((r.state, r.attempts), (DeliveryState::RetryScheduled, 2));
        let l5 = w.lease_one("one", "a");
        let r = w.record(&l5, answer_long_ago(503));
        assert_eq!((r.state, r.attempts), (DeliveryState::Failed, 3));
        assert_eq!(r.routed_to, Some(st("fail-sink")));

        use AttemptTrigger::{Manual, Scheduled};
        assert_eq!(
            w.attempts(&id),
            vec![
                (1, Scheduled, true, Some(503), None),
                (2, Manual, false, Some(500), None),
                (3, Scheduled, false, None, Some(ErrorKind::Interrupted)),
                (4, Scheduled, true, Some(503), None),
                (5, Scheduled, true, Some(503), None),
            ]
        );
        assert_eq!(w.latest("a").attempts, 3);
        // The next number is still unique after the delivery failed: a replay takes 6.
        let replay = w.store.begin_replay(&id, OP).unwrap();
        assert_eq!(replay.number, 6);
    }

    /// §2/§6 classification: 2xx succeeds; 408, 429, 5xx, connect, timeout and tls retry;
    /// other 4xx, 3xx, redirect and policy are final at once; the status wins over an error
    /// while reading the body.
    pub fn outcomes_are_classified_by_status_then_error(w: &World) {
        use DeliveryState::{Failed, RetryScheduled, Succeeded};
        let cases: Vec<(&str, Option<u16>, Option<ErrorKind>, DeliveryState)> = vec![
            ("s200", Some(200), None, Succeeded),
            ("s204", Some(204), None, Succeeded),
            ("s200body", Some(200), Some(ErrorKind::Body), Succeeded),
            ("s408", Some(408), None, RetryScheduled),
            ("s429", Some(429), None, RetryScheduled),
            ("s500", Some(500), None, RetryScheduled),
            ("s503body", Some(503), Some(ErrorKind::Body), RetryScheduled),
            ("connect", None, Some(ErrorKind::Connect), RetryScheduled),
            ("timeout", None, Some(ErrorKind::Timeout), RetryScheduled),
            ("tls", None, Some(ErrorKind::Tls), RetryScheduled),
            ("s400", Some(400), None, Failed),
            ("s404", Some(404), None, Failed),
            ("s301", Some(301), Some(ErrorKind::Redirect), Failed),
            ("redirect", None, Some(ErrorKind::Redirect), Failed),
            ("policy", None, Some(ErrorKind::Policy), Failed),
        ];
        let ids: Vec<&str> = cases.iter().map(|c| c.0).collect();
        w.import(&ids);
        for (id, status, error, want) in cases {
            w.assign(&[id], "hook");
            let lease = w.lease_one("one", id);
            let rec = w.record(&lease, outcome_at(now_ms(), status, error));
            assert_eq!(rec.state, want, "{id}");
            assert_eq!(rec.attempts, 1, "{id}");
            let (stage, state, _) = w.at(id);
            let expected = match want {
                Succeeded => ("ok-sink", ItemState::Active),
                RetryScheduled => ("hook", ItemState::InDelivery),
                _ => ("fail-sink", ItemState::Active),
            };
            assert_eq!((stage.as_str(), state), expected, "{id}");
            let d = w.latest(id);
            assert_eq!((d.last_status, d.last_error_kind), (status, error), "{id}");
        }
    }

    /// §6 retry timing: retry k is due at the end of attempt k plus schedule entry
    /// min(k, len) − 1, ±20 %; the last entry repeats; after `max_attempts` the delivery fails.
    pub fn retries_are_due_at_the_attempts_end_plus_the_schedule_entry(w: &World) {
        w.import(&["a"]);
        w.assign(&["a"], "patient");
        let id = w.latest("a").id;
        let windows = [10_000i64, 60_000, 60_000];
        for (k, entry) in windows.iter().enumerate() {
            let lease = w.lease_one("one", "a");
            assert_eq!(lease.attempts, k as i64);
            let o = outcome_at(now_ms() - 10 * MINUTE, None, Some(ErrorKind::Timeout));
            let end = o.started_at + o.duration_ms;
            let rec = w.record(&lease, o);
            assert_eq!(rec.state, DeliveryState::RetryScheduled, "retry {}", k + 1);
            let due = rec.next_attempt_at.unwrap().timestamp_millis();
            // The suite's fixed jitter scales the entry by 1 + 0.2 × JITTER.
            let expected = end + (*entry as f64 * (1.0 + 0.2 * JITTER)).round() as i64;
            assert!(
                (due - expected).abs() <= 1,
                "retry {} due {} ms after the attempt's end, not {} ms (the entry {entry} ms with jitter {JITTER})",
                k + 1,
                due - end,
                expected - end
            );
            assert_eq!(
                w.detail(&id)
                    .summary
                    .next_attempt_at
                    .map(|t| t.timestamp_millis()),
                Some(due)
            );
        }
        let lease = w.lease_one("one", "a");
        let rec = w.record(&lease, answer_long_ago(500));
        assert_eq!(
            (rec.state, rec.attempts, rec.next_attempt_at),
            (DeliveryState::Failed, 4, None)
        );
        assert_eq!(w.at("a").0, "fail-sink");

        // A retry in the future is not due: the schedule is honoured by the lease.
        w.import(&["b"]);
        w.assign(&["b"], "patient");
        let lease = w.lease_one("one", "b");
        let rec = w.record(&lease, answer(503));
        assert_eq!(rec.state, DeliveryState::RetryScheduled);
        assert!(
            w.lease("one", 10).is_empty(),
            "a retry 10 s away is not due yet"
        );
        assert_eq!(
            w.store.next_wakeup().unwrap(),
            rec.next_attempt_at.map(|t| t.timestamp_millis())
        );
    }

    /// §6 retry timing, by the clock: a retry is not leased before its due time and is
    /// leased once it has come.
    pub fn a_retry_is_leased_when_its_due_time_comes(w: &World) {
        w.import(&["a"]);
        w.assign(&["a"], "hook");
        let lease = w.lease_one("one", "a");
        let o = w.answer(503);
        let end = lease_end(&o);
        let rec = w.record(&lease, o);
        let due = rec.next_attempt_at.unwrap().timestamp_millis();
        assert!((end + 7_999..=end + 12_001).contains(&due), "10 s ± 20 %");
        // A second of margin: the wall clock runs on between these calls.
        w.clock
            .advance(Duration::from_millis((due - w.now() - 1_000).max(0) as u64));
        assert!(w.lease("one", 10).is_empty(), "not due yet");
        w.clock.advance(Duration::from_millis(1_001));
        let retry = w.lease_one("one", "a");
        assert_eq!((retry.number, retry.attempts), (2, 1));
        let rec = w.record(&retry, w.answer(503));
        let due2 = rec.next_attempt_at.unwrap().timestamp_millis();
        w.clock
            .advance(Duration::from_millis((due2 - w.now() + 10).max(0) as u64));
        let last = w.lease_one("one", "a");
        let rec = w.record(&last, w.answer(503));
        assert_eq!((rec.state, rec.attempts), (DeliveryState::Failed, 3));
        assert_eq!(w.at("a").0, "fail-sink");
    }

    /// §6 retry timing: a `Retry-After` on a retryable answer replaces the delay, exactly (no
    /// jitter), clamped to one hour; on a final answer it changes nothing.
    pub fn retry_after_replaces_the_delay_without_jitter_and_is_clamped(w: &World) {
        w.import(&["a", "b", "c"]);
        // Each in a stage of its own: a 429 or 503 with Retry-After also holds its stage
        // (issue 21), which would keep the next one from being leased.
        for (id, stage, header, status, delay) in [
            ("a", "hook", "7", 429, Some(7_000)),
            ("b", "patient", "99999999", 503, Some(3_600_000)),
            ("c", "chain", "7", 400, None),
        ] {
            w.assign(&[id], stage);
            let lease = w.lease_one("one", id);
            let mut o = answer(status);
            o.retry_after = Some(header.into());
            let end = o.started_at + o.duration_ms;
            let rec = w.record(&lease, o);
            assert_eq!(
                rec.next_attempt_at.map(|t| t.timestamp_millis() - end),
                delay,
                "{id}"
            );
        }
    }

    // --- Routing -----------------------------------------------------------------------------

    /// §2 outbox and §6 routing: a final outcome moves the item along `on_success` or
    /// `on_failure` in the record itself: history row, new version, and the next stage's
    /// delivery (or logic stage's hop) already there when the record returns.
    pub fn a_final_outcome_routes_on_either_edge_in_the_record(w: &World) {
        w.import(&["s", "f", "c", "u", "x", "n"]);

        // Success edge.
        w.assign(&["s"], "hook");
        let v = w.at("s").2;
        let lease = w.lease_one("one", "s");
        let rec = w.record(&lease, answer(200));
        assert_eq!(rec.routed_to, Some(st("ok-sink")));
        assert_eq!(rec.item_name.as_deref(), Some("s.jpg"));
        assert_eq!(w.at("s"), ("ok-sink".into(), ItemState::Active, v + 1));
        let last = w.store.item_detail(&ItemId::new("s")).unwrap().history;
        let last = last.last().unwrap();
        assert_eq!(
            (
                last.from.as_ref().map(|s| s.as_str()),
                last.to.as_str(),
                last.cause
            ),
            (Some("hook"), "ok-sink", HistoryCause::WebhookSuccess)
        );
        assert_eq!(last.delivery_id.as_ref(), Some(&lease.delivery_id));

        // Failure edge.
        w.assign(&["f"], "hook");
        let lease = w.lease_one("one", "f");
        let rec = w.record(&lease, answer(400));
        assert_eq!(rec.routed_to, Some(st("fail-sink")));
        assert_eq!(
            w.history("f").last().unwrap(),
            &(
                Some("hook".into()),
                "fail-sink".into(),
                HistoryCause::WebhookFailure
            )
        );

        // Success into another webhook stage: its delivery is made by the same record.
        w.assign(&["c"], "chain");
        let lease = w.lease_one("one", "c");
        let rec = w.record(&lease, answer(200));
        assert_eq!(rec.routed_to, Some(st("hook")));
        let ds = w.deliveries_of("c");
        assert_eq!(ds.len(), 2);
        assert_eq!(
            (ds[0].stage.as_str(), ds[0].state, ds[0].trigger),
            ("hook", DeliveryState::Pending, DeliveryTrigger::Route)
        );
        let entered = w.store.item_detail(&ItemId::new("c")).unwrap().history;
        assert_eq!(
            entered.last().unwrap().at,
            ds[0].created_at,
            "one transaction"
        );
        assert_eq!(w.at("c").1, ItemState::InDelivery);
        let lease = w.lease_one("one", "c");
        assert_eq!(lease.delivery_id, ds[0].id);
        assert_eq!(w.record(&lease, answer(200)).routed_to, Some(st("ok-sink")));

        // Failure through a logic stage: every hop is recorded, automated stages run at once.
        for id in ["u", "x"] {
            w.assign(&[id], "chain");
            let lease = w.lease_one("one", id);
            w.record(&lease, answer(500));
        }
        assert_eq!(
            w.history("u")[w.history("u").len() - 2..].to_vec(),
            vec![
                (
                    Some("chain".into()),
                    "router".into(),
                    HistoryCause::WebhookFailure
                ),
                (Some("router".into()), "ok-sink".into(), HistoryCause::Route),
            ]
        );
        assert_eq!(w.at("u").0, "ok-sink", "tagged urgent");
        assert_eq!(w.at("x").0, "fail-sink", "the else edge");

        // No failure edge: the item stays in the stage, marked failed.
        w.assign(&["n"], "bare");
        let v = w.at("n").2;
        let lease = w.lease_one("one", "n");
        let rec = w.record(&lease, answer(500));
        assert_eq!(rec.state, DeliveryState::Failed);
        assert_eq!(w.at("n"), ("bare".into(), ItemState::Failed, v + 1));
        assert_eq!(
            w.history("n").last().unwrap().1,
            "bare",
            "no hop was recorded"
        );
    }

    /// §6: re-applying a changed file changes what every future attempt uses (the lease
    /// carries the current spec) while the frozen body stays; an outcome routes by the
    /// revision current when it is recorded.
    pub fn a_reapplied_workflow_binds_the_next_attempt_and_body_stays_frozen(w: &World) {
        w.import(&["a"]);
        w.assign(&["a"], "hook");
        let first = w.lease_one("one", "a");
        assert_eq!(first.config().unwrap().url, "http://127.0.0.1:9/hook");
        w.record(&first, answer_long_ago(503));
        let edited = WORKFLOW
            .replace("http://127.0.0.1:9/hook", "http://127.0.0.1:9/fixed")
            .replace(
                "on_success = \"ok-sink\"\non_failure = \"fail-sink\"\n\n# Four",
                "on_success = \"fail-sink\"\non_failure = \"fail-sink\"\n\n# Four",
            );
        assert_ne!(edited, WORKFLOW);
        let spec = hookops::workflow::parse("wf.toml", &edited, &|_| None).unwrap();
        let report = w.store.apply_workflow(&spec, &Vec::new(), OP).unwrap();
        w.counts();
        assert_eq!(report.changed_stages, vec![st("hook")]);
        let second = w.lease_one("one", "a");
        assert_eq!(second.config().unwrap().url, "http://127.0.0.1:9/fixed");
        assert_eq!(second.revision, first.revision + 1);
        assert_eq!(second.body, first.body, "the body was frozen at creation");
        let rec = w.record(&second, answer(200));
        assert_eq!(
            rec.routed_to,
            Some(st("fail-sink")),
            "the edge of the current revision"
        );
        let last = w.store.item_detail(&ItemId::new("a")).unwrap().history;
        assert_eq!(last.last().unwrap().revision, second.revision);
    }

    /// §1/§6: `workflow apply` is idempotent; a stage that still holds items is never dropped
    /// unless told where they go, and then they move (their open deliveries cancelled) in the
    /// apply's own transaction, and the stage is retired, not deleted.
    pub fn apply_is_idempotent_and_retires_a_stage_only_once_its_items_move(w: &World) {
        let spec = |text: &str| hookops::workflow::parse("wf.toml", text, &|_| None).unwrap();
        let again = w
            .store
            .apply_workflow(&spec(WORKFLOW), &Vec::new(), OP)
            .unwrap();
        assert!(again.unchanged);
        assert_eq!(again.revision, 1);
        w.import(&["a"]);
        w.assign(&["a"], "bare");
        let d = w.latest("a").id;

        let start = WORKFLOW.find("# One try and no failure edge").unwrap();
        let end = WORKFLOW.find("# Success goes on").unwrap();
        let without_bare = format!("{}{}", &WORKFLOW[..start], &WORKFLOW[end..]);
        let refused = w
            .store
            .apply_workflow(&spec(&without_bare), &Vec::new(), OP)
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("stage `bare` is removed but holds 1 item(s)"),
            "{refused}"
        );
        assert_eq!(w.store.workflow_detail(&wf()).unwrap().summary.revision, 1);
        assert_eq!(w.at("a").0, "bare");
        w.counts();

        let moves = vec![(st("bare"), st("fail-sink"))];
        let r = w
            .store
            .apply_workflow(&spec(&without_bare), &moves, OP)
            .unwrap();
        w.counts();
        assert_eq!(r.revision, 2);
        assert_eq!(r.retired_stages, vec![st("bare")]);
        assert_eq!(r.moved, vec![(st("bare"), st("fail-sink"), 1)]);
        assert_eq!(w.at("a").0, "fail-sink");
        let cancelled = w.detail(&d).summary;
        assert_eq!(
            (
                cancelled.state,
                cancelled.cancel_reason,
                cancelled.stage.as_str()
            ),
            (
                DeliveryState::Cancelled,
                Some(CancelReason::ItemMoved),
                "bare"
            ),
            "the delivery keeps its (retired) stage"
        );
        assert!(w.lease("one", 10).is_empty());
        let history = w.store.item_detail(&ItemId::new("a")).unwrap().history;
        let last = history.last().unwrap();
        assert_eq!((last.to.as_str(), last.revision), ("fail-sink", 2));
    }

    /// §6 fencing: an item moved by hand while its attempt is on the wire cancels the delivery
    /// (`item_moved`); the late outcome is recorded and routes nothing.
    pub fn a_late_outcome_for_an_item_moved_by_hand_routes_nothing(w: &World) {
        w.import(&["m"]);
        w.assign(&["m"], "hook");
        let lease = w.lease_one("one", "m");
        w.assign(&["m"], "hold");
        let moved = w.at("m");
        let d = w.detail(&lease.delivery_id);
        assert_eq!(d.summary.state, DeliveryState::Cancelled);
        assert_eq!(d.summary.cancel_reason, Some(CancelReason::ItemMoved));
        assert_eq!(d.cancelled_by.as_deref(), Some(OP));

        let rec = w.record(&lease, answer(200));
        assert!(rec.lease_lost);
        assert_eq!(rec.routed_to, None);
        assert_eq!(w.at("m"), moved);
        assert_eq!(w.latest("m").state, DeliveryState::Cancelled);
        assert_eq!(
            w.attempts(&lease.delivery_id),
            vec![(1, AttemptTrigger::Scheduled, false, Some(200), None)]
        );
    }

    /// §6 cancelled: assigning an item into the webhook stage it is in cancels its open
    /// delivery (`item_moved`) and creates a fresh one.
    pub fn reentering_a_webhook_stage_cancels_the_open_delivery_and_makes_a_new_one(w: &World) {
        w.import(&["a"]);
        w.assign(&["a"], "hook");
        let first = w.latest("a");
        let r = w.assign(&["a"], "hook");
        assert_eq!(r.deliveries, 1);
        let ds = w.deliveries_of("a");
        assert_eq!(ds.len(), 2);
        assert_eq!(ds[1].id, first.id);
        assert_eq!(
            (ds[1].state, ds[1].cancel_reason),
            (DeliveryState::Cancelled, Some(CancelReason::ItemMoved))
        );
        assert_eq!(ds[0].state, DeliveryState::Pending);
        let lease = w.lease_one("one", "a");
        assert_eq!(lease.delivery_id, ds[0].id);
    }

    // --- Re-fire, replay, test ---------------------------------------------------------------

    /// §2/§6 re-fire: the item goes back into the delivery's stage and gets a new delivery
    /// linked to the old one; refused for an open delivery, an older one, and an item that has
    /// moved on since.
    pub fn refire_makes_a_new_linked_delivery_and_refuses_what_it_must(w: &World) {
        w.import(&["a", "b"]);
        w.assign(&["a"], "bare");
        let lease = w.lease_one("one", "a");
        w.record(&lease, answer(500));
        let old = w.latest("a");
        assert_eq!(old.state, DeliveryState::Failed);
        let v = w.at("a").2;

        let r = w.store.refire(std::slice::from_ref(&old.id), OP).unwrap();
        w.counts();
        assert_eq!((r.refired, r.created.len(), r.refused.len()), (1, 1, 0));
        let new = w.latest("a");
        assert_eq!(new.id, r.created[0]);
        assert_eq!(new.refire_of.as_ref(), Some(&old.id));
        assert_eq!(
            (new.state, new.trigger, new.attempts),
            (DeliveryState::Pending, DeliveryTrigger::Refire, 0)
        );
        assert_eq!(w.at("a"), ("bare".into(), ItemState::InDelivery, v + 1));
        assert_eq!(
            w.history("a").last().unwrap(),
            &(Some("bare".into()), "bare".into(), HistoryCause::Refire)
        );
        assert_eq!(
            w.detail(&old.id).summary.state,
            DeliveryState::Failed,
            "unchanged"
        );

        // Refused: the older one, and the new one while it is open.
        let r = w
            .store
            .refire(&[old.id.clone(), new.id.clone()], OP)
            .unwrap();
        w.counts();
        assert_eq!(r.refired, 0);
        assert_eq!(r.refused[0].kind, RefusalKind::Stale);
        assert!(
            r.refused[0].reason.contains("newer"),
            "{}",
            r.refused[0].reason
        );
        assert!(
            r.refused[1].reason.contains("still pending"),
            "{}",
            r.refused[1].reason
        );

        // Allowed after it routed the item on, while the item has not moved since.
        let lease = w.lease_one("one", "a");
        w.record(&lease, answer(200));
        assert_eq!(w.at("a").0, "ok-sink");
        let r = w.store.refire(std::slice::from_ref(&new.id), OP).unwrap();
        w.counts();
        assert_eq!(r.refired, 1, "{:?}", r.refused);
        assert_eq!(w.at("a").0, "bare");
        let lease = w.lease_one("one", "a");
        w.record(&lease, answer(200));

        // Refused once the item has moved on by hand.
        w.assign(&["b"], "bare");
        let lease = w.lease_one("one", "b");
        w.record(&lease, answer(200));
        let d = w.latest("b");
        let adv = w
            .store
            .advance(&[ItemId::new("b")], None, &Expect::default(), OP)
            .unwrap();
        w.counts();
        assert_eq!(adv.moved, 1);
        let r = w.store.refire(std::slice::from_ref(&d.id), OP).unwrap();
        assert_eq!(r.refired, 0);
        assert_eq!(r.refused[0].kind, RefusalKind::Stale);
        assert!(
            r.refused[0].reason.contains("moved since"),
            "{}",
            r.refused[0].reason
        );
        assert_eq!(w.at("b").0, "done");
        assert_eq!(w.deliveries_of("b").len(), 1);
    }

    /// §6 replay: the frozen bytes again as a manual attempt of the same delivery; it never
    /// moves the item, never changes the delivery's state, next attempt time or routing, and
    /// never counts.
    pub fn replay_is_a_manual_attempt_that_changes_nothing(w: &World) {
        w.import(&["a", "b"]);
        w.assign(&["a"], "bare");
        let lease = w.lease_one("one", "a");
        w.record(&lease, answer(500));
        let before = w.latest("a");
        let at = w.at("a");

        let replay = w.store.begin_replay(&before.id, OP).unwrap();
        w.counts();
        assert_eq!(replay.body, lease.body, "the frozen bytes");
        let rec = w.record(&replay, answer(200));
        assert!(!rec.lease_lost);
        assert_eq!(rec.routed_to, None);
        let after = w.latest("a");
        assert_eq!(after.id, before.id, "no new delivery");
        assert_eq!(
            (after.state, after.attempts, after.next_attempt_at),
            (before.state, before.attempts, before.next_attempt_at)
        );
        assert_eq!(w.at("a"), at);
        assert_eq!(
            w.attempts(&before.id),
            vec![
                (1, AttemptTrigger::Scheduled, true, Some(500), None),
                (2, AttemptTrigger::Manual, false, Some(200), None),
            ]
        );

        // A replay of a delivery waiting for its retry keeps its due time.
        w.assign(&["b"], "hook");
        let lease = w.lease_one("one", "b");
        let rec = w.record(&lease, answer(503));
        let due = rec.next_attempt_at;
        let replay = w.store.begin_replay(&rec.delivery_id, OP).unwrap();
        w.record(&replay, answer(500));
        let d = w.latest("b");
        assert_eq!(
            (d.state, d.attempts, d.next_attempt_at),
            (DeliveryState::RetryScheduled, 1, due)
        );
        assert!(
            w.store
                .begin_replay(&DeliveryId::new("msg_nope"), OP)
                .is_err()
        );
    }

    /// §2 test: a `webhook.test` delivery of the stage, sent once, never counted or retried,
    /// moving nothing.
    pub fn a_test_delivery_is_manual_moves_nothing_and_is_never_retried(w: &World) {
        w.import(&["a"]);
        let lease = w.store.begin_test(&wf(), &st("hook"), OP).unwrap();
        w.counts();
        assert_eq!(
            (
                lease.number,
                lease.trigger,
                lease.event,
                lease.item_id.clone()
            ),
            (1, AttemptTrigger::Manual, EventType::WebhookTest, None)
        );
        assert!(w.lease("one", 10).is_empty(), "nobody else sends it");
        let rec = w.record(&lease, answer(503));
        assert_eq!(
            (rec.state, rec.attempts),
            (DeliveryState::Failed, 0),
            "never retried"
        );
        let d = w.detail(&lease.delivery_id);
        assert_eq!(
            (d.summary.event, d.summary.trigger, d.summary.item_id),
            (EventType::WebhookTest, DeliveryTrigger::Test, None)
        );
        assert_eq!(
            w.attempts(&lease.delivery_id),
            vec![(1, AttemptTrigger::Manual, false, Some(503), None)]
        );
        let ok = w.store.begin_test(&wf(), &st("hook"), OP).unwrap();
        assert_eq!(w.record(&ok, answer(200)).state, DeliveryState::Succeeded);
        assert_eq!(w.at("a"), ("hold".into(), ItemState::Active, 1));
        assert!(
            w.store.begin_test(&wf(), &st("hold"), OP).is_err(),
            "not a webhook stage"
        );
        // Tests never count toward auto-pause (fragile pauses after two failures).
        for _ in 0..2 {
            let t = w.store.begin_test(&wf(), &st("fragile"), OP).unwrap();
            w.record(&t, answer(500));
        }
        assert_eq!(w.stage_paused("fragile"), (false, None));
    }

    // --- Cancel and pause --------------------------------------------------------------------

    /// §6 cancelled (operator): an open delivery is cancelled, its item's version bumped and
    /// routed along `on_failure` once; the attempt still on the wire is recorded and routes
    /// nothing; a cancel never counts toward auto-pause.
    pub fn cancel_with_an_attempt_in_flight_routes_once(w: &World) {
        w.import(&["s", "t", "p"]);
        w.assign(&["s"], "fragile");
        let lease = w.lease_one("one", "s");
        let v = w.at("s").2;
        let r = w
            .store
            .cancel_deliveries(std::slice::from_ref(&lease.delivery_id), OP)
            .unwrap();
        w.counts();
        assert_eq!(r.cancelled, 1);
        assert_eq!(r.routed, vec![(ItemId::new("s"), st("fail-sink"))]);
        assert_eq!(w.at("s"), ("fail-sink".into(), ItemState::Active, v + 1));
        let moves: Vec<_> = w
            .store
            .item_detail(&ItemId::new("s"))
            .unwrap()
            .history
            .into_iter()
            .filter(|h| h.from.as_ref().is_some_and(|f| f.as_str() == "fragile"))
            .map(|h| (h.to.to_string(), h.cause, h.operator))
            .collect();
        assert_eq!(
            moves,
            vec![(
                "fail-sink".to_string(),
                HistoryCause::Cancelled,
                Some(OP.to_string())
            )]
        );

        let rec = w.record(&lease, answer(200));
        assert!(rec.lease_lost);
        assert_eq!(
            w.at("s"),
            ("fail-sink".into(), ItemState::Active, v + 1),
            "routed once"
        );
        let d = w.detail(&lease.delivery_id);
        assert_eq!(
            (
                d.summary.state,
                d.summary.cancel_reason,
                d.cancelled_by.as_deref()
            ),
            (
                DeliveryState::Cancelled,
                Some(CancelReason::Operator),
                Some(OP)
            )
        );
        assert_eq!(
            w.attempts(&lease.delivery_id),
            vec![(1, AttemptTrigger::Scheduled, false, Some(200), None)]
        );

        // A pending one; two cancels in a stage that pauses after two failures.
        w.assign(&["t"], "fragile");
        let r = w.store.cancel_deliveries(&[w.latest("t").id], OP).unwrap();
        w.counts();
        assert_eq!(r.routed, vec![(ItemId::new("t"), st("fail-sink"))]);
        assert_eq!(w.stage_paused("fragile"), (false, None));

        // Without on_failure the item stays, marked failed: not a route.
        w.assign(&["p"], "bare");
        let id = w.latest("p").id;
        let r = w
            .store
            .cancel_deliveries(std::slice::from_ref(&id), OP)
            .unwrap();
        w.counts();
        assert_eq!((r.cancelled, r.routed.len()), (1, 0));
        assert_eq!(w.at("p").0, "bare");
        assert_eq!(w.at("p").1, ItemState::Failed);
        let r = w
            .store
            .cancel_deliveries(std::slice::from_ref(&id), OP)
            .unwrap();
        assert_eq!(r.cancelled, 0);
        assert!(
            r.refused[0].reason.contains("already cancelled"),
            "{:?}",
            r.refused
        );
    }

    /// Issue 8's cancel by filter: every open delivery matching it (pending, retry_scheduled
    /// and in_flight), oldest first; a finished state is refused.
    pub fn cancel_selects_open_deliveries_by_filter_oldest_first(w: &World) {
        w.import(&["a", "b", "c", "d"]);
        w.assign(&["a"], "hook");
        let a = w.lease_one("one", "a");
        w.record(&a, answer(503)); // retry_scheduled
        w.assign(&["b"], "hook");
        let b = w.lease_one("one", "b"); // in_flight
        w.assign(&["c"], "hook"); // pending
        w.assign(&["d"], "bare"); // another stage
        let hook = DeliveryFilter {
            stage: Some(st("hook")),
            ..DeliveryFilter::default()
        };
        let open = w.store.open_deliveries(&hook, None).unwrap();
        assert_eq!(
            open,
            vec![
                a.delivery_id.clone(),
                b.delivery_id.clone(),
                w.latest("c").id
            ]
        );
        assert_eq!(w.store.open_deliveries(&hook, Some(2)).unwrap().len(), 2);
        let retrying = DeliveryFilter {
            state: Some(DeliveryState::RetryScheduled),
            ..hook.clone()
        };
        assert_eq!(
            w.store.open_deliveries(&retrying, None).unwrap(),
            vec![a.delivery_id.clone()]
        );
        let finished = DeliveryFilter {
            state: Some(DeliveryState::Failed),
            ..hook.clone()
        };
        assert!(w.store.open_deliveries(&finished, None).is_err());

        let r = w.store.cancel_deliveries(&open, OP).unwrap();
        w.counts();
        assert_eq!(r.cancelled, 3);
        assert_eq!(r.routed.len(), 3);
        for id in ["a", "b", "c"] {
            assert_eq!(w.at(id).0, "fail-sink", "{id}");
        }
        assert!(w.store.open_deliveries(&hook, None).unwrap().is_empty());
        assert_eq!(w.latest("d").state, DeliveryState::Pending, "not matched");
        assert!(w.record(&b, answer(200)).lease_lost);
        assert_eq!(w.at("b").0, "fail-sink");
    }

    /// §2 re-fire of "every failed delivery matching a filter" takes only each item's latest
    /// `stage.webhook` delivery, oldest first (an older one would only be refused).
    pub fn bulk_refire_takes_only_each_items_latest_failed_delivery(w: &World) {
        w.import(&["a", "b", "c"]);
        for id in ["a", "b", "c"] {
            w.assign(&[id], "bare");
            let lease = w.lease_one("one", id);
            w.record(&lease, answer(if id == "c" { 200 } else { 500 }));
        }
        let first_a = w.latest("a").id;
        assert_eq!(
            w.store
                .refire(std::slice::from_ref(&first_a), OP)
                .unwrap()
                .refired,
            1
        );
        let lease = w.lease_one("one", "a");
        w.record(&lease, answer(500));
        let failed = w
            .store
            .failed_deliveries(
                &DeliveryFilter {
                    workflow: Some(wf()),
                    ..DeliveryFilter::default()
                },
                None,
            )
            .unwrap();
        assert_eq!(failed, vec![w.latest("b").id, w.latest("a").id]);
        assert!(!failed.contains(&first_a));
        let r = w.store.refire(&failed, OP).unwrap();
        w.counts();
        assert_eq!((r.refired, r.refused.len()), (2, 0));
        assert!(
            w.store
                .failed_deliveries(&DeliveryFilter::default(), None)
                .unwrap()
                .is_empty()
        );
    }

    /// §6 compare-and-set: an assign or advance that names the stage or version the operator
    /// saw is refused, saying where the item is now, once the item has moved.
    pub fn moves_are_compare_and_set_on_stage_and_version(w: &World) {
        w.import(&["a", "b"]);
        let v = w.at("a").2;
        let r = w
            .store
            .assign(
                &wf(),
                &st("ok-sink"),
                &AssignTarget::Versions(vec![(ItemId::new("a"), v), (ItemId::new("b"), v + 1)]),
                None,
                OP,
            )
            .unwrap();
        w.counts();
        assert_eq!(r.moved, 1);
        assert_eq!(r.refused.len(), 1);
        assert_eq!(r.refused[0].item_id, ItemId::new("b"));
        assert_eq!(r.refused[0].kind, RefusalKind::Stale);
        assert!(
            r.refused[0].reason.contains("is now in stage `hold`"),
            "{}",
            r.refused[0].reason
        );
        let r = w
            .store
            .assign(
                &wf(),
                &st("fail-sink"),
                &AssignTarget::Items(vec![ItemId::new("a"), ItemId::new("b")]),
                Some(&st("hold")),
                OP,
            )
            .unwrap();
        w.counts();
        assert_eq!((r.moved, r.refused.len()), (1, 1));
        assert_eq!(r.refused[0].item_id, ItemId::new("a"));
        assert_eq!(w.at("a").0, "ok-sink");
        assert_eq!(w.at("b").0, "fail-sink");
        let stale = Expect {
            stage: Some(st("hold")),
            version: None,
        };
        let r = w
            .store
            .advance(&[ItemId::new("a")], None, &stale, OP)
            .unwrap();
        assert_eq!((r.moved, r.refused.len()), (0, 1));
        let fresh = Expect {
            stage: Some(st("ok-sink")),
            version: Some(w.at("a").2),
        };
        let r = w
            .store
            .advance(&[ItemId::new("a")], None, &fresh, OP)
            .unwrap();
        w.counts();
        assert_eq!(r.moved, 1);
        assert_eq!(w.at("a"), ("done".into(), ItemState::Done, v + 2));
        assert!(
            w.store
                .assign(
                    &wf(),
                    &st("nowhere"),
                    &AssignTarget::Items(vec![ItemId::new("a")]),
                    None,
                    OP
                )
                .is_err()
        );
    }

    /// §2/§6 pause: a paused stage keeps creating deliveries and leaves them pending (retries
    /// included); replay and test are sent at once; resuming lets them go.
    pub fn a_paused_stage_leases_nothing_but_replay_and_test_still_go(w: &World) {
        w.import(&["a", "r"]);
        w.assign(&["r"], "hook");
        let lease = w.lease_one("one", "r");
        w.record(&lease, answer_long_ago(503)); // a retry, due now
        assert!(w.store.set_paused(&wf(), &st("hook"), true, OP).unwrap());
        assert!(
            !w.store.set_paused(&wf(), &st("hook"), true, OP).unwrap(),
            "already paused"
        );
        w.counts();
        assert_eq!(
            w.stage_paused("hook"),
            (true, Some(format!("paused by {OP}")))
        );
        assert!(w.store.set_paused(&wf(), &st("hold"), true, OP).is_err());

        let r = w.assign(&["a"], "hook");
        assert_eq!(r.deliveries, 1);
        assert_eq!(w.latest("a").state, DeliveryState::Pending);
        assert!(
            w.lease("one", 10).is_empty(),
            "neither the new one nor the retry"
        );

        let test = w.store.begin_test(&wf(), &st("hook"), OP).unwrap();
        assert_eq!(w.record(&test, answer(200)).state, DeliveryState::Succeeded);
        let replay = w.store.begin_replay(&w.latest("r").id, OP).unwrap();
        w.record(&replay, answer(200));

        assert!(w.store.set_paused(&wf(), &st("hook"), false, OP).unwrap());
        w.counts();
        let leases = w.lease("one", 10);
        let mut items: Vec<String> = leases
            .iter()
            .map(|l| l.item_id.as_ref().unwrap().to_string())
            .collect();
        items.sort();
        assert_eq!(items, vec!["a".to_string(), "r".to_string()]);
    }

    /// §2/§6 auto-pause: consecutive failed deliveries of a stage pause it, saying so; a
    /// success or a resume resets the count.
    pub fn a_stage_pauses_itself_after_consecutive_failures(w: &World) {
        w.import(&["f1", "f2", "f3", "f4", "f5", "f6"]);
        let run = |id: &str, status: u16| {
            w.assign(&[id], "fragile");
            let lease = w.lease_one("one", id);
            w.record(&lease, answer(status))
        };
        assert!(!run("f1", 500).paused_stage);
        assert!(!run("f2", 200).paused_stage, "a success resets the count");
        assert!(!run("f3", 500).paused_stage);
        let rec = run("f4", 500);
        assert!(rec.paused_stage);
        let reason = "paused automatically after 2 consecutive failed deliveries";
        assert_eq!(w.stage_paused("fragile"), (true, Some(reason.to_string())));
        assert_eq!(w.at("f4").0, "fail-sink", "the failure still routes");

        w.assign(&["f5"], "fragile");
        assert!(w.lease("one", 10).is_empty());
        w.store
            .set_paused(&wf(), &st("fragile"), false, OP)
            .unwrap();
        w.counts();
        let lease = w.lease_one("one", "f5");
        assert!(
            !w.record(&lease, answer(500)).paused_stage,
            "a resume resets the count"
        );
        assert!(run("f6", 500).paused_stage);
    }

    // --- Notifications -----------------------------------------------------------------------

    /// §6 notifications: one per history row per subscribed event, written in the transaction
    /// of the change; they have no stage, ignore pause, and never cause notifications.
    pub fn notifications_are_written_in_the_transaction_of_their_change(w: &World) {
        w.apply(NOTIFY);
        let count = |event: EventType| {
            w.count_deliveries(DeliveryFilter {
                event: Some(event),
                ..DeliveryFilter::default()
            })
        };
        let all = |w: &World| {
            [
                EventType::ItemCreated,
                EventType::ItemStageChanged,
                EventType::ItemCompleted,
                EventType::DeliveryFailed,
                EventType::StagePaused,
            ]
            .map(|e| {
                w.count_deliveries(DeliveryFilter {
                    event: Some(e),
                    ..DeliveryFilter::default()
                })
            })
        };
        // Import: the landing in the dataset and the move on to `hold` (two history rows).
        w.import(&["n"]);
        assert_eq!(all(w), [1, 1, 0, 0, 0]);
        let created = w
            .store
            .list_deliveries(
                &DeliveryFilter {
                    event: Some(EventType::ItemCreated),
                    ..DeliveryFilter::default()
                },
                None,
                10,
            )
            .unwrap();
        let (created, _) = &created[0];
        assert_eq!(created.stage.as_str(), "notify:0");
        assert_eq!(created.item_id, Some(ItemId::new("n")));
        assert_eq!(created.state, DeliveryState::Pending);

        w.assign(&["n"], "fragile");
        assert_eq!(all(w), [1, 2, 0, 0, 0]);
        // The dispatcher leases the notifications too; they succeed and route nothing.
        let leases = w.lease("one", 10);
        assert_eq!(leases.len(), 4);
        for l in leases.iter().filter(|l| l.event.is_notification()) {
            let rec = w.record(l, answer(200));
            assert_eq!(
                (rec.state, rec.routed_to.clone()),
                (DeliveryState::Succeeded, None)
            );
        }
        let mine = leases
            .iter()
            .find(|l| l.event == EventType::StageWebhook)
            .unwrap();
        let rec = w.record(mine, answer(400));
        assert_eq!(rec.routed_to, Some(st("fail-sink")));
        assert_eq!(
            all(w),
            [1, 3, 0, 1, 0],
            "the failure and its route, in the record"
        );
        let failed = w
            .store
            .list_deliveries(
                &DeliveryFilter {
                    event: Some(EventType::DeliveryFailed),
                    ..DeliveryFilter::default()
                },
                None,
                10,
            )
            .unwrap();
        let body = w.detail(&failed[0].0.id).body;
        assert_eq!(body["type"], "delivery.failed");
        assert_eq!(body["data"]["delivery_id"], mine.delivery_id.as_str());
        assert_eq!(body["data"]["last_status"], 400);

        let adv = w
            .store
            .advance(&[ItemId::new("n")], None, &Expect::default(), OP)
            .unwrap();
        w.counts();
        assert_eq!(adv.moved, 1);
        assert_eq!(all(w), [1, 4, 1, 1, 0]);

        // Pausing (by hand) writes `stage.paused`; the notifications still go (no stage).
        w.store.set_paused(&wf(), &st("fragile"), true, OP).unwrap();
        w.counts();
        assert_eq!(count(EventType::StagePaused), 1);
        let leases = w.lease("one", 100);
        assert!(leases.iter().all(|l| l.event.is_notification()));
        assert_eq!(leases.len(), 5, "all but the three already sent");
        // A failed notification routes nothing and notifies nobody.
        for l in &leases {
            let rec = w.record(l, answer(400));
            assert_eq!(
                (rec.state, rec.routed_to.clone(), rec.paused_stage),
                (DeliveryState::Failed, None, false)
            );
        }
        assert_eq!(all(w), [1, 4, 1, 1, 1]);
        assert_eq!(w.at("n").0, "done");
    }

    // --- Import ------------------------------------------------------------------------------

    /// §6 identity: an id already present is skipped and counted, never overwritten (its
    /// differing content is reported); a line without an id gets the same UUIDv5 each time; an
    /// id of another workflow is refused before anything is written.
    pub fn import_is_idempotent_and_never_overwrites(w: &World) {
        let lines = vec![
            json!({"id": "a", "name": "a.jpg"}),
            json!({"id": "b", "name": "b.jpg"}),
            json!({"name": "no-id.jpg", "tags": ["x"]}),
        ];
        let r = w.import_lines(&wf(), &lines);
        assert_eq!((r.imported, r.already_present), (3, 0));
        assert_eq!(r.landed.get("hold"), Some(&3));
        let again = w.import_lines(&wf(), &lines);
        assert_eq!((again.imported, again.already_present), (0, 3));
        assert!(again.differing.is_empty());
        assert!(again.created.is_empty());

        let changed = vec![
            json!({"id": "b", "name": "renamed.jpg"}),
            json!({"id": "c", "name": "c.jpg"}),
        ];
        let r = w.import_lines(&wf(), &changed);
        assert_eq!((r.imported, r.already_present), (1, 1));
        assert_eq!(r.differing, vec![ItemId::new("b")]);
        assert_eq!(w.item("b").name, "b.jpg", "never overwritten");
        assert_eq!(w.item("b").version, 1);
        let all = w.store.count_items(&ItemFilter::default()).unwrap();
        assert_eq!(all, 4);
        // Each item's history starts with its import, once.
        assert_eq!(
            w.history("a"),
            vec![
                (None, "dataset".into(), HistoryCause::Import),
                (Some("dataset".into()), "hold".into(), HistoryCause::Route),
            ]
        );

        // Another workflow: an id of this one is a line error, and nothing is written.
        let other = WORKFLOW.replacen("id = \"wf\"", "id = \"other\"", 1);
        let spec = hookops::workflow::parse("other.toml", &other, &|_| None).unwrap();
        w.store.apply_workflow(&spec, &Vec::new(), OP).unwrap();
        let text = "{\"id\": \"z\", \"name\": \"z\"}\n{\"id\": \"a\", \"name\": \"a\"}\n";
        let parsed = hookops::import::parse_jsonl(text.as_bytes()).unwrap();
        assert_eq!((parsed.items.len(), parsed.errors.len()), (2, 0));
        let err = w
            .store
            .import_items(
                &WorkflowId::new("other"),
                parsed.items,
                None,
                OP,
                &mut |_, _| {},
            )
            .unwrap_err();
        assert_eq!(err.done, 0);
        assert!(
            err.to_string().contains("already exists in workflow `wf`"),
            "{err}"
        );
        assert!(w.store.item(&ItemId::new("z")).is_err());
        w.counts();
    }

    // --- Prune -------------------------------------------------------------------------------

    /// Prune removes finished deliveries (and their attempts) older than the cutoff, keeping
    /// each item's latest delivery per stage and every open delivery.
    pub fn prune_keeps_the_latest_delivery_per_item_and_stage_and_open_ones(w: &World) {
        w.import(&["p", "q", "r"]);
        // p: three failed deliveries in `bare` (the first and two re-fires), then one in `hook`.
        w.assign(&["p"], "bare");
        for round in 0..3 {
            let lease = w.lease_one("one", "p");
            w.record(&lease, answer(500));
            if round < 2 {
                let latest = w.latest("p").id;
                assert_eq!(w.store.refire(&[latest], OP).unwrap().refired, 1);
                w.counts();
            }
        }
        w.assign(&["p"], "hook");
        let lease = w.lease_one("one", "p");
        w.record(&lease, answer(200));
        // q: entered `bare` twice while it is paused: one cancelled, one pending.
        w.store.set_paused(&wf(), &st("bare"), true, OP).unwrap();
        w.assign(&["q"], "bare");
        w.assign(&["q"], "bare");
        // r: a test delivery of `hook` and a replayed success.
        let test = w.store.begin_test(&wf(), &st("hook"), OP).unwrap();
        w.record(&test, answer(200));
        w.assign(&["r"], "hook");
        let lease = w.lease_one("one", "r");
        w.record(&lease, answer(200));
        let replay = w.store.begin_replay(&lease.delivery_id, OP).unwrap();
        w.record(&replay, answer(200));
        let p = w.deliveries_of("p");
        assert_eq!(p.len(), 4);
        // A month later, one more finished delivery that is not its item's latest (a test).
        w.clock.advance(Duration::from_secs(31 * 86_400));
        let recent = w.store.begin_test(&wf(), &st("hook"), OP).unwrap();
        w.record(&recent, w.answer(200));

        let opts = |dry_run| PruneOptions {
            older_than: Duration::from_secs(30 * 86_400),
            audit_older_than: None,
            dry_run,
        };
        let dry = w.store.prune(&opts(true), OP).unwrap();
        // p's two older `bare` deliveries (1 attempt each), q's cancelled one, the test.
        assert_eq!((dry.deliveries, dry.attempts), (4, 3));
        assert_eq!(w.deliveries_of("p").len(), 4, "a dry run removes nothing");
        let r = w.store.prune(&opts(false), OP).unwrap();
        w.counts();
        assert_eq!((r.deliveries, r.attempts), (4, 3));
        assert_eq!(r.kept_latest, 3, "p in bare, p in hook, r in hook");
        assert_eq!(r.kept_open, 1, "q's pending delivery");

        let kept: Vec<DeliveryId> = w.deliveries_of("p").into_iter().map(|d| d.id).collect();
        assert_eq!(kept, vec![p[0].id.clone(), p[1].id.clone()]);
        for gone in &p[2..] {
            assert!(
                w.store.delivery_detail(&gone.id).is_err(),
                "{} was pruned",
                gone.id
            );
        }
        assert!(w.store.delivery_detail(&test.delivery_id).is_err());
        assert_eq!(
            w.attempts(&recent.delivery_id).len(),
            1,
            "younger than the cutoff: kept"
        );
        let q: Vec<_> = w.deliveries_of("q").into_iter().map(|d| d.state).collect();
        assert_eq!(q, vec![DeliveryState::Pending]);
        assert_eq!(
            w.attempts(&lease.delivery_id).len(),
            2,
            "kept with its attempts"
        );
        let again = w.store.prune(&opts(false), OP).unwrap();
        assert_eq!(again.deliveries, 0);
        w.counts();
    }

    // --- List cursors ------------------------------------------------------------------------

    /// Item pages (every order, every filter, any page size) return exactly the rows of one
    /// full read, in its order; an item that enters the stage while it is being paged comes
    /// at the end, once.
    pub fn item_pages_never_skip_or_repeat_a_row(w: &World) {
        // Names in the reverse of import order, so the name order differs from `seq`.
        let ids = ["i1", "i2", "i3", "i4", "i5", "i6", "i7"];
        let lines: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| json!({"id": id, "name": format!("{}-{id}", 9 - n)}))
            .collect();
        w.import_lines(&wf(), &lines);
        w.assign(&["i2", "i5"], "ok-sink");
        w.assign(&["i5"], "hold");
        let filters = [
            ItemFilter::default(),
            ItemFilter {
                stage: Some(st("hold")),
                ..ItemFilter::default()
            },
            ItemFilter {
                order: ItemOrder::Name,
                ..ItemFilter::default()
            },
            ItemFilter {
                workflow: Some(wf()),
                stage: Some(st("hold")),
                order: ItemOrder::Name,
                ..ItemFilter::default()
            },
            ItemFilter {
                search: Some("-i".into()),
                state: Some(ItemState::Active),
                ..ItemFilter::default()
            },
        ];
        for f in &filters {
            let full = ids_of(&w.store.list_items(f, None, 1000).unwrap());
            assert_eq!(full.len() as i64, w.store.count_items(f).unwrap());
            for limit in 1..=4 {
                let paged = all_pages(
                    limit,
                    |after, n| w.store.list_items(f, after.as_ref(), n).unwrap(),
                    |r: &ItemRow| r.cursor.clone(),
                );
                assert_eq!(ids_of(&paged), full, "{f:?} by {limit}");
                // The reverse keyset read (the console's `G`, then up): from the end, each
                // page the rows just before the previous one, in list order.
                let mut back: Vec<ItemRow> = Vec::new();
                loop {
                    let page = w
                        .store
                        .list_items_before(f, back.first().map(|r| &r.cursor), limit)
                        .unwrap();
                    if page.is_empty() {
                        break;
                    }
                    assert!(page.len() <= limit);
                    back.splice(0..0, page);
                }
                assert_eq!(ids_of(&back), full, "{f:?} backward by {limit}");
            }
        }
        let hold = ItemFilter {
            stage: Some(st("hold")),
            ..ItemFilter::default()
        };
        assert_eq!(
            ids_of(&w.store.list_items(&hold, None, 100).unwrap()),
            vec!["i1", "i3", "i4", "i6", "i7", "i5"],
            "oldest arrival first"
        );
        let by_name = ItemFilter {
            order: ItemOrder::Name,
            ..ItemFilter::default()
        };
        assert_eq!(
            ids_of(&w.store.list_items(&by_name, None, 100).unwrap()),
            vec!["i7", "i6", "i5", "i4", "i3", "i2", "i1"]
        );

        // Items entering the stage while it is paged come after the page end, once.
        let page = w.store.list_items(&hold, None, 3).unwrap();
        w.assign(&["i2"], "hold");
        w.assign(&["i3"], "ok-sink");
        let rest = all_pages(
            2,
            |after, n| {
                let after = after.or_else(|| Some(page.last().unwrap().cursor.clone()));
                w.store.list_items(&hold, after.as_ref(), n).unwrap()
            },
            |r: &ItemRow| r.cursor.clone(),
        );
        assert_eq!(ids_of(&page), vec!["i1", "i3", "i4"]);
        assert_eq!(ids_of(&rest), vec!["i6", "i7", "i5", "i2"]);
    }

    /// The console pages a stage oldest arrival first. An item entering the stage in the same
    /// millisecond as the last row of the page read, but with an older `seq`, must still come
    /// after that row (it arrived later), not before the cursor where no page will find it.
    pub fn an_item_entering_a_stage_in_the_same_millisecond_is_not_skipped(w: &World) {
        w.import(&["a", "b"]);
        w.assign(&["a", "b"], "ok-sink");
        let hold = ItemFilter {
            stage: Some(st("hold")),
            ..ItemFilter::default()
        };
        // A process whose clock stands still: both moves happen in the same millisecond,
        // whatever the backend's speed.
        let still = (w.open)(Clock::manual(now_ms()));
        let to_hold = |id: &str| {
            still
                .assign(
                    &wf(),
                    &st("hold"),
                    &AssignTarget::Items(vec![ItemId::new(id)]),
                    None,
                    OP,
                )
                .unwrap()
        };
        to_hold("b");
        let page = still.list_items(&hold, None, 1).unwrap();
        assert_eq!(ids_of(&page), vec!["b"]);
        // `a` has the older `seq` and enters in the same millisecond as `b`.
        to_hold("a");
        let rest = still.list_items(&hold, Some(&page[0].cursor), 10).unwrap();
        assert_eq!(
            ids_of(&rest),
            vec!["a"],
            "`a` entered `hold` after `b`: the page after `b` must hold it"
        );
        let full = ids_of(&still.list_items(&hold, None, 10).unwrap());
        assert_eq!(full, vec!["b", "a"], "arrival order");
        let entered: Vec<_> = still
            .list_items(&hold, None, 10)
            .unwrap()
            .iter()
            .map(|r| r.entered_at.timestamp_millis())
            .collect();
        assert_eq!(
            entered[1],
            entered[0] + 1,
            "`a` takes the millisecond after `b`'s"
        );
        w.counts();
    }

    /// Processes' clocks differ (on one host by little, but they do). An item that enters a
    /// stage from a process whose clock is behind the stage's last arrival, by a move or by an
    /// import, still comes after it: a reader paged up to that arrival must find it.
    pub fn an_item_entering_a_stage_from_a_process_whose_clock_is_behind_is_not_skipped(w: &World) {
        w.import(&["a", "b"]);
        w.assign(&["a", "b"], "ok-sink");
        let ahead_clock = Clock::adjustable();
        ahead_clock.advance(Duration::from_secs(60));
        let ahead = (w.open)(ahead_clock);
        ahead
            .assign(
                &wf(),
                &st("hold"),
                &AssignTarget::Items(vec![ItemId::new("b")]),
                None,
                OP,
            )
            .unwrap();
        let hold = ItemFilter {
            stage: Some(st("hold")),
            ..ItemFilter::default()
        };
        let page = w.store.list_items(&hold, None, 10).unwrap();
        assert_eq!(ids_of(&page), vec!["b"]);
        let cursor = page[0].cursor.clone();
        // This process, a minute behind: a move, then an import.
        w.assign(&["a"], "hold");
        w.import(&["c"]);
        let rest = w.store.list_items(&hold, Some(&cursor), 10).unwrap();
        assert_eq!(ids_of(&rest), vec!["a", "c"], "arrived after `b`");
        assert_counts_match(&ahead);
    }

    /// Delivery pages (newest first) return every delivery that existed when paging began
    /// exactly once, whatever is created meanwhile, for any page size and filter.
    pub fn delivery_pages_never_skip_or_repeat_a_row(w: &World) {
        let ids = ["d1", "d2", "d3", "d4", "d5", "d6"];
        w.import(&ids);
        w.assign(&ids, "bare");
        for _ in 0..3 {
            let lease = w.lease("one", 1).remove(0);
            w.record(&lease, answer(500));
        }
        let filters = [
            DeliveryFilter::default(),
            DeliveryFilter {
                state: Some(DeliveryState::Pending),
                ..DeliveryFilter::default()
            },
            DeliveryFilter {
                stage: Some(st("bare")),
                ..DeliveryFilter::default()
            },
        ];
        for f in &filters {
            for limit in 1..=4 {
                let full: Vec<DeliveryId> = w
                    .store
                    .list_deliveries(f, None, 1000)
                    .unwrap()
                    .into_iter()
                    .map(|(d, _)| d.id)
                    .collect();
                assert_eq!(full.len() as i64, w.store.count_deliveries(f).unwrap());
                let mut made = 0;
                let paged = all_pages(
                    limit,
                    |after, n| {
                        // A new delivery between pages: it is newer than every page's rows.
                        if after.is_some() && made < 2 {
                            made += 1;
                            w.store.begin_test(&wf(), &st("hook"), OP).unwrap();
                        }
                        w.store.list_deliveries(f, after, n).unwrap()
                    },
                    |r: &(DeliverySummary, DeliveryCursor)| r.1,
                );
                let paged: Vec<DeliveryId> = paged.into_iter().map(|(d, _)| d.id).collect();
                let wanted: Vec<DeliveryId> =
                    paged.iter().filter(|d| full.contains(d)).cloned().collect();
                assert_eq!(wanted, full, "{f:?} by {limit}");
                assert_eq!(paged.len(), full.len(), "nothing newer than the first page");
                // Backward from the end (the console's `G`), page by page, in list order.
                let mut back: Vec<(DeliverySummary, DeliveryCursor)> = Vec::new();
                loop {
                    let page = w
                        .store
                        .list_deliveries_before(f, back.first().map(|r| r.1), limit)
                        .unwrap();
                    if page.is_empty() {
                        break;
                    }
                    back.splice(0..0, page);
                }
                let back: Vec<DeliveryId> = back.into_iter().map(|(d, _)| d.id).collect();
                let now: Vec<DeliveryId> = w
                    .store
                    .list_deliveries(f, None, 1000)
                    .unwrap()
                    .into_iter()
                    .map(|(d, _)| d.id)
                    .collect();
                assert_eq!(back, now, "{f:?} backward by {limit}");
            }
        }
        w.counts();
    }

    /// `attempts_after` read over and over while three processes record attempts at once:
    /// every attempt is read once, in increasing sequence order, none skipped.
    pub fn attempt_pages_stay_complete_while_processes_record_at_once(w: &World) {
        let ids: Vec<String> = (0..30).map(|i| format!("y{i:02}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        w.import(&refs);
        w.assign(&refs, "hook");
        let start = w.store.attempts_end().unwrap();
        let writers: Vec<_> = (0..3)
            .map(|n| {
                let store = w.other_process();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    let owner = format!("w{n}");
                    let mut written = 0;
                    loop {
                        let leases = rt.block_on(store.lease_due(&owner, 2, Vec::new())).unwrap();
                        if leases.is_empty() {
                            return written;
                        }
                        for l in leases {
                            rt.block_on(store.record_attempt(&l, answer_long_ago(503)))
                                .unwrap();
                            written += 1;
                        }
                    }
                })
            })
            .collect();
        let mut seen: Vec<(AttemptCursor, DeliveryId, i64)> = Vec::new();
        let mut after = start;
        let mut read = |after: &mut AttemptCursor| {
            let page = w.store.attempts_after(*after, 3).unwrap();
            if let Some((seq, _)) = page.last() {
                *after = *seq;
            }
            let n = page.len();
            seen.extend(
                page.into_iter()
                    .map(|(seq, e)| (seq, e.delivery_id, e.number)),
            );
            n
        };
        while writers.iter().any(|h| !h.is_finished()) {
            read(&mut after);
        }
        let written: usize = writers.into_iter().map(|h| h.join().unwrap()).sum();
        while read(&mut after) > 0 {}
        // Three tries each (max_attempts 3, every retry due at once), then failed.
        assert_eq!(written, 90);
        assert_eq!(seen.len(), 90, "every attempt read once");
        assert!(
            seen.windows(2).all(|p| p[0].0 < p[1].0),
            "in sequence order"
        );
        let mut keys: Vec<(DeliveryId, i64)> =
            seen.iter().map(|(_, d, n)| (d.clone(), *n)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 90);
        let mut logged = 0;
        for id in &ids {
            logged += w.attempts(&w.latest(id).id).len();
        }
        assert_eq!(logged, 90);
        w.counts();
    }

    /// `attempts_after` (the log pane, API cursors) returns every attempt once, in order,
    /// however the reads interleave with the writes.
    pub fn attempt_pages_never_skip_or_repeat_a_row(w: &World) {
        let ids = ["a1", "a2", "a3", "a4", "a5"];
        w.import(&ids);
        w.assign(&ids, "hook");
        let start = w.store.attempts_end().unwrap();
        let mut seen: Vec<(DeliveryId, i64)> = Vec::new();
        let mut after = start;
        let read = |after: &mut AttemptCursor, seen: &mut Vec<(DeliveryId, i64)>| {
            let page = w.store.attempts_after(*after, 2).unwrap();
            if let Some((seq, _)) = page.last() {
                *after = *seq;
            }
            seen.extend(page.into_iter().map(|(_, e)| (e.delivery_id, e.number)));
        };
        let mut written: Vec<(DeliveryId, i64)> = Vec::new();
        for round in 0..3 {
            for lease in w.lease("one", 10) {
                written.push((lease.delivery_id.clone(), lease.number));
                w.record(&lease, answer_long_ago(503));
                read(&mut after, &mut seen);
            }
            if round == 1 {
                let replay = w.store.begin_replay(&w.latest("a1").id, OP).unwrap();
                written.push((replay.delivery_id.clone(), replay.number));
                w.record(&replay, answer(200));
            }
        }
        loop {
            let before = seen.len();
            read(&mut after, &mut seen);
            if seen.len() == before {
                break;
            }
        }
        assert_eq!(written.len(), 16);
        assert_eq!(seen, written, "every attempt once, in the order written");
        assert_eq!(w.store.attempts_end().unwrap(), after);
    }

    /// Issue 18: `follow_start(since)` seeks in SQL to just before the first attempt (in
    /// the log's order) that started at or after `since`: reading on from there sees every
    /// such attempt once and none of the older ones before it; an older attempt recorded
    /// later (a slow request) comes after the cursor and is the follower's filter's to drop.
    pub fn a_follow_since_a_time_starts_at_the_first_attempt_that_started_then(w: &World) {
        let t0 = now_ms();
        let min = 60_000;
        // (item, started at): recorded in this order.
        let plan = [
            ("old", t0 - 30 * min),
            ("older", t0 - 20 * min),
            ("first", t0),
            ("slow", t0 - 5 * min),
            ("last", t0 + min),
        ];
        let ids: Vec<&str> = plan.iter().map(|(i, _)| *i).collect();
        w.import(&ids);
        for (item, at) in plan {
            fail_in_bare_at(w, item, at);
        }
        let since = chrono::DateTime::from_timestamp_millis(t0).unwrap();
        let start = w.store.follow_start(Some(since)).unwrap();
        let items: Vec<String> = w
            .store
            .attempts_after(start, 100)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.item_id.unwrap().to_string())
            .collect();
        assert_eq!(
            items,
            ["first", "slow", "last"],
            "from the first that started then"
        );
        let end = w.store.attempts_end().unwrap();
        assert_eq!(w.store.follow_start(None).unwrap(), end);
        let later = chrono::DateTime::from_timestamp_millis(t0 + 60 * min).unwrap();
        assert_eq!(w.store.follow_start(Some(later)).unwrap(), end, "none yet");
        let before_all = chrono::DateTime::from_timestamp_millis(t0 - 60 * min).unwrap();
        let all = w
            .store
            .attempts_after(w.store.follow_start(Some(before_all)).unwrap(), 100)
            .unwrap();
        assert_eq!(all.len(), 5);
    }

    // ---- flow control (issue 21) ----

    /// Stages of the flow-control cases: a rate-limited one (2/s, bursts of 3) and one capped
    /// at 8 in flight, for AIMD.
    const FLOW: &str = r#"
[[stage]]
id = "metered"
kind = "webhook"
url = "http://127.0.0.1:9/metered"
max_attempts = 3
rate_limit = "2/s"
burst = 3
on_success = "ok-sink"
on_failure = "fail-sink"

[[stage]]
id = "eight"
kind = "webhook"
url = "http://127.0.0.1:9/eight"
max_attempts = 3
max_in_flight = 8
on_success = "ok-sink"
on_failure = "fail-sink"
"#;

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:02}")).collect()
    }

    fn import_into(w: &World, ids: &[String], stage: &str) {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        w.import(&refs);
        w.assign(&refs, stage);
    }

    fn answer_with(w: &World, status: u16, retry_after: Option<&str>) -> AttemptOutcome {
        AttemptOutcome {
            retry_after: retry_after.map(str::to_string),
            ..w.answer(status)
        }
    }

    /// Issue 21, rate limit: a lease takes one token per delivery from the stage's bucket (a
    /// fresh one is full: `burst`), tokens come back at the rate and never beyond the burst,
    /// and another process leasing from the same store draws on the same bucket. Leasing
    /// says when the next token comes (the dispatcher sleeps until then).
    pub fn a_rate_limited_stage_leases_its_tokens_only_and_every_process_shares_them(w: &World) {
        w.apply(FLOW);
        import_into(w, &ids("m", 12), "metered");
        // Two processes on one clock that moves only when told: a token comes exactly when
        // the case says, however slow the machine.
        let clock = Clock::manual(now_ms());
        let (one, two) = ((w.open)(clock.clone()), (w.open)(clock.clone()));
        let lease = |store: &Store, owner: &str| {
            w.rt.block_on(store.lease_due(owner, 20, Vec::new()))
                .unwrap()
                .len()
        };
        assert_eq!(lease(&one, "one"), 3, "a full bucket: the burst");
        assert_eq!(lease(&two, "two"), 0);
        assert_eq!(lease(&one, "one"), 0, "no token left");
        // A token every 500 ms, from the lease.
        let wake = one.next_wakeup().unwrap().expect("the next token");
        assert_eq!(wake, clock.now_ms() + 500);
        clock.advance(Duration::from_millis(500));
        assert_eq!(
            lease(&two, "two"),
            1,
            "another process takes the token that came"
        );
        assert_eq!(lease(&one, "one"), 0, "and this one finds none");
        clock.advance(Duration::from_millis(1000));
        assert_eq!(lease(&one, "one"), 2);
        // A rest of 10 s (within the leases' 40 s) fills the bucket to its burst, no more.
        clock.advance(Duration::from_secs(10));
        assert_eq!(lease(&one, "one"), 3);
        w.counts();
        let s = w.stage("metered");
        assert_eq!(
            s.webhook.as_ref().unwrap().rate_limit.as_deref(),
            Some("2/s")
        );
        assert_eq!(s.webhook.as_ref().unwrap().burst, Some(3));
        // 3 still pending at 2/s: 1.5 s to drain.
        assert_eq!(s.drain_seconds, Some(1.5));
        assert_eq!(
            w.stage("hook").drain_seconds,
            None,
            "no rate, no drain time"
        );
    }

    /// Issue 21: a test or a replay counts against the stage's rate (it is a request to the
    /// same receiver) but is never refused: with no token left it reserves the next one and
    /// is sent when that comes; the leases behind it wait one token more.
    pub fn a_test_or_replay_of_a_rate_limited_stage_waits_for_its_token_and_counts(w: &World) {
        w.apply(FLOW);
        import_into(w, &ids("t", 5), "metered");
        // A clock that moves only when told: no token comes while the case runs.
        let clock = Clock::manual(now_ms());
        let one = (w.open)(clock.clone());
        let lease = || w.rt.block_on(one.lease_due("one", 20, Vec::new())).unwrap();
        let leases = lease();
        assert_eq!(leases.len(), 3);
        let test = one.begin_test(&wf(), &st("metered"), OP).unwrap();
        let at = test.not_before.expect("no token: the test waits for one");
        assert_eq!(at, clock.now_ms() + 500);
        let replay = one.begin_replay(&leases[0].delivery_id, OP).unwrap();
        let after = replay.not_before.expect("the token after that");
        assert_eq!(after - at, 500, "one token later");
        clock.advance(Duration::from_millis(1000));
        assert!(lease().is_empty(), "both tokens that came were reserved");
        clock.advance(Duration::from_millis(500));
        assert_eq!(lease().len(), 1);
        // A stage without a rate: at once.
        let test = w.store.begin_test(&wf(), &st("hook"), OP).unwrap();
        assert_eq!(test.not_before, None);
    }

    /// Issue 21, holds: a 429 or 503 with `Retry-After` holds the whole stage until then: no
    /// lease of it for any process (its other deliveries and its retries wait), other stages
    /// go on, a later shorter hold never shortens it, and the dispatcher wakes when it ends.
    /// The delivery's own retry is timed as always (design §2).
    pub fn a_429_or_503_with_retry_after_holds_the_stage_for_every_process(w: &World) {
        w.import(&["h1", "h2", "h3", "x1"]);
        w.assign(&["h1", "h2"], "hook");
        let leases = w.lease("one", 1);
        let o = answer_with(w, 429, Some("30"));
        let end = lease_end(&o);
        let rec = w.record(&leases[0], o);
        assert_eq!(rec.state, DeliveryState::RetryScheduled);
        assert_eq!(
            rec.next_attempt_at.map(|t| t.timestamp_millis()),
            Some(end + 30_000),
            "its own retry: Retry-After, as always"
        );
        assert_eq!(
            rec.held_until.map(|t| t.timestamp_millis()),
            Some(end + 30_000)
        );
        let s = w.stage("hook");
        assert_eq!(
            s.held_until.map(|t| t.timestamp_millis()),
            Some(end + 30_000)
        );
        assert_eq!(s.held_reason.as_deref(), Some("429 from receiver"));
        assert!(!s.paused, "a hold is not a pause");
        // h2 is due but held, for this process and any other; another stage goes on.
        assert!(w.lease("one", 10).is_empty());
        let other = w.other_process();
        assert!(
            w.rt.block_on(other.lease_due("two", 10, Vec::new()))
                .unwrap()
                .is_empty()
        );
        w.assign(&["x1"], "bare");
        assert_eq!(w.lease_one("one", "x1").stage.as_str(), "bare");
        assert_eq!(w.store.next_wakeup().unwrap(), Some(end + 30_000));
        // A shorter hold (a replay's 503, Retry-After: 5) does not shorten it.
        let replay = w.store.begin_replay(&w.latest("h1").id, OP).unwrap();
        let rec = w.record(&replay, answer_with(w, 503, Some("5")));
        assert_eq!(rec.held_until, None, "no change");
        assert_eq!(
            w.stage("hook").held_until.map(|t| t.timestamp_millis()),
            Some(end + 30_000)
        );
        // When it ends, both go: h2 (pending) and h1's retry (due at the same time).
        w.clock
            .advance(Duration::from_millis((end + 30_000 - w.now() + 1) as u64));
        let mut got: Vec<String> = w
            .lease("one", 10)
            .iter()
            .map(|l| l.item_id.as_ref().unwrap().to_string())
            .collect();
        got.sort();
        assert_eq!(got, ["h1", "h2"]);
        assert_eq!(
            w.stage("hook").held_until,
            None,
            "shown only while it lasts"
        );
        // A Retry-After far away is clamped to 1 h, as for retries.
        w.assign(&["h3"], "patient");
        let lease = w.lease_one("one", "h3");
        let o = answer_with(w, 503, Some("86400"));
        let end = lease_end(&o);
        let rec = w.record(&lease, o);
        assert_eq!(
            rec.held_until.map(|t| t.timestamp_millis()),
            Some(end + 3_600_000)
        );
    }

    /// Issue 21: a hold ends by itself, never counts toward auto-pause, and `stage resume`
    /// lifts it at once.
    pub fn a_hold_is_not_a_pause_and_stage_resume_lifts_it(w: &World) {
        w.import(&["f1", "f2", "f3"]);
        w.assign(&["f1", "f2", "f3"], "fragile");
        let leases = w.lease("one", 10);
        assert_eq!(leases.len(), 3);
        // fragile pauses after 2 failed deliveries; 429s with Retry-After are retried, and
        // max_attempts = 1 makes them fail: the failures count, the holds do not pause.
        let rec = w.record(&leases[0], answer_with(w, 429, Some("60")));
        assert!(rec.held_until.is_some());
        assert!(!rec.paused_stage);
        assert_eq!(w.stage_paused("fragile"), (false, None));
        assert!(w.stage("fragile").held_until.is_some());
        assert!(
            w.store
                .set_paused(&wf(), &st("fragile"), false, OP)
                .unwrap(),
            "resume lifts the hold"
        );
        assert_eq!(w.stage("fragile").held_until, None);
        // Through the actions layer (as every front end resumes), audited with its front end.
        let cli = hookops::actions::Actor::new(OP, hookops::actions::Via::Cli);
        assert!(
            !hookops::actions::items::set_paused(&w.store, &cli, &wf(), &st("fragile"), false)
                .unwrap(),
            "nothing left to lift"
        );
        let audit = w.store.audit_log(10).unwrap();
        assert_eq!(
            (audit[0].action.as_str(), audit[0].via.as_deref()),
            ("resume", Some("cli"))
        );
    }

    /// Issue 21, adaptive concurrency: a 429 without `Retry-After` halves the stage's
    /// effective concurrency (from what it had in flight, at most its ceiling), once per round
    /// trip; leasing keeps to it across processes; each window of successes (as many as the
    /// limit) raises it by one, up to the ceiling, where the limit goes.
    pub fn a_429_without_retry_after_halves_the_concurrency_and_successes_restore_it(w: &World) {
        w.apply(FLOW);
        import_into(w, &ids("e", 20), "eight");
        let leases = w.lease("one", 20);
        assert_eq!(leases.len(), 8, "max_in_flight");
        let started = w.now();
        let mut left = leases.into_iter();
        let first = left.next().unwrap();
        w.record(&first, outcome_at(started, Some(429), None));
        assert_eq!(
            w.stage("eight").concurrency_limit,
            Some(4),
            "8 in flight, halved"
        );
        // Another 429 of a request sent before the decrease: already answered.
        let second = left.next().unwrap();
        w.record(&second, outcome_at(started - 1, Some(429), None));
        assert_eq!(w.stage("eight").concurrency_limit, Some(4));
        // 6 still in flight, limit 4: no lease, for any process.
        assert!(w.lease("one", 20).is_empty());
        let other = w.other_process();
        assert!(
            w.rt.block_on(other.lease_due("two", 20, Vec::new()))
                .unwrap()
                .is_empty()
        );
        // Finish them (successes): 4 make a window, +1; then 2 more.
        for l in left {
            w.record(&l, w.answer(200));
        }
        assert_eq!(w.stage("eight").concurrency_limit, Some(5));
        assert_eq!(w.lease("one", 20).len(), 5, "the limit, not max_in_flight");
        w.counts();
        // A later 429 (sent after the decrease) halves again: 5 → 2.
        w.clock.advance(Duration::from_millis(10));
        let leases = w.lease("one", 20);
        assert!(leases.is_empty(), "5 in flight at the limit");
    }

    // ---- issue 18: one filter, failures by cause, audit that names what was touched ----

    /// Fails `item` in `bare` (one try) with `status` or, without one, error `kind`.
    fn fail_in_bare(w: &World, item: &str, status: Option<u16>, kind: Option<ErrorKind>) {
        w.assign(&[item], "bare");
        let lease = w.lease_one("one", item);
        w.record(&lease, outcome_at(now_ms(), status, kind));
    }

    /// [`fail_in_bare`] with an attempt that started at `started_at` (ms).
    fn fail_in_bare_at(w: &World, item: &str, started_at: i64) {
        w.assign(&[item], "bare");
        let lease = w.lease_one("one", item);
        w.record(&lease, outcome_at(started_at, Some(503), None));
    }

    fn matching(w: &World, f: &DeliveryFilter) -> Vec<String> {
        let rows = w.store.list_deliveries(f, None, 1000).unwrap();
        assert_eq!(
            w.store.count_deliveries(f).unwrap(),
            rows.len() as i64,
            "the count and the list agree for {f:?}"
        );
        let mut items: Vec<String> = rows
            .into_iter()
            .map(|(d, _)| d.item_id.map(|i| i.to_string()).unwrap_or_default())
            .collect();
        items.sort();
        items
    }

    /// Issue 18: statuses take exact codes and classes, several at once; error kinds several
    /// at once; with both, either matches; `since` ≤ created < `until`; trigger and
    /// refire_of select re-fires. All in SQL, counted the same way.
    pub fn the_delivery_filter_matches_statuses_classes_kinds_and_a_half_open_window(w: &World) {
        w.import(&["a", "b", "c", "d", "e", "f"]);
        fail_in_bare(w, "a", Some(503), None);
        fail_in_bare(w, "b", Some(500), None);
        w.clock.advance(Duration::from_secs(600));
        fail_in_bare(w, "c", Some(404), None);
        fail_in_bare(w, "d", None, Some(ErrorKind::Timeout));
        fail_in_bare(w, "e", None, Some(ErrorKind::Connect));
        fail_in_bare(w, "f", Some(200), None);
        let base = DeliveryFilter {
            workflow: Some(wf()),
            stage: Some(st("bare")),
            ..DeliveryFilter::default()
        };
        let with = |statuses: &[StatusMatch], kinds: &[ErrorKind]| DeliveryFilter {
            statuses: statuses.to_vec(),
            error_kinds: kinds.to_vec(),
            ..base.clone()
        };
        use StatusMatch::{Class, Code};
        assert_eq!(matching(w, &with(&[Class(5)], &[])), ["a", "b"]);
        assert_eq!(matching(w, &with(&[Code(503)], &[])), ["a"]);
        assert_eq!(
            matching(w, &with(&[Class(5), Code(404)], &[])),
            ["a", "b", "c"]
        );
        assert_eq!(matching(w, &with(&[Class(2)], &[])), ["f"]);
        assert_eq!(
            matching(w, &with(&[], &[ErrorKind::Timeout, ErrorKind::Connect])),
            ["d", "e"]
        );
        assert_eq!(
            matching(w, &with(&[Class(5)], &[ErrorKind::Timeout])),
            ["a", "b", "d"],
            "a status and an error kind: either matches"
        );
        let failed_4xx = DeliveryFilter {
            state: Some(DeliveryState::Failed),
            ..with(&[Class(4)], &[])
        };
        assert_eq!(matching(w, &failed_4xx), ["c"]);

        // The window is half-open: since takes a delivery created at that instant, until
        // leaves it out, so two adjacent windows never share one.
        let c_at = w.latest("c").created_at;
        let since_c = DeliveryFilter {
            since: Some(c_at),
            ..base.clone()
        };
        assert_eq!(matching(w, &since_c), ["c", "d", "e", "f"]);
        let until_c = DeliveryFilter {
            until: Some(c_at),
            ..base.clone()
        };
        assert_eq!(matching(w, &until_c), ["a", "b"]);
        let just_c = DeliveryFilter {
            since: Some(c_at),
            until: Some(c_at + chrono::Duration::milliseconds(1)),
            ..base.clone()
        };
        assert!(matching(w, &just_c).contains(&"c".to_string()));
        assert!(!matching(w, &just_c).contains(&"a".to_string()));

        // `search` (the console's `/`): a substring of the item's name or id or the delivery
        // id, in any case; LIKE's wildcards are taken literally.
        let search = |q: &str| DeliveryFilter {
            search: Some(q.into()),
            ..base.clone()
        };
        assert_eq!(matching(w, &search("C.JPG")), ["c"]);
        assert_eq!(matching(w, &search(w.latest("e").id.as_str())), ["e"]);
        assert!(matching(w, &search("%")).is_empty());
        assert!(matching(w, &search("_.jpg")).is_empty());

        // Re-fires are found by trigger and by the delivery they re-fire.
        let old_a = w.latest("a").id;
        let r = w.store.refire(std::slice::from_ref(&old_a), OP).unwrap();
        assert_eq!(r.created.len(), 1);
        let by_origin = DeliveryFilter {
            refire_of: Some(old_a.clone()),
            ..DeliveryFilter::default()
        };
        let rows = w.store.list_deliveries(&by_origin, None, 10).unwrap();
        assert_eq!(
            rows.iter().map(|(d, _)| d.id.clone()).collect::<Vec<_>>(),
            r.created
        );
        let refires = DeliveryFilter {
            trigger: Some(DeliveryTrigger::Refire),
            ..DeliveryFilter::default()
        };
        assert_eq!(matching(w, &refires), ["a"]);
    }

    /// Issue 18: failed deliveries grouped by (stage, error kind, status, normalised message)
    /// with exact counts, items and times: what varies per request (numbers, quoted values)
    /// does not split a cause, a different reason from the receiver does. A group is a
    /// filter, and re-firing by it touches exactly its members.
    pub fn failures_group_by_cause_and_a_groups_filter_refires_exactly_its_members(w: &World) {
        use ErrorKind::{Connect, HttpStatus, Timeout};
        let items: [(&str, Option<u16>, ErrorKind, &str, &str); 9] = [
            ("a1", Some(503), HttpStatus, "503 Service Unavailable", ""),
            (
                "a2",
                Some(503),
                HttpStatus,
                "503 Service Unavailable",
                "<html>busy</html>",
            ),
            ("a3", Some(503), HttpStatus, "503 Service Unavailable", ""),
            (
                "b1",
                Some(400),
                HttpStatus,
                "400 Bad Request",
                r#"{"error":"invalid label 'car'"}"#,
            ),
            (
                "b2",
                Some(400),
                HttpStatus,
                "400 Bad Request",
                r#"{"error":"invalid label 'truck'"}"#,
            ),
            (
                "b3",
                Some(400),
                HttpStatus,
                "400 Bad Request",
                r#"{"error":"missing field"}"#,
            ),
            ("d1", None, Timeout, "timed out after 30012 ms", ""),
            ("d2", None, Timeout, "timed out after 30007 ms", ""),
            (
                "e1",
                None,
                Connect,
                "connection failed: connection refused",
                "",
            ),
        ];
        let ids: Vec<&str> = items.iter().map(|(i, ..)| *i).collect();
        w.import(&ids);
        w.import(&["ok"]);
        for (item, status, kind, message, body) in items {
            w.assign(&[item], "bare");
            let lease = w.lease_one("one", item);
            let mut o = outcome_at(now_ms(), status, Some(kind));
            o.error_message = Some(message.into());
            o.response_body = Some(body.as_bytes().to_vec());
            w.record(&lease, o);
        }
        fail_in_bare(w, "ok", Some(200), None);
        let base = DeliveryFilter {
            workflow: Some(wf()),
            ..DeliveryFilter::default()
        };
        let groups = w.store.failure_groups(&base).unwrap();
        type Cause = (Option<u16>, Option<ErrorKind>, String, i64, i64);
        let seen: Vec<Cause> = groups
            .iter()
            .map(|g| {
                assert_eq!(g.stage.as_str(), "bare");
                (
                    g.status,
                    g.error_kind,
                    g.message.clone().unwrap_or_default(),
                    g.count,
                    g.items,
                )
            })
            .collect();
        let cause = |s: Option<u16>, k, m: &str, n| (s, Some(k), m.to_string(), n, n);
        assert_eq!(
            seen,
            [
                cause(Some(503), HttpStatus, "503 Service Unavailable", 3),
                cause(None, Timeout, "timed out after # ms", 2),
                cause(
                    Some(400),
                    HttpStatus,
                    "400 Bad Request: invalid label '…'",
                    2
                ),
                cause(None, Connect, "connection failed: connection refused", 1),
                cause(Some(400), HttpStatus, "400 Bad Request: missing field", 1),
            ]
        );
        assert!(
            groups
                .iter()
                .all(|g| g.first_at.is_some() && g.first_at <= g.last_at)
        );
        // Each group's filter selects exactly its members, in the listing too.
        let members = |g: &FailureGroup| {
            let mut got = matching(w, &g.filter(&base));
            got.dedup();
            got
        };
        assert_eq!(members(&groups[2]), ["b1", "b2"]);
        assert_eq!(members(&groups[4]), ["b3"]);
        assert_eq!(members(&groups[1]), ["d1", "d2"]);
        let invalid = groups[2].filter(&base);
        let ids = w.store.failed_deliveries(&invalid, None).unwrap();
        let mut expected: Vec<DeliveryId> = ["b1", "b2"].iter().map(|i| w.latest(i).id).collect();
        expected.sort_by_key(|d| d.to_string());
        let mut got = ids.clone();
        got.sort_by_key(|d| d.to_string());
        assert_eq!(got, expected, "the group's filter selects its members only");
        let r = w.store.refire(&ids, OP).unwrap();
        assert_eq!((r.refired, r.refused.len()), (2, 0));
        w.counts();
        assert_eq!(w.at("b3").1, ItemState::Failed, "b3 is not re-fired");
        let after = w.store.failure_groups(&base).unwrap();
        let left: Vec<Option<String>> = after.iter().map(|g| g.message.clone()).collect();
        assert_eq!(
            left,
            [
                "503 Service Unavailable",
                "timed out after # ms",
                "connection failed: connection refused",
                "400 Bad Request: missing field",
            ]
            .map(|m| Some(m.to_string())),
            "only the re-fired group is gone"
        );
    }

    /// Issue 18: an action's audit row is written before it acts and finished after, with
    /// the operator, the front end, the outcome and the ids (up to 1,000; beyond, the filter
    /// and the count); `audit` finds it by an item (through its deliveries), the operator,
    /// the action and the time.
    pub fn audit_rows_name_their_ids_and_are_found_by_item_operator_action_and_time(w: &World) {
        w.import(&["a", "b"]);
        fail_in_bare(w, "a", Some(503), None);
        fail_in_bare(w, "b", Some(503), None);
        let a = w.latest("a").id;
        let start = |op: &str, action: &str, matched: i64| AuditStart {
            operator: op.into(),
            via: "cli".into(),
            action: action.into(),
            target: "deliveries".into(),
            filter: Some("--workflow wf --status 5xx".into()),
            matched,
        };
        let before = chrono::Utc::now() - chrono::Duration::seconds(1);
        let small = w.store.audit_begin(start("ana", "refire", 1)).unwrap();
        let running = w.store.audit_entry(small).unwrap();
        assert_eq!(running.outcome.as_deref(), Some("running"));
        w.store
            .audit_finish(small, "done", 1, &[a.to_string()])
            .unwrap();
        let big = w.store.audit_begin(start("bo", "cancel", 5000)).unwrap();
        let many: Vec<String> = (0..1001).map(|i| format!("msg_{i:05}")).collect();
        w.store
            .audit_finish(big, "partly_refused", 1001, &many)
            .unwrap();

        let row = w.store.audit_entry(small).unwrap();
        assert_eq!(
            (
                row.operator.as_str(),
                row.via.as_deref(),
                row.outcome.as_deref()
            ),
            ("ana", Some("cli"), Some("done"))
        );
        assert_eq!((row.count, row.matched), (1, Some(1)));
        assert_eq!(row.ids, Some(vec![a.to_string()]));
        let row = w.store.audit_entry(big).unwrap();
        assert_eq!(
            row.ids, None,
            "more than 1,000 ids: the filter and count stand"
        );
        assert_eq!(row.filter.as_deref(), Some("--workflow wf --status 5xx"));
        assert_eq!((row.count, row.matched), (1001, Some(5000)));

        let find = |q: AuditQuery| -> Vec<i64> {
            w.store
                .audit_search(&q, 100)
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect()
        };
        let by_item = |i: &str| AuditQuery {
            item: Some(i.into()),
            ..AuditQuery::default()
        };
        let refires_of = |i: &str| AuditQuery {
            action: Some("refire".into()),
            ..by_item(i)
        };
        assert_eq!(
            find(refires_of("a")),
            [small],
            "item a, through its delivery"
        );
        assert_eq!(find(by_item(a.as_str())), [small], "the delivery id itself");
        assert!(find(refires_of("b")).is_empty());
        assert!(
            find(by_item("msg_00042")).is_empty(),
            "ids beyond the bound are not kept"
        );
        assert_eq!(
            find(AuditQuery {
                operator: Some("bo".into()),
                ..AuditQuery::default()
            }),
            [big]
        );
        assert_eq!(
            find(AuditQuery {
                action: Some("refire".into()),
                ..AuditQuery::default()
            }),
            [small]
        );
        // Assign and advance (through the actions layer, which audits them) name the items
        // they moved (not "1 item(s)") and the front end.
        use hookops::actions::items::{self, AdvanceWhat, Assign};
        use hookops::actions::{Actor, Via};
        let cli = Actor::new("ana", Via::Cli);
        let api = Actor::new(
            "bot",
            Via::Api {
                token: "bot".into(),
            },
        );
        let to = |stage: &str, target| Assign {
            workflow: wf(),
            to: st(stage),
            target,
            expect_stage: None,
        };
        w.import(&["n1", "n2"]);
        let named = AssignTarget::Items(vec![ItemId::new("n1"), ItemId::new("n2")]);
        items::assign(&w.store, &cli, to("hold", named)).unwrap();
        let n1 = AdvanceWhat::Ids(vec![ItemId::new("n1")], Expect::default());
        let r = items::advance(&w.store, &api, n1, None).unwrap();
        assert_eq!(r.moved, 1);
        let rows = w
            .store
            .audit_search(
                &AuditQuery {
                    item: Some("n1".into()),
                    ..AuditQuery::default()
                },
                10,
            )
            .unwrap();
        let actions: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.action.as_str(), r.target.as_str()))
            .collect();
        assert_eq!(
            actions,
            [("advance", "item n1"), ("assign", "stage wf/hold")]
        );
        let assign = w.store.audit_entry(rows[1].id).unwrap();
        assert_eq!(assign.ids, Some(vec!["n1".into(), "n2".into()]));
        assert_eq!(assign.outcome.as_deref(), Some("done"));
        assert_eq!(
            (assign.operator.as_str(), assign.via.as_deref()),
            ("ana", Some("cli"))
        );
        assert_eq!(rows[0].via.as_deref(), Some("api:bot"));

        // A whole stage: a small move names every item; one past the bound names its filter
        // and the count instead.
        let few: Vec<String> = (0..3).map(|i| format!("s{i}")).collect();
        let many: Vec<String> = (0..=AUDIT_IDS).map(|i| format!("b{i:04}")).collect();
        w.import(&few.iter().map(String::as_str).collect::<Vec<_>>());
        let whole = |limit| AssignTarget::FromStage {
            stage: st("hold"),
            limit,
        };
        let plan = items::assign_plan(&w.store, &to("ok-sink", whole(None))).unwrap();
        assert_eq!(plan.matched, 4, "n2 and the three, oldest first: {plan:?}");
        assert_eq!(plan.ids.last().map(|i| i.as_str()), Some("s2"));
        items::assign(&w.store, &cli, to("ok-sink", whole(None))).unwrap();
        let last = w.store.audit_log(1).unwrap().remove(0);
        let row = w.store.audit_entry(last.id).unwrap();
        let mut ids = row.ids.clone().unwrap();
        ids.sort();
        assert_eq!(ids, ["n2", "s0", "s1", "s2"]);
        assert_eq!(
            (row.filter.as_deref(), row.count, row.matched),
            (Some("--from-stage hold"), 4, Some(4))
        );
        w.import(&many.iter().map(String::as_str).collect::<Vec<_>>());
        let r = items::assign(&w.store, &cli, to("fail-sink", whole(None))).unwrap();
        assert_eq!(r.moved, AUDIT_IDS as i64 + 1);
        let last = w.store.audit_log(1).unwrap().remove(0);
        let row = w.store.audit_entry(last.id).unwrap();
        assert_eq!(row.ids, None, "over the bound: no ids");
        assert_eq!(
            (row.filter.as_deref(), row.count, row.via.as_deref()),
            (Some("--from-stage hold"), AUDIT_IDS as i64 + 1, Some("cli"))
        );
        // A store call made by code is no operator action: no row.
        let before_code = w.store.audit_log(100).unwrap().len();
        w.assign(&["b0000"], "hold");
        assert_eq!(w.store.audit_log(100).unwrap().len(), before_code);

        let since = find(AuditQuery {
            since: Some(before),
            ..AuditQuery::default()
        });
        assert!(since.contains(&big) && since.contains(&small), "{since:?}");
        let until = find(AuditQuery {
            until: Some(before),
            ..AuditQuery::default()
        });
        assert!(
            !until.contains(&big) && !until.contains(&small),
            "{until:?}"
        );
    }
}

/// A file in rollback mode (a restored backup) that another process is writing when the
/// store opens it: switching it to WAL needs the exclusive lock, and SQLite refuses at once
/// ("database is locked", without the busy handler) while the other holds its write lock.
/// The store waits for it instead, as for any lock (`serve` and a command opening a restored
/// backup together failed 7 times in 40).
#[test]
fn opening_a_rollback_mode_file_another_process_is_writing_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restored.db");
    // A backup, as an operator restores it: a file no store has opened yet.
    let live = Store::open(&dir.path().join("live.db"), &OpenOptions::default()).unwrap();
    live.backup(&path, false).unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    let mode: String = other
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let opening = path.clone();
    let opener = std::thread::spawn(move || {
        let _ = tx.send(Store::open(&opening, &OpenOptions::default()).map(drop));
    });
    // While the other process holds its write lock the open must not fail: it waits.
    match rx.recv_timeout(Duration::from_secs(2)) {
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("the open ended while another process held the lock: {other:?}"),
    }
    other.execute_batch("COMMIT").unwrap();
    drop(other);
    rx.recv()
        .unwrap()
        .expect("the open succeeds once the lock is free");
    opener.join().unwrap();
}

/// Waits until `n` of hookops' PostgreSQL sessions wait for a lock (the server says so: no
/// sleep decides it); panics with `never` after 10 s.
fn wait_for_lock_waiters(url: &str, n: i64, never: &str) {
    let mut watch = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while watch
        .query_one(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE application_name = 'hookops' AND wait_event_type = 'Lock'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        < n
    {
        assert!(Instant::now() < deadline, "{never}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Design §7, "Isolation": READ COMMITTED with explicit row locks, and its conflict path. A
/// cancel that finds the delivery's row locked by another process waits for it, then decides
/// on what that process committed (the delivery succeeded meanwhile: refused, nothing
/// overwritten). A read without the lock would have seen it pending and cancelled a delivery
/// that had succeeded.
#[test]
fn on_postgresql_a_change_waits_for_another_processs_row_lock_and_decides_on_what_it_committed() {
    let w = World::new(&open_postgres);
    w.import(&["c"]);
    w.assign(&["c"], "hook");
    let delivery = w.latest("c").id;
    let url = std::fs::read_to_string(w._dir.path().join("postgres-url")).unwrap();
    let mut other = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let mut lock = other.transaction().unwrap();
    lock.execute(
        "SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE",
        &[&delivery.as_str()],
    )
    .unwrap();
    let store = w.store.clone();
    let id = delivery.clone();
    let cancel = std::thread::spawn(move || store.cancel_deliveries(&[id], OP).unwrap());
    // The cancel's transaction is waiting for the row lock (not a sleep: the server says so).
    wait_for_lock_waiters(&url, 1, "the cancel never waited for the lock");
    // The other process's change: the delivery succeeded.
    lock.execute(
        "UPDATE deliveries SET state = 'succeeded' WHERE id = $1",
        &[&delivery.as_str()],
    )
    .unwrap();
    lock.commit().unwrap();
    let report = cancel.join().unwrap();
    assert_eq!(report.cancelled, 0, "{report:?}");
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(
        report.refused[0].reason.contains("already succeeded"),
        "{report:?}"
    );
    assert_eq!(w.latest("c").state, DeliveryState::Succeeded);
}

/// Design §7, "Isolation", on reclaiming: two processes read the same expired lease at once.
/// The first to get the row releases it and leases the delivery again; the second read the
/// lease before that commit, and READ COMMITTED then re-reads the row, in flight again. It
/// must leave that new lease alone. It used to release it: the first process's answer was
/// then recorded as a lost lease, uncounted, and the delivery was leased twice at once (the
/// two-host crash suite saw it as "a scheduled attempt not counted").
#[test]
fn on_postgresql_two_processes_reclaiming_one_expired_lease_leave_the_new_lease_alone() {
    let w = World::new(&open_postgres);
    w.import(&["a"]);
    w.assign(&["a"], "hook");
    let stale = w.lease_one("one", "a");
    w.clock.advance(Duration::from_secs(40));
    let url = std::fs::read_to_string(w._dir.path().join("postgres-url")).unwrap();
    let mut other = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let mut lock = other.transaction().unwrap();
    lock.execute(
        "SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE",
        &[&stale.delivery_id.as_str()],
    )
    .unwrap();
    // Two processes lease: each reads the expired lease, then waits for the row.
    let reclaimers: Vec<_> = ["p1", "p2"]
        .into_iter()
        .map(|owner| {
            let store = w.other_process();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(store.lease_due(owner, 10, Vec::new())).unwrap()
            })
        })
        .collect();
    wait_for_lock_waiters(&url, 2, "the two reclaims never both waited for the row");
    lock.commit().unwrap();
    let leases: Vec<Lease> = reclaimers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(
        leases.iter().map(|l| l.number).collect::<Vec<_>>(),
        vec![2],
        "one process leases it again, once"
    );
    assert_eq!(w.latest("a").state, DeliveryState::InFlight);
    // The new lease is whole: its answer counts and settles the delivery.
    let rec = w.record(&leases[0], w.answer(200));
    assert!(!rec.lease_lost, "{rec:?}");
    assert_eq!(w.latest("a").state, DeliveryState::Succeeded);
    assert_eq!(
        w.attempts(&stale.delivery_id),
        vec![
            (
                1,
                AttemptTrigger::Scheduled,
                false,
                None,
                Some(ErrorKind::Interrupted)
            ),
            (2, AttemptTrigger::Scheduled, true, Some(200), None),
        ]
    );
}

/// Design §7, "Wake-up": while the listening connection is down the change feed says
/// "changed" at every look (the reader polls, re-reading everything), it listens again on its
/// own, and then a commit of another process reaches it as before.
#[test]
fn on_postgresql_a_lost_listening_connection_falls_back_to_polling_and_listens_again() {
    let w = World::new(&open_postgres);
    let url = std::fs::read_to_string(w._dir.path().join("postgres-url")).unwrap();
    let mut admin = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let listeners = |admin: &mut ::postgres::Client| -> Vec<i32> {
        admin
            .query(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND query = 'LISTEN hookops'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let until = |what: &str, mut cond: Box<dyn FnMut() -> bool + '_>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let feed = std::cell::RefCell::new(w.store.change_watcher().unwrap());
    until(
        "the feed to listen",
        Box::new(|| listeners(&mut admin).len() == 1),
    );
    until(
        "a quiet feed",
        Box::new(|| !feed.borrow_mut().changed().unwrap()),
    );
    let old = listeners(&mut admin)[0];
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&old])
        .unwrap();
    // Down: every look says "changed" (poll), until it listens again on a new connection.
    until(
        "the feed to notice",
        Box::new(|| feed.borrow_mut().changed().unwrap()),
    );
    until(
        "the feed to listen again",
        Box::new(|| listeners(&mut admin).iter().any(|pid| *pid != old)),
    );
    until(
        "a quiet feed again",
        Box::new(|| !feed.borrow_mut().changed().unwrap()),
    );
    let line = b"{\"id\": \"after\", \"name\": \"after.jpg\"}\n";
    let parsed = hookops::import::parse_jsonl(&line[..]).unwrap();
    w.other_process()
        .import_items(&wf(), parsed.items, None, OP, &mut |_, _| {})
        .unwrap();
    until(
        "another process's commit to reach the feed",
        Box::new(|| feed.borrow_mut().changed().unwrap()),
    );
}
