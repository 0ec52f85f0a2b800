//! Sends one attempt over HTTP and describes what happened, without touching the store.
//!
//! Redirects are never followed, the body is sent with a `Content-Length`, only the first
//! 64 KiB of a response body is kept (up to 1 MiB more is read and dropped so the connection
//! can be reused; beyond that the connection is closed), and every header or URL that is kept
//! has its secrets redacted.
//!
//! Where a request may go is decided on the *resolved* address ([`TargetPolicy`]): names are
//! resolved by our own resolver, which drops addresses the policy refuses before hyper
//! connects, so a name that resolves to a private address (DNS rebinding included) is refused
//! like the address itself. IP literals, which skip the resolver, are checked before sending.
//! `.invalid` names never resolve (RFC 6761) and `localhost` is loopback, without asking DNS.
//! Two environment variables exist for tests, which must never send beyond loopback (design
//! §6): `HOOKOPS_LOOPBACK_ONLY=1` refuses every address that is not loopback and never asks
//! DNS; `HOOKOPS_RESOLVE=host=ip,host=ip` answers those names from the list (like curl's
//! `--resolve`), so a test can make a name resolve to a private or metadata address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::sign;
use crate::engine::classify;
use crate::model::ErrorKind;
use crate::redact::Redactor;
use crate::store::{AttemptOutcome, Lease, Policies};
use crate::workflow::WebhookConfig;

/// Kept of a response body.
pub const RESPONSE_KEEP: usize = 64 * 1024;
/// Read and dropped beyond [`RESPONSE_KEEP`] before the connection is closed instead.
const RESPONSE_DRAIN: usize = 1024 * 1024;
/// Default maximum request body (design §6).
pub const DEFAULT_MAX_BODY: usize = crate::store::DEFAULT_MAX_BODY;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The HTTP side of the engine: one keep-alive client shared by every attempt of a process.
pub struct Sender {
    client: reqwest::Client,
    max_body: AtomicUsize,
    target: Arc<TargetPolicy>,
    targets: Mutex<Targets>,
}

/// Per workflow: the revision its entries belong to, and a [`Target`] per stage.
type Targets = HashMap<String, (i64, HashMap<String, Arc<Target>>)>;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const HOOKOPS_ATTEMPT: HeaderName = HeaderName::from_static("hookops-attempt");

/// A header as sent, and as recorded (its name as configured, its value redacted).
type FixedHeader = (HeaderName, HeaderValue, (String, String));

/// What every attempt to one webhook shares: its URL, parsed and as recorded, the headers
/// that do not change between attempts, and the redactor of its workflow's secrets. Errors
/// (an invalid URL or header) are kept as the one-line message each attempt records.
struct Target {
    redactor: Redactor,
    /// The URL as recorded, secrets redacted.
    shown_url: String,
    url: Result<reqwest::Url, String>,
    /// The host when it is an IP literal, which skips the resolver (and its policy check).
    literal: Option<IpAddr>,
    /// Sent before the per-attempt headers (`content-type`, `user-agent`) and after them
    /// (`authorization`, then the stage's own headers).
    headers: Result<(Vec<FixedHeader>, Vec<FixedHeader>), String>,
}

