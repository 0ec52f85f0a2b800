//! Loading and validating workflow files: TOML text in, a [`Workflow`] or every problem out.
//!
//! The text is parsed into the `toml` crate's spanned document tree (`DeTable`) and walked by
//! hand rather than through a serde derive, so that every check can point at the key or value it
//! is about and one bad value never hides the next. Problems are collected as byte offsets and
//! turned into 1-based `line:column` (columns count characters) only at the end, sorted by
//! position. Each message says what is wrong and what to write instead, and never quotes a value
//! that may be secret (anything after `${…}` expansion, `authorization`, `secret`).
//!
//! Invariants: no input makes this module panic or overflow the stack (the TOML parser bounds
//! nesting, and the stage graph is walked with explicit stacks); `${NAME}` expansion touches only
//! `url`, `authorization`, `secret` and header values.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::expand::{ExpandError, expand};
use super::{
    Condition, Notify, RateLimit, Rule, Split, Stage, StageSpec, WebhookConfig, Workflow,
    notify_stage_id,
};
use crate::model::{EventType, PayloadFormat, StageId, StageKind, WorkflowId, is_valid_slug};

/// One problem in a workflow file, with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Why a workflow file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read workflow file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file was read but is not a valid workflow; every problem, sorted by position.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Workflow files hold stage definitions only; anything bigger is surely the wrong file.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// The largest `burst` a stage may set.
const MAX_BURST: u32 = 1_000_000;

/// Reads, parses and validates the workflow file at `path`, expanding `${NAME}` from `env`.
pub fn load_file(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Workflow, LoadError> {
    let file = std::fs::File::open(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_reader(path, file, env)
}

/// Like [`load_file`], reading from `reader` (standard input for `workflow apply -`); `path`
/// names it in diagnostics.
pub fn load_reader(
    path: &Path,
    reader: impl Read,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Workflow, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path.display().to_string();
    let mut bytes = Vec::new();
    reader
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let at_start = |message: String| {
        LoadError::Invalid(vec![Diagnostic {
            file: file_name.clone(),
            line: 1,
            column: 1,
            message,
        }])
    };
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(at_start(format!(
            "the file is larger than {} MiB; a workflow file only defines stages, so check that \
             this is the right file",
            MAX_FILE_BYTES / (1024 * 1024)
        )));
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
            let (line, column) = Lines::new(prefix).locate(valid);
            return Err(LoadError::Invalid(vec![Diagnostic {
                file: file_name,
                line,
                column,
                message: format!(
                    "the file is not valid UTF-8 (byte 0x{:02x}); save it as UTF-8",
                    bytes.get(valid).copied().unwrap_or_default()
                ),
            }]));
        }
    };
    parse(&file_name, &text, env).map_err(LoadError::Invalid)
}

/// Parses and validates a workflow from `text`; `file_name` is only used in diagnostics.
pub fn parse(
    file_name: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Workflow, Vec<Diagnostic>> {
    let lines = Lines::new(text);
    let mut cx = Checker {
        env,
        lines: &lines,
        errors: Vec::new(),
        secrets: Vec::new(),
        whose: String::new(),
        defined: Vec::new(),
        defined_set: HashSet::new(),
    };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    let workflow = if syntax.is_empty() {
        cx.workflow(&doc)
    } else {
        // A document that does not parse would only produce misleading follow-up errors
        // ("missing key" for a key on a broken line), so report the syntax alone.
        for e in &syntax {
            let span = e.span().unwrap_or(0..0);
            cx.err(span.start, syntax_message(e.message(), text.get(span)));
        }
        None
    };
    let Checker {
        errors, secrets, ..
    } = cx;
    match workflow {
        Some(mut wf) if errors.is_empty() => {
            let mut seen = HashSet::new();
            wf.secrets = secrets
                .into_iter()
                .filter(|s| !s.is_empty() && seen.insert(s.clone()))
                .collect();
            Ok(wf)
        }
        _ => Err(finish(file_name, &lines, errors)),
    }
}

fn syntax_message(message: &str, spanned: Option<&str>) -> String {
    match spanned {
        Some("stage") if message == "duplicate key" => "duplicate key `stage`: write \
            `[[stage]]` (two brackets) for every stage; `[stage]` defines a single table"
            .to_string(),
        Some(key) if message == "duplicate key" && !key.is_empty() => format!(
            "duplicate key `{}`: a key may appear only once in a table; remove one",
            excerpt(key)
        ),
        _ => format!("invalid TOML: {message}"),
    }
}

/// Turns collected (offset, message) pairs into sorted, de-duplicated diagnostics.
fn finish(file: &str, lines: &Lines<'_>, mut errors: Vec<(usize, String)>) -> Vec<Diagnostic> {
    // Stable: errors at one place keep the order in which they were found.
    errors.sort_by_key(|(at, _)| *at);
    errors.dedup();
    errors
        .into_iter()
        .map(|(at, message)| {
            let (line, column) = lines.locate(at);
            Diagnostic {
                file: file.to_string(),
                line,
                column,
                message,
            }
        })
        .collect()
}

/// Byte offset → 1-based line and character column.
struct Lines<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> Lines<'t> {
    fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, starts }
    }

    fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let index = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.starts.get(index).copied().unwrap_or(0);
        let mut column = match self.text.get(start..offset) {
            Some(s) => s.chars().count(),
            None => offset - start,
        };
        // Editors do not show a byte-order mark, so it takes no column.
        if index == 0 && offset >= 3 && self.text.starts_with('\u{feff}') {
            column -= 1;
        }
        (index + 1, column + 1)
    }

    fn line(&self, offset: usize) -> usize {
        self.locate(offset).0
    }
}

/// A user-supplied string fit for a message: short, one line, no control characters.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX: usize = 60;
    let mut out: String = s
        .chars()
        .take(MAX)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}

type Val<'i> = Spanned<DeValue<'i>>;

/// An error has already been recorded; the caller only needs to know the value is unusable.
struct Reported;

type R<T> = Result<T, Reported>;

const TOP_KEYS: &[&str] = &["id", "name", "team", "workview_url_base", "stage", "notify"];
/// Keys of a `[[notify]]` table (issue 7).
const NOTIFY_KEYS: &[&str] = &["url", "authorization", "headers", "secret", "events"];
const STAGE_COMMON: &[&str] = &["id", "name", "kind"];
const WEBHOOK_KEYS: &[&str] = &[
    "url",
    "authorization",
    "headers",
    "secret",
    "include_annotations",
    "payload",
    "event_type",
    "max_attempts",
    "timeout",
    "retry_schedule",
    "pause_after_failures",
    "max_in_flight",
    "rate_limit",
    "burst",
    "on_success",
    "on_failure",
];
const EDGE_KEYS: &[&str] = &[
    "next",
    "on_approve",
    "on_reject",
    "on_success",
    "on_failure",
    "rules",
    "else",
    "split",
];
/// Headers hookops or the HTTP client set on every request; a stage may not override them.
const RESERVED_HEADERS: &[(&str, &str)] = &[
    (
        "authorization",
        "set it with the stage's `authorization` key instead",
    ),
    ("content-type", "bodies are always `application/json`"),
    ("content-length", "the HTTP client sets it"),
    ("transfer-encoding", "the HTTP client sets it"),
    ("connection", "the HTTP client sets it"),
    ("host", "it comes from `url`"),
    ("webhook-id", "hookops sets it on every request"),
    ("webhook-timestamp", "hookops sets it on every request"),
    ("webhook-signature", "hookops sets it from `secret`"),
    ("hookops-attempt", "hookops sets it on every request"),
];

