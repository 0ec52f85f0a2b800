//! The command line: one clap definition, one file per subcommand.
//!
//! Every subcommand prints a table by default or JSON with `--json` (one array for listings,
//! one object for `show`), writes errors to stderr as one sentence, and maps failures to exit
//! codes: 0 ok, 1 the operation failed or was refused (wholly or in part), 2 bad usage or
//! invalid input files.

/// `println!` for command output: a closed stdout (`hookops … | head`) ends the command
/// quietly instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod args;
mod deliveries;
mod demo;
mod examples;
mod import;
mod item;
mod ops;
mod output;
mod policy;
mod serve;
mod workflow;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::model::{StageId, WorkflowId};
use crate::store::{Location, OpenOptions, Store, StoreError};

/// A failure worded for the operator, with its exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// The operation failed or was refused (exit 1).
    pub fn failure(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
        }
    }

    /// Bad usage or invalid input (exit 2).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> CliError {
        let code = if e.is_refusal() { 1 } else { 2 };
        CliError {
            code,
            message: e.to_string(),
        }
    }
}

/// hookops: operate annotation workflows whose stages fire webhooks.
#[derive(Debug, Parser)]
#[command(
    name = "hookops",
    version,
    about,
    propagate_version = true,
    after_long_help = examples::ROOT
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(flatten)]
    pub console: ConsoleArgs,
    /// Without a command, hookops opens the console on the database
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options of the console (`hookops` with no command, and `hookops demo`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Console options")]
pub struct ConsoleArgs {
    /// Run no dispatcher in the console (when `hookops serve` runs elsewhere)
    #[arg(long)]
    pub no_dispatch: bool,
    /// Requests the console's dispatcher sends at once
    #[arg(long, default_value_t = crate::dispatch::DEFAULT_CONCURRENCY as u32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Capture the mouse (off by default, so the terminal's own selection works)
    #[arg(long)]
    pub mouse: bool,
    /// Write diagnostics (tracing) to this file; never to the screen
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Console config with `[keys]` overrides [default: $XDG_CONFIG_HOME/hookops/config.toml]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Create the database when it does not exist (else the console refuses a missing file)
    #[arg(long)]
    pub create: bool,
}

/// The help heading of [`Global`]'s options, apart from each command's own.
pub const GLOBAL_HEADING: &str = "Global options";

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = GLOBAL_HEADING)]
pub struct Global {
    /// Database: a file, or a postgres:// URL [default: $HOOKOPS_DB, else
    /// $XDG_DATA_HOME/hookops/hookops.db]
    #[arg(long, global = true, value_name = "PATH|URL")]
    pub db: Option<String>,
    /// Name recorded in the audit log [default: $USER]
    #[arg(long, global = true, value_name = "NAME")]
    pub operator: Option<String>,
    /// Open the database read-only and refuse every action
    #[arg(long, global = true)]
    pub read_only: bool,
    /// File mode of a newly created database: 0600, 0640 or 0660 for a team (never bits for
    /// other users: it holds webhook secrets) [default: 0600]
    #[arg(long, global = true, value_name = "MODE", env = "HOOKOPS_DB_MODE", value_parser = parse_mode)]
    pub db_mode: Option<u32>,
}

/// A database file mode: octal, read-write for its owner, nothing for other users. The file
/// holds webhook secrets, and `check` fails a file every user can read.
fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("`{s}` is not an octal file mode like 0600 or 0660"))?;
    if mode & 0o007 != 0 {
        return Err(format!(
            "{s} gives other users access to the database, which holds webhook secrets (`check` fails such a file): use 0600, 0640 or 0660"
        ));
    }
    if mode & 0o600 != 0o600 {
        return Err(format!(
            "{s} does not let its owner read and write the database: use 0600, 0640 or 0660"
        ));
    }
    Ok(mode)
}

