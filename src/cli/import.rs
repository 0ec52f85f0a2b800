//! `hookops item import FILE|-`: JSON Lines of any size, in memory that does not grow with it.
//!
//! Two streaming passes over the file (issue 22):
//! 1. **Check**: every line is parsed and validated, and the ids of good lines are looked up in
//!    batches for ids of other workflows (a line error, design §6). Nothing is written. Only the
//!    numbers of bad lines (and the first few errors, to print) outlive a batch.
//! 2. **Import**: read again from the start and written in batches through
//!    [`Store::import_batch`], each in the store's short, time-budgeted transactions. Lines
//!    known to be bad are skipped (pass 2 runs with bad lines only under `--skip-invalid`).
//!
//! In pass 2 one thread reads and parses the next batch while the other writes the last.
//! So memory is bounded by three batches (each at most [`BATCH_ITEMS`] items or
//! [`BATCH_BYTES`] of lines) plus 8 bytes per bad line, whatever the size of the file. Standard input (`-`) is first
//! spooled to an unlinked 0600 file next to the database, which is then read twice like any
//! file. A file that changes between the passes is caught (size and modification time, and a
//! line that turns bad in pass 2) and the import stops there, saying how far it got.
//!
//! Ctrl-C (or SIGTERM) stops between batches and says how far the import got; a second Ctrl-C
//! exits at once. Re-running the same import adds only what is missing (present ids are
//! skipped), so an interrupted import is finished by running it again.

use std::fs::File;
use std::io::{self, BufReader, IsTerminal as _, Read, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use super::{CliError, Global, output};
use crate::actions::{self, Actor, Via};
use crate::import::{LineError, LineOutcome};
use crate::model::{DatasetRef, ItemId, NewItem, WorkflowId};
use crate::store::{ImportReport, Store};

/// Items handed to the store at once. The store splits them further into transactions of
/// 25 ms of work; this only bounds what is held in memory between reading and writing. A
/// batch holds its items' content as JSON text (`NewItem::into_json`), about the size of their
/// lines: whole 3.4 KB exports peaked at 42 MB, 1.5 KB lines at 43–49 MB (when batches held
/// parsed values, several times a line's size: 123 MB and 55 MB).
pub const BATCH_ITEMS: usize = 1000;
/// Bytes of lines held in one batch, whatever their number: 1,000 lines near the 16 MiB limit
/// would otherwise be 16 GB.
pub const BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Errors printed before "… and N more invalid lines".
const SHOWN_ERRORS: usize = 50;
/// Ids of "already present but different" items kept to print and to put in `--json`.
const SHOWN_DIFFERING: usize = 1000;

/// What `item import` was asked to do.
pub struct ImportArgs {
    /// A path, or `-` for standard input.
    pub file: PathBuf,
    pub workflow: WorkflowId,
    pub dataset: Option<String>,
    pub skip_invalid: bool,
    pub json: bool,
}

pub fn run(g: &Global, a: ImportArgs) -> Result<(), CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal sets `stop`; a second one, with `stop` already set, exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop)))
            .map_err(|e| CliError::failure(format!("cannot watch for Ctrl-C: {e}")))?;
    }
    let store = g.open()?;
    // An unknown workflow or a read-only database is refused before the file is read.
    store.ensure_writable("import")?;
    store.ids_in_other_workflows(&a.workflow, &[])?;
    let mut progress = Progress::new(io::stderr().is_terminal());
    let location = g.location()?;
    let mut input = Input::open(&a.file, location.file(), &mut progress, &stop)?;

    let checked = check(&store, &a, &mut input, &mut progress, &stop)?;
    let shown = input.name.clone();
    if checked.invalid > 0 {
        for e in &checked.first_errors {
            eprintln!("{shown}:{e}");
        }
        if checked.invalid > checked.first_errors.len() as u64 {
            eprintln!(
                "… and {} more invalid lines",
                checked.invalid - checked.first_errors.len() as u64
            );
        }
        if !a.skip_invalid {
            return Err(CliError::usage(format!(
                "{} invalid line(s) in {shown}; nothing was imported (fix them, or pass \
                 --skip-invalid to import the {} good lines)",
                checked.invalid, checked.good
            )));
        }
    }

    let default_dataset = match &a.dataset {
        Some(name) => DatasetRef {
            slug: crate::import::dataset_from_name(name)
                .map(|d| d.slug)
                .unwrap_or_else(|| name.clone()),
            name: name.clone(),
        },
        None => DatasetRef {
            name: a.workflow.to_string(),
            slug: a.workflow.to_string(),
        },
    };
    // One audit row for the whole import, interrupted or not, counting what went in.
    let actor = Actor::new(g.operator(), Via::Cli);
    let outcome = actions::admin::import_streamed(&store, &actor, &a.workflow, &shown, || {
        let o = write(
            &store,
            &a,
            &default_dataset,
            &mut input,
            &checked,
            &g.operator(),
            &mut progress,
            &stop,
        );
        let (imported, ok) = match &o {
            Ok(t) => (t.imported, true),
            Err((t, _)) => (t.imported, false),
        };
        (imported, ok, o)
    })?;
    progress.clear();
    let totals = match outcome {
        Ok(t) => t,
        Err((t, stopped)) => {
            report(&a, &t, &checked, false)?;
            return Err(stopped);
        }
    };
    report(&a, &totals, &checked, true)?;
    if checked.invalid > 0 {
        // Some lines were refused: the operation was only partly done.
        return Err(CliError::failure(format!(
            "{} line(s) were not imported",
            checked.invalid
        )));
    }
    Ok(())
}