fn kind_keys(kind: StageKind) -> &'static [&'static str] {
    match kind {
        StageKind::Dataset | StageKind::Annotate => &["next"],
        StageKind::Review => &["on_approve", "on_reject"],
        StageKind::Webhook => WEBHOOK_KEYS,
        StageKind::Logic => &["rules", "else"],
        StageKind::Sampling => &["split"],
        StageKind::Complete | StageKind::Discard => &[],
    }
}

fn kind_edges(kind: StageKind) -> &'static str {
    match kind {
        StageKind::Dataset | StageKind::Annotate => "its edge is `next`",
        StageKind::Review => "its edges are `on_approve` and `on_reject`",
        StageKind::Webhook => "its edges are `on_success` and `on_failure`",
        StageKind::Logic => "its edges are each rule's `to` and `else`",
        StageKind::Sampling => "its edges are the `to` of each `split` entry",
        StageKind::Complete | StageKind::Discard => "it is terminal and has no edges",
    }
}

/// "a webhook stage", "an annotate stage".
fn a_stage(kind: StageKind) -> String {
    let s = kind.as_str();
    let article = if s.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {s} stage")
}

/// How a key is written, for "add …" and "write …" hints.
fn example(key: &str) -> &'static str {
    match key {
        "id" => "`id = \"validate\"` (lowercase letters, digits, `-`, `_`)",
        "name" => "`name = \"Defect labelling\"`",
        "team" => "`team = \"acme\"`",
        "workview_url_base" => "`workview_url_base = \"https://darwin.v7labs.com/workview\"`",
        "kind" => {
            "`kind = \"annotate\"` (one of dataset, annotate, review, webhook, logic, sampling, \
             complete, discard)"
        }
        "url" => "`url = \"https://example.com/hook\"`",
        "authorization" => "`authorization = \"Bearer ${TOKEN}\"`",
        "headers" => "`headers = { \"x-team\" = \"acme\" }`",
        "secret" => "`secret = \"${WEBHOOK_SECRET}\"` (a `whsec_…` key, or a list of them)",
        "include_annotations" => "`include_annotations = true`",
        "payload" => "`payload = \"darwin\"` or `payload = \"envelope\"`",
        "event_type" => "`event_type = \"task_completed_event\"`",
        "max_attempts" => "`max_attempts = 6`",
        "timeout" => "`timeout = \"10s\"`",
        "retry_schedule" => "`retry_schedule = [\"1s\", \"5s\", \"30s\", \"2m\", \"10m\"]`",
        "pause_after_failures" => "`pause_after_failures = 50` (0 = never)",
        "max_in_flight" => "`max_in_flight = 8`",
        "rate_limit" => "`rate_limit = \"20/s\"` (or `\"300/min\"`, `\"1000/h\"`)",
        "burst" => "`burst = 20` (with `rate_limit`)",
        "rules" => "`rules = [{ when = { tag = \"urgent\" }, to = \"<stage id>\" }]`",
        "when" => {
            "`when = { tag = \"urgent\" }` or `when = { property = \"camera\", is_any_of = \
             [\"a\", \"b\"] }`"
        }
        "tag" => "`tag = \"urgent\"`",
        "property" => "`property = \"camera\"`",
        "is_any_of" => "`is_any_of = [\"a\", \"b\"]`",
        "split" => "`split = [{ to = \"qa\", percent = 5 }, { to = \"complete\", percent = 95 }]`",
        "percent" => "`percent = 5`",
        "stage" => "`[[stage]]` tables",
        "events" => "`events = [\"item.created\", \"delivery.failed\"]`",
        "notify" => "`[[notify]]` tables",
        "to" => "`to = \"<stage id>\"`",
        "next" | "on_approve" | "on_reject" | "on_success" | "on_failure" | "else" => {
            "`<key> = \"<stage id>\"`"
        }
        _ => "a value",
    }
}

fn example_for(key: &str) -> String {
    example(key).replace("<key>", key)
}

impl Checker<'_> {
    /// [`example_for`], with the workflow's own `id` example at the top level.
    fn example_here(&self, key: &str) -> String {
        if key == "id" && self.whose == "the workflow" {
            "`id = \"defects\"` (lowercase letters, digits, `-`, `_`)".to_string()
        } else {
            example_for(key)
        }
    }
}

fn a_type(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Edit distance counting a swap of neighbours as one edit (optimal string alignment),
/// ignoring case and treating `-` and `_` alike.
fn distance(a: &str, b: &str) -> usize {
    let norm = |s: &str| -> Vec<char> {
        s.chars()
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    };
    let (a, b) = (norm(a), norm(b));
    let width = b.len() + 1;
    // d[i * width + j]: distance between a[..i] and b[..j].
    let mut d: Vec<usize> = (0..(a.len() + 1) * width)
        .map(|k| {
            if k < width {
                k
            } else if k % width == 0 {
                k / width
            } else {
                0
            }
        })
        .collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j - 1] + cost)
                .min(d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// The candidate a typo most likely meant, if any is close enough.
fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    if word.chars().count() > 100 {
        return None;
    }
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A slug close to `s`, to suggest when `s` is not one.
fn slugify(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= 64 {
            break;
        }
    }
    out.trim_matches(['-', '_']).to_string()
}

