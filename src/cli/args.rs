//! The arguments and helpers several commands share: the delivery filters (`deliveries`,
//! `deliveries export`, `delivery cancel`, `refire --failed`), `--since`, the confirmation
//! prompt and the size of a bulk action's chunks.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;

use super::CliError;
use crate::model::{DeliveryState, ErrorKind, EventType, ItemId, StageId, WorkflowId};
use crate::store::DeliveryFilter;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// pending, in_flight, retry_scheduled, succeeded, failed or cancelled
    #[arg(long)]
    pub state: Option<DeliveryState>,
    /// Only deliveries of this stage (id; without --workflow, that stage id in every workflow)
    #[arg(long)]
    pub stage: Option<String>,
    /// Only deliveries of this workflow (id)
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only deliveries of this item (id)
    #[arg(long)]
    pub item: Option<String>,
    /// stage.webhook or webhook.test
    #[arg(long)]
    pub event: Option<EventType>,
    /// Error kind of the last attempt: connect, timeout, tls, protocol, redirect, http_status, body, policy, interrupted
    #[arg(long, value_name = "KIND")]
    pub error_kind: Option<crate::model::ErrorKind>,
    /// HTTP status of the last attempt, e.g. 503
    #[arg(long, value_name = "CODE")]
    pub status: Option<u16>,
    /// At most N rows, newest first (0 = all)
    #[arg(long, default_value_t = super::item::DEFAULT_LIMIT)]
    pub limit: usize,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// The `deliveries` filters, shared by export and cancel.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only deliveries of this workflow (id)
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only deliveries of this stage (id; an action needs --workflow with it)
    #[arg(long)]
    pub stage: Option<String>,
    /// pending, in_flight, retry_scheduled, succeeded, failed or cancelled
    #[arg(long)]
    pub state: Option<DeliveryState>,
    /// Only deliveries of this item (id)
    #[arg(long)]
    pub item: Option<String>,
    /// stage.webhook or webhook.test
    #[arg(long)]
    pub event: Option<EventType>,
    /// Error kind of the last attempt: connect, timeout, tls, protocol, redirect, http_status, body, policy, interrupted
    #[arg(long, value_name = "KIND")]
    pub error_kind: Option<ErrorKind>,
    /// HTTP status of the last attempt, e.g. 503
    #[arg(long, value_name = "CODE")]
    pub status: Option<u16>,
    /// Only deliveries created at or after this time (RFC 3339, or a duration like 2h ago)
    #[arg(long)]
    pub since: Option<String>,
}

impl FilterArgs {
    pub(super) fn filter(&self) -> Result<DeliveryFilter, CliError> {
        Ok(DeliveryFilter {
            workflow: self.workflow.as_deref().map(WorkflowId::new),
            stage: self.stage.as_deref().map(StageId::new),
            state: self.state,
            item: self.item.as_deref().map(ItemId::new),
            event: self.event,
            since: self.since.as_deref().map(parse_since).transpose()?,
            error_kind: self.error_kind,
            status: self.status,
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.workflow.is_none()
            && self.stage.is_none()
            && self.state.is_none()
            && self.item.is_none()
            && self.event.is_none()
            && self.error_kind.is_none()
            && self.status.is_none()
            && self.since.is_none()
    }
}

pub(super) fn filter(
    workflow: Option<&String>,
    stage: Option<&String>,
    state: Option<DeliveryState>,
    item: Option<&String>,
    event: Option<EventType>,
) -> DeliveryFilter {
    DeliveryFilter {
        workflow: workflow.map(|w| WorkflowId::new(w.as_str())),
        stage: stage.map(|s| StageId::new(s.as_str())),
        state,
        item: item.map(|i| ItemId::new(i.as_str())),
        event,
        ..DeliveryFilter::default()
    }
}

/// Asks "Proceed? [y/N]" on the terminal; refuses without one (use --yes in scripts).
pub(super) fn confirm(question: &str) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::failure(format!(
            "{question}: refusing without a terminal to confirm on; pass --yes"
        )));
    }
    eprint!("{question}. Proceed? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::failure(format!("cannot read the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

pub(super) fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, CliError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = s.trim().trim_end_matches("ago").trim();
    humantime::parse_duration(d)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| chrono::Utc::now() - d)
        .ok_or_else(|| {
            CliError::usage(format!(
                "--since `{s}` is neither an RFC 3339 time nor a duration like `2h`"
            ))
        })
}

/// Deliveries a bulk re-fire or cancel hands the store at once, between progress updates.
pub(crate) const BULK_CHUNK: usize = 5000;
