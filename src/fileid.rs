//! A database file's identity (device, inode), so a process that holds the file open notices
//! when the path no longer leads to it: deleted, or replaced by another file (a restore by
//! rename). SQLite keeps writing to the file it opened, so what such a process writes would be
//! lost and what it sends could be stale. The console and `serve` check it once a second.
//!
//! An in-place overwrite (`cp backup.db hookops.db` onto the open file) keeps the inode and is
//! not seen here; README's restore steps remove the old file first.

use std::path::Path;

/// (device, inode) of a file.
pub type FileId = (u64, u64);

/// The identity of the file at `path` now; `None` when nothing is there (or off Unix, where
/// the check does nothing).
pub fn identity(path: &Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// What happened to the file at `path` since it was opened with identity `opened`, as one
/// phrase ("the database file X was deleted"), or `None` when it is still the same file.
pub fn problem(path: &Path, opened: Option<FileId>) -> Option<String> {
    let opened = opened?;
    match identity(path) {
        None => Some(format!("the database file {} was deleted", path.display())),
        Some(now) if now != opened => Some(format!(
            "the database file {} was replaced by another file",
            path.display()
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_or_renamed_over_file_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        std::fs::write(&path, b"a").unwrap();
        let opened = identity(&path);
        assert!(opened.is_some());
        assert_eq!(problem(&path, opened), None);
        // Rewritten in place: the same file.
        std::fs::write(&path, b"b").unwrap();
        assert_eq!(problem(&path, opened), None);
        let other = dir.path().join("b.db");
        std::fs::write(&other, b"c").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(problem(&path, opened).unwrap().contains("replaced"));
        std::fs::remove_file(&path).unwrap();
        assert!(problem(&path, opened).unwrap().contains("deleted"));
    }
}