/// Ids for a message: all of them when few, else the first ones and a count.
fn list(ids: &[String]) -> String {
    const MAX: usize = 30;
    if ids.len() <= MAX {
        ids.join(", ")
    } else {
        format!("{}, … ({} in all)", ids[..MAX].join(", "), ids.len())
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// What the first pass learns about each `[[stage]]` table.
struct Head<'t, 'i> {
    table: &'t DeTable<'i>,
    /// Offset of the `[[stage]]` header (or of the inline table).
    at: usize,
    id: Option<String>,
    kind: Option<StageKind>,
}

struct Checker<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    lines: &'a Lines<'a>,
    errors: Vec<(usize, String)>,
    secrets: Vec<String>,
    /// Who owns the keys being checked, for messages: "the workflow", "stage `x`".
    whose: String,
    /// Stage ids in file order, without duplicates.
    defined: Vec<String>,
    /// The same ids, for lookups.
    defined_set: HashSet<String>,
}

impl Checker<'_> {
    fn err(&mut self, at: usize, message: impl Into<String>) {
        self.errors.push((at, message.into()));
    }

    fn missing(&mut self, at: usize, key: &str) -> Reported {
        let message = format!(
            "{} has no `{key}`: add {}",
            self.whose,
            self.example_here(key)
        );
        self.err(at, message);
        Reported
    }

    fn wrong_type(&mut self, key: &str, v: &Val<'_>, want: &str) -> Reported {
        let message = format!(
            "`{key}` must be {want}, not {}; write e.g. {}",
            a_type(v.get_ref()),
            self.example_here(key)
        );
        self.err(v.span().start, message);
        Reported
    }

    /// Reports keys of `t` that are not in `allowed`, suggesting near misses.
    fn check_keys(&mut self, t: &DeTable<'_>, allowed: &[&str], listing: &str) {
        for (k, _) in t.iter() {
            let key = k.get_ref().as_ref();
            if allowed.contains(&key) {
                continue;
            }
            let message = match closest(key, allowed.iter().copied()) {
                Some(near) => format!("unknown key `{}`; did you mean `{near}`?", excerpt(key)),
                None => format!(
                    "unknown key `{}`; {listing} are: {}",
                    excerpt(key),
                    allowed.join(", ")
                ),
            };
            self.err(k.span().start, message);
        }
    }

    fn opt<'t, 'i, T>(
        &mut self,
        t: &'t DeTable<'i>,
        key: &str,
        conv: impl FnOnce(&mut Self, &str, &'t Val<'i>) -> R<T>,
    ) -> R<Option<T>> {
        match t.get(key) {
            None => Ok(None),
            Some(v) => conv(self, key, v).map(Some),
        }
    }

    fn req<'t, 'i, T>(
        &mut self,
        t: &'t DeTable<'i>,
        at: usize,
        key: &str,
        conv: impl FnOnce(&mut Self, &str, &'t Val<'i>) -> R<T>,
    ) -> R<T> {
        match t.get(key) {
            None => Err(self.missing(at, key)),
            Some(v) => conv(self, key, v),
        }
    }

    fn string<'t>(&mut self, key: &str, v: &'t Val<'_>) -> R<&'t str> {
        match v.get_ref() {
            DeValue::String(s) => Ok(s.as_ref()),
            _ => Err(self.wrong_type(key, v, "a string")),
        }
    }

    fn nonempty(&mut self, key: &str, v: &Val<'_>) -> R<String> {
        let s = self.string(key, v)?;
        if s.trim().is_empty() {
            self.err(
                v.span().start,
                format!("`{key}` is empty; write e.g. {}", example_for(key)),
            );
            return Err(Reported);
        }
        Ok(s.to_string())
    }

    fn boolean(&mut self, key: &str, v: &Val<'_>) -> R<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.wrong_type(key, v, "`true` or `false`")),
        }
    }

    fn int_in(&mut self, key: &str, v: &Val<'_>, min: i64, max: i64) -> R<i64> {
        let DeValue::Integer(i) = v.get_ref() else {
            return Err(self.wrong_type(key, v, "an integer"));
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => {
                let range = if max == i64::from(u32::MAX) {
                    format!("at least {min}")
                } else {
                    format!("from {min} to {max}")
                };
                self.err(
                    v.span().start,
                    format!("`{key}` must be {range}, not {}", excerpt(&i.to_string())),
                );
                Err(Reported)
            }
        }
    }

    fn u32_in(&mut self, key: &str, v: &Val<'_>, min: u32, max: u32) -> R<u32> {
        let n = self.int_in(key, v, i64::from(min), i64::from(max))?;
        u32::try_from(n).map_err(|_| Reported)
    }

    fn duration(&mut self, key: &str, v: &Val<'_>, min: Duration, max: Duration) -> R<Duration> {
        let DeValue::String(s) = v.get_ref() else {
            return Err(self.wrong_type(key, v, "a duration string such as \"10s\""));
        };
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d >= min && d <= max => Ok(d),
            Ok(d) => {
                self.err(
                    v.span().start,
                    format!(
                        "`{key}` must be between {} and {}, not {}",
                        human(min),
                        human(max),
                        human(d)
                    ),
                );
                Err(Reported)
            }
            Err(e) => {
                self.err(
                    v.span().start,
                    format!(
                        "`{key}`: \"{}\" is not a duration ({e}); write e.g. \"250ms\", \"10s\" \
                         or \"2m\"",
                        excerpt(s)
                    ),
                );
                Err(Reported)
            }
        }
    }

    /// A string value with `${NAME}` expanded; every substitution is recorded as a secret.
    fn expanded(&mut self, key: &str, v: &Val<'_>) -> R<String> {
        let raw = self.string(key, v)?;
        match expand(raw, self.env) {
            Ok(e) => {
                self.secrets.extend(e.substituted);
                Ok(e.text)
            }
            Err(errors) => {
                for e in errors {
                    let message = match e {
                        ExpandError::Unset(name) => format!(
                            "environment variable `{name}` (used in `{key}`) is not set: set \
                             it before running `workflow apply`, or give a default with \
                             `${{{name}:-value}}`"
                        ),
                        ExpandError::Syntax(m) => format!("in `{key}`: {m}"),
                    };
                    self.err(v.span().start, message);
                }
                Err(Reported)
            }
        }
    }

    fn http_url(&mut self, key: &str, v: &Val<'_>, s: &str, expanded: bool) -> R<()> {
        let how = if expanded {
            " (after expanding `${…}`)"
        } else {
            ""
        };
        let problem = match Url::parse(s.trim()) {
            Err(e) => format!("is not a valid URL{how} ({e})"),
            Ok(u) if !matches!(u.scheme(), "http" | "https") => format!(
                "must be an http or https URL{how}, not `{}:`",
                excerpt(u.scheme())
            ),
            Ok(u) if u.host_str().is_none_or(str::is_empty) => {
                format!("has no host{how}")
            }
            Ok(u) => {
                if let Some(p) = u.password() {
                    self.secrets.push(p.to_string());
                }
                return Ok(());
            }
        };
        self.err(
            v.span().start,
            format!("`{key}` {problem}; write e.g. {}", example_for(key)),
        );
        Err(Reported)
    }

    fn slug(&mut self, key: &str, v: &Val<'_>, what: &str) -> R<String> {
        let s = self.string(key, v)?;
        if is_valid_slug(s) {
            return Ok(s.to_string());
        }
        let suggestion = slugify(s);
        let hint = if suggestion.is_empty() {
            String::new()
        } else {
            format!(", e.g. `{suggestion}`")
        };
        self.err(
            v.span().start,
            format!(
                "`{}` is not a valid {what}: use lowercase letters, digits, `-` and `_`, \
                 starting with a letter or digit, at most 64 characters{hint}",
                excerpt(s)
            ),
        );
        Err(Reported)
    }

    /// An edge: a string naming a stage defined in this file.
    fn edge(&mut self, key: &str, v: &Val<'_>) -> R<StageId> {
        let s = self.string(key, v)?;
        if self.defined_set.contains(s) {
            return Ok(StageId::new(s));
        }
        let near = closest(s, self.defined.iter().map(String::as_str))
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        let message = if self.defined.is_empty() {
            format!(
                "stage `{}` is not defined; no stages are defined",
                excerpt(s)
            )
        } else {
            format!(
                "stage `{}` is not defined{near}; defined stages are: {}",
                excerpt(s),
                list(&self.defined)
            )
        };
        self.err(v.span().start, message);
        Err(Reported)
    }

    // ---- the document -----------------------------------------------------------------------

    fn workflow(&mut self, doc: &Spanned<DeTable<'_>>) -> Option<Workflow> {
        let top = doc.get_ref();
        self.whose = "the workflow".to_string();
        for (k, _) in top.iter() {
            let key = k.get_ref().as_ref();
            if TOP_KEYS.contains(&key) {
                continue;
            }
            let stage_key = StageKind::ALL
                .iter()
                .any(|kind| kind_keys(*kind).contains(&key))
                || key == "kind";
            let message = if stage_key {
                format!(
                    "unknown key `{key}` at the top level; stage settings go inside a \
                     `[[stage]]` table"
                )
            } else if let Some(near) = closest(key, TOP_KEYS.iter().copied()) {
                format!("unknown key `{}`; did you mean `{near}`?", excerpt(key))
            } else {
                format!(
                    "unknown key `{}`; the top-level keys are: {}",
                    excerpt(key),
                    TOP_KEYS.join(", ")
                )
            };
            self.err(k.span().start, message);
        }

        let id = self.req(top, 0, "id", |cx, k, v| cx.slug(k, v, "workflow id"));
        let name = self.req(top, 0, "name", Self::nonempty);
        let team = self.req(top, 0, "team", Self::nonempty);
        let workview_url_base = self.opt(top, "workview_url_base", |cx, k, v| {
            let s = cx.string(k, v)?;
            cx.http_url(k, v, s, false)?;
            Ok(s.trim().trim_end_matches('/').to_string())
        });

        let heads = self.stage_heads(top);
        let stages = self.stages(&heads);
        if let Ok(heads) = &heads {
            self.check_loops(heads, &stages);
        }

        let notify = self.notifies(top);
        let stages = stages.into_iter().collect::<Option<Vec<_>>>();
        Some(Workflow {
            id: WorkflowId::new(id.ok()?),
            name: name.ok()?,
            team: team.ok()?,
            workview_url_base: workview_url_base.ok()?,
            stages: stages?,
            notify: notify.ok()?,
            secrets: Vec::new(),
        })
    }

    /// `[[notify]]` tables: `url`, `events`, optional `authorization`, `secret`, `headers`,
    /// checked like a webhook stage's; sent with the engine's default retries and timeouts.
    fn notifies(&mut self, top: &DeTable<'_>) -> R<Vec<Notify>> {
        let Some(v) = top.get("notify") else {
            return Ok(Vec::new());
        };
        let tables: Vec<_> = match v.get_ref() {
            DeValue::Array(a) => a.iter().collect(),
            _ => return Err(self.wrong_type("notify", v, "an array of `[[notify]]` tables")),
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (n, v) in tables.into_iter().enumerate() {
            let DeValue::Table(t) = v.get_ref() else {
                self.wrong_type("notify", v, "an array of `[[notify]]` tables");
                ok = false;
                continue;
            };
            let at = v.span().start;
            self.whose = format!("notify entry {} (line {})", n + 1, self.lines.line(at));
            self.check_keys(t, NOTIFY_KEYS, "the keys of a `[[notify]]` table");
            let url = self.req(t, at, "url", |cx, k, v| {
                let s = cx.expanded(k, v)?;
                let raw = cx.string(k, v)?;
                cx.http_url(k, v, &s, s != raw)?;
                Ok(s.trim().to_string())
            });
            let authorization = self.opt(t, "authorization", |cx, k, v| {
                let s = cx.expanded(k, v)?;
                cx.secrets.push(s.clone());
                if s.is_empty() || HeaderValue::from_str(&s).is_err() {
                    cx.err(
                        v.span().start,
                        "`authorization` must be a non-empty HTTP header value (after \
                         expansion), e.g. `authorization = \"Bearer ${TOKEN}\"`",
                    );
                    return Err(Reported);
                }
                Ok(s)
            });
            let headers = self.opt(t, "headers", Self::headers);
            let secrets = self.opt(t, "secret", Self::signing_keys);
            let events = self.req(t, at, "events", Self::notify_events);
            let (Ok(url), Ok(authorization), Ok(headers), Ok(secrets), Ok(events)) =
                (url, authorization, headers, secrets, events)
            else {
                ok = false;
                continue;
            };
            let own = notify_stage_id(n);
            out.push(Notify {
                events,
                delivery: WebhookConfig {
                    url,
                    authorization,
                    headers: headers.unwrap_or_default(),
                    secrets: secrets.unwrap_or_default(),
                    include_annotations: false,
                    payload: PayloadFormat::Darwin,
                    event_type: String::new(),
                    max_attempts: WebhookConfig::DEFAULT_MAX_ATTEMPTS,
                    timeout: WebhookConfig::DEFAULT_TIMEOUT,
                    retry_schedule: WebhookConfig::default_retry_schedule(),
                    pause_after_failures: 0,
                    max_in_flight: None,
                    rate_limit: None,
                    on_success: own,
                    on_failure: None,
                },
            });
        }
        self.whose = "the workflow".to_string();
        if ok { Ok(out) } else { Err(Reported) }
    }

    fn notify_events(&mut self, key: &str, v: &Val<'_>) -> R<Vec<EventType>> {
        let DeValue::Array(a) = v.get_ref() else {
            return Err(self.wrong_type(key, v, "a list of event names"));
        };
        let allowed: Vec<&str> = EventType::ALL
            .iter()
            .filter(|e| e.is_notification())
            .map(|e| e.as_str())
            .collect();
        if a.is_empty() {
            self.err(
                v.span().start,
                format!(
                    "`events` is empty: list one or more of {}",
                    allowed.join(", ")
                ),
            );
            return Err(Reported);
        }
        let mut out = Vec::new();
        let mut ok = true;
        for e in a.iter() {
            let s = self.string(key, e)?;
            match s.parse::<EventType>() {
                Ok(ev) if ev.is_notification() => {
                    if !out.contains(&ev) {
                        out.push(ev);
                    }
                }
                _ => {
                    let near = closest(s, allowed.iter().copied())
                        .map(|n| format!(" (did you mean `{n}`?)"))
                        .unwrap_or_default();
                    self.err(
                        e.span().start,
                        format!(
                            "unknown event `{}`{near}; the events are: {}",
                            excerpt(s),
                            allowed.join(", ")
                        ),
                    );
                    ok = false;
                }
            }
        }
        if ok { Ok(out) } else { Err(Reported) }
    }

    /// First pass: every stage's table, id and kind, so edges can be checked in the second.
    fn stage_heads<'t, 'i>(&mut self, top: &'t DeTable<'i>) -> R<Vec<Head<'t, 'i>>> {
        let Some(v) = top.get("stage") else {
            self.err(
                0,
                "the workflow has no stages: add `[[stage]]` tables, starting with one of \
                 `kind = \"dataset\"`",
            );
            return Err(Reported);
        };
        let tables: Vec<_> = match v.get_ref() {
            DeValue::Array(a) => a.iter().collect(),
            DeValue::Table(_) => {
                self.err(
                    v.span().start,
                    "`[stage]` defines a single table; write `[[stage]]` (two brackets) for \
                     each stage",
                );
                return Err(Reported);
            }
            _ => return Err(self.wrong_type("stage", v, "an array of tables")),
        };
        let mut heads = Vec::new();
        let mut first_at: HashMap<String, usize> = HashMap::new();
        let mut ok = true;
        for (n, v) in tables.into_iter().enumerate() {
            let DeValue::Table(table) = v.get_ref() else {
                self.wrong_type("stage", v, "an array of tables");
                ok = false;
                continue;
            };
            let at = v.span().start;
            self.whose = format!("stage {} (line {})", n + 1, self.lines.line(at));
            let id = self
                .req(table, at, "id", |cx, k, v| {
                    let s = cx.string(k, v)?;
                    // An id that is not a slug is still "defined", so edges that name it do
                    // not add a second, misleading error.
                    if let Some(first) = first_at.get(s) {
                        let line = cx.lines.line(*first);
                        cx.err(
                            v.span().start,
                            format!(
                                "duplicate stage id `{}`: line {line} already defines it; give \
                                 each stage its own id",
                                excerpt(s)
                            ),
                        );
                        return Err(Reported);
                    }
                    first_at.insert(s.to_string(), at);
                    cx.defined.push(s.to_string());
                    cx.defined_set.insert(s.to_string());
                    cx.slug(k, v, "stage id")
                })
                .ok();
            if let Some(id) = &id {
                self.whose = format!("stage `{id}`");
            }
            let kind = self
                .req(table, at, "kind", |cx, k, v| {
                    let s = cx.string(k, v)?;
                    s.parse::<StageKind>().map_err(|_| {
                        let kinds = StageKind::ALL.iter().map(|k| k.as_str());
                        let near = closest(s, kinds.clone())
                            .map(|n| format!(" (did you mean `{n}`?)"))
                            .unwrap_or_default();
                        cx.err(
                            v.span().start,
                            format!(
                                "unknown stage kind `{}`{near}; kinds are: {}",
                                excerpt(s),
                                kinds.collect::<Vec<_>>().join(", ")
                            ),
                        );
                        Reported
                    })
                })
                .ok();
            heads.push(Head {
                table,
                at,
                id,
                kind,
            });
        }
        if heads.is_empty() && ok {
            self.err(
                v.span().start,
                "the workflow has no stages: add `[[stage]]` tables, starting with one of \
                 `kind = \"dataset\"`",
            );
        }

        let datasets: Vec<&Head<'_, '_>> = heads
            .iter()
            .filter(|h| h.kind == Some(StageKind::Dataset))
            .collect();
        let all_kinds_known = heads.iter().all(|h| h.kind.is_some());
        match datasets.as_slice() {
            [] if all_kinds_known && !heads.is_empty() => {
                let at = heads.first().map_or(0, |h| h.at);
                self.err(
                    at,
                    "the workflow has no dataset stage: add a `[[stage]]` with `kind = \
                     \"dataset\"` and `next = \"<first stage>\"`; imported items land there",
                );
            }
            [first, rest @ ..] => {
                let line = self.lines.line(first.at);
                for h in rest {
                    let at = h
                        .table
                        .get("kind")
                        .map_or(h.at, |v: &Val<'_>| v.span().start);
                    self.err(
                        at,
                        format!(
                            "a second dataset stage: the stage at line {line} is already the \
                             dataset stage and a workflow has exactly one; change this stage's \
                             `kind`"
                        ),
                    );
                }
            }
            [] => {}
        }
        Ok(heads)
    }

    /// Second pass: each stage's keys, settings and edges. `None` for a stage with errors.
    fn stages(&mut self, heads: &R<Vec<Head<'_, '_>>>) -> Vec<Option<Stage>> {
        let Ok(heads) = heads else {
            return vec![None];
        };
        heads.iter().map(|h| self.stage(h)).collect()
    }

    fn stage(&mut self, h: &Head<'_, '_>) -> Option<Stage> {
        self.whose = match &h.id {
            Some(id) => format!("stage `{id}`"),
            None => format!("the stage at line {}", self.lines.line(h.at)),
        };
        let t = h.table;
        let Some(kind) = h.kind else {
            // Without a kind only the keys no kind knows can be reported.
            let all: Vec<&str> = STAGE_COMMON
                .iter()
                .copied()
                .chain(
                    StageKind::ALL
                        .iter()
                        .flat_map(|k| kind_keys(*k).iter().copied()),
                )
                .collect();
            self.check_keys(t, &all, "stage keys");
            return None;
        };
        self.check_stage_keys(t, kind, h.id.as_deref().unwrap_or("?"));
        let name = self.opt(t, "name", Self::nonempty);
        let at = h.at;
        let edge = |cx: &mut Self, key: &str| cx.req(t, at, key, Self::edge);
        let spec = match kind {
            StageKind::Dataset => edge(self, "next").map(|next| StageSpec::Dataset { next }),
            StageKind::Annotate => edge(self, "next").map(|next| StageSpec::Annotate { next }),
            StageKind::Review => {
                let on_approve = edge(self, "on_approve");
                let on_reject = edge(self, "on_reject");
                on_approve.and_then(|on_approve| {
                    on_reject.map(|on_reject| StageSpec::Review {
                        on_approve,
                        on_reject,
                    })
                })
            }
            StageKind::Webhook => self.webhook(t, at).map(StageSpec::Webhook),
            StageKind::Logic => {
                let rules = self.req(t, at, "rules", Self::rules);
                let else_to = edge(self, "else");
                rules.and_then(|rules| else_to.map(|else_to| StageSpec::Logic { rules, else_to }))
            }
            StageKind::Sampling => self
                .req(t, at, "split", Self::split)
                .map(|split| StageSpec::Sampling { split }),
            StageKind::Complete => Ok(StageSpec::Complete),
            StageKind::Discard => Ok(StageSpec::Discard),
        };
        let id = h.id.clone()?;
        Some(Stage {
            name: name.ok()?.unwrap_or_else(|| id.clone()),
            id: StageId::new(id),
            spec: spec.ok()?,
        })
    }

    fn check_stage_keys(&mut self, t: &DeTable<'_>, kind: StageKind, id: &str) {
        let allowed: Vec<&str> = STAGE_COMMON
            .iter()
            .chain(kind_keys(kind))
            .copied()
            .collect();
        for (k, _) in t.iter() {
            let key = k.get_ref().as_ref();
            if allowed.contains(&key) {
                continue;
            }
            let owners: Vec<StageKind> = StageKind::ALL
                .iter()
                .copied()
                .filter(|o| kind_keys(*o).contains(&key))
                .collect();
            let message = if owners.is_empty() {
                match closest(key, allowed.iter().copied()) {
                    Some(near) => {
                        format!("unknown key `{}`; did you mean `{near}`?", excerpt(key))
                    }
                    None => format!(
                        "unknown key `{}`; the keys of {} are: {}",
                        excerpt(key),
                        a_stage(kind),
                        allowed.join(", ")
                    ),
                }
            } else {
                let on = match owners.as_slice() {
                    [one] => a_stage(*one),
                    many => format!(
                        "{} stages",
                        many.iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                };
                let instead = if EDGE_KEYS.contains(&key) {
                    format!(
                        "stage `{id}` is {}, and {}",
                        a_stage(kind),
                        kind_edges(kind)
                    )
                } else {
                    format!(
                        "stage `{id}` is {}: remove `{key}`, or change its `kind`",
                        a_stage(kind)
                    )
                };
                format!("`{key}` is only valid on {on}; {instead}")
            };
            self.err(k.span().start, message);
        }
    }

    fn webhook(&mut self, t: &DeTable<'_>, at: usize) -> R<WebhookConfig> {
        let url = self.req(t, at, "url", |cx, k, v| {
            let s = cx.expanded(k, v)?;
            let raw = cx.string(k, v)?;
            cx.http_url(k, v, &s, s != raw)?;
            Ok(s.trim().to_string())
        });
        let authorization = self.opt(t, "authorization", |cx, k, v| {
            let s = cx.expanded(k, v)?;
            cx.secrets.push(s.clone());
            if s.is_empty() {
                cx.err(
                    v.span().start,
                    "`authorization` is empty (after expansion): give a value such as \
                     `\"Bearer ${TOKEN}\"`, or remove the key",
                );
                return Err(Reported);
            }
            if HeaderValue::from_str(&s).is_err() {
                cx.err(
                    v.span().start,
                    "`authorization` is not a valid HTTP header value (after expansion): use \
                     visible ASCII characters and spaces only, e.g. `authorization = \"Bearer \
                     ${TOKEN}\"`",
                );
                return Err(Reported);
            }
            Ok(s)
        });
        let headers = self.opt(t, "headers", Self::headers);
        let secrets = self.opt(t, "secret", Self::signing_keys);
        let include_annotations = self.opt(t, "include_annotations", Self::boolean);
        let payload = self.opt(t, "payload", |cx, k, v| {
            let s = cx.string(k, v)?;
            s.parse::<PayloadFormat>().map_err(|_| {
                cx.err(
                    v.span().start,
                    format!(
                        "unknown payload `{}`; write `payload = \"darwin\"` (Darwin JSON 2.0, the \
                         default) or `payload = \"envelope\"` (the Encord-style envelope)",
                        excerpt(s)
                    ),
                );
                Reported
            })
        });
        let event_type = self.opt(t, "event_type", |cx, k, v| {
            let s = cx.nonempty(k, v)?;
            if s.chars().any(char::is_control) || s.len() > 200 {
                cx.err(
                    v.span().start,
                    "`event_type` must be one line of at most 200 characters, e.g. \
                     `event_type = \"task_completed_event\"`",
                );
                return Err(Reported);
            }
            Ok((s, v.span().start))
        });
        let max_attempts = self.opt(t, "max_attempts", |cx, k, v| cx.u32_in(k, v, 1, 100));
        let timeout = self.opt(t, "timeout", |cx, k, v| {
            cx.duration(
                k,
                v,
                Duration::from_millis(100),
                Duration::from_secs(5 * 60),
            )
        });
        let retry_schedule = self.opt(t, "retry_schedule", Self::retry_schedule);
        let pause_after_failures = self.opt(t, "pause_after_failures", |cx, k, v| {
            cx.u32_in(k, v, 0, u32::MAX)
        });
        let max_in_flight = self.opt(t, "max_in_flight", |cx, k, v| cx.u32_in(k, v, 1, u32::MAX));
        let rate = self.opt(t, "rate_limit", Self::rate);
        let burst = self.opt(t, "burst", |cx, k, v| {
            Ok((cx.u32_in(k, v, 1, MAX_BURST)?, v.span().start))
        });
        let on_success = self.req(t, at, "on_success", Self::edge);
        let on_failure = self.opt(t, "on_failure", Self::edge);

        let payload = payload?.unwrap_or(PayloadFormat::Darwin);
        let event_type = match event_type? {
            Some((_, at)) if payload != PayloadFormat::Envelope => {
                self.err(
                    at,
                    "`event_type` only applies to `payload = \"envelope\"`: add that, or \
                     remove `event_type` (Darwin payloads carry `hookops.event`)",
                );
                return Err(Reported);
            }
            Some((s, _)) => s,
            None => crate::model::EventType::StageWebhook.as_str().to_string(),
        };
        Ok(WebhookConfig {
            url: url?,
            authorization: authorization?,
            headers: headers?.unwrap_or_default(),
            secrets: secrets?.unwrap_or_default(),
            include_annotations: include_annotations?.unwrap_or(true),
            payload,
            event_type,
            max_attempts: max_attempts?.unwrap_or(WebhookConfig::DEFAULT_MAX_ATTEMPTS),
            timeout: timeout?.unwrap_or(WebhookConfig::DEFAULT_TIMEOUT),
            retry_schedule: retry_schedule?.unwrap_or_else(WebhookConfig::default_retry_schedule),
            pause_after_failures: pause_after_failures?
                .unwrap_or(WebhookConfig::DEFAULT_PAUSE_AFTER_FAILURES),
            max_in_flight: max_in_flight?,
            rate_limit: self.rate_limit(rate?, burst?)?,
            on_success: on_success?,
            on_failure: on_failure?,
        })
    }

    /// `rate_limit = "20/s"`: a positive whole number of requests per second, minute or hour.
    fn rate(&mut self, key: &str, v: &Val<'_>) -> R<(u32, u64)> {
        let s = self.string(key, v)?;
        let parsed = s.split_once('/').and_then(|(n, unit)| {
            let n = n.trim().parse::<u32>().ok().filter(|n| *n > 0)?;
            let period_ms = match unit.trim() {
                "s" | "sec" | "second" => 1_000,
                "m" | "min" | "minute" => 60_000,
                "h" | "hour" => 3_600_000,
                _ => return None,
            };
            Some((n, period_ms))
        });
        parsed.ok_or_else(|| {
            self.err(
                v.span().start,
                format!(
                    "`rate_limit` must be a positive whole number of requests per second, \
                     minute or hour, not `{}`; write e.g. {}",
                    excerpt(s),
                    example_for(key)
                ),
            );
            Reported
        })
    }

    /// The stage's rate limit from `rate_limit` and `burst` (which needs a rate).
    fn rate_limit(
        &mut self,
        rate: Option<(u32, u64)>,
        burst: Option<(u32, usize)>,
    ) -> R<Option<RateLimit>> {
        match (rate, burst) {
            (None, None) => Ok(None),
            (None, Some((_, at))) => {
                self.err(
                    at,
                    "`burst` only applies with a `rate_limit`: add e.g. `rate_limit = \"20/s\"`, \
                     or remove `burst`",
                );
                Err(Reported)
            }
            (Some((count, period_ms)), burst) => Ok(Some(RateLimit {
                count,
                period_ms,
                burst: burst
                    .map(|(b, _)| b)
                    .unwrap_or_else(|| RateLimit::default_burst(count, period_ms)),
            })),
        }
    }

    fn headers(&mut self, key: &str, v: &Val<'_>) -> R<Vec<(String, String)>> {
        let DeValue::Table(t) = v.get_ref() else {
            return Err(self.wrong_type(key, v, "a table of header names to values"));
        };
        // The table is ordered by key; the spans give back the file order.
        let mut entries: Vec<_> = t.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut seen: HashMap<String, &str> = HashMap::new();
        let mut out = Vec::new();
        let mut ok = true;
        for (k, val) in entries {
            let name: &str = k.get_ref().as_ref();
            let at = k.span().start;
            let lower = name.to_ascii_lowercase();
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.err(
                    at,
                    format!(
                        "`{}` is not a valid HTTP header name: use letters, digits and `-`, \
                         e.g. `\"x-team\" = \"acme\"`",
                        excerpt(name)
                    ),
                );
                ok = false;
            } else if let Some((_, why)) = RESERVED_HEADERS.iter().find(|(h, _)| *h == lower) {
                self.err(
                    at,
                    format!("header `{name}` cannot be set in `headers`: {why}; remove it"),
                );
                ok = false;
            } else if let Some(first) = seen.get(&lower) {
                self.err(
                    at,
                    format!(
                        "header `{name}` is given twice (as `{first}` too; header names ignore \
                         case); keep one"
                    ),
                );
                ok = false;
            } else {
                seen.insert(lower, name);
            }
            let label = format!("headers.{name}");
            let Ok(value) = (match val.get_ref() {
                DeValue::String(_) => self.expanded(&label, val),
                _ => Err(self.wrong_type(&label, val, "a string")),
            }) else {
                ok = false;
                continue;
            };
            if HeaderValue::from_str(&value).is_err() {
                self.err(
                    val.span().start,
                    format!(
                        "the value of header `{}` is not a valid HTTP header value (after \
                         expansion): use visible ASCII characters and spaces only",
                        excerpt(name)
                    ),
                );
                ok = false;
            }
            out.push((name.to_string(), value));
        }
        if ok { Ok(out) } else { Err(Reported) }
    }

    fn signing_keys(&mut self, key: &str, v: &Val<'_>) -> R<Vec<String>> {
        let values: Vec<&Val<'_>> = match v.get_ref() {
            DeValue::String(_) => vec![v],
            DeValue::Array(a) if a.is_empty() => {
                self.err(
                    v.span().start,
                    "`secret` is an empty list: give at least one `whsec_…` key, or remove \
                     `secret` to send unsigned requests",
                );
                return Err(Reported);
            }
            DeValue::Array(a) => a.iter().collect(),
            _ => {
                return Err(self.wrong_type(key, v, "a string or a list of strings"));
            }
        };
        let mut out = Vec::new();
        let mut ok = true;
        for v in values {
            let Ok(s) = self.expanded(key, v) else {
                ok = false;
                continue;
            };
            self.secrets.push(s.clone());
            // The signer's own decoder, so a key accepted here always signs.
            let problem = match s.strip_prefix("whsec_") {
                None => Some("does not start with `whsec_`"),
                Some(_) => match crate::dispatch::sign::decode_secret(&s) {
                    Ok(_) => None,
                    Err(crate::dispatch::sign::SignError::Empty) => {
                        Some("has nothing after `whsec_`")
                    }
                    Err(_) => Some("is not `whsec_` followed by base64"),
                },
            };
            if let Some(problem) = problem {
                self.err(
                    v.span().start,
                    format!(
                        "`secret` {problem} (after expansion): a Standard Webhooks signing key \
                         is `whsec_` + the base64 of 24–64 random bytes, e.g. `secret = \
                         \"${{WEBHOOK_SECRET}}\"`"
                    ),
                );
                ok = false;
            }
            out.push(s);
        }
        if ok { Ok(out) } else { Err(Reported) }
    }

    fn retry_schedule(&mut self, key: &str, v: &Val<'_>) -> R<Vec<Duration>> {
        let DeValue::Array(a) = v.get_ref() else {
            return Err(self.wrong_type(key, v, "a list of durations"));
        };
        if a.is_empty() || a.len() > 20 {
            self.err(
                v.span().start,
                format!(
                    "`retry_schedule` must have 1 to 20 entries, not {} (the last one repeats \
                     for further retries); write e.g. {}",
                    a.len(),
                    example_for(key)
                ),
            );
            return Err(Reported);
        }
        let results: Vec<R<Duration>> = a
            .iter()
            .map(|e| self.duration(key, e, Duration::ZERO, Duration::from_secs(24 * 3600)))
            .collect();
        results.into_iter().collect()
    }

    fn rules(&mut self, key: &str, v: &Val<'_>) -> R<Vec<Rule>> {
        let DeValue::Array(a) = v.get_ref() else {
            return Err(self.wrong_type(key, v, "a list of rules"));
        };
        if a.is_empty() {
            self.err(
                v.span().start,
                format!(
                    "`rules` is empty: a logic stage needs at least one rule, e.g. {}",
                    example_for(key)
                ),
            );
            return Err(Reported);
        }
        let stage = self.whose.clone();
        let mut out = Vec::new();
        let mut ok = true;
        for (n, r) in a.iter().enumerate() {
            self.whose = format!("rule {} of {stage}", n + 1);
            match self.rule(r) {
                Ok(rule) => out.push(rule),
                Err(Reported) => ok = false,
            }
        }
        self.whose = stage;
        if ok { Ok(out) } else { Err(Reported) }
    }

    fn rule(&mut self, r: &Val<'_>) -> R<Rule> {
        let DeValue::Table(t) = r.get_ref() else {
            return Err(self.wrong_type("rules", r, "a list of tables"));
        };
        let at = r.span().start;
        self.check_keys(t, &["when", "to"], "a rule's keys");
        let when = self.req(t, at, "when", Self::condition);
        let to = self.req(t, at, "to", Self::edge);
        Ok(Rule {
            when: when?,
            to: to?,
        })
    }

    fn condition(&mut self, key: &str, v: &Val<'_>) -> R<Condition> {
        let DeValue::Table(t) = v.get_ref() else {
            return Err(self.wrong_type(key, v, "a table"));
        };
        let at = v.span().start;
        self.check_keys(t, &["tag", "property", "is_any_of"], "the keys of `when`");
        let tag = self.opt(t, "tag", Self::nonempty)?;
        let property = self.opt(t, "property", Self::nonempty)?;
        match (tag, property) {
            (Some(_), Some(_)) => {
                self.err(
                    at,
                    "a rule's `when` tests either `tag` or `property`, not both; split it into \
                     two rules",
                );
                Err(Reported)
            }
            (Some(tag), None) => {
                if let Some(v) = t.get("is_any_of") {
                    self.err(
                        v.span().start,
                        "`is_any_of` goes with `property`, not `tag`: write `when = { property \
                         = \"camera\", is_any_of = [\"a\", \"b\"] }`",
                    );
                    return Err(Reported);
                }
                Ok(Condition::Tag(tag))
            }
            (None, Some(name)) => {
                let is_any_of = self.req(t, at, "is_any_of", Self::any_of)?;
                Ok(Condition::Property { name, is_any_of })
            }
            (None, None) => {
                self.err(
                    at,
                    format!("`when` tests nothing: write {}", example_for("when")),
                );
                Err(Reported)
            }
        }
    }

    fn any_of(&mut self, key: &str, v: &Val<'_>) -> R<Vec<String>> {
        let DeValue::Array(a) = v.get_ref() else {
            return Err(self.wrong_type(key, v, "a list of values"));
        };
        if a.is_empty() {
            self.err(
                v.span().start,
                format!(
                    "`is_any_of` is empty, so the rule could never match; write e.g. {}",
                    example_for(key)
                ),
            );
            return Err(Reported);
        }
        let mut out = Vec::new();
        let mut ok = true;
        for e in a.iter() {
            // Values compare with item properties by their JSON text (see `Condition`).
            match e.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                DeValue::Boolean(b) => out.push(b.to_string()),
                DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                    Ok(n) => out.push(n.to_string()),
                    Err(_) => {
                        self.err(e.span().start, "this integer is too large to compare");
                        ok = false;
                    }
                },
                _ => {
                    self.wrong_type(key, e, "a list of strings, integers or booleans");
                    ok = false;
                }
            }
        }
        if ok { Ok(out) } else { Err(Reported) }
    }

    fn split(&mut self, key: &str, v: &Val<'_>) -> R<Vec<Split>> {
        let DeValue::Array(a) = v.get_ref() else {
            return Err(self.wrong_type(key, v, "a list of `{ to, percent }` tables"));
        };
        if a.is_empty() {
            self.err(
                v.span().start,
                format!("`split` is empty; write e.g. {}", example_for(key)),
            );
            return Err(Reported);
        }
        let stage = self.whose.clone();
        let mut out = Vec::new();
        let mut ok = true;
        for (n, e) in a.iter().enumerate() {
            self.whose = format!("split entry {} of {stage}", n + 1);
            let DeValue::Table(t) = e.get_ref() else {
                self.wrong_type(key, e, "a list of `{ to, percent }` tables");
                ok = false;
                continue;
            };
            let at = e.span().start;
            self.check_keys(t, &["to", "percent"], "a split entry's keys");
            let to = self.req(t, at, "to", Self::edge);
            let percent = self.req(t, at, "percent", |cx, k, v| cx.u32_in(k, v, 0, 100));
            match (to, percent) {
                (Ok(to), Ok(percent)) => out.push(Split { to, percent }),
                _ => ok = false,
            }
        }
        self.whose = stage;
        if !ok {
            return Err(Reported);
        }
        let sum: u32 = out.iter().map(|s| s.percent).sum();
        if sum != 100 {
            self.err(
                v.span().start,
                format!(
                    "the `split` percents add up to {sum}, not 100; change them so they sum \
                     to 100"
                ),
            );
            return Err(Reported);
        }
        Ok(out)
    }

    /// Reports every loop made only of automated stages: items in it would never stop moving.
    fn check_loops(&mut self, heads: &[Head<'_, '_>], stages: &[Option<Stage>]) {
        // Nodes are the automated stages (first definition of each id), in file order.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut nodes: Vec<(&Stage, usize)> = Vec::new();
        for (stage, head) in stages.iter().zip(heads) {
            if let Some(s) = stage
                && s.kind().is_automated()
                && !index.contains_key(s.id.as_str())
            {
                index.insert(s.id.as_str(), nodes.len());
                nodes.push((s, head.at));
            }
        }
        let adj: Vec<Vec<usize>> = nodes
            .iter()
            .map(|(s, _)| {
                let mut out: Vec<usize> = s
                    .edges()
                    .into_iter()
                    .filter_map(|e| index.get(e.as_str()).copied())
                    .collect();
                out.dedup();
                out
            })
            .collect();
        for comp in strongly_connected(&adj) {
            let Some(&start) = comp.iter().min() else {
                continue;
            };
            let Some(cycle) = shortest_cycle(&adj, &comp, start) else {
                continue;
            };
            let mut names: Vec<&str> = cycle.iter().map(|&i| nodes[i].0.id.as_str()).collect();
            let stages = cycle.len() - 1;
            if names.len() > 12 {
                names.drain(10..names.len() - 1);
                names.insert(10, "…");
            }
            let count = if stages > 11 {
                format!(" ({stages} stages)")
            } else {
                String::new()
            };
            self.err(
                nodes[start].1,
                format!(
                    "stages {}{count} form a loop of automated stages that would never stop; \
                     send one of these edges to an annotate, review, complete or discard stage",
                    names.join(" → ")
                ),
            );
        }
    }
}

