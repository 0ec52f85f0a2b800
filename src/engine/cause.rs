//! The cause of a failed attempt as failure groups key it (issue 18): its message with what
//! varies from one request to the next replaced by placeholders, so that "timed out after
//! 30012 ms" and "timed out after 30007 ms" are one cause and "400 Bad Request: invalid label"
//! and "400 Bad Request: missing field" are two.
//!
//! Rules, in the order they apply to each word (a run of ASCII letters, digits, `_` and `-`):
//! - the message's first word, when it is three digits, stays (the status of `503 Service
//!   Unavailable`; the group's status is its key anyway);
//! - a UUID, a word of eight or more hex digits with a digit among them, a word of sixteen or
//!   more letters and digits with a digit among them (ULIDs, tokens), and `msg_…` delivery
//!   ids become `<id>`;
//! - in any other word each run of digits becomes `#`, and a decimal or grouped number
//!   (`1.5`, `30,012`) is one `#`.
//!
//! Outside words: a quoted value (`"…"`, `'…'`, `` `…` ``; an apostrophe inside a word is not a
//! quote) becomes its quotes around `…`, and a URL's query string (from `?` to the next space)
//! becomes `?…`. For a failure by HTTP status the message is only the status line, so the
//! receiver's own reason is added from its answer: a JSON object's `error`, `message`,
//! `detail`, `reason` or `title` (or `error.message`), else the body's first line unless it is
//! markup.
//!
//! Pure: the store calls [`cause_class`] when it records an attempt and keeps the result in
//! the delivery row, so grouping and filtering by cause is plain SQL.

use crate::model::ErrorKind;

/// The longest cause kept, in characters (longer ones are cut with `…`).
pub const MAX_CAUSE_CHARS: usize = 160;

/// Bodies larger than this are not parsed as JSON for a reason (their first line still is).
const MAX_JSON_REASON_BODY: usize = 16 * 1024;

/// The cause of an attempt that failed with `kind` (none when it did not fail): its message,
/// with the receiver's reason for a failure by status, normalised.
pub fn cause_class(
    kind: Option<ErrorKind>,
    message: Option<&str>,
    body: Option<&[u8]>,
) -> Option<String> {
    kind?;
    let message = message.unwrap_or("").trim();
    let reason = match kind {
        Some(ErrorKind::HttpStatus) => body.and_then(body_reason),
        _ => None,
    };
    let text = match reason {
        Some(r) if message.is_empty() => r,
        Some(r) => format!("{message}: {r}"),
        None => message.to_string(),
    };
    let class = normalise_message(&text);
    Some(match class.char_indices().nth(MAX_CAUSE_CHARS) {
        Some((cut, _)) => format!("{}…", &class[..cut]),
        None => class,
    })
}

/// What a receiver said was wrong, from its answer's body (one line), if it said anything.
fn body_reason(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.starts_with('{') && body.len() <= MAX_JSON_REASON_BODY {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let field = ["error", "message", "detail", "reason", "title"]
            .iter()
            .find_map(|k| match v.get(k) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Object(o)) => o
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string),
                _ => None,
            });
        return field.map(|f| super::classify::one_line(&f));
    }
    let first = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    if first.starts_with('<') || first.starts_with('{') || first.starts_with('[') {
        return None;
    }
    Some(super::classify::one_line(first))
}