// Parsed once per run: the size of the filter-bearing variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply, list and show workflows
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
    /// Import, list, show and advance items
    #[command(subcommand)]
    Item(item::ItemCommand),
    /// Assign items to a stage by hand (automated stages run at once)
    #[command(after_long_help = examples::ASSIGN)]
    Assign(item::AssignArgs),
    /// Show the audit log of operator actions, newest first
    #[command(after_long_help = examples::AUDIT)]
    Audit(AuditArgs),
    /// List deliveries, newest first (or `deliveries export` them as JSON Lines)
    #[command(after_long_help = examples::DELIVERIES)]
    Deliveries(deliveries::DeliveriesArgs),
    /// Show one delivery with every attempt
    #[command(subcommand)]
    Delivery(deliveries::DeliveryCommand),
    /// Re-fire deliveries (the item goes back into the stage and is delivered anew), or replay them
    #[command(after_long_help = examples::REFIRE)]
    Refire(deliveries::RefireArgs),
    /// POST a sample document to a webhook stage; moves nothing
    #[command(after_long_help = examples::TEST_WEBHOOK)]
    TestWebhook(deliveries::TestArgs),
    /// Pause or resume a webhook stage
    #[command(subcommand)]
    Stage(deliveries::StageCommand),
    /// Run the delivery engine without the console
    #[command(after_long_help = examples::SERVE)]
    Serve(serve::ServeArgs),
    /// Run a small webhook receiver with scripted behaviour (for demos and tests)
    #[command(after_long_help = examples::RECEIVER)]
    Receiver(serve::ReceiverArgs),
    /// Create a fresh demo database with the demo workflow and items
    #[command(after_long_help = examples::DEMO)]
    Demo(DemoArgs),
    /// Remove old finished deliveries and their attempts (keeps each item's latest per stage)
    #[command(after_long_help = examples::PRUNE)]
    Prune(ops::PruneArgs),
    /// Write a consistent copy of the database while it is in use
    #[command(after_long_help = examples::BACKUP)]
    Backup(ops::BackupArgs),
    /// Check the database's health; --repair fixes what is safe
    #[command(after_long_help = examples::CHECK)]
    Check(ops::CheckArgs),
    /// Move a whole store between a SQLite file and a PostgreSQL database
    #[command(subcommand)]
    Db(ops::DbCommand),
    /// Print a shell completion script (bash, zsh, fish, …)
    #[command(after_long_help = examples::COMPLETIONS)]
    Completions(ops::CompletionsArgs),
    /// Print the man page (roff)
    #[command(after_long_help = examples::MAN)]
    Man,
    /// Show or set the delivery policies stored in the database (deny_private_targets, max_body_bytes)
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// Only rows by this operator (an API row's operator is its token's name)
    #[arg(long)]
    pub operator: Option<String>,
    /// Only rows of this action (refire, replay, cancel, test, assign, advance, pause, …)
    #[arg(long)]
    pub action: Option<String>,
    /// Only rows naming this item (directly or through one of its deliveries) or this delivery
    #[arg(long, value_name = "ID")]
    pub item: Option<String>,
    /// Only rows at or after this time (RFC 3339, or a duration like 2h ago)
    #[arg(long)]
    pub since: Option<String>,
    /// Only rows before this time (RFC 3339, or a duration like 10m ago)
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many rows (0 = all)
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// One audit row with every id it names
    #[command(after_long_help = examples::AUDIT_SHOW)]
    Show {
        /// The row's id (the ID column of `hookops audit`)
        id: i64,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to create the demo database [default: a fresh file under $XDG_DATA_HOME/hookops/demo/]
    #[arg(long, value_name = "PATH")]
    pub demo_db: Option<PathBuf>,
    /// Run the demo headless until its deliveries settle, then print a summary
    #[arg(long)]
    pub no_tui: bool,
    /// With --no-tui: stop waiting after this long
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

impl Global {
    /// The database path: `--db`, else `$HOOKOPS_DB`, else the XDG data directory.
    /// Where the store is: `--db`, else `$HOOKOPS_DB`, else the default file. A URL other
    /// than PostgreSQL's is bad usage (exit 2).
    pub fn location(&self) -> Result<Location, CliError> {
        let given = self
            .db
            .clone()
            .or_else(|| std::env::var("HOOKOPS_DB").ok().filter(|p| !p.is_empty()));
        match given {
            Some(s) => Location::parse(&s).map_err(CliError::usage),
            None => Ok(Location::File(data_dir().join("hookops.db"))),
        }
    }

    pub fn operator(&self) -> String {
        self.operator
            .clone()
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// Opens an existing database. A path where nothing exists is refused (exit 1) and
    /// nothing is created: a mistyped `--db` must not leave an empty database behind, nor
    /// answer "no items" as if it had looked at the real one.
    pub fn open(&self) -> Result<Store, CliError> {
        let location = self.location()?;
        if is_missing(&location) {
            return Err(CliError::failure(missing_message(&location)));
        }
        self.open_at(&location)
    }

    /// Opens the database, creating it when nothing exists at its path: only for commands
    /// that write something into a new file (`workflow apply`, `serve`, the console with
    /// `--create`; `demo` makes its own). `item import` does not: a new database holds no
    /// workflow to import into, so it could only fail after leaving an empty file behind.
    /// A new file is announced on stderr with its mode.
    pub fn open_or_create(&self) -> Result<Store, CliError> {
        let location = self.location()?;
        let creating = is_missing(&location) && !self.read_only;
        let store = self.open_at(&location)?;
        if creating {
            eprintln!(
                "hookops: created a new database {location} (mode {:04o})",
                self.create_mode()
            );
        }
        Ok(store)
    }

    pub(crate) fn create_mode(&self) -> u32 {
        self.db_mode.unwrap_or(0o600)
    }

    fn open_at(&self, location: &Location) -> Result<Store, CliError> {
        let opts = OpenOptions {
            read_only: self.read_only,
            create_mode: self.create_mode(),
            ..OpenOptions::default()
        };
        Ok(Store::open_at(location, &opts)?)
    }
}

/// Whether the store is a file and nothing exists at its path. An error looking (a directory
/// it may not search) is not "missing": opening then says what is wrong. A server database
/// is never missing here: connecting says whether it exists.
fn is_missing(location: &Location) -> bool {
    location
        .file()
        .is_some_and(|p| matches!(p.try_exists(), Ok(false)))
}

/// The one sentence for a database path where nothing exists.
pub(crate) fn missing_message(location: &Location) -> String {
    format!(
        "no database at {location} (check --db or $HOOKOPS_DB); nothing was created: `workflow apply`, `serve` and `demo` create one"
    )
}

/// `$XDG_DATA_HOME/hookops`, else `~/.local/share/hookops`.
pub fn data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("hookops")
}

/// Runs one command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.global;
    let Some(command) = cli.command else {
        return console(g, &cli.console);
    };
    match command {
        Command::Workflow(c) => workflow::run(g, c),
        Command::Item(c) => item::run(g, c),
        Command::Assign(a) => item::assign(g, a),
        Command::Audit(a) => audit(g, a),
        Command::Deliveries(a) => deliveries::deliveries(g, a),
        Command::Delivery(c) => deliveries::run(g, c),
        Command::Refire(a) => deliveries::refire(g, a),
        Command::TestWebhook(a) => deliveries::test_webhook(g, a),
        Command::Stage(c) => deliveries::stage(g, c),
        Command::Serve(a) => serve::serve(g, a),
        Command::Receiver(a) => serve::receiver(a),
        Command::Demo(a) => demo::run(g, &cli.console, a),
        Command::Prune(a) => ops::prune(g, a),
        Command::Backup(a) => ops::backup(g, a),
        Command::Check(a) => ops::check(g, a),
        Command::Db(ops::DbCommand::Copy(a)) => ops::db_copy(g, a),
        Command::Completions(a) => ops::completions(a),
        Command::Man => ops::man(),
        Command::Policy(c) => policy::run(g, c),
    }
}

