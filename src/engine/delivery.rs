//! What recording an attempt does to its delivery (design §2, §6), decided in one pure
//! function, [`decide`], that the store applies. A backend stores the attempt and applies the
//! [`Decision`]; it never decides which outcome retries, which attempt counts, when a retry is
//! due, whether the item routes or whether the stage pauses.
//!
//! Rules, in the order they are checked:
//! - The attempt row is always written (it was sent). It **counts** toward `max_attempts`
//!   only when it is a scheduled attempt whose lease still holds, of a delivery that is not a
//!   test, and not an `interrupted` one.
//! - A **replay** (a manual attempt of a delivery that is not a test) changes nothing else.
//! - A **lost lease** (the token no longer matches, or the delivery is no longer in flight:
//!   expired and taken by another dispatcher, or cancelled) changes nothing else.
//! - Otherwise the status decides ([`classify::classify`]): success; a retry while counted
//!   attempts remain (a test never retries), due at the end of the attempt plus the schedule's
//!   delay or the receiver's `Retry-After`; else failed.
//! - A final outcome of a `stage.webhook` delivery **settles**: the stage's run of failures
//!   is reset (success) or extended (failure, which may pause the stage: [`auto_pause`]), a
//!   failure is announced (`delivery.failed`) and the item routes along `on_success` or
//!   `on_failure` when it is still where the delivery found it (the store's compare-and-set).
//!   Tests and notifications never settle (a notification never notifies).
//!
//! Pure: no IO, no clock, no randomness; the caller passes the jitter.

use chrono::DateTime;

use super::Outcome;
use super::classify::{self, Verdict};
use crate::model::{AttemptOutcome, AttemptTrigger, DeliveryState, ErrorKind, EventType};
use crate::workflow::WebhookConfig;

/// A delivery as recording finds it in the store.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryNow<'a> {
    pub state: DeliveryState,
    /// The lease token the store holds for it.
    pub token: Option<&'a str>,
    /// Counted attempts so far.
    pub attempts: i64,
    pub event: EventType,
}

/// The attempt being recorded: how it was made.
#[derive(Clone, Copy, Debug)]
pub struct AttemptMade<'a> {
    /// The lease token it was sent under (`None` for replays, which hold no lease).
    pub token: Option<&'a str>,
    pub trigger: AttemptTrigger,
}

/// What recording one attempt does.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Whether the attempt counts toward `max_attempts`.
    pub counted: bool,
    pub effect: Effect,
}

/// What happens to the delivery besides its attempt row.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Nothing: a replay (`lease_lost` false) or an attempt whose lease no longer holds.
    AttemptOnly { lease_lost: bool },
    /// The delivery's new state; the lease is released.
    Update {
        state: DeliveryState,
        /// Counted attempts after this one.
        attempts: i64,
        /// When the retry is due (ms since the epoch), for `retry_scheduled`.
        next_attempt_at: Option<i64>,
        /// What a final outcome of a `stage.webhook` delivery does beyond the delivery row.
        settle: Option<Settle>,
    },
}

/// The consequences of a final outcome of a `stage.webhook` delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settle {
    /// The item's route (applied only when the item has not moved since the delivery).
    pub route: Outcome,
    /// The stage's run of consecutive failed deliveries.
    pub failures: FailureRun,
    /// Whether a `delivery.failed` notification is written.
    pub notify_failed: bool,
}

/// What a final outcome does to its stage's count of consecutive failed deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureRun {
    /// A success: the count goes back to zero.
    Reset,
    /// A failure: the count grows by one; the stage pauses when it reaches `pause_after`
    /// (0 = never).
    Extend { pause_after: u32 },
    /// The stage is no longer a webhook stage: nothing to count.
    Untracked,
}

