//! Leasing due deliveries and reclaiming lost leases (design §6 "Leases"): a lease has a
//! token and a deadline of the stage timeout + 30 s; an expired lease, or one of a dead
//! dispatcher on this host, is turned back into a due delivery with an `interrupted` attempt
//! row. `max_in_flight` counts in-flight deliveries of a stage across every process.
//!
//! Flow control (issue 21, rules in [`crate::engine::flow`]): the due query skips held stages
//! and stages whose bucket waits for a token; a stage's effective concurrency is the lower of
//! `max_in_flight` and its AIMD limit; a rate-limited stage's tokens are taken once per lease
//! transaction for every delivery it leased (one write of the stage row per transaction, not
//! per delivery), and the moment its bucket runs dry, so the next page of the due query
//! already leaves it out.

use std::sync::Arc;

use super::Tx;
use super::seam::{Counted, Due};
use super::workflows::current_spec;
use super::{Result, Store};
use crate::engine::classify::INTERRUPTED_MESSAGE;
use crate::engine::flow;
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
    /// Not to be sent before this time (ms since the epoch): a test or a replay of a
    /// rate-limited stage waits for the token it reserved. `None`: at once.
    pub not_before: Option<i64>,
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
    let mut released = 0;
    for d in &lost {
        // The lease that was read, and only it. On PostgreSQL two processes may read the same
        // expired lease; the first releases it and may lease the delivery again at once, and
        // the second must then leave that new lease alone: ending it would let the first
        // process's attempt be recorded as lost, uncounted, and the delivery be sent twice at
        // once (the two-host crash suite saw it).
        if !rows.release_lease(&d.id, d.number, now)? {
            continue;
        }
        let url = current_spec(tx, &WorkflowId::new(d.workflow.as_str()))
            .ok()
            .and_then(|(spec, _)| {
                webhook_of(&spec, &StageId::new(d.stage.as_str()))
                    .map(|c| crate::redact::Redactor::new(&spec.secrets).redact(&c.url))
            })
            .unwrap_or_default();
        rows.insert_interrupted_attempt(&d.id, d.number, &url, INTERRUPTED_MESSAGE, now)?;
        tx.counts()
            .delivery_moved(&d.workflow, &d.stage, "in_flight", "pending");
        released += 1;
    }
    for owner in dead_owners {
        rows.delete_dispatcher(owner)?;
    }
    Ok(released)
}

/// What one lease transaction knows of a stage it met: its effective cap and in-flight
/// count, and its token bucket.
struct Gate {
    /// `max_in_flight` or the AIMD limit, whichever is lower.
    cap: Option<i64>,
    in_flight: i64,
    tokens: Option<Tokens>,
}

/// A rate-limited stage's bucket in this transaction.
struct Tokens {
    rate: crate::workflow::RateLimit,
    stored: Option<flow::Bucket>,
    available: u32,
    taken: u32,
    /// The bucket was written since the last token was taken.
    written: bool,
}

impl Tokens {
    /// Writes what this transaction took (and when the next token comes).
    fn write(&mut self, tx: &Tx<'_>, wf: &str, stage: &str) -> Result<()> {
        let t = flow::take(self.stored, &self.rate, tx.now(), self.taken);
        tx.rows()
            .put_bucket(wf, stage, t.bucket.tokens, t.bucket.at, t.next_token_at)?;
        self.written = true;
        Ok(())
    }
}

