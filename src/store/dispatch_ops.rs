//! The dispatcher's side of the store: heartbeats, leasing, recording attempts and routing
//! their outcomes, re-fire, replay and test deliveries.
//!
//! Fencing (design §6): recording an outcome requires the lease token to still hold; routing
//! an outcome is compare-and-set on the item's (stage, version) recorded in the delivery, so an
//! item that moved meanwhile is never moved again by a late outcome.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::Tx;
use super::deliveries::{DeliveryFilter, insert_notifications};
use super::items::{MovedBy, apply_route, enum_col};
use super::seam::{
    AttemptRow, Counted, DeliveryRow, DeliveryUpdate, Due, Heartbeat, ManualAttempt, NewDelivery,
    NewLease, RefireRow,
};
use super::workflows::{current_spec, read_current_spec};
use super::{Result, Store, StoreError, audit, to_time, where_now};
use crate::engine;
use crate::engine::classify::INTERRUPTED_MESSAGE;
use crate::engine::delivery::{self, AttemptMade, DeliveryNow, Effect, FailureRun, Settle};
use crate::engine::payload::{DeliveryMeta, test_body};
use crate::model::{
    AttemptOutcome, AttemptTrigger, DeliveryId, DeliveryState, DeliveryTrigger, EventType,
    HistoryCause, ItemId, RefusalKind, StageId, StageKind, WorkflowId,
};
use crate::workflow::{WebhookConfig, Workflow};

/// Extra lease time beyond the stage timeout (design §6: at least timeout + 30 s).
pub const LEASE_MARGIN_MS: i64 = 30_000;

/// A running dispatcher, as its heartbeat row records it.
#[derive(Clone, Debug, Serialize)]
pub struct DispatcherInfo {
    pub id: String,
    pub pid: u32,
    pub host: String,
    /// The process's start time as the OS reports it, to tell a reused pid apart.
    pub process_start: String,
    pub concurrency: u32,
    pub started_at: DateTime<Utc>,
    pub last_beat: DateTime<Utc>,
}

/// One attempt to make: a leased delivery (scheduled), a replay or a test (manual).
#[derive(Clone, Debug)]
pub struct Lease {
    pub delivery_id: DeliveryId,
    /// The delivery's row (`deliveries.seq`), so recording finds it without its text id.
    pub seq: i64,
    /// `None` for manual attempts, which hold no lease.
    pub token: Option<String>,
    pub number: i64,
    pub trigger: AttemptTrigger,
    pub workflow: WorkflowId,
    pub revision: i64,
    pub stage: StageId,
    pub item_id: Option<ItemId>,
    pub event: EventType,
    pub body: bytes::Bytes,
    /// Counted attempts before this one.
    pub attempts: i64,
    /// The workflow spec current at lease time; its stage config is what this attempt uses.
    pub spec: Arc<Workflow>,
}

impl Lease {
    /// The stage's webhook settings, or `None` when the stage is gone or no longer a webhook.
    pub fn config(&self) -> Option<&WebhookConfig> {
        self.spec.delivery_config(&self.stage)
    }
}

/// What recording an attempt did to its delivery.
#[derive(Clone, Debug, Serialize)]
pub struct Recorded {
    pub delivery_id: DeliveryId,
    pub number: i64,
    pub state: DeliveryState,
    pub attempts: i64,
    pub max_attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Where the item went, when the outcome routed it.
    pub routed_to: Option<StageId>,
    /// The item's name, for the attempt's log line (read by the record, which reads the item
    /// anyway when it routes).
    pub item_name: Option<String>,
    /// The lease had expired or the delivery was cancelled: only the attempt row was written.
    pub lease_lost: bool,
    /// This outcome paused the stage (auto-pause).
    pub paused_stage: bool,
}

/// What a re-fire did.
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct RefireReport {
    pub refired: i64,
    pub created: Vec<DeliveryId>,
    pub refused: Vec<DeliveryRefusal>,
}

/// One delivery an action refused, and why.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DeliveryRefusal {
    pub delivery_id: DeliveryId,
    pub kind: RefusalKind,
    pub reason: String,
}

/// Hostname, for heartbeat rows (read from the kernel, no libc call).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The start time of a process (field 22 of `/proc/PID/stat`), or `None` when it is gone.
pub fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// How deliveries of `stage` are sent (a webhook stage, or a `[[notify]]` pseudo-stage).
fn webhook_of<'a>(spec: &'a Workflow, stage: &StageId) -> Option<&'a WebhookConfig> {
    spec.delivery_config(stage)
}

