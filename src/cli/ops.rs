//! Day-two operations: `prune`, `backup`, `check`, `deliveries export`, `delivery cancel`,
//! `completions` and `man`.
//!
//! Each command is a thin shell over one store function (the console and the API call the same
//! ones); what changes something is audited by the store and refused in `--read-only`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, Subcommand};

use super::deliveries::{ListArgs, confirm, parse_since};
use super::{CliError, Global, output};
use crate::model::{DeliveryId, DeliveryState, ErrorKind, EventType, ItemId, StageId, WorkflowId};
use crate::store::{
    CheckStatus, DeliveryFilter, HealthReport, PruneOptions, PruneReport, check_database,
    human_bytes,
};

/// `hookops deliveries`: a listing, or `deliveries export`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeliveriesArgs {
    #[command(flatten)]
    pub list: ListArgs,
    #[command(subcommand)]
    pub command: Option<DeliveriesCommand>,
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Write matching deliveries as JSON Lines, each with every attempt (secrets masked)
    #[command(after_long_help = super::examples::DELIVERIES_EXPORT)]
    Export(ExportArgs),
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
    fn filter(&self) -> Result<DeliveryFilter, CliError> {
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

    fn is_empty(&self) -> bool {
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

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Write to this file (created 0600) instead of stdout
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite --output when it exists
    #[arg(long)]
    pub force: bool,
    /// At most N deliveries, newest first (0 = all)
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Deliveries to cancel
    pub ids: Vec<String>,
    /// Without ids: every open delivery matching these filters
    #[command(flatten)]
    pub filter: FilterArgs,
    /// At most N deliveries (oldest first)
    #[arg(long, value_parser = super::action_limit)]
    pub limit: Option<usize>,
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove finished deliveries whose last attempt is older than this (e.g. 30d, 12h)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub older_than: Duration,
    /// Also remove audit rows older than this (kept otherwise)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub audit_older_than: Option<Duration>,
    /// Count what would be removed; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the copy (created 0600)
    pub file: PathBuf,
    /// Overwrite FILE when it exists
    #[arg(long)]
    pub force: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Fix what is safe: release expired leases, cancel deliveries orphaned by a moved item,
    /// recompute counters
    #[arg(long)]
    pub repair: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell
    pub shell: clap_complete::Shell,
}

pub fn deliveries(g: &Global, a: DeliveriesArgs) -> Result<(), CliError> {
    match a.command {
        None => super::deliveries::list(g, a.list),
        Some(DeliveriesCommand::Export(e)) => export(g, e),
    }
}

/// Creates `path` with mode 0600 for writing; an existing file only with `force`.
fn create_private(path: &Path, force: bool) -> Result<std::fs::File, CliError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::failure(format!(
                "{} exists; pass --force to overwrite it",
                path.display()
            ))
        } else {
            CliError::failure(format!("cannot create {}: {e}", path.display()))
        }
    })
}

