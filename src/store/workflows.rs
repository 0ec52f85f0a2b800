//! Workflows, their revisions and stages: apply, list, show, pause and resume.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::seam::{Counted, Reads, RevisionRow, Rows, WorkflowCounts};
use super::{Result, Store, StoreError, Tx, to_time};
use crate::model::{ItemState, StageId, StageKind, WorkflowId};
use crate::workflow::Workflow;

/// What `workflow apply` did.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyReport {
    pub workflow: WorkflowId,
    pub revision: i64,
    /// True when the file matched the current revision and nothing was written.
    pub unchanged: bool,
    pub created: bool,
    pub added_stages: Vec<StageId>,
    pub retired_stages: Vec<StageId>,
    pub changed_stages: Vec<StageId>,
    /// Items moved out of removed stages, per `(from, to)`.
    pub moved: Vec<(StageId, StageId, i64)>,
}

/// A stage as listed by `workflow show` and the console: config, pause state and counts.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct StageSummary {
    pub id: StageId,
    pub name: String,
    pub kind: StageKind,
    /// Outgoing edges, as `label -> stage`.
    pub edges: Vec<(String, StageId)>,
    pub items: i64,
    pub waiting: i64,
    pub active: i64,
    pub in_delivery: i64,
    pub failed: i64,
    pub done: i64,
    pub paused: bool,
    pub paused_reason: Option<String>,
    /// Deliveries of this stage per state.
    pub deliveries: BTreeMap<String, i64>,
    /// Dataset stage whose `next` is automated: its waiting items need an operator.
    pub needs_assignment: bool,
    /// Held until then (a 429/503 with `Retry-After`; issue 21): no new lease before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_until: Option<DateTime<Utc>>,
    /// Why it is held ("429 from receiver").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_reason: Option<String>,
    /// The stage's effective concurrency when AIMD reduced it below its ceiling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// How long its queue (pending and retrying deliveries) takes to drain at its rate limit,
    /// in seconds; only for a rate-limited stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_seconds: Option<f64>,
    /// A webhook stage's settings, every secret masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookView>,
}

impl StageSummary {
    /// "held 28 s: 429 from receiver" while the stage is held (issue 21).
    pub fn hold_text(&self, now: DateTime<Utc>) -> Option<String> {
        let until = self.held_until.filter(|u| *u > now)?;
        let secs = ((until - now).num_milliseconds() + 999) / 1000;
        Some(format!(
            "held {}: {}",
            seconds_text(secs),
            self.held_reason
                .as_deref()
                .unwrap_or("asked by the receiver")
        ))
    }

    /// "20/s, drains in 5 s" for a rate-limited stage (issue 21).
    pub fn rate_text(&self) -> Option<String> {
        let rate = self.webhook.as_ref()?.rate_limit.as_deref()?;
        let drain = self.drain_seconds.unwrap_or(0.0).ceil() as i64;
        Some(if drain > 0 {
            format!("{rate}, drains in {}", seconds_text(drain))
        } else {
            rate.to_string()
        })
    }
}

/// `28 s`, `4 min 10 s`, `2 h 5 min`.
fn seconds_text(secs: i64) -> String {
    match secs {
        ..60 => format!("{secs} s"),
        60..3600 if secs % 60 == 0 => format!("{} min", secs / 60),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ if secs % 3600 < 60 => format!("{} h", secs / 3600),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// A webhook stage's settings as an operator may see them (`workflow show --json`, the API):
/// the URL and headers with their secrets redacted, `authorization` and signing keys masked.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct WebhookView {
    pub url: String,
    pub authorization: Option<String>,
    pub headers: Vec<(String, String)>,
    pub secrets: Vec<String>,
    pub include_annotations: bool,
    pub payload: crate::model::PayloadFormat,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub retry_schedule_ms: Vec<u64>,
    pub pause_after_failures: u32,
    pub max_in_flight: Option<u32>,
    /// `"20/s"`, `"300/min"`, `"10/h"` (issue 21).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// The rate limit's burst.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// The rate limit in requests per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
}

impl WebhookView {
    pub fn new(w: &crate::workflow::WebhookConfig, r: &crate::redact::Redactor) -> WebhookView {
        WebhookView {
            url: r.redact(&w.url),
            authorization: w.authorization.as_deref().map(crate::redact::mask),
            headers: r.headers(&w.headers),
            secrets: w.secrets.iter().map(|s| crate::redact::mask(s)).collect(),
            include_annotations: w.include_annotations,
            payload: w.payload,
            max_attempts: w.max_attempts,
            timeout_ms: w.timeout.as_millis() as u64,
            retry_schedule_ms: w
                .retry_schedule
                .iter()
                .map(|d| d.as_millis() as u64)
                .collect(),
            pause_after_failures: w.pause_after_failures,
            max_in_flight: w.max_in_flight,
            rate_limit: w.rate_limit.map(|r| r.to_string()),
            burst: w.rate_limit.map(|r| r.burst),
            rate_per_second: w.rate_limit.map(|r| r.per_second()),
        }
    }
}

/// A workflow as listed: id, names, revision and item totals.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct WorkflowSummary {
    pub id: WorkflowId,
    pub name: String,
    pub team: String,
    pub revision: i64,
    pub stages: i64,
    pub items: i64,
    pub waiting: i64,
    pub in_delivery: i64,
    pub failed: i64,
    pub done: i64,
    pub updated_at: DateTime<Utc>,
}