fn lease_ms(cfg: Option<&WebhookConfig>) -> i64 {
    cfg.map(|c| c.timeout.as_millis() as i64).unwrap_or(10_000) + LEASE_MARGIN_MS
}

/// Turns expired leases (and leases of dead local dispatchers) back into due deliveries, with
/// an `interrupted` attempt row for the attempt that may have been sent unrecorded; that row
/// never counts toward `max_attempts` (design §6).
pub(super) fn reclaim(tx: &Tx<'_>, dead_owners: &[String]) -> Result<usize> {
    let now = tx.now();
    let rows = tx.rows();
    let mut lost = rows.expired_leases(now)?;
    for owner in dead_owners {
        lost.extend(rows.leases_of(owner, now)?);
    }
    for d in &lost {
        let url = current_spec(tx, &WorkflowId::new(d.workflow.as_str()))
            .ok()
            .and_then(|(spec, _)| {
                webhook_of(&spec, &StageId::new(d.stage.as_str()))
                    .map(|c| crate::redact::Redactor::new(&spec.secrets).redact(&c.url))
            })
            .unwrap_or_default();
        rows.insert_interrupted_attempt(&d.id, d.number, &url, INTERRUPTED_MESSAGE, now)?;
        if rows.release_lease(&d.id, now)? {
            tx.counts()
                .delivery_moved(&d.workflow, &d.stage, "in_flight", "pending");
        }
    }
    for owner in dead_owners {
        rows.delete_dispatcher(owner)?;
    }
    Ok(lost.len())
}

fn lease_in_tx(
    tx: &Tx<'_>,
    owner: &str,
    limit: usize,
    dead_owners: &[String],
) -> Result<Vec<Lease>> {
    let now = tx.now();
    let rows = tx.rows();
    reclaim(tx, dead_owners)?;
    let mut leases = Vec::new();
    // Per-stage caps (max_in_flight) count in-flight deliveries across all processes.
    let mut in_flight: std::collections::HashMap<(String, String), i64> = Default::default();
    let mut specs: std::collections::HashMap<String, (Arc<Workflow>, i64)> = Default::default();
    // Due deliveries are read a page at a time, oldest due first, each page after the last
    // row seen and twice the size of the one before: one passed over (its stage at its
    // `max_in_flight` cap) stays due, and the deliveries behind it are still reached.
    let mut after = (i64::MIN, i64::MIN);
    for round in 0..LEASE_ROUNDS {
        if leases.len() >= limit {
            break;
        }
        let want = (limit - leases.len() + 1) << round;
        let page = rows.due_page(now, after, want)?;
        let exhausted = page.len() < want;
        for Due {
            seq,
            due,
            workflow: wf,
            stage,
            state,
        } in page
        {
            if leases.len() >= limit {
                break;
            }
            after = (due, seq);
            if !specs.contains_key(&wf) {
                let s = current_spec(tx, &WorkflowId::new(wf.as_str()))?;
                specs.insert(wf.clone(), s);
            }
            let (spec, revision) = &specs[&wf];
            let cfg = webhook_of(spec, &StageId::new(stage.as_str()));
            if let Some(cap) = cfg.and_then(|c| c.max_in_flight) {
                let key = (wf.clone(), stage.clone());
                if !in_flight.contains_key(&key) {
                    let n =
                        rows.stored_count(Counted::Deliveries, &wf, &stage, Some("in_flight"))?
                            + tx.counts().unwritten_deliveries(&wf, &stage, "in_flight");
                    in_flight.insert(key.clone(), n);
                }
                let n = in_flight.get_mut(&key).map(|n| {
                    *n += 1;
                    *n
                });
                if n.unwrap_or(0) > cap as i64 {
                    continue;
                }
            }
            let token = uuid::Uuid::now_v7().simple().to_string();
            let until = now + lease_ms(cfg);
            let Some(leased) = rows.lease_delivery(seq, &token, until, owner, now)? else {
                continue;
            };
            let body = rows.body_of(seq)?;
            tx.counts().delivery_moved(&wf, &stage, &state, "in_flight");
            leases.push(Lease {
                delivery_id: DeliveryId(leased.id),
                seq,
                token: Some(token),
                number: leased.number,
                trigger: AttemptTrigger::Scheduled,
                workflow: WorkflowId(wf.clone()),
                revision: *revision,
                stage: StageId(stage),
                item_id: leased.item_id.map(ItemId),
                event: leased.event,
                body: body.into(),
                attempts: leased.attempts,
                spec: spec.clone(),
            });
        }
        if exhausted {
            break;
        }
    }
    Ok(leases)
}

