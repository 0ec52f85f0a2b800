//! Webhook delivery: signing, payloads, outcome rules, HTTP and the dispatcher loop.
//!
//! [`sign`] is pure (no IO, no clock reads, no randomness): it computes Standard Webhooks
//! signatures. The rules of an outcome and the request bodies are pure too and live in
//! [`crate::engine`] (`classify`, `payload`, `delivery`), below the store. [`http`] sends one
//! attempt and describes it; [`dispatcher`] leases, sends and records with bounded
//! concurrency through the store.

pub mod dispatcher;
pub mod http;
pub mod sign;

pub use dispatcher::{DEFAULT_CONCURRENCY, DispatchNotice, DispatcherOptions, run, send_manual};
