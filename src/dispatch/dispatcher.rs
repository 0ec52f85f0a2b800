//! The dispatcher loop: lease due deliveries, send them with bounded concurrency, record each
//! attempt through the store's group-committing writer, and publish attempt events.
//!
//! Wake-ups: within the process the writer's commit counter wakes the loop at once; commits
//! of other processes are noticed through `PRAGMA data_version` on a dedicated connection,
//! checked every [`POLL`]; otherwise the loop sleeps until the next due time or lease expiry.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};

use super::http::Sender;
use crate::model::AttemptEvent;
use crate::store::{
    AttemptOutcome, DispatcherInfo, Lease, Recorded, Store, StoreError, hostname, process_start,
};

/// How often other processes' commits are looked for.
const POLL: Duration = Duration::from_millis(15);
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long shutdown waits for in-flight requests before recording them as interrupted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Requests in flight at once per dispatcher process unless `--concurrency` says otherwise
/// (issue 21). Real receivers answer in 100–500 ms, and throughput is then bounded by
/// concurrency ÷ latency (Little's law): 64 gave ~445 deliveries/s against a ~140 ms receiver.
/// 512 (Svix runs 500) lifts that bound to ~5,000/s at 100 ms; a stage that needs less asks
/// for it (`max_in_flight`, `rate_limit`, or a 429 that halves its concurrency). README,
/// Performance, has the measurements, fast receivers and memory included.
pub const DEFAULT_CONCURRENCY: usize = 512;

/// Settings of one dispatcher.
#[derive(Clone, Debug)]
pub struct DispatcherOptions {
    /// Requests in flight at once in this process.
    pub concurrency: usize,
    /// Request bodies larger than this fail with a `policy` error (the stored
    /// `max_body_bytes` policy applies when it is smaller).
    pub max_body: usize,
    /// Refuse private targets even when the stored policy allows them (a flag only tightens).
    pub deny_private_targets: bool,
}

impl Default for DispatcherOptions {
    fn default() -> Self {
        DispatcherOptions {
            concurrency: DEFAULT_CONCURRENCY,
            max_body: super::http::DEFAULT_MAX_BODY,
            deny_private_targets: false,
        }
    }
}

/// The event of an attempt just recorded.
fn attempt_event(lease: &Lease, outcome: &AttemptOutcome, rec: &Recorded) -> AttemptEvent {
    AttemptEvent {
        at: crate::store::time_of(outcome.started_at),
        delivery_id: lease.delivery_id.clone(),
        event: lease.event,
        workflow: lease.workflow.clone(),
        stage: lease.stage.clone(),
        item_id: lease.item_id.clone(),
        item_name: rec.item_name.clone(),
        number: lease.number,
        trigger: lease.trigger,
        attempts: rec.attempts,
        max_attempts: rec.max_attempts,
        status: outcome.status,
        error_kind: outcome.error_kind,
        error_message: outcome.error_message.clone(),
        duration_ms: outcome.duration_ms,
        url: outcome.url.clone(),
        response_excerpt: outcome.response_body.as_deref().map(crate::model::excerpt),
        state: rec.state,
        next_attempt_at: rec.next_attempt_at,
        routed_to: rec.routed_to.clone(),
        paused_stage: rec.paused_stage,
        lease_lost: rec.lease_lost,
    }
}

/// A problem the dispatcher reports while it keeps running (e.g. the disk is full).
#[derive(Clone, Debug)]
pub enum DispatchNotice {
    Attempt(Box<AttemptEvent>),
    /// The store refused a write; dispatch pauses and retries.
    StoreError(String),
    /// The store accepts writes again.
    Recovered,
}

