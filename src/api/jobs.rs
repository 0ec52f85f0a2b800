//! Bulk actions of the API as jobs (issue 18): `POST /v1/deliveries/refire|replay|cancel`
//! counts what its selection matches, answers at once with a job, and acts on a blocking
//! thread in the actions layer's chunks; `GET /v1/jobs/{id}` shows its progress and
//! `DELETE /v1/jobs/{id}` stops it after the chunk under way (what was done stays done).
//!
//! Jobs live in the memory of the `serve` process that runs them (the newest [`KEPT`]
//! finished ones are kept for polling); the audit row each writes is the lasting record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::actions::{self, Actor, BulkAction, BulkReport, Control, Outcome, Plan};
use crate::model::{AttemptEvent, DeliveryId};
use crate::store::{DeliveryRefusal, Store};

/// Finished jobs kept for polling; older ones are forgotten (their audit rows stay).
pub const KEPT: usize = 200;
/// Refusals a job's view lists (all are counted).
const REFUSALS_SHOWN: usize = 100;

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// A dry run: what it would touch (`ids`); nothing runs.
    Planned,
    Running,
    /// Every selected delivery was handled (some may have been refused: see `refused`).
    Done,
    /// Stopped by `DELETE` before the end; what was done stays done.
    Stopped,
    /// The store failed midway (`error`); what was done stays done.
    Failed,
}

/// A bulk job as `GET /v1/jobs/{id}` shows it.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Job {
    pub id: String,
    pub action: BulkAction,
    pub state: JobState,
    /// The operator (the token's name).
    pub operator: String,
    /// The filter as CLI flags (absent when ids were given).
    pub filter: Option<String>,
    /// How many deliveries the selection matched (counted before the first change).
    pub matched: usize,
    /// How many were handled so far (acted on or refused).
    pub processed: usize,
    /// How many were re-fired, replayed or cancelled (known when the job ends).
    pub acted: usize,
    /// How many were refused; `refusals` lists the first 100 with their kind.
    pub refused: usize,
    pub refusals: Vec<DeliveryRefusal>,
    /// Re-fire: how many new deliveries were queued.
    pub created: usize,
    /// The audit row (`hookops audit show ID`), when the job has ended.
    pub audit_id: Option<i64>,
    pub error: Option<String>,
    /// A dry run: the deliveries it would act on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<DeliveryId>>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

struct Entry {
    view: Mutex<Job>,
    stop: AtomicBool,
}

/// The jobs of this process.
#[derive(Default)]
pub struct Jobs {
    list: Mutex<VecDeque<Arc<Entry>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while a job view was being written leaves a view, not a broken one.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Job {
    fn new(plan: &Plan, operator: &str) -> Job {
        Job {
            id: format!("job_{}", uuid::Uuid::now_v7().simple()),
            action: plan.action,
            state: JobState::Running,
            operator: operator.to_string(),
            filter: plan.filter.clone(),
            matched: plan.matched,
            processed: 0,
            acted: 0,
            refused: 0,
            refusals: Vec::new(),
            created: 0,
            audit_id: None,
            error: None,
            ids: None,
            created_at: Utc::now(),
            finished_at: None,
        }
    }

    /// A dry run's answer: the plan, not kept.
    pub fn planned(plan: Plan, operator: &str) -> Job {
        let mut j = Job::new(&plan, operator);
        j.state = JobState::Planned;
        j.ids = Some(plan.ids);
        j.finished_at = Some(j.created_at);
        j
    }

    fn finish(&mut self, r: &BulkReport) {
        self.state = match r.outcome {
            Outcome::Stopped => JobState::Stopped,
            Outcome::Failed => JobState::Failed,
            _ => JobState::Done,
        };
        self.processed = r.processed;
        self.acted = r.acted;
        self.refused = r.refused.len();
        self.refusals = r.refused.iter().take(REFUSALS_SHOWN).cloned().collect();
        self.created = r.created.len();
        self.audit_id = Some(r.audit_id);
        self.error = r.error.clone();
        self.finished_at = Some(Utc::now());
    }
}

impl Jobs {
    /// Starts `plan` on a blocking thread; answers the job as it starts. The attempts a
    /// replay job sends are handed to `published`.
    pub fn start(
        self: &Arc<Self>,
        store: Store,
        actor: Actor,
        plan: Plan,
        max_send_body: usize,
        published: impl Fn(&AttemptEvent) + Send + 'static,
    ) -> Job {
        let entry = Arc::new(Entry {
            view: Mutex::new(Job::new(&plan, &actor.operator)),
            stop: AtomicBool::new(false),
        });
        let view = lock(&entry.view).clone();
        self.keep(entry.clone());
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut progress = |done: usize, _: usize| lock(&entry.view).processed = done;
            let r = actions::execute(
                &store,
                &actor,
                plan,
                Control {
                    stop: Some(&entry.stop),
                    progress: &mut progress,
                    rt: Some(&rt),
                    max_send_body,
                },
            );
            let mut v = lock(&entry.view);
            match r {
                Ok(r) => {
                    for a in &r.attempts {
                        published(a);
                    }
                    v.finish(&r);
                }
                Err(e) => {
                    v.state = JobState::Failed;
                    v.error = Some(e.to_string());
                    v.finished_at = Some(Utc::now());
                }
            }
        });
        view
    }

    fn keep(&self, entry: Arc<Entry>) {
        let mut list = lock(&self.list);
        list.push_back(entry);
        // Forget the oldest finished jobs beyond the bound; running ones always stay.
        while list.len() > KEPT {
            let Some(pos) = list
                .iter()
                .position(|e| lock(&e.view).state != JobState::Running)
            else {
                break;
            };
            list.remove(pos);
        }
    }

    fn find(&self, id: &str) -> Option<Arc<Entry>> {
        lock(&self.list)
            .iter()
            .find(|e| lock(&e.view).id == id)
            .cloned()
    }

    /// The job's view now.
    pub fn get(&self, id: &str) -> Option<Job> {
        self.find(id).map(|e| lock(&e.view).clone())
    }

    /// Asks the job to stop after its chunk under way; answers its view.
    pub fn stop(&self, id: &str) -> Option<Job> {
        self.find(id).map(|e| {
            e.stop.store(true, Ordering::SeqCst);
            lock(&e.view).clone()
        })
    }
}
