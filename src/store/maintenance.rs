//! Day-two operations on the store: retention (prune), online backup, the health check and its
//! safe repairs, and operator cancel.
//!
//! Invariants this module keeps:
//! - Every write is a short job of the group-commit writer: prune deletes in chunks sized to
//!   stay well under [`CHUNK_TARGET`], so a running `serve` or console never waits long.
//! - Scans that find work run on read connections (WAL readers never block the writer).
//! - `check` never writes: it reads through a connection of its own that does not migrate, so it
//!   can report a file this binary does not understand. Only `repair` writes, and only what is
//!   safe: expired leases (through the dispatcher's own reclaim path), deliveries orphaned by a
//!   moved item, and the counter rows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Tx;
use super::dispatchers::{hostname, process_start};
use super::items::{MovedBy, apply_route};
use super::leases::reclaim;
use super::seam::{CancelRow, Reads, Storage};
use super::workflows::current_spec;
use super::{DeliveryFilter, Result, Store, StoreError, audit, to_time};
use crate::engine::{self, Outcome};
use crate::model::{
    DeliveryId, DeliveryState, DeliveryTrigger, EventType, HistoryCause, ItemId, RefusalKind,
    StageId, WorkflowId,
};

/// The longest a prune chunk should hold the write lock; chunks adapt their size to it.
pub const CHUNK_TARGET: Duration = Duration::from_millis(25);
/// A pause after each chunk as long as the chunk (at most this): another process waiting for
/// the write lock retries on SQLite's busy backoff (1, 2, 5, 10, 15, 20, 25 ms…), and a gap at
/// least as long as its retry step lets it in instead of starving behind back-to-back chunks.
const MAX_GAP: Duration = Duration::from_millis(25);
/// Page cache of the writer connection while a prune runs (KiB); restored afterwards. The
/// default 2 MiB made every index delete a cache miss on a large file.
const PRUNE_CACHE_KIB: i64 = 65_536;
const MIN_CHUNK: usize = 16;
const MAX_CHUNK: usize = 4096;
/// Finished deliveries examined per read of the prune scan.
const SCAN_PAGE: usize = 4096;
/// Pages released by the first incremental-vacuum write (then adapted to [`CHUNK_TARGET`]):
/// moving a page costs far more than deleting a row, ~0.4 ms each on a 2 GiB file.
const VACUUM_PAGES: i64 = 64;
/// A WAL file larger than this is reported (a long reader keeps it from being reset).
pub const WAL_WARN_BYTES: u64 = 64 * 1024 * 1024;
/// A due delivery overdue by more than this means nothing is sending.
pub const OVERDUE_FAIL: Duration = Duration::from_secs(300);
/// A heartbeat older than this is stale (design §6: the console warns after 10 s).
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Prune
// ---------------------------------------------------------------------------------------------

/// What `prune` removes.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Finished deliveries whose last activity is older than this are removed.
    pub older_than: Duration,
    /// Audit rows older than this are removed too (kept when `None`).
    pub audit_older_than: Option<Duration>,
    /// Count only; write nothing.
    pub dry_run: bool,
}

/// What `prune` did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub cutoff: Option<DateTime<Utc>>,
    pub deliveries: i64,
    pub attempts: i64,
    pub audit_rows: i64,
    /// Old finished deliveries kept because each is its item's latest in its stage.
    pub kept_latest: i64,
    /// Open deliveries, never touched.
    pub kept_open: i64,
    /// Write transactions the removal took, and the longest of them in milliseconds.
    pub chunks: i64,
    pub longest_chunk_ms: f64,
    /// Bytes of data removed (pages that became free).
    pub bytes_freed: u64,
    /// The database file (without its WAL) before and after, in bytes.
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
    /// Pages returned to the file system by the incremental vacuum.
    pub pages_vacuumed: i64,
    pub elapsed_ms: f64,
    /// Where the time went: scanning (reads), deleting (writes), vacuuming (writes).
    pub scan_ms: f64,
    pub delete_ms: f64,
    pub vacuum_ms: f64,
}

fn delete_chunk(c: &Tx<'_>, ids: &[String]) -> Result<(i64, i64)> {
    let (mut deliveries, mut attempts) = (0i64, 0i64);
    for id in ids {
        // Finished states are final, and a delivery that is not its item's latest in its stage
        // never becomes the latest again, so the scan's verdict still holds here.
        if let Some((wf, stage, state, n)) = c.rows().delete_finished_delivery(id)? {
            c.counts().add_deliveries(&wf, &stage, &state, -1);
            deliveries += 1;
            attempts += n;
        }
    }
    Ok((deliveries, attempts))
}

