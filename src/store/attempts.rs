//! Recording attempts (design §2, §6): the attempt row, then what
//! [`crate::engine::delivery::decide`] made of it: the delivery's new state and due time, the
//! stage's failure run and auto-pause, the `delivery.failed` notification, and the item's
//! route. Fencing: recording an outcome requires the lease token to still hold; routing an
//! outcome is compare-and-set on the item's (stage, version) recorded in the delivery, so an
//! item that moved meanwhile is never moved again by a late outcome.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Tx;
use super::deliveries::insert_notifications;
use super::items::{MovedBy, apply_route};
use super::leases::{Lease, lease_in_tx, webhook_of};
use super::seam::{AttemptRow, Counted, DeliveryRow, DeliveryUpdate};
use super::workflows::{current_spec, read_current_spec};
use super::{Result, Store, StoreError, to_time};
use crate::engine;
use crate::engine::delivery::{self, AttemptMade, DeliveryNow, Effect, FailureRun, Settle};
use crate::engine::flow::{self, Aimd};
use crate::model::{
    AttemptOutcome, DeliveryId, DeliveryState, DeliveryTrigger, EventType, ItemId, StageId,
};
use crate::workflow::Workflow;

/// Where a reader of the attempt log got to: pass it back to [`Store::attempts_after`].
/// Opaque to callers, and ordered as the log is read: a backend whose sequence order is not
/// its commit order defines its own (design §7).
///
/// SQLite's is the attempt's row number (`major` is 0): its rows commit in sequence order.
/// PostgreSQL's is (writing transaction id, row number), read only below the reader's
/// snapshot `xmin`, so a row that took an earlier number but committed later is not skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttemptCursor {
    pub(crate) major: i64,
    pub(crate) seq: i64,
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
    /// This outcome held the stage (a 429 or 503 with `Retry-After`) until then.
    pub held_until: Option<DateTime<Utc>>,
    /// What it tells the stage's adaptive concurrency (applied once per stage per batch).
    #[serde(skip)]
    pub(crate) signal: Option<flow::Signal>,
}

/// The name of a delivery's item, shown beside its id in lists of attempts.
fn item_name(tx: &Tx<'_>, item: Option<&str>) -> Result<Option<String>> {
    match item {
        Some(item) => tx.rows().item_name(&ItemId::new(item)),
        None => Ok(None),
    }
}

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
        held_until: None,
        signal: None,
    };
    // A receiver that asks for quiet holds the whole stage (issue 21), whichever attempt
    // asked: the hold keeps the others from piling on; this delivery's own retry is decided
    // as usual below.
    if cfg.is_some()
        && let Some(hold) = flow::hold_of(o)
        && rows.hold_stage(
            d.workflow.as_str(),
            d.stage.as_str(),
            hold.until,
            &hold.reason,
        )?
    {
        rec.held_until = Some(to_time(hold.until));
    }
    if decision.counted && cfg.is_some() {
        rec.signal = flow::signal_of(o);
    }
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
            last_error_class: crate::engine::cause::cause_class(
                o.error_kind,
                o.error_message.as_deref(),
                o.response_body.as_deref(),
            ),
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

