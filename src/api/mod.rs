//! The HTTP API of `hookops serve --api` (issue 7): the network edge over the same library
//! functions the CLI and the console call.
//!
//! Invariants this module keeps:
//! - No second implementation of any action: every handler calls a `Store` method or the
//!   actions layer (`crate::actions`: re-fire, replay, cancel, test; on a blocking thread,
//!   `spawn_blocking`), exactly as the CLI and the console do, and answers with the CLI's
//!   `--json` serde types (design §6 "one JSON shape per object"). Bulk actions run as jobs
//!   (`jobs.rs`).
//! - One table ([`routes::ENDPOINTS`]) registers every route and describes it; the OpenAPI
//!   document at `/openapi.json` is generated from that table and the handlers' serde types,
//!   so what is served and what is documented cannot drift.
//! - Every call except `GET /healthz` needs a bearer token; tokens are compared in constant
//!   time and never logged; the token's name is the operator in audit rows.
//! - Errors are `{"error": {"code", "message", "details"?}}` with the status that says why.

mod auth;
mod error;
mod handlers;
mod jobs;
mod metrics;
mod openapi;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::sync::{broadcast, watch};

pub use auth::{ENV_TOKEN_NAME, TokenError, Tokens};
pub use error::{ApiError, ErrorBody, ErrorDetail, FieldError};
pub use handlers::{
    AdvanceRequest, BulkRequest, FailureGroupView, Health, ImportResponse, ItemLatestParams, Page,
    SetStageRequest, StagePauseState, TestDeliveryRequest, TestRequest,
};
pub use jobs::{Job, JobState};
pub use metrics::Metrics;
pub use openapi::document as openapi_document;
pub use routes::MAX_URI;

use crate::dispatch::DispatchNotice;
use crate::store::Store;

/// Default request body cap (16 MiB; an import line may be 16 MiB too, design §6).
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;
/// Default address of `serve --api` given without one.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8787";

/// How to run the API.
#[derive(Clone)]
pub struct ApiOptions {
    pub addr: SocketAddr,
    pub tokens: Tokens,
    /// Request bodies larger than this are refused with 413.
    pub max_body: usize,
    /// Largest body a replay or test may send (the dispatcher's policy).
    pub max_send_body: usize,
}

/// What handlers share.
pub(crate) struct AppState {
    pub store: Store,
    pub tokens: Tokens,
    pub max_body: usize,
    pub max_send_body: usize,
    pub metrics: Arc<Metrics>,
    /// Where replays and tests sent by the API publish their attempt (the console's log pane
    /// and `serve`'s output see them like any other attempt).
    pub events: Option<broadcast::Sender<DispatchNotice>>,
    /// The bulk jobs this process runs (`/v1/jobs/{id}`).
    pub jobs: Arc<jobs::Jobs>,
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "refusing to serve the API on {0} without tokens: a non-loopback address needs --api-tokens FILE or HOOKOPS_API_TOKEN"
    )]
    NoTokens(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The router with every endpoint, auth and the body cap, over `store`.
pub fn router(
    store: Store,
    opts: &ApiOptions,
    metrics: Arc<Metrics>,
    events: Option<broadcast::Sender<DispatchNotice>>,
) -> Router {
    let state = Arc::new(AppState {
        store,
        tokens: opts.tokens.clone(),
        max_body: opts.max_body,
        max_send_body: opts.max_send_body,
        metrics,
        events,
        jobs: Arc::default(),
    });
    routes::build(state)
}

/// A bound API server, ready to run.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    metrics: Arc<Metrics>,
    events: Option<broadcast::Sender<DispatchNotice>>,
}

impl Server {
    /// Checks the options (a non-loopback address needs tokens) and binds the address.
    pub async fn bind(
        store: Store,
        opts: ApiOptions,
        metrics: Arc<Metrics>,
        events: Option<broadcast::Sender<DispatchNotice>>,
    ) -> Result<Server, StartError> {
        if !opts.addr.ip().is_loopback() && opts.tokens.is_empty() {
            return Err(StartError::NoTokens(opts.addr));
        }
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: opts.addr,
                source,
            })?;
        let router = router(store, &opts, metrics.clone(), events.clone());
        Ok(Server {
            listener,
            router,
            metrics,
            events,
        })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` becomes true; open requests are finished first. The metrics
    /// count every attempt published on `events` (the dispatcher's and the API's own).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
        if let Some(tx) = &self.events {
            let mut feed = tx.subscribe();
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                loop {
                    match feed.recv().await {
                        Ok(DispatchNotice::Attempt(e)) => metrics.observe(&e),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
        }
        drop(self.events);
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                while !*shutdown.borrow() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await
    }
}
