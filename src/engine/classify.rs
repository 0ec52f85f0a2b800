//! Outcome rules: what a status or a transport error means for a delivery, when to retry, and
//! the one-line message an attempt row carries.
//!
//! Rules (design §2, §6):
//! - 2xx is success. 408, 429 and 5xx are retried; a `Retry-After` header (delta-seconds or an
//!   HTTP date) replaces the schedule's delay, clamped to one hour and never jittered.
//! - 3xx (redirects are never followed), every other 4xx, 1xx and anything outside 100–599 are
//!   final at once.
//! - Without a status, `connect`, `timeout`, `tls`, `protocol` and `interrupted` are retried;
//!   `redirect`, `policy` are final. `protocol` (the receiver answered bytes that are not HTTP)
//!   is a connection-level fault like `connect`: no status arrived, so nothing was decided by
//!   the receiver's application, and what is on the port (a restarting proxy, another program
//!   briefly holding it) is as likely to change as a refused connection.
//! - **The status decides when one arrived.** An error while reading the body after the status
//!   (`body`) is recorded on the attempt but never changes the status-based verdict; use
//!   [`classify`] to get that precedence right.
//!
//! Everything here is pure: the caller passes the clock reading and the jitter.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::ErrorKind;
use crate::workflow::WebhookConfig;

/// The longest delay a `Retry-After` header may impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The schedule's jitter: each delay is scaled by `1 ± JITTER`.
pub const JITTER: f64 = 0.2;

/// The message of an `interrupted` attempt row.
pub const INTERRUPTED_MESSAGE: &str = "dispatcher stopped before the outcome was recorded";

/// Longest message an attempt row keeps, in characters.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// What to do with a delivery after one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: route along `on_success`.
    Success,
    /// Worth another attempt (if any remain). `after` is the receiver's `Retry-After`, already
    /// clamped to [`MAX_RETRY_AFTER`]; `None` means "use the schedule".
    Retry { after: Option<Duration> },
    /// Final failure at once: route along `on_failure` without further attempts.
    Final,
}

/// The verdict for a response status. `retry_after` is the raw `Retry-After` header value, read
/// only for retryable statuses; `now` resolves an HTTP-date form.
pub fn classify_status(status: u16, retry_after: Option<&str>, now: DateTime<Utc>) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        408 | 429 | 500..=599 => Verdict::Retry {
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        // 1xx, 3xx (never followed), other 4xx, and nonsense codes.
        _ => Verdict::Final,
    }
}

/// The verdict for a transport error that left no status. `body` errors come after a status,
/// so that status decides ([`classify`]); on their own, like `http_status`, they are final.
pub fn classify_error(kind: ErrorKind) -> Verdict {
    match kind {
        ErrorKind::Connect
        | ErrorKind::Timeout
        | ErrorKind::Tls
        | ErrorKind::Protocol
        | ErrorKind::Interrupted => Verdict::Retry { after: None },
        ErrorKind::Redirect | ErrorKind::Policy | ErrorKind::HttpStatus | ErrorKind::Body => {
            Verdict::Final
        }
    }
}

/// The verdict for a whole attempt: the status when one arrived (whatever happened while
/// reading the body afterwards), else the error. No status and no error cannot happen; it is
/// treated as a retryable interruption.
pub fn classify(
    status: Option<u16>,
    error: Option<ErrorKind>,
    retry_after: Option<&str>,
    now: DateTime<Utc>,
) -> Verdict {
    match (status, error) {
        (Some(s), _) => classify_status(s, retry_after, now),
        (None, Some(kind)) => classify_error(kind),
        (None, None) => classify_error(ErrorKind::Interrupted),
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP date (IMF-fixdate, RFC 850 or asctime).
/// The result is clamped to [`MAX_RETRY_AFTER`]; a date in the past is zero; anything else is
/// `None` (the schedule applies).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too large for u64 is still "a very long time": clamp it.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = parse_http_date(v)?;
    let delta = (at - now).to_std().unwrap_or(Duration::ZERO);
    Some(delta.min(MAX_RETRY_AFTER))
}

/// An HTTP-date (RFC 9110 §5.6.7: IMF-fixdate, RFC 850 or asctime, always GMT), parsed by
/// `httpdate` (hyper's own parser). A date with a numeric zone is not an HTTP-date.
fn parse_http_date(v: &str) -> Option<DateTime<Utc>> {
    httpdate::parse_http_date(v).ok().map(DateTime::<Utc>::from)
}

/// The delay before retry `k` (k = 1 … max_attempts − 1). A `Retry-After` replaces the
/// schedule's delay as it is (clamped, no jitter); otherwise the schedule's entry is scaled by
/// `1 + 0.2 × jitter`, where the caller draws `jitter` uniformly from [-1, 1] (values outside
/// are clamped, a non-finite one counts as 0).
pub fn retry_delay(
    cfg: &WebhookConfig,
    k: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    if let Some(after) = retry_after {
        return after.min(MAX_RETRY_AFTER);
    }
    let base = cfg.retry_delay(k);
    let jitter = if jitter.is_finite() {
        jitter.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    Duration::try_from_secs_f64(base.as_secs_f64() * (1.0 + JITTER * jitter)).unwrap_or(base)
}

/// The standard reason phrase of a status code, if it has one.
pub fn reason_phrase(status: u16) -> Option<&'static str> {
    Some(match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => return None,
    })
}

