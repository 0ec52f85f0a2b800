//! Day-two operations: `prune`, `backup`, `check`, `db copy`, `completions` and `man`.
//!
//! Each command is a thin shell over one store function (the console and the API call the same
//! ones); what changes something is audited by the store and refused in `--read-only`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory};

use super::{CliError, Global, output};
use crate::store::{
    CheckStatus, HealthReport, Location, OpenOptions, PruneOptions, PruneReport, Store,
    check_database, human_bytes,
};

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

pub fn prune(g: &Global, a: PruneArgs) -> Result<(), CliError> {
    let store = g.open()?;
    let opts = PruneOptions {
        older_than: a.older_than,
        audit_older_than: a.audit_older_than,
        dry_run: a.dry_run,
    };
    // Progress on a terminal only (never into a pipe or --json).
    let mut shown: Option<output::Progress> = None;
    let actor = crate::actions::Actor::new(g.operator(), crate::actions::Via::Cli);
    let r = crate::actions::admin::prune(&store, &actor, &opts, &mut |done, total| {
        shown
            .get_or_insert_with(|| {
                output::Progress::new("prune: delivery rows scanned", total as usize, a.json)
            })
            .update(done as usize)
    })?;
    drop(shown);
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

#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// Copy a whole store into an empty one (a SQLite file or a postgres:// URL on either
    /// side), consistently while the source keeps running; ids, row numbers and times are kept
    #[command(after_long_help = super::examples::DB_COPY)]
    Copy(DbCopyArgs),
}

#[derive(Debug, Args)]
pub struct DbCopyArgs {
    /// The store to copy: a file or a postgres:// URL
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// An empty store to copy into: a file (created when missing) or a postgres:// URL
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn db_copy(g: &Global, a: DbCopyArgs) -> Result<(), CliError> {
    let source = Location::parse(&a.source).map_err(CliError::usage)?;
    let target = Location::parse(&a.target).map_err(CliError::usage)?;
    if source == target {
        return Err(CliError::usage("SOURCE and TARGET are the same store"));
    }
    if let Some(p) = source.file()
        && matches!(p.try_exists(), Ok(false))
    {
        return Err(CliError::failure(super::missing_message(&source)));
    }
    // The source is only read: a read-only store never migrates or writes it.
    let from = Store::open_at(
        &source,
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )?;
    let created = target.file().is_some_and(|p| !p.exists());
    let to = Store::open_at(
        &target,
        &OpenOptions {
            create_mode: g.create_mode(),
            ..OpenOptions::default()
        },
    )?;
    if created {
        eprintln!(
            "hookops: created a new database {target} (mode {:04o})",
            g.create_mode()
        );
    }
    let on = !a.json && std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    let report = from.copy_into(&to, &mut |table, n| {
        if on && last.elapsed() >= Duration::from_millis(100) {
            last = std::time::Instant::now();
            eprint!("\rcopying {table}: {n} rows\x1b[K");
        }
    });
    if on {
        eprint!("\r\x1b[K");
    }
    let report = report?;
    let same = report.source == report.target;
    if a.json {
        output::json(&serde_json::json!({
            "source": source.to_string(),
            "target": target.to_string(),
            "tables": report,
            "complete": same,
        }))?;
    } else {
        outln!("{:<20} {:>10} {:>10}", "TABLE", "SOURCE", "TARGET");
        for (table, n) in &report.source {
            let m = report.target.get(table).copied().unwrap_or(0);
            outln!("{table:<20} {n:>10} {m:>10}");
        }
        outln!("copied {source} into {target}");
    }
    if same {
        Ok(())
    } else {
        Err(CliError::failure(
            "the target's row counts differ from the source's: the copy is incomplete",
        ))
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
    let location = g.location()?;
    let report = match location.file() {
        _ if a.repair => g.open()?.repair(&g.operator())?,
        Some(path) if matches!(path.try_exists(), Ok(false)) => {
            return Err(CliError::failure(super::missing_message(&location)));
        }
        // A file is checked through a connection of its own, which also reports on a file
        // this binary cannot open normally.
        Some(path) => check_database(path)?,
        None => g.open()?.health()?,
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
        // Audited as the CLI's (`serve` is a CLI command), under its operator.
        let actor = crate::actions::Actor::new(op, crate::actions::Via::Cli);
        let prune = move || crate::actions::admin::prune(&s, &actor, &opts, &mut |_, _| {});
        match tokio::task::spawn_blocking(prune).await {
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