pub(crate) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn cutoff_ms(now: i64, older_than: Duration) -> i64 {
    now.saturating_sub(older_than.as_millis().min(i64::MAX as u128) as i64)
}

impl Store {
    /// Removes finished deliveries (and their attempts) whose last activity is older than the
    /// cutoff, keeping each item's latest delivery per stage and every open delivery; with
    /// `audit_older_than`, old audit rows too. Works in short chunks; safe while `serve` runs.
    pub fn prune(&self, opts: &PruneOptions, operator: &str) -> Result<PruneReport> {
        self.prune_with_progress(opts, operator, &mut |_, _| {})
    }

    /// [`Store::prune`], telling `progress` after each page it scans how far it got through
    /// the deliveries, as (rows behind it, rows in all when it started).
    pub fn prune_with_progress(
        &self,
        opts: &PruneOptions,
        _operator: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<PruneReport> {
        if !opts.dry_run {
            self.ensure_writable("prune")?;
        }
        let started = Instant::now();
        let cutoff = cutoff_ms(self.now_ms(), opts.older_than);
        let mut report = PruneReport {
            dry_run: opts.dry_run,
            cutoff: Some(to_time(cutoff)),
            file_bytes_before: self.file().map_or(0, file_len),
            ..PruneReport::default()
        };
        let before = self.read(|r| r.storage())?;
        report.kept_open = self.read(|r| r.open_deliveries())?;
        // The scan walks the deliveries in order: the last one it passed, against the last
        // there was, says how far it got.
        let end = self.read(|r| r.deliveries_end())?;
        let mut after = 0i64;
        let mut chunk = 64usize;
        let old_cache = if opts.dry_run {
            None
        } else {
            Some(self.write("prune", |c| c.rows().set_cache_kib(-PRUNE_CACHE_KIB))?)
        };
        let mut pending: Vec<String> = Vec::new();
        loop {
            let t = Instant::now();
            let page = self.read(|r| r.prune_scan(after, cutoff, SCAN_PAGE))?;
            report.scan_ms += ms(t.elapsed());
            let done = page.len() < SCAN_PAGE;
            if let Some(last) = page.last() {
                after = last.position;
            }
            let at = if done { end } else { after.min(end) };
            progress(at.max(0) as u64, end.max(0) as u64);
            for row in page {
                if row.latest {
                    report.kept_latest += 1;
                } else if opts.dry_run {
                    report.deliveries += 1;
                    report.attempts += row.attempts;
                } else {
                    pending.push(row.id);
                }
            }
            while pending.len() >= chunk || (done && !pending.is_empty()) {
                let ids: Vec<String> = pending.drain(..chunk.min(pending.len())).collect();
                let t = Instant::now();
                let (d, a) = self.write("prune", move |c| delete_chunk(c, &ids))?;
                chunk = adapt(chunk, t.elapsed());
                report.chunks += 1;
                report.longest_chunk_ms = report.longest_chunk_ms.max(ms(t.elapsed()));
                report.delete_ms += ms(t.elapsed());
                std::thread::sleep(t.elapsed().min(MAX_GAP));
                report.deliveries += d;
                report.attempts += a;
            }
            if done {
                break;
            }
        }
        if let Some(age) = opts.audit_older_than {
            report.audit_rows =
                self.prune_audit(cutoff_ms(self.now_ms(), age), opts.dry_run, &mut report)?;
        }
        if !opts.dry_run {
            let after = self.read(|r| r.storage())?;
            let used = |s: Storage| (s.pages - s.free).max(0) as u64;
            report.bytes_freed = used(before).saturating_sub(used(after)) * before.page_size as u64;
            if after.reclaimable && after.free > 0 {
                let t = Instant::now();
                report.pages_vacuumed = self.incremental_vacuum(&mut report)?;
                report.vacuum_ms = ms(t.elapsed());
            }
            if let Some(old) = old_cache {
                self.write("prune", move |c| c.rows().set_cache_kib(old).map(drop))?;
            }
            // SQLite: a passive checkpoint, which lets the file shrink after the vacuum.
            self.inner.backend.give_back_space();
        }
        // A dry run reports counts only: what the removal would free, estimated from the
        // share of rows removed, is unreliable.
        report.file_bytes_after = self.file().map_or(0, file_len);
        report.elapsed_ms = ms(started.elapsed());
        Ok(report)
    }

    fn prune_audit(&self, cutoff: i64, dry_run: bool, report: &mut PruneReport) -> Result<i64> {
        if dry_run {
            return self.read(|r| r.audit_rows_before(cutoff));
        }
        let mut total = 0;
        let mut chunk = 1024usize;
        loop {
            let t = Instant::now();
            let n = self.write("prune", move |c| {
                c.rows().delete_audit_before(cutoff, chunk)
            })?;
            report.chunks += 1;
            report.longest_chunk_ms = report.longest_chunk_ms.max(ms(t.elapsed()));
            std::thread::sleep(t.elapsed().min(MAX_GAP));
            chunk = adapt(chunk, t.elapsed());
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    fn incremental_vacuum(&self, report: &mut PruneReport) -> Result<i64> {
        let mut total = 0;
        let mut pages = VACUUM_PAGES;
        loop {
            let t = Instant::now();
            let n = self.write("prune", move |c| c.rows().give_back_pages(pages))?;
            report.chunks += 1;
            report.longest_chunk_ms = report.longest_chunk_ms.max(ms(t.elapsed()));
            std::thread::sleep(t.elapsed().min(MAX_GAP));
            pages = adapt(pages as usize, t.elapsed()) as i64;
            total += n;
            if n <= 0 {
                return Ok(total);
            }
        }
    }
}

/// Grows or shrinks a chunk so one write stays near [`CHUNK_TARGET`].
fn adapt(chunk: usize, took: Duration) -> usize {
    if took > CHUNK_TARGET * 3 / 2 {
        (chunk / 2).max(MIN_CHUNK)
    } else if took < CHUNK_TARGET / 3 {
        (chunk * 2).min(MAX_CHUNK)
    } else {
        chunk
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// Backup
// ---------------------------------------------------------------------------------------------

/// What `backup` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub items: i64,
    pub deliveries: i64,
    pub attempts: i64,
    pub schema_version: i64,
    pub elapsed_ms: f64,
}

impl Store {
    /// Writes a consistent copy of the database to `dest` through SQLite's online backup API,
    /// while other connections and processes keep writing. `dest` is created with mode 0600;
    /// an existing file is refused unless `force`.
    pub fn backup(&self, dest: &Path, force: bool) -> Result<BackupReport> {
        self.inner.backend.backup(dest, force)
    }
}

// ---------------------------------------------------------------------------------------------
// Health check
// ---------------------------------------------------------------------------------------------

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    /// Worth a look; not counted as wrong (a paused stage, a large WAL).
    Warn,
    /// Something is wrong: `check` exits 1.
    Fail,
    /// Not run (the schema is not one this binary reads).
    Skipped,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skipped => "skip",
        }
    }
}

/// One line of the health report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable key, for scripts.
    pub name: &'static str,
    pub status: CheckStatus,
    pub detail: String,
    /// `check --repair` can fix this one.
    pub repairable: bool,
}

