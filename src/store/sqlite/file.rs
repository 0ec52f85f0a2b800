//! What SQLite keeps in a file and the rest of the store does not see: the online backup, the
//! checks of the file itself (integrity, schema, mode, WAL) before the checks of its rows,
//! and the checkpoint after a prune.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::reads::SqliteReads;
use super::{open_connection, schema};
use crate::store::maintenance::{
    BackupReport, CHECKS, Check, CheckStatus, HealthReport, WAL_WARN_BYTES, file_len, human_bytes,
    line, ms, table_checks,
};
use crate::store::{Result, SCHEMA_VERSION, StoreError};

/// Writes a consistent copy of the database at `path` to `dest` through SQLite's online
/// backup API (see [`crate::store::Store::backup`]).
pub(crate) fn backup(path: &Path, dest: &Path, force: bool) -> Result<BackupReport> {
    let started = Instant::now();
    let same = dest
        .canonicalize()
        .ok()
        .zip(path.canonicalize().ok())
        .is_some_and(|(a, b)| a == b);
    if same {
        return Err(StoreError::Invalid(
            "the backup file is the database itself: name another file".into(),
        ));
    }
    if dest.exists() {
        if !force {
            return Err(StoreError::Refused(format!(
                "{} exists; pass --force to overwrite it",
                dest.display()
            )));
        }
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = dest.as_os_str().to_owned();
            p.push(suffix);
            let p = PathBuf::from(p);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| {
                    StoreError::Refused(format!("cannot remove {}: {e}", p.display()))
                })?;
            }
        }
    }
    super::create_file(dest, 0o600)?;
    let src = open_connection(path, true)?;
    let mut dst = Connection::open(dest).map_err(|e| StoreError::Open {
        path: dest.to_path_buf(),
        message: e.to_string(),
    })?;
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // One step copies every page inside one read transaction of the source: in WAL mode
        // that never blocks writers, and a multi-step copy would restart on every commit.
        loop {
            match b.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => {}
                // Busy/Locked are transient; SQLite asks to retry the step.
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    // A standalone copy: no WAL beside it, so copying or moving the one file is enough.
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    let count = |sql: &str| -> Result<i64> { Ok(dst.query_row(sql, [], |r| r.get(0))?) };
    let report = BackupReport {
        path: dest.to_path_buf(),
        items: count("SELECT COUNT(*) FROM items")?,
        deliveries: count("SELECT COUNT(*) FROM deliveries")?,
        attempts: count("SELECT COUNT(*) FROM attempts")?,
        schema_version: schema::user_version(&dst)?,
        bytes: 0,
        elapsed_ms: 0.0,
    };
    drop(dst);
    Ok(BackupReport {
        bytes: file_len(dest),
        elapsed_ms: ms(started.elapsed()),
        ..report
    })
}

/// Every check of the file at `path` as of `now` (ms since the epoch), through a read-only
/// connection of its own: no migration, no write, so it also reports on a file this binary
/// cannot open normally.
pub(crate) fn check(path: &Path, now: i64) -> Result<HealthReport> {
    if !path.exists() {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            message: "the file does not exist".into(),
        });
    }
    let c = open_connection(path, true)?;
    let mut checks = Vec::new();

    // A damaged page can stop integrity_check itself: that is its finding, not a failure of
    // `check`.
    let problems: Vec<String> = match c.prepare("PRAGMA integrity_check(10)").and_then(|mut q| {
        q.query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()
    }) {
        Ok(problems) => problems,
        Err(e) => vec![format!("could not finish: {e}")],
    };
    let intact = problems.len() == 1 && problems[0] == "ok";
    checks.push(if intact {
        line("integrity", CheckStatus::Ok, "SQLite integrity_check: ok")
    } else {
        line(
            "integrity",
            CheckStatus::Fail,
            format!(
                "SQLite integrity_check: {} (restore from a backup)",
                problems.join("; ")
            ),
        )
    });

    let version = schema::user_version(&c)?;
    let app_id: i64 = c.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let schema_ok = version == SCHEMA_VERSION && app_id == schema::APPLICATION_ID;
    checks.push(if schema_ok {
        line(
            "schema",
            CheckStatus::Ok,
            format!("schema version {version} (this binary: {SCHEMA_VERSION})"),
        )
    } else if app_id != schema::APPLICATION_ID {
        line("schema", CheckStatus::Fail, "not a hookops database")
    } else if version > SCHEMA_VERSION {
        line(
            "schema",
            CheckStatus::Fail,
            format!("schema version {version} is newer than this binary ({SCHEMA_VERSION}): upgrade hookops"),
        )
    } else {
        line(
            "schema",
            CheckStatus::Fail,
            format!("schema version {version}, this binary writes {SCHEMA_VERSION}: any command that writes migrates it"),
        )
    });

    checks.push(file_mode_check(path));

    let wal = file_len(&wal_path(path));
    checks.push(if wal > WAL_WARN_BYTES {
        line(
            "wal",
            CheckStatus::Warn,
            format!(
                "WAL is {} (a long-running reader may keep it from being checkpointed)",
                human_bytes(wal)
            ),
        )
    } else {
        line("wal", CheckStatus::Ok, format!("WAL {}", human_bytes(wal)))
    });

    // The table checks read every table: on a damaged file they would stop at the first bad
    // page and say nothing more useful than the integrity line already does.
    let skip = if !intact {
        Some("not checked: the file is damaged")
    } else if !schema_ok {
        Some("not checked: the schema differs")
    } else {
        None
    };
    match skip {
        None => table_checks(&SqliteReads { conn: &c }, now, &mut checks)?,
        Some(why) => {
            for name in &CHECKS[4..] {
                checks.push(line(name, CheckStatus::Skipped, why));
            }
        }
    }
    Ok(HealthReport {
        path: path.to_path_buf(),
        size_bytes: file_len(path) + wal,
        ok: checks.iter().all(|c| c.status != CheckStatus::Fail),
        checks,
        repaired: Vec::new(),
    })
}

fn file_mode_check(path: &Path) -> Check {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        if mode & 0o007 != 0 {
            return line(
                "file_mode",
                CheckStatus::Fail,
                format!(
                    "mode {mode:04o}: every user can read the webhook secrets inside (chmod 600, or 660 for a team)"
                ),
            );
        }
        line("file_mode", CheckStatus::Ok, format!("mode {mode:04o}"))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        line("file_mode", CheckStatus::Ok, "not checked on this platform")
    }
}

/// A passive checkpoint on a connection of its own: never waits for readers or writers; it
/// lets the database file shrink after an incremental vacuum.
pub(crate) fn checkpoint(path: &Path) {
    if let Ok(c) = open_connection(path, false) {
        let _ = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
}

pub(crate) fn wal_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}