/// Decides what recording `attempt` of `delivery`, which ended as `outcome`, does. `cfg` is
/// the stage's webhook settings at recording time (`None` when the stage is gone); `jitter`
/// is drawn uniformly from [-1, 1] by the caller.
pub fn decide(
    delivery: DeliveryNow<'_>,
    attempt: AttemptMade<'_>,
    outcome: &AttemptOutcome,
    cfg: Option<&WebhookConfig>,
    jitter: f64,
) -> Decision {
    let holds = attempt.token.is_some()
        && delivery.token == attempt.token
        && delivery.state == DeliveryState::InFlight;
    let is_test = delivery.event == EventType::WebhookTest;
    let counted = attempt.trigger == AttemptTrigger::Scheduled
        && holds
        && !is_test
        && outcome.error_kind != Some(ErrorKind::Interrupted);
    if attempt.trigger == AttemptTrigger::Manual && !is_test {
        return Decision {
            counted,
            effect: Effect::AttemptOnly { lease_lost: false },
        };
    }
    if !holds {
        return Decision {
            counted,
            effect: Effect::AttemptOnly { lease_lost: true },
        };
    }
    let end = outcome.started_at + outcome.duration_ms;
    let verdict = classify::classify(
        outcome.status,
        outcome.error_kind,
        outcome.retry_after.as_deref(),
        DateTime::from_timestamp_millis(end).unwrap_or_default(),
    );
    let attempts = delivery.attempts + counted as i64;
    let max_attempts = max_attempts(cfg);
    let (state, next_attempt_at) = match verdict {
        Verdict::Success => (DeliveryState::Succeeded, None),
        Verdict::Retry { after } if !is_test && attempts < max_attempts as i64 => {
            let delay = cfg
                .map(|c| classify::retry_delay(c, attempts as u32, after, jitter))
                .unwrap_or_default();
            (
                DeliveryState::RetryScheduled,
                Some(end + delay.as_millis() as i64),
            )
        }
        _ => (DeliveryState::Failed, None),
    };
    let settles =
        !(is_test || state == DeliveryState::RetryScheduled || delivery.event.is_notification());
    let settle = settles.then(|| {
        let succeeded = state == DeliveryState::Succeeded;
        Settle {
            route: if succeeded {
                Outcome::WebhookSuccess
            } else {
                Outcome::WebhookFailure
            },
            failures: match cfg {
                None => FailureRun::Untracked,
                Some(_) if succeeded => FailureRun::Reset,
                Some(c) => FailureRun::Extend {
                    pause_after: c.pause_after_failures,
                },
            },
            notify_failed: !succeeded,
        }
    });
    Decision {
        counted,
        effect: Effect::Update {
            state,
            attempts,
            next_attempt_at,
            settle,
        },
    }
}

/// The stage's `max_attempts`, or 1 when the stage is gone (its delivery cannot retry).
pub fn max_attempts(cfg: Option<&WebhookConfig>) -> u32 {
    cfg.map(|c| c.max_attempts).unwrap_or(1)
}

/// Whether a stage whose run of consecutive failed deliveries has reached `failures` pauses
/// itself under `pause_after` (0 = never), and the reason it then gives.
pub fn auto_pause(failures: i64, pause_after: u32) -> Option<String> {
    (pause_after > 0 && failures >= pause_after as i64)
        .then(|| format!("paused automatically after {failures} consecutive failed deliveries"))
}

/// What a `delivery.failed` notification carries (design §6, issue 7).
pub struct FailedDelivery<'a> {
    pub workflow: &'a crate::model::WorkflowId,
    pub stage: &'a crate::model::StageId,
    pub delivery_id: &'a crate::model::DeliveryId,
    pub item_id: Option<&'a str>,
    pub item_name: Option<&'a str>,
    pub attempts: i64,
    pub outcome: &'a AttemptOutcome,
}

impl FailedDelivery<'_> {
    /// The notification's `data`.
    pub fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "workflow": self.workflow,
            "stage": self.stage,
            "delivery_id": self.delivery_id,
            "item_id": self.item_id,
            "item_name": self.item_name,
            "attempts": self.attempts,
            "last_status": self.outcome.status,
            "last_error_kind": self.outcome.error_kind,
            "error_message": self.outcome.error_message,
        })
    }
}

