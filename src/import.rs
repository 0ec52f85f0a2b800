//! Parsing of `item import` input: JSON Lines of plain items or whole Darwin JSON 2.0 exports
//! (design §1, §6 "Identity"), into [`NewItem`]s for the store.
//!
//! This module is pure: it reads bytes and returns items and line errors. It never touches the
//! database, never panics on input and never stops at the first bad line, so `item import` can
//! report every problem of a file at once before anything is written.
//!
//! Invariants of every [`NewItem`] produced here:
//! - `id` satisfies [`is_valid_item_id`]; it is the line's own id when it has one, else a UUIDv5
//!   of the line's canonical JSON, so re-running an import yields the same ids.
//! - every annotation is an object whose `id` is a 36-character hyphenated UUID.
//! - `fingerprint` is the hex SHA-256 of the canonical JSON of the content (not the id).
//!
//! Decisions worth knowing (each also noted where it is implemented):
//! - A line is a Darwin export when it has a `version` or an `item` key; otherwise it is a
//!   plain item. Plain items are strict (unknown keys are errors, to catch typos); Darwin
//!   exports ignore unknown keys, since V7 keeps adding fields.
//! - `null` for an optional field means "absent".
//! - Darwin item-level `properties` (`[{"name", "value"}, …]`) become a map: a name that occurs
//!   once maps to its value, a name that occurs several times (a multi-select) maps to the array
//!   of its values in file order. See [`darwin_properties`].
//! - Duplicate keys in any object are an error (serde_json would silently keep the last one).
//! - A trailing `\r` is stripped (CRLF files), and a UTF-8 byte-order mark on line 1 is skipped.
//! - Columns count characters (not bytes) from 1.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, BufRead};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::{DatasetRef, ItemId, NewItem, is_valid_item_id};

mod quick;

/// The longest accepted line, in bytes, not counting its line break (design §6).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The namespace of every UUIDv5 this crate derives (item ids of lines without one, and
/// missing annotation ids). Changing it would change every derived id and break the
/// idempotency of re-imports, so it is fixed forever.
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x4375_1de8_49f1_432f_939a_2796_8986_1c01);

/// The keys a plain item line may have.
const PLAIN_KEYS: &[&str] = &[
    "id",
    "name",
    "path",
    "dataset",
    "tags",
    "properties",
    "slots",
    "annotations",
];

/// One bad line: where it is and what is wrong, in one sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in the input.
    pub line: usize,
    /// 1-based column (in characters) within the line, when known.
    pub column: Option<usize>,
    /// One sentence saying what is wrong (and, where it helps, what to write instead).
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(col) => write!(f, "line {}, column {}: {}", self.line, col, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

impl std::error::Error for LineError {}

/// The result of parsing a whole input: the good items, every bad line, and how many blank
/// lines were skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    /// Items in input order.
    pub items: Vec<NewItem>,
    /// Errors in input order, at most one per line.
    pub errors: Vec<LineError>,
    /// Lines that were empty or only whitespace.
    pub blank_lines: usize,
}

/// What one line of input turned out to be (see [`lines`]).
// Mostly items, each moved once: boxing them would cost an allocation per line.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum LineOutcome {
    /// A good item.
    Item(NewItem),
    /// A bad line.
    Error(LineError),
    /// An empty or whitespace-only line, skipped.
    Blank,
}

/// Parse a whole JSON Lines input. Never panics and never stops at the first error: every line
/// is checked. Only a read error of `reader` itself is returned as `Err`.
pub fn parse_jsonl<R: BufRead>(reader: R) -> Result<Parsed, io::Error> {
    let mut parsed = Parsed::default();
    for outcome in lines(reader) {
        match outcome? {
            LineOutcome::Item(item) => parsed.items.push(item),
            LineOutcome::Error(e) => parsed.errors.push(e),
            LineOutcome::Blank => parsed.blank_lines += 1,
        }
    }
    Ok(parsed)
}

/// Parse a JSON Lines input lazily, one outcome per line, for callers that want to stream
/// (e.g. validate a huge file without holding every item). Memory stays bounded by
/// [`MAX_LINE_BYTES`] plus one parsed line. After a read error the iterator ends.
pub fn lines<R: BufRead>(reader: R) -> Lines<R> {
    Lines {
        reader: LineReader::new(reader),
        failed: false,
        fingerprints: true,
        ids_only: false,
    }
}

/// [`lines`] for a pass that only validates: the same lines are good and the same errors are
/// reported, but a good line's item holds only its `id` and `line` (every other field is
/// empty). Most good lines are recognised without building their items at all (see
/// [`quick`]), which makes this several times faster than [`lines`] on V7 exports.
pub fn check_lines<R: BufRead>(reader: R) -> Lines<R> {
    Lines {
        fingerprints: false,
        ids_only: true,
        ..lines(reader)
    }
}