/// Runs a dispatcher until `shutdown` becomes true. Publishes notices on `events`.
pub async fn run(
    store: Store,
    opts: DispatcherOptions,
    events: broadcast::Sender<DispatchNotice>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    store.ensure_writable("dispatch")?;
    // Policies are stored in the database so they bind every dispatcher; re-read with each
    // heartbeat so a `policy set` takes effect within seconds.
    let policies = |store: &Store| {
        store
            .policies()
            .map(|p| p.tightened(opts.deny_private_targets, opts.max_body))
    };
    let sender = Arc::new(Sender::new(policies(&store)?).map_err(StoreError::Database)?);
    let pid = std::process::id();
    let info = DispatcherInfo {
        id: format!("{}:{pid}:{}", hostname(), uuid::Uuid::now_v7().simple()),
        pid,
        host: hostname(),
        process_start: process_start(pid).unwrap_or_default(),
        concurrency: opts.concurrency as u32,
        started_at: Utc::now(),
        last_beat: Utc::now(),
    };
    store.heartbeat(&info).await?;
    let concurrency = opts.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut commits = store.commits();
    let mut watcher = store.change_watcher()?;
    let mut dead = store.dead_local_dispatchers().unwrap_or_default();
    let mut last_beat = tokio::time::Instant::now();
    let health = StoreHealth::default();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let (handin, handins) = mpsc::unbounded_channel::<Handin>();
    tokio::spawn(batcher(
        store.clone(),
        info.id.clone(),
        events.clone(),
        health.clone(),
        handins,
    ));
    // Attempt tasks, kept so shutdown can stop the ones still waiting on the network: each
    // holds a sender of `events`, and `serve` waits for every sender to go before it exits.
    let mut tasks = tokio::task::JoinSet::new();

    while !*shutdown.borrow() {
        while tasks.try_join_next().is_some() {}
        while done_rx.try_recv().is_ok() {}
        if last_beat.elapsed() >= HEARTBEAT {
            last_beat = tokio::time::Instant::now();
            let _ = store.heartbeat(&info).await;
            dead = store.dead_local_dispatchers().unwrap_or_default();
            if let Ok(p) = policies(&store) {
                sender.set_policies(p);
            }
        }
        let free = slots.available_permits();
        let mut leased = 0;
        if free > 0 {
            match store
                .lease_due(&info.id, free, std::mem::take(&mut dead))
                .await
            {
                Ok(leases) => {
                    health.ok(&events);
                    leased = leases.len();
                    for lease in leases {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            break;
                        };
                        let (store, sender, events, done, handin) = (
                            store.clone(),
                            sender.clone(),
                            events.clone(),
                            done_tx.clone(),
                            handin.clone(),
                        );
                        let (owner, stop) = (info.id.clone(), shutdown.clone());
                        let health = health.clone();
                        tasks.spawn(async move {
                            let ctx = SlotContext {
                                store: &store,
                                sender: &sender,
                                events: &events,
                                owner: &owner,
                                shutdown: &stop,
                                health: &health,
                                handin: &handin,
                            };
                            slot(ctx, lease).await;
                            drop(permit);
                            let _ = done.send(());
                        });
                    }
                }
                Err(e) => {
                    health.failed(&events, || {
                        format!("dispatch paused: {e}; retrying every second")
                    });
                    tracing::error!("lease failed: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            }
        }
        if free > 0 && leased == free {
            continue; // there may be more due work; take it as slots free up
        }
        if free == 0 {
            // Every slot is busy and leases its own next delivery: wait for one to end.
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT.saturating_sub(last_beat.elapsed())) => {}
                _ = shutdown.changed() => {}
                _ = done_rx.recv() => {}
            }
            continue;
        }
        // Sleep until something may have changed.
        let now = Utc::now().timestamp_millis();
        let next = store.next_wakeup().ok().flatten();
        // Due work we could not lease (caps, all slots busy) must not make this loop spin.
        let floor = if leased == 0 { 20 } else { 0 };
        let wait_ms = next
            .map(|t| (t - now).max(floor))
            .unwrap_or(HEARTBEAT.as_millis() as i64);
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(wait_ms.min(HEARTBEAT.as_millis() as i64) as u64);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.changed() => break,
                r = async {
                    match commits.as_mut() {
                        Some(c) => c.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => { if r { break; } commits = None; }
                _ = tokio::time::sleep(POLL) => {
                    if watcher.changed().unwrap_or(false) {
                        break;
                    }
                }
            }
        }
    }

    // Shutdown: stop leasing, give in-flight requests a few seconds, then hand back the rest.
    let all = concurrency as u32;
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await;
    if drained.is_err() {
        let n = store.release_leases(&info.id).await.unwrap_or(0);
        tracing::warn!("shutdown: {n} in-flight deliveries recorded as interrupted and due now");
        // Their leases are given back: stop waiting for the answers (a late answer would only
        // fill in the `interrupted` row).
        tasks.shutdown().await;
    }
    let _ = store.unregister_dispatcher(&info.id).await;
    Ok(())
}

