//! The payload viewer's text: a delivery's request and responses as styled lines, JSON
//! pretty-printed (in the order it was written, numbers as written) and anything else shown
//! raw; the texts the copy keys take (body, headers, a `curl` command); header masking.
//!
//! Pure: no IO, no clock (the caller passes the time a `curl` command signs with). The
//! [`document`] the viewer draws and the pager shows is sanitised of control characters and
//! escape sequences; what goes to the clipboard is the text itself (base64 inside OSC 52, so
//! it cannot reach the terminal raw), secrets masked unless the operator asked.

use crate::model::DeliveryId;
use crate::redact::{self, Redactor};
use crate::store::DeliveryDetail;
use crate::workflow::WebhookConfig;

/// What a piece of a line is, for its style (the view maps each to the theme).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tok {
    Plain,
    Dim,
    Head,
    Good,
    Bad,
    /// JSON: an object key, a string, a number, `true`/`false`/`null`, punctuation.
    Key,
    Str,
    Num,
    Lit,
    Punct,
}

/// One line of the document: styled pieces, drawn left to right (wrapped by the view).
pub type DocLine = Vec<(Tok, String)>;

/// JSON text pretty-printed as lines (two spaces per level, each line starting with
/// `indent`), or `None` when `text` is not one valid JSON value. Keys keep their order and
/// numbers their digits: this re-indents the text rather than re-serialising a parsed value.
pub fn pretty_json(text: &str, indent: &str) -> Option<Vec<DocLine>> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    let mut lines: Vec<DocLine> = Vec::new();
    let mut line: DocLine = vec![(Tok::Plain, indent.to_string())];
    let mut depth = 0usize;
    let newline = |lines: &mut Vec<DocLine>, line: &mut DocLine, depth: usize| {
        lines.push(std::mem::take(line));
        line.push((Tok::Plain, format!("{indent}{}", "  ".repeat(depth))));
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    let next_non_ws = |mut j: usize| {
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        bytes.get(j).copied()
    };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'{' | b'[' => {
                let close = if b == b'{' { b'}' } else { b']' };
                let mut j = i + 1;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                if bytes.get(j) == Some(&close) {
                    line.push((Tok::Punct, format!("{}{}", b as char, close as char)));
                    i = j + 1;
                } else {
                    line.push((Tok::Punct, (b as char).to_string()));
                    depth += 1;
                    newline(&mut lines, &mut line, depth);
                    i += 1;
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut lines, &mut line, depth);
                line.push((Tok::Punct, (b as char).to_string()));
                i += 1;
            }
            b',' => {
                line.push((Tok::Punct, ",".into()));
                newline(&mut lines, &mut line, depth);
                i += 1;
            }
            b':' => {
                line.push((Tok::Punct, ": ".into()));
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                let end = i.min(bytes.len());
                let kind = if next_non_ws(end) == Some(b':') {
                    Tok::Key
                } else {
                    Tok::Str
                };
                line.push((kind, text[start..end].to_string()));
            }
            _ => {
                let start = i;
                while i < bytes.len()
                    && !matches!(
                        bytes[i],
                        b',' | b'}' | b']' | b':' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    i += 1;
                }
                let word = &text[start..i];
                let kind = if word.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
                    Tok::Num
                } else {
                    Tok::Lit
                };
                line.push((kind, word.to_string()));
            }
        }
    }
    if line.len() > 1 {
        lines.push(line);
    }
    Some(lines)
}

/// A body as lines: pretty JSON when it parses, else its text as received (a body that is
/// not JSON is shown, never an error). The second value says which.
pub fn body_lines(text: &str, indent: &str) -> (Vec<DocLine>, bool) {
    if let Some(lines) = pretty_json(text, indent) {
        return (lines, true);
    }
    let lines = text
        .split('\n')
        .map(|l| {
            vec![
                (Tok::Plain, indent.to_string()),
                (Tok::Plain, l.trim_end_matches('\r').to_string()),
            ]
        })
        .collect();
    (lines, false)
}

/// A header value as the console shows it: an `authorization`-like header's value and a
/// signing key (`whsec_…`) masked whatever they hold, unless already masked where stored.
pub fn shown_header(name: &str, value: &str) -> String {
    let secretish = redact::is_sensitive_header(name)
        || value.contains(crate::dispatch::sign::SECRET_PREFIX)
        || name.to_ascii_lowercase().contains("secret");
    if secretish && !value.contains(redact::MASK) {
        redact::mask(value)
    } else {
        value.to_string()
    }
}

