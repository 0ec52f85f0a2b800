//! `hookops serve` (the dispatcher without the console) and `hookops receiver`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Args;
use tokio::sync::{broadcast, watch};

use super::{CliError, Global};
use crate::dispatch::{DispatchNotice, DispatcherOptions};
use crate::receiver::{ReceiverOptions, Script};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Requests in flight at once in this process
    #[arg(long, default_value_t = crate::dispatch::DEFAULT_CONCURRENCY as u32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Print one JSON object per attempt instead of a line of text
    #[arg(long)]
    pub json: bool,
    /// Write diagnostics (tracing) to this file
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Prune finished deliveries older than this at start and then once an hour (e.g. 30d)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retain: Option<std::time::Duration>,
    /// Serve the HTTP API on this address [default when given alone: 127.0.0.1:8787]
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = crate::api::DEFAULT_ADDR)]
    pub api: Option<SocketAddr>,
    /// Bearer tokens for the API: lines of `name:token` (the file must not be world-readable);
    /// else $HOOKOPS_API_TOKEN (operator name `api`)
    #[arg(long, value_name = "FILE", requires = "api")]
    pub api_tokens: Option<PathBuf>,
    /// Refuse webhook URLs that resolve to private, loopback, link-local or metadata
    /// addresses, even when the stored policy allows them (`hookops policy` sets it for all)
    #[arg(long)]
    pub deny_private_targets: bool,
    /// Largest API request body in bytes (larger ones get 413)
    #[arg(long, value_name = "BYTES", default_value_t = crate::api::DEFAULT_MAX_BODY)]
    pub api_max_body: usize,
}

/// The API's options from the flags and `HOOKOPS_API_TOKEN`.
fn api_options(addr: SocketAddr, a: &ServeArgs) -> Result<crate::api::ApiOptions, CliError> {
    use crate::api::Tokens;
    let tokens = match &a.api_tokens {
        Some(path) => Tokens::from_file(path).map_err(|e| CliError::usage(e.to_string()))?,
        None => match std::env::var("HOOKOPS_API_TOKEN") {
            Ok(t) if !t.is_empty() => Tokens::single(crate::api::ENV_TOKEN_NAME, &t)
                .map_err(|e| CliError::usage(e.to_string()))?,
            _ => Tokens::default(),
        },
    };
    if tokens.is_empty() && !addr.ip().is_loopback() {
        return Err(CliError::usage(
            crate::api::StartError::NoTokens(addr).to_string(),
        ));
    }
    if tokens.is_empty() {
        eprintln!(
            "hookops serve: warning: the API has no token (no --api-tokens, no $HOOKOPS_API_TOKEN): every call but /healthz will get 401"
        );
    }
    Ok(crate::api::ApiOptions {
        addr,
        tokens,
        max_body: a.api_max_body,
        max_send_body: crate::dispatch::http::DEFAULT_MAX_BODY,
    })
}

#[derive(Debug, Args)]
pub struct ReceiverArgs {
    /// Port on 127.0.0.1 (0 picks a free one and prints it)
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    /// Address to bind instead of 127.0.0.1
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Scripted behaviour per path, e.g. '/validate=fail-first-2,/export=500,*=ok';
    /// `callback:STAGE` answers 200 then moves the item through the API ($HOOKOPS_API_URL,
    /// $HOOKOPS_API_TOKEN)
    #[arg(long)]
    pub script: Option<String>,
    /// whsec_ key to verify Standard Webhooks signatures with (repeatable)
    #[arg(long = "secret", value_name = "WHSEC")]
    pub secrets: Vec<String>,
    /// Append every request received as a JSON line to this file
    #[arg(long, value_name = "PATH")]
    pub record: Option<PathBuf>,
    /// Print nothing per request
    #[arg(long)]
    pub quiet: bool,
}

/// Sends a clean stop to `tx` on Ctrl-C or SIGTERM.
async fn stop_on_signal(tx: watch::Sender<bool>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    let _ = tx.send(true);
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    let _ = tx.send(true);
}