/// The name of a delivery's item, shown beside its id in lists of attempts.
fn item_name(tx: &Tx<'_>, item: Option<&str>) -> Result<Option<String>> {
    match item {
        Some(item) => tx.rows().item_name(&ItemId::new(item)),
        None => Ok(None),
    }
}

/// Pages of due deliveries one lease reads at most (each twice the size of the one before).
const LEASE_ROUNDS: usize = 8;

/// Records one attempt and applies what [`delivery::decide`] made of it (design §2, §6).
/// `jitter` in [-1, 1].
fn record_in_tx(tx: &Tx<'_>, lease: &Lease, o: &AttemptOutcome, jitter: f64) -> Result<Recorded> {
    let now = tx.now();
    let rows = tx.rows();
    let d = rows
        .delivery_for_record(lease.seq, &lease.delivery_id)?
        .ok_or_else(|| StoreError::NotFound {
            what: "delivery",
            id: lease.delivery_id.to_string(),
        })?;
    let (spec, revision) = current_spec(tx, &d.workflow)?;
    let cfg = webhook_of(&spec, &d.stage);
    let decision = delivery::decide(
        DeliveryNow {
            state: d.state,
            token: d.token.as_deref(),
            attempts: d.attempts,
            event: d.event,
        },
        AttemptMade {
            token: lease.token.as_deref(),
            trigger: lease.trigger,
        },
        o,
        cfg,
        jitter,
    );
    let mut rec = Recorded {
        delivery_id: lease.delivery_id.clone(),
        number: lease.number,
        state: d.state,
        attempts: d.attempts,
        max_attempts: delivery::max_attempts(cfg),
        next_attempt_at: None,
        routed_to: None,
        item_name: None,
        lease_lost: false,
        paused_stage: false,
    };
    rows.upsert_attempt(&AttemptRow {
        delivery: &lease.delivery_id,
        number: lease.number,
        trigger: lease.trigger,
        counted: decision.counted,
        outcome: o,
    })?;
    let (state, attempts, next, settlement) = match decision.effect {
        Effect::AttemptOnly { lease_lost } => {
            rec.lease_lost = lease_lost;
            rec.item_name = item_name(tx, d.item_id.as_deref())?;
            return Ok(rec);
        }
        Effect::Update {
            state,
            attempts,
            next_attempt_at,
            settle,
        } => (state, attempts, next_attempt_at, settle),
    };
    rec.state = state;
    rec.attempts = attempts;
    rec.next_attempt_at = next.map(to_time);
    let routed_version = match settlement {
        Some(settlement) => {
            let outcome = Final {
                lease,
                o,
                attempts,
                settle: settlement,
            };
            settle(tx, &spec, revision, &d, &outcome, &mut rec)?
        }
        None => {
            rec.item_name = item_name(tx, d.item_id.as_deref())?;
            None
        }
    };
    // One update of the delivery, after its routing (which never reads it back).
    rows.update_delivery(
        lease.seq,
        &DeliveryUpdate {
            state,
            attempts,
            next_attempt_at: next,
            last_status: o.status,
            last_error_kind: o.error_kind,
            last_attempt_at: o.started_at,
            now,
            routed_version,
        },
    )?;
    tx.counts().delivery_moved(
        d.workflow.as_str(),
        d.stage.as_str(),
        d.state.as_str(),
        state.as_str(),
    );
    Ok(rec)
}

/// A final outcome being recorded, and what the decision says it does.
struct Final<'a> {
    lease: &'a Lease,
    o: &'a AttemptOutcome,
    attempts: i64,
    settle: Settle,
}