/// The frozen request body as sent: its exact bytes when they are JSON (the store keeps a
/// parsed copy, which serialises back to the same bytes: bodies are written by `serde_json`
/// from the same kind of value), else the text it was kept as.
pub fn request_body(d: &DeliveryDetail) -> String {
    match &d.body {
        serde_json::Value::String(s) => s.clone(),
        v => serde_json::to_string(v).unwrap_or_default(),
    }
}

/// The newest attempt's request headers, one `name: value` a line, secrets masked.
pub fn request_headers(d: &DeliveryDetail) -> Option<String> {
    let a = d.attempt_log.last()?;
    Some(
        a.request_headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", shown_header(k, v)))
            .collect(),
    )
}

/// The newest response body, if any.
pub fn response_body(d: &DeliveryDetail) -> Option<String> {
    d.attempt_log
        .iter()
        .rev()
        .find_map(|a| a.response_body.clone().filter(|b| !b.is_empty()))
}

fn size(n: usize) -> String {
    if n < 1024 {
        format!("{n} B")
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// The delivery detail as a document: the summary, the request (the body, then the newest
/// attempt's URL and headers), then every attempt, newest first, with its response in full.
pub fn document(d: &DeliveryDetail) -> Vec<DocLine> {
    let s = &d.summary;
    let p = |t: String| vec![(Tok::Plain, t)];
    let mut out: Vec<DocLine> = Vec::new();
    let (glyph, tok) = match s.state {
        crate::model::DeliveryState::Succeeded => ("✓", Tok::Good),
        crate::model::DeliveryState::Failed => ("✗", Tok::Bad),
        crate::model::DeliveryState::RetryScheduled => ("↻", Tok::Plain),
        crate::model::DeliveryState::Cancelled => ("⊘", Tok::Dim),
        crate::model::DeliveryState::InFlight => ("↗", Tok::Plain),
        crate::model::DeliveryState::Pending => ("◷", Tok::Plain),
    };
    out.push(vec![
        (tok, format!("{glyph} {}", s.state)),
        (
            Tok::Plain,
            format!(
                "  {} {}  stage {}  attempts {}",
                s.event, s.trigger, s.stage, s.attempts
            ),
        ),
    ]);
    out.push(p(format!(
        "item {} {}",
        s.item_id.as_ref().map(|i| i.as_str()).unwrap_or("-"),
        s.item_name.as_deref().unwrap_or("")
    )));
    if let Some(n) = s.next_attempt_at {
        out.push(p(format!("next attempt {}", n.format("%H:%M:%S"))));
    }
    if let Some(r) = &s.refire_of {
        out.push(p(format!("re-fires {r}")));
    }
    if let Some(c) = s.cancel_reason {
        out.push(vec![(
            Tok::Dim,
            format!(
                "cancelled ({c}) by {}",
                d.cancelled_by.as_deref().unwrap_or("-")
            ),
        )]);
    }

    let body = request_body(d);
    let (lines, json) = body_lines(&body, "  ");
    out.push(vec![]);
    out.push(vec![(
        Tok::Head,
        format!(
            "request body · {} · {}",
            size(body.len()),
            if json { "JSON" } else { "not JSON, as sent" }
        ),
    )]);
    out.extend(lines);
    match d.attempt_log.last() {
        Some(a) => {
            out.push(vec![(Tok::Head, "request".into())]);
            out.push(p(format!("  POST {}", a.url)));
            for (k, v) in &a.request_headers {
                out.push(vec![(Tok::Dim, format!("  > {k}: {}", shown_header(k, v)))]);
            }
        }
        None => out.push(vec![(Tok::Dim, "not sent yet".into())]),
    }

    for a in d.attempt_log.iter().rev() {
        out.push(vec![]);
        out.push(vec![
            (Tok::Head, format!("attempt {} ", a.number)),
            (
                Tok::Plain,
                format!(
                    "{} {}{} {}",
                    a.started_at.format("%H:%M:%S%.3f"),
                    a.trigger,
                    if a.counted { "" } else { " (not counted)" },
                    a.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default()
                ),
            ),
        ]);
        let result = match (a.status, a.error_kind) {
            (Some(st), _) if (200..300).contains(&st) => (Tok::Good, format!("✓ {st}")),
            (Some(st), _) => (Tok::Bad, format!("✗ {st}")),
            (None, Some(k)) => (Tok::Bad, format!("✗ {k}")),
            _ => (Tok::Plain, "-".into()),
        };
        out.push(vec![
            (Tok::Plain, "  ".into()),
            result,
            (
                Tok::Plain,
                format!("  {}", a.error_message.as_deref().unwrap_or("")),
            ),
        ]);
        for (k, v) in &a.response_headers {
            out.push(vec![(Tok::Dim, format!("  < {k}: {}", shown_header(k, v)))]);
        }
        match a.response_body.as_deref().filter(|b| !b.is_empty()) {
            Some(b) => {
                let (lines, json) = body_lines(b, "  ");
                out.push(vec![(
                    Tok::Head,
                    format!(
                        "  response body · {}{} · {}",
                        size(b.len()),
                        if b.len() >= 64 * 1024 {
                            " (the first 64 KiB are kept)"
                        } else {
                            ""
                        },
                        if json {
                            "JSON"
                        } else {
                            "not JSON, as received"
                        }
                    ),
                )]);
                out.extend(lines);
            }
            None if a.status.is_some() => {
                out.push(vec![(Tok::Dim, "  (empty response body)".into())])
            }
            None => {}
        }
    }
    // Sanitised once here, not on every frame.
    for line in &mut out {
        for (_, t) in line.iter_mut() {
            if t.chars().any(|c| c.is_control() || !c.is_ascii()) {
                *t = crate::sanitize::strip_controls(t);
            }
        }
    }
    out
}

/// The document as plain text (for `$PAGER`; [`document`] has stripped its controls).
pub fn plain(doc: &[DocLine]) -> String {
    let mut out = String::new();
    for l in doc {
        let text: String = l.iter().map(|(_, t)| t.as_str()).collect();
        out.push_str(&text);
        out.push('\n');
    }
    out
}

/// `s` quoted for a POSIX shell: in single quotes, each `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A `curl` command that repeats a delivery's request: the stage's URL and headers as the
/// dispatcher sends them (read at send time, so re-applied settings show), the same
/// `webhook-id`, a fresh `webhook-timestamp` and its signature, and the frozen body.
/// Unless `reveal`, every secret is masked (so the signature is too: it would let whoever
/// holds the text send this request for the receiver's tolerance window).
pub fn curl(
    cfg: &WebhookConfig,
    secrets: &[String],
    id: &DeliveryId,
    body: &[u8],
    timestamp: i64,
    reveal: bool,
) -> String {
    let redactor = Redactor::new(secrets);
    let mut headers: Vec<(String, String)> = vec![
        ("content-type".into(), "application/json".into()),
        (
            "user-agent".into(),
            concat!("hookops/", env!("CARGO_PKG_VERSION")).into(),
        ),
        ("webhook-id".into(), id.to_string()),
        ("webhook-timestamp".into(), timestamp.to_string()),
    ];
    if let Ok(Some(sig)) =
        crate::dispatch::sign::signature_header(&cfg.secrets, id.as_str(), timestamp, body)
    {
        let shown = if reveal {
            sig
        } else {
            format!("v1,{}", redact::MASK)
        };
        headers.push(("webhook-signature".into(), shown));
    }
    let mut fixed: Vec<(String, String)> = cfg
        .authorization
        .iter()
        .map(|a| ("authorization".to_string(), a.clone()))
        .chain(cfg.headers.iter().cloned())
        .collect();
    if !reveal {
        fixed = redactor.headers(&fixed);
    }
    headers.extend(fixed);
    let url = if reveal {
        cfg.url.clone()
    } else {
        redactor.redact(&cfg.url)
    };
    let mut out = String::new();
    if !reveal {
        out.push_str("# secrets masked (****): fill them in, or copy with U for the real values\n");
    }
    out.push_str(&format!("curl -sS -X POST {}", shell_quote(&url)));
    for (k, v) in headers {
        out.push_str(&format!(" \\\n  -H {}", shell_quote(&format!("{k}: {v}"))));
    }
    out.push_str(&format!(
        " \\\n  --data-binary {}\n",
        shell_quote(&String::from_utf8_lossy(body))
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(lines: &[DocLine]) -> String {
        lines
            .iter()
            .map(|l| l.iter().map(|(_, t)| t.as_str()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn json_is_reindented_in_its_own_order() {
        let lines = pretty_json(
            r#"{"z":1,"a":[1,2.50,{}],"s":"x\"y","n":null,"e":[],"big":12345678901234567890}"#,
            "",
        )
        .unwrap();
        assert_eq!(
            text_of(&lines),
            "{\n  \"z\": 1,\n  \"a\": [\n    1,\n    2.50,\n    {}\n  ],\n  \"s\": \"x\\\"y\",\n  \"n\": null,\n  \"e\": [],\n  \"big\": 12345678901234567890\n}"
        );
        let kinds: Vec<Tok> = lines[1].iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            vec![Tok::Plain, Tok::Key, Tok::Punct, Tok::Num, Tok::Punct]
        );
        assert!(
            lines
                .iter()
                .flatten()
                .any(|(k, t)| *k == Tok::Lit && t == "null")
        );
        assert!(
            lines
                .iter()
                .flatten()
                .any(|(k, t)| *k == Tok::Str && t == "\"x\\\"y\"")
        );
        // A scalar, and text around a value.
        assert_eq!(text_of(&pretty_json(" 42 ", "").unwrap()), "42");
        assert!(pretty_json("{\"a\":1} trailing", "").is_none());
    }

    #[test]
    fn a_body_that_is_not_json_is_shown_as_received() {
        let (lines, json) = body_lines("<html>\n<b>oops</b>\r\n{\"half\":", "  ");
        assert!(!json);
        assert_eq!(text_of(&lines), "  <html>\n  <b>oops</b>\n  {\"half\":");
        let (lines, json) = body_lines("", "");
        assert!(!json);
        assert_eq!(lines.len(), 1);
    }

    #[test]
    fn a_64_kib_body_is_every_line() {
        let items: Vec<String> = (0..4000).map(|i| format!("{{\"n\":{i}}}")).collect();
        let body = format!("[{}]", items.join(","));
        assert!(body.len() > 40_000);
        let lines = pretty_json(&body, "").unwrap();
        // `[`, three lines per element, `]`.
        assert_eq!(lines.len(), 2 + 3 * 4000);
        assert_eq!(
            text_of(&lines[lines.len() - 3..]),
            "    \"n\": 3999\n  }\n]"
        );
    }

    #[test]
    fn secrets_in_headers_are_masked() {
        assert_eq!(shown_header("Authorization", "Bearer abc"), "Bearer ****");
        assert_eq!(
            shown_header("x-signing", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "whsec_****LaSw"
        );
        assert_eq!(shown_header("X-Client-Secret", "hunter2"), "****");
        assert_eq!(shown_header("authorization", "****"), "****");
        assert_eq!(shown_header("content-type", "text/plain"), "text/plain");
    }

    #[test]
    fn curl_masks_unless_asked_and_quotes_for_the_shell() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string();
        let file = format!(
            r#"id = "w"
name = "W"
team = "t"
[[stage]]
id = "in"
kind = "dataset"
next = "hook"
[[stage]]
id = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/hook?token=${{TOKEN}}"
authorization = "Bearer ${{KEY}}"
secret = "{secret}"
headers = {{ x-team = "qa" }}
on_success = "done"
[[stage]]
id = "done"
kind = "complete"
"#
        );
        let env = |k: &str| match k {
            "TOKEN" => Some("tok-0123456789abcdef".to_string()),
            "KEY" => Some("sk-live-0123456789abcdef".to_string()),
            _ => None,
        };
        let wf = crate::workflow::parse("w.toml", &file, &env).unwrap();
        let cfg = wf
            .delivery_config(&crate::model::StageId::new("hook"))
            .unwrap()
            .clone();
        let secrets = wf.secrets.clone();
        let id = DeliveryId("msg_1".into());
        let body = br#"{"it's":"x"}"#;
        let masked = curl(&cfg, &secrets, &id, body, 1_700_000_000, false);
        assert!(!masked.contains("sk-live-0123456789abcdef"), "{masked}");
        assert!(!masked.contains("tok-0123456789abcdef"), "{masked}");
        assert!(masked.contains("'webhook-signature: v1,****'"), "{masked}");
        assert!(
            masked.contains("--data-binary '{\"it'\\''s\":\"x\"}'"),
            "{masked}"
        );
        assert!(masked.starts_with("# secrets masked"));
        let real = curl(&cfg, &secrets, &id, body, 1_700_000_000, true);
        assert!(real.contains("'authorization: Bearer sk-live-0123456789abcdef'"));
        assert!(real.contains("token=tok-0123456789abcdef"));
        let sig = crate::dispatch::sign::sign(&secret, "msg_1", 1_700_000_000, body).unwrap();
        assert!(
            real.contains(&format!("'webhook-signature: {sig}'")),
            "{real}"
        );
        assert!(real.contains("'webhook-id: msg_1'"));
        assert!(real.contains("'x-team: qa'"));
    }
}