/// The message with its varying parts replaced by placeholders (the module's rules).
pub fn normalise_message(m: &str) -> String {
    let chars: Vec<char> = m.chars().collect();
    let mut out = String::with_capacity(m.len());
    let mut in_url = false;
    let mut i = 0;
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            in_url = false;
            out.push(c);
            i += 1;
        } else if in_url && c == '?' {
            out.push_str("?…");
            while i < chars.len() && !chars[i].is_whitespace() {
                i += 1;
            }
        } else if matches!(c, '"' | '\'' | '`')
            && !(c == '\'' && i > 0 && chars[i - 1].is_alphanumeric())
            && let Some(len) = chars[i + 1..].iter().position(|&q| q == c)
        {
            out.extend([c, '…', c]);
            i += len + 2;
        } else if is_word(c) {
            let start = i;
            while i < chars.len() && is_word(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if chars[i..].starts_with(&[':', '/', '/']) {
                in_url = true;
            }
            push_word(&mut out, &word, start == 0);
            // `1.5` and `30,012` are one number.
            while out.ends_with('#')
                && matches!(chars.get(i), Some('.' | ','))
                && chars.get(i + 1).is_some_and(char::is_ascii_digit)
            {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn push_word(out: &mut String, word: &str, first: bool) {
    let has_digit = word.bytes().any(|b| b.is_ascii_digit());
    let has_letter = word.bytes().any(|b| b.is_ascii_alphabetic());
    if first && word.len() == 3 && !has_letter {
        out.push_str(word);
    } else if is_uuid(word) {
        out.push_str("<id>");
    } else if let Some(rest) = word.strip_prefix("msg_")
        && !rest.is_empty()
    {
        out.push_str("msg_<id>");
    } else if has_letter
        && has_digit
        && ((word.len() >= 8 && word.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
            || (word.len() >= 16 && word.bytes().all(|b| b.is_ascii_alphanumeric())))
    {
        out.push_str("<id>");
    } else {
        let mut digits = false;
        for c in word.chars() {
            if c.is_ascii_digit() {
                if !digits {
                    out.push('#');
                }
                digits = true;
            } else {
                digits = false;
                out.push(c);
            }
        }
    }
}

fn is_uuid(w: &str) -> bool {
    let groups: Vec<&str> = w.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(kind: ErrorKind, message: &str, body: &str) -> String {
        cause_class(Some(kind), Some(message), Some(body.as_bytes())).unwrap()
    }

    #[test]
    fn numbers_ids_quotes_and_queries_vary_but_the_cause_does_not() {
        let same = [
            ("timed out after 30012 ms", "timed out after 30007 ms"),
            ("timed out after 1.5 s", "timed out after 2.25 s"),
            (
                "no item 3f2b8c1e-0d4a-4c6b-9e21-7a5d9f0b1c2d",
                "no item 00000000-0000-4000-8000-000000000000",
            ),
            ("commit deadbeef12 failed", "commit 0a1b2c3d4e failed"),
            (
                "duplicate msg_01JD00000000000000000000A1",
                "duplicate msg_x",
            ),
            ("label 'car' is unknown", "label 'truck' is unknown"),
            (
                "redirect to https://r.example/hook?sig=abc&t=1 not followed",
                "redirect to https://r.example/hook?sig=xyz not followed",
            ),
            (
                "request 01JD7Z6Q8W3N5R2T4Y6U8I0P9A refused",
                "request 01JD7Z6Q8W3N5R2T4Y6U8I0P9B refused",
            ),
            ("processed 30,012 rows", "processed 7 rows"),
        ];
        for (a, b) in same {
            assert_eq!(normalise_message(a), normalise_message(b), "{a} / {b}");
        }
        assert_eq!(
            normalise_message("timed out after 30012 ms"),
            "timed out after # ms"
        );
        assert_eq!(
            normalise_message("503 Service Unavailable"),
            "503 Service Unavailable"
        );
        assert_eq!(normalise_message("can't parse 'x'"), "can't parse '…'");
        assert_eq!(
            normalise_message("redirect to https://r.example/v2/hook?sig=abc not followed"),
            "redirect to https://r.example/v#/hook?… not followed"
        );
        assert_ne!(
            normalise_message("invalid label"),
            normalise_message("missing field")
        );
    }

    #[test]
    fn a_status_failure_adds_the_receivers_reason() {
        let s = ErrorKind::HttpStatus;
        assert_eq!(
            class(s, "400 Bad Request", r#"{"error":"invalid label 'car'"}"#),
            "400 Bad Request: invalid label '…'"
        );
        assert_ne!(
            class(s, "400 Bad Request", r#"{"error":"invalid label"}"#),
            class(s, "400 Bad Request", r#"{"message":"missing field"}"#)
        );
        assert_eq!(
            class(
                s,
                "422 Unprocessable Entity",
                r#"{"error":{"message":"bad slot 3"}}"#
            ),
            "422 Unprocessable Entity: bad slot #"
        );
        assert_eq!(
            class(
                s,
                "500 Internal Server Error",
                "upstream 10.0.0.7 down\nmore"
            ),
            "500 Internal Server Error: upstream # down"
        );
        assert_eq!(
            class(s, "502 Bad Gateway", "<html><body>nginx</body></html>"),
            "502 Bad Gateway"
        );
        assert_eq!(
            class(s, "503 Service Unavailable", ""),
            "503 Service Unavailable"
        );
        // Only a failure by status reads the body.
        assert_eq!(
            class(
                ErrorKind::Timeout,
                "timed out after 10 s",
                "{\"error\":\"x\"}"
            ),
            "timed out after # s"
        );
        assert_eq!(cause_class(None, Some("ok"), None), None);
        let long = "x".repeat(MAX_CAUSE_CHARS + 10);
        assert_eq!(
            class(ErrorKind::Connect, &long, "").chars().count(),
            MAX_CAUSE_CHARS + 1
        );
    }
}