/// `workflow show`: the summary plus every live stage.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct WorkflowDetail {
    #[serde(flatten)]
    pub summary: WorkflowSummary,
    pub stage_list: Vec<StageSummary>,
}

/// Where to move the items of stages that an apply removes.
pub type MoveMap = Vec<(StageId, StageId)>;

/// Parsed workflow specs, keyed by their stored JSON text (a revision never changes, so the
/// text identifies the spec exactly, across databases too).
fn spec_cache() -> &'static Mutex<HashMap<String, Arc<Workflow>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Workflow>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn parse_spec(text: String) -> Result<Arc<Workflow>> {
    if let Ok(cache) = spec_cache().lock()
        && let Some(wf) = cache.get(&text)
    {
        return Ok(wf.clone());
    }
    let wf = Arc::new(serde_json::from_str::<Workflow>(&text)?);
    if let Ok(mut cache) = spec_cache().lock() {
        if cache.len() > 256 {
            cache.clear();
        }
        cache.insert(text, wf.clone());
    }
    Ok(wf)
}

/// The current spec and revision of a workflow, in a write transaction (read once per
/// transaction: [`Tx::spec`]).
pub(crate) fn current_spec(tx: &Tx<'_>, id: &WorkflowId) -> Result<(Arc<Workflow>, i64)> {
    tx.spec(id)
}

/// Parses a stored spec and revision, or says the workflow does not exist.
fn found_spec(row: Option<(String, i64)>, id: &WorkflowId) -> Result<(Arc<Workflow>, i64)> {
    match row {
        Some((text, rev)) => Ok((parse_spec(text)?, rev)),
        None => Err(StoreError::NotFound {
            what: "workflow",
            id: id.to_string(),
        }),
    }
}

/// The current spec and revision of a workflow, read inside a write transaction.
pub(crate) fn spec_in_tx(rows: &dyn Rows, id: &WorkflowId) -> Result<(Arc<Workflow>, i64)> {
    found_spec(rows.current_spec(id)?, id)
}

/// The current spec and revision of a workflow, read outside a write transaction.
pub(crate) fn read_current_spec(r: &dyn Reads, id: &WorkflowId) -> Result<(Arc<Workflow>, i64)> {
    found_spec(r.current_spec(id)?, id)
}

fn stage_item_count(conn: &Tx<'_>, wf: &WorkflowId, stage: &StageId) -> Result<i64> {
    let stored = conn
        .rows()
        .stored_count(Counted::Items, wf.as_str(), stage.as_str(), None)?;
    Ok(stored
        + conn
            .counts()
            .unwritten_items_in_stage(wf.as_str(), stage.as_str()))
}