/// Applies a final outcome's [`Settle`] besides the delivery row: the `delivery.failed`
/// notification, the stage's run of failures (and auto-pause), and the item's routing.
/// Returns the item version the routing wrote, when it routed.
fn settle(
    tx: &Tx<'_>,
    spec: &Arc<Workflow>,
    revision: i64,
    d: &DeliveryRow,
    f: &Final<'_>,
    rec: &mut Recorded,
) -> Result<Option<i64>> {
    let Final {
        lease,
        o,
        attempts,
        settle,
    } = *f;
    let rows = tx.rows();
    // The item as it is now: its name for the notification and the log line, its stage and
    // version for the fencing below.
    let item_id = d.item_id.clone().map(ItemId);
    let head = match &item_id {
        Some(id) => rows.load_item_head(id)?,
        None => None,
    };
    rec.item_name = head.as_ref().map(|h| h.name.clone());
    if settle.notify_failed && !spec.notify.is_empty() {
        let data = delivery::FailedDelivery {
            workflow: &d.workflow,
            stage: &d.stage,
            delivery_id: &lease.delivery_id,
            item_id: d.item_id.as_deref(),
            item_name: rec.item_name.as_deref(),
            attempts,
            outcome: o,
        }
        .data();
        insert_notifications(tx, spec, EventType::DeliveryFailed, item_id.as_ref(), &data)?;
    }
    match settle.failures {
        FailureRun::Untracked => {}
        FailureRun::Reset => rows.reset_failure_run(&d.workflow, &d.stage)?,
        FailureRun::Extend { pause_after } => {
            let n = rows.extend_failure_run(&d.workflow, &d.stage)?;
            if let Some(reason) = delivery::auto_pause(n, pause_after) {
                rec.paused_stage = rows.pause_stage(&d.workflow, &d.stage, &reason)?;
                if rec.paused_stage {
                    notify_paused(tx, spec, &d.stage, &reason, None)?;
                }
            }
        }
    }
    // Routing is compare-and-set on the item's stage and version (fencing).
    let (Some(item_id), Some(head)) = (item_id, head) else {
        return Ok(None);
    };
    if head.stage != d.stage || Some(head.version) != d.item_version {
        return Ok(None);
    }
    let route_of = |item: &crate::model::Item| {
        engine::outcome(spec, item, settle.route).map_err(|e| StoreError::Invalid(e.to_string()))
    };
    // The item's content (tags, properties, annotations: JSON to parse) is read by a route
    // only through a logic or sampling stage (each adds a hop) or into a webhook stage (a new
    // body). A route of at most one hop that delivers nothing read none of it: keep it.
    let mut route = route_of(&head)?;
    let item = if route.deliver || route.hops.len() > 1 {
        let Some(item) = rows.load_item(&item_id)? else {
            return Ok(None);
        };
        route = route_of(&item)?;
        item
    } else {
        head
    };
    apply_route(
        tx,
        spec,
        revision,
        &item,
        &route,
        MovedBy {
            operator: None,
            trigger: DeliveryTrigger::Route,
            via_delivery: Some(&lease.delivery_id),
        },
    )?;
    rec.routed_to = Some(route.stage);
    Ok(Some(item.version + 1))
}

/// The `stage.paused` notifications of a stage that was just paused (by hand or by itself).
pub(super) fn notify_paused(
    tx: &Tx<'_>,
    spec: &Workflow,
    stage: &StageId,
    reason: &str,
    operator: Option<&str>,
) -> Result<()> {
    if spec.notify.is_empty() {
        return Ok(());
    }
    let data = delivery::paused_data(&spec.id, stage, reason, operator);
    insert_notifications(tx, spec, EventType::StagePaused, None, &data)?;
    Ok(())
}

/// What a re-fire needs: the current spec and revision, the item, and the webhook stage.
type Refirable = (Arc<Workflow>, i64, crate::model::Item, StageId);