/// Sends tracing output to a file (created 0600), never to the terminal.
pub fn init_log_file(path: Option<&PathBuf>) -> Result<(), CliError> {
    let Some(path) = path else { return Ok(()) };
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let file = o
        .open(path)
        .map_err(|e| CliError::usage(format!("cannot open log file {}: {e}", path.display())))?;
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("HOOKOPS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The HTTP stack logs host names, ports and headers at debug and trace, and a secret can
    // be any of them (a `${…}` in a URL's host): its logs stop at warnings, whatever
    // HOOKOPS_LOG asks. hookops's own lines are redacted where they are made.
    for target in [
        "reqwest",
        "hyper",
        "hyper_util",
        "h2",
        "rustls",
        "tower",
        "tower_http",
        "axum",
    ] {
        if let Ok(directive) = format!("{target}=warn").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init();
    Ok(())
}

pub fn serve(g: &Global, a: ServeArgs) -> Result<(), CliError> {
    init_log_file(a.log_file.as_ref())?;
    let store = g.open_or_create()?;
    // A read-only `serve --api` answers reads and refuses every action; it sends nothing.
    let dispatch = !(g.read_only && a.api.is_some());
    if dispatch {
        store.ensure_writable("serve")?;
    }
    // Taken right after opening: the file this process reads and writes from now on.
    // (A server database has no file to watch.)
    let file = store
        .file()
        .map(|p| (p.to_path_buf(), crate::fileid::identity(p)));
    let api = a.api.map(|addr| api_options(addr, &a)).transpose()?;
    let rt = super::deliveries_runtime()?;
    rt.block_on(async move {
        let (tx, rx) = watch::channel(false);
        let file_gone = Arc::new(Mutex::new(None));
        if let Some((path, opened)) = file {
            tokio::spawn(watch_file(path, opened, tx.clone(), file_gone.clone()));
        }
        tokio::spawn(stop_on_signal(tx));
        let (events, mut sub) = broadcast::channel(4096);
        let api_task = match api {
            Some(opts) => Some(start_api(&store, opts, &events, rx.clone()).await?),
            None => None,
        };
        let opts = DispatcherOptions {
            concurrency: a.concurrency as usize,
            deny_private_targets: a.deny_private_targets,
            ..DispatcherOptions::default()
        };
        if dispatch {
            eprintln!(
                "hookops serve: dispatching from {} with concurrency {} (Ctrl-C to stop)",
                store.location(),
                opts.concurrency
            );
        }
        if dispatch && let Ok(p) = store.policies() {
            let p = p.tightened(opts.deny_private_targets, opts.max_body);
            eprintln!("hookops serve: policies: {}", p.summary());
        }
        let json = a.json;
        let printer = tokio::spawn(async move {
            loop {
                match sub.recv().await {
                    Ok(DispatchNotice::Attempt(e)) => {
                        if json {
                            if let Ok(line) = serde_json::to_string(&e) {
                                outln!("{line}");
                            }
                        } else {
                            outln!("{}", super::deliveries::attempt_line(&e));
                        }
                    }
                    Ok(DispatchNotice::StoreError(m)) => eprintln!("hookops serve: {m}"),
                    Ok(DispatchNotice::Recovered) => eprintln!("hookops serve: dispatch resumed"),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!(
                            "hookops serve: {n} attempt line(s) not printed (output too slow)"
                        )
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        if let Some(age) = a.retain.filter(|_| dispatch) {
            tokio::spawn(super::ops::retain(store.clone(), age, g.operator()));
        }
        let result = if dispatch {
            crate::dispatch::run(store, opts, events, rx).await
        } else {
            eprintln!(
                "hookops serve: read-only on {}: no dispatcher runs; the API answers reads and refuses every action (Ctrl-C to stop)",
                store.location()
            );
            drop(events);
            let mut rx = rx;
            while !*rx.borrow() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
            Ok(())
        };
        // The API finishes its open requests, then lets go of its sender of `events`.
        if let Some(t) = api_task {
            match t.await {
                Ok(Err(e)) => eprintln!("hookops serve: API stopped: {e}"),
                Err(e) => eprintln!("hookops serve: API stopped: {e}"),
                Ok(Ok(())) => {}
            }
        }
        let _ = printer.await;
        result.map_err(CliError::from)?;
        let gone = file_gone.lock().ok().and_then(|mut g| g.take());
        match gone {
            // Exit 1 so that a supervisor restarts serve, on the file now at the path.
            Some(why) => Err(CliError::failure(format!(
                "{why}: serve stopped leasing, let what was in flight finish or handed it back, and exits (start it again to dispatch from the file now at that path)"
            ))),
            None => Ok(()),
        }
    })
}

/// Once a second, like the console: when the path no longer leads to the database file this
/// process opened (deleted, or replaced by a restore), records why in `gone` and stops serve.
/// Going on would send from the old file: its writes would be lost and its deliveries stale.
async fn watch_file(
    path: PathBuf,
    opened: Option<crate::fileid::FileId>,
    stop: watch::Sender<bool>,
    gone: Arc<Mutex<Option<String>>>,
) {
    let mut stopped = stop.subscribe();
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
        let p = path.clone();
        let problem = tokio::task::spawn_blocking(move || crate::fileid::problem(&p, opened))
            .await
            .ok()
            .flatten();
        if let Some(why) = problem {
            if let Ok(mut g) = gone.lock() {
                *g = Some(why);
            }
            let _ = stop.send(true);
            return;
        }
    }
}

/// Binds the API and runs it until `stop`; its metrics follow the dispatcher's attempts.
async fn start_api(
    store: &crate::store::Store,
    opts: crate::api::ApiOptions,
    events: &broadcast::Sender<DispatchNotice>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, CliError> {
    let metrics = std::sync::Arc::new(crate::api::Metrics::default());
    let server = crate::api::Server::bind(store.clone(), opts, metrics, Some(events.clone()))
        .await
        .map_err(|e| CliError::failure(e.to_string()))?;
    let addr = server
        .local_addr()
        .map_err(|e| CliError::failure(format!("API: {e}")))?;
    eprintln!("hookops serve: API on http://{addr}");
    Ok(tokio::spawn(server.run(stop)))
}

pub fn receiver(a: ReceiverArgs) -> Result<(), CliError> {
    let script = match &a.script {
        Some(s) => s
            .parse::<Script>()
            .map_err(|e| CliError::usage(e.to_string()))?,
        None => Script::default(),
    };
    // `callback:STAGE` rules call the API of a `serve --api` ($HOOKOPS_API_URL, default
    // 127.0.0.1:8787) with $HOOKOPS_API_TOKEN.
    let script = match std::env::var("HOOKOPS_API_TOKEN") {
        Ok(token) if !token.is_empty() => script.with_callback_api(crate::receiver::CallbackApi {
            url: std::env::var("HOOKOPS_API_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| format!("http://{}", crate::api::DEFAULT_ADDR)),
            token,
        }),
        _ => script,
    };
    let opts = ReceiverOptions {
        addr: SocketAddr::new(a.bind, a.port),
        script,
        secrets: a.secrets,
        quiet: a.quiet,
        // The CLI never reads the in-memory log; keeping it would only grow for ever.
        keep_log: false,
    };
    let rt = super::deliveries_runtime()?;
    rt.block_on(crate::receiver::run_cli(opts, a.record))
        .map_err(|e| CliError::failure(format!("receiver: {e}")))
}