/// Whether the store refused the dispatcher's last write, shared by the main loop and the
/// slots so "dispatch paused" and "dispatch resumed" are each said once per episode.
#[derive(Clone, Default)]
struct StoreHealth(Arc<std::sync::atomic::AtomicBool>);

impl StoreHealth {
    fn failed(&self, events: &broadcast::Sender<DispatchNotice>, message: impl FnOnce() -> String) {
        if !self.0.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let _ = events.send(DispatchNotice::StoreError(message()));
        }
    }

    fn ok(&self, events: &broadcast::Sender<DispatchNotice>) {
        if self.0.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let _ = events.send(DispatchNotice::Recovered);
        }
    }
}

/// What a slot needs besides its lease.
#[derive(Clone, Copy)]
struct SlotContext<'a> {
    store: &'a Store,
    sender: &'a Sender,
    events: &'a broadcast::Sender<DispatchNotice>,
    owner: &'a str,
    shutdown: &'a watch::Receiver<bool>,
    health: &'a StoreHealth,
    handin: &'a mpsc::UnboundedSender<Handin>,
}

/// A finished attempt a slot hands to the [`batcher`], and where the answer goes.
struct Handin {
    lease: Lease,
    outcome: AttemptOutcome,
    /// The slot goes on: lease its next delivery in the same job.
    next: bool,
    reply: oneshot::Sender<Answer>,
}

/// The [`batcher`]'s answer to a slot.
enum Answer {
    /// The attempt is recorded and published; the slot's next lease, if it got one.
    Recorded(Option<Lease>),
    /// The batch failed: the slot records its attempt alone, which tells which attempt the
    /// store refused and why.
    Failed(Lease, AttemptOutcome),
}

/// Hand-ins waiting for the writer, and whether a write job that will take them is queued.
#[derive(Default)]
struct Waiting {
    handins: Vec<Handin>,
    queued: bool,
}

/// The most attempts one write job records. With 512 slots (issue 21) against a fast
/// receiver a job took ~500 at once and its transaction held the write lock for 70–190 ms
/// (README, Performance); 128 keep a job near what 64 slots made.
const MAX_BATCH: usize = 128;

impl Waiting {
    /// Takes the hand-ins for a job that is starting (at most [`MAX_BATCH`]): the next
    /// hand-in queues a new one, and so does the job for those it left ([`Waiting::more`]).
    fn take(waiting: &std::sync::Mutex<Waiting>) -> Vec<Handin> {
        waiting
            .lock()
            .map(|mut w| {
                w.queued = false;
                let n = w.handins.len().min(MAX_BATCH);
                w.handins.drain(..n).collect()
            })
            .unwrap_or_default()
    }

    /// Takes every hand-in (the writer is gone: each records alone).
    fn take_all(waiting: &std::sync::Mutex<Waiting>) -> Vec<Handin> {
        waiting
            .lock()
            .map(|mut w| std::mem::take(&mut w.handins))
            .unwrap_or_default()
    }

    /// After a job: whether hand-ins are left that no queued job will take; if so, the
    /// caller runs one for them (and it counts as queued).
    fn more(waiting: &std::sync::Mutex<Waiting>) -> bool {
        waiting
            .lock()
            .map(|mut w| {
                let more = !w.handins.is_empty() && !w.queued;
                w.queued |= more;
                more
            })
            .unwrap_or(false)
    }
}