/// [`check_lines`] on several threads: one reads and splits the input, `workers` others check
/// batches of its lines, and `each` gets every outcome on the calling thread, in line order,
/// exactly as [`check_lines`] would give them (a read error last, after the lines before it).
/// `each` returning an error stops the reading and the checking, and that error is returned.
///
/// The check pass of `item import` is CPU-bound (serde_json's scanning, ~9 µs a V7 line), so
/// on two cores it takes about half as long. Memory stays bounded: at most `2 * workers + 2`
/// batches of lines are read and not yet checked, each [`CHECK_BATCH_BYTES`] of lines (or one
/// longer line, at most [`MAX_LINE_BYTES`]); checked batches are only ids.
pub fn check_lines_parallel<R: BufRead + Send, E>(
    reader: R,
    workers: usize,
    each: &mut dyn FnMut(io::Result<LineOutcome>) -> Result<(), E>,
) -> Result<(), E> {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, mpsc};
    let workers = workers.max(1);
    let (work_tx, work_rx) = mpsc::sync_channel::<(u64, RawBatch)>(workers);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = mpsc::sync_channel::<(u64, Vec<io::Result<LineOutcome>>)>(workers);
    std::thread::scope(|scope| {
        scope.spawn(move || read_raw_batches(reader, &work_tx));
        for _ in 0..workers {
            let (work_rx, done_tx) = (Arc::clone(&work_rx), done_tx.clone());
            scope.spawn(move || {
                loop {
                    // The lock is held only to take a batch, never while checking it.
                    let next = work_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((n, batch))) = next else { return };
                    if done_tx.send((n, batch.check())).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // Batches come back in any order; they are handed on in the order they were read.
        let mut waiting = BTreeMap::new();
        let mut next = 0u64;
        let result = (|| {
            for (n, outcomes) in &done_rx {
                waiting.insert(n, outcomes);
                while let Some(outcomes) = waiting.remove(&next) {
                    next += 1;
                    for outcome in outcomes {
                        each(outcome)?;
                    }
                }
            }
            Ok(())
        })();
        // Dropping the receiver ends the workers at their next send, and with them the reader.
        drop(done_rx);
        result
    })
}

/// Lines of one batch read for [`check_lines_parallel`], kept in one buffer.
struct RawBatch {
    buf: Vec<u8>,
    lines: Vec<(usize, RawEntry)>,
    /// A read error after the last line: the input ends there.
    failed: Option<io::Error>,
}

enum RawEntry {
    Bytes(std::ops::Range<usize>),
    TooLong(u64),
}

/// Lines held in one batch of [`check_lines_parallel`] at most, and their bytes.
const CHECK_BATCH_LINES: usize = 1024;
pub const CHECK_BATCH_BYTES: usize = 4 * 1024 * 1024;

impl RawBatch {
    fn new() -> RawBatch {
        RawBatch {
            buf: Vec::new(),
            lines: Vec::new(),
            failed: None,
        }
    }

    /// What [`check_lines`] gives for each line of the batch.
    fn check(self) -> Vec<io::Result<LineOutcome>> {
        let mut out: Vec<io::Result<LineOutcome>> = self
            .lines
            .into_iter()
            .map(|(line_no, raw)| {
                Ok(match raw {
                    RawEntry::TooLong(len) => LineOutcome::Error(too_long(line_no, len)),
                    RawEntry::Bytes(r) => {
                        let bytes = &self.buf[r];
                        if is_blank(bytes) {
                            LineOutcome::Blank
                        } else {
                            match check_line(line_no, bytes) {
                                Ok(id) => LineOutcome::Item(id_only(id, line_no)),
                                Err(e) => LineOutcome::Error(e),
                            }
                        }
                    }
                })
            })
            .collect();
        out.extend(self.failed.map(Err));
        out
    }
}

/// The reading side of [`check_lines_parallel`]: splits the input into batches, numbered
/// from 0, until it ends, fails, or the checkers have gone.
fn read_raw_batches<R: BufRead>(reader: R, work: &std::sync::mpsc::SyncSender<(u64, RawBatch)>) {
    let mut reader = LineReader::new(reader);
    let mut n = 0u64;
    let mut batch = RawBatch::new();
    loop {
        match reader.next_line() {
            Ok(Some((line_no, raw))) => {
                let entry = match raw {
                    RawLine::TooLong(len) => RawEntry::TooLong(len),
                    RawLine::Bytes(bytes) => {
                        let start = batch.buf.len();
                        batch.buf.extend_from_slice(bytes);
                        RawEntry::Bytes(start..batch.buf.len())
                    }
                };
                batch.lines.push((line_no, entry));
            }
            Ok(None) => break,
            Err(e) => {
                batch.failed = Some(e);
                break;
            }
        }
        if batch.lines.len() >= CHECK_BATCH_LINES || batch.buf.len() >= CHECK_BATCH_BYTES {
            let full = std::mem::replace(&mut batch, RawBatch::new());
            if work.send((n, full)).is_err() {
                return;
            }
            n += 1;
        }
    }
    if !batch.lines.is_empty() || batch.failed.is_some() {
        let _ = work.send((n, batch));
    }
}

/// Iterator returned by [`lines`].
pub struct Lines<R> {
    reader: LineReader<R>,
    failed: bool,
    fingerprints: bool,
    /// Items with only their id and line (see [`check_lines`]).
    ids_only: bool,
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<LineOutcome, io::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let (line_no, raw) = match self.reader.next_line() {
            Ok(Some(x)) => x,
            Ok(None) => return None,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        Some(Ok(match raw {
            RawLine::TooLong(len) => LineOutcome::Error(too_long(line_no, len)),
            RawLine::Bytes(bytes) if is_blank(bytes) => LineOutcome::Blank,
            RawLine::Bytes(bytes) if self.ids_only => match check_line(line_no, bytes) {
                Ok(id) => LineOutcome::Item(id_only(id, line_no)),
                Err(e) => LineOutcome::Error(e),
            },
            RawLine::Bytes(bytes) => match parse_line_with(line_no, bytes, self.fingerprints) {
                Ok(item) => LineOutcome::Item(item),
                Err(e) => LineOutcome::Error(e),
            },
        }))
    }
}

/// Whether a line is good, and its id: what [`parse_line`] says, without building the item
/// when [`quick::quick_id`] can tell.
fn check_line(line_no: usize, bytes: &[u8]) -> Result<ItemId, LineError> {
    let text = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if text.len() <= MAX_LINE_BYTES
        && let Ok(text) = std::str::from_utf8(text)
        && let Some(id) = quick::quick_id(text)
    {
        return Ok(ItemId::new(id));
    }
    parse_line_with(line_no, bytes, false).map(|item| item.id)
}

fn id_only(id: ItemId, line: usize) -> NewItem {
    NewItem {
        id,
        name: String::new(),
        path: String::new(),
        dataset: None,
        tags: Vec::new(),
        properties: Map::new(),
        slots: Vec::new(),
        annotations: Vec::new(),
        fingerprint: String::new(),
        line,
        json: None,
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

fn too_long(line: usize, len: u64) -> LineError {
    LineError {
        line,
        column: None,
        message: format!("the line is {len} bytes; the limit is 16 MiB"),
    }
}

/// One physical line as read: its bytes, or only its length when it is over the limit.
enum RawLine<'a> {
    Bytes(&'a [u8]),
    TooLong(u64),
}

/// Splits a reader into lines without ever buffering more than [`MAX_LINE_BYTES`] of one
/// line: past the limit it only counts bytes until the next newline.
struct LineReader<R> {
    reader: R,
    buf: Vec<u8>,
    line_no: usize,
    /// The largest the line buffer has been, so a test can prove memory stays bounded.
    peak_capacity: usize,
}

impl<R: BufRead> LineReader<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            buf: Vec::new(),
            line_no: 0,
            peak_capacity: 0,
        }
    }

    fn next_line(&mut self) -> io::Result<Option<(usize, RawLine<'_>)>> {
        self.buf.clear();
        let mut len: u64 = 0;
        let mut over = false;
        let mut any = false;
        let mut last_byte = None;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                if !any {
                    return Ok(None);
                }
                break;
            }
            any = true;
            let newline = memchr::memchr(b'\n', available);
            let chunk = &available[..newline.unwrap_or(available.len())];
            len += chunk.len() as u64;
            last_byte = chunk.last().copied().or(last_byte);
            if !over {
                if len > MAX_LINE_BYTES as u64 + 1 {
                    // +1 leaves room for a CRLF's `\r`, stripped below.
                    over = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(chunk);
                    self.peak_capacity = self.peak_capacity.max(self.buf.capacity());
                }
            }
            let used = chunk.len() + usize::from(newline.is_some());
            self.reader.consume(used);
            if newline.is_some() {
                break;
            }
        }
        self.line_no += 1;
        if over {
            // Report the length as `parse_line` would: without a CRLF's `\r`.
            let len = len - u64::from(last_byte == Some(b'\r'));
            return Ok(Some((self.line_no, RawLine::TooLong(len))));
        }
        let mut bytes = self.buf.as_slice();
        if self.line_no == 1 {
            bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        }
        Ok(Some((self.line_no, RawLine::Bytes(bytes))))
    }
}

/// Parse one line (already split, without its newline; a trailing `\r` is ignored).
pub fn parse_line(line_no: usize, bytes: &[u8]) -> Result<NewItem, LineError> {
    parse_line_with(line_no, bytes, true)
}

fn parse_line_with(line_no: usize, bytes: &[u8], fingerprint: bool) -> Result<NewItem, LineError> {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.len() > MAX_LINE_BYTES {
        return Err(too_long(line_no, bytes.len() as u64));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        // The prefix is valid UTF-8 by definition of `valid_up_to`.
        let column = String::from_utf8_lossy(&bytes[..at]).chars().count() + 1;
        LineError {
            line: line_no,
            column: Some(column),
            message: format!("the line is not valid UTF-8 (byte 0x{:02x})", bytes[at]),
        }
    })?;
    let ctx = Ctx {
        line: line_no,
        text,
        fingerprint,
    };
    if is_blank(bytes) {
        return Err(ctx.error(None, "the line is blank; expected a JSON object".into()));
    }
    let value = parse_strict(&ctx)?;
    let Value::Object(obj) = value else {
        return Err(ctx.error(
            Some(1),
            format!(
                "expected a JSON object (a plain item or a Darwin JSON 2.0 export), found {}",
                kind(&value)
            ),
        ));
    };
    if obj.contains_key("version") || obj.contains_key("item") {
        darwin_item(&ctx, obj)
    } else {
        plain_item(&ctx, obj)
    }
}

/// The line being parsed, for error positions.
struct Ctx<'a> {
    line: usize,
    text: &'a str,
    /// Whether to compute the item's fingerprint (see [`check_lines`]).
    fingerprint: bool,
}

impl Ctx<'_> {
    fn error(&self, column: Option<usize>, message: String) -> LineError {
        LineError {
            line: self.line,
            column,
            message,
        }
    }

    /// An error about a top-level key, pointing at that key.
    fn at_key(&self, key: &str, message: String) -> LineError {
        let column = top_level_keys(self.text)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, c)| c);
        self.error(column, message)
    }
}

// ---------------------------------------------------------------------------------------------
// JSON syntax
// ---------------------------------------------------------------------------------------------

/// Parse `ctx.text` as JSON, rejecting duplicate keys, with a plain-sentence error.
fn parse_strict(ctx: &Ctx<'_>) -> Result<Value, LineError> {
    let mut de = serde_json::Deserializer::from_str(ctx.text);
    let value = StrictValue::deserialize(&mut de).and_then(|v| de.end().map(|()| v.0));
    value.map_err(|e| {
        let byte_col = e.column();
        let raw = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), byte_col);
        let msg = raw.strip_suffix(&suffix).unwrap_or(&raw);
        let column = (byte_col > 0).then(|| char_column(ctx.text, byte_col));
        ctx.error(column, syntax_message(msg))
    })
}

/// serde_json counts columns in bytes; convert to characters.
fn char_column(text: &str, byte_col: usize) -> usize {
    let mut end = byte_col.saturating_sub(1).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].chars().count() + 1
}