/// The health report shared by `hookops check` and the console's `:health` view.
#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    pub path: PathBuf,
    /// Database file plus WAL, in bytes.
    pub size_bytes: u64,
    /// No check failed.
    pub ok: bool,
    pub checks: Vec<Check>,
    /// What `--repair` did, one sentence each.
    pub repaired: Vec<String>,
}

impl HealthReport {
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// Names of the checks, in report order.
pub const CHECKS: &[&str] = &[
    "integrity",
    "schema",
    "file_mode",
    "wal",
    "dispatcher",
    "expired_leases",
    "stuck_items",
    "orphaned_deliveries",
    "paused_stages",
    "oldest_pending",
    "counters",
    "policies",
];

pub(crate) fn line(name: &'static str, status: CheckStatus, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        repairable: false,
    }
}

/// Human size: `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ago(ms: i64) -> String {
    let secs = (ms.max(0) / 1000) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Runs every check on the file at `path` through a read-only connection of its own (no
/// migration, no write), so it also reports on a file this binary cannot open normally.
pub fn check_database(path: &Path) -> Result<HealthReport> {
    super::sqlite::file::check(path, chrono::Utc::now().timestamp_millis())
}

/// The checks of the rows (design §6), judged from what the backend read: the same for every
/// backend. Appends one line per name of [`CHECKS`] from `dispatcher` on.
pub(crate) fn table_checks(r: &dyn Reads, now: i64, checks: &mut Vec<Check>) -> Result<()> {
    let facts = r.health_facts(now)?;
    // Dispatcher heartbeat.
    let host = hostname();
    checks.push(match facts.beats.first() {
        None => line(
            "dispatcher",
            CheckStatus::Ok,
            "none running: deliveries queue until `hookops serve` or the console runs",
        ),
        Some((pid, h, start, beat)) => {
            let age = now - beat;
            let gone = *h == host && process_start(*pid).as_deref() != Some(start.as_str());
            if age > HEARTBEAT_STALE.as_millis() as i64 || gone {
                line(
                    "dispatcher",
                    CheckStatus::Fail,
                    format!(
                        "stale: pid {pid} on {h} last beat {} ago{}",
                        ago(age),
                        if gone { " and the process is gone" } else { "" }
                    ),
                )
            } else {
                line(
                    "dispatcher",
                    CheckStatus::Ok,
                    format!("running: pid {pid} on {h}, last beat {} ago", ago(age)),
                )
            }
        }
    });

    let expired = facts.expired_leases;
    checks.push(if expired == 0 {
        line("expired_leases", CheckStatus::Ok, "no expired leases")
    } else {
        Check {
            repairable: true,
            ..line(
                "expired_leases",
                CheckStatus::Fail,
                format!("{expired} in-flight delivery(ies) hold an expired lease (--repair releases them)"),
            )
        }
    });

    let stuck = &facts.stuck_items;
    checks.push(if stuck.n == 0 {
        line("stuck_items", CheckStatus::Ok, "every item in_delivery has an open delivery")
    } else {
        line(
            "stuck_items",
            CheckStatus::Fail,
            format!(
                "{} item(s) in_delivery without an open delivery (e.g. {}): re-fire their latest delivery or assign them",
                stuck.n,
                stuck.sample.join(", ")
            ),
        )
    });

    let orphans = &facts.orphans;
    checks.push(if orphans.n == 0 {
        line("orphaned_deliveries", CheckStatus::Ok, "no open delivery whose item left its stage")
    } else {
        Check {
            repairable: true,
            ..line(
                "orphaned_deliveries",
                CheckStatus::Fail,
                format!(
                    "{} open delivery(ies) whose item has left the stage (e.g. {}; --repair cancels them)",
                    orphans.n,
                    orphans.sample.join(", ")
                ),
            )
        }
    });

    checks.push(if facts.paused.is_empty() {
        line("paused_stages", CheckStatus::Ok, "no stage paused")
    } else {
        line(
            "paused_stages",
            CheckStatus::Warn,
            facts
                .paused
                .iter()
                .map(|(w, s, why)| format!("{w}/{s} ({})", why.as_deref().unwrap_or("paused")))
                .collect::<Vec<_>>()
                .join(", "),
        )
    });

    checks.push(match &facts.oldest_pending {
        None => line("oldest_pending", CheckStatus::Ok, "nothing pending"),
        Some((id, created, due)) => {
            let overdue = due.map(|d| now - d).unwrap_or(0);
            let text = format!(
                "{id} created {} ago{}",
                ago(now - created),
                if overdue > 0 {
                    format!(", due {} ago", ago(overdue))
                } else {
                    String::new()
                }
            );
            if overdue > OVERDUE_FAIL.as_millis() as i64 {
                line(
                    "oldest_pending",
                    CheckStatus::Fail,
                    format!("{text}: nothing is sending (is a dispatcher running?)"),
                )
            } else {
                line("oldest_pending", CheckStatus::Ok, text)
            }
        }
    });

    let wrong = facts.counter_mismatches;
    checks.push(if wrong == 0 {
        line("counters", CheckStatus::Ok, "item and delivery counters match the rows")
    } else {
        Check {
            repairable: true,
            ..line(
                "counters",
                CheckStatus::Fail,
                format!("{wrong} counter row(s) differ from the rows they count (--repair recomputes them)"),
            )
        }
    });

    let policies = super::policy::read_policies(r)?;
    checks.push(line("policies", CheckStatus::Ok, policies.summary()));
    Ok(())
}
impl Store {
    /// Recomputes the item and delivery counters from the rows. The store keeps them in its
    /// own writes; this is for rows written into the file by other means (the benchmarks'
    /// plain-SQL generators). `check --repair` does the same when `check` finds them wrong.
    pub fn recount(&self) -> Result<()> {
        self.write("recount", |c| c.counts().recompute(c.rows()))
    }
}

impl Store {
    /// The health report of this store's file (the console's `:health`).
    pub fn health(&self) -> Result<HealthReport> {
        self.inner.backend.check(self.now_ms())
    }

    /// Fixes what is safe to fix, then reports again. Releases expired leases through the
    /// dispatcher's reclaim path (an `interrupted` attempt each), cancels open deliveries whose
    /// item left their stage (reason `item_moved`), and recomputes counters. Audited.
    pub fn repair(&self, operator: &str) -> Result<HealthReport> {
        self.ensure_writable("repair")?;
        let before = self.health()?;
        let mut repaired = Vec::new();
        let failing = |name: &str| {
            before
                .check(name)
                .is_some_and(|c| c.status == CheckStatus::Fail)
        };
        if failing("expired_leases") {
            let op = operator.to_string();
            let n = self.write("repair", move |c| {
                let n = reclaim(c, &[])?;
                audit(c, &op, "repair", "expired leases", None, n as i64)?;
                Ok(n)
            })?;
            repaired.push(format!(
                "released {n} expired lease(s); each delivery is due again with an `interrupted` attempt"
            ));
        }
        if failing("orphaned_deliveries") {
            let mut total = 0;
            loop {
                let ids = self.read(|r| r.orphans(500))?;
                if ids.is_empty() {
                    break;
                }
                let op = operator.to_string();
                total += self.write("repair", move |c| {
                    let now = c.now();
                    let mut n = 0;
                    for id in &ids {
                        let id = DeliveryId::new(id.as_str());
                        let Some(d) = c.rows().delivery_for_cancel(&id)? else {
                            continue;
                        };
                        if !c.rows().cancel_open_delivery(
                            &id,
                            crate::model::CancelReason::ItemMoved,
                            &op,
                            now,
                        )? {
                            continue;
                        }
                        c.counts().delivery_moved(
                            &d.workflow,
                            &d.stage,
                            d.state.as_str(),
                            "cancelled",
                        );
                        n += 1;
                    }
                    audit(c, &op, "repair", "orphaned deliveries", None, n as i64)?;
                    Ok(n)
                })?;
            }
            repaired.push(format!(
                "cancelled {total} delivery(ies) whose item had left the stage (reason item_moved)"
            ));
        }
        if failing("counters") {
            let op = operator.to_string();
            self.write("repair", move |c| {
                c.counts().recompute(c.rows())?;
                audit(c, &op, "repair", "counters", None, 1)
            })?;
            repaired.push("recomputed the item and delivery counters".into());
        }
        let mut after = self.health()?;
        after.repaired = repaired;
        Ok(after)
    }
}

// ---------------------------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------------------------

/// What an operator cancel did.
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct CancelReport {
    pub cancelled: i64,
    /// Items that routed along `on_failure`, with where they went (an item whose stage has no
    /// `on_failure` stays where it is, marked failed, and is not listed).
    pub routed: Vec<(ItemId, StageId)>,
    pub refused: Vec<super::DeliveryRefusal>,
}

const CANCEL_CHUNK: usize = 500;

fn cancel_in_tx(c: &Tx<'_>, ids: &[DeliveryId], op: &str) -> Result<CancelReport> {
    let mut report = CancelReport::default();
    let now = c.now();
    for id in ids {
        let Some(CancelRow {
            state,
            workflow: wf,
            stage,
            item_id,
            item_version,
            event,
        }) = c.rows().delivery_for_cancel(id)?
        else {
            report.refused.push(super::DeliveryRefusal {
                delivery_id: id.clone(),
                kind: RefusalKind::NotFound,
                reason: format!("no delivery with id `{id}`"),
            });
            continue;
        };
        if !state.is_open() {
            report.refused.push(super::DeliveryRefusal {
                delivery_id: id.clone(),
                kind: RefusalKind::Stale,
                reason: format!("delivery `{id}` is already {state}"),
            });
            continue;
        }
        // The lease no longer holds: an attempt on the wire is recorded and routes nothing.
        c.rows()
            .cancel_open_delivery(id, crate::model::CancelReason::Operator, op, now)?;
        c.counts()
            .delivery_moved(&wf, &stage, state.as_str(), "cancelled");
        report.cancelled += 1;
        let stage = StageId(stage);
        let item = match item_id.filter(|_| event == EventType::StageWebhook) {
            Some(i) => c.rows().load_item(&ItemId(i))?,
            None => None,
        };
        // Route only an item still where this delivery found it (the same fencing as outcomes).
        let Some(item) = item.filter(|i| i.stage == stage && Some(i.version) == item_version)
        else {
            continue;
        };
        let (spec, revision) = current_spec(c, &WorkflowId(wf))?;
        let Ok(mut route) = engine::outcome(&spec, &item, Outcome::WebhookFailure) else {
            // The stage is no longer a webhook stage of the workflow: nothing to route along.
            continue;
        };
        if let Some(first) = route.hops.first_mut() {
            first.cause = HistoryCause::Cancelled;
        }
        apply_route(
            c,
            &spec,
            revision,
            &item,
            &route,
            MovedBy {
                operator: Some(op),
                trigger: DeliveryTrigger::Route,
                via_delivery: Some(id),
            },
        )?;
        c.rows().set_routed_version(id, item.version + 1)?;
        // Without `on_failure` the item stays where it is, marked failed: not a route.
        if route.stage != item.stage {
            report.routed.push((item.id.clone(), route.stage));
        }
    }
    Ok(report)
}

impl Store {
    /// Cancels open deliveries by id (design §6 "Cancelled", reason `operator`): each becomes
    /// `cancelled`, its item's version is bumped and the item routes along `on_failure` (history
    /// cause `cancelled`, with the operator) or is marked failed where there is none. Never
    /// counts toward auto-pause. Already finished or unknown deliveries are refused.
    pub fn cancel_deliveries(&self, ids: &[DeliveryId], operator: &str) -> Result<CancelReport> {
        self.ensure_writable("cancel")?;
        let mut report = CancelReport::default();
        for chunk in ids.chunks(CANCEL_CHUNK) {
            let (ids, op) = (chunk.to_vec(), operator.to_string());
            // Not audited here: the actions layer writes one row for the whole action.
            let r = self.write("cancel", move |c| cancel_in_tx(c, &ids, &op))?;
            report.cancelled += r.cancelled;
            report.routed.extend(r.routed);
            report.refused.extend(r.refused);
        }
        Ok(report)
    }

    /// Open deliveries matching `filter` (all three open states unless it names one), oldest
    /// first, at most `limit`. A finished state in the filter is refused.
    pub fn open_deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: Option<usize>,
    ) -> Result<Vec<DeliveryId>> {
        let states = match filter.state {
            Some(s) if s.is_open() => vec![s],
            Some(s) => {
                return Err(StoreError::Invalid(format!(
                    "only pending, retry_scheduled and in_flight deliveries can be cancelled, not {s}"
                )));
            }
            None => vec![
                DeliveryState::Pending,
                DeliveryState::RetryScheduled,
                DeliveryState::InFlight,
            ],
        };
        let mut out: Vec<(DeliveryId, i64)> = Vec::new();
        for state in states {
            let mut f = filter.clone();
            f.state = Some(state);
            let mut after = None;
            loop {
                let page = self.list_deliveries(&f, after, 5000)?;
                let done = page.len() < 5000;
                after = page.last().map(|(_, c)| *c);
                out.extend(page.into_iter().map(|(d, c)| (d.id, c.0)));
                if done {
                    break;
                }
            }
        }
        out.sort_by_key(|(_, seq)| *seq);
        let mut ids: Vec<DeliveryId> = out.into_iter().map(|(d, _)| d).collect();
        if let Some(l) = limit {
            ids.truncate(l);
        }
        Ok(ids)
    }
}

// ---------------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------------

impl Store {
    /// Writes the deliveries matching `filter` (newest first, at most `limit`) to `out` as JSON
    /// Lines: one [`super::DeliveryDetail`] per line (the `delivery show --json` shape, request
    /// headers redacted as stored). A closed pipe ends the export quietly. Returns the count.
    pub fn export_deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: Option<usize>,
        out: &mut dyn std::io::Write,
    ) -> Result<usize> {
        let limit = limit.unwrap_or(usize::MAX);
        let mut written = 0usize;
        let mut after = None;
        while written < limit {
            let page = self.list_deliveries(filter, after, 1000)?;
            let done = page.len() < 1000;
            after = page.last().map(|(_, c)| *c);
            for (d, _) in page.into_iter().take(limit - written) {
                let detail = self.delivery_detail(&d.id)?;
                let line = serde_json::to_string(&detail)?;
                match writeln!(out, "{line}") {
                    Ok(()) => written += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(written),
                    Err(e) => {
                        return Err(StoreError::Refused(format!("cannot write the export: {e}")));
                    }
                }
            }
            if done {
                break;
            }
        }
        out.flush()
            .map_err(|e| StoreError::Refused(format!("cannot write the export: {e}")))?;
        Ok(written)
    }
}
