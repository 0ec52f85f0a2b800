//! Leasing due deliveries and reclaiming lost leases (design §6 "Leases"): a lease has a
//! token and a deadline of the stage timeout + 30 s; an expired lease, or one of a dead
//! dispatcher on this host, is turned back into a due delivery with an `interrupted` attempt
//! row. `max_in_flight` counts in-flight deliveries of a stage across every process.

use std::sync::Arc;

use super::Tx;
use super::seam::{Counted, Due};
use super::workflows::current_spec;
use super::{Result, Store};
use crate::engine::classify::INTERRUPTED_MESSAGE;
use crate::model::{AttemptTrigger, DeliveryId, EventType, ItemId, StageId, WorkflowId};
use crate::workflow::{WebhookConfig, Workflow};

/// Extra lease time beyond the stage timeout (design §6: at least timeout + 30 s).
pub const LEASE_MARGIN_MS: i64 = 30_000;

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

/// How deliveries of `stage` are sent (a webhook stage, or a `[[notify]]` pseudo-stage).
pub(super) fn webhook_of<'a>(spec: &'a Workflow, stage: &StageId) -> Option<&'a WebhookConfig> {
    spec.delivery_config(stage)
}

pub(super) fn lease_ms(cfg: Option<&WebhookConfig>) -> i64 {
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

pub(super) fn lease_in_tx(
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
                    // The count holds only while no other process leases for the stage.
                    if !rows.lock_stage(&wf, &stage)? {
                        in_flight.insert(key, i64::MAX);
                        continue;
                    }
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
            let from = leased.from.as_deref().unwrap_or(&state);
            tx.counts().delivery_moved(&wf, &stage, from, "in_flight");
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

/// Pages of due deliveries one lease reads at most (each twice the size of the one before).
const LEASE_ROUNDS: usize = 8;

impl Store {
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
        let (due, expiry) = self.read(|r| r.next_due())?;
        Ok(match (due, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Gives back leases this dispatcher could not finish (shutdown): each gets an
    /// `interrupted` attempt and is due again now.
    pub async fn release_leases(&self, owner: &str) -> Result<usize> {
        let owner = owner.to_string();
        self.write_async("dispatch", move |c| reclaim(c, &[owner]))
            .await
    }
}
