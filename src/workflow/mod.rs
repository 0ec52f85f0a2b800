//! Workflow files: the TOML types, validation with spans, and the stage graph.
//!
//! A file is parsed and validated in one pass that collects every error (with file, line and
//! column) instead of stopping at the first. The result is a [`Workflow`]: a validated graph
//! whose edges all point at stages of the same workflow, ready to be stored as a revision.
//! `${NAME}` references are expanded here, from the environment given to [`load_file`]; the values
//! they produce are recorded in [`Workflow::secrets`] so every output can mask them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{EventType, PayloadFormat, StageId, StageKind, WorkflowId};

/// A validated workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: WorkflowId,
    pub name: String,
    /// Goes into Darwin `source_info.team{name, slug}`.
    pub team: String,
    /// `workview_url` = `{base}/items/{id}` when set.
    pub workview_url_base: Option<String>,
    pub stages: Vec<Stage>,
    /// `[[notify]]` entries: event notifications (issue 7). Absent in specs stored before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<Notify>,
    /// Every secret value in this workflow after expansion (each `${…}` expansion, every
    /// `authorization` value and every `secret`), for redaction. Never printed.
    pub secrets: Vec<String>,
}

impl Workflow {
    pub fn stage(&self, id: &StageId) -> Option<&Stage> {
        self.stages.iter().find(|s| &s.id == id)
    }

    /// The single dataset stage (validation guarantees exactly one).
    pub fn dataset_stage(&self) -> Option<&Stage> {
        self.stages.iter().find(|s| s.kind() == StageKind::Dataset)
    }

    /// How deliveries of `stage` are sent: a webhook stage's settings, or those of the
    /// `[[notify]]` entry that a notification's pseudo-stage (`notify:N`) names.
    pub fn delivery_config(&self, stage: &StageId) -> Option<&WebhookConfig> {
        match notify_index(stage) {
            Some(i) => self.notify.get(i).map(|n| &n.delivery),
            None => self.stage(stage).and_then(|s| s.webhook()),
        }
    }
}

/// The pseudo-stage id that notification deliveries of `[[notify]]` entry `index` carry
/// (`notify:0`, …). Stage slugs cannot contain `:`, so it never names a real stage.
pub fn notify_stage_id(index: usize) -> StageId {
    StageId(format!("{NOTIFY_PREFIX}{index}"))
}

/// The `[[notify]]` index a pseudo-stage id names, if it is one.
pub fn notify_index(stage: &StageId) -> Option<usize> {
    stage.as_str().strip_prefix(NOTIFY_PREFIX)?.parse().ok()
}

const NOTIFY_PREFIX: &str = "notify:";

/// One `[[notify]]` entry: which events to send, and where and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notify {
    /// Events of this workflow to send (never `stage.webhook` or `webhook.test`).
    pub events: Vec<EventType>,
    /// URL, authorization, headers and secret, with the engine's default retries and
    /// timeouts; the edges (`on_success`) name the entry's own pseudo-stage and are unused.
    pub delivery: WebhookConfig,
}

/// One stage of a workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub id: StageId,
    /// Display name; the id when the file gives none.
    pub name: String,
    pub spec: StageSpec,
}

impl Stage {
    pub fn kind(&self) -> StageKind {
        match &self.spec {
            StageSpec::Dataset { .. } => StageKind::Dataset,
            StageSpec::Annotate { .. } => StageKind::Annotate,
            StageSpec::Review { .. } => StageKind::Review,
            StageSpec::Webhook(_) => StageKind::Webhook,
            StageSpec::Logic { .. } => StageKind::Logic,
            StageSpec::Sampling { .. } => StageKind::Sampling,
            StageSpec::Complete => StageKind::Complete,
            StageSpec::Discard => StageKind::Discard,
        }
    }

    pub fn webhook(&self) -> Option<&WebhookConfig> {
        match &self.spec {
            StageSpec::Webhook(w) => Some(w),
            _ => None,
        }
    }

    /// Every stage this stage can send an item to, in file order.
    pub fn edges(&self) -> Vec<&StageId> {
        match &self.spec {
            StageSpec::Dataset { next } | StageSpec::Annotate { next } => vec![next],
            StageSpec::Review {
                on_approve,
                on_reject,
            } => vec![on_approve, on_reject],
            StageSpec::Webhook(w) => std::iter::once(&w.on_success)
                .chain(w.on_failure.as_ref())
                .collect(),
            StageSpec::Logic { rules, else_to } => rules
                .iter()
                .map(|r| &r.to)
                .chain(std::iter::once(else_to))
                .collect(),
            StageSpec::Sampling { split } => split.iter().map(|s| &s.to).collect(),
            StageSpec::Complete | StageSpec::Discard => vec![],
        }
    }
}