/// The input, read twice: a file as it is, or standard input spooled to a private file.
struct Input {
    file: File,
    /// How errors name it: the path as given, or `stdin`.
    name: String,
    /// Size and modification time after the check, to notice a file changed in between.
    stamp: Option<(u64, Option<SystemTime>)>,
    spooled: bool,
}

impl Input {
    fn open(
        path: &Path,
        db: Option<&Path>,
        progress: &mut Progress,
        stop: &AtomicBool,
    ) -> Result<Input, CliError> {
        if path.as_os_str() != "-" {
            let file = File::open(path)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
            return Ok(Input {
                file,
                name: path.display().to_string(),
                stamp: None,
                spooled: false,
            });
        }
        // Beside a database file: a file system with room for what is about to be imported
        // (unlike a RAM-backed /tmp); for a server database, the current directory.
        // Unlinked from the start and created 0600 by `tempfile`, so nothing is left behind
        // and no one else can read it.
        let dir = db
            .and_then(Path::parent)
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut file = tempfile::tempfile_in(dir)
            .or_else(|_| tempfile::tempfile())
            .map_err(|e| {
                CliError::failure(format!("cannot make a temporary file for stdin: {e}"))
            })?;
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 1 << 20];
        let mut total: u64 = 0;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(CliError::failure(
                    "interrupted while reading standard input; nothing was imported",
                ));
            }
            let n = match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(CliError::usage(format!("cannot read stdin: {e}")));
                }
            };
            file.write_all(&buf[..n]).map_err(|e| {
                CliError::failure(format!("cannot spool stdin to a temporary file: {e}"))
            })?;
            total += n as u64;
            progress.draw(|| format!("reading stdin: {}", mb(total)));
        }
        Ok(Input {
            file,
            name: "stdin".into(),
            stamp: None,
            spooled: true,
        })
    }

    fn stamp(&self) -> Option<(u64, Option<SystemTime>)> {
        let m = self.file.metadata().ok()?;
        Some((m.len(), m.modified().ok()))
    }

    /// A reader from the start, counting the bytes it hands out into `count`.
    fn reader(
        &mut self,
        limit: u64,
        count: Arc<AtomicU64>,
    ) -> io::Result<impl io::BufRead + Send + use<>> {
        self.file.rewind()?;
        let file = self.file.try_clone()?;
        Ok(BufReader::with_capacity(
            1 << 20,
            Counting {
                inner: file.take(limit),
                count,
            },
        ))
    }
}

