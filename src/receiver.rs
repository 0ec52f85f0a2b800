//! A small webhook receiver with scripted behaviour, for the demo, the integration tests and the
//! benchmarks (`hookops receiver`).
//!
//! It answers every request according to a [`Script`] (`PATH=BEHAVIOUR` pairs, `*` for the rest):
//! plain statuses, `Retry-After`, failing the first N tries of each delivery, deterministic
//! flakiness, slowness, hanging, oversized, endless or trickling bodies, a connection cut
//! mid-body, a redirect, or bytes that are not HTTP at all. Every request is recorded the moment
//! it arrives (so a hanging one is visible too) and its status is filled in when it is answered.
//! Invariants: no lock is held across an `.await`; the ok path does one copy of the body and no
//! other work beyond recording; printing and the JSON record happen on their own thread, never
//! in the request path. Signatures are checked against Standard Webhooks `whsec_` keys when any
//! are given.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use http_body::{Frame, SizeHint};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Sleep;

/// Size of the `big-body` response: 10 MiB.
pub const BIG_BODY_LEN: u64 = 10 * 1024 * 1024;
/// What a `reset` response promises in `Content-Length` before the connection is dropped.
pub const RESET_PROMISED_LEN: u64 = 1024 * 1024;
/// Bytes of a `reset` response body actually sent before the connection is dropped.
pub const RESET_SENT_LEN: usize = 1024;
/// Largest request body the receiver reads; larger ones are answered 400.
const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;
/// How long `shutdown` waits for open connections before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
static OK_BODY: &[u8] = br#"{"ok":true}"#;
static GARBAGE: &[u8] =
    b"\x00\xff\xfeSSH-2.0-this is not HTTP, sent by the hookops receiver script\r\n\r\n";

const BEHAVIOUR_HELP: &str = "ok, a status such as 500, 429:retry-after=2, fail-first-N, flaky:P%, slow:15s, hang, \
     big-body, endless-body, trickle, reset, redirect, garbage or callback:STAGE";

// ---------------------------------------------------------------------------------------------
// Script
// ---------------------------------------------------------------------------------------------

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 `{"ok":true}`.
    Ok,
    /// That status with a short JSON body (`{"ok":false,"status":500}`; empty for 204/205/304).
    Status(u16),
    /// 500 for the first N requests of each distinct `webhook-id`, then 200: retries of one
    /// delivery succeed on attempt N+1. Requests without a `webhook-id` share one counter.
    FailFirst(u32),
    /// That status with `Retry-After: secs` (`429:retry-after=2`, `503:retry-after=5`).
    RetryAfter { status: u16, secs: u64 },
    /// Waits that long, then 200 `{"ok":true}` (`slow:15s`, `slow:500ms`).
    Slow(Duration),
    /// 500 for this percentage of requests, decided by a hash of (`webhook-id`,
    /// `hookops-attempt`) so runs repeat exactly (`flaky:30%`).
    Flaky(u8),
    /// Reads the request and never answers.
    Hang,
    /// 200 with a 10 MiB body ([`BIG_BODY_LEN`]).
    BigBody,
    /// 200 with a chunked body that never ends.
    EndlessBody,
    /// 200 with a chunked body that trickles one byte a second, without end.
    Trickle,
    /// 200 promising [`RESET_PROMISED_LEN`] bytes, then the connection is dropped after
    /// [`RESET_SENT_LEN`].
    Reset,
    /// 301 with `Location: /`.
    Redirect,
    /// Bytes that are not HTTP at all, then the connection is closed.
    Garbage,
    /// 200 `{"ok":true}`, then a V7-style "Set Stage" call back to the hookops API
    /// (`POST /v1/items/stage`) moving the delivered item to this stage (`callback:triage`).
    /// The API's address and token are the script's [`CallbackApi`].
    Callback(StageSlug),
}

/// A stage id kept inline, so [`Behaviour`] stays `Copy`: at most 64 bytes (design §6).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StageSlug {
    bytes: [u8; 64],
    len: u8,
}

impl StageSlug {
    pub fn new(s: &str) -> Option<StageSlug> {
        if !crate::model::is_valid_slug(s) {
            return None;
        }
        let mut bytes = [0u8; 64];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(StageSlug {
            bytes,
            len: s.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

impl fmt::Debug for StageSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Where `callback:STAGE` calls back: the hookops API's base URL and a bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct CallbackApi {
    /// e.g. `http://127.0.0.1:8787`.
    pub url: String,
    pub token: String,
}

impl fmt::Debug for CallbackApi {
    // The token is a secret: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallbackApi {{ url: {:?}, token: **** }}", self.url)
    }
}

impl Behaviour {
    /// A word for the printed log line, empty where the status says it all.
    fn note(self) -> &'static str {
        match self {
            Behaviour::Ok | Behaviour::Status(_) | Behaviour::RetryAfter { .. } => "",
            Behaviour::FailFirst(_) => "fail-first",
            Behaviour::Slow(_) => "slow",
            Behaviour::Flaky(_) => "flaky",
            Behaviour::Hang => "hang: no answer",
            Behaviour::BigBody => "big-body",
            Behaviour::EndlessBody => "endless-body",
            Behaviour::Trickle => "trickle",
            Behaviour::Reset => "reset mid-body",
            Behaviour::Redirect => "redirect",
            Behaviour::Garbage => "garbage: not HTTP",
            Behaviour::Callback(_) => "callback",
        }
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behaviour::Ok => f.write_str("ok"),
            Behaviour::Status(code) => write!(f, "{code}"),
            Behaviour::FailFirst(n) => write!(f, "fail-first-{n}"),
            Behaviour::RetryAfter { status, secs } => write!(f, "{status}:retry-after={secs}"),
            Behaviour::Slow(d) => write!(f, "slow:{}", humantime::format_duration(*d)),
            Behaviour::Flaky(p) => write!(f, "flaky:{p}%"),
            Behaviour::Hang => f.write_str("hang"),
            Behaviour::BigBody => f.write_str("big-body"),
            Behaviour::EndlessBody => f.write_str("endless-body"),
            Behaviour::Trickle => f.write_str("trickle"),
            Behaviour::Reset => f.write_str("reset"),
            Behaviour::Redirect => f.write_str("redirect"),
            Behaviour::Garbage => f.write_str("garbage"),
            Behaviour::Callback(stage) => write!(f, "callback:{}", stage.as_str()),
        }
    }
}

impl FromStr for Behaviour {
    type Err = ScriptError;

    fn from_str(s: &str) -> Result<Self, ScriptError> {
        parse_behaviour(s.trim(), s.trim())
    }
}

/// A receiver script could not be parsed. Each message is one sentence naming the bad part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error(
        "the receiver script is empty: write PATH=BEHAVIOUR pairs such as `/validate=fail-first-2,*=ok`"
    )]
    Empty,
    #[error("entry {index} of the receiver script is empty: remove the extra comma")]
    EmptyEntry { index: usize },
    #[error("`{entry}` has no behaviour: write `{entry}=BEHAVIOUR`, e.g. `{entry}=500`")]
    MissingBehaviour { entry: String },
    #[error(
        "`{path}` in `{entry}` is not a path: write one starting with `/`, or `*` for every other path"
    )]
    BadPath { entry: String, path: String },
    #[error("path `{path}` appears twice in the receiver script: keep one rule per path")]
    DuplicatePath { path: String },
    #[error("unknown behaviour `{behaviour}` in `{entry}`: use {BEHAVIOUR_HELP}")]
    UnknownBehaviour { entry: String, behaviour: String },
    #[error("status `{status}` in `{entry}` is not an HTTP status from 200 to 599")]
    BadStatus { entry: String, status: String },
    #[error(
        "`{value}` in `{entry}` is not a retry-after: write STATUS:retry-after=SECONDS, e.g. `429:retry-after=2`"
    )]
    BadRetryAfter { entry: String, value: String },
    #[error(
        "`{value}` in `{entry}` is not a count: write fail-first-N with N a whole number, e.g. `fail-first-2`"
    )]
    BadCount { entry: String, value: String },
    #[error("`{value}` in `{entry}` is not a percentage from 0 to 100: write e.g. `flaky:30%`")]
    BadPercent { entry: String, value: String },
    #[error("`{value}` in `{entry}` is not a duration: write e.g. `slow:15s` or `slow:500ms`")]
    BadDuration { entry: String, value: String },
}