/// A stage's kind and its kind's settings and edges.
// The webhook variant is the big one (256 B): a workflow has a handful of stages, parsed once
// per revision and shared in an `Arc`, so boxing it would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageSpec {
    Dataset {
        next: StageId,
    },
    Annotate {
        next: StageId,
    },
    Review {
        on_approve: StageId,
        on_reject: StageId,
    },
    Webhook(WebhookConfig),
    Logic {
        rules: Vec<Rule>,
        /// The file's `else` key.
        else_to: StageId,
    },
    Sampling {
        split: Vec<Split>,
    },
    Complete,
    Discard,
}

/// Settings of a webhook stage, after `${…}` expansion and with defaults filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookConfig {
    /// http(s) URL; query parameters are kept and sent.
    pub url: String,
    /// Sent verbatim as the `Authorization` header.
    pub authorization: Option<String>,
    /// Extra headers, in file order.
    pub headers: Vec<(String, String)>,
    /// Standard Webhooks signing keys (`whsec_…`); one signature per key. Empty: unsigned.
    pub secrets: Vec<String>,
    pub include_annotations: bool,
    pub payload: PayloadFormat,
    /// Envelope `event_type` (default `stage.webhook`).
    pub event_type: String,
    /// 1–100; default 6 (the first try and 5 retries).
    pub max_attempts: u32,
    /// Total per-attempt timeout, 100 ms–5 min; default 10 s. Connect timeout is 3 s.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// 1–20 entries; retry k waits entry min(k, len) − 1, ±20 % jitter.
    #[serde(with = "duration_ms_vec")]
    pub retry_schedule: Vec<Duration>,
    /// Consecutive failed deliveries that pause the stage; 0 = never. Default 50.
    pub pause_after_failures: u32,
    /// Per-stage cap on concurrent requests across all dispatchers.
    pub max_in_flight: Option<u32>,
    /// Per-stage rate limit across all dispatchers (issue 21). Absent in specs stored before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    pub on_success: StageId,
    /// Without it a failed item stays in the stage, marked failed.
    pub on_failure: Option<StageId>,
}

impl WebhookConfig {
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_PAUSE_AFTER_FAILURES: u32 = 50;

    pub fn default_retry_schedule() -> Vec<Duration> {
        [1, 5, 30, 120, 600]
            .into_iter()
            .map(Duration::from_secs)
            .collect()
    }

    /// The base delay before retry `k` (k = 1 … max_attempts − 1), before jitter.
    pub fn retry_delay(&self, k: u32) -> Duration {
        let len = self.retry_schedule.len().max(1);
        let idx = (k.max(1) as usize).min(len) - 1;
        self.retry_schedule
            .get(idx)
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// A stage's rate limit (issue 21): at most `count` requests per period, in bursts of at most
/// `burst`. Written `rate_limit = "20/s"` (or `/min`, `/h`) with an optional `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests per period, at least 1.
    pub count: u32,
    /// The period in milliseconds: 1,000 (`/s`), 60,000 (`/min`) or 3,600,000 (`/h`).
    pub period_ms: u64,
    /// Tokens the bucket holds at most: the largest burst after a quiet spell.
    pub burst: u32,
}

impl RateLimit {
    /// The default burst: one second's worth, at least 1.
    pub fn default_burst(count: u32, period_ms: u64) -> u32 {
        let per_second = (u64::from(count) * 1000).div_ceil(period_ms.max(1));
        per_second.clamp(1, u64::from(u32::MAX)) as u32
    }

    /// Tokens added per millisecond.
    pub fn per_ms(&self) -> f64 {
        f64::from(self.count) / self.period_ms.max(1) as f64
    }

    /// Requests per second.
    pub fn per_second(&self) -> f64 {
        self.per_ms() * 1000.0
    }

    /// The unit the rate was written in.
    fn unit(&self) -> &'static str {
        match self.period_ms {
            60_000 => "min",
            3_600_000 => "h",
            _ => "s",
        }
    }
}

impl std::fmt::Display for RateLimit {
    /// `20/s`, `100/min`, `10/h` (as written), without the burst.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.count, self.unit())
    }
}

/// One logic rule: the first whose condition holds sends the item to `to`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub when: Condition,
    pub to: StageId,
}

/// What a logic rule tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The item has this tag (its `tags`, or a Darwin tag annotation of this name).
    Tag(String),
    /// The item's property `name` has one of these values (compared as strings; a number or
    /// boolean compares by its JSON text, a list matches when any element matches).
    Property {
        name: String,
        is_any_of: Vec<String>,
    },
}

/// One branch of a sampling stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub to: StageId,
    /// Whole percent; a stage's splits sum to 100.
    pub percent: u32,
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod duration_ms_vec {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| d.as_millis() as u64))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Ok(Vec::<u64>::deserialize(d)?
            .into_iter()
            .map(Duration::from_millis)
            .collect())
    }
}

mod expand;
mod parse;

pub use parse::{Diagnostic, LoadError, load_file, load_reader, parse};
