//! The one way every crate writes a file that must never be seen half-written (exports,
//! checkpoints, reports, results): the bytes go to a temporary file beside the target (a name of
//! its own per process and write), are synced, and the file is renamed over the target, then the
//! folder is synced so that the rename itself survives a power loss. A temporary file that is not
//! committed (an error while writing, a full disk, a dropped [`PendingFile`]) is removed.
//!
//! It lives in the lowest crate so that the interventions' exports and the trainer's run files
//! share it.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A written, synced temporary file waiting to replace its target; dropped without
/// [`PendingFile::commit`], it is removed and the target is untouched.
pub struct PendingFile {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// Renames the temporary file over the target (atomic on POSIX file systems), then syncs the
    /// folder.
    pub fn commit(mut self) -> io::Result<PathBuf> {
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        sync_folder(self.path.parent().unwrap_or(Path::new(".")));
        Ok(self.path.clone())
    }

    /// The target it will replace.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes a temporary file beside `path` with `write` and syncs it, ready to commit. On an error
/// (from `write` or the file system) the temporary file is gone and the error is returned.
pub fn prepare(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<PendingFile> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp =
        path.with_file_name(format!(".{name}.tmp-{}-{}", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
    let mut file = File::create(&tmp)?;
    // From here the guard removes the temporary file on every early return.
    let pending = PendingFile { tmp, path: path.to_path_buf(), committed: false };
    write(&mut file)?;
    file.sync_all()?;
    Ok(pending)
}

/// Writes `contents` to `path` atomically: [`prepare`], then [`PendingFile::commit`].
pub fn write(path: &Path, contents: &[u8]) -> io::Result<PathBuf> {
    prepare(path, |f| f.write_all(contents))?.commit()
}

/// Removes the temporary files a writer killed mid-write left (`.NAME.tmp-PID-N`, as [`prepare`]
/// names them) in `folder` and the folders in it. Call it only on a folder no live writer uses
/// (one this process has locked).
pub fn remove_left_over(folder: &Path) {
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            remove_left_over(&path);
        } else if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Syncs a folder's entries to disk (what makes a rename into it durable); best effort, as some
/// file systems refuse to open a folder for it.
pub fn sync_folder(folder: &Path) {
    let folder = if folder.as_os_str().is_empty() { Path::new(".") } else { folder };
    if let Ok(f) = File::open(folder) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty temporary folder, removed when dropped.
    fn fresh(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("ferrovene-atomic-{tag}-")).tempdir().expect("a temporary folder")
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_writer_that_fails_midway_leaves_the_old_file_whole_and_no_temporary() {
        let tmp = fresh("fail");
        let dir = tmp.path();
        let path = dir.join("report.json");
        write(&path, b"the old report").unwrap();
        // A writer that gets 5 bytes out and then fails, as a full disk does.
        let e = prepare(&path, |f| {
            f.write_all(b"the n")?;
            Err(io::Error::from_raw_os_error(28))
        })
        .err()
        .expect("the failure comes back");
        assert_eq!(e.raw_os_error(), Some(28));
        assert_eq!(std::fs::read(&path).unwrap(), b"the old report");
        assert_eq!(names(dir), vec!["report.json"], "no temporary file left");
        // Written but never committed: the same.
        drop(prepare(&path, |f| f.write_all(b"abandoned")).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"the old report");
        assert_eq!(names(dir), vec!["report.json"]);
        // Two pending writes of one target in one process do not share a temporary file.
        let a = prepare(&path, |f| f.write_all(b"first")).unwrap();
        let b = prepare(&path, |f| f.write_all(b"second")).unwrap();
        assert_eq!(names(dir).len(), 3);
        b.commit().unwrap();
        a.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(names(dir), vec!["report.json"]);
    }
}