fn console(g: &Global, c: &ConsoleArgs) -> Result<(), CliError> {
    serve::init_log_file(c.log_file.as_ref())?;
    let store = if c.create {
        g.open_or_create()?
    } else {
        g.open().map_err(|e| {
            if g.location().is_ok_and(|l| is_missing(&l)) {
                CliError::failure(format!(
                    "{}; `hookops --create` opens the console on a new empty one",
                    e.message
                ))
            } else {
                e
            }
        })?
    };
    run_console(store, g, c)
}

pub(crate) fn run_console(store: Store, g: &Global, c: &ConsoleArgs) -> Result<(), CliError> {
    let opts = crate::tui::ConsoleOptions {
        read_only: g.read_only,
        dispatch: !c.no_dispatch,
        concurrency: c.concurrency as usize,
        operator: g.operator(),
        mouse: c.mouse,
        config: c.config.clone().or_else(crate::tui::default_config_path),
    };
    crate::tui::run(store, opts).map_err(CliError::failure)
}

fn audit(g: &Global, a: AuditArgs) -> Result<(), CliError> {
    if let Some(AuditCommand::Show { id, json }) = a.command {
        let store = g.open()?;
        let e = store.audit_entry(id)?;
        if json {
            return output::json(&e);
        }
        outln!("audit     {}", e.id);
        outln!("at        {}", output::time(&e.at));
        outln!(
            "operator  {} via {}",
            output::clean(&e.operator),
            e.via.as_deref().unwrap_or("-")
        );
        outln!("action    {} {}", e.action, output::clean(&e.target));
        if let Some(f) = &e.filter {
            outln!("filter    {}", output::clean(f));
        }
        outln!(
            "outcome   {}  count {}{}",
            e.outcome.as_deref().unwrap_or("-"),
            e.count,
            e.matched
                .map(|m| format!(" of {m} matched"))
                .unwrap_or_default()
        );
        match &e.ids {
            Some(ids) => {
                outln!("ids       {}", ids.len());
                for id in ids {
                    outln!("  {}", output::clean(id));
                }
            }
            None if e.via.is_some() => outln!(
                "ids       more than {}: the filter and the count say what was selected",
                crate::store::AUDIT_IDS
            ),
            None => {}
        }
        return Ok(());
    }
    let now = chrono::Utc::now();
    let time = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| {
                crate::actions::parse_time(s, now)
                    .map_err(|m| CliError::usage(format!("--{flag} {m}")))
            })
            .transpose()
    };
    let q = crate::store::AuditQuery {
        operator: a.operator.clone(),
        action: a.action.clone(),
        item: a.item.clone(),
        since: time("since", &a.since)?,
        until: time("until", &a.until)?,
    };
    let store = g.open()?;
    let rows = store.audit_search(&q, if a.limit == 0 { usize::MAX } else { a.limit })?;
    if a.json {
        return output::json(&rows);
    }
    let mut t = output::Table::new(&[
        "ID", "AT", "OPERATOR", "VIA", "ACTION", "TARGET", "COUNT", "OUTCOME", "FILTER",
    ]);
    for r in rows {
        t.row(vec![
            r.id.to_string(),
            output::time(&r.at),
            output::clean(&r.operator),
            r.via.unwrap_or_else(|| "-".into()),
            r.action,
            output::clean(&r.target),
            r.count.to_string(),
            r.outcome.unwrap_or_else(|| "-".into()),
            output::clean(&r.filter.unwrap_or_default()),
        ]);
    }
    t.print();
    Ok(())
}