fn export(g: &Global, a: ExportArgs) -> Result<(), CliError> {
    let store = g.open()?;
    let f = a.filter.filter()?;
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(create_private(p, a.force)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let limit = (a.limit != 0).then_some(a.limit);
    let written = store.export_deliveries(&f, limit, &mut out)?;
    if let Some(p) = &a.output {
        eprintln!("exported {written} delivery(ies) to {}", p.display());
    }
    Ok(())
}

pub fn cancel(g: &Global, a: CancelArgs) -> Result<(), CliError> {
    let store = g.open()?;
    let bulk = a.ids.is_empty();
    let ids: Vec<DeliveryId> = if bulk {
        if a.filter.is_empty() {
            return Err(CliError::usage(
                "name the deliveries to cancel, or select them with filters such as --state retry_scheduled --workflow ID",
            ));
        }
        super::check_scope(
            &store,
            a.filter.workflow.as_ref(),
            a.filter.stage.as_ref(),
            "delivery cancel",
        )?;
        store.open_deliveries(&a.filter.filter()?, a.limit)?
    } else {
        if !a.filter.is_empty() || a.limit.is_some() {
            return Err(CliError::usage("give delivery ids or filters, not both"));
        }
        a.ids.iter().map(|i| DeliveryId::new(i.as_str())).collect()
    };
    if ids.is_empty() {
        outln!("nothing to cancel: no open delivery matches");
        return Ok(());
    }
    store.ensure_writable("cancel")?;
    if bulk && !a.yes && !confirm(&format!("cancel {} open delivery(ies)", ids.len()))? {
        return Err(CliError::failure("nothing was cancelled"));
    }
    let mut report = crate::store::CancelReport::default();
    let mut progress = output::Progress::new("cancelled", ids.len(), a.json);
    for (i, chunk) in ids.chunks(super::deliveries::BULK_CHUNK).enumerate() {
        let r = store.cancel_deliveries(chunk, &g.operator())?;
        report.cancelled += r.cancelled;
        report.routed.extend(r.routed);
        report.refused.extend(r.refused);
        progress.update(((i + 1) * super::deliveries::BULK_CHUNK).min(ids.len()));
    }
    drop(progress);
    if a.json {
        output::json(&report)?;
    } else {
        outln!(
            "cancelled {} delivery(ies); {} item(s) routed on failure",
            report.cancelled,
            report.routed.len()
        );
        for (item, to) in &report.routed {
            outln!("  {item} → {to}");
        }
    }
    for (id, why) in &report.refused {
        eprintln!("refused {id}: {why}");
    }
    if !report.refused.is_empty() {
        return Err(CliError::failure(format!(
            "{} of {} delivery(ies) were refused",
            report.refused.len(),
            ids.len()
        )));
    }
    Ok(())
}

pub fn prune(g: &Global, a: PruneArgs) -> Result<(), CliError> {
    let store = g.open()?;
    let opts = PruneOptions {
        older_than: a.older_than,
        audit_older_than: a.audit_older_than,
        dry_run: a.dry_run,
    };
    let r = store.prune(&opts, &g.operator())?;
    if a.json {
        return output::json(&r);
    }
    print_prune(&r, a.older_than);
    Ok(())
}

/// The lines `prune` and `serve --retain` print.
pub fn prune_lines(r: &PruneReport, older_than: Duration) -> Vec<String> {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let mut lines = vec![format!(
        "{verb} {} finished delivery(ies) and {} attempt(s) older than {}",
        r.deliveries,
        r.attempts,
        humantime::format_duration(older_than)
    )];
    lines.push(format!(
        "kept {} as their item's latest delivery in a stage, and every open delivery ({})",
        r.kept_latest, r.kept_open
    ));
    if r.audit_rows > 0 || r.dry_run {
        lines.push(format!("{verb} {} audit row(s)", r.audit_rows));
    }
    if !r.dry_run {
        lines.push(format!(
            "freed {}; database file {} → {} ({} write(s), longest {:.0} ms)",
            human_bytes(r.bytes_freed),
            human_bytes(r.file_bytes_before),
            human_bytes(r.file_bytes_after),
            r.chunks,
            r.longest_chunk_ms
        ));
    }
    lines
}

fn print_prune(r: &PruneReport, older_than: Duration) {
    for l in prune_lines(r, older_than) {
        outln!("{l}");
    }
}

pub fn backup(g: &Global, a: BackupArgs) -> Result<(), CliError> {
    let store = g.open()?;
    let r = store.backup(&a.file, a.force)?;
    if !store.is_read_only() {
        // A backup only reads; a read-only operator may take one, unaudited.
        store.record_audit(&g.operator(), "backup", r.path.display().to_string(), 1)?;
    }
    if a.json {
        return output::json(&r);
    }
    outln!(
        "backed up to {} ({}): {} item(s), {} delivery(ies), {} attempt(s), schema {}",
        r.path.display(),
        human_bytes(r.bytes),
        r.items,
        r.deliveries,
        r.attempts,
        r.schema_version
    );
    outln!(
        "restore: stop hookops, then use it with --db {} (or copy it over the database file)",
        r.path.display()
    );
    Ok(())
}

pub fn check(g: &Global, a: CheckArgs) -> Result<(), CliError> {
    let path = g.db_path();
    if matches!(path.try_exists(), Ok(false)) {
        return Err(CliError::failure(super::missing_message(&path)));
    }
    let report = if a.repair {
        g.open()?.repair(&g.operator())?
    } else {
        check_database(&path)?
    };
    if a.json {
        output::json(&report)?;
    } else {
        for l in health_lines(&report) {
            outln!("{l}");
        }
    }
    if report.ok {
        Ok(())
    } else {
        let n = report
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .count();
        Err(CliError::failure(format!("{n} check(s) failed")))
    }
}

/// The report as text: a title, then one line per check (`status  name  detail`).
pub fn health_lines(r: &HealthReport) -> Vec<String> {
    let mut lines = vec![format!(
        "{} ({})",
        output::clean(&r.path.display().to_string()),
        human_bytes(r.size_bytes)
    )];
    for c in &r.checks {
        lines.push(format!(
            "{:<4}  {:<19}  {}",
            c.status.as_str(),
            c.name,
            output::clean(&c.detail)
        ));
    }
    for done in &r.repaired {
        lines.push(format!("repaired: {done}"));
    }
    lines
}

pub fn completions(a: CompletionsArgs) -> Result<(), CliError> {
    let mut cmd = super::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(a.shell, &mut cmd, "hookops", &mut out);
    Ok(())
}

pub fn man() -> Result<(), CliError> {
    let cmd = super::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .map_err(|e| CliError::failure(format!("cannot write the man page: {e}")))
}

/// `serve --retain`: prunes at start and then once an hour, printing what each run removed.
pub async fn retain(store: crate::store::Store, older_than: Duration, operator: String) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let (s, op) = (store.clone(), operator.clone());
        let opts = PruneOptions {
            older_than,
            audit_older_than: None,
            dry_run: false,
        };
        // The store's writer API blocks; keep it off the runtime's worker threads.
        match tokio::task::spawn_blocking(move || s.prune(&opts, &op)).await {
            Ok(Ok(r)) => {
                for l in prune_lines(&r, older_than) {
                    eprintln!("hookops serve: prune: {l}");
                }
            }
            Ok(Err(e)) => eprintln!("hookops serve: prune failed: {e}"),
            Err(e) => eprintln!("hookops serve: prune stopped: {e}"),
        }
    }
}