/// Why a delivery cannot be re-fired now (`Err` with the reason), or what re-firing it takes.
fn refire_refusal(
    tx: &Tx<'_>,
    id: &DeliveryId,
) -> Result<std::result::Result<Refirable, (RefusalKind, String)>> {
    let Some(RefireRow {
        workflow: wf,
        stage,
        event,
        item_id,
        state,
        routed_version,
    }) = tx.rows().refire_row(id)?
    else {
        return Ok(Err((
            RefusalKind::NotFound,
            format!("no delivery with id `{id}`"),
        )));
    };
    let Some(item_id) = item_id.filter(|_| event == EventType::StageWebhook.as_str()) else {
        return Ok(Err((
            RefusalKind::InvalidTransition,
            format!(
                "delivery `{id}` is a {event} delivery; only stage.webhook deliveries can be re-fired"
            ),
        )));
    };
    let state: DeliveryState = state
        .parse()
        .map_err(|e: crate::model::ParseEnumError| StoreError::Database(e.to_string()))?;
    if state.is_open() {
        return Ok(Err((
            RefusalKind::Stale,
            format!("delivery `{id}` is still {state}; wait for its outcome or cancel it"),
        )));
    }
    let latest = tx.rows().latest_webhook_delivery(&item_id)?;
    let Some(item) = tx.rows().load_item(&ItemId::new(item_id.as_str()))? else {
        return Ok(Err((
            RefusalKind::Stale,
            format!("item `{item_id}` no longer exists"),
        )));
    };
    if let Some(latest) = latest.filter(|l| l != id.as_str()) {
        return Ok(Err((
            RefusalKind::Stale,
            format!(
                "delivery `{latest}` is newer for item `{item_id}`; {}",
                where_now(&item.id, &item.stage, item.state)
            ),
        )));
    }
    let stage = StageId(stage);
    let unmoved = item.stage == stage || routed_version == Some(item.version);
    if !unmoved {
        return Ok(Err((
            RefusalKind::Stale,
            format!(
                "{} and has moved since delivery `{id}`; assign it to `{stage}` to deliver again",
                where_now(&item.id, &item.stage, item.state)
            ),
        )));
    }
    let (spec, rev) = current_spec(tx, &WorkflowId(wf))?;
    if spec.stage(&stage).map(|s| s.kind()) != Some(StageKind::Webhook) {
        return Ok(Err((
            RefusalKind::Stale,
            format!("stage `{stage}` is no longer a webhook stage of the workflow"),
        )));
    }
    Ok(Ok((spec, rev, item, stage)))
}

/// Re-fires `ids` in order until they are done or [`REFIRE_BUDGET`] has passed; returns the
/// report and how many ids it took (the caller sends the rest in the next transaction).
fn refire_in_tx(
    conn: &Tx<'_>,
    ids: &[DeliveryId],
    operator: &str,
) -> Result<(RefireReport, usize)> {
    let mut report = RefireReport::default();
    let started = std::time::Instant::now();
    let mut taken = 0;
    for id in ids {
        if taken % 16 == 15 && started.elapsed() >= REFIRE_BUDGET {
            break;
        }
        taken += 1;
        match refire_refusal(conn, id)? {
            Err((kind, reason)) => report.refused.push(DeliveryRefusal {
                delivery_id: id.clone(),
                kind,
                reason,
            }),
            Ok((spec, rev, item, stage)) => {
                let route = engine::enter(&spec, &item, &stage, HistoryCause::Refire)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                let created = apply_route(
                    conn,
                    &spec,
                    rev,
                    &item,
                    &route,
                    MovedBy {
                        operator: Some(operator),
                        trigger: DeliveryTrigger::Refire,
                        via_delivery: None,
                    },
                )?;
                if let Some(new) = created {
                    conn.rows().set_refire_of(&new, id)?;
                    report.created.push(new);
                }
                report.refired += 1;
            }
        }
    }
    Ok((report, taken))
}

const REFIRE_CHUNK: usize = 500;
/// A re-fire transaction stops taking deliveries after this long: 500 re-fires held the write
/// lock ~300 ms, and another process waiting for it (a `serve` recording attempts) was
/// starved for seconds during a 100,000-delivery re-fire.
const REFIRE_BUDGET: std::time::Duration = std::time::Duration::from_millis(40);

impl Store {
    /// Writes this dispatcher's heartbeat row (insert or refresh).
    pub async fn heartbeat(&self, info: &DispatcherInfo) -> Result<()> {
        let info = info.clone();
        self.write_async("dispatch", move |c| {
            c.rows().upsert_heartbeat(&Heartbeat {
                id: &info.id,
                pid: info.pid,
                host: &info.host,
                process_start: &info.process_start,
                started_at: info.started_at.timestamp_millis(),
                now: c.now(),
                concurrency: info.concurrency,
            })
        })
        .await
    }

    /// Removes this dispatcher's heartbeat row (clean shutdown).
    pub async fn unregister_dispatcher(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.write_async("dispatch", move |c| c.rows().delete_dispatcher(&id))
            .await
    }

