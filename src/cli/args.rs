//! The arguments and helpers several commands share: the delivery filters (`deliveries`,
//! `deliveries export`, `delivery cancel`, `refire --failed`) and the confirmation prompt.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;

use super::CliError;
use crate::actions::FilterParams;
use crate::store::DeliveryFilter;

/// `hookops deliveries`: the filters, and how to show what they select.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// At most N rows, newest first (0 = all)
    #[arg(long, default_value_t = super::item::DEFAULT_LIMIT)]
    pub limit: usize,
    /// Print JSON instead of text (JSON Lines with --follow)
    #[arg(long)]
    pub json: bool,
    /// Print each new attempt of a matching delivery as it is recorded, until Ctrl-C (from now, or from --since)
    #[arg(long, conflicts_with = "group_by")]
    pub follow: bool,
    /// Group the failed deliveries the filters select: `cause` (stage, error kind, status, normalised message)
    #[arg(long, value_name = "BY", value_parser = ["cause"])]
    pub group_by: Option<String>,
}

/// The one delivery filter (issue 18), with the same flags on `deliveries`, `deliveries
/// export`, `refire --failed`, `refire --replay --failed` and `delivery cancel`. Values are
/// read by `actions::FilterParams`, as the API's and the console's are.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only deliveries of this workflow (id)
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only deliveries of this stage (id; an action needs --workflow with it)
    #[arg(long)]
    pub stage: Option<String>,
    /// pending, in_flight, retry_scheduled, succeeded, failed or cancelled
    #[arg(long)]
    pub state: Option<String>,
    /// Only deliveries of this item (id)
    #[arg(long)]
    pub item: Option<String>,
    /// stage.webhook, webhook.test or a notification event
    #[arg(long)]
    pub event: Option<String>,
    /// What made the delivery: route, assign, refire or test
    #[arg(long)]
    pub trigger: Option<String>,
    /// HTTP status of the last attempt: codes or classes, repeatable or comma-separated (503, 5xx,408)
    #[arg(long, value_name = "CODE")]
    pub status: Vec<String>,
    /// Error kind of the last attempt, repeatable or comma-separated: connect, timeout, tls, protocol, redirect, http_status, body, policy, interrupted (with --status: either matches)
    #[arg(long, value_name = "KIND")]
    pub error_kind: Vec<String>,
    /// Only deliveries created at or after this time (RFC 3339, or a duration like 2h ago)
    #[arg(long)]
    pub since: Option<String>,
    /// Only deliveries created before this time (RFC 3339, or a duration like 10m ago)
    #[arg(long)]
    pub until: Option<String>,
    /// Only the re-fires of this delivery (id)
    #[arg(long, value_name = "ID")]
    pub refire_of: Option<String>,
    /// Only failures of this cause, exactly as `--group-by cause` shows it ('timed out after # s')
    #[arg(long, value_name = "CAUSE")]
    pub message_class: Option<String>,
    /// Only deliveries whose id, item id or item name contains this text
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
}

impl FilterArgs {
    /// The filter's fields as text, for `actions::FilterParams`.
    pub(super) fn params(&self) -> FilterParams {
        let list = |v: &[String]| (!v.is_empty()).then(|| v.join(","));
        FilterParams {
            workflow: self.workflow.clone(),
            stage: self.stage.clone(),
            state: self.state.clone(),
            item: self.item.clone(),
            event: self.event.clone(),
            trigger: self.trigger.clone(),
            status: list(&self.status),
            error_kind: list(&self.error_kind),
            since: self.since.clone(),
            until: self.until.clone(),
            refire_of: self.refire_of.clone(),
            message_class: self.message_class.clone(),
            search: self.search.clone(),
        }
    }

    /// The typed filter; a bad value is bad usage (exit 2), naming its flag.
    pub(super) fn filter(&self) -> Result<DeliveryFilter, CliError> {
        self.params()
            .to_filter(chrono::Utc::now())
            .map_err(|e| CliError::usage(format!("--{} {}", e.field.replace('_', "-"), e.message)))
    }

    /// Whether `--item` is given and nothing narrows it but `--workflow` and `--stage`: the
    /// id form "that item's latest stage delivery" of refire, cancel and test.
    pub(super) fn only_item(&self) -> bool {
        self.item.is_some()
            && FilterArgs {
                item: None,
                workflow: None,
                stage: None,
                ..self.clone()
            }
            .is_empty()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.workflow.is_none()
            && self.stage.is_none()
            && self.state.is_none()
            && self.item.is_none()
            && self.event.is_none()
            && self.trigger.is_none()
            && self.status.is_empty()
            && self.error_kind.is_empty()
            && self.since.is_none()
            && self.until.is_none()
            && self.refire_of.is_none()
            && self.message_class.is_none()
            && self.search.is_none()
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