fn apply_in_tx(
    conn: &Tx<'_>,
    wf: &Workflow,
    moves: &MoveMap,
    operator: &str,
) -> Result<ApplyReport> {
    let now = conn.now();
    let spec = serde_json::to_string(wf)?;
    let existing = current_spec(conn, &wf.id);
    let (old, old_rev) = match existing {
        Ok((old, rev)) => (Some(old), rev),
        Err(StoreError::NotFound { .. }) => (None, 0),
        Err(e) => return Err(e),
    };
    let mut report = ApplyReport {
        workflow: wf.id.clone(),
        revision: old_rev,
        unchanged: false,
        created: old.is_none(),
        added_stages: vec![],
        retired_stages: vec![],
        changed_stages: vec![],
        moved: vec![],
    };
    if let Some(old) = &old
        && **old == *wf
    {
        report.unchanged = true;
        return Ok(report);
    }
    let revision = old_rev + 1;
    report.revision = revision;

    // Stages that go away (removed, or whose kind changed) must be empty or have a target.
    let mut retire = Vec::new();
    if let Some(old) = &old {
        for s in &old.stages {
            let replacement = wf.stage(&s.id);
            if replacement.is_some_and(|n| n.kind() == s.kind()) {
                if replacement.is_some_and(|n| n != s) {
                    report.changed_stages.push(s.id.clone());
                }
                continue;
            }
            let held = stage_item_count(conn, &wf.id, &s.id)?;
            if held > 0 {
                let target = moves
                    .iter()
                    .find(|(from, _)| from == &s.id)
                    .map(|(_, to)| to);
                let why = if replacement.is_some() {
                    "changes kind"
                } else {
                    "is removed"
                };
                match target {
                    Some(to) if wf.stage(to).is_some() => {
                        report.moved.push((s.id.clone(), to.clone(), held));
                    }
                    Some(to) => {
                        return Err(StoreError::Invalid(format!(
                            "cannot move items to `{to}`: it is not a stage of the new file"
                        )));
                    }
                    None => {
                        return Err(StoreError::Refused(format!(
                            "stage `{}` {why} but holds {held} item(s); move them first or apply with `--move {}=STAGE`",
                            s.id, s.id
                        )));
                    }
                }
            }
            retire.push(s.id.clone());
        }
    }

    conn.rows().insert_revision(&RevisionRow {
        workflow: &wf.id,
        name: &wf.name,
        team: &wf.team,
        revision,
        spec: &spec,
        operator,
        now,
        created: old.is_none(),
    })?;
    // The transaction's cached current spec of this workflow is stale now.
    conn.forget_specs();
    for id in &retire {
        conn.rows().retire_stage(&wf.id, id, now)?;
        report.retired_stages.push(id.clone());
    }
    for (pos, s) in wf.stages.iter().enumerate() {
        let added = conn.rows().upsert_stage(&wf.id, s, pos as i64)?;
        if added && old.as_ref().is_none_or(|o| o.stage(&s.id).is_none()) {
            report.added_stages.push(s.id.clone());
        }
    }
    // Items of removed stages move in the same transaction: an apply is never half done.
    for (from, to, _) in &report.moved {
        super::items::move_stage_items(conn, wf, revision, from, to, operator)?;
    }
    Ok(report)
}