impl Target {
    fn new(cfg: &WebhookConfig, secrets: &[String]) -> Target {
        let redactor = Redactor::new(secrets);
        let url = reqwest::Url::parse(&cfg.url)
            .map_err(|e| redactor.redact(&format!("invalid URL: {e}")));
        let literal = url.as_ref().ok().and_then(|u| {
            u.host_str()?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        });
        let head = [
            ("content-type".to_string(), "application/json".to_string()),
            (
                "user-agent".to_string(),
                concat!("hookops/", env!("CARGO_PKG_VERSION")).to_string(),
            ),
        ];
        let auth = cfg
            .authorization
            .iter()
            .map(|a| ("authorization".to_string(), a.clone()));
        let tail: Vec<(String, String)> = auth.chain(cfg.headers.iter().cloned()).collect();
        let fixed = |pairs: &[(String, String)]| -> Result<Vec<FixedHeader>, String> {
            let shown = redactor.headers(pairs);
            pairs
                .iter()
                .zip(shown)
                .map(|((k, v), shown)| {
                    match (
                        HeaderName::try_from(k.as_str()),
                        HeaderValue::try_from(v.as_str()),
                    ) {
                        (Ok(k), Ok(v)) => Ok((k, v, shown)),
                        _ => Err(format!("header `{k}` is not a valid HTTP header")),
                    }
                })
                .collect()
        };
        let headers = fixed(&head).and_then(|h| Ok((h, fixed(&tail)?)));
        Target {
            shown_url: redactor.redact(&cfg.url),
            redactor,
            url,
            literal,
            headers,
        }
    }
}

/// Which addresses a request may go to: the `deny_private_targets` policy (changed while the
/// process runs) and the test guards read from the environment once.
#[derive(Debug, Default)]
pub struct TargetPolicy {
    deny_private: AtomicBool,
    loopback_only: bool,
    overrides: HashMap<String, Vec<IpAddr>>,
}

/// A request refused by [`TargetPolicy`]: recorded as a `policy` error.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Refused {}

/// Resolver errors are boxed as this; a concrete type boxed twice would hide from `downcast`.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A name that does not resolve.
#[derive(Debug)]
struct NoSuchHost(String);

impl std::fmt::Display for NoSuchHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no such host {}", self.0)
    }
}
impl std::error::Error for NoSuchHost {}

/// Why `ip` is not a public address, or `None` when it is one.
pub fn private_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return private_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            // 6to4 (2002::/16) carries an IPv4 address in bits 16–47: a relay delivers the
            // request to that address, so it is judged by it.
            if seg[0] == 0x2002 {
                let [a, b] = seg[1].to_be_bytes();
                let [c, d] = seg[2].to_be_bytes();
                return private_v4(Ipv4Addr::new(a, b, c, d));
            }
            if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata address")
            } else if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("a unique local (private) address")
            } else if seg[0] & 0xffc0 == 0xfe80 || seg[0] & 0xffc0 == 0xfec0 {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
                Some("a documentation address (2001:db8::/32)")
            } else {
                None
            }
        }
    }
}

fn private_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("a cloud metadata address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else if matches!(
        (o[0], o[1], o[2]),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113)
    ) {
        Some("a documentation address (TEST-NET)")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("a benchmarking address (198.18.0.0/15)")
    } else if o[0] == 0
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] >= 240
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
    {
        Some("a reserved address")
    } else {
        None
    }
}

impl TargetPolicy {
    /// A policy with the test guards of this process's environment.
    pub fn from_env(deny_private: bool) -> TargetPolicy {
        let loopback_only =
            std::env::var_os("HOOKOPS_LOOPBACK_ONLY").is_some_and(|v| !v.is_empty() && v != "0");
        let mut overrides: HashMap<String, Vec<IpAddr>> = HashMap::new();
        if let Ok(list) = std::env::var("HOOKOPS_RESOLVE") {
            for pair in list.split(',') {
                if let Some((host, ip)) = pair.split_once('=')
                    && let Ok(ip) = ip.trim().parse::<IpAddr>()
                {
                    overrides
                        .entry(host.trim().to_ascii_lowercase())
                        .or_default()
                        .push(ip);
                }
            }
        }
        TargetPolicy {
            deny_private: AtomicBool::new(deny_private),
            loopback_only,
            overrides,
        }
    }