/// A reader that adds up the bytes read through it (for progress and batch sizes).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// What the check pass found.
#[derive(Default)]
struct Checked {
    /// Lines that are good items, in the file and in no other workflow.
    good: u64,
    invalid: u64,
    /// The lowest-numbered errors, in line order, at most [`SHOWN_ERRORS`].
    first_errors: Vec<LineError>,
    /// Every bad line's number, ascending: pass 2 skips these.
    bad_lines: Vec<u64>,
    /// Bytes checked: pass 2 reads no further, so lines appended since are not imported
    /// unchecked.
    bytes: u64,
    lines: u64,
}

impl Checked {
    fn error(&mut self, e: LineError) {
        self.invalid += 1;
        self.bad_lines.push(e.line as u64);
        self.first_errors.push(e);
        if self.first_errors.len() >= 2 * SHOWN_ERRORS {
            self.trim_errors();
        }
    }

    fn trim_errors(&mut self) {
        self.first_errors.sort_by_key(|e| e.line);
        self.first_errors.truncate(SHOWN_ERRORS);
    }
}

/// Pass 1: parse and validate every line, and set aside ids of other workflows.
fn check(
    store: &Store,
    a: &ImportArgs,
    input: &mut Input,
    progress: &mut Progress,
    stop: &AtomicBool,
) -> Result<Checked, CliError> {
    let name = input.name.clone();
    let read_error = |e: io::Error| CliError::usage(format!("cannot read {name}: {e}"));
    let size = input.stamp().map_or(0, |s| s.0);
    let count = Arc::new(AtomicU64::new(0));
    let reader = input.reader(u64::MAX, count.clone()).map_err(read_error)?;
    let mut checked = Checked::default();
    // Ids only (with their lines: `check_lines` gives nothing else), for the other-workflow
    // lookup; never the items.
    let mut pending: Vec<NewItem> = Vec::with_capacity(BATCH_ITEMS);
    let started = Instant::now();
    // Checked on every core (see `check_lines_parallel`); the outcomes come here in line order.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    crate::import::check_lines_parallel(reader, workers, &mut |outcome| {
        checked.lines += 1;
        match outcome.map_err(read_error)? {
            LineOutcome::Blank => {}
            LineOutcome::Error(e) => checked.error(e),
            LineOutcome::Item(item) => {
                pending.push(item);
                if pending.len() >= BATCH_ITEMS {
                    foreign_ids(store, &a.workflow, &mut pending, &mut checked)?;
                }
            }
        }
        if checked.lines % 256 == 0 {
            if stop.load(Ordering::Relaxed) {
                progress.clear();
                return Err(CliError::failure(format!(
                    "interrupted while checking line {} of {name}; nothing was imported",
                    checked.lines
                )));
            }
            let done = count.load(Ordering::Relaxed);
            progress.draw(|| {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let rate = done as f64 / secs;
                let left = size.saturating_sub(done) as f64 / rate.max(1.0);
                format!(
                    "checking {name}: {} lines ({:.0} lines/s, {}/s), {:.0}%{}",
                    checked.lines,
                    checked.lines as f64 / secs,
                    mb(rate as u64),
                    100.0 * done as f64 / size.max(1) as f64,
                    time_left(left)
                )
            });
        }
        Ok(())
    })?;
    foreign_ids(store, &a.workflow, &mut pending, &mut checked)?;
    checked.trim_errors();
    checked.bad_lines.sort_unstable();
    checked.bytes = count.load(Ordering::Relaxed);
    input.stamp = input.stamp();
    progress.clear();
    Ok(checked)
}

/// Looks up `pending`'s ids; those of another workflow become line errors. Empties `pending`.
fn foreign_ids(
    store: &Store,
    workflow: &WorkflowId,
    pending: &mut Vec<NewItem>,
    checked: &mut Checked,
) -> Result<(), CliError> {
    if pending.is_empty() {
        return Ok(());
    }
    let foreign = store.ids_in_other_workflows(workflow, pending)?;
    checked.good += (pending.len() - foreign.len()) as u64;
    for (i, other) in foreign {
        let item = &pending[i];
        checked.error(LineError {
            line: item.line,
            column: None,
            message: format!("item id `{}` already exists in workflow `{other}`", item.id),
        });
    }
    pending.clear();
    Ok(())
}