/// What a `stage.paused` notification carries.
pub fn paused_data(
    workflow: &crate::model::WorkflowId,
    stage: &crate::model::StageId,
    reason: &str,
    operator: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "workflow": workflow,
        "stage": stage,
        "reason": reason,
        "operator": operator,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T0: i64 = 1_780_000_000_000;

    fn cfg(max_attempts: u32, schedule_s: &[u64], pause_after: u32) -> WebhookConfig {
        let text = format!(
            r#"id = "wf"
name = "wf"
team = "t"
[[stage]]
id = "in"
kind = "dataset"
next = "hook"
[[stage]]
id = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/"
max_attempts = {max_attempts}
retry_schedule = [{}]
pause_after_failures = {pause_after}
on_success = "done"
[[stage]]
id = "done"
kind = "complete"
"#,
            schedule_s
                .iter()
                .map(|s| format!("\"{s}s\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let wf = crate::workflow::parse("t.toml", &text, &|_| None).expect("valid workflow");
        wf.stage(&crate::model::StageId::new("hook"))
            .and_then(|s| s.webhook())
            .cloned()
            .expect("webhook stage")
    }

    fn in_flight(attempts: i64) -> DeliveryNow<'static> {
        DeliveryNow {
            state: DeliveryState::InFlight,
            token: Some("tok"),
            attempts,
            event: EventType::StageWebhook,
        }
    }

    const SCHEDULED: AttemptMade<'static> = AttemptMade {
        token: Some("tok"),
        trigger: AttemptTrigger::Scheduled,
    };

    fn status(s: u16) -> AttemptOutcome {
        AttemptOutcome {
            started_at: T0,
            duration_ms: 250,
            status: Some(s),
            ..Default::default()
        }
    }

    fn error(kind: ErrorKind) -> AttemptOutcome {
        AttemptOutcome {
            started_at: T0,
            duration_ms: 250,
            error_kind: Some(kind),
            ..Default::default()
        }
    }

    fn update(d: &Decision) -> (DeliveryState, i64, Option<i64>, Option<Settle>) {
        match &d.effect {
            Effect::Update {
                state,
                attempts,
                next_attempt_at,
                settle,
            } => (*state, *attempts, *next_attempt_at, *settle),
            other => panic!("expected an update, got {other:?}"),
        }
    }

    #[test]
    fn success_counts_routes_on_success_and_resets_the_failure_run() {
        let c = cfg(6, &[1, 5], 50);
        let d = decide(in_flight(0), SCHEDULED, &status(204), Some(&c), 0.0);
        assert!(d.counted);
        assert_eq!(
            update(&d),
            (
                DeliveryState::Succeeded,
                1,
                None,
                Some(Settle {
                    route: Outcome::WebhookSuccess,
                    failures: FailureRun::Reset,
                    notify_failed: false,
                })
            )
        );
    }

    #[test]
    fn a_retryable_status_is_due_at_the_end_plus_the_jittered_schedule_entry() {
        let c = cfg(6, &[1, 5, 30], 50);
        // Attempt 2 (one counted before) waits entry 2: 5 s, scaled by 1 + 0.2 × jitter.
        for (jitter, delay_ms) in [(0.0, 5_000), (1.0, 6_000), (-1.0, 4_000), (0.5, 5_500)] {
            let d = decide(in_flight(1), SCHEDULED, &status(503), Some(&c), jitter);
            let (state, attempts, next, settle) = update(&d);
            assert_eq!(state, DeliveryState::RetryScheduled);
            assert_eq!(attempts, 2);
            assert_eq!(next, Some(T0 + 250 + delay_ms), "jitter {jitter}");
            assert_eq!(settle, None, "a retry settles nothing");
        }
        // The last entry repeats.
        let d = decide(
            in_flight(4),
            SCHEDULED,
            &error(ErrorKind::Timeout),
            Some(&c),
            0.0,
        );
        assert_eq!(update(&d).2, Some(T0 + 250 + 30_000));
    }

    #[test]
    fn retry_after_replaces_the_schedule_without_jitter_and_is_clamped() {
        let c = cfg(6, &[1], 50);
        let mut o = status(429);
        o.retry_after = Some("30".into());
        let d = decide(in_flight(0), SCHEDULED, &o, Some(&c), 1.0);
        assert_eq!(update(&d).2, Some(T0 + 250 + 30_000));
        o.retry_after = Some("999999".into());
        let d = decide(in_flight(0), SCHEDULED, &o, Some(&c), 1.0);
        assert_eq!(
            update(&d).2,
            Some(T0 + 250 + classify::MAX_RETRY_AFTER.as_millis() as i64)
        );
    }

    #[test]
    fn the_last_counted_attempt_fails_notifies_and_extends_the_failure_run() {
        let c = cfg(3, &[1], 7);
        let d = decide(in_flight(2), SCHEDULED, &status(500), Some(&c), 0.0);
        assert_eq!(
            update(&d),
            (
                DeliveryState::Failed,
                3,
                None,
                Some(Settle {
                    route: Outcome::WebhookFailure,
                    failures: FailureRun::Extend { pause_after: 7 },
                    notify_failed: true,
                })
            )
        );
    }

    #[test]
    fn final_statuses_and_errors_fail_at_once() {
        let c = cfg(6, &[1], 50);
        for o in [
            status(400),
            status(301),
            error(ErrorKind::Redirect),
            error(ErrorKind::Policy),
        ] {
            let d = decide(in_flight(0), SCHEDULED, &o, Some(&c), 0.0);
            assert_eq!(update(&d).0, DeliveryState::Failed, "{o:?}");
            assert_eq!(update(&d).1, 1);
        }
    }

    #[test]
    fn a_lost_lease_records_the_attempt_and_changes_nothing() {
        let c = cfg(6, &[1], 50);
        let stale = AttemptMade {
            token: Some("old"),
            trigger: AttemptTrigger::Scheduled,
        };
        let d = decide(in_flight(0), stale, &status(200), Some(&c), 0.0);
        assert_eq!(
            d,
            Decision {
                counted: false,
                effect: Effect::AttemptOnly { lease_lost: true }
            }
        );
        // The right token, but the delivery was cancelled meanwhile.
        let cancelled = DeliveryNow {
            state: DeliveryState::Cancelled,
            ..in_flight(0)
        };
        let d = decide(cancelled, SCHEDULED, &status(200), Some(&c), 0.0);
        assert_eq!(d.effect, Effect::AttemptOnly { lease_lost: true });
    }

    #[test]
    fn a_replay_is_never_counted_and_changes_nothing() {
        let c = cfg(6, &[1], 50);
        let replay = AttemptMade {
            token: None,
            trigger: AttemptTrigger::Manual,
        };
        let failed = DeliveryNow {
            state: DeliveryState::Failed,
            token: None,
            ..in_flight(6)
        };
        let d = decide(failed, replay, &status(200), Some(&c), 0.0);
        assert_eq!(
            d,
            Decision {
                counted: false,
                effect: Effect::AttemptOnly { lease_lost: false }
            }
        );
    }

    #[test]
    fn an_interrupted_attempt_does_not_count() {
        let c = cfg(6, &[1], 50);
        let d = decide(
            in_flight(2),
            SCHEDULED,
            &error(ErrorKind::Interrupted),
            Some(&c),
            0.0,
        );
        assert!(!d.counted);
        let (state, attempts, _, _) = update(&d);
        assert_eq!((state, attempts), (DeliveryState::RetryScheduled, 2));
    }

    #[test]
    fn a_test_is_not_counted_never_retries_and_settles_nothing() {
        let c = cfg(6, &[1], 50);
        let test = DeliveryNow {
            event: EventType::WebhookTest,
            ..in_flight(0)
        };
        let manual = AttemptMade {
            token: Some("tok"),
            trigger: AttemptTrigger::Manual,
        };
        let d = decide(test, manual, &status(503), Some(&c), 0.0);
        assert!(!d.counted);
        assert_eq!(update(&d), (DeliveryState::Failed, 0, None, None));
        let d = decide(test, manual, &status(200), Some(&c), 0.0);
        assert_eq!(update(&d), (DeliveryState::Succeeded, 0, None, None));
    }

    #[test]
    fn a_notification_retries_but_never_settles() {
        let c = cfg(2, &[1], 1);
        let n = DeliveryNow {
            event: EventType::DeliveryFailed,
            ..in_flight(0)
        };
        let d = decide(n, SCHEDULED, &status(500), Some(&c), 0.0);
        assert_eq!(update(&d).0, DeliveryState::RetryScheduled);
        let n = DeliveryNow {
            event: EventType::DeliveryFailed,
            ..in_flight(1)
        };
        let d = decide(n, SCHEDULED, &status(500), Some(&c), 0.0);
        assert_eq!(update(&d), (DeliveryState::Failed, 2, None, None));
    }

    #[test]
    fn a_gone_stage_fails_after_one_attempt_and_counts_no_failure_run() {
        let d = decide(in_flight(0), SCHEDULED, &status(503), None, 0.0);
        let (state, attempts, next, settle) = update(&d);
        assert_eq!((state, attempts, next), (DeliveryState::Failed, 1, None));
        assert_eq!(settle.map(|s| s.failures), Some(FailureRun::Untracked));
    }

    #[test]
    fn auto_pause_at_the_threshold_and_never_at_zero() {
        assert_eq!(auto_pause(49, 50), None);
        assert_eq!(
            auto_pause(50, 50).as_deref(),
            Some("paused automatically after 50 consecutive failed deliveries")
        );
        assert_eq!(auto_pause(1_000, 0), None);
    }

    #[test]
    fn the_schedule_entry_for_retry_k_matches_the_design() {
        // Retry k waits entry min(k, len) − 1 (design §6).
        let c = cfg(10, &[1, 5], 50);
        assert_eq!(
            classify::retry_delay(&c, 1, None, 0.0),
            Duration::from_secs(1)
        );
        assert_eq!(
            classify::retry_delay(&c, 5, None, 0.0),
            Duration::from_secs(5)
        );
    }
}