/// What one write job took: the attempts (shared with the writer) and, in the same order,
/// whether each slot goes on and where its answer goes.
type Taken = (
    Arc<Vec<(Lease, AttemptOutcome)>>,
    Vec<(bool, oneshot::Sender<Answer>)>,
);

/// Turns the slots' finished attempts into few write jobs (`Store::record_and_lease`): one
/// job records every attempt it takes and leases those slots' next deliveries. At most one
/// job waits for the writer at a time, and it takes its hand-ins when the writer starts it,
/// so it holds everything handed in until then: while one job runs, the next is already
/// queued and grows, and the writer goes from one to the next without waiting for this task
/// (issue 4). The batcher publishes what was recorded, so a slot's lease and outcome are
/// moved, never copied.
async fn batcher(
    store: Store,
    owner: String,
    events: broadcast::Sender<DispatchNotice>,
    health: StoreHealth,
    mut handins: mpsc::UnboundedReceiver<Handin>,
) {
    let waiting = Arc::new(std::sync::Mutex::new(Waiting::default()));
    while let Some(first) = handins.recv().await {
        let submit = {
            let Ok(mut w) = waiting.lock() else { return };
            w.handins.push(first);
            while let Ok(h) = handins.try_recv() {
                w.handins.push(h);
            }
            !std::mem::replace(&mut w.queued, true)
        };
        if !submit {
            continue; // the queued job will take them
        }
        let (store, owner, events, health) =
            (store.clone(), owner.clone(), events.clone(), health.clone());
        let waiting = waiting.clone();
        tokio::spawn(async move {
            // One job, and another for what it left beyond MAX_BATCH, until none is left.
            loop {
                let taken: Arc<std::sync::Mutex<Option<Taken>>> = Default::default();
                let (into, from) = (taken.clone(), waiting.clone());
                let result = store
                    .record_and_lease(&owner, move || {
                        let batch = Waiting::take(&from);
                        let want = batch.iter().filter(|h| h.next).count();
                        let mut replies = Vec::with_capacity(batch.len());
                        let finished: Vec<_> = batch
                            .into_iter()
                            .map(|h| {
                                replies.push((h.next, h.reply));
                                (h.lease, h.outcome)
                            })
                            .collect();
                        let finished = Arc::new(finished);
                        if let Ok(mut t) = into.lock() {
                            *t = Some((finished.clone(), replies));
                        }
                        (finished, want)
                    })
                    .await;
                let taken = taken.lock().ok().and_then(|mut t| t.take());
                match (result, taken) {
                    (Ok((recorded, leases)), Some((finished, replies))) => {
                        health.ok(&events);
                        let mut leases = leases.into_iter();
                        for (((next, reply), rec), (lease, outcome)) in
                            replies.into_iter().zip(recorded).zip(finished.iter())
                        {
                            publish(&events, lease, outcome, &rec);
                            let lease = if next { leases.next() } else { None };
                            let _ = reply.send(Answer::Recorded(lease));
                        }
                    }
                    (Err(e), Some((finished, replies))) => {
                        tracing::debug!("batched record failed, recording one by one: {e}");
                        // The writer has let go of its copy by now; a clone is the fallback.
                        let finished = Arc::try_unwrap(finished).unwrap_or_else(|a| a.to_vec());
                        for ((_, reply), (lease, outcome)) in replies.into_iter().zip(finished) {
                            let _ = reply.send(Answer::Failed(lease, outcome));
                        }
                    }
                    (_, None) => {
                        // The job never ran (the writer is gone): whatever waits would wait for
                        // a job that is not coming. Each slot records alone, which reports why.
                        for h in Waiting::take_all(&waiting) {
                            let _ = h.reply.send(Answer::Failed(h.lease, h.outcome));
                        }
                        return;
                    }
                }
                if !Waiting::more(&waiting) {
                    break;
                }
            }
        });
    }
}

