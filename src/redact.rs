//! Secrets are never shown in full (design §1, §6 "Secrets").
//!
//! A secret is every `${…}` expansion, every `authorization` value and every signing `secret`
//! of a workflow ([`crate::workflow::Workflow::secrets`]). Wherever one would be stored in an
//! attempt row or shown (URLs, headers, messages), it is replaced by its [`mask`]: `****` plus
//! the last 4 characters for values of 16 characters or more, `****` alone for shorter ones.
//! A recognised non-secret prefix is kept so the operator can tell what the value is:
//! `Bearer ****abcd`, `whsec_****3f9a`.
//!
//! Pure string functions; the [`Redactor`] is built once per workflow (or per attempt) from
//! its secret list and is cheap to apply.

/// What replaces the hidden part of a secret.
pub const MASK: &str = "****";

/// Values at least this long keep their last 4 characters visible.
pub const SHOW_TAIL_FROM: usize = 16;

/// Derived forms of a secret (the token after `Bearer `, percent-encodings) shorter than this
/// are not searched for on their own: they would mask ordinary text. The secret itself is
/// always searched for.
const MIN_DERIVED_LEN: usize = 8;

/// Authorization schemes whose name is kept in front of the mask (compared case-insensitively).
const AUTH_SCHEMES: &[&str] = &[
    "basic",
    "bearer",
    "digest",
    "hoba",
    "mutual",
    "negotiate",
    "ntlm",
    "oauth",
    "scram-sha-1",
    "scram-sha-256",
    "vapid",
    "token",
    "apikey",
    "api-key",
    "key",
    "aws4-hmac-sha256",
    "splunk",
];

/// Headers whose whole value is masked whatever it holds.
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
];

/// `****` plus the last 4 characters when `value` has at least [`SHOW_TAIL_FROM`] characters,
/// else `****`.
fn mask_plain(value: &str) -> String {
    let n = value.chars().count();
    if n >= SHOW_TAIL_FROM {
        let tail: String = value.chars().skip(n - 4).collect();
        format!("{MASK}{tail}")
    } else {
        MASK.to_string()
    }
}

/// Splits `Bearer xyz` into (`Bearer`, `xyz`) when the first word is a known scheme.
fn split_scheme(value: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = value.split_once(' ')?;
    let token = rest.trim_start();
    (!token.is_empty() && AUTH_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)))
        .then_some((scheme, token))
}

/// The masked form of a secret value.
///
/// - `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw` → `whsec_****LaSw`
/// - `Bearer abc` → `Bearer ****`; `Bearer <token of 16 or more>` → `Bearer ****` + last 4
/// - any other value of 16 characters or more → `****` + last 4; shorter → `****`
pub fn mask(value: &str) -> String {
    if let Some(key) = value.strip_prefix(crate::dispatch::sign::SECRET_PREFIX) {
        return format!(
            "{}{}",
            crate::dispatch::sign::SECRET_PREFIX,
            mask_plain(key)
        );
    }
    if let Some((scheme, token)) = split_scheme(value) {
        return format!("{scheme} {}", mask_plain(token));
    }
    mask_plain(value)
}

/// Whether `name` is a header whose value is always masked in full.
pub fn is_sensitive_header(name: &str) -> bool {
    SENSITIVE_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name.trim()))
}

/// Percent-encodes every byte outside RFC 3986's unreserved set.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes what the WHATWG URL parser encodes in a query (controls, space, `"`, `#`,
/// `<`, `>`, `'` and non-ASCII), which is how an expanded secret appears in a parsed URL.
fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b <= 0x20 || b >= 0x7f || matches!(b, b'"' | b'#' | b'<' | b'>' | b'\'') {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Replaces every occurrence of a set of secrets in text by its mask.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// (needle, its mask), longest needle first.
    needles: Vec<(String, String)>,
}

impl Redactor {
    /// A redactor for these secret values. Empty values are ignored. Besides each value it also
    /// finds the token of an `authorization` value on its own, the key of a `whsec_` secret on
    /// its own, and the forms each takes in a parsed URL: percent-encoded, and lowercased (a
    /// host name).
    pub fn new(secrets: &[String]) -> Self {
        let mut needles: Vec<(String, String)> = Vec::new();
        let mut add = |needle: String, masked: String, derived: bool| {
            if needle.is_empty()
                || (derived && needle.chars().count() < MIN_DERIVED_LEN)
                || needles.iter().any(|(n, _)| *n == needle)
            {
                return;
            }
            needles.push((needle, masked));
        };
        for secret in secrets {
            if secret.is_empty() {
                continue;
            }
            let masked = mask(secret);
            add(secret.clone(), masked.clone(), false);
            let part = secret
                .strip_prefix(crate::dispatch::sign::SECRET_PREFIX)
                .or_else(|| split_scheme(secret).map(|(_, t)| t));
            if let Some(part) = part {
                add(part.to_string(), mask_plain(part), true);
            }
            // A URL parser lowercases the host, so a secret expanded into a host name appears
            // lowercased in every URL and connect error that comes out of it.
            for form in [
                encode_component(secret),
                encode_query(secret),
                secret.to_lowercase(),
            ] {
                if form != *secret {
                    add(form, masked.clone(), true);
                }
            }
        }
        needles.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self { needles }
    }