/// Word serde_json's terse messages as sentences an operator can act on.
fn syntax_message(msg: &str) -> String {
    let plain = match msg {
        "EOF while parsing an object" => "the line ends inside an object; is it truncated?",
        "EOF while parsing a list" => "the line ends inside an array; is it truncated?",
        "EOF while parsing a string" => "the line ends inside a string; is it truncated?",
        "EOF while parsing a value" => "the line ends where a value was expected; is it truncated?",
        "expected `:`" => "expected `:` after an object key",
        "expected `,` or `}`" => "expected `,` or `}` after an object field",
        "expected `,` or `]`" => "expected `,` or `]` after an array element",
        "expected ident" => "expected `true`, `false` or `null`",
        "expected value" => "expected a JSON value",
        "key must be a string" => "object keys must be strings in double quotes",
        "trailing comma" => "a trailing comma is not allowed in JSON",
        "trailing characters" => "unexpected text after the JSON object; put one item on each line",
        "invalid escape" => "invalid escape sequence in a string",
        "invalid number" => "invalid number",
        "number out of range" => "number out of range",
        "invalid unicode code point" => "invalid unicode code point in a `\\u` escape",
        "lone leading surrogate in hex escape" | "unexpected end of hex escape" => {
            "unpaired surrogate in a `\\u` escape (\\ud800-\\udbff must be followed by \\udc00-\\udfff)"
        }
        "recursion limit exceeded" => "the JSON is nested more than 128 levels deep",
        "control character (\\u0000-\\u001F) found while parsing a string" => {
            "a control character inside a string must be escaped (e.g. `\\t`, `\\u0001`)"
        }
        other => return other.to_string(),
    };
    plain.to_string()
}

/// A `serde_json::Value` that refuses duplicate object keys at any depth.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never yields a non-finite float, so `from_f64` always succeeds.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{key}` in one object"
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// The top-level keys of a JSON object text with their 1-based character columns (the
/// column of the opening quote). `text` must already have parsed as JSON.
fn top_level_keys(text: &str) -> Vec<(String, usize)> {
    let bytes = text.as_bytes();
    let mut keys = Vec::new();
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 && expect_key {
                    if let Some(raw) = text.get(start..=i.min(bytes.len() - 1))
                        && let Ok(key) = serde_json::from_str::<String>(raw)
                    {
                        keys.push((key, text[..start].chars().count() + 1));
                    }
                    expect_key = false;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1 && bytes[i] == b'{';
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect_key = true,
            _ => {}
        }
        i += 1;
    }
    keys
}

/// "a string", "an array", …: how a JSON value is named in messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Item content
// ---------------------------------------------------------------------------------------------

/// What both line formats boil down to before ids and fingerprints are settled.
struct Content {
    id: String,
    name: String,
    path: String,
    dataset: Option<DatasetRef>,
    tags: Vec<String>,
    properties: Map<String, Value>,
    slots: Vec<Value>,
    annotations: Vec<Value>,
}

/// Removes `key`, treating `null` as absent.
fn take(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    obj.remove(key).filter(|v| !v.is_null())
}

/// The id a line without one gets: UUIDv5 of its canonical JSON (the whole line as written,
/// before any default is filled in).
fn derived_id(line: &Map<String, Value>) -> String {
    let mut canonical = String::new();
    write_object(line, &mut canonical);
    Uuid::new_v5(&ID_NAMESPACE, canonical.as_bytes()).to_string()
}

fn id_error(field: &str, id: &str) -> String {
    if id.is_empty() {
        return format!("{field} must not be empty; leave it out to have one made from the line");
    }
    let shown: String = id.chars().take(64).collect();
    let ellipsis = if shown.len() < id.len() { "…" } else { "" };
    format!(
        "{field} \"{shown}{ellipsis}\" is not a valid item id: use 1 to 128 characters from \
         A-Z, a-z, 0-9, `.`, `_`, `:` and `-`"
    )
}

/// A plain item line: `{"id"?, "name", "path"?, "dataset"?, "tags"?, "properties"?, "slots"?,
/// "annotations"?}`. Strict about keys: an unknown key is a typo more often than not.
fn plain_item(ctx: &Ctx<'_>, mut obj: Map<String, Value>) -> Result<NewItem, LineError> {
    let unknown: Vec<&String> = obj
        .keys()
        .filter(|k| !PLAIN_KEYS.contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(unknown_keys(ctx, &unknown));
    }
    let id = match obj.get("id") {
        None | Some(Value::Null) => derived_id(&obj),
        Some(Value::String(s)) if is_valid_item_id(s) => s.clone(),
        Some(Value::String(s)) => return Err(ctx.at_key("id", id_error("`id`", s))),
        Some(v) => {
            return Err(ctx.at_key("id", format!("`id` must be a string, found {}", kind(v))));
        }
    };
    let name = match take(&mut obj, "name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(Value::String(_)) => {
            return Err(ctx.at_key("name", "`name` must not be empty".into()));
        }
        Some(v) => {
            return Err(ctx.at_key(
                "name",
                format!("`name` must be a string, found {}", kind(&v)),
            ));
        }
        None => {
            return Err(ctx.error(
                None,
                "`name` is required (the item's file name, e.g. \"image_1.jpg\")".into(),
            ));
        }
    };
    let path = item_path(take(&mut obj, "path"), "path").map_err(|m| ctx.at_key("path", m))?;
    let dataset = match take(&mut obj, "dataset") {
        None => None,
        Some(v) => Some(plain_dataset(v).map_err(|m| ctx.at_key("dataset", m))?),
    };
    let tags = match take(&mut obj, "tags") {
        None => Vec::new(),
        Some(v) => string_array(v, "tags").map_err(|m| ctx.at_key("tags", m))?,
    };
    let properties = match take(&mut obj, "properties") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(ctx.at_key(
                "properties",
                format!(
                    "`properties` must be an object of names to values, found {}",
                    kind(&v)
                ),
            ));
        }
    };
    let slots =
        object_array(take(&mut obj, "slots"), "slots").map_err(|m| ctx.at_key("slots", m))?;
    let annotations = object_array(take(&mut obj, "annotations"), "annotations")
        .map_err(|m| ctx.at_key("annotations", m))?;
    let content = Content {
        id,
        name,
        path,
        dataset,
        tags,
        properties,
        slots,
        annotations,
    };
    finish(ctx, content).map_err(|m| ctx.at_key("annotations", m))
}

fn unknown_keys(ctx: &Ctx<'_>, unknown: &[&String]) -> LineError {
    // Name them in the order they appear in the line, and point at the first.
    let positions = top_level_keys(ctx.text);
    let mut found: Vec<(usize, &str)> = unknown
        .iter()
        .map(|k| {
            let col = positions
                .iter()
                .find(|(p, _)| p == *k)
                .map_or(usize::MAX, |(_, c)| *c);
            (col, k.as_str())
        })
        .collect();
    found.sort();
    let column = found.first().map(|(c, _)| *c).filter(|c| *c != usize::MAX);
    let described: Vec<String> = found
        .iter()
        .map(|(_, k)| match suggest(k) {
            Some(s) => format!("`{k}` (did you mean `{s}`?)"),
            None => format!("`{k}`"),
        })
        .collect();
    let noun = if found.len() == 1 { "key" } else { "keys" };
    ctx.error(
        column,
        format!(
            "unknown {noun} {}; an item line may have: {}",
            described.join(", "),
            PLAIN_KEYS.join(", ")
        ),
    )
}

/// The known key closest to `key`, when it is close enough to be a likely typo.
fn suggest(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    PLAIN_KEYS
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min()
        .map(|(_, k)| k)
}

/// Optimal string alignment distance (Levenshtein plus adjacent swaps).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// `path`: a string starting with `/`; `/` when absent.
fn item_path(v: Option<Value>, field: &str) -> Result<String, String> {
    match v {
        None => Ok("/".into()),
        Some(Value::String(s)) if s.starts_with('/') => Ok(s),
        Some(Value::String(s)) => Err(format!(
            "`{field}` must start with `/` (e.g. \"/{s}\"), found \"{s}\""
        )),
        Some(v) => Err(format!("`{field}` must be a string, found {}", kind(&v))),
    }
}

