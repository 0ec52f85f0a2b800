//! `/metrics` in the Prometheus text format (version 0.0.4).
//!
//! Gauges of deliveries per stage and state come from the store's counter rows (cheap at any
//! size); attempt counts and the latency histogram are kept in this process from the attempt
//! events its dispatcher and the API's replays and tests publish.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::model::AttemptEvent;
use crate::model::DeliveryState;
use crate::store::Store;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Attempt figures of this process.
pub struct Metrics {
    /// Cumulative per bucket (Prometheus `le` semantics), plus `+Inf` at the end.
    buckets: Vec<AtomicU64>,
    sum_ms: AtomicU64,
    count: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            buckets: (0..=BUCKETS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one finished attempt.
    pub fn observe(&self, e: &AttemptEvent) {
        let ms = e.duration_ms.max(0) as u64;
        let secs = ms as f64 / 1000.0;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.buckets[BUCKETS.len()].fetch_add(1, Relaxed);
        self.sum_ms.fetch_add(ms, Relaxed);
        self.count.fetch_add(1, Relaxed);
        if e.status.is_some_and(|s| (200..300).contains(&s)) {
            self.succeeded.fetch_add(1, Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
    }

    /// The whole exposition: store gauges, then this process's counters.
    pub fn render(&self, store: &Store) -> Result<String, crate::store::StoreError> {
        let counts = store.delivery_counts()?;
        let paused = store.paused_stages()?;
        let recorded = store.attempts_recorded()?;
        let mut out = String::new();
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };

        out.push_str("# HELP hookops_deliveries Deliveries per workflow, stage and state (notification pseudo-stages are notify:N).\n");
        out.push_str("# TYPE hookops_deliveries gauge\n");
        let mut retry_depth = 0;
        let mut pending = 0;
        for c in &counts {
            let _ = writeln!(
                out,
                "hookops_deliveries{{workflow=\"{}\",stage=\"{}\",state=\"{}\"}} {}",
                esc(c.workflow.as_str()),
                esc(c.stage.as_str()),
                c.state,
                c.n
            );
            match c.state {
                DeliveryState::RetryScheduled => retry_depth += c.n,
                DeliveryState::Pending => pending += c.n,
                _ => {}
            }
        }
        out.push_str("# HELP hookops_retry_queue_depth Deliveries waiting for a retry.\n");
        out.push_str("# TYPE hookops_retry_queue_depth gauge\n");
        let _ = writeln!(out, "hookops_retry_queue_depth {retry_depth}");
        out.push_str(
            "# HELP hookops_pending_deliveries Deliveries waiting for their first attempt.\n",
        );
        out.push_str("# TYPE hookops_pending_deliveries gauge\n");
        let _ = writeln!(out, "hookops_pending_deliveries {pending}");

        out.push_str("# HELP hookops_stage_paused 1 for each paused webhook stage.\n");
        out.push_str("# TYPE hookops_stage_paused gauge\n");
        for (wf, stage, _) in &paused {
            let _ = writeln!(
                out,
                "hookops_stage_paused{{workflow=\"{}\",stage=\"{}\"}} 1",
                esc(wf.as_str()),
                esc(stage.as_str())
            );
        }
        out.push_str("# HELP hookops_paused_stages Paused webhook stages.\n");
        out.push_str("# TYPE hookops_paused_stages gauge\n");
        let _ = writeln!(out, "hookops_paused_stages {}", paused.len());

        self.render_flow(store, &mut out)?;

        out.push_str("# HELP hookops_attempts_recorded_total Attempts recorded in the database by every process.\n");
        out.push_str("# TYPE hookops_attempts_recorded_total counter\n");
        let _ = writeln!(out, "hookops_attempts_recorded_total {recorded}");

        out.push_str("# HELP hookops_attempts_total Attempts sent by this process, by result (success = 2xx).\n");
        out.push_str("# TYPE hookops_attempts_total counter\n");
        let _ = writeln!(
            out,
            "hookops_attempts_total{{result=\"success\"}} {}",
            self.succeeded.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "hookops_attempts_total{{result=\"failure\"}} {}",
            self.failed.load(Relaxed)
        );

        out.push_str("# HELP hookops_attempt_duration_seconds Time from sending an attempt to its outcome, in this process.\n");
        out.push_str("# TYPE hookops_attempt_duration_seconds histogram\n");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "hookops_attempt_duration_seconds_bucket{{le=\"{le}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "hookops_attempt_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            self.buckets[BUCKETS.len()].load(Relaxed)
        );
        let _ = writeln!(
            out,
            "hookops_attempt_duration_seconds_sum {}",
            self.sum_ms.load(Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "hookops_attempt_duration_seconds_count {}",
            self.count.load(Relaxed)
        );
        Ok(out)
    }

    /// Issue 21: each webhook stage's rate limit and drain time, holds and reduced
    /// concurrency.
    fn render_flow(&self, store: &Store, out: &mut String) -> Result<(), crate::store::StoreError> {
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let now = chrono::Utc::now();
        let (mut rates, mut drains, mut holds, mut limits) =
            (String::new(), String::new(), String::new(), String::new());
        for w in store.list_workflows()? {
            let detail = store.workflow_detail(&w.id)?;
            for s in &detail.stage_list {
                let labels = format!(
                    "workflow=\"{}\",stage=\"{}\"",
                    esc(w.id.as_str()),
                    esc(s.id.as_str())
                );
                if let Some(r) = s.webhook.as_ref().and_then(|h| h.rate_per_second) {
                    let _ = writeln!(rates, "hookops_stage_rate_limit_per_second{{{labels}}} {r}");
                }
                if let Some(d) = s.drain_seconds {
                    let _ = writeln!(drains, "hookops_stage_drain_seconds{{{labels}}} {d}");
                }
                if let Some(until) = s.held_until {
                    let left = (until - now).num_milliseconds().max(0) as f64 / 1000.0;
                    let _ = writeln!(holds, "hookops_stage_held_seconds{{{labels}}} {left}");
                }
                if let Some(l) = s.concurrency_limit {
                    let _ = writeln!(limits, "hookops_stage_concurrency_limit{{{labels}}} {l}");
                }
            }
        }
        out.push_str("# HELP hookops_stage_rate_limit_per_second A webhook stage's rate limit, in requests per second.\n");
        out.push_str("# TYPE hookops_stage_rate_limit_per_second gauge\n");
        out.push_str(&rates);
        out.push_str("# HELP hookops_stage_drain_seconds How long a rate-limited stage's queue (pending and retrying deliveries) takes to drain at its rate.\n");
        out.push_str("# TYPE hookops_stage_drain_seconds gauge\n");
        out.push_str(&drains);
        out.push_str("# HELP hookops_stage_held_seconds Seconds left of a stage's hold (a 429 or 503 with Retry-After): no new request until then.\n");
        out.push_str("# TYPE hookops_stage_held_seconds gauge\n");
        out.push_str(&holds);
        out.push_str("# HELP hookops_stage_concurrency_limit A stage's concurrency while 429s keep it below its ceiling (AIMD).\n");
        out.push_str("# TYPE hookops_stage_concurrency_limit gauge\n");
        out.push_str(&limits);
        Ok(())
    }
}