    /// Whether there is nothing to hide.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every occurrence of every secret replaced by its mask. Overlapping
    /// occurrences (of one secret or of several) are merged into one span masked as `****`, so
    /// no part of any secret survives; a span that is exactly one secret (secrets inside it
    /// included) gets that secret's mask.
    pub fn redact(&self, text: &str) -> String {
        if self.needles.is_empty() || text.is_empty() {
            return text.to_string();
        }
        // (start, end, needle index); needles are longest first, so at equal starts the
        // longest match sorts first.
        let mut hits: Vec<(usize, usize, usize)> = Vec::new();
        for (i, (needle, _)) in self.needles.iter().enumerate() {
            let mut from = 0;
            while let Some(pos) = text[from..].find(needle.as_str()) {
                let start = from + pos;
                hits.push((start, start + needle.len(), i));
                // Step one character, not the whole needle: occurrences may overlap.
                let step = text[start..].chars().next().map_or(1, char::len_utf8);
                from = start + step;
            }
        }
        if hits.is_empty() {
            return text.to_string();
        }
        hits.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));

        let mut out = String::with_capacity(text.len());
        let mut cursor = 0;
        let mut idx = 0;
        while idx < hits.len() {
            let (start, mut end, first) = hits[idx];
            let first_end = end;
            idx += 1;
            while idx < hits.len() && hits[idx].0 < end {
                end = end.max(hits[idx].1);
                idx += 1;
            }
            out.push_str(&text[cursor..start]);
            if end == first_end {
                out.push_str(&self.needles[first].1);
            } else {
                // A union of several secrets: its tail may belong to a secret too short to
                // show any of, so nothing is shown.
                out.push_str(MASK);
            }
            cursor = end;
        }
        out.push_str(&text[cursor..]);
        out
    }

    /// Headers as they may be stored or shown: the values of `authorization`,
    /// `proxy-authorization`, cookies and API-key headers are masked in full with [`mask`]
    /// whatever they hold; every other value has its secrets redacted. Signatures
    /// (`webhook-signature`) are not secret and stay readable.
    pub fn headers(&self, headers: &[(String, String)]) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(name, value)| {
                let value = if is_sensitive_header(name) {
                    mask(value)
                } else {
                    self.redact(value)
                };
                (name.clone(), value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn masks() {
        assert_eq!(mask(""), "****");
        assert_eq!(mask("short"), "****");
        assert_eq!(mask("exactly15chars!"), "****");
        assert_eq!(mask("sixteen-chars-3f9a"), "****3f9a");
        assert_eq!(mask("0123456789abcdef"), "****cdef");
        assert_eq!(mask("Bearer xyz"), "Bearer ****");
        assert_eq!(mask("Bearer 0123456789abcdefABCD"), "Bearer ****ABCD");
        assert_eq!(mask("bearer   0123456789abcdefABCD"), "bearer ****ABCD");
        assert_eq!(mask("Basic dXNlcjpwYXNz"), "Basic ****");
        assert_eq!(
            mask("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "whsec_****LaSw"
        );
        assert_eq!(mask("whsec_c2hvcnQ="), "whsec_****");
        // A passphrase is not an authorization scheme: nothing of it is kept.
        assert_eq!(mask("correct horse battery staple"), "****aple");
        assert_eq!(mask("correct horse"), "****");
        // Multi-byte characters count as characters.
        assert_eq!(mask("ééééééééééééééééwxyz"), "****wxyz");
    }

    #[test]
    fn redacts_a_secret_expanded_into_a_url_query() {
        let token = "tok_9f8e7d6c5b4a3f9a";
        let r = Redactor::new(&s(&[token]));
        let url = format!("https://hooks.example/ingest?route=a&token={token}&x=1");
        let red = r.redact(&url);
        assert_eq!(
            red,
            "https://hooks.example/ingest?route=a&token=****3f9a&x=1"
        );
        assert!(!red.contains(token));
        // Twice in one text.
        assert_eq!(r.redact(&format!("{token}/{token}")), "****3f9a/****3f9a");
        // Percent-encoded in a parsed URL.
        let spaced = "my secret with spaces!";
        let r = Redactor::new(&s(&[spaced]));
        assert_eq!(
            r.redact("https://h.example/?k=my%20secret%20with%20spaces!"),
            "https://h.example/?k=****ces!"
        );
        assert_eq!(
            r.redact("https://h.example/?k=my%20secret%20with%20spaces%21"),
            "https://h.example/?k=****ces!"
        );
    }

    #[test]
    fn redacts_a_mixed_case_secret_in_a_host_the_url_parser_lowercased() {
        let secret = "S3cr3t-Tenant-Token-ABCdef123456".to_string();
        let r = Redactor::new(std::slice::from_ref(&secret));
        let url = reqwest::Url::parse(&format!("https://{secret}.invalid/hook")).unwrap();
        let shown = r.redact(&format!(
            "could not resolve host {}",
            url.host_str().unwrap()
        ));
        assert_eq!(shown, "could not resolve host ****3456.invalid");
        assert!(!shown.to_lowercase().contains("tenant-token"));
    }

    #[test]
    fn header_redaction() {
        let auth = "Bearer 0123456789abcdefABCD";
        let key = "apikey-0123456789-zz99";
        let r = Redactor::new(&s(&[auth, key]));
        let headers = vec![
            ("Authorization".to_string(), auth.to_string()),
            (
                "authorization".to_string(),
                "Bearer unknown-tok".to_string(),
            ),
            ("x-custom".to_string(), format!("k={key}")),
            ("x-api-key".to_string(), "plainvalue".to_string()),
            (
                "webhook-signature".to_string(),
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string(),
            ),
            ("content-type".to_string(), "application/json".to_string()),
        ];
        let out = r.headers(&headers);
        assert_eq!(out[0], ("Authorization".into(), "Bearer ****ABCD".into()));
        assert_eq!(out[1], ("authorization".into(), "Bearer ****".into()));
        assert_eq!(out[2], ("x-custom".into(), "k=****zz99".into()));
        assert_eq!(out[3], ("x-api-key".into(), "****".into()));
        assert_eq!(out[4], headers[4]);
        assert_eq!(out[5], headers[5]);
        // The bare token of an authorization value is found on its own too.
        assert_eq!(r.redact("echo: 0123456789abcdefABCD"), "echo: ****ABCD");
        assert_eq!(r.redact(&format!("got {auth}")), "got Bearer ****ABCD");
    }

    #[test]
    fn overlapping_and_nested_secrets() {
        // One secret inside another: the longest wins and gets its own mask.
        let long = "outer-0123456789-inner-token";
        let inner = "inner-token";
        let r = Redactor::new(&s(&[inner, long]));
        assert_eq!(r.redact(long), "****oken");
        assert_eq!(r.redact("x inner-token y"), "x **** y");
        // Two secrets that overlap in the text: the union is masked, nothing leaks.
        let a = "AAAA-BBBB-1111";
        let b = "1111-CCCC-DDDD";
        let r = Redactor::new(&s(&[a, b]));
        let red = r.redact("pre AAAA-BBBB-1111-CCCC-DDDD post");
        assert_eq!(red, "pre **** post");
        for part in ["AAAA", "BBBB", "1111", "CCCC"] {
            assert!(!red.contains(part), "{red}");
        }
        // Adjacent (not overlapping) occurrences keep one mask each.
        assert_eq!(r.redact(&format!("{a}{b}")), "********");
        // Overlapping occurrences of one secret.
        let r = Redactor::new(&s(&["abab"]));
        assert_eq!(r.redact("xababab"), "x****");
    }

    #[test]
    fn nothing_to_hide() {
        let r = Redactor::new(&s(&["", ""]));
        assert!(r.is_empty());
        assert_eq!(r.redact("plain text"), "plain text");
        let r = Redactor::default();
        assert_eq!(r.redact(""), "");
        // Short derived forms are not searched for alone; the secret itself always is.
        let r = Redactor::new(&s(&["Bearer ab"]));
        assert_eq!(r.redact("table abc"), "table abc");
        assert_eq!(r.redact("h: Bearer ab"), "h: Bearer ****");
        let r = Redactor::new(&s(&["9000"]));
        assert_eq!(
            r.redact("http://127.0.0.1:9000/x"),
            "http://127.0.0.1:****/x"
        );
    }
}