/// What the import pass wrote, added up over its batches.
#[derive(Default)]
struct Totals {
    imported: i64,
    already_present: i64,
    differing: Vec<ItemId>,
    differing_count: u64,
    landed: std::collections::BTreeMap<String, i64>,
}

impl Totals {
    fn add(&mut self, r: ImportReport) {
        self.imported += r.imported;
        self.already_present += r.already_present;
        self.differing_count += r.differing.len() as u64;
        let room = SHOWN_DIFFERING.saturating_sub(self.differing.len());
        self.differing.extend(r.differing.into_iter().take(room));
        for (k, v) in r.landed {
            *self.landed.entry(k).or_default() += v;
        }
    }

    fn done(&self) -> u64 {
        (self.imported + self.already_present) as u64
    }
}

/// What the reading thread of pass 2 hands to the writing one, in file order.
enum Read2 {
    /// Good items, at most [`BATCH_ITEMS`] of them or [`BATCH_BYTES`] of lines.
    Batch(Vec<NewItem>),
    /// A line that was good in pass 1 and is bad now: the file is being changed.
    Changed(LineError),
    Failed(io::Error),
}

/// Reads the file again and sends its good lines in batches. Ends when the file ends, on the
/// first surprise, or when the writer has gone (it stopped).
fn read_batches(
    reader: impl io::BufRead,
    count: &AtomicU64,
    bad_lines: &[u64],
    tx: &mpsc::SyncSender<Read2>,
) {
    let mut bad = bad_lines.iter().copied().peekable();
    let mut batch: Vec<NewItem> = Vec::with_capacity(BATCH_ITEMS);
    let mut batch_start = 0u64;
    for outcome in crate::import::lines(reader) {
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                let _ = tx.send(Read2::Failed(e));
                return;
            }
        };
        match outcome {
            LineOutcome::Blank => {}
            LineOutcome::Item(item) => {
                if bad.next_if_eq(&(item.line as u64)).is_none() {
                    // Serialised here, beside the writer rather than in it.
                    batch.push(item.into_json());
                }
            }
            LineOutcome::Error(e) => {
                if bad.next_if_eq(&(e.line as u64)).is_none() {
                    let _ = tx.send(Read2::Batch(batch));
                    let _ = tx.send(Read2::Changed(e));
                    return;
                }
            }
        }
        let read = count.load(Ordering::Relaxed);
        if batch.len() >= BATCH_ITEMS || read - batch_start >= BATCH_BYTES {
            batch_start = read;
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ITEMS));
            if tx.send(Read2::Batch(full)).is_err() {
                return;
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(Read2::Batch(batch));
    }
}

