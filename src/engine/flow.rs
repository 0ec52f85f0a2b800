//! How fast a webhook stage may send (issue 21): its rate limit, its hold and its adaptive
//! concurrency, decided here and applied by the store in the lease and record transactions.
//!
//! Rules:
//! - **Rate limit** (`rate_limit`, `burst`): a token bucket per stage, shared by every
//!   dispatcher of the store. It holds at most `burst` tokens and gains `count` per period,
//!   continuously; a lease takes one token per delivery it leases, so no window of one period
//!   sees more than `count + burst` requests. A fresh bucket is full. A test or a replay
//!   [`reserve`]s a token even when none is left (the level goes below zero) and is sent when
//!   that token would have come: it is never refused, and the leases behind it wait for it.
//! - **Hold**: a `429` or `503` answer with a `Retry-After` of more than zero holds the whole
//!   stage until then ([`hold_of`]; clamped to 1 h as for retries): no lease for it, by any
//!   dispatcher. A later hold never shortens an earlier one. Holds end by themselves and are
//!   not pauses (auto-pause counts failed deliveries, not holds); `stage resume` lifts them.
//! - **Adaptive concurrency** ([`Aimd`]): a `429` without `Retry-After` halves the stage's
//!   effective concurrency (at least 1), once per round trip: a throttled attempt that
//!   started before the last decrease was answered to the old concurrency and changes
//!   nothing. Each success window (as many successes as the current limit: one round of
//!   requests) raises it by one. It never exceeds the ceiling (`max_in_flight` and the
//!   dispatcher's `--concurrency`); reaching it lifts the limit.
//!
//! Pure: no IO, no clock; times are milliseconds since the epoch, given by the caller.

use chrono::DateTime;

use super::classify;
use crate::model::AttemptOutcome;
use crate::workflow::RateLimit;

/// A token bucket's state: `tokens` as of `at` (ms). Below zero when tests or replays
/// reserved tokens ahead.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at: i64,
}

/// Tolerance for the float arithmetic of a bucket (a token due at `t` is whole at `t`).
const EPS: f64 = 1e-9;

/// The bucket's level at `now`: what it held plus what accrued since, at most `burst`.
/// `None` (a stage never limited before) is a full bucket.
pub fn level(bucket: Option<Bucket>, rate: &RateLimit, now: i64) -> f64 {
    let burst = f64::from(rate.burst.max(1));
    match bucket {
        None => burst,
        Some(b) => {
            let elapsed = (now - b.at).max(0) as f64;
            (b.tokens + elapsed * rate.per_ms()).min(burst)
        }
    }
}

/// Whole tokens available at `now`.
pub fn available(bucket: Option<Bucket>, rate: &RateLimit, now: i64) -> u32 {
    let l = level(bucket, rate, now);
    if l < 1.0 - EPS {
        0
    } else {
        (l + EPS).floor().min(f64::from(u32::MAX)) as u32
    }
}

/// When a bucket at `level` (as of `now`) next holds a whole token: `None` when it holds one
/// now.
pub fn next_token_at(level: f64, rate: &RateLimit, now: i64) -> Option<i64> {
    if level >= 1.0 - EPS {
        return None;
    }
    // Less a nanosecond's worth, so float rounding never adds a whole millisecond.
    let wait = ((1.0 - level) / rate.per_ms() - 1e-6).ceil().max(0.0);
    Some(now + wait.min(i64::MAX as f64 / 2.0) as i64)
}

/// What taking tokens leaves: the bucket to store and when its next whole token comes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Taken {
    pub bucket: Bucket,
    pub next_token_at: Option<i64>,
}

/// Takes `n` tokens at `now` from a bucket that has them (the lease took at most
/// [`available`]).
pub fn take(bucket: Option<Bucket>, rate: &RateLimit, now: i64, n: u32) -> Taken {
    let left = level(bucket, rate, now) - f64::from(n);
    Taken {
        bucket: Bucket {
            tokens: left,
            at: now,
        },
        next_token_at: next_token_at(left, rate, now),
    }
}

