//! Sends one attempt over HTTP and describes what happened, without touching the store.
//!
//! Redirects are never followed, the body is sent with a `Content-Length`, only the first
//! 64 KiB of a response body is kept (up to 1 MiB more is read and dropped so the connection
//! can be reused; beyond that the connection is closed), and every header or URL that is kept
//! has its secrets redacted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::classify;
use super::sign;
use crate::model::ErrorKind;
use crate::redact::Redactor;
use crate::store::{AttemptOutcome, Lease};

/// Kept of a response body.
pub const RESPONSE_KEEP: usize = 64 * 1024;
/// Read and dropped beyond [`RESPONSE_KEEP`] before the connection is closed instead.
const RESPONSE_DRAIN: usize = 1024 * 1024;
/// Default maximum request body (design §6).
pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The HTTP side of the engine: one keep-alive client shared by every attempt of a process.
pub struct Sender {
    client: reqwest::Client,
    max_body: usize,
    redactors: Mutex<HashMap<(String, i64), Arc<Redactor>>>,
}

/// Installs the process-wide TLS crypto provider once (reqwest is built without one).
fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Fails only when another provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Sender {
    pub fn new(max_body: usize) -> Result<Sender, String> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .user_agent(concat!("hookops/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Sender {
            client,
            max_body,
            redactors: Mutex::new(HashMap::new()),
        })
    }

    fn redactor(&self, lease: &Lease) -> Arc<Redactor> {
        let key = (lease.workflow.to_string(), lease.revision);
        if let Ok(mut map) = self.redactors.lock() {
            if map.len() > 64 {
                map.clear();
            }
            return map
                .entry(key)
                .or_insert_with(|| Arc::new(Redactor::new(&lease.spec.secrets)))
                .clone();
        }
        Arc::new(Redactor::new(&lease.spec.secrets))
    }

    /// Sends the lease's attempt and describes the outcome. Never fails: every problem is an
    /// error kind and message in the outcome.
    pub async fn send(&self, lease: &Lease) -> AttemptOutcome {
        let started = chrono::Utc::now();
        let clock = Instant::now();
        let redactor = self.redactor(lease);
        let mut out = AttemptOutcome {
            started_at: started.timestamp_millis(),
            ..AttemptOutcome::default()
        };
        let Some(cfg) = lease.config() else {
            out.url = String::new();
            out.error_kind = Some(ErrorKind::Policy);
            out.error_message = Some(format!(
                "stage `{}` is no longer a webhook stage of workflow `{}`",
                lease.stage, lease.workflow
            ));
            return out;
        };
        out.url = redactor.redact(&cfg.url);
        if lease.body.len() > self.max_body {
            out.error_kind = Some(ErrorKind::Policy);
            out.error_message = Some(classify::body_too_large_message(
                lease.body.len(),
                self.max_body,
            ));
            return out;
        }
        let timestamp = started.timestamp();
        let mut headers: Vec<(String, String)> = vec![
            ("content-type".into(), "application/json".into()),
            (
                "user-agent".into(),
                concat!("hookops/", env!("CARGO_PKG_VERSION")).into(),
            ),
            ("webhook-id".into(), lease.delivery_id.to_string()),
            ("webhook-timestamp".into(), timestamp.to_string()),
        ];
        match sign::signature_header(&cfg.secrets, lease.delivery_id.as_str(), timestamp, &lease.body)
        {
            Ok(Some(sig)) => headers.push(("webhook-signature".into(), sig)),
            Ok(None) => {}
            Err(e) => {
                out.error_kind = Some(ErrorKind::Policy);
                out.error_message = Some(format!("cannot sign the request: {e}"));
                return out;
            }
        }
        headers.push(("hookops-attempt".into(), lease.number.to_string()));
        if let Some(a) = &cfg.authorization {
            headers.push(("authorization".into(), a.clone()));
        }
        headers.extend(cfg.headers.iter().cloned());
        out.request_headers = redactor.headers(&headers);

        let mut map = HeaderMap::with_capacity(headers.len());
        for (k, v) in &headers {
            match (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
                (Ok(k), Ok(v)) => {
                    map.append(k, v);
                }
                _ => {
                    out.error_kind = Some(ErrorKind::Policy);
                    out.error_message = Some(format!("header `{k}` is not a valid HTTP header"));
                    return out;
                }
            }
        }
        let request = self
            .client
            .post(&cfg.url)
            .headers(map)
            .timeout(cfg.timeout)
            .body(lease.body.as_ref().clone());
        let finish = |out: &mut AttemptOutcome| out.duration_ms = clock.elapsed().as_millis() as i64;
        let mut resp = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let (kind, message) = describe_error(&e, cfg.timeout);
                out.error_kind = Some(kind);
                out.error_message = Some(redactor.redact(&message));
                finish(&mut out);
                return out;
            }
        };
        let status = resp.status().as_u16();
        out.status = Some(status);
        out.response_headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        out.retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if (300..400).contains(&status) {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok());
            out.error_kind = Some(ErrorKind::Redirect);
            out.error_message = Some(classify::redirect_message(status, location));
        } else if !(200..300).contains(&status) {
            out.error_kind = Some(ErrorKind::HttpStatus);
            out.error_message = Some(classify::status_message(status));
        }
        // Keep the first 64 KiB; read a bounded amount more so the connection can be reused.
        let mut body = Vec::new();
        let mut seen = 0usize;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    seen += chunk.len();
                    let room = RESPONSE_KEEP.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if seen > RESPONSE_KEEP + RESPONSE_DRAIN {
                        break; // dropping `resp` closes the connection
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The status decides the outcome; the body error is recorded beside it.
                    let (_, message) = describe_error(&e, cfg.timeout);
                    if out.error_kind.is_none() {
                        out.error_kind = Some(ErrorKind::Body);
                    }
                    let prefix = out.error_message.take().map(|m| format!("{m}; ")).unwrap_or_default();
                    out.error_message = Some(format!("{prefix}response body cut off: {message}"));
                    break;
                }
            }
        }
        out.response_body = Some(body);
        finish(&mut out);
        out
    }
}

/// Classifies a transport error and words it in one line.
fn describe_error(e: &reqwest::Error, timeout: Duration) -> (ErrorKind, String) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut io_kind = None;
    let mut tls = false;
    let mut text = Vec::new();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        if s.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        text.push(s.to_string());
        source = s.source();
    }
    let all = text.join(": ");
    if e.is_timeout() || io_kind == Some(std::io::ErrorKind::TimedOut) {
        if e.is_connect() {
            return (
                ErrorKind::Timeout,
                classify::connect_timeout_message(CONNECT_TIMEOUT),
            );
        }
        return (ErrorKind::Timeout, classify::timeout_message(timeout));
    }
    if tls || all.contains("certificate") || all.contains("tls handshake") {
        return (ErrorKind::Tls, classify::one_line(&format!("TLS error: {all}")));
    }
    if all.contains("dns error") || all.contains("failed to lookup address") {
        let host = e
            .url()
            .and_then(|u| u.host_str())
            .unwrap_or("the host")
            .to_string();
        return (ErrorKind::Connect, format!("could not resolve host {host}"));
    }
    if all.contains("invalid HTTP") || all.contains("parse") && all.contains("HTTP") {
        return (
            ErrorKind::Connect,
            "the receiver's answer is not valid HTTP".to_string(),
        );
    }
    if let Some(kind) = io_kind {
        let what = classify::io_error_message(kind);
        return (ErrorKind::Connect, what.to_string());
    }
    (ErrorKind::Connect, classify::one_line(&all))
}