/// A plain item's `dataset`: `{"name", "slug"?}` or a name string. A missing slug is made from
/// the name (see [`dataset_from_name`]).
fn plain_dataset(v: Value) -> Result<DatasetRef, String> {
    match v {
        Value::String(s) => dataset_from_name(&s).ok_or_else(|| {
            format!("cannot make a dataset slug from \"{s}\"; write `{{\"name\": …, \"slug\": …}}`")
        }),
        Value::Object(mut m) => {
            if let Some(k) = m.keys().find(|k| !matches!(k.as_str(), "name" | "slug")) {
                return Err(format!(
                    "unknown key `{k}` in `dataset`; it may have: name, slug"
                ));
            }
            let name = match take(&mut m, "name") {
                Some(Value::String(s)) if !s.trim().is_empty() => s,
                Some(Value::String(_)) | None => {
                    return Err("`dataset.name` is required and must not be empty".into());
                }
                Some(v) => {
                    return Err(format!(
                        "`dataset.name` must be a string, found {}",
                        kind(&v)
                    ));
                }
            };
            match take(&mut m, "slug") {
                Some(Value::String(slug)) if !slug.is_empty() => Ok(DatasetRef { name, slug }),
                Some(Value::String(_)) => Err("`dataset.slug` must not be empty".into()),
                Some(v) => Err(format!(
                    "`dataset.slug` must be a string, found {}",
                    kind(&v)
                )),
                None => dataset_from_name(&name).ok_or_else(|| {
                    format!("cannot make a dataset slug from \"{name}\"; add `slug`")
                }),
            }
        }
        v => Err(format!(
            "`dataset` must be an object {{\"name\", \"slug\"}} or a string, found {}",
            kind(&v)
        )),
    }
}

/// A dataset reference from a bare name (a plain line's `"dataset": "…"`, or `item import
/// --dataset`): the slug lowercases ASCII letters, keeps digits, `_` and `-`, and turns every
/// other run of characters into one `-`. `None` when no letter or digit is left.
pub fn dataset_from_name(name: &str) -> Option<DatasetRef> {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-').to_string();
    slug.bytes()
        .any(|b| b.is_ascii_alphanumeric())
        .then(|| DatasetRef {
            name: name.to_string(),
            slug,
        })
}

fn string_array(v: Value, field: &str) -> Result<Vec<String>, String> {
    let Value::Array(items) = v else {
        return Err(format!(
            "`{field}` must be an array of strings, found {}",
            kind(&v)
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) if !s.is_empty() => Ok(s),
            Value::String(_) => Err(format!("`{field}[{i}]` must not be empty")),
            v => Err(format!(
                "`{field}` must be an array of strings, found {} at index {i}",
                kind(&v)
            )),
        })
        .collect()
}

fn object_array(v: Option<Value>, field: &str) -> Result<Vec<Value>, String> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            if let Some((i, bad)) = items.iter().enumerate().find(|(_, v)| !v.is_object()) {
                return Err(format!(
                    "`{field}` must be an array of objects, found {} at index {i}",
                    kind(bad)
                ));
            }
            Ok(items)
        }
        Some(v) => Err(format!(
            "`{field}` must be an array of objects, found {}",
            kind(&v)
        )),
    }
}

/// A Darwin JSON 2.0 export. Unknown keys are ignored (V7 adds fields over time); `tags` stay
/// empty, since routing reads Darwin tag annotations by itself.
fn darwin_item(ctx: &Ctx<'_>, mut obj: Map<String, Value>) -> Result<NewItem, LineError> {
    match obj.get("version") {
        Some(Value::String(v)) if v == "2.0" => {}
        Some(Value::String(v)) => {
            return Err(ctx.at_key(
                "version",
                format!("unsupported Darwin JSON version \"{v}\"; only \"2.0\" is accepted"),
            ));
        }
        Some(v) => {
            return Err(ctx.at_key(
                "version",
                format!("`version` must be the string \"2.0\", found {}", kind(v)),
            ));
        }
        None => {
            return Err(ctx.at_key(
                "item",
                "a line with `item` is read as a Darwin JSON export and needs \
                 `\"version\": \"2.0\"`"
                    .into(),
            ));
        }
    }
    let item_id = obj
        .get("item")
        .and_then(|i| i.get("source_info"))
        .and_then(|s| s.get("item_id"))
        .filter(|v| !v.is_null());
    let id = match item_id {
        Some(Value::String(s)) if is_valid_item_id(s) => s.clone(),
        Some(Value::String(s)) => {
            return Err(ctx.at_key("item", id_error("`item.source_info.item_id`", s)));
        }
        Some(v) => {
            return Err(ctx.at_key(
                "item",
                format!(
                    "`item.source_info.item_id` must be a string, found {}",
                    kind(v)
                ),
            ));
        }
        None => derived_id(&obj),
    };

    let mut item = match obj.remove("item") {
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(ctx.at_key(
                "item",
                format!("`item` must be an object, found {}", kind(&v)),
            ));
        }
        None => {
            return Err(ctx.at_key(
                "version",
                "a Darwin JSON 2.0 line needs an `item` object".into(),
            ));
        }
    };
    let at_item = |m: String| ctx.at_key("item", m);
    let name = match take(&mut item, "name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(Value::String(_)) => return Err(at_item("`item.name` must not be empty".into())),
        Some(v) => {
            return Err(at_item(format!(
                "`item.name` must be a string, found {}",
                kind(&v)
            )));
        }
        None => return Err(at_item("`item.name` is required".into())),
    };
    let path = item_path(take(&mut item, "path"), "item.path").map_err(at_item)?;
    let dataset = match take(&mut item, "source_info") {
        None => None,
        Some(Value::Object(mut info)) => match take(&mut info, "dataset") {
            None => None,
            Some(d) => Some(darwin_dataset(d).map_err(at_item)?),
        },
        Some(v) => {
            return Err(at_item(format!(
                "`item.source_info` must be an object, found {}",
                kind(&v)
            )));
        }
    };
    let slots = object_array(take(&mut item, "slots"), "item.slots").map_err(at_item)?;
    let annotations = object_array(take(&mut obj, "annotations"), "annotations")
        .map_err(|m| ctx.at_key("annotations", m))?;
    let properties =
        darwin_properties(take(&mut obj, "properties")).map_err(|m| ctx.at_key("properties", m))?;
    let content = Content {
        id,
        name,
        path,
        dataset,
        tags: Vec::new(),
        properties,
        slots,
        annotations,
    };
    finish(ctx, content).map_err(|m| ctx.at_key("annotations", m))
}

/// Darwin's `source_info.dataset`: `{name, slug, …}`; other keys (e.g.
/// `dataset_management_url`) are ignored; a missing slug is made from the name.
fn darwin_dataset(v: Value) -> Result<DatasetRef, String> {
    let Value::Object(mut m) = v else {
        return Err(format!(
            "`item.source_info.dataset` must be an object, found {}",
            kind(&v)
        ));
    };
    let name = match take(&mut m, "name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        _ => return Err("`item.source_info.dataset.name` must be a non-empty string".into()),
    };
    match take(&mut m, "slug") {
        Some(Value::String(slug)) if !slug.is_empty() => Ok(DatasetRef { name, slug }),
        None => dataset_from_name(&name)
            .ok_or_else(|| format!("cannot make a dataset slug from \"{name}\"; add `slug`")),
        Some(_) => Err("`item.source_info.dataset.slug` must be a non-empty string".into()),
    }
}

/// Darwin item-level properties, `[{"name": n, "value": v}, …]`, as a map for logic rules:
/// a name that occurs once maps to its value unchanged; a name that occurs more than once (a
/// multi-select) maps to the array of its values in file order. Logic rules treat a list as
/// matching when any element matches, so both shapes route the same. Going back is
/// mechanical: one entry per value, one per array element. Keys other than `name` and
/// `value` in an entry are ignored; a missing `value` is `null`. An object is accepted as is
/// (already a map), so an item exported by hookops imports again unchanged.
pub fn darwin_properties(v: Option<Value>) -> Result<Map<String, Value>, String> {
    let entries = match v {
        None => return Ok(Map::new()),
        Some(Value::Object(m)) => return Ok(m),
        Some(Value::Array(entries)) => entries,
        Some(v) => {
            return Err(format!(
                "`properties` must be an array of {{\"name\", \"value\"}} objects, found {}",
                kind(&v)
            ));
        }
    };
    let mut out = Map::new();
    let mut repeated = BTreeSet::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let Value::Object(mut e) = entry else {
            return Err(format!(
                "`properties[{i}]` must be an object {{\"name\", \"value\"}}, found {}",
                kind(&entry)
            ));
        };
        let name = match take(&mut e, "name") {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => return Err(format!("`properties[{i}].name` must be a non-empty string")),
        };
        let value = e.remove("value").unwrap_or(Value::Null);
        match out.get_mut(&name) {
            None => {
                out.insert(name, value);
            }
            Some(existing) => {
                if repeated.insert(name.clone()) {
                    *existing = Value::Array(vec![existing.take()]);
                }
                if let Value::Array(values) = existing {
                    values.push(value);
                }
            }
        }
    }
    Ok(out)
}