fn parse_behaviour(entry: &str, text: &str) -> Result<Behaviour, ScriptError> {
    let fixed = match text {
        "ok" => Some(Behaviour::Ok),
        "hang" => Some(Behaviour::Hang),
        "big-body" => Some(Behaviour::BigBody),
        "endless-body" => Some(Behaviour::EndlessBody),
        "trickle" => Some(Behaviour::Trickle),
        "reset" => Some(Behaviour::Reset),
        "redirect" => Some(Behaviour::Redirect),
        "garbage" => Some(Behaviour::Garbage),
        _ => None,
    };
    if let Some(b) = fixed {
        return Ok(b);
    }
    if let Some(stage) = text.strip_prefix("callback:") {
        return StageSlug::new(stage.trim())
            .map(Behaviour::Callback)
            .ok_or_else(|| ScriptError::UnknownBehaviour {
                entry: entry.to_owned(),
                behaviour: text.to_owned(),
            });
    }
    if let Some(n) = text.strip_prefix("fail-first-") {
        return n
            .parse()
            .map(Behaviour::FailFirst)
            .map_err(|_| ScriptError::BadCount {
                entry: entry.to_owned(),
                value: n.to_owned(),
            });
    }
    if let Some(p) = text.strip_prefix("flaky:") {
        let digits = p.strip_suffix('%').unwrap_or(p);
        return match digits.parse::<u8>() {
            Ok(pct) if pct <= 100 => Ok(Behaviour::Flaky(pct)),
            _ => Err(ScriptError::BadPercent {
                entry: entry.to_owned(),
                value: p.to_owned(),
            }),
        };
    }
    if let Some(d) = text.strip_prefix("slow:") {
        return humantime::parse_duration(d)
            .map(Behaviour::Slow)
            .map_err(|_| ScriptError::BadDuration {
                entry: entry.to_owned(),
                value: d.to_owned(),
            });
    }
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        let (code, rest) = match text.split_once(':') {
            Some((code, rest)) => (code, Some(rest)),
            None => (text, None),
        };
        let status = match code.parse::<u16>() {
            Ok(s) if (200..=599).contains(&s) => s,
            _ => {
                return Err(ScriptError::BadStatus {
                    entry: entry.to_owned(),
                    status: code.to_owned(),
                });
            }
        };
        let Some(rest) = rest else {
            return Ok(Behaviour::Status(status));
        };
        let secs = rest
            .strip_prefix("retry-after=")
            .and_then(|s| s.parse::<u64>().ok());
        return match secs {
            Some(secs) => Ok(Behaviour::RetryAfter { status, secs }),
            None => Err(ScriptError::BadRetryAfter {
                entry: entry.to_owned(),
                value: rest.to_owned(),
            }),
        };
    }
    Err(ScriptError::UnknownBehaviour {
        entry: entry.to_owned(),
        behaviour: text.to_owned(),
    })
}

/// Which behaviour answers which path.
///
/// Parsed from `PATH=BEHAVIOUR` pairs separated by commas, `*` standing for every other path;
/// a bare behaviour (`fail-first-2`) means `*=fail-first-2`. Matching is on the exact path
/// without the query, then `*`; with rules but no match the answer is 404. The default script
/// (no script at all) answers 200 `{"ok":true}` everywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script {
    rules: Vec<(String, Behaviour)>,
    fallback: Option<Behaviour>,
    /// Where `callback:STAGE` rules call back (none: they only answer 200).
    callback_api: Option<CallbackApi>,
}

impl Script {
    /// Sets where `callback:STAGE` rules call back.
    pub fn with_callback_api(mut self, api: CallbackApi) -> Script {
        self.callback_api = Some(api);
        self
    }

    /// The behaviour for a request path, or `None` when the script has no rule for it.
    pub fn behaviour_for(&self, path: &str) -> Option<Behaviour> {
        if self.rules.is_empty() && self.fallback.is_none() {
            return Some(Behaviour::Ok);
        }
        self.rules
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| *b)
            .or(self.fallback)
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rules.is_empty() && self.fallback.is_none() {
            return f.write_str("*=ok");
        }
        let mut sep = "";
        for (path, b) in &self.rules {
            write!(f, "{sep}{path}={b}")?;
            sep = ",";
        }
        if let Some(b) = self.fallback {
            write!(f, "{sep}*={b}")?;
        }
        Ok(())
    }
}

impl FromStr for Script {
    type Err = ScriptError;

    fn from_str(spec: &str) -> Result<Self, ScriptError> {
        if spec.trim().is_empty() {
            return Err(ScriptError::Empty);
        }
        let mut script = Script::default();
        for (i, raw) in spec.split(',').enumerate() {
            let entry = raw.trim();
            if entry.is_empty() {
                return Err(ScriptError::EmptyEntry { index: i + 1 });
            }
            // Only an entry that starts like a path has one: `429:retry-after=2` has a `=` too.
            let (path, text) = if entry.starts_with('/') || entry.starts_with('*') {
                match entry.split_once('=') {
                    Some((p, b)) => (p.trim(), b.trim()),
                    None => {
                        return Err(ScriptError::MissingBehaviour {
                            entry: entry.to_owned(),
                        });
                    }
                }
            } else {
                ("*", entry)
            };
            if path != "*" && (!path.starts_with('/') || path.contains(char::is_whitespace)) {
                return Err(ScriptError::BadPath {
                    entry: entry.to_owned(),
                    path: path.to_owned(),
                });
            }
            let behaviour = parse_behaviour(entry, text)?;
            let duplicate = if path == "*" {
                script.fallback.replace(behaviour).is_some()
            } else if script.rules.iter().any(|(p, _)| p == path) {
                true
            } else {
                script.rules.push((path.to_owned(), behaviour));
                false
            };
            if duplicate {
                return Err(ScriptError::DuplicatePath {
                    path: path.to_owned(),
                });
            }
        }
        Ok(script)
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

/// A receiver secret is not a Standard Webhooks key. The secret itself is never in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "receiver secret {index} is not a Standard Webhooks key: expected `whsec_` followed by base64"
)]
pub struct SecretError {
    /// 1-based position of the secret in the list.
    pub index: usize,
}

/// Decodes receiver secret `index` (1-based) with the dispatcher's own decoder
/// ([`crate::dispatch::sign`]), so every key `workflow apply` accepts (unpadded base64
/// included) verifies here too.
fn decode_key(secret: &str, index: usize) -> Result<Vec<u8>, SecretError> {
    crate::dispatch::sign::decode_secret(secret).map_err(|_| SecretError { index })
}

/// True when any `v1,<base64>` entry of `signature` (space-separated) verifies under one of
/// `keys` for `{id}.{timestamp}.{body}`. A timestamp that is not an integer verifies nothing
/// (the sender signs the integer's decimal form).
fn verify_with(keys: &[Vec<u8>], id: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Ok(ts) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    keys.iter()
        .any(|key| crate::dispatch::sign::verify_key(key, id, ts, body, signature))
}

/// Verifies a Standard Webhooks signature header against one `whsec_` secret. The timestamp's
/// age is not checked: the receiver is a test tool and replays are something it should see.
pub fn verify_signature(
    secret: &str,
    webhook_id: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
) -> Result<bool, SecretError> {
    let key = decode_key(secret, 1)?;
    Ok(verify_with(&[key], webhook_id, timestamp, body, signature))
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// One request as the receiver saw it, recorded on arrival.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    pub at: DateTime<Utc>,
    pub method: String,
    pub path: String,
    /// The raw query string without `?`, empty when there is none.
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// In the JSON record: a string when the body is UTF-8, else `{"base64": "…"}`.
    #[serde(with = "body_serde")]
    pub body: Vec<u8>,
    pub webhook_id: Option<String>,
    /// The `hookops-attempt` header.
    pub attempt: Option<u32>,
    /// `None` when the receiver has no secrets.
    pub signature_valid: Option<bool>,
    /// The status answered; 0 while unanswered and for answers that carry no status (hang,
    /// garbage, a client that left first).
    pub status: u16,
}

