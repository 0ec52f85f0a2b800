//! Webhook delivery: signing, payloads, outcome rules, HTTP and the dispatcher loop.
//!
//! [`sign`], [`payload`] and [`classify`] are pure (no IO, no clock reads, no randomness):
//! they compute Standard Webhooks signatures, build the frozen request bodies, and turn a
//! status or transport error into a retry decision and a one-line message. [`http`] sends one
//! attempt and describes it; [`dispatcher`] leases, sends and records with bounded
//! concurrency through the store.

pub mod classify;
pub mod dispatcher;
pub mod http;
pub mod payload;
pub mod sign;

pub use dispatcher::{AttemptEvent, DispatchNotice, DispatcherOptions, run, send_manual};