/// The gate of a stage met for the first time in a lease transaction.
fn gate_of(tx: &Tx<'_>, wf: &str, stage: &str, cfg: Option<&WebhookConfig>) -> Result<Gate> {
    let Some(cfg) = cfg else {
        return Ok(Gate {
            cap: None,
            in_flight: 0,
            tokens: None,
        });
    };
    // The stage's count and bucket hold only while no other process leases for it (a server
    // database): a stage another transaction is leasing for is left for this round.
    let gated = cfg.max_in_flight.is_some() || cfg.rate_limit.is_some();
    if gated && !tx.rows().lock_stage(wf, stage, false)? {
        return Ok(Gate {
            cap: Some(0),
            in_flight: 0,
            tokens: None,
        });
    }
    let row = tx.rows().stage_flow(wf, stage)?.unwrap_or_default();
    let cap = match (cfg.max_in_flight.map(i64::from), row.concurrency_limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let in_flight = match cap {
        Some(_) => {
            tx.rows()
                .stored_count(Counted::Deliveries, wf, stage, Some("in_flight"))?
                + tx.counts().unwritten_deliveries(wf, stage, "in_flight")
        }
        None => 0,
    };
    let tokens = cfg.rate_limit.map(|rate| {
        let stored = row.bucket.map(|(tokens, at)| flow::Bucket { tokens, at });
        Tokens {
            rate,
            stored,
            available: flow::available(stored, &rate, tx.now()),
            taken: 0,
            written: false,
        }
    });
    Ok(Gate {
        cap,
        in_flight,
        tokens,
    })
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
    // Per-stage caps (max_in_flight, AIMD) count in-flight deliveries across all processes.
    let mut gates: std::collections::HashMap<(String, String), Gate> = Default::default();
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
            let key = (wf.clone(), stage.clone());
            if !gates.contains_key(&key) {
                let mut g = gate_of(tx, &wf, &stage, cfg)?;
                if let Some(b) = g.tokens.as_mut().filter(|b| b.available == 0) {
                    // Out of tokens (its rate changed, or rounding): say when the next comes,
                    // so the due query leaves the stage out until then.
                    b.write(tx, &wf, &stage)?;
                }
                gates.insert(key.clone(), g);
            }
            let Some(gate) = gates.get_mut(&key) else {
                continue;
            };
            if gate.tokens.as_ref().is_some_and(|b| b.taken >= b.available) {
                continue;
            }
            if gate.cap.is_some_and(|cap| gate.in_flight >= cap) {
                continue;
            }
            let token = uuid::Uuid::now_v7().simple().to_string();
            let until = now + lease_ms(cfg);
            // A row another process holds (or took since the page was read) costs nothing:
            // only leases taken count toward the cap, which the stage lock keeps true.
            let Some(leased) = rows.lease_delivery(seq, &token, until, owner, now)? else {
                continue;
            };
            gate.in_flight += 1;
            if let Some(b) = gate.tokens.as_mut() {
                b.taken += 1;
                b.written = false;
                if b.taken >= b.available {
                    b.write(tx, &wf, &stage)?;
                }
            }
            let body = match leased.body {
                Some(b) => b,
                None => rows.body_of(seq)?,
            };
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
                not_before: None,
            });
        }
        if exhausted {
            break;
        }
    }
    // The tokens of every rate-limited stage that leased, once per stage.
    for ((wf, stage), gate) in gates.iter_mut() {
        if let Some(b) = gate.tokens.as_mut().filter(|b| b.taken > 0 && !b.written) {
            b.write(tx, wf, stage)?;
        }
    }
    Ok(leases)
}

/// Takes (or reserves ahead) one token of a rate-limited stage for a test or a replay;
/// returns when it may be sent, `None` when at once (design: they count against the rate
/// but are never refused).
pub(super) fn reserve_token(
    tx: &Tx<'_>,
    wf: &str,
    stage: &str,
    cfg: Option<&WebhookConfig>,
) -> Result<Option<i64>> {
    let Some(rate) = cfg.and_then(|c| c.rate_limit) else {
        return Ok(None);
    };
    tx.rows().lock_stage(wf, stage, true)?;
    let Some(row) = tx.rows().stage_flow(wf, stage)? else {
        return Ok(None);
    };
    let now = tx.now();
    let stored = row.bucket.map(|(tokens, at)| flow::Bucket { tokens, at });
    let (t, send_at) = flow::reserve(stored, &rate, now);
    tx.rows()
        .put_bucket(wf, stage, t.bucket.tokens, t.bucket.at, t.next_token_at)?;
    Ok((send_at > now).then_some(send_at))
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

    /// When the dispatcher next has something to do: the earliest due time of an open
    /// delivery of a stage that is not paused, held or waiting for a token; the earliest lease
    /// expiry; or the end of a hold or of a wait for a token; in ms since the epoch.
    pub fn next_wakeup(&self) -> Result<Option<i64>> {
        let now = self.now_ms();
        let (due, expiry, gate) = self.read(|r| r.next_due(now))?;
        Ok([due, expiry, gate].into_iter().flatten().min())
    }

    /// Gives back leases this dispatcher could not finish (shutdown): each gets an
    /// `interrupted` attempt and is due again now.
    pub async fn release_leases(&self, owner: &str) -> Result<usize> {
        let owner = owner.to_string();
        self.write_async("dispatch", move |c| reclaim(c, &[owner]))
            .await
    }
}
