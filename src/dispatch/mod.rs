//! Webhook delivery: signing, payloads and outcome rules.
//!
//! The submodules here are pure (no IO, no clock reads, no randomness): [`sign`] computes
//! Standard Webhooks signatures, [`payload`] builds the frozen request bodies from the store's
//! types, and [`classify`] turns a status or transport error into a retry decision and a
//! one-line message. The dispatcher runtime that leases, sends and records builds on them.

pub mod classify;
pub mod payload;
pub mod sign;