/// A test's or a replay's token: taken at once when there is one, else reserved ahead.
/// Returns the bucket to store and when the request may go (`now` when a token was there).
pub fn reserve(bucket: Option<Bucket>, rate: &RateLimit, now: i64) -> (Taken, i64) {
    let l = level(bucket, rate, now);
    let send_at = next_token_at(l, rate, now).unwrap_or(now);
    (take(bucket, rate, now, 1), send_at)
}

/// How long a queue of `n` deliveries takes to drain at `rate`, in ms (the first `burst` go
/// at once when the bucket is full; this is the steady figure, `n` ÷ rate).
pub fn drain_ms(n: i64, rate: &RateLimit) -> i64 {
    (n.max(0) as f64 / rate.per_ms()).ceil() as i64
}

/// A stage hold: no lease for the stage before `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub until: i64,
    /// What the console shows after "held 28 s: ".
    pub reason: String,
}

/// The hold a recorded attempt asks for: a `429` or `503` answer with a `Retry-After` of
/// more than zero, from the end of the attempt.
pub fn hold_of(o: &AttemptOutcome) -> Option<Hold> {
    let status = o.status?;
    if status != 429 && status != 503 {
        return None;
    }
    let end = o.started_at + o.duration_ms;
    let now = DateTime::from_timestamp_millis(end).unwrap_or_default();
    let after = classify::parse_retry_after(o.retry_after.as_deref()?, now)?;
    let ms = after.as_millis() as i64;
    (ms > 0).then(|| Hold {
        until: end + ms,
        reason: format!("{status} from receiver"),
    })
}

/// What an attempt tells the stage's concurrency controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A 2xx: one more success in the window.
    Success,
    /// A `429` without `Retry-After`, from an attempt that started at `started_at`.
    Throttled { started_at: i64 },
}

/// The signal of a recorded scheduled attempt, if it is one.
pub fn signal_of(o: &AttemptOutcome) -> Option<Signal> {
    match o.status? {
        200..=299 => Some(Signal::Success),
        429 if hold_of(o).is_none() => Some(Signal::Throttled {
            started_at: o.started_at,
        }),
        _ => None,
    }
}

/// A stage's adaptive concurrency (additive increase, multiplicative decrease).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aimd {
    /// The stage's effective concurrency; `None`: not reduced (the ceiling applies).
    pub limit: Option<u32>,
    /// Successes since the limit last changed.
    pub successes: u32,
    /// When the limit was last decreased (ms).
    pub decreased_at: i64,
}

impl Aimd {
    /// Applies one signal at `now`. `ceiling` is the stage's ceiling (`max_in_flight`, the
    /// dispatcher's `--concurrency`); `in_flight` what the stage has in flight, its effective
    /// concurrency when it is not reduced.
    pub fn apply(self, signal: Signal, ceiling: u32, in_flight: u32, now: i64) -> Aimd {
        let ceiling = ceiling.max(1);
        match signal {
            Signal::Throttled { started_at } => {
                if self.limit.is_some() && started_at < self.decreased_at {
                    return self; // answered to the concurrency before the last decrease
                }
                let current = self.limit.unwrap_or(in_flight.max(1)).min(ceiling);
                Aimd {
                    limit: Some((current / 2).max(1)),
                    successes: 0,
                    decreased_at: now,
                }
            }
            Signal::Success => {
                let Some(limit) = self.limit else {
                    return self;
                };
                let successes = self.successes + 1;
                if successes < limit {
                    return Aimd { successes, ..self };
                }
                let limit = limit + 1;
                Aimd {
                    limit: (limit < ceiling).then_some(limit),
                    successes: 0,
                    ..self
                }
            }
        }
    }