/// Fills missing annotation ids, checks given ones, and computes the fingerprint.
fn finish(ctx: &Ctx<'_>, mut c: Content) -> Result<NewItem, String> {
    for (i, a) in c.annotations.iter_mut().enumerate() {
        let Value::Object(a) = a else {
            // `object_array` already checked this; keep the invariant without a panic path.
            return Err(format!("`annotations[{i}]` must be an object"));
        };
        match a.get("id") {
            None | Some(Value::Null) => {
                let id = Uuid::new_v5(&ID_NAMESPACE, format!("{}/{i}", c.id).as_bytes());
                a.insert("id".into(), Value::String(id.to_string()));
            }
            Some(Value::String(s)) if s.len() == 36 && Uuid::try_parse(s).is_ok() => {}
            Some(Value::String(s)) => {
                return Err(format!(
                    "`annotations[{i}].id` must be a UUID like \
                     \"b92626e7-a1fd-4ecb-a418-31aa37069bc1\", found \"{s}\"; leave it out to \
                     have one made"
                ));
            }
            Some(v) => {
                return Err(format!(
                    "`annotations[{i}].id` must be a UUID string, found {}",
                    kind(v)
                ));
            }
        }
    }
    let fingerprint = if ctx.fingerprint {
        fingerprint(&c)
    } else {
        String::new()
    };
    Ok(NewItem {
        id: ItemId::new(c.id),
        name: c.name,
        path: c.path,
        dataset: c.dataset,
        tags: c.tags,
        properties: c.properties,
        slots: c.slots,
        annotations: c.annotations,
        fingerprint,
        line: ctx.line,
        json: None,
    })
}

/// Hex SHA-256 of the canonical JSON of everything but the id: the object `{annotations,
/// dataset, name, path, properties, slots, tags}` (`dataset` is `null` when absent), written
/// field by field in canonical key order rather than built as a value, to avoid copying.
fn fingerprint(c: &Content) -> String {
    let mut out = String::new();
    out.push_str("{\"annotations\":");
    write_array(&c.annotations, &mut out);
    out.push_str(",\"dataset\":");
    match &c.dataset {
        Some(d) => {
            out.push_str("{\"name\":");
            write_string(&d.name, &mut out);
            out.push_str(",\"slug\":");
            write_string(&d.slug, &mut out);
            out.push('}');
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"name\":");
    write_string(&c.name, &mut out);
    out.push_str(",\"path\":");
    write_string(&c.path, &mut out);
    out.push_str(",\"properties\":");
    write_object(&c.properties, &mut out);
    out.push_str(",\"slots\":");
    write_array(&c.slots, &mut out);
    out.push_str(",\"tags\":[");
    for (i, t) in c.tags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(t, &mut out);
    }
    out.push_str("]}");
    hex_sha256(out.as_bytes())
}

fn hex_sha256(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Canonical JSON
// ---------------------------------------------------------------------------------------------

/// RFC 8785 (JCS) canonical JSON of a value: object keys sorted by their UTF-16 code units,
/// no whitespace, strings with only the mandatory escapes, numbers as ECMAScript prints
/// doubles.
///
/// The structure is written here, and only non-integer numbers go through `serde_jcs`:
/// `serde_jcs` is correct (the tests compare the two on every fixture and on random values)
/// but re-parses every object key and boxes every write, which is slow on the import path
/// where each line is canonicalised once or twice. No deviation from RFC 8785: integers are
/// doubles as the RFC requires, so integers beyond 2^53 print as the nearest double
/// (`18446744073709551615` → `18446744073709552000`).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => write_array(items, out),
        Value::Object(m) => write_object(m, out),
    }
}

fn write_array(items: &[Value], out: &mut String) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_canonical(item, out);
    }
    out.push(']');
}

fn write_object(m: &Map<String, Value>, out: &mut String) {
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    // serde_json's map sorts by UTF-8 bytes, which differs from UTF-16 order only for
    // characters above U+FFFF against U+E000..U+FFFF; sort as the RFC says anyway.
    entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(k, out);
        out.push(':');
        write_canonical(v, out);
    }
    out.push('}');
}