/// `"503 Service Unavailable"`; just the number for a code without a standard phrase (`"599"`).
pub fn status_message(status: u16) -> String {
    match reason_phrase(status) {
        Some(p) => format!("{status} {p}"),
        None => status.to_string(),
    }
}

/// A duration as people read it: `10 s`, `1.5 s`, `250 ms`, `2 min`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{} s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// `"timed out after 10 s"`.
pub fn timeout_message(after: Duration) -> String {
    format!("timed out after {}", human_duration(after))
}

/// `"could not connect within 3 s"`.
pub fn connect_timeout_message(after: Duration) -> String {
    format!("could not connect within {}", human_duration(after))
}

/// `"301 Moved Permanently: redirect to <location> not followed"`. The caller redacts and
/// sanitises `location` first: it comes from the receiver.
pub fn redirect_message(status: u16, location: Option<&str>) -> String {
    match location.map(str::trim).filter(|l| !l.is_empty()) {
        Some(l) => one_line(&format!(
            "{}: redirect to {l} not followed",
            status_message(status)
        )),
        None => format!("{}: redirect not followed", status_message(status)),
    }
}

/// `"body is 9 MiB (9437184 bytes), over the 8 MiB maximum"` for the `policy` error.
pub fn body_too_large_message(len: usize, max: usize) -> String {
    format!(
        "body is {} ({len} bytes), over the {} maximum",
        human_bytes(len),
        human_bytes(max)
    )
}