/// Builds a summary row for each stage from the counter tables.
fn stage_summaries(
    found: WorkflowCounts,
    wf: &Workflow,
    now: i64,
) -> (Vec<StageSummary>, BTreeMap<ItemState, i64>) {
    let mut flows: HashMap<String, super::seam::StageFlow> = found.flows.into_iter().collect();
    let counts: HashMap<(String, String), i64> = found
        .items
        .into_iter()
        .map(|(stage, state, n)| ((stage, state), n))
        .collect();
    let mut dcounts: HashMap<String, BTreeMap<String, i64>> = HashMap::new();
    for (stage, state, n) in found.deliveries {
        dcounts.entry(stage).or_default().insert(state, n);
    }
    let paused: HashMap<String, Option<String>> = found.paused.into_iter().collect();
    let mut totals: BTreeMap<ItemState, i64> = BTreeMap::new();
    let mut out = Vec::new();
    let redactor = crate::redact::Redactor::new(&wf.secrets);
    for st in &wf.stages {
        let get = |state: ItemState| {
            counts
                .get(&(st.id.to_string(), state.as_str().to_string()))
                .copied()
                .unwrap_or(0)
        };
        let per: Vec<(ItemState, i64)> = ItemState::ALL.iter().map(|s| (*s, get(*s))).collect();
        for (s, n) in &per {
            *totals.entry(*s).or_default() += n;
        }
        let needs_assignment = match &st.spec {
            crate::workflow::StageSpec::Dataset { next } => {
                wf.stage(next).is_some_and(|n| n.kind().is_automated())
            }
            _ => false,
        };
        out.push(StageSummary {
            id: st.id.clone(),
            name: st.name.clone(),
            kind: st.kind(),
            edges: edge_labels(st),
            items: per.iter().map(|(_, n)| n).sum(),
            waiting: get(ItemState::Waiting),
            active: get(ItemState::Active),
            in_delivery: get(ItemState::InDelivery),
            failed: get(ItemState::Failed),
            done: get(ItemState::Done),
            paused: paused.contains_key(st.id.as_str()),
            paused_reason: paused.get(st.id.as_str()).cloned().flatten(),
            deliveries: dcounts.remove(st.id.as_str()).unwrap_or_default(),
            needs_assignment,
            webhook: st.webhook().map(|w| WebhookView::new(w, &redactor)),
            held_until: None,
            held_reason: None,
            concurrency_limit: None,
            drain_seconds: None,
        });
        let Some(summary) = out.last_mut() else {
            continue;
        };
        if let Some(f) = flows.remove(st.id.as_str()) {
            if let Some(until) = f.held_until.filter(|u| *u > now) {
                summary.held_until = Some(to_time(until));
                summary.held_reason = f.held_reason;
            }
            summary.concurrency_limit = f.concurrency_limit.map(|l| l.max(1) as u32);
        }
        if let Some(rate) = st.webhook().and_then(|w| w.rate_limit) {
            let queued: i64 = ["pending", "retry_scheduled"]
                .iter()
                .filter_map(|s| summary.deliveries.get(*s))
                .sum();
            summary.drain_seconds =
                Some(crate::engine::flow::drain_ms(queued, &rate) as f64 / 1000.0);
        }
    }
    (out, totals)
}

fn edge_labels(st: &crate::workflow::Stage) -> Vec<(String, StageId)> {
    use crate::workflow::StageSpec as S;
    match &st.spec {
        S::Dataset { next } | S::Annotate { next } => vec![("next".into(), next.clone())],
        S::Review {
            on_approve,
            on_reject,
        } => vec![
            ("on_approve".into(), on_approve.clone()),
            ("on_reject".into(), on_reject.clone()),
        ],
        S::Webhook(w) => {
            let mut v = vec![("on_success".into(), w.on_success.clone())];
            if let Some(f) = &w.on_failure {
                v.push(("on_failure".into(), f.clone()));
            }
            v
        }
        S::Logic { rules, else_to } => {
            let mut v: Vec<(String, StageId)> = rules
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("rule {}", i + 1), r.to.clone()))
                .collect();
            v.push(("else".into(), else_to.clone()));
            v
        }
        S::Sampling { split } => split
            .iter()
            .map(|s| (format!("{}%", s.percent), s.to.clone()))
            .collect(),
        S::Complete | S::Discard => vec![],
    }
}

fn summary_row(r: &dyn Reads, wf: &Workflow, revision: i64, now: i64) -> Result<WorkflowDetail> {
    let found = r.workflow_counts(&wf.id)?;
    let updated = found.updated_at;
    let (stage_list, totals) = stage_summaries(found, wf, now);
    let t = |s: ItemState| totals.get(&s).copied().unwrap_or(0);
    Ok(WorkflowDetail {
        summary: WorkflowSummary {
            id: wf.id.clone(),
            name: wf.name.clone(),
            team: wf.team.clone(),
            revision,
            stages: wf.stages.len() as i64,
            items: totals.values().sum(),
            waiting: t(ItemState::Waiting),
            in_delivery: t(ItemState::InDelivery),
            failed: t(ItemState::Failed),
            done: t(ItemState::Done),
            updated_at: to_time(updated),
        },
        stage_list,
    })
}

impl Store {
    /// Applies a validated workflow: idempotent, keeps items in surviving stages, retires
    /// removed stages (refused while they hold items unless `moves` says where they go).
    pub fn apply_workflow(
        &self,
        wf: &Workflow,
        moves: &MoveMap,
        operator: &str,
    ) -> Result<ApplyReport> {
        let wf = wf.clone();
        let moves = moves.clone();
        let operator = operator.to_string();
        let report = self.write("workflow apply", move |conn| {
            apply_in_tx(conn, &wf, &moves, &operator)
        })?;
        Ok(report)
    }