    /// Every heartbeat row, newest beat first.
    pub fn dispatchers(&self) -> Result<Vec<DispatcherInfo>> {
        self.read(|c| {
            let rows = c
                .prepare_cached(
                    "SELECT id, pid, host, process_start, concurrency, started_at, last_beat
                     FROM dispatchers ORDER BY last_beat DESC",
                )?
                .query_map([], |r| {
                    Ok(DispatcherInfo {
                        id: r.get(0)?,
                        pid: r.get(1)?,
                        host: r.get(2)?,
                        process_start: r.get(3)?,
                        concurrency: r.get(4)?,
                        started_at: to_time(r.get(5)?),
                        last_beat: to_time(r.get(6)?),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Dispatchers on this host whose process is gone (their leases may be taken at once).
    pub fn dead_local_dispatchers(&self) -> Result<Vec<String>> {
        let host = hostname();
        Ok(self
            .dispatchers()?
            .into_iter()
            .filter(|d| d.host == host && process_start(d.pid).as_deref() != Some(&d.process_start))
            .map(|d| d.id)
            .collect())
    }

    /// Leases up to `limit` due deliveries for `owner`, first reclaiming expired leases.
    pub async fn lease_due(
        &self,
        owner: &str,
        limit: usize,
        dead_owners: Vec<String>,
    ) -> Result<Vec<Lease>> {
        let owner = owner.to_string();
        self.write_async("dispatch", move |c| {
            lease_in_tx(c, &owner, limit, &dead_owners)
        })
        .await
    }

    /// When the dispatcher next has something to do: the earliest due time of an unpaused
    /// open delivery or the earliest lease expiry, in ms since the epoch.
    pub fn next_wakeup(&self) -> Result<Option<i64>> {
        self.read(|c| {
            let due: Option<i64> = c
                .prepare_cached(
                    "SELECT d.next_attempt_at FROM deliveries d INDEXED BY deliveries_due
                     WHERE d.state IN ('pending', 'retry_scheduled') AND d.next_attempt_at IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM stages s WHERE s.workflow_id = d.workflow_id
                                       AND s.id = d.stage_id AND s.retired_at IS NULL AND s.paused = 1)
                     ORDER BY d.next_attempt_at LIMIT 1",
                )?
                .query_row([], |r| r.get(0))
                .optional()?;
            let expiry: Option<i64> = c
                .prepare_cached(
                    "SELECT MIN(lease_until) FROM deliveries WHERE state = 'in_flight'",
                )?
                .query_row([], |r| r.get(0))?;
            Ok(match (due, expiry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
        })
    }

    /// Records an attempt and applies its outcome, in the writer's next group commit.
    pub async fn record_attempt(&self, lease: &Lease, outcome: AttemptOutcome) -> Result<Recorded> {
        let lease = lease.clone();
        let jitter = fastrand::f64() * 2.0 - 1.0;
        self.write_async("dispatch", move |c| {
            record_in_tx(c, &lease, &outcome, jitter)
        })
        .await
    }

    /// Records finished attempts and leases next deliveries for `owner`, all in one write job:
    /// the dispatcher's slots hand in what they finished together, so the writer runs one job
    /// (one savepoint, one read of the due index) for many attempts instead of two per
    /// attempt. `take` runs when the writer starts the job, so the batch holds everything
    /// handed in until that moment; it gives the finished attempts (shared, not copied: the
    /// caller keeps them to publish or retry from) and how many next deliveries to lease. The
    /// records come first, so a stage's `max_in_flight` never counts a finished slot. All or
    /// nothing: when any record fails, nothing of the job is kept and the caller records them
    /// one by one ([`Store::record_attempt`]) to learn which.
    pub async fn record_and_lease(
        &self,
        owner: &str,
        take: impl FnOnce() -> (Arc<Vec<(Lease, AttemptOutcome)>>, usize) + Send + 'static,
    ) -> Result<(Vec<Recorded>, Vec<Lease>)> {
        let owner = owner.to_string();
        self.write_async("dispatch", move |c| {
            let (finished, want) = take();
            let recorded = finished
                .iter()
                .map(|(lease, outcome)| {
                    record_in_tx(c, lease, outcome, fastrand::f64() * 2.0 - 1.0)
                })
                .collect::<Result<Vec<_>>>()?;
            let leases = if want > 0 {
                lease_in_tx(c, &owner, want, &[])?
            } else {
                Vec::new()
            };
            Ok((recorded, leases))
        })
        .await
    }

    /// Gives back leases this dispatcher could not finish (shutdown): each gets an
    /// `interrupted` attempt and is due again now.
    pub async fn release_leases(&self, owner: &str) -> Result<usize> {
        let owner = owner.to_string();
        self.write_async("dispatch", move |c| reclaim(c, &[owner]))
            .await
    }

    /// Re-fires deliveries by id (design §6): each item goes back into the delivery's stage
    /// and gets a new delivery linked to the old one.
    pub fn refire(&self, ids: &[DeliveryId], operator: &str) -> Result<RefireReport> {
        self.ensure_writable("refire")?;
        let mut report = RefireReport::default();
        let mut rest = ids;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(REFIRE_CHUNK)];
            let (ids, op) = (chunk.to_vec(), operator.to_string());
            let (r, taken) = self.write("refire", move |c| {
                let (r, taken) = refire_in_tx(c, &ids, &op)?;
                audit(
                    c,
                    &op,
                    "refire",
                    &format!("{taken} delivery(ies)"),
                    None,
                    r.refired,
                )?;
                Ok((r, taken))
            })?;
            rest = &rest[taken.max(1).min(rest.len())..];
            if !rest.is_empty() {
                // Leave the lock free for a moment: other processes poll for it every
                // millisecond (store::wait_for_lock), this process's writer queue takes its turn.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            report.refired += r.refired;
            report.created.extend(r.created);
            report.refused.extend(r.refused);
        }
        Ok(report)
    }

    /// Every failed `stage.webhook` delivery matching `filter` that is its item's latest,
    /// oldest first, at most `limit`.
    pub fn failed_deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: Option<usize>,
    ) -> Result<Vec<DeliveryId>> {
        let mut f = filter.clone();
        f.state = Some(DeliveryState::Failed);
        f.event = Some(EventType::StageWebhook);
        let mut out = Vec::new();
        let mut after = None;
        let want = limit.unwrap_or(usize::MAX);
        loop {
            let page = self.list_deliveries(&f, after, 5000)?;
            let done = page.len() < 5000;
            after = page.last().map(|(_, c)| *c);
            // An older failed delivery of an item that has a newer one would only be refused.
            let latest = self.read(|c| {
                let mut q = c.prepare_cached(
                    "SELECT MAX(seq) FROM deliveries WHERE item_id = ?1 AND event = 'stage.webhook'",
                )?;
                let mut keep = Vec::with_capacity(page.len());
                for (d, seq) in &page {
                    let newest: Option<i64> = match &d.item_id {
                        Some(item) => q.query_row([item.as_str()], |r| r.get(0))?,
                        None => None,
                    };
                    keep.push(newest == Some(*seq));
                }
                Ok(keep)
            })?;
            out.extend(
                page.into_iter()
                    .zip(latest)
                    .filter(|(_, latest)| *latest)
                    .map(|((d, _), _)| d.id),
            );
            if done || out.len() >= want {
                break;
            }
        }
        out.truncate(want);
        out.reverse();
        Ok(out)
    }

    /// Allocates a manual attempt of a delivery: a replay of its frozen bytes (design §6).
    pub fn begin_replay(&self, id: &DeliveryId, operator: &str) -> Result<Lease> {
        let (id, op) = (id.clone(), operator.to_string());
        self.write("replay", move |c| {
            let Some(ManualAttempt {
                workflow: wf,
                stage,
                item_id,
                event,
                seq,
                number,
                attempts,
            }) = c.rows().take_manual_number(&id)?
            else {
                return Err(StoreError::NotFound {
                    what: "delivery",
                    id: id.to_string(),
                });
            };
            let body = c.rows().body_of(seq)?;
            let (spec, revision) = current_spec(c, &WorkflowId::new(wf.as_str()))?;
            audit(c, &op, "replay", &format!("delivery {id}"), None, 1)?;
            Ok(Lease {
                delivery_id: id,
                seq,
                token: None,
                number,
                trigger: AttemptTrigger::Manual,
                workflow: WorkflowId(wf),
                revision,
                stage: StageId(stage),
                item_id: item_id.map(ItemId),
                event,
                body: body.into(),
                attempts,
                spec,
            })
        })
    }

    /// Creates a `webhook.test` delivery for a stage with a sample body, leased to the caller,
    /// who sends it once and records it (design §2 Test).
    pub fn begin_test(&self, wf: &WorkflowId, stage: &StageId, operator: &str) -> Result<Lease> {
        let (wf, stage, op) = (wf.clone(), stage.clone(), operator.to_string());
        self.write("test", move |c| {
            let (spec, revision) = current_spec(c, &wf)?;
            let st = spec.stage(&stage).ok_or_else(|| StoreError::NotFound {
                what: "stage",
                id: format!("{wf}/{stage}"),
            })?;
            let cfg = st.webhook().ok_or_else(|| {
                StoreError::Invalid(format!(
                    "stage `{stage}` is a {} stage; only webhook stages can be tested",
                    st.kind()
                ))
            })?;
            let now = c.now();
            let id = DeliveryId::generate();
            let meta = DeliveryMeta {
                delivery_id: id.clone(),
                event: EventType::WebhookTest,
                trigger: DeliveryTrigger::Test,
                previous_stage: None,
                created_at: to_time(now),
            };
            let body = test_body(&spec, st, &meta)
                .map_err(|e| StoreError::Invalid(format!("cannot build the test payload: {e}")))?;
            let token = uuid::Uuid::now_v7().simple().to_string();
            let owner = format!("test:{}", std::process::id());
            let seq = c.rows().insert_delivery(&NewDelivery {
                id: &id,
                workflow: &wf,
                stage: &stage,
                item: None,
                event: EventType::WebhookTest,
                trigger: DeliveryTrigger::Test,
                item_version: None,
                refire_of: None,
                lease: Some(NewLease {
                    token: &token,
                    until: now + lease_ms(Some(cfg)),
                    owner: &owner,
                    number: 1,
                }),
                now,
                body: &body,
            })?;
            c.counts()
                .add_deliveries(wf.as_str(), stage.as_str(), "in_flight", 1);
            audit(c, &op, "test", &format!("stage {wf}/{stage}"), None, 1)?;
            Ok(Lease {
                delivery_id: id,
                seq,
                token: Some(token),
                number: 1,
                trigger: AttemptTrigger::Manual,
                workflow: wf,
                revision,
                stage,
                item_id: None,
                event: EventType::WebhookTest,
                body: body.into(),
                attempts: 0,
                spec,
            })
        })
    }
}

impl Store {
    /// Attempts recorded after `after_seq` (any process), oldest first, for the console's log
    /// pane. Returns each with its sequence number.
    pub fn attempts_after(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, crate::model::AttemptEvent)>> {
        self.read(|c| {
            let rows = c
                .prepare_cached(
                    "SELECT a.seq, a.delivery_id, d.event, d.workflow_id, d.stage_id, d.item_id, i.name,
                            a.number, a.trigger, d.attempts, a.status, a.error_kind, a.error_message,
                            a.duration_ms, d.state, d.next_attempt_at, a.started_at
                     FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
                     LEFT JOIN items i ON i.id = d.item_id
                     WHERE a.seq > ?1 ORDER BY a.seq LIMIT ?2",
                )?
                .query_map(params![after_seq, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        crate::model::AttemptEvent {
                            at: to_time(r.get(16)?),
                            delivery_id: DeliveryId(r.get(1)?),
                            event: enum_col(r, 2)?,
                            workflow: WorkflowId(r.get(3)?),
                            stage: StageId(r.get(4)?),
                            item_id: r.get::<_, Option<String>>(5)?.map(ItemId),
                            item_name: r.get(6)?,
                            number: r.get(7)?,
                            trigger: enum_col(r, 8)?,
                            attempts: r.get(9)?,
                            max_attempts: 0,
                            status: r.get(10)?,
                            error_kind: match r.get::<_, Option<String>>(11)? {
                                Some(_) => Some(enum_col(r, 11)?),
                                None => None,
                            },
                            error_message: r.get(12)?,
                            duration_ms: r.get::<_, Option<i64>>(13)?.unwrap_or(0),
                            state: enum_col(r, 14)?,
                            next_attempt_at: r.get::<_, Option<i64>>(15)?.map(to_time),
                            routed_to: None,
                            paused_stage: false,
                            lease_lost: false,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut out = Vec::with_capacity(rows.len());
            let mut max: std::collections::HashMap<String, Arc<Workflow>> = Default::default();
            for (seq, mut e) in rows {
                if !max.contains_key(e.workflow.as_str())
                    && let Ok((spec, _)) = read_current_spec(c, &e.workflow)
                {
                    max.insert(e.workflow.to_string(), spec);
                }
                e.max_attempts = max
                    .get(e.workflow.as_str())
                    .and_then(|s| webhook_of(s, &e.stage))
                    .map(|w| w.max_attempts)
                    .unwrap_or(0);
                out.push((seq, e));
            }
            Ok(out)
        })
    }

    /// The sequence number of the newest attempt (the log pane starts after it).
    pub fn last_attempt_seq(&self) -> Result<i64> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT COALESCE(MAX(seq), 0) FROM attempts", [], |r| {
                    r.get(0)
                })?,
            )
        })
    }
}