/// The async runtime for commands that talk HTTP.
pub(crate) fn deliveries_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::failure(format!("cannot start the async runtime: {e}")))
}

/// Parses the `--limit` of a bulk action: at least 1. Listings read `0` as "all"; for an
/// action that would mean either everything or nothing, so it is refused (exit 2).
pub(crate) fn action_limit(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (leave --limit out to act on every match)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses `--stage` for a mutation: it needs `--workflow` (design §6).
pub(crate) fn require_workflow(
    workflow: &Option<String>,
    what: &str,
) -> Result<WorkflowId, CliError> {
    workflow
        .as_ref()
        .map(|w| WorkflowId::new(w.as_str()))
        .ok_or_else(|| CliError::usage(format!("{what} needs --workflow ID")))
}

pub(crate) fn stage_id(s: &str) -> StageId {
    StageId::new(s)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command under `cmd` (itself included), with its path of names.
    fn commands(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
        let path = if path.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{path} {}", cmd.get_name())
        };
        out.push((path.clone(), cmd.clone()));
        for sub in cmd.get_subcommands() {
            commands(sub, &path, out);
        }
    }

    fn all() -> Vec<(String, clap::Command)> {
        let mut cmd = super::Cli::command();
        cmd.build();
        let mut out = Vec::new();
        commands(&cmd, "", &mut out);
        out
    }

    #[test]
    fn every_flag_and_argument_has_help_text() {
        let mut missing = Vec::new();
        for (path, cmd) in all() {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "{} without help: {missing:#?}",
            missing.len()
        );
    }

    #[test]
    fn global_options_have_their_own_heading() {
        for (path, cmd) in all() {
            for arg in cmd.get_arguments() {
                // Global options are under their heading, and nothing else is.
                assert_eq!(
                    arg.get_help_heading() == Some(super::GLOBAL_HEADING),
                    arg.is_global_set(),
                    "{path}: --{} is under {:?}",
                    arg.get_id(),
                    arg.get_help_heading()
                );
            }
        }
    }

    #[test]
    fn every_command_ends_its_long_help_with_examples() {
        let mut missing = Vec::new();
        for (path, cmd) in all() {
            // Groups (`workflow`, `item`, …) only list their commands; `help` is clap's.
            if path.split(' ').any(|w| w == "help") || cmd.is_subcommand_required_set() {
                continue;
            }
            let after = cmd
                .get_after_long_help()
                .map(|s| s.to_string())
                .unwrap_or_default();
            if !(after.starts_with("Examples:") && after.contains("  hookops")) {
                missing.push(path);
            }
        }
        assert!(
            missing.is_empty(),
            "{} without examples: {missing:#?}",
            missing.len()
        );
    }
}
