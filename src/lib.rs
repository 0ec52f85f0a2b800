//! hookops: a terminal console, delivery engine and CLI for annotation workflows whose stages
//! fire webhooks. See `ARCHITECTURE.md` for the map.
#![forbid(unsafe_code)]

pub mod actions;
pub mod api;
pub mod cli;
pub mod dispatch;
pub mod engine;
pub mod fileid;
pub mod import;
pub mod model;
pub mod receiver;
pub mod redact;
pub mod sanitize;
pub mod store;
pub mod tui;
pub mod workflow;