    /// Why a request to `ip` (named `host`, or an IP literal when `None`) is refused, or
    /// `None` when it may go.
    fn refusal(&self, host: Option<&str>, ip: IpAddr) -> Option<String> {
        let shown = || match host {
            Some(host) if host != ip.to_string() => format!("{host} resolves to {ip}, which"),
            _ => ip.to_string(),
        };
        // The policy is checked first: it is what an operator asked for; the guard is a test's
        // safety net.
        if self.deny_private.load(Ordering::Relaxed)
            && let Some(reason) = private_reason(ip)
        {
            return Some(format!(
                "refused by policy deny_private_targets: {} is {reason}",
                shown()
            ));
        }
        if self.loopback_only && !ip.to_canonical().is_loopback() {
            return Some(format!(
                "refused: {} is not a loopback address and HOOKOPS_LOOPBACK_ONLY is set",
                shown()
            ));
        }
        None
    }

    /// The addresses of `host` a request may use; an error when none is left.
    fn filter(&self, host: &str, addrs: Vec<IpAddr>) -> Result<Vec<IpAddr>, Refused> {
        let mut first_refusal = None;
        let kept: Vec<IpAddr> = addrs
            .into_iter()
            .filter(|ip| match self.refusal(Some(host), *ip) {
                Some(r) => {
                    first_refusal.get_or_insert(r);
                    false
                }
                None => true,
            })
            .collect();
        match (kept.is_empty(), first_refusal) {
            (true, Some(r)) => Err(Refused(r)),
            _ => Ok(kept),
        }
    }
}