fn human_bytes(n: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= MIB {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

/// The usual words for a socket error: `"connection refused"`, `"connection reset by peer"`…
pub fn io_error_message(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind as K;
    match kind {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset by peer",
        K::ConnectionAborted => "connection aborted",
        K::NotConnected => "not connected",
        K::AddrNotAvailable => "address not available",
        K::AddrInUse => "address in use",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::NetworkDown => "network down",
        K::BrokenPipe => "connection closed while sending (broken pipe)",
        K::UnexpectedEof => "connection closed before the response was complete",
        K::TimedOut => "timed out",
        K::PermissionDenied => "permission denied",
        _ => "network error",
    }
}

/// The message of an attempt that failed with `kind`: the kind's usual words, then `detail`
/// (for example the underlying error's text) when given. Always one line of at most
/// [`MAX_MESSAGE_CHARS`]; the caller redacts secrets in `detail` first.
pub fn error_message(kind: ErrorKind, detail: &str) -> String {
    let detail = detail.trim();
    let lead = match kind {
        ErrorKind::Connect => "connection failed",
        ErrorKind::Timeout => "timed out",
        ErrorKind::Tls => "TLS handshake failed",
        ErrorKind::Protocol => "the receiver's answer is not valid HTTP",
        ErrorKind::Redirect => "redirect not followed",
        ErrorKind::HttpStatus => "",
        ErrorKind::Body => "reading the response body failed",
        ErrorKind::Policy => "refused by policy",
        ErrorKind::Interrupted => return INTERRUPTED_MESSAGE.to_string(),
    };
    let text = match (lead.is_empty(), detail.is_empty()) {
        (_, true) if !lead.is_empty() => lead.to_string(),
        (true, _) => detail.to_string(),
        _ => format!("{lead}: {detail}"),
    };
    one_line(&text)
}

/// Collapses control characters and runs of whitespace to single spaces and cuts the text to
/// [`MAX_MESSAGE_CHARS`] characters (with `…`), so an attempt message is always one clean line.
pub fn one_line(s: &str) -> String {
    let cleaned = s
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if cleaned.chars().count() <= MAX_MESSAGE_CHARS {
        return cleaned;
    }
    let mut cut: String = cleaned.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StageId;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap()
    }

    fn retry(secs: Option<u64>) -> Verdict {
        Verdict::Retry {
            after: secs.map(Duration::from_secs),
        }
    }

    #[test]
    fn status_table() {
        let cases: &[(u16, Option<&str>, Verdict)] = &[
            (200, None, Verdict::Success),
            (201, None, Verdict::Success),
            (204, None, Verdict::Success),
            (200, Some("120"), Verdict::Success),
            (101, None, Verdict::Final),
            (301, None, Verdict::Final),
            (302, Some("5"), Verdict::Final),
            (304, None, Verdict::Final),
            (308, None, Verdict::Final),
            (400, None, Verdict::Final),
            (401, None, Verdict::Final),
            (404, None, Verdict::Final),
            (410, None, Verdict::Final),
            (413, Some("5"), Verdict::Final),
            (408, None, retry(None)),
            (408, Some("3"), retry(Some(3))),
            (429, None, retry(None)),
            (429, Some("2"), retry(Some(2))),
            (429, Some(" 0 "), retry(Some(0))),
            (429, Some("Wed, 21 Oct 2015 07:28:30 GMT"), retry(Some(30))),
            (
                429,
                Some("Wednesday, 21-Oct-15 07:29:00 GMT"),
                retry(Some(60)),
            ),
            (429, Some("Wed Oct 21 07:30:00 2015"), retry(Some(120))),
            (429, Some("Wed, 21 Oct 2015 07:00:00 GMT"), retry(Some(0))), // past
            (
                429,
                Some("Thu, 22 Oct 2015 07:28:00 GMT"),
                retry(Some(3600)),
            ), // a day: clamped
            // Not HTTP-dates (a numeric zone, no weekday): the schedule applies.
            (429, Some("Wed, 21 Oct 2015 08:28:30 +0100"), retry(None)),
            (429, Some("21 Oct 2015 07:28:30 GMT"), retry(None)),
            (429, Some("soon"), retry(None)),
            (429, Some("-5"), retry(None)),
            (429, Some("1.5"), retry(None)),
            (429, Some(""), retry(None)),
            (429, Some("86400"), retry(Some(3600))),
            (429, Some("99999999999999999999999999"), retry(Some(3600))),
            (500, None, retry(None)),
            (502, None, retry(None)),
            (503, None, retry(None)),
            (503, Some("10"), retry(Some(10))),
            (599, None, retry(None)),
            (600, None, Verdict::Final),
            (0, None, Verdict::Final),
        ];
        for (status, ra, want) in cases {
            assert_eq!(
                classify_status(*status, *ra, now()),
                *want,
                "status {status} retry-after {ra:?}"
            );
        }
    }

    #[test]
    fn error_table_and_status_precedence() {
        use ErrorKind as K;
        for k in [K::Connect, K::Timeout, K::Tls, K::Protocol, K::Interrupted] {
            assert_eq!(classify_error(k), retry(None), "{k}");
        }
        for k in [K::Redirect, K::Policy, K::HttpStatus, K::Body] {
            assert_eq!(classify_error(k), Verdict::Final, "{k}");
        }
        // A body error after a 200 is still a success; after a 503 still a retry.
        assert_eq!(
            classify(Some(200), Some(K::Body), None, now()),
            Verdict::Success
        );
        assert_eq!(
            classify(Some(503), Some(K::Body), Some("7"), now()),
            retry(Some(7))
        );
        assert_eq!(
            classify(Some(404), Some(K::Timeout), None, now()),
            Verdict::Final
        );
        assert_eq!(classify(None, Some(K::Connect), None, now()), retry(None));
        assert_eq!(
            classify(None, Some(K::Redirect), None, now()),
            Verdict::Final
        );
        assert_eq!(classify(None, None, None, now()), retry(None));
    }

    fn config(schedule: &[u64]) -> WebhookConfig {
        WebhookConfig {
            url: "http://127.0.0.1/".into(),
            authorization: None,
            headers: vec![],
            secrets: vec![],
            include_annotations: true,
            payload: crate::model::PayloadFormat::Darwin,
            event_type: "stage.webhook".into(),
            max_attempts: 6,
            timeout: Duration::from_secs(10),
            retry_schedule: schedule.iter().map(|s| Duration::from_secs(*s)).collect(),
            pause_after_failures: 50,
            max_in_flight: None,
            rate_limit: None,
            on_success: StageId::new("done"),
            on_failure: None,
        }
    }

    #[test]
    fn retry_delays_follow_the_schedule_with_jitter() {
        let cfg = config(&[1, 5, 30, 120, 600]);
        assert_eq!(retry_delay(&cfg, 1, None, 0.0), Duration::from_secs(1));
        assert_eq!(retry_delay(&cfg, 2, None, 0.0), Duration::from_secs(5));
        assert_eq!(retry_delay(&cfg, 5, None, 0.0), Duration::from_secs(600));
        // The last entry repeats.
        assert_eq!(retry_delay(&cfg, 9, None, 0.0), Duration::from_secs(600));
        // ±20 % at the extremes, clamped beyond them.
        assert_eq!(retry_delay(&cfg, 3, None, 1.0), Duration::from_secs(36));
        assert_eq!(retry_delay(&cfg, 3, None, -1.0), Duration::from_secs(24));
        assert_eq!(retry_delay(&cfg, 3, None, 7.0), Duration::from_secs(36));
        assert_eq!(
            retry_delay(&cfg, 3, None, f64::NAN),
            Duration::from_secs(30)
        );
        let d = retry_delay(&cfg, 2, None, 0.5);
        assert_eq!(d, Duration::from_millis(5500));
        // Retry-After replaces the schedule and is not jittered.
        assert_eq!(
            retry_delay(&cfg, 1, Some(Duration::from_secs(2)), 1.0),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_delay(&cfg, 5, Some(Duration::ZERO), -1.0),
            Duration::ZERO
        );
        assert_eq!(
            retry_delay(&cfg, 1, Some(Duration::from_secs(99_999)), 0.0),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn messages() {
        assert_eq!(status_message(200), "200 OK");
        assert_eq!(status_message(503), "503 Service Unavailable");
        assert_eq!(status_message(429), "429 Too Many Requests");
        assert_eq!(status_message(418), "418 I'm a teapot");
        assert_eq!(status_message(599), "599");
        assert_eq!(status_message(299), "299");
        assert_eq!(
            timeout_message(Duration::from_secs(10)),
            "timed out after 10 s"
        );
        assert_eq!(
            timeout_message(Duration::from_millis(250)),
            "timed out after 250 ms"
        );
        assert_eq!(
            timeout_message(Duration::from_millis(1500)),
            "timed out after 1.5 s"
        );
        assert_eq!(
            timeout_message(Duration::from_secs(300)),
            "timed out after 5 min"
        );
        assert_eq!(
            connect_timeout_message(Duration::from_secs(3)),
            "could not connect within 3 s"
        );
        assert_eq!(
            redirect_message(301, Some("https://elsewhere.example/hook")),
            "301 Moved Permanently: redirect to https://elsewhere.example/hook not followed"
        );
        assert_eq!(
            redirect_message(302, None),
            "302 Found: redirect not followed"
        );
        assert_eq!(
            body_too_large_message(9 * 1024 * 1024, 8 * 1024 * 1024),
            "body is 9 MiB (9437184 bytes), over the 8 MiB maximum"
        );
        assert_eq!(
            io_error_message(std::io::ErrorKind::ConnectionRefused),
            "connection refused"
        );
        assert_eq!(
            error_message(ErrorKind::Connect, "connection refused"),
            "connection failed: connection refused"
        );
        assert_eq!(error_message(ErrorKind::Tls, ""), "TLS handshake failed");
        assert_eq!(
            error_message(ErrorKind::HttpStatus, "404 Not Found"),
            "404 Not Found"
        );
        assert_eq!(
            error_message(ErrorKind::Interrupted, "x"),
            INTERRUPTED_MESSAGE
        );
        assert_eq!(
            error_message(ErrorKind::Body, "reset\r\n\x1b[31m mid-body"),
            "reading the response body failed: reset [31m mid-body"
        );
    }

    #[test]
    fn one_line_is_short_and_clean() {
        assert_eq!(one_line("  a\n\tb  c "), "a b c");
        let long = "x".repeat(1000);
        let cut = one_line(&long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS);
        assert!(cut.ends_with('…'));
        let exact = "y".repeat(MAX_MESSAGE_CHARS);
        assert_eq!(one_line(&exact), exact);
    }
}