impl Received {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn without_body(&self) -> Received {
        Received {
            at: self.at,
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            headers: Vec::new(),
            body: Vec::new(),
            webhook_id: self.webhook_id.clone(),
            attempt: self.attempt,
            signature_valid: self.signature_valid,
            status: self.status,
        }
    }
}

mod body_serde {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

    use super::BASE64;

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Binary { base64: String },
    }

    pub fn serialize<S: Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(body) {
            Ok(text) => s.serialize_str(text),
            Err(_) => Repr::Binary {
                base64: BASE64.encode(body),
            }
            .serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(text) => Ok(text.into_bytes()),
            Repr::Binary { base64 } => BASE64.decode(base64).map_err(D::Error::custom),
        }
    }
}

/// The one-line summary printed per request, its time in UTC like every time the CLI prints:
/// `12:00:01Z POST /validate?x=1 msg_… attempt 2 sig ok -> 500`.
fn format_line(r: &Received, note: &str) -> String {
    let mut line = format!("{} {} {}", r.at.format("%H:%M:%SZ"), r.method, r.path);
    if !r.query.is_empty() {
        line.push('?');
        line.push_str(&r.query);
    }
    line.push(' ');
    line.push_str(r.webhook_id.as_deref().unwrap_or("-"));
    if let Some(n) = r.attempt {
        line.push_str(&format!(" attempt {n}"));
    }
    match r.signature_valid {
        Some(true) => line.push_str(" sig ok"),
        Some(false) => line.push_str(" sig BAD"),
        None => {}
    }
    if r.status == 0 {
        line.push_str(" -> -");
    } else {
        line.push_str(&format!(" -> {}", r.status));
    }
    if !note.is_empty() {
        line.push_str(&format!(" ({note})"));
    }
    // Paths and ids come from the network: keep control characters off the operator's terminal.
    line.retain(|c| !c.is_control());
    line
}

// ---------------------------------------------------------------------------------------------
// Connection wrapper: lets a handler turn its connection into garbage or drop it
// ---------------------------------------------------------------------------------------------

const MODE_NORMAL: u8 = 0;
const MODE_GARBAGE: u8 = 1;
const MODE_ABORT: u8 = 2;

/// Per-connection switch a handler flips; hyper's next write then sees it.
struct ConnCtl {
    mode: AtomicU8,
}

/// Connection info handed to each request (axum's `ConnectInfo`).
#[derive(Clone)]
struct ConnHandle(Arc<ConnCtl>);

impl ConnHandle {
    fn set(&self, mode: u8) {
        self.0.mode.store(mode, Ordering::Release);
    }
}

struct ConnIo {
    stream: TcpStream,
    ctl: Arc<ConnCtl>,
    garbage_sent: usize,
}

impl ConnIo {
    /// Writes instead of hyper's bytes when the handler asked for garbage or an abort. Reports
    /// an error afterwards, so hyper closes the connection.
    fn poll_special(&mut self, cx: &mut Context<'_>, mode: u8) -> Poll<io::Result<usize>> {
        if mode == MODE_GARBAGE {
            while self.garbage_sent < GARBAGE.len() {
                let n = ready!(
                    Pin::new(&mut self.stream).poll_write(cx, &GARBAGE[self.garbage_sent..])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.garbage_sent += n;
            }
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the receiver script drops this connection",
        )))
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.ctl.mode.load(Ordering::Acquire) {
            MODE_NORMAL => Pin::new(&mut this.stream).poll_write(cx, buf),
            mode => this.poll_special(cx, mode),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.ctl.mode.load(Ordering::Acquire) {
            MODE_NORMAL => Pin::new(&mut this.stream).poll_write_vectored(cx, bufs),
            mode => this.poll_special(cx, mode),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

struct ReceiverListener {
    inner: TcpListener,
}

impl Listener for ReceiverListener {
    type Io = ConnIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ConnIo, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Small JSON answers must not wait for Nagle: the latency benchmark uses us.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!("receiver: set_nodelay failed: {e}");
                    }
                    let ctl = Arc::new(ConnCtl {
                        mode: AtomicU8::new(MODE_NORMAL),
                    });
                    return (
                        ConnIo {
                            stream,
                            ctl,
                            garbage_sent: 0,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("receiver: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Connected<IncomingStream<'_, ReceiverListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, ReceiverListener>) -> Self {
        ConnHandle(stream.io().ctl.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Response bodies
// ---------------------------------------------------------------------------------------------

/// Repeats [`CHUNK`]: a fixed total with `Content-Length` (big-body) or forever (endless-body).
/// Borrowing a static buffer means even a 10 MiB answer allocates nothing.
struct Repeat {
    remaining: Option<u64>,
    stop: watch::Receiver<bool>,
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if *self.stop.borrow() {
            return Poll::Ready(None);
        }
        let chunk = CHUNK.len() as u64;
        let n = match self.remaining {
            Some(0) => return Poll::Ready(None),
            Some(left) => {
                let n = left.min(chunk);
                self.remaining = Some(left - n);
                n
            }
            None => chunk,
        };
        // n <= CHUNK.len(), so the cast and the slice are in range.
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK[..n as usize],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// One byte now and one every second after, until the client leaves or the receiver stops.
struct Trickle {
    next: Pin<Box<Sleep>>,
    stop: watch::Receiver<bool>,
}

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if *self.stop.borrow() {
            return Poll::Ready(None);
        }
        ready!(self.next.as_mut().poll(cx));
        let at = self.next.deadline() + Duration::from_secs(1);
        self.next.as_mut().reset(at);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b".")))))
    }
}

/// Sends [`RESET_SENT_LEN`] bytes of a promised [`RESET_PROMISED_LEN`], yields once so hyper
/// flushes the head and that chunk, then fails: hyper drops the connection mid-body.
struct Cut {
    step: u8,
}

impl http_body::Body for Cut {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.step = self.step.saturating_add(1);
        match self.step {
            1 => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                &CHUNK[..RESET_SENT_LEN],
            ))))),
            2 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            _ => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the receiver script cuts this response mid-body",
            )))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(RESET_PROMISED_LEN)
    }
}

// ---------------------------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------------------------

/// How to run a receiver.
#[derive(Clone)]
pub struct ReceiverOptions {
    /// Where to listen; port 0 picks a free port (see [`Receiver::addr`]).
    pub addr: SocketAddr,
    pub script: Script,
    /// `whsec_` keys. When any are given, a request whose Standard Webhooks signature matches
    /// none of them is answered 401 whatever the script says; empty means no check.
    pub secrets: Vec<String>,
    /// Do not print a line per request.
    pub quiet: bool,
    /// Keep every request in memory for [`Receiver::received`]. Off for long runs (the CLI,
    /// benchmarks), where the log would only grow: then `received` is empty and `count` and
    /// `wait_for` still work.
    pub keep_log: bool,
}

impl Default for ReceiverOptions {
    /// 127.0.0.1 on a random port, no script, no secrets, quiet (what tests want).
    fn default() -> Self {
        ReceiverOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            script: Script::default(),
            secrets: Vec::new(),
            quiet: true,
            keep_log: true,
        }
    }
}

impl fmt::Debug for ReceiverOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiverOptions")
            .field("addr", &self.addr)
            .field("script", &self.script.to_string())
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("quiet", &self.quiet)
            .field("keep_log", &self.keep_log)
            .finish()
    }
}

struct Event {
    received: Received,
    note: &'static str,
}