    /// The limit clamped to `ceiling`: `None` when the ceiling is no higher.
    pub fn capped(self, ceiling: u32) -> Aimd {
        match self.limit {
            Some(l) if l >= ceiling.max(1) => Aimd {
                limit: None,
                successes: 0,
                ..self
            },
            _ => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_780_000_000_000;

    fn rate(count: u32, period_ms: u64, burst: u32) -> RateLimit {
        RateLimit {
            count,
            period_ms,
            burst,
        }
    }

    #[test]
    fn a_fresh_bucket_is_full_and_refills_continuously_up_to_its_burst() {
        let r = rate(20, 1000, 5);
        assert_eq!(available(None, &r, T0), 5);
        let t = take(None, &r, T0, 5);
        assert_eq!(
            t.bucket,
            Bucket {
                tokens: 0.0,
                at: T0
            }
        );
        // One token every 50 ms.
        assert_eq!(t.next_token_at, Some(T0 + 50));
        assert_eq!(available(Some(t.bucket), &r, T0 + 49), 0);
        assert_eq!(available(Some(t.bucket), &r, T0 + 50), 1);
        assert_eq!(available(Some(t.bucket), &r, T0 + 149), 2);
        // Never more than the burst, however long it rested.
        assert_eq!(available(Some(t.bucket), &r, T0 + 3_600_000), 5);
    }

    #[test]
    fn partial_tokens_carry_over_between_leases() {
        let r = rate(20, 1000, 5);
        let b = Bucket {
            tokens: 0.0,
            at: T0,
        };
        // 75 ms later: 1.5 tokens; take 1, half a token stays; the next is whole 25 ms on.
        let t = take(Some(b), &r, T0 + 75, 1);
        assert!((t.bucket.tokens - 0.5).abs() < 1e-9);
        assert_eq!(t.next_token_at, Some(T0 + 100));
        assert_eq!(available(Some(t.bucket), &r, T0 + 100), 1);
    }

    #[test]
    fn per_minute_and_per_hour_rates() {
        let r = rate(6, 60_000, 1);
        let t = take(None, &r, T0, 1);
        assert_eq!(t.next_token_at, Some(T0 + 10_000));
        let r = rate(2, 3_600_000, 1);
        let t = take(None, &r, T0, 1);
        assert_eq!(t.next_token_at, Some(T0 + 1_800_000));
    }

    #[test]
    fn tests_and_replays_reserve_a_token_ahead_and_wait_for_it() {
        let r = rate(10, 1000, 1);
        // A token is there: it goes now.
        let (t, at) = reserve(None, &r, T0);
        assert_eq!(at, T0);
        assert_eq!(t.next_token_at, Some(T0 + 100));
        // None left: the next one is reserved; it goes when it comes, and the level is
        // below zero so the lease after it waits one more token.
        let (t, at) = reserve(Some(t.bucket), &r, T0);
        assert_eq!(at, T0 + 100);
        assert!((t.bucket.tokens + 1.0).abs() < 1e-9);
        assert_eq!(t.next_token_at, Some(T0 + 200));
    }

    #[test]
    fn drain_time_is_the_queue_over_the_rate() {
        assert_eq!(drain_ms(100, &rate(5, 1000, 5)), 20_000);
        assert_eq!(drain_ms(0, &rate(5, 1000, 5)), 0);
        assert_eq!(drain_ms(30, &rate(60, 60_000, 1)), 30_000);
    }

    fn answer(status: u16, retry_after: Option<&str>) -> AttemptOutcome {
        AttemptOutcome {
            started_at: T0,
            duration_ms: 40,
            url: String::new(),
            request_headers: Vec::new(),
            status: Some(status),
            response_headers: Vec::new(),
            response_body: None,
            error_kind: None,
            error_message: None,
            retry_after: retry_after.map(str::to_string),
        }
    }

    #[test]
    fn a_429_or_503_with_retry_after_holds_the_stage_from_the_end_of_the_attempt() {
        let h = hold_of(&answer(429, Some("2"))).unwrap();
        assert_eq!(h.until, T0 + 40 + 2_000);
        assert_eq!(h.reason, "429 from receiver");
        let h = hold_of(&answer(503, Some("30"))).unwrap();
        assert_eq!(
            (h.until, h.reason.as_str()),
            (T0 + 40 + 30_000, "503 from receiver")
        );
        // An HTTP date, and the 1 h clamp.
        let end = DateTime::from_timestamp_millis(T0 + 40).unwrap();
        let date = httpdate::fmt_http_date((end + chrono::Duration::seconds(10)).into());
        assert!(hold_of(&answer(429, Some(&date))).unwrap().until >= T0 + 40 + 9_000);
        assert_eq!(
            hold_of(&answer(503, Some("86400"))).unwrap().until,
            T0 + 40 + 3_600_000
        );
        // No hold: no Retry-After, zero, unparseable, other statuses.
        assert_eq!(hold_of(&answer(429, None)), None);
        assert_eq!(hold_of(&answer(429, Some("0"))), None);
        assert_eq!(hold_of(&answer(503, Some("soon"))), None);
        assert_eq!(hold_of(&answer(500, Some("5"))), None);
        assert_eq!(hold_of(&answer(200, Some("5"))), None);
    }

    #[test]
    fn signals() {
        assert_eq!(signal_of(&answer(204, None)), Some(Signal::Success));
        assert_eq!(
            signal_of(&answer(429, None)),
            Some(Signal::Throttled { started_at: T0 })
        );
        // With Retry-After it is a hold, not a halving.
        assert_eq!(signal_of(&answer(429, Some("3"))), None);
        assert_eq!(signal_of(&answer(503, None)), None);
        assert_eq!(signal_of(&answer(500, None)), None);
    }

    /// The exact sequence: halve to 1 on 429s, ignore the 429s of requests sent before the
    /// decrease, then +1 per window of `limit` successes back up to the ceiling.
    #[test]
    fn aimd_halves_to_one_and_recovers_one_per_success_window() {
        let ceiling = 8;
        let mut a = Aimd::default();
        let mut t = T0;
        let mut seen = Vec::new();
        let throttled = |a: Aimd, started: i64, now: i64| {
            a.apply(
                Signal::Throttled {
                    started_at: started,
                },
                ceiling,
                8,
                now,
            )
        };
        // 8 in flight, a 429: 4.
        a = throttled(a, t - 100, t);
        seen.push(a.limit);
        // Another 429 of a request sent before that decrease: still 4.
        a = throttled(a, t - 50, t + 10);
        seen.push(a.limit);
        // 429s of requests sent after each decrease: 2, 1, and never below 1.
        for _ in 0..3 {
            t += 100;
            a = throttled(a, t - 10, t);
            seen.push(a.limit);
        }
        assert_eq!(seen, [Some(4), Some(4), Some(2), Some(1), Some(1)]);
        // Recovery: a window is as many successes as the limit.
        let mut steps = Vec::new();
        for _ in 0..(1 + 2 + 3 + 4 + 5 + 6 + 7) {
            a = a.apply(Signal::Success, ceiling, 1, t);
            steps.push(a.limit);
        }
        let expected: Vec<Option<u32>> = [
            vec![Some(2)],
            vec![Some(2), Some(3)],
            vec![Some(3), Some(3), Some(4)],
            vec![Some(4); 3].into_iter().chain([Some(5)]).collect(),
            vec![Some(5); 4].into_iter().chain([Some(6)]).collect(),
            vec![Some(6); 5].into_iter().chain([Some(7)]).collect(),
            // Reaching the ceiling (8) lifts the limit.
            vec![Some(7); 6].into_iter().chain([None]).collect(),
        ]
        .concat();
        assert_eq!(steps, expected);
        // Not reduced: successes change nothing.
        assert_eq!(a.apply(Signal::Success, ceiling, 8, t), a);
    }

    #[test]
    fn aimd_starts_from_what_is_in_flight_and_never_exceeds_the_ceiling() {
        // 3 in flight under a ceiling of 64: the first 429 halves 3, not 64.
        let a = Aimd::default().apply(Signal::Throttled { started_at: T0 }, 64, 3, T0);
        assert_eq!(a.limit, Some(1));
        // 100 in flight under a ceiling of 10 (max_in_flight): halves 10.
        let a = Aimd::default().apply(Signal::Throttled { started_at: T0 }, 10, 100, T0);
        assert_eq!(a.limit, Some(5));
        // A ceiling lowered below the limit lifts it.
        assert_eq!(a.capped(4).limit, None);
        assert_eq!(a.capped(6).limit, Some(5));
    }
}