/// The resolver every request uses: answers from the overrides, `.invalid` and `localhost`
/// locally, otherwise the system's resolver; then drops what [`TargetPolicy`] refuses.
struct PolicyResolver(Arc<TargetPolicy>);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let target = self.0.clone();
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        Box::pin(async move {
            let addrs: Vec<IpAddr> = if let Some(a) = target.overrides.get(&host) {
                a.clone()
            } else if host == "invalid" || host.ends_with(".invalid") {
                return Err(Box::new(NoSuchHost(host)) as _);
            } else if host == "localhost" || host.ends_with(".localhost") {
                vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
            } else if target.loopback_only {
                // Never ask DNS under the guard: a test must not touch the network.
                return Err(Box::new(Refused(format!(
                    "refused: {host} is not a loopback name and HOOKOPS_LOOPBACK_ONLY is set"
                ))) as _);
            } else {
                tokio::net::lookup_host((host.as_str(), 0))
                    .await
                    .map_err(|_| Box::new(NoSuchHost(host.clone())) as BoxError)?
                    .map(|sa| sa.ip())
                    .collect()
            };
            if addrs.is_empty() {
                return Err(Box::new(NoSuchHost(host)) as _);
            }
            let kept = target
                .filter(&host, addrs)
                .map_err(|e| Box::new(e) as BoxError)?;
            Ok(Box::new(kept.into_iter().map(|ip| SocketAddr::new(ip, 0))) as reqwest::dns::Addrs)
        })
    }
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
    /// A sender applying `policies` (see [`Sender::set_policies`] for changes later).
    pub fn new(policies: Policies) -> Result<Sender, String> {
        install_crypto_provider();
        let target = Arc::new(TargetPolicy::from_env(policies.deny_private_targets));
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(PolicyResolver(target.clone())))
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
            max_body: AtomicUsize::new(policies.max_body_bytes),
            target,
            targets: Mutex::new(HashMap::new()),
        })
    }

    /// Applies policies changed in the database (the dispatcher re-reads them every few
    /// seconds); connections already open are reused only for addresses they were allowed.
    pub fn set_policies(&self, policies: Policies) {
        self.max_body
            .store(policies.max_body_bytes, Ordering::Relaxed);
        self.target
            .deny_private
            .store(policies.deny_private_targets, Ordering::Relaxed);
    }

    /// The parts of `lease`'s requests that are the same for every attempt of its stage,
    /// worked out once per workflow revision (a lookup allocates nothing).
    fn target(&self, lease: &Lease, cfg: &WebhookConfig) -> Arc<Target> {
        let build = || Arc::new(Target::new(cfg, &lease.spec.secrets));
        let Ok(mut map) = self.targets.lock() else {
            return build();
        };
        if let Some((revision, stages)) = map.get(lease.workflow.as_str())
            && *revision == lease.revision
            && let Some(t) = stages.get(lease.stage.as_str())
        {
            return t.clone();
        }
        if map.len() > 64 {
            map.clear();
        }
        let entry = map
            .entry(lease.workflow.to_string())
            .or_insert_with(|| (lease.revision, HashMap::new()));
        if entry.0 != lease.revision {
            *entry = (lease.revision, HashMap::new());
        }
        entry
            .1
            .entry(lease.stage.to_string())
            .or_insert_with(build)
            .clone()
    }

    /// Sends the lease's attempt and describes the outcome. Never fails: every problem is an
    /// error kind and message in the outcome.
    pub async fn send(&self, lease: &Lease) -> AttemptOutcome {
        let started = chrono::Utc::now();
        let clock = Instant::now();
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
        let target = self.target(lease, cfg);
        let redactor = &target.redactor;
        out.url = target.shown_url.clone();
        let max_body = self.max_body.load(Ordering::Relaxed);
        if lease.body.len() > max_body {
            out.error_kind = Some(ErrorKind::Policy);
            out.error_message = Some(classify::body_too_large_message(lease.body.len(), max_body));
            return out;
        }
        let url = match &target.url {
            Ok(url) => url.clone(),
            Err(message) => {
                out.error_kind = Some(ErrorKind::Policy);
                out.error_message = Some(message.clone());
                return out;
            }
        };
        // An IP literal skips the resolver, so its address is checked here.
        if let Some(ip) = target.literal
            && let Some(why) = self.target.refusal(None, ip)
        {
            out.error_kind = Some(ErrorKind::Policy);
            out.error_message = Some(redactor.redact(&why));
            return out;
        }
        let timestamp = started.timestamp();
        let mut dynamic: Vec<(HeaderName, String)> = vec![
            (WEBHOOK_ID, lease.delivery_id.to_string()),
            (WEBHOOK_TIMESTAMP, timestamp.to_string()),
        ];
        match sign::signature_header(
            &cfg.secrets,
            lease.delivery_id.as_str(),
            timestamp,
            &lease.body,
        ) {
            Ok(Some(sig)) => dynamic.push((WEBHOOK_SIGNATURE, sig)),
            Ok(None) => {}
            Err(e) => {
                out.error_kind = Some(ErrorKind::Policy);
                out.error_message = Some(format!("cannot sign the request: {e}"));
                return out;
            }
        }
        dynamic.push((HOOKOPS_ATTEMPT, lease.number.to_string()));
        let (head, tail) = match &target.headers {
            Ok(parts) => parts,
            Err(message) => {
                out.error_kind = Some(ErrorKind::Policy);
                out.error_message = Some(message.clone());
                return out;
            }
        };
        // As recorded: in the order sent, secrets redacted (the per-attempt values hold none,
        // but they are redacted like any other value).
        let mut shown = Vec::with_capacity(head.len() + dynamic.len() + tail.len());
        let mut map = HeaderMap::with_capacity(shown.capacity());
        for (name, value, as_shown) in head {
            shown.push(as_shown.clone());
            map.append(name.clone(), value.clone());
        }
        for (name, value) in dynamic {
            shown.push((name.as_str().to_string(), redactor.redact(&value)));
            match HeaderValue::try_from(value) {
                Ok(v) => {
                    map.append(name, v);
                }
                Err(_) => {
                    out.error_kind = Some(ErrorKind::Policy);
                    out.error_message = Some(format!("header `{name}` is not a valid HTTP header"));
                    return out;
                }
            }
        }
        for (name, value, as_shown) in tail {
            shown.push(as_shown.clone());
            map.append(name.clone(), value.clone());
        }
        out.request_headers = shown;

        let request = self
            .client
            .post(url)
            .headers(map)
            .timeout(cfg.timeout)
            .body(lease.body.clone());
        let finish =
            |out: &mut AttemptOutcome| out.duration_ms = clock.elapsed().as_millis() as i64;
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
                    let prefix = out
                        .error_message
                        .take()
                        .map(|m| format!("{m}; "))
                        .unwrap_or_default();
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
    let mut not_http = false;
    let mut text = Vec::new();
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return (ErrorKind::Policy, r.0.clone());
        }
        if let Some(n) = s.downcast_ref::<NoSuchHost>() {
            return (
                ErrorKind::Connect,
                format!("could not resolve host {}", n.0),
            );
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        if s.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        // hyper could not parse the response head: bytes came back, but not HTTP.
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
        {
            not_http = true;
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
        return (
            ErrorKind::Tls,
            classify::one_line(&format!("TLS error: {all}")),
        );
    }
    if all.contains("dns error") || all.contains("failed to lookup address") {
        let host = e
            .url()
            .and_then(|u| u.host_str())
            .unwrap_or("the host")
            .to_string();
        return (ErrorKind::Connect, format!("could not resolve host {host}"));
    }
    if not_http {
        return (
            ErrorKind::Protocol,
            classify::error_message(ErrorKind::Protocol, text.last().map_or("", String::as_str)),
        );
    }
    if let Some(kind) = io_kind {
        let what = classify::io_error_message(kind);
        return (ErrorKind::Connect, what.to_string());
    }
    (ErrorKind::Connect, classify::one_line(&all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_named() {
        for (ip, want) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "shared"),
            ("0.0.0.0", "reserved"),
            ("::1", "loopback"),
            ("fd00:ec2::254", "metadata"),
            ("fc00::1", "unique local"),
            ("fe80::1", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "metadata"),
            // Documentation and benchmarking ranges (RFC 5737, 2544, 3849).
            ("192.0.2.10", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.255", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.254", "benchmarking"),
            ("2001:db8::1", "documentation"),
            // 6to4 and IPv4-mapped: judged by the IPv4 address they carry.
            ("2002:a00:1::", "private"),
            ("2002:a9fe:a9fe::1", "metadata"),
            ("2002:7f00:1::", "loopback"),
            ("::ffff:169.254.169.254", "metadata"),
            ("::ffff:192.0.2.1", "documentation"),
        ] {
            let why = private_reason(ip.parse().unwrap());
            assert!(why.is_some_and(|w| w.contains(want)), "{ip}: {why:?}");
        }
        for ip in [
            "93.184.216.34",
            "2606:4700::1111",
            "8.8.8.8",
            // Just outside the ranges above, and a 6to4 or mapped public address.
            "198.20.0.1",
            "198.17.255.255",
            "192.0.3.1",
            "2001:db9::1",
            "2002:808:808::",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(private_reason(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn the_policy_filters_resolved_addresses() {
        let t = TargetPolicy::default();
        let private: IpAddr = "10.0.0.5".parse().unwrap();
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        assert_eq!(t.filter("h", vec![private]).unwrap(), vec![private]);
        t.deny_private.store(true, Ordering::Relaxed);
        assert_eq!(t.filter("h", vec![private, public]).unwrap(), vec![public]);
        let err = t.filter("rebind.example", vec![private]).unwrap_err();
        assert!(
            err.0.contains("rebind.example resolves to 10.0.0.5"),
            "{err}"
        );
        let guard = TargetPolicy {
            loopback_only: true,
            ..TargetPolicy::default()
        };
        assert!(guard.refusal(Some("x"), public).is_some());
        assert!(
            guard
                .refusal(Some("x"), "127.0.0.1".parse().unwrap())
                .is_none()
        );
        assert!(
            guard
                .refusal(Some("x"), "::ffff:127.0.0.1".parse().unwrap())
                .is_none()
        );
    }
}