/// Runs one concurrency slot: sends `lease`, and while there is due work and no shutdown,
/// leases the slot's next delivery in the same write job that records the attempt (the
/// request is over, so the slot is free: design §6 "at most as many as free slots").
async fn slot(ctx: SlotContext<'_>, mut lease: Lease) {
    loop {
        let outcome = ctx.sender.send(&lease).await;
        let more = !*ctx.shutdown.borrow();
        let (reply, answer) = oneshot::channel();
        let handin = Handin {
            lease,
            outcome,
            next: more,
            reply,
        };
        // A batcher that is gone (shutdown) answers nothing: the attempt is recorded alone.
        let answer = match ctx.handin.send(handin) {
            Ok(()) => answer.await.ok(),
            Err(mpsc::error::SendError(h)) => Some(Answer::Failed(h.lease, h.outcome)),
        };
        let next = match answer {
            Some(Answer::Recorded(next)) => next,
            Some(Answer::Failed(lease, outcome)) => alone(ctx, &lease, outcome, more).await,
            // The batcher's job ended without an answer (only a panic does that): the lease
            // expires and its delivery is sent again, as after a crash.
            None => None,
        };
        match next {
            Some(l) => lease = l,
            None => return,
        }
    }
}

/// A slot's way when its batch failed: record its attempt by itself (retrying while the
/// store refuses writes) and lease its next delivery in the same group commit.
async fn alone(
    ctx: SlotContext<'_>,
    lease: &Lease,
    outcome: AttemptOutcome,
    more: bool,
) -> Option<Lease> {
    let next = async {
        if !more {
            return None;
        }
        match ctx.store.lease_due(ctx.owner, 1, Vec::new()).await {
            Ok(mut leases) => leases.pop(),
            Err(e) => {
                // The main loop reports store trouble; this slot just ends.
                tracing::warn!("re-lease failed: {e}");
                None
            }
        }
    };
    let ((), next) = tokio::join!(record(ctx, lease, outcome), next);
    next
}

fn publish(
    events: &broadcast::Sender<DispatchNotice>,
    lease: &Lease,
    outcome: &AttemptOutcome,
    rec: &Recorded,
) {
    let event = attempt_event(lease, outcome, rec);
    let _ = events.send(DispatchNotice::Attempt(Box::new(event)));
}

/// Records an attempt. When the database refuses the write (disk full, file made
/// read-only) the slot keeps the outcome and tries again every second until it is recorded:
/// the request was sent, so its outcome must not be lost to a fault that passes. A shutdown
/// does not stop the retries (it retries at once, then every second): the slot is still in
/// flight, so shutdown's grace period waits for it, and when that runs out the lease is given
/// back as `interrupted` and due now (design §6), not left to expire.
async fn record(ctx: SlotContext<'_>, lease: &Lease, outcome: AttemptOutcome) {
    let mut shutdown = ctx.shutdown.clone();
    let mut logged = false;
    loop {
        match ctx.store.record_attempt(lease, outcome.clone()).await {
            Ok(rec) => {
                ctx.health.ok(ctx.events);
                publish(ctx.events, lease, &outcome, &rec);
                return;
            }
            Err(e) => {
                if !logged {
                    logged = true;
                    tracing::error!(
                        "cannot record attempt {} of {}: {e}",
                        lease.number,
                        lease.delivery_id
                    );
                }
                ctx.health.failed(ctx.events, || {
                    format!(
                        "dispatch paused: cannot record an attempt of {}: {e}; retrying every second",
                        lease.delivery_id
                    )
                });
                if !matches!(e, StoreError::Database(_)) {
                    return;
                }
                if *shutdown.borrow_and_update() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }
}

/// Sends a manual attempt (a replay or a test) once, now, and records it.
pub async fn send_manual(
    store: &Store,
    lease: Lease,
    max_body: usize,
) -> Result<AttemptEvent, StoreError> {
    let policies = store.policies()?.tightened(false, max_body);
    let sender = Sender::new(policies).map_err(StoreError::Database)?;
    // A rate-limited stage: wait for the token this attempt reserved.
    if let Some(at) = lease.not_before {
        let wait = at - store.now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
    }
    let outcome = sender.send(&lease).await;
    let rec = store.record_attempt(&lease, outcome.clone()).await?;
    Ok(attempt_event(&lease, &outcome, &rec))
}