/// JCS string escaping: `"` and `\`, the short forms `\b \f \n \r \t`, `\u00xx` (lower-case
/// hex) for other controls, everything else as is.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    // Copy runs that need no escape in one go; escapes are rare.
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.push_str(&s[start..i]);
        start = i + 1;
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn write_number(n: &serde_json::Number, out: &mut String) {
    const EXACT: u64 = 1 << 53;
    if let Some(u) = n.as_u64()
        && u <= EXACT
    {
        out.push_str(&u.to_string());
    } else if let Some(i) = n.as_i64()
        && i.unsigned_abs() <= EXACT
    {
        out.push_str(&i.to_string());
    } else {
        // Larger integers and all floats: as ECMAScript prints the double they denote.
        // `serde_jcs` does this through `ryu-js`, which follows ECMAScript's tie rule (of two
        // shortest digit strings equally near, the even one); Rust's own shortest formatting
        // does not, e.g. for -1511493858831114.25. A finite double never fails to format.
        let x = n.as_f64().unwrap_or(0.0);
        match serde_jcs::to_string(&x) {
            Ok(s) => out.push_str(&s),
            Err(_) => out.push('0'),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::io::{BufReader, Cursor, Read};
    use std::path::{Path, PathBuf};

    fn fixtures_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jsonl")
    }

    fn parse_str(s: &str) -> Parsed {
        parse_jsonl(Cursor::new(s.as_bytes())).unwrap()
    }

    fn one(s: &str) -> Result<NewItem, LineError> {
        parse_line(1, s.as_bytes())
    }

    fn err(s: &str) -> String {
        one(s).unwrap_err().to_string()
    }

    /// Every Darwin fixture: (file name, the export as a value).
    fn darwin_fixtures() -> Vec<(String, Value)> {
        let dir = fixtures_dir().join("darwin-v2");
        let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, serde_json::from_str(&text).unwrap())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    // --- The broken-input corpus -------------------------------------------------------------

    /// Expectations of one corpus file: `items N`, `blank N`, then one line per error as it
    /// displays, in order. Lines starting with `#` are comments.
    fn read_expect(path: &Path) -> (usize, usize, Vec<String>) {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{} needs a .expect file: {e}", path.display()));
        let (mut items, mut blank, mut errors) = (None, None, Vec::new());
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if let Some(n) = line.strip_prefix("items ") {
                items = Some(n.parse().unwrap());
            } else if let Some(n) = line.strip_prefix("blank ") {
                blank = Some(n.parse().unwrap());
            } else {
                errors.push(line.to_string());
            }
        }
        (items.unwrap(), blank.unwrap(), errors)
    }

    #[test]
    fn corpus_files_give_their_expected_errors() {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        paths.sort();
        assert!(paths.len() >= 15, "corpus went missing: {paths:?}");
        let mut failures = Vec::new();
        for path in &paths {
            let file = std::fs::File::open(path).unwrap();
            let parsed = parse_jsonl(BufReader::new(file)).unwrap();
            let (items, blank, errors) = read_expect(&path.with_extension("expect"));
            let got: Vec<String> = parsed.errors.iter().map(ToString::to_string).collect();
            if parsed.items.len() != items || parsed.blank_lines != blank || got != errors {
                failures.push(format!(
                    "{}:\n  expected items {items}, blank {blank}, errors:\n    {}\n  got items \
                     {}, blank {}, errors:\n    {}",
                    path.display(),
                    errors.join("\n    "),
                    parsed.items.len(),
                    parsed.blank_lines,
                    got.join("\n    ")
                ));
            }
            // Every line is accounted for exactly once.
            let lines = std::fs::read(path).unwrap().split(|b| *b == b'\n').count();
            let trailing_newline = std::fs::read(path).unwrap().ends_with(b"\n");
            let counted = parsed.items.len() + parsed.errors.len() + parsed.blank_lines;
            assert_eq!(
                counted,
                lines - usize::from(trailing_newline),
                "{}",
                path.display()
            );
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    // --- Real V7 exports ---------------------------------------------------------------------

    #[test]
    fn every_darwin_fixture_imports_as_one_line_unchanged() {
        let fixtures = darwin_fixtures();
        assert_eq!(fixtures.len(), 34);
        for (name, export) in &fixtures {
            let line = serde_json::to_string(export).unwrap();
            let item = parse_line(7, line.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let src = &export["item"];
            assert_eq!(item.id.as_str(), src["source_info"]["item_id"], "{name}");
            assert_eq!(item.name, src["name"], "{name}");
            assert_eq!(item.path, src["path"], "{name}");
            assert_eq!(&Value::from(item.slots.clone()), &src["slots"], "{name}");
            assert_eq!(
                &Value::from(item.annotations.clone()),
                &export["annotations"],
                "{name}"
            );
            let ds = &src["source_info"]["dataset"];
            let dataset = item.dataset.clone().unwrap();
            assert_eq!(
                (dataset.name.as_str(), dataset.slug.as_str()),
                (ds["name"].as_str().unwrap(), ds["slug"].as_str().unwrap())
            );
            assert!(item.tags.is_empty(), "{name}");
            assert_eq!(item.line, 7);
            assert_eq!(item.fingerprint.len(), 64);
            // Key order and whitespace do not matter: the pretty file gives the same item.
            let pretty = serde_json::to_string_pretty(export)
                .unwrap()
                .replace('\n', " ");
            assert_eq!(parse_line(7, pretty.as_bytes()).unwrap(), item, "{name}");
        }
    }

    #[test]
    fn darwin_item_level_properties_become_a_map() {
        let (name, export) = darwin_fixtures()
            .into_iter()
            .find(|(n, _)| n.starts_with("image_annotations_with_item_level_properties_image_1"))
            .unwrap();
        let item = one(&export.to_string()).unwrap();
        let expected = json!({
            "test_item_level_property_multi_select": ["1", "2"],
            "test_item_level_property_single_select": "1",
            "test_item_level_property_text": "sample text",
        });
        assert_eq!(Value::Object(item.properties), expected, "{name}");
        // Annotation-level properties stay inside the annotations, untouched.
        assert!(item.annotations[0]["properties"].is_array());
    }

    #[test]
    fn shared_item_ids_across_fixture_files_give_the_same_id() {
        let mut by_id: BTreeMap<String, Vec<NewItem>> = BTreeMap::new();
        for (name, export) in darwin_fixtures() {
            let item = one(&export.to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));
            by_id.entry(item.id.to_string()).or_default().push(item);
        }
        // 8 images exported in two halves, 8 + 8 more images, one multi-slot item, one video.
        assert_eq!(by_id.len(), 26);
        let pairs: Vec<_> = by_id.values().filter(|v| v.len() == 2).collect();
        assert_eq!(pairs.len(), 8);
        for pair in pairs {
            assert_eq!(pair[0].name, pair[1].name);
            // Same item, different annotations: "already present, content differs".
            assert_ne!(pair[0].fingerprint, pair[1].fingerprint);
        }
    }

    #[test]
    fn all_fixtures_as_one_jsonl_file() {
        let fixtures = darwin_fixtures();
        let mut input = String::new();
        for (_, export) in &fixtures {
            input.push_str(&serde_json::to_string(export).unwrap());
            input.push('\n');
        }
        let first = parse_str(&input);
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert_eq!(first.items.len(), 34);
        let lines: Vec<usize> = first.items.iter().map(|i| i.line).collect();
        assert_eq!(lines, (1..=34).collect::<Vec<_>>());
        // Re-running the import yields exactly the same items (ids, fingerprints and all).
        assert_eq!(parse_str(&input), first);
    }

    #[test]
    fn check_lines_gives_the_same_outcomes_with_only_ids() {
        let mut input = String::new();
        for (_, export) in darwin_fixtures() {
            input.push_str(&serde_json::to_string(&export).unwrap());
            input.push('\n');
        }
        input.push_str("{\"name\": 5}\n\n{\"name\": \"a\", \"annotations\": [{\"id\": \"x\"}]}\n");
        let all = |it: Lines<Cursor<&[u8]>>| it.map(Result::unwrap).collect::<Vec<_>>();
        let full = all(lines(Cursor::new(input.as_bytes())));
        let checked = all(check_lines(Cursor::new(input.as_bytes())));
        assert_eq!(full.len(), 37);
        assert_eq!(full.len(), checked.len());
        for (a, b) in full.into_iter().zip(checked) {
            match (a, b) {
                (LineOutcome::Item(a), LineOutcome::Item(b)) => {
                    assert_eq!(a.fingerprint.len(), 64);
                    assert_eq!(b, id_only(a.id.clone(), a.line));
                }
                (a, b) => assert_eq!(a, b),
            }
        }
    }

    /// The parallel check gives what `check_lines` gives, line for line and in order, over
    /// many batches (fixtures, bad, blank and CRLF lines, a BOM, an over-long line), for one
    /// to four checkers; and stops without hanging when its caller stops it.
    #[test]
    fn check_lines_parallel_gives_check_lines_outcomes_in_order() {
        let fixtures: Vec<String> = darwin_fixtures()
            .into_iter()
            .map(|(_, e)| serde_json::to_string(&e).unwrap())
            .collect();
        let mut input = String::from("\u{feff}");
        for i in 0..6000 {
            match i % 7 {
                0 => input.push_str(&format!("{{\"name\": \"n{i}.jpg\", \"tags\": [{i}]}}")),
                1 => input.push_str("   "),
                2 => input.push_str(&format!("{{\"id\": \"p{i}\", \"name\": \"n{i}.jpg\"}}\r")),
                _ => input.push_str(&fixtures[i % fixtures.len()]),
            }
            input.push('\n');
        }
        input.push_str(&"x".repeat(MAX_LINE_BYTES + 5));
        input.push_str("\n{\"name\": \"last\"}");
        let expected: Vec<LineOutcome> = check_lines(Cursor::new(input.as_bytes()))
            .map(Result::unwrap)
            .collect();
        assert_eq!(expected.len(), 6002);
        assert!(matches!(&expected[6000], LineOutcome::Error(e) if e.message.contains("16 MiB")));
        for workers in 1..=4 {
            let mut got = Vec::new();
            check_lines_parallel(Cursor::new(input.as_bytes()), workers, &mut |o| {
                got.push(o.unwrap());
                Ok::<(), ()>(())
            })
            .unwrap();
            assert!(got == expected, "{workers} checker(s) gave other outcomes");
        }
        let mut seen = 0;
        let stopped = check_lines_parallel(Cursor::new(input.as_bytes()), 2, &mut |_| {
            seen += 1;
            if seen == 2500 { Err("stop") } else { Ok(()) }
        });
        assert_eq!((stopped, seen), (Err("stop"), 2500));
    }

    /// A read error reaches the caller after every line read before it, and ends the lines.
    #[test]
    fn check_lines_parallel_reports_a_read_error_after_the_lines_before_it() {
        struct Failing(Cursor<Vec<u8>>);
        impl io::Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                match self.0.read(buf)? {
                    0 => Err(io::Error::other("disk gone")),
                    n => Ok(n),
                }
            }
        }
        let text: String = (0..3000)
            .map(|i| format!("{{\"name\": \"n{i}\"}}\n"))
            .collect();
        let reader = io::BufReader::with_capacity(4096, Failing(Cursor::new(text.into_bytes())));
        let mut got = Vec::new();
        check_lines_parallel(reader, 2, &mut |o| {
            got.push(o.map_err(|e| e.to_string()));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(got.len(), 3001);
        assert!(
            got[..3000]
                .iter()
                .all(|o| matches!(o, Ok(LineOutcome::Item(_))))
        );
        assert_eq!(got[3000], Err("disk gone".to_string()));
    }

    // --- Plain items and identity ------------------------------------------------------------

    #[test]
    fn plain_item_with_everything() {
        let item = one(
            r#"{"id": "cam-1:0042", "name": "a.jpg", "path": "/dir1", "dataset": {"name": "Cats", "slug": "cats"},
                "tags": ["urgent"], "properties": {"camera": "a", "score": 3},
                "slots": [{"type": "image", "slot_name": "0"}],
                "annotations": [{"id": "b92626e7-a1fd-4ecb-a418-31aa37069bc1", "name": "box", "bounding_box": {"h": 1, "w": 2, "x": 3, "y": 4}}]}"#,
        )
        .unwrap();
        assert_eq!(item.id.as_str(), "cam-1:0042");
        assert_eq!(item.path, "/dir1");
        assert_eq!(
            item.dataset,
            Some(DatasetRef {
                name: "Cats".into(),
                slug: "cats".into()
            })
        );
        assert_eq!(item.tags, vec!["urgent"]);
        assert_eq!(item.properties["score"], 3);
        assert_eq!(item.slots.len(), 1);
        assert_eq!(
            item.annotations[0]["id"],
            "b92626e7-a1fd-4ecb-a418-31aa37069bc1"
        );
    }

    #[test]
    fn plain_item_defaults() {
        let item = one(r#"{"name": "a.jpg", "path": null, "tags": null}"#).unwrap();
        assert_eq!(item.path, "/");
        assert_eq!(item.dataset, None);
        assert!(item.tags.is_empty() && item.properties.is_empty());
        assert!(item.slots.is_empty() && item.annotations.is_empty());
        let item = one(r#"{"name": "a.jpg", "dataset": "Street Scenes (2024)"}"#).unwrap();
        assert_eq!(
            item.dataset,
            Some(DatasetRef {
                name: "Street Scenes (2024)".into(),
                slug: "street-scenes-2024".into()
            })
        );
    }

    #[test]
    fn derived_ids_are_stable_uuid_v5_of_canonical_json() {
        let a = one(r#"{"name": "a.jpg", "tags": ["x", "y"], "properties": {"b": 1, "a": 2}}"#)
            .unwrap();
        let b =
            one(r#"{ "properties" : { "a" : 2 , "b" : 1 } , "tags":["x","y"],"name":"a.jpg" }"#)
                .unwrap();
        assert_eq!(
            a.id, b.id,
            "key order and whitespace must not change the id"
        );
        let expected = Uuid::new_v5(
            &ID_NAMESPACE,
            br#"{"name":"a.jpg","properties":{"a":2,"b":1},"tags":["x","y"]}"#,
        );
        assert_eq!(a.id.as_str(), expected.to_string());
        // Pinned: a changed namespace or canonical form would break re-import idempotency.
        assert_eq!(a.id.as_str(), "9d6611eb-4a4d-5179-af93-17266e43ad9a");
        assert!(is_valid_item_id(a.id.as_str()));
        let c = one(r#"{"name": "a.jpg", "tags": ["y", "x"]}"#).unwrap();
        assert_ne!(a.id, c.id);
        // A Darwin export without an item id also gets one from its content.
        let d = one(r#"{"version": "2.0", "item": {"name": "a.jpg"}}"#).unwrap();
        let d2 = one(r#"{"item": {"name": "a.jpg"}, "version": "2.0"}"#).unwrap();
        assert_eq!(d.id, d2.id);
        assert_eq!(d.id.as_str().len(), 36);
    }

    #[test]
    fn annotation_ids_are_kept_or_made_from_item_id_and_index() {
        let item = one(
            r#"{"id": "it-1", "name": "a.jpg", "annotations": [{"name": "tag", "tag": {}}, {"id": "40288025-5eea-406c-95fb-fd335df117fe", "name": "box"}, {"id": null, "name": "x"}]}"#,
        )
        .unwrap();
        let ids: Vec<&str> = item
            .annotations
            .iter()
            .map(|a| a["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids[0], Uuid::new_v5(&ID_NAMESPACE, b"it-1/0").to_string());
        assert_eq!(ids[1], "40288025-5eea-406c-95fb-fd335df117fe");
        assert_eq!(ids[2], Uuid::new_v5(&ID_NAMESPACE, b"it-1/2").to_string());
        assert!(
            ids.iter()
                .all(|id| id.len() == 36 && Uuid::try_parse(id).is_ok())
        );
        // The rest of each annotation is untouched.
        assert_eq!(item.annotations[0]["tag"], json!({}));
    }

    #[test]
    fn fingerprint_covers_content_not_id_or_layout() {
        let a = one(
            r#"{"id": "a", "name": "x.jpg", "tags": ["t"], "properties": {"p": 1, "q": [1.5]}}"#,
        )
        .unwrap();
        let b = one(
            r#"{"properties": {"q": [1.50], "p": 1}, "tags": ["t"], "name": "x.jpg", "id": "b"}"#,
        )
        .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        let c = one(
            r#"{"id": "a", "name": "x.jpg", "tags": ["u"], "properties": {"p": 1, "q": [1.5]}}"#,
        )
        .unwrap();
        assert_ne!(a.fingerprint, c.fingerprint);
        let d = one(r#"{"id": "a", "name": "x.jpg", "path": "/d", "tags": ["t"], "properties": {"p": 1, "q": [1.5]}}"#)
            .unwrap();
        assert_ne!(a.fingerprint, d.fingerprint);
        assert!(
            a.fingerprint
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn fingerprint_is_sha256_of_the_canonical_content() {
        let mut items: Vec<NewItem> = darwin_fixtures()
            .into_iter()
            .map(|(_, v)| one(&v.to_string()).unwrap())
            .collect();
        items.push(
            one(r#"{"name": "n", "tags": ["b", "a"], "properties": {"k": [1, {"z": null}]}}"#)
                .unwrap(),
        );
        for item in items {
            let content = json!({
                "name": item.name,
                "path": item.path,
                "dataset": item.dataset.as_ref().map(|d| json!({"name": d.name, "slug": d.slug})),
                "tags": item.tags,
                "properties": item.properties,
                "slots": item.slots,
                "annotations": item.annotations,
            });
            let digest = Sha256::digest(serde_jcs::to_string(&content).unwrap().as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(item.fingerprint, hex, "{}", item.name);
        }
    }

    #[test]
    fn darwin_properties_mapping() {
        let m = darwin_properties(Some(json!([
            {"name": "a", "value": "1"},
            {"name": "b", "value": "x"},
            {"name": "a", "value": "2"},
            {"name": "a", "value": "3"},
            {"name": "c"}
        ])))
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"a": ["1", "2", "3"], "b": "x", "c": null})
        );
        assert!(darwin_properties(Some(json!([{"value": 1}]))).is_err());
        assert_eq!(darwin_properties(Some(json!({"k": 1}))).unwrap()["k"], 1);
    }

    #[test]
    fn dataset_slugs_from_names() {
        let slug = |s: &str| dataset_from_name(s).map(|d| d.slug);
        assert_eq!(slug("cats").as_deref(), Some("cats"));
        assert_eq!(slug("  My Data_set 2 ").as_deref(), Some("my-data_set-2"));
        assert_eq!(slug("Ünïcode only: ü"), Some("n-code-only".into()));
        assert_eq!(slug("???"), None);
    }

    // --- Errors ------------------------------------------------------------------------------

    #[test]
    fn syntax_errors_name_line_column_and_a_sentence() {
        let p = parse_str(
            "{\"name\": \"a\"}\n\n{\"name\": \"a\", \"tags\": [\"x\"] \"path\": \"/\"}\n",
        );
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.blank_lines, 1);
        assert_eq!(
            p.errors[0].to_string(),
            "line 3, column 29: expected `,` or `}` after an object field"
        );
        assert_eq!(p.errors[0].column, Some(29));
        assert_eq!(
            err("{\"name\": \"a\" \"path\": \"/\"}"),
            "line 1, column 14: expected `,` or `}` after an object field"
        );
    }

    #[test]
    fn type_and_key_errors() {
        assert_eq!(
            err(r#"{"name": "a", "tags": 5}"#),
            "line 1, column 15: `tags` must be an array of strings, found a number"
        );
        assert_eq!(
            err(r#"{"name": "a", "tag": ["x"]}"#),
            "line 1, column 15: unknown key `tag` (did you mean `tags`?); an item line may have: \
             id, name, path, dataset, tags, properties, slots, annotations"
        );
        assert_eq!(
            err(r#"{"name": "a", "annotations": [{"name": "box"}, "x"]}"#),
            "line 1, column 15: `annotations` must be an array of objects, found a string at index 1"
        );
        assert_eq!(
            err("[]"),
            "line 1, column 1: expected a JSON object (a plain item or a Darwin JSON 2.0 export), found an array"
        );
        let e = one(r#"{"id": "a b", "name": "x"}"#).unwrap_err();
        assert!(
            e.message.contains("\"a b\"") && e.message.contains("A-Z, a-z, 0-9"),
            "{e}"
        );
    }

    #[test]
    fn darwin_exports_ignore_unknown_keys() {
        let item = one(
            r#"{"version": "2.0", "schema_ref": "x", "new_v7_field": {"a": 1}, "item": {"name": "a.jpg", "path": "/d", "future": 1, "source_info": {"item_id": "0192", "extra": true}}, "annotations": []}"#,
        )
        .unwrap();
        assert_eq!(
            (item.id.as_str(), item.name.as_str(), item.path.as_str()),
            ("0192", "a.jpg", "/d")
        );
    }

    #[test]
    fn non_utf8_is_reported_with_its_byte_and_column() {
        let e = parse_line(5, b"{\"name\": \"\xc3\xa9t\xff\"}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 5, column 13: the line is not valid UTF-8 (byte 0xff)"
        );
        // The rest of the file is still checked.
        let p = parse_jsonl(Cursor::new(b"\xfe\n{\"name\": \"ok\"}\n".to_vec())).unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(
            p.errors[0].to_string(),
            "line 1, column 1: the line is not valid UTF-8 (byte 0xfe)"
        );
    }

    #[test]
    fn truncated_last_line_is_an_error_and_earlier_lines_stand() {
        let p = parse_str("{\"name\": \"a\"}\n{\"name\": \"b\", \"tags\": [\"x\"");
        assert_eq!(p.items.len(), 1);
        assert_eq!(
            p.errors[0].to_string(),
            "line 2, column 26: the line ends inside an array; is it truncated?"
        );
        // A complete last line without a newline is fine.
        assert_eq!(
            parse_str("{\"name\": \"a\"}\n{\"name\": \"b\"}")
                .items
                .len(),
            2
        );
    }

    #[test]
    fn blank_lines_are_counted_and_line_numbers_stay_true() {
        let p = parse_str("\n \t\n{\"name\": \"a\"}\r\n\r\n{\"name\": \"b\"}\n");
        assert_eq!(p.blank_lines, 3);
        assert_eq!(
            p.items.iter().map(|i| i.line).collect::<Vec<_>>(),
            vec![3, 5]
        );
        assert!(p.errors.is_empty());
        assert_eq!(parse_str("").items.len() + parse_str("").blank_lines, 0);
        assert_eq!(
            err("   "),
            "line 1: the line is blank; expected a JSON object"
        );
    }

    #[test]
    fn a_50_mb_line_is_rejected_with_bounded_memory() {
        const LEN: u64 = 50 * 1024 * 1024;
        let input = std::io::repeat(b'x')
            .take(LEN)
            .chain(Cursor::new(b"\n{\"name\": \"after\"}\n".to_vec()));
        let mut reader = LineReader::new(BufReader::new(input));
        match reader.next_line().unwrap() {
            Some((1, RawLine::TooLong(len))) => assert_eq!(len, LEN),
            _ => panic!("expected line 1 to be too long"),
        }
        assert!(
            reader.peak_capacity <= 2 * MAX_LINE_BYTES,
            "buffered {} bytes of a line over the limit",
            reader.peak_capacity
        );
        match reader.next_line().unwrap() {
            Some((2, RawLine::Bytes(b))) => assert_eq!(b, b"{\"name\": \"after\"}"),
            _ => panic!("expected line 2"),
        }
        assert!(reader.next_line().unwrap().is_none());

        let input = std::io::repeat(b' ')
            .take(LEN)
            .chain(Cursor::new(b"\n{\"name\": \"after\"}\n".to_vec()));
        let p = parse_jsonl(BufReader::new(input)).unwrap();
        assert_eq!(
            p.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["line 1: the line is 52428800 bytes; the limit is 16 MiB"]
        );
        assert_eq!(p.items[0].name, "after");
        assert_eq!(p.items[0].line, 2);
    }

    #[test]
    fn the_limit_is_inclusive() {
        // Not JSON, so parsing fails fast; what matters is which error it is.
        let at_limit = "x".repeat(MAX_LINE_BYTES);
        let p = parse_str(&format!("{at_limit}\n"));
        assert_eq!(
            p.errors[0].to_string(),
            "line 1, column 1: expected a JSON value"
        );
        let over = "x".repeat(MAX_LINE_BYTES + 1);
        let p = parse_str(&format!("{over}\r\n"));
        assert_eq!(
            p.errors[0].message,
            "the line is 16777217 bytes; the limit is 16 MiB"
        );
        assert_eq!(
            parse_line(2, over.as_bytes()).unwrap_err().message,
            "the line is 16777217 bytes; the limit is 16 MiB"
        );
        // A CRLF line of exactly the limit is still within it.
        let p = parse_str(&format!("{at_limit}\r\n"));
        assert_eq!(p.errors[0].message, "expected a JSON value");
    }

    #[test]
    fn read_errors_are_io_errors() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let e = parse_jsonl(BufReader::new(Broken)).unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
        let mut it = lines(BufReader::new(Broken));
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    #[test]
    fn line_error_display() {
        let e = LineError {
            line: 4,
            column: None,
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "line 4: m");
        let e = LineError {
            line: 3,
            column: Some(17),
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "line 3, column 17: m");
    }

    // --- Canonical JSON ----------------------------------------------------------------------

    #[test]
    fn canonical_json_matches_rfc_8785_examples() {
        // RFC 8785 §3.2.2.
        let v: Value = serde_json::from_str(
            r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
                "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
                "literals": [null, true, false]}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        // RFC 8785 §3.2.3: keys sort by UTF-16 code units (the emoji's surrogates sort before
        // U+FB33, unlike UTF-8 byte order).
        let v: Value = serde_json::from_str(
            r#"{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
                "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&v),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
             \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
             \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
    }

    #[test]
    fn canonical_numbers_print_as_ecmascript_does() {
        let cases: &[(Value, &str)] = &[
            (json!(0), "0"),
            (json!(-0.0), "0"),
            (json!(1.0), "1"),
            (json!(-1.5), "-1.5"),
            (json!(1e20), "100000000000000000000"),
            (json!(1e21), "1e+21"),
            (json!(123456789012345680000.0), "123456789012345680000"),
            (json!(0.000001), "0.000001"),
            (json!(1e-7), "1e-7"),
            (json!(1.5e-7), "1.5e-7"),
            (json!(5e-324), "5e-324"),
            (json!(1.7976931348623157e308), "1.7976931348623157e+308"),
            (json!(9007199254740992u64), "9007199254740992"),
            (json!(9007199254740993u64), "9007199254740992"),
            (json!(u64::MAX), "18446744073709552000"),
            (json!(i64::MIN), "-9223372036854776000"),
            (json!(0.1 + 0.2), "0.30000000000000004"),
        ];
        for (v, want) in cases {
            assert_eq!(canonical_json(v), *want, "{v}");
        }
    }

    #[test]
    fn canonical_json_agrees_with_serde_jcs_on_every_fixture() {
        for (name, export) in darwin_fixtures() {
            assert_eq!(
                canonical_json(&export),
                serde_jcs::to_string(&export).unwrap(),
                "{name}"
            );
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_json_agrees_with_serde_jcs(v in arb_json()) {
            prop_assert_eq!(canonical_json(&v), serde_jcs::to_string(&v).unwrap());
        }

        #[test]
        fn parse_line_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_line(1, &bytes);
        }

        #[test]
        fn parse_line_never_panics_on_json(v in arb_json()) {
            let _ = parse_line(1, v.to_string().as_bytes());
            // Wrapped as a plain item or a Darwin export, it still never panics.
            let _ = parse_line(1, json!({"name": "a", "properties": {"v": v}}).to_string().as_bytes());
            let _ = parse_line(1, json!({"version": "2.0", "item": v}).to_string().as_bytes());
        }

        #[test]
        fn good_items_always_satisfy_the_invariants(
            name in "[^\u{0}]{1,20}",
            tags in prop::collection::vec("[a-z]{1,5}", 0..4),
            n in 0usize..4,
        ) {
            let anns: Vec<Value> = (0..n).map(|i| json!({"name": format!("a{i}")})).collect();
            let line = json!({"name": name, "tags": tags, "annotations": anns}).to_string();
            if let Ok(item) = parse_line(1, line.as_bytes()) {
                prop_assert!(is_valid_item_id(item.id.as_str()));
                prop_assert_eq!(item.annotations.len(), n);
                for a in &item.annotations {
                    let id = a["id"].as_str().unwrap();
                    prop_assert!(id.len() == 36 && Uuid::try_parse(id).is_ok());
                }
                prop_assert_eq!(parse_line(1, line.as_bytes()).unwrap(), item);
            }
        }
    }

    #[test]
    fn duplicate_keys_are_errors_at_any_depth() {
        assert_eq!(
            err(r#"{"name": "a", "slots": [{"type": "image", "type": "video"}]}"#),
            "line 1, column 48: duplicate key `type` in one object"
        );
    }
}