/// Pass 2: read the file again and write its good lines in batches. One thread reads and
/// parses the next batch while this one writes the last (on two cores, parsing and SQLite
/// overlap); the channel holds one batch, so at most three are in memory. On failure or
/// Ctrl-C, returns what was written with the error to report.
#[allow(clippy::too_many_arguments)]
fn write(
    store: &Store,
    a: &ImportArgs,
    default_dataset: &DatasetRef,
    input: &mut Input,
    checked: &Checked,
    operator: &str,
    progress: &mut Progress,
    stop: &AtomicBool,
) -> Result<Totals, (Totals, CliError)> {
    let mut totals = Totals::default();
    let name = input.name.clone();
    let again = "run the same import again to add the rest (items already present are skipped)";
    if !input.spooled && input.stamp() != input.stamp {
        let e = CliError::failure(format!(
            "{name} changed while it was being checked; nothing was imported (run the import again)"
        ));
        return Err((totals, e));
    }
    let count = Arc::new(AtomicU64::new(0));
    let reader = match input.reader(checked.bytes, count.clone()) {
        Ok(r) => r,
        Err(e) => return Err((totals, CliError::usage(format!("cannot read {name}: {e}")))),
    };
    let started = Instant::now();
    let total = checked.good;
    let (tx, rx) = mpsc::sync_channel::<Read2>(1);
    std::thread::scope(|scope| {
        let bad_lines = &checked.bad_lines;
        let count = &count;
        scope.spawn(move || read_batches(reader, count, bad_lines, &tx));
        // Returning drops `rx`, which ends the reading thread at its next send.
        for msg in rx {
            let batch = match msg {
                Read2::Batch(b) => b,
                Read2::Changed(e) => {
                    // Checked good a moment ago, bad now: the file is being changed under us.
                    let e = CliError::failure(format!(
                        "{name} changed while it was being imported: {e}; {} item(s) were \
                         imported before it; fix the file and {again}",
                        totals.imported
                    ));
                    return Err((totals, e));
                }
                Read2::Failed(e) => {
                    let e = CliError::failure(format!("cannot read {name}: {e}; {again}"));
                    return Err((totals, e));
                }
            };
            if batch.is_empty() {
                continue;
            }
            match store.import_batch(&a.workflow, batch, default_dataset, operator) {
                Ok(r) => totals.add(r),
                Err(e) => {
                    let done = totals.done() + e.done as u64;
                    totals.add(e.report);
                    let message = format!(
                        "import stopped after {done} of {total} items were written: {}; {again}",
                        e.source
                    );
                    let code = if e.source.is_refusal() { 1 } else { 2 };
                    return Err((totals, CliError { code, message }));
                }
            }
            let done = totals.done();
            progress.draw(|| {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let rate = done as f64 / secs;
                format!(
                    "importing: {done} of {total} items ({rate:.0}/s){}",
                    time_left(total.saturating_sub(done) as f64 / rate.max(1.0))
                )
            });
            // Between batches, never inside one: what is written is whole items.
            if stop.load(Ordering::Relaxed) && done < total {
                let e = CliError::failure(format!(
                    "interrupted after {done} of {total} items ({} imported, {} already \
                     present); {again}",
                    totals.imported, totals.already_present
                ));
                return Err((totals, e));
            }
        }
        Ok(totals)
    })
}

fn report(a: &ImportArgs, t: &Totals, checked: &Checked, finished: bool) -> Result<(), CliError> {
    for id in t.differing.iter().take(20) {
        eprintln!(
            "warning: item `{id}` is already present with different content; it was not changed"
        );
    }
    if t.differing_count > 20 {
        eprintln!(
            "warning: … and {} more items already present with different content",
            t.differing_count - 20
        );
    }
    if a.json {
        return output::json(&serde_json::json!({
            "imported": t.imported,
            "already_present": t.already_present,
            "differing": t.differing,
            "differing_count": t.differing_count,
            "invalid": checked.invalid,
            "landed": t.landed,
            "finished": finished,
        }));
    }
    outln!(
        "imported {} item(s) into {}; {} already present{}",
        t.imported,
        a.workflow,
        t.already_present,
        if checked.invalid == 0 {
            String::new()
        } else {
            format!("; {} invalid line(s) skipped", checked.invalid)
        }
    );
    for (stage, n) in &t.landed {
        outln!("  {stage}: {n}");
    }
    Ok(())
}

/// One status line on stderr, redrawn at most four times a second, only on a terminal.
struct Progress {
    on: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new(on: bool) -> Progress {
        Progress {
            on,
            last: None,
            drawn: false,
        }
    }

    fn draw(&mut self, text: impl FnOnce() -> String) {
        if !self.on
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last = Some(Instant::now());
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{}", output::fit_line(&text()));
        let _ = err.flush();
        self.drawn = true;
    }

    fn clear(&mut self) {
        if self.drawn {
            let _ = write!(io::stderr().lock(), "\r\x1b[K");
            self.drawn = false;
        }
        self.last = None;
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn time_left(secs: f64) -> String {
    if !secs.is_finite() || secs < 1.0 {
        return String::new();
    }
    let s = secs.round() as u64;
    if s >= 60 {
        format!(", about {} min {:02} s left", s / 60, s % 60)
    } else {
        format!(", about {s} s left")
    }
}