/// Strongly connected components with a cycle (more than one node, or a self-loop), found with
/// Kosaraju's algorithm on explicit stacks so a long chain of stages cannot overflow the stack.
fn strongly_connected(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = adj.len();
    let mut order = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    for root in 0..n {
        if seen[root] {
            continue;
        }
        seen[root] = true;
        let mut stack = vec![(root, 0usize)];
        while let Some((node, next)) = stack.last_mut() {
            if let Some(&to) = adj[*node].get(*next) {
                *next += 1;
                if !seen[to] {
                    seen[to] = true;
                    stack.push((to, 0));
                }
            } else {
                order.push(*node);
                stack.pop();
            }
        }
    }
    let mut reverse = vec![Vec::new(); n];
    for (from, tos) in adj.iter().enumerate() {
        for &to in tos {
            reverse[to].push(from);
        }
    }
    let mut comp_of = vec![usize::MAX; n];
    let mut comps = Vec::new();
    for &root in order.iter().rev() {
        if comp_of[root] != usize::MAX {
            continue;
        }
        let id = comps.len();
        let mut members = Vec::new();
        let mut stack = vec![root];
        comp_of[root] = id;
        while let Some(node) = stack.pop() {
            members.push(node);
            for &from in &reverse[node] {
                if comp_of[from] == usize::MAX {
                    comp_of[from] = id;
                    stack.push(from);
                }
            }
        }
        comps.push(members);
    }
    comps
        .into_iter()
        .filter(|c| c.len() > 1 || c.iter().any(|&i| adj[i].contains(&i)))
        .collect()
}

/// The shortest path `start → … → start` inside `comp`, as the list of its stages with
/// `start` at both ends.
fn shortest_cycle(adj: &[Vec<usize>], comp: &[usize], start: usize) -> Option<Vec<usize>> {
    let inside: HashSet<usize> = comp.iter().copied().collect();
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &to in &adj[node] {
            if to == start {
                // Walk the parents back from `node` to `start`, then turn the path around.
                let mut path = vec![node];
                let mut at = node;
                while at != start {
                    at = *parent.get(&at)?;
                    path.push(at);
                }
                path.reverse();
                path.push(start);
                return Some(path);
            }
            if inside.contains(&to) && to != start && !parent.contains_key(&to) {
                parent.insert(to, node);
                queue.push_back(to);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