    /// The current validated spec of a workflow (with secrets: never print it raw).
    pub fn workflow_spec(&self, id: &WorkflowId) -> Result<Arc<Workflow>> {
        self.read(|r| read_current_spec(r, id).map(|(wf, _)| wf))
    }

    pub fn list_workflows(&self) -> Result<Vec<WorkflowSummary>> {
        let now = self.now_ms();
        self.read(|r| {
            let mut out = Vec::new();
            for id in r.workflow_ids()? {
                let (wf, rev) = read_current_spec(r, &id)?;
                out.push(summary_row(r, &wf, rev, now)?.summary);
            }
            Ok(out)
        })
    }

    pub fn workflow_detail(&self, id: &WorkflowId) -> Result<WorkflowDetail> {
        let now = self.now_ms();
        self.read(|r| {
            let (wf, rev) = read_current_spec(r, id)?;
            summary_row(r, &wf, rev, now)
        })
    }

    /// Workflows that have a live stage with this id (for `--stage` without `--workflow`).
    pub fn workflows_with_stage(&self, stage: &StageId) -> Result<Vec<WorkflowId>> {
        self.read(|r| r.workflows_with_stage(stage))
    }

    /// Pauses (`true`) or resumes a stage; resuming resets the consecutive-failure count and
    /// lifts a hold (issue 21). True when something changed.
    pub fn set_paused(
        &self,
        wf: &WorkflowId,
        stage: &StageId,
        paused: bool,
        operator: &str,
    ) -> Result<bool> {
        let (wf, stage, operator) = (wf.clone(), stage.clone(), operator.to_string());
        let action = if paused { "pause" } else { "resume" };
        self.write(action, move |c| {
            let (spec, _) = current_spec(c, &wf)?;
            let st = spec.stage(&stage).ok_or_else(|| StoreError::NotFound {
                what: "stage",
                id: format!("{wf}/{stage}"),
            })?;
            if st.kind() != StageKind::Webhook {
                return Err(StoreError::Invalid(format!(
                    "stage `{stage}` is a {} stage; only webhook stages can be paused",
                    st.kind()
                )));
            }
            let was = c.rows().stage_paused(&wf, &stage)?;
            let reason = paused.then(|| format!("paused by {operator}"));
            c.rows().set_stage_paused(&wf, &stage, reason.as_deref())?;
            let lifted = !paused && c.rows().lift_hold(wf.as_str(), stage.as_str(), c.now())?;
            if paused && !was {
                let reason = format!("paused by {operator}");
                super::attempts::notify_paused(c, &spec, &stage, &reason, Some(&operator))?;
            }
            Ok(was != paused || lifted)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OpenOptions, Store};

    fn workflow(name: &str) -> Workflow {
        let text = format!(
            "id = \"w\"\nname = \"{name}\"\nteam = \"t\"\n\n[[stage]]\nid = \"dataset\"\nname = \"Dataset\"\nkind = \"dataset\"\nnext = \"done\"\n\n[[stage]]\nid = \"done\"\nname = \"Done\"\nkind = \"complete\"\n"
        );
        crate::workflow::parse("w.toml", &text, &|_| None).expect("valid workflow")
    }

    /// Within one writer transaction the current spec is read once; an apply in that same
    /// transaction makes the next read see the new revision, not the cached one.
    #[test]
    fn the_transaction_spec_cache_sees_an_apply_in_the_same_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), &OpenOptions::default()).unwrap();
        store
            .apply_workflow(&workflow("first"), &Vec::new(), "test")
            .unwrap();
        let second = workflow("second");
        let seen = store
            .write("test", move |c| {
                let id = WorkflowId::new("w");
                let (before, rev_before) = current_spec(c, &id)?;
                apply_in_tx(c, &second, &Vec::new(), "test")?;
                let (after, rev_after) = current_spec(c, &id)?;
                Ok((
                    before.name.clone(),
                    rev_before,
                    after.name.clone(),
                    rev_after,
                ))
            })
            .unwrap();
        assert_eq!(seen, ("first".into(), 1, "second".into(), 2));
    }
}