struct Shared {
    script: RwLock<Arc<Script>>,
    /// Requests answered by a fail-first rule, per `webhook-id`; reset by `set_script`.
    fail_counts: Mutex<HashMap<String, u32>>,
    log: Mutex<Vec<Received>>,
    keep_log: bool,
    /// Requests arrived so far.
    count: watch::Sender<usize>,
    stop: watch::Sender<bool>,
    /// Decoded signing keys.
    keys: Vec<Vec<u8>>,
    /// Set when printing or recording; `with_body` only when recording needs the body.
    events: Option<(mpsc::UnboundedSender<Event>, bool)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind: keep serving it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn script(&self) -> Arc<Script> {
        self.script
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records a request and returns its index in the log, and the request itself when it is
    /// not kept in the log but still wanted for printing or recording.
    fn arrive(&self, r: Received) -> (usize, Option<Received>) {
        if !self.keep_log {
            let mut seq = 0;
            self.count.send_modify(|c| {
                seq = *c;
                *c += 1;
            });
            return (seq, self.events.is_some().then_some(r));
        }
        let len = {
            let mut log = lock(&self.log);
            log.push(r);
            log.len()
        };
        self.count.send_modify(|c| *c = (*c).max(len));
        (len - 1, None)
    }

    fn finish(&self, seq: usize, pending: Option<Received>, status: u16, note: &'static str) {
        if let Some(mut r) = pending {
            r.status = status;
            if let Some((tx, with_body)) = &self.events {
                let received = if *with_body { r } else { r.without_body() };
                let _ = tx.send(Event { received, note });
            }
            return;
        }
        let event = {
            let mut log = lock(&self.log);
            // seq came from `arrive` and the log only grows, so it is in range.
            let Some(r) = log.get_mut(seq) else { return };
            r.status = status;
            self.events.as_ref().map(|(tx, with_body)| {
                let received = if *with_body {
                    r.clone()
                } else {
                    r.without_body()
                };
                (tx, Event { received, note })
            })
        };
        if let Some((tx, event)) = event {
            // The writer thread only goes away with the process: nothing to do if it has.
            let _ = tx.send(event);
        }
    }

    fn fail_first_count(&self, id: String) -> u32 {
        let mut counts = lock(&self.fail_counts);
        let n = counts.entry(id).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        // The sender lives in `self`, so this only returns once stop is set.
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Fills in the answer of one recorded request; a request dropped unanswered (the client left
/// mid-way) is finished with status 0.
struct Answer<'a> {
    shared: &'a Shared,
    seq: usize,
    /// The request, when the log does not keep it (see [`ReceiverOptions::keep_log`]).
    pending: Option<Received>,
    done: bool,
}

impl Answer<'_> {
    fn reply(mut self, response: Response, note: &'static str) -> Response {
        self.shared.finish(
            self.seq,
            self.pending.take(),
            response.status().as_u16(),
            note,
        );
        self.done = true;
        response
    }

    fn none(mut self, note: &'static str) {
        self.shared.finish(self.seq, self.pending.take(), 0, note);
        self.done = true;
    }
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared
                .finish(self.seq, self.pending.take(), 0, "client went away");
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn ok_response() -> Response {
    respond(
        StatusCode::OK,
        "application/json",
        Body::from(Bytes::from_static(OK_BODY)),
    )
}

fn status_response(code: u16) -> Response {
    // Codes are validated to 200..=599 at parse time; 500 is the fallback for the impossible.
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if matches!(code, 204 | 205 | 304) {
        Body::empty()
    } else {
        Body::from(format!(
            r#"{{"ok":{},"status":{code}}}"#,
            status.is_success()
        ))
    };
    respond(status, "application/json", body)
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Whether `flaky:P%` fails this request: FNV-1a of (id, attempt) through a splitmix64 finaliser
/// (FNV's low bits are weak), so the same delivery attempt gets the same answer in every run.
fn flaky_fails(id: &str, attempt: u32, percent: u8) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain([0xff]).chain(attempt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h % 100 < u64::from(percent)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let (body, body_ok) = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(b) => (b, true),
        Err(_) => (Bytes::new(), false),
    };
    let headers = &parts.headers;
    let webhook_id = header_text(headers, "webhook-id");
    let attempt = headers
        .get("hookops-attempt")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    let signature_valid = (!shared.keys.is_empty()).then(|| {
        let get = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        match (
            get("webhook-id"),
            get("webhook-timestamp"),
            get("webhook-signature"),
        ) {
            (Some(id), Some(ts), Some(sig)) => verify_with(&shared.keys, id, ts, &body, sig),
            _ => false,
        }
    });
    let behaviour = shared.script().behaviour_for(parts.uri.path());
    let rule_id = match behaviour {
        Some(Behaviour::FailFirst(_) | Behaviour::Flaky(_)) => webhook_id.clone(),
        _ => None,
    };
    let received = Received {
        at: Utc::now(),
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        webhook_id,
        attempt,
        signature_valid,
        status: 0,
    };
    let (seq, pending) = shared.arrive(received);
    let answer = Answer {
        shared: &shared,
        seq,
        pending,
        done: false,
    };

    if !body_ok {
        let r = respond(
            StatusCode::BAD_REQUEST,
            "application/json",
            Body::from(r#"{"ok":false,"error":"request body could not be read"}"#),
        );
        return answer.reply(r, "unreadable body");
    }
    if signature_valid == Some(false) {
        let r = respond(
            StatusCode::UNAUTHORIZED,
            "application/json",
            Body::from(r#"{"ok":false,"error":"invalid webhook signature"}"#),
        );
        return answer.reply(r, "bad signature");
    }
    let Some(behaviour) = behaviour else {
        let r = respond(
            StatusCode::NOT_FOUND,
            "application/json",
            Body::from(r#"{"ok":false,"error":"the receiver script has no rule for this path"}"#),
        );
        return answer.reply(r, "no rule");
    };
    let note = behaviour.note();
    let ok = |r: Response| (r, note);
    let (response, note) = match behaviour {
        Behaviour::Ok => ok(ok_response()),
        Behaviour::Status(code) => ok(status_response(code)),
        Behaviour::RetryAfter { status, secs } => {
            let mut r = status_response(status);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            ok(r)
        }
        Behaviour::FailFirst(n) => {
            let seen = shared.fail_first_count(rule_id.unwrap_or_default());
            ok(if seen <= n {
                status_response(500)
            } else {
                ok_response()
            })
        }
        Behaviour::Flaky(pct) => {
            // Without an attempt header the arrival order stands in, which repeats for a
            // repeated sequence of requests.
            let n = attempt.unwrap_or(u32::try_from(seq).unwrap_or(u32::MAX));
            let fails = flaky_fails(rule_id.as_deref().unwrap_or(""), n, pct);
            ok(if fails {
                status_response(500)
            } else {
                ok_response()
            })
        }
        Behaviour::Slow(d) => {
            tokio::select! {
                () = tokio::time::sleep(d) => ok(ok_response()),
                () = shared.stopped() => {
                    conn.set(MODE_ABORT);
                    answer.none("stopped while slow");
                    return status_response(503);
                }
            }
        }
        Behaviour::Hang => {
            answer.none(note);
            shared.stopped().await;
            // Nothing may reach the client: the response below is swallowed by the abort.
            conn.set(MODE_ABORT);
            return status_response(503);
        }
        Behaviour::BigBody => ok(respond(
            StatusCode::OK,
            "text/plain",
            Body::new(Repeat {
                remaining: Some(BIG_BODY_LEN),
                stop: shared.stop.subscribe(),
            }),
        )),
        Behaviour::EndlessBody => ok(respond(
            StatusCode::OK,
            "text/plain",
            Body::new(Repeat {
                remaining: None,
                stop: shared.stop.subscribe(),
            }),
        )),
        Behaviour::Trickle => ok(respond(
            StatusCode::OK,
            "text/plain",
            Body::new(Trickle {
                next: Box::pin(tokio::time::sleep(Duration::ZERO)),
                stop: shared.stop.subscribe(),
            }),
        )),
        Behaviour::Reset => ok(respond(
            StatusCode::OK,
            "application/json",
            Body::new(Cut { step: 0 }),
        )),
        Behaviour::Redirect => {
            let mut r = respond(
                StatusCode::MOVED_PERMANENTLY,
                "application/json",
                Body::empty(),
            );
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/"));
            ok(r)
        }
        Behaviour::Garbage => {
            conn.set(MODE_GARBAGE);
            answer.none(note);
            // The connection writes garbage in place of this response.
            return ok_response();
        }
        Behaviour::Callback(stage) => {
            // Answer first, call back at once: the call races the sender recording this very
            // delivery, which is what a real validator does (and what must never deadlock).
            if let Some(api) = shared.script().callback_api.clone() {
                let quiet = shared.events.is_none();
                tokio::spawn(call_back(api, stage, body.clone(), quiet));
            }
            ok(ok_response())
        }
    };
    answer.reply(response, note)
}

/// The delivered item's workflow and id: Darwin (`hookops.workflow.id`,
/// `item.source_info.item_id`) or envelope (`payload.workflow_id`, `payload.item_id`).
fn delivered_item(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = |p: &str| v.pointer(p).and_then(|x| x.as_str()).map(str::to_owned);
    let wf = text("/hookops/workflow/id").or_else(|| text("/payload/workflow_id"))?;
    let item = text("/item/source_info/item_id").or_else(|| text("/payload/item_id"))?;
    Some((wf, item))
}

/// `callback:STAGE`: `POST {api}/v1/items/stage` moving the delivered item to `stage`.
async fn call_back(api: CallbackApi, stage: StageSlug, body: Bytes, quiet: bool) {
    let Some((workflow, item)) = delivered_item(&body) else {
        if !quiet {
            eprintln!("receiver: callback skipped: the body names no hookops item");
        }
        return;
    };
    let request = serde_json::json!({
        "workflow_id": workflow,
        "stage_id": stage.as_str(),
        "item_ids": [item],
    });
    let url = format!("{}/v1/items/stage", api.url.trim_end_matches('/'));
    // reqwest is built without a TLS provider of its own (see `dispatch::http`).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&api.token)
        .header(header::CONTENT_TYPE, "application/json")
        .body(request.to_string())
        .send()
        .await;
    if !quiet {
        match result {
            Ok(r) => println!(
                "receiver: callback moved {} to {}: {}",
                crate::sanitize::strip_controls(request["item_ids"][0].as_str().unwrap_or("")),
                stage.as_str(),
                r.status()
            ),
            Err(e) => eprintln!("receiver: callback to {url} failed: {e}"),
        }
    }
}

/// A running receiver. Dropping it stops it too (without waiting).
pub struct Receiver {
    /// The address it listens on (the real port when 0 was asked for).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Binds and starts serving in the background.
    pub async fn start(opts: ReceiverOptions) -> io::Result<Receiver> {
        Self::start_with(opts, None).await
    }

    async fn start_with(opts: ReceiverOptions, record: Option<File>) -> io::Result<Receiver> {
        let keys = opts
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| decode_key(s, i + 1))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(opts.addr).await?;
        let addr = listener.local_addr()?;

        let events = if !opts.quiet || record.is_some() {
            let (tx, rx) = mpsc::unbounded_channel();
            let with_body = record.is_some();
            let quiet = opts.quiet;
            std::thread::Builder::new()
                .name("receiver-log".into())
                .spawn(move || write_events(rx, quiet, record))?;
            Some((tx, with_body))
        } else {
            None
        };

        let shared = Arc::new(Shared {
            script: RwLock::new(Arc::new(opts.script)),
            fail_counts: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            keep_log: opts.keep_log,
            count: watch::Sender::new(0),
            stop: watch::Sender::new(false),
            keys,
            events,
        });

        let app = Router::new().fallback(handle).with_state(shared.clone());
        let make = app.into_make_service_with_connect_info::<ConnHandle>();
        let stop = shared.clone();
        let server = axum::serve(ReceiverListener { inner: listener }, make)
            .with_graceful_shutdown(async move { stop.stopped().await });
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::warn!("receiver stopped: {e}");
            }
        });
        Ok(Receiver {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// `http://{addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every request so far, in arrival order (empty unless [`ReceiverOptions::keep_log`]).
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.log).clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        *self.shared.count.borrow()
    }

    /// Waits until at least `n` requests have arrived; false if `timeout` passed first.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.shared.count.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await,
            Ok(Ok(_))
        )
    }

    /// Replaces the script for requests from now on, and forgets fail-first counts.
    pub fn set_script(&self, script: Script) {
        *self
            .shared
            .script
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(script);
        lock(&self.shared.fail_counts).clear();
    }

    /// Stops accepting, ends hanging and streaming answers, and waits briefly for open
    /// connections to close.
    pub async fn shutdown(mut self) {
        self.shared.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

/// Prints and records events off the request path. Each record line is flushed at once so a
/// reader (or a test after a kill) sees whole lines.
fn write_events(mut rx: mpsc::UnboundedReceiver<Event>, quiet: bool, record: Option<File>) {
    let mut record = record.map(io::BufWriter::new);
    while let Some(event) = rx.blocking_recv() {
        if !quiet {
            let line = format_line(&event.received, event.note);
            let mut out = io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                // stdout closed (a pipe reader left): keep recording.
            }
        }
        if let Some(w) = record.as_mut() {
            let written = serde_json::to_writer(&mut *w, &event.received)
                .map_err(io::Error::from)
                .and_then(|()| w.write_all(b"\n"))
                .and_then(|()| w.flush());
            if let Err(e) = written {
                tracing::warn!("receiver: could not append to the record file: {e}");
            }
        }
    }
}

/// `hookops receiver`: serves until Ctrl-C (or SIGTERM), printing one line per request unless
/// quiet and appending each request as a JSON line to `record` when given. The first line on
/// stdout says where it listens.
pub async fn run_cli(opts: ReceiverOptions, record: Option<PathBuf>) -> Result<(), io::Error> {
    let file = match &record {
        Some(path) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot open record file {}: {e}", path.display()),
                    )
                })?,
        ),
        None => None,
    };
    let script = opts.script.to_string();
    let checks = if opts.secrets.is_empty() {
        "signatures not checked"
    } else {
        "checking signatures"
    };
    let receiver = Receiver::start_with(opts, file).await?;
    {
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "hookops receiver listening on http://{} · script {script} · {checks}",
            receiver.addr
        )?;
        out.flush()?;
    }
    wait_for_stop_signal().await?;
    receiver.shutdown().await;
    Ok(())
}