/// Applies what recorded attempts tell their stages' adaptive concurrency ([`Aimd`]): one
/// read of each stage's row, and one write when its limit changed, per batch. `concurrency`
/// is the recording dispatcher's (`0`: none in this process), part of the ceiling.
fn adapt(tx: &Tx<'_>, leases: &[&Lease], recs: &[Recorded], concurrency: u32) -> Result<()> {
    let mut stages: Vec<(&Lease, Vec<flow::Signal>)> = Vec::new();
    for (lease, rec) in leases.iter().zip(recs) {
        let Some(signal) = rec.signal else { continue };
        match stages
            .iter_mut()
            .find(|(l, _)| l.workflow == lease.workflow && l.stage == lease.stage)
        {
            Some((_, signals)) => signals.push(signal),
            None => stages.push((lease, vec![signal])),
        }
    }
    let rows = tx.rows();
    for (lease, signals) in stages {
        let (wf, stage) = (lease.workflow.as_str(), lease.stage.as_str());
        let throttled = signals
            .iter()
            .any(|s| matches!(s, flow::Signal::Throttled { .. }));
        let Some(row) = rows.stage_flow(wf, stage)? else {
            continue;
        };
        if row.concurrency_limit.is_none() && !throttled {
            continue; // not reduced, and nothing to reduce it: no write
        }
        let (spec, _) = current_spec(tx, &lease.workflow)?;
        let Some(cfg) = webhook_of(&spec, &lease.stage) else {
            continue;
        };
        let ceiling = [cfg.max_in_flight, (concurrency > 0).then_some(concurrency)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(u32::MAX);
        // What the stage had in flight: what still is, and the attempts just recorded.
        let in_flight = rows.stored_count(Counted::Deliveries, wf, stage, Some("in_flight"))?
            + tx.counts().unwritten_deliveries(wf, stage, "in_flight")
            + signals.len() as i64;
        let before = Aimd {
            limit: row
                .concurrency_limit
                .map(|l| l.clamp(1, i64::from(u32::MAX)) as u32),
            successes: row.limit_successes.clamp(0, i64::from(u32::MAX)) as u32,
            decreased_at: row.limit_decreased_at,
        };
        let now = tx.now();
        let in_flight = in_flight.clamp(1, i64::from(u32::MAX)) as u32;
        let after = signals.into_iter().fold(before.capped(ceiling), |a, s| {
            a.apply(s, ceiling, in_flight, now)
        });
        if after != before {
            rows.put_concurrency_limit(
                wf,
                stage,
                after.limit.map(i64::from),
                i64::from(after.successes),
                after.decreased_at,
            )?;
        }
    }
    Ok(())
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

impl Store {
    /// Records an attempt and applies its outcome, in the writer's next group commit.
    pub async fn record_attempt(&self, lease: &Lease, outcome: AttemptOutcome) -> Result<Recorded> {
        let lease = lease.clone();
        let jitter = self.jitter().draw();
        let concurrency = self.dispatch_concurrency();
        self.write_async("dispatch", move |c| {
            let rec = record_in_tx(c, &lease, &outcome, jitter)?;
            adapt(c, &[&lease], std::slice::from_ref(&rec), concurrency)?;
            Ok(rec)
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
        let jitter = self.jitter();
        let concurrency = self.dispatch_concurrency();
        self.write_async("dispatch", move |c| {
            let (finished, want) = take();
            let recorded = finished
                .iter()
                .map(|(lease, outcome)| record_in_tx(c, lease, outcome, jitter.draw()))
                .collect::<Result<Vec<_>>>()?;
            let leases: Vec<&Lease> = finished.iter().map(|(l, _)| l).collect();
            adapt(c, &leases, &recorded, concurrency)?;
            let leases = if want > 0 {
                lease_in_tx(c, &owner, want, &[])?
            } else {
                Vec::new()
            };
            Ok((recorded, leases))
        })
        .await
    }
}

impl Store {
    /// Attempts recorded after `after` (any process), in the order the log reads them, for
    /// the console's log pane. Returns each with its cursor.
    pub fn attempts_after(
        &self,
        after: AttemptCursor,
        limit: usize,
    ) -> Result<Vec<(AttemptCursor, crate::model::AttemptEvent)>> {
        self.read(|r| {
            let mut rows = r.attempts_after(after, limit)?;
            let mut max: std::collections::HashMap<String, Arc<Workflow>> = Default::default();
            for (_, e) in &mut rows {
                if !max.contains_key(e.workflow.as_str())
                    && let Ok((spec, _)) = read_current_spec(r, &e.workflow)
                {
                    max.insert(e.workflow.to_string(), spec);
                }
                e.max_attempts = max
                    .get(e.workflow.as_str())
                    .and_then(|s| webhook_of(s, &e.stage))
                    .map(|w| w.max_attempts)
                    .unwrap_or(0);
            }
            Ok(rows)
        })
    }

    /// The cursor of the newest attempt: the log pane starts after it.
    pub fn attempts_end(&self) -> Result<AttemptCursor> {
        self.read(|r| r.attempts_end())
    }

    /// Where a follower of the log starts (`deliveries --follow`, `GET /v1/attempts`): after
    /// the newest attempt, or with `since` just before the first attempt that started then
    /// or later, so reading on from there (and skipping the older attempts interleaved after
    /// it) misses and repeats none. The seek is one pass over the attempt rows' start times
    /// in SQL, not an index: an index would cost every recorded attempt a write.
    pub fn follow_start(&self, since: Option<DateTime<Utc>>) -> Result<AttemptCursor> {
        self.read(|r| match since {
            None => r.attempts_end(),
            Some(t) => match r.attempts_from(t.timestamp_millis())? {
                Some(c) => Ok(c),
                None => r.attempts_end(),
            },
        })
    }

    /// How many attempts were ever recorded in the store, by every process (`/metrics`).
    pub fn attempts_recorded(&self) -> Result<i64> {
        self.read(|r| r.attempts_recorded())
    }
}