async fn wait_for_stop_signal() -> io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: &str = "1614265330";
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const LONG: Duration = Duration::from_secs(10);

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client builds")
    }

    async fn start(script: &str) -> Receiver {
        let script = if script.is_empty() {
            Script::default()
        } else {
            script.parse().expect("test script parses")
        };
        Receiver::start(ReceiverOptions {
            script,
            ..ReceiverOptions::default()
        })
        .await
        .expect("receiver starts")
    }

    async fn post(
        c: &reqwest::Client,
        r: &Receiver,
        path: &str,
        id: &str,
        attempt: u32,
    ) -> reqwest::Response {
        c.post(r.url(path))
            .header("webhook-id", id)
            .header("hookops-attempt", attempt.to_string())
            .body(r#"{"hello":"world"}"#)
            .send()
            .await
            .expect("request gets a response")
    }

    async fn status_of(
        c: &reqwest::Client,
        r: &Receiver,
        path: &str,
        id: &str,
        attempt: u32,
    ) -> u16 {
        post(c, r, path, id, attempt).await.status().as_u16()
    }

    #[test]
    fn parses_good_scripts() {
        let s: Script = "/validate=fail-first-2, /export=500 ,*=ok".parse().unwrap();
        assert_eq!(s.behaviour_for("/validate"), Some(Behaviour::FailFirst(2)));
        assert_eq!(s.behaviour_for("/export"), Some(Behaviour::Status(500)));
        assert_eq!(s.behaviour_for("/other"), Some(Behaviour::Ok));
        assert_eq!(s.to_string(), "/validate=fail-first-2,/export=500,*=ok");

        let cases = [
            ("ok", Behaviour::Ok),
            ("204", Behaviour::Status(204)),
            (
                "429:retry-after=2",
                Behaviour::RetryAfter {
                    status: 429,
                    secs: 2,
                },
            ),
            (
                "503:retry-after=5",
                Behaviour::RetryAfter {
                    status: 503,
                    secs: 5,
                },
            ),
            ("fail-first-3", Behaviour::FailFirst(3)),
            ("flaky:30%", Behaviour::Flaky(30)),
            ("flaky:100", Behaviour::Flaky(100)),
            ("slow:15s", Behaviour::Slow(Duration::from_secs(15))),
            ("slow:250ms", Behaviour::Slow(Duration::from_millis(250))),
            ("hang", Behaviour::Hang),
            ("big-body", Behaviour::BigBody),
            ("endless-body", Behaviour::EndlessBody),
            ("trickle", Behaviour::Trickle),
            ("reset", Behaviour::Reset),
            ("redirect", Behaviour::Redirect),
            ("garbage", Behaviour::Garbage),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Behaviour>(), Ok(want), "{text}");
            // Display is the parse form, so a script can be printed and read back.
            assert_eq!(want.to_string().parse::<Behaviour>(), Ok(want), "{text}");
            // A bare behaviour stands for every path; `429:retry-after=2` has a `=` of its own.
            let s: Script = text.parse().unwrap();
            assert_eq!(s.behaviour_for("/anything"), Some(want), "{text}");
            let s: Script = format!("/p={text}").parse().unwrap();
            assert_eq!(s.behaviour_for("/p"), Some(want), "{text}");
            assert_eq!(s.behaviour_for("/q"), None, "no `*`: no rule");
        }
        assert_eq!(Script::default().behaviour_for("/x"), Some(Behaviour::Ok));
    }

    #[test]
    fn rejects_bad_scripts_with_one_sentence_naming_the_part() {
        let cases = [
            (
                "",
                "the receiver script is empty: write PATH=BEHAVIOUR pairs such as `/validate=fail-first-2,*=ok`",
            ),
            (
                "/a=ok,,*=500",
                "entry 2 of the receiver script is empty: remove the extra comma",
            ),
            (
                "/validate",
                "`/validate` has no behaviour: write `/validate=BEHAVIOUR`, e.g. `/validate=500`",
            ),
            (
                "*x=ok",
                "`*x` in `*x=ok` is not a path: write one starting with `/`, or `*` for every other path",
            ),
            (
                "/a=ok,/a=500",
                "path `/a` appears twice in the receiver script: keep one rule per path",
            ),
            (
                "*=ok,*=500",
                "path `*` appears twice in the receiver script: keep one rule per path",
            ),
            (
                "/a=explode",
                "unknown behaviour `explode` in `/a=explode`: use ok, a status such as 500, 429:retry-after=2, fail-first-N, flaky:P%, slow:15s, hang, big-body, endless-body, trickle, reset, redirect, garbage or callback:STAGE",
            ),
            (
                "/a=99",
                "status `99` in `/a=99` is not an HTTP status from 200 to 599",
            ),
            (
                "/a=600",
                "status `600` in `/a=600` is not an HTTP status from 200 to 599",
            ),
            (
                "/a=429:retry-after=soon",
                "`retry-after=soon` in `/a=429:retry-after=soon` is not a retry-after: write STATUS:retry-after=SECONDS, e.g. `429:retry-after=2`",
            ),
            (
                "/a=fail-first-two",
                "`two` in `/a=fail-first-two` is not a count: write fail-first-N with N a whole number, e.g. `fail-first-2`",
            ),
            (
                "/a=flaky:130%",
                "`130%` in `/a=flaky:130%` is not a percentage from 0 to 100: write e.g. `flaky:30%`",
            ),
            (
                "/a=slow:forever",
                "`forever` in `/a=slow:forever` is not a duration: write e.g. `slow:15s` or `slow:500ms`",
            ),
        ];
        for (spec, want) in cases {
            let err = spec.parse::<Script>().expect_err(spec);
            assert_eq!(err.to_string(), want, "{spec}");
        }
    }

    #[test]
    fn callback_names_a_stage_and_round_trips() {
        let script: Script = "/validate=callback:review,*=ok".parse().unwrap();
        assert_eq!(script.to_string(), "/validate=callback:review,*=ok");
        let Some(Behaviour::Callback(stage)) = script.behaviour_for("/validate") else {
            panic!("not a callback");
        };
        assert_eq!(stage.as_str(), "review");
        assert!("/v=callback:Not A Stage".parse::<Script>().is_err());
        // The token never shows in debug output.
        let with = script.with_callback_api(CallbackApi {
            url: "http://127.0.0.1:8787".into(),
            token: "secret-token-0123456789".into(),
        });
        assert!(!format!("{with:?}").contains("secret-token"));
        assert_eq!(
            delivered_item(
                br#"{"hookops":{"workflow":{"id":"wf"}},"item":{"source_info":{"item_id":"a1"}}}"#
            ),
            Some(("wf".into(), "a1".into()))
        );
        assert_eq!(
            delivered_item(br#"{"payload":{"workflow_id":"wf","item_id":"a2"}}"#),
            Some(("wf".into(), "a2".into()))
        );
    }

    #[test]
    fn verifies_the_standard_webhooks_spec_vector() {
        let ok = verify_signature(
            SPEC_SECRET,
            SPEC_ID,
            SPEC_TS,
            SPEC_BODY.as_bytes(),
            SPEC_SIG,
        );
        assert_eq!(ok, Ok(true));
        // Any matching entry of several is enough.
        let several = format!("v1,AAAA {SPEC_SIG} v2,zzz");
        assert_eq!(
            verify_signature(
                SPEC_SECRET,
                SPEC_ID,
                SPEC_TS,
                SPEC_BODY.as_bytes(),
                &several
            ),
            Ok(true)
        );
        // Anything changed makes it invalid.
        let tampered = r#"{"test": 2432232315}"#;
        assert_eq!(
            verify_signature(SPEC_SECRET, SPEC_ID, SPEC_TS, tampered.as_bytes(), SPEC_SIG),
            Ok(false)
        );
        assert_eq!(
            verify_signature(
                SPEC_SECRET,
                SPEC_ID,
                "1614265331",
                SPEC_BODY.as_bytes(),
                SPEC_SIG
            ),
            Ok(false)
        );
        assert_eq!(
            verify_signature(
                SPEC_SECRET,
                "msg_other",
                SPEC_TS,
                SPEC_BODY.as_bytes(),
                SPEC_SIG
            ),
            Ok(false)
        );
        let other_key = "whsec_c2VjcmV0LWtleS1vdGhlcg==";
        assert_eq!(
            verify_signature(other_key, SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes(), SPEC_SIG),
            Ok(false)
        );
        let no_prefix = SPEC_SIG.trim_start_matches("v1,");
        assert_eq!(
            verify_signature(
                SPEC_SECRET,
                SPEC_ID,
                SPEC_TS,
                SPEC_BODY.as_bytes(),
                no_prefix
            ),
            Ok(false)
        );
        let err =
            verify_signature("whsec_not base64!", SPEC_ID, SPEC_TS, b"", SPEC_SIG).unwrap_err();
        assert_eq!(
            err.to_string(),
            "receiver secret 1 is not a Standard Webhooks key: expected `whsec_` followed by base64"
        );
    }

    #[test]
    fn flaky_is_deterministic_and_near_its_percentage() {
        let ids: Vec<String> = (0..2000).map(|i| format!("msg_{i:05}")).collect();
        let first: Vec<bool> = ids.iter().map(|id| flaky_fails(id, 1, 30)).collect();
        let again: Vec<bool> = ids.iter().map(|id| flaky_fails(id, 1, 30)).collect();
        assert_eq!(first, again);
        let failed = first.iter().filter(|f| **f).count();
        assert!((500..=700).contains(&failed), "30% of 2000 failed {failed}");
        // Another attempt of the same delivery is decided afresh.
        let next: Vec<bool> = ids.iter().map(|id| flaky_fails(id, 2, 30)).collect();
        assert_ne!(first, next);
        assert!(ids.iter().all(|id| !flaky_fails(id, 1, 0)));
        assert!(ids.iter().all(|id| flaky_fails(id, 1, 100)));
    }

    #[test]
    fn received_round_trips_as_a_json_line_and_prints_one_line() {
        let mut r = Received {
            at: Utc::now(),
            method: "POST".into(),
            path: "/validate".into(),
            query: "x=1".into(),
            headers: vec![("webhook-id".into(), "msg_1".into())],
            body: br#"{"a":1}"#.to_vec(),
            webhook_id: Some("msg_1".into()),
            attempt: Some(2),
            signature_valid: Some(true),
            status: 500,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains(r#""body":"{\"a\":1}""#), "{line}");
        assert_eq!(serde_json::from_str::<Received>(&line).unwrap(), r);
        r.body = vec![0xff, 0x00, 0x80];
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains(r#""body":{"base64":"/wCA"}"#), "{line}");
        assert_eq!(serde_json::from_str::<Received>(&line).unwrap(), r);

        let printed = format_line(&r, "");
        assert!(
            printed.ends_with(" POST /validate?x=1 msg_1 attempt 2 sig ok -> 500"),
            "{printed}"
        );
        let time = printed.split(' ').next().unwrap_or_default();
        assert!(
            time.len() == 9 && time.ends_with('Z'),
            "the zone is shown: {printed}"
        );
        r.webhook_id = Some("msg_\x1b[2J".into());
        r.status = 0;
        let printed = format_line(&r, "hang: no answer");
        assert!(!printed.contains('\x1b'), "{printed}");
        assert!(printed.ends_with("-> - (hang: no answer)"), "{printed}");
    }

    #[tokio::test]
    async fn no_script_answers_ok_and_records_everything() {
        let r = start("").await;
        let c = client();
        let resp = c
            .post(r.url("/any/path?stage=review&x=1"))
            .header("webhook-id", "msg_abc")
            .header("hookops-attempt", "3")
            .header("x-custom", "yes")
            .body(r#"{"hello":"world"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.text().await.unwrap(), r#"{"ok":true}"#);
        assert_eq!(r.count(), 1);
        let got = r.received();
        let first = &got[0];
        assert_eq!(first.method, "POST");
        assert_eq!(first.path, "/any/path");
        assert_eq!(first.query, "stage=review&x=1");
        assert_eq!(first.body, br#"{"hello":"world"}"#);
        assert_eq!(first.webhook_id.as_deref(), Some("msg_abc"));
        assert_eq!(first.attempt, Some(3));
        assert_eq!(first.header("X-Custom"), Some("yes"));
        assert_eq!(first.signature_valid, None);
        assert_eq!(first.status, 200);
        r.shutdown().await;
    }

    #[tokio::test]
    async fn statuses_retry_after_redirect_and_unmatched_paths() {
        let r = start("/a=503,/b=429:retry-after=2,/c=503:retry-after=5,/d=204,/e=redirect,/f=201")
            .await;
        let c = client();
        let resp = post(&c, &r, "/a", "m", 1).await;
        assert_eq!(resp.status().as_u16(), 503);
        assert_eq!(resp.text().await.unwrap(), r#"{"ok":false,"status":503}"#);

        let resp = post(&c, &r, "/b", "m", 1).await;
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
        let resp = post(&c, &r, "/c", "m", 1).await;
        assert_eq!(resp.status().as_u16(), 503);
        assert_eq!(resp.headers()["retry-after"], "5");

        let resp = post(&c, &r, "/d", "m", 1).await;
        assert_eq!(resp.status().as_u16(), 204);
        assert!(resp.bytes().await.unwrap().is_empty());

        let resp = post(&c, &r, "/e", "m", 1).await;
        assert_eq!(resp.status().as_u16(), 301);
        assert_eq!(resp.headers()["location"], "/");

        assert_eq!(status_of(&c, &r, "/f", "m", 1).await, 201);
        // The query is not part of the match; a path with no rule and no `*` is 404.
        assert_eq!(status_of(&c, &r, "/a?x=1", "m", 1).await, 503);
        assert_eq!(status_of(&c, &r, "/zzz", "m", 1).await, 404);

        let statuses: Vec<u16> = r.received().iter().map(|x| x.status).collect();
        assert_eq!(statuses, [503, 429, 503, 204, 301, 201, 503, 404]);
    }

    #[tokio::test]
    async fn fail_first_counts_per_webhook_id() {
        let r = start("/v=fail-first-2,*=ok").await;
        let c = client();
        let mut seen = Vec::new();
        for (id, attempt) in [
            ("msg_a", 1),
            ("msg_a", 2),
            ("msg_b", 1),
            ("msg_a", 3),
            ("msg_a", 4),
            ("msg_b", 2),
            ("msg_b", 3),
        ] {
            seen.push(status_of(&c, &r, "/v", id, attempt).await);
        }
        assert_eq!(seen, [500, 500, 500, 200, 200, 500, 200]);
        // Other paths are not counted.
        assert_eq!(status_of(&c, &r, "/other", "msg_c", 1).await, 200);
        assert_eq!(status_of(&c, &r, "/v", "msg_c", 1).await, 500);
    }

    #[tokio::test]
    async fn flaky_answers_follow_the_hash_in_every_run() {
        let c = client();
        let mut runs = Vec::new();
        for _ in 0..2 {
            let r = start("*=flaky:50%").await;
            let mut statuses = Vec::new();
            for i in 0..40 {
                let id = format!("msg_{i}");
                let status = status_of(&c, &r, "/x", &id, 1).await;
                let want = if flaky_fails(&id, 1, 50) { 500 } else { 200 };
                assert_eq!(status, want, "{id}");
                statuses.push(status);
            }
            runs.push(statuses);
            r.shutdown().await;
        }
        assert_eq!(runs[0], runs[1]);
        assert!(runs[0].contains(&500) && runs[0].contains(&200));
    }

    #[tokio::test]
    async fn slow_answers_after_its_delay() {
        let r = start("*=slow:300ms").await;
        let c = client();
        let started = tokio::time::Instant::now();
        assert_eq!(status_of(&c, &r, "/s", "m", 1).await, 200);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(r.received()[0].status, 200);
    }

    #[tokio::test]
    async fn hang_is_recorded_and_times_out_on_the_client() {
        let r = start("/h=hang,*=ok").await;
        let c = client();
        let err = c
            .post(r.url("/h"))
            .timeout(Duration::from_millis(300))
            .body("x")
            .send()
            .await
            .expect_err("a hanging receiver never answers");
        assert!(err.is_timeout(), "{err}");
        assert!(r.wait_for(1, LONG).await);
        assert_eq!(r.received()[0].path, "/h");
        assert_eq!(r.received()[0].status, 0);
        // Other requests are still served while one hangs.
        assert_eq!(status_of(&c, &r, "/fine", "m", 1).await, 200);
        // Shutdown does not wait for the hanging request.
        let started = tokio::time::Instant::now();
        r.shutdown().await;
        assert!(
            started.elapsed() < SHUTDOWN_GRACE,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn big_body_is_ten_mebibytes() {
        let r = start("*=big-body").await;
        let resp = post(&client(), &r, "/big", "m", 1).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.content_length(), Some(BIG_BODY_LEN));
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len() as u64, BIG_BODY_LEN);
    }

    #[tokio::test]
    async fn endless_body_keeps_coming() {
        let r = start("*=endless-body").await;
        let mut resp = post(&client(), &r, "/e", "m", 1).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.content_length(), None);
        let mut read = 0usize;
        while read < 4 * BIG_BODY_LEN as usize {
            let chunk = resp.chunk().await.unwrap().expect("the body never ends");
            read += chunk.len();
        }
        drop(resp);
        r.shutdown().await;
    }

    #[tokio::test]
    async fn trickle_sends_a_byte_a_second() {
        let r = start("*=trickle").await;
        let mut resp = post(&client(), &r, "/t", "m", 1).await;
        assert_eq!(resp.status().as_u16(), 200);
        let first = resp.chunk().await.unwrap().expect("a first byte at once");
        assert_eq!(first.len(), 1);
        let started = tokio::time::Instant::now();
        let second = resp.chunk().await.unwrap().expect("a second byte");
        assert_eq!(second.len(), 1);
        let gap = started.elapsed();
        assert!(gap >= Duration::from_millis(800), "{gap:?}");
    }

    #[tokio::test]
    async fn reset_sends_the_status_then_drops_the_connection() {
        let r = start("*=reset").await;
        let resp = post(&client(), &r, "/r", "m", 1).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.content_length(), Some(RESET_PROMISED_LEN));
        assert!(resp.bytes().await.is_err(), "the body must be cut short");
        assert_eq!(r.received()[0].status, 200);
    }

    #[tokio::test]
    async fn garbage_is_not_http() {
        let r = start("/g=garbage,*=ok").await;
        let c = client();
        let err = c
            .post(r.url("/g"))
            .body("x")
            .send()
            .await
            .expect_err("garbage is no response");
        assert!(!err.is_timeout(), "{err}");
        assert_eq!(r.received()[0].status, 0);
        // The connection was closed; the next request opens a fresh one and is fine.
        assert_eq!(status_of(&c, &r, "/ok", "m", 1).await, 200);
    }

    /// Sends one raw HTTP/1.1 request and returns every byte until the server closes.
    async fn raw_exchange(r: &Receiver, path: &str) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        let req = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{{}}");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        // A reset may surface as an error after some bytes: what was read is what matters.
        let read = tokio::time::timeout(LONG, async {
            let mut buf = [0u8; 8192];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        });
        read.await.expect("the server closes the connection");
        out
    }

    #[tokio::test]
    async fn garbage_and_reset_on_the_wire() {
        let r = start("/g=garbage,/r=reset").await;
        assert_eq!(raw_exchange(&r, "/g").await, GARBAGE);
        let bytes = raw_exchange(&r, "/r").await;
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains(&format!("content-length: {RESET_PROMISED_LEN}\r\n")),
            "{text}"
        );
        let head_end = text.find("\r\n\r\n").expect("a full head") + 4;
        assert_eq!(bytes.len() - head_end, RESET_SENT_LEN);
    }

    #[test]
    fn writes_record_lines_and_keeps_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.jsonl");
        let file = File::create(&path).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut received = Received {
            at: Utc::now(),
            method: "POST".into(),
            path: "/a".into(),
            query: String::new(),
            headers: vec![],
            body: b"{}".to_vec(),
            webhook_id: Some("msg_1".into()),
            attempt: Some(1),
            signature_valid: None,
            status: 500,
        };
        tx.send(Event {
            received: received.clone(),
            note: "",
        })
        .unwrap();
        received.attempt = Some(2);
        received.status = 200;
        tx.send(Event {
            received: received.clone(),
            note: "",
        })
        .unwrap();
        drop(tx);
        write_events(rx, true, Some(file));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Received> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].status, 500);
        assert_eq!(lines[1], received);
    }

    #[tokio::test]
    async fn checks_signatures_when_given_secrets() {
        let r = Receiver::start(ReceiverOptions {
            secrets: vec!["whsec_c2VjcmV0LWtleS1vdGhlcg==".into(), SPEC_SECRET.into()],
            ..ReceiverOptions::default()
        })
        .await
        .unwrap();
        let c = client();
        let send = |body: &'static str, sig: &'static str| {
            c.post(r.url("/hook"))
                .header("webhook-id", SPEC_ID)
                .header("webhook-timestamp", SPEC_TS)
                .header("webhook-signature", sig)
                .body(body)
                .send()
        };
        assert_eq!(
            send(SPEC_BODY, SPEC_SIG).await.unwrap().status().as_u16(),
            200
        );
        let bad = send(r#"{"test": 1}"#, SPEC_SIG).await.unwrap();
        assert_eq!(bad.status().as_u16(), 401);
        let unsigned = c.post(r.url("/hook")).body("{}").send().await.unwrap();
        assert_eq!(unsigned.status().as_u16(), 401);
        let valid: Vec<_> = r.received().iter().map(|x| x.signature_valid).collect();
        assert_eq!(valid, [Some(true), Some(false), Some(false)]);

        let err = Receiver::start(ReceiverOptions {
            secrets: vec!["whsec_???".into()],
            ..ReceiverOptions::default()
        })
        .await
        .err()
        .expect("a bad secret refuses to start");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            !err.to_string().contains("???"),
            "the secret is not echoed: {err}"
        );
    }

    #[tokio::test]
    async fn an_unpadded_key_verifies_what_the_dispatcher_signs() {
        // `workflow apply` accepts this key without its `==`; the dispatcher signs with it.
        let unpadded = "whsec_c2VjcmV0LWtleS1vdGhlcg";
        let r = Receiver::start(ReceiverOptions {
            secrets: vec![unpadded.into()],
            ..ReceiverOptions::default()
        })
        .await
        .expect("a key without base64 padding is a valid key");
        let sig = crate::dispatch::sign::sign(unpadded, SPEC_ID, 1614265330, b"{}").unwrap();
        let padded = crate::dispatch::sign::sign(
            "whsec_c2VjcmV0LWtleS1vdGhlcg==",
            SPEC_ID,
            1614265330,
            b"{}",
        )
        .unwrap();
        assert_eq!(sig, padded, "one key, with or without padding");
        let res = client()
            .post(r.url("/hook"))
            .header("webhook-id", SPEC_ID)
            .header("webhook-timestamp", "1614265330")
            .header("webhook-signature", sig)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(r.received()[0].signature_valid, Some(true));
    }

    #[tokio::test]
    async fn wait_for_wakes_on_arrivals_and_times_out() {
        let r = Arc::new(start("").await);
        assert!(!r.wait_for(1, Duration::from_millis(50)).await);
        let c = client();
        let sender = {
            let r = r.clone();
            tokio::spawn(async move {
                for i in 0..3 {
                    status_of(&c, &r, "/w", &format!("m{i}"), 1).await;
                }
            })
        };
        assert!(r.wait_for(3, LONG).await);
        assert!(r.count() >= 3);
        sender.await.unwrap();
        assert!(!r.wait_for(4, Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn set_script_changes_answers_and_resets_fail_counts() {
        let r = start("*=fail-first-1").await;
        let c = client();
        assert_eq!(status_of(&c, &r, "/x", "msg_a", 1).await, 500);
        r.set_script("*=500".parse().unwrap());
        assert_eq!(status_of(&c, &r, "/x", "msg_a", 2).await, 500);
        r.set_script(Script::default());
        assert_eq!(status_of(&c, &r, "/x", "msg_a", 3).await, 200);
        r.set_script("*=fail-first-1".parse().unwrap());
        assert_eq!(
            status_of(&c, &r, "/x", "msg_a", 4).await,
            500,
            "counts start afresh"
        );
        assert_eq!(status_of(&c, &r, "/x", "msg_a", 5).await, 200);
    }

    #[tokio::test]
    async fn shutdown_closes_the_port() {
        let r = start("").await;
        let url = r.url("/x");
        let c = client();
        assert_eq!(c.post(&url).send().await.unwrap().status().as_u16(), 200);
        r.shutdown().await;
        let fresh = client();
        assert!(fresh.post(&url).send().await.is_err());
    }
}
