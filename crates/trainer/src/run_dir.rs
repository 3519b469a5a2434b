//! The run folder every recipe writes, `runs/<recipe>/<timestamp>/`: made first, with the recipe
//! as run written into it, so even a crashed run says what it was; every later file written
//! atomically (a temporary file renamed into place), so a kill never leaves half a report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

/// A run's folder, its clock and the recipe it runs. The folder belongs to this process for the
/// run's life: an advisory lock on its `.lock` file (released when the process ends, however it
/// ends) refuses a second run or `--resume` into it.
pub struct RunDir {
    path: PathBuf,
    started: Instant,
    config: Value,
    /// Holds the folder's lock while the run lives.
    _lock: std::fs::File,
}

/// The lock file in every run folder; it holds the pid of the process that has the folder.
const LOCK: &str = ".lock";

/// The first line of `recipe.toml`: which recipe (by name) the folder is a run of.
const NAME_LINE: &str = "# run of recipe: ";

impl RunDir {
    /// A fresh folder `root/name/<timestamp>` (suffixed `-1`, `-2`, … if taken: the folder is
    /// created exclusively, so two runs starting at once get two folders), locked, with
    /// `recipe.toml` (the recipe as run, TOML, under a comment naming the recipe) written into it.
    pub fn create(root: &Path, name: &str, as_run: &str) -> Result<Self> {
        let started = Instant::now();
        let parent = root.join(name);
        std::fs::create_dir_all(&parent).with_context(|| format!("creating the runs folder {}", parent.display()))?;
        let stamp = timestamp();
        let mut i = 0;
        let path = loop {
            let path = parent.join(if i == 0 { stamp.clone() } else { format!("{stamp}-{i}") });
            match std::fs::create_dir(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && i < 10_000 => i += 1,
                Err(e) => return Err(io_error(e, "creating run folder", &path)),
            }
        };
        let lock = lock(&path)?;
        let dir = RunDir { path, started, config: config_of(as_run)?, _lock: lock };
        dir.write("recipe.toml", format!("{NAME_LINE}{name}\n{as_run}"))?;
        Ok(dir)
    }

    /// An existing run folder of recipe `name` (to resume it), locked; the clock starts now.
    /// Refused when another process holds the folder (naming its pid), or when the folder is a
    /// run of another recipe.
    pub fn reopen(path: &Path, name: &str, as_run: &str) -> Result<Self> {
        if !path.is_dir() {
            bail!("--resume {}: no such run folder", path.display());
        }
        check_recipe_name(path, name)?;
        let lock = lock(path)?;
        ferrovene_models::atomic_file::remove_left_over(path);
        Ok(RunDir { path: path.to_path_buf(), started: Instant::now(), config: config_of(as_run)?, _lock: lock })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the folder.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Seconds since the run started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Writes `name` atomically: a temporary file beside it, then a rename. A run folder removed
    /// during the run is an error, never silently made again.
    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        self.check_present()?;
        write_atomic(&self.join(name), contents.as_ref())
    }

    /// The subfolder `name` (made if missing) of a folder that must still be there.
    pub fn subfolder(&self, name: impl AsRef<Path>) -> Result<PathBuf> {
        self.check_present()?;
        let path = self.join(name);
        std::fs::create_dir_all(&path).map_err(|e| io_error(e, "creating", &path))?;
        Ok(path)
    }

    /// An error when the folder is gone (removed while the run was going).
    pub fn check_present(&self) -> Result<()> {
        if !self.path.is_dir() {
            bail!(
                "the run folder {} was removed while the run was going: nothing more is written there (start the run again)",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Writes `report.json`: `body` with the recipe as run (`config`), the total time, the
    /// machine, the versions and the device it computed on (`compute`) added.
    pub fn write_report(&self, mut body: Value) -> Result<PathBuf> {
        if let Some(map) = body.as_object_mut() {
            let timings = map.entry("timings_s").or_insert_with(|| json!({}));
            if let Some(t) = timings.as_object_mut() {
                t.insert("total".into(), json!(self.elapsed()));
            }
            map.insert("config".into(), self.config.clone());
            map.insert("machine".into(), machine());
            map.insert("versions".into(), versions());
            if let Some(mut compute) = crate::device::chosen() {
                if let (Some(c), Some(bytes)) = (compute.as_object_mut(), crate::device::model_bytes()) {
                    c.insert("model_bytes".into(), json!(bytes));
                }
                map.insert("compute".into(), compute);
            }
        }
        self.write("report.json", serde_json::to_string_pretty(&body)?)
    }
}

/// Takes the lock of run folder `path` (creating its lock file) and writes this process's pid
/// into it; refused, naming the holder's pid, when another process has the folder.
fn lock(path: &Path) -> Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    let file_path = path.join(LOCK);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&file_path)
        .map_err(|e| io_error(e, "opening", &file_path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder =
                if pid.trim().is_empty() { "another process".to_string() } else { format!("process {}", pid.trim()) };
            bail!(
                "run folder {} is in use by {holder} (a run or a --resume still going); wait for it to end, or stop it, before resuming",
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error(e, "locking", &file_path)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()))
        .map_err(|e| io_error(e, "writing", &file_path))?;
    Ok(file)
}

/// An error naming the holder when another process holds run folder `path` (checked before a
/// `--resume` loads anything; the run takes the lock itself when it reopens the folder).
pub fn check_not_in_use(path: &Path) -> Result<()> {
    lock(path).map(drop)
}

/// An error when run folder `path` says it is a run of a recipe other than `name` (what
/// `--resume` checks before loading anything, and [`RunDir::reopen`] again).
pub fn check_recipe_name(path: &Path, name: &str) -> Result<()> {
    match recipe_name(path).filter(|held| held != name) {
        Some(held) => bail!(
            "--resume {}: that folder is a run of recipe `{held}`, not `{name}`; resume it with `trainer {held} --resume {}`",
            path.display(),
            path.display()
        ),
        None => Ok(()),
    }
}

/// The recipe name a run folder says it is a run of: `recipe.toml`'s first line (`None` for
/// folders written before that line existed; their kind is still checked on `--resume`).
pub fn recipe_name(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path.join("recipe.toml")).ok()?;
    text.lines().next().and_then(|l| l.strip_prefix(NAME_LINE)).map(|name| name.trim().to_string())
}

/// An I/O error as the user reads it: what was being done to which file, and the OS's reason
/// (a full disk says "no space left on device").
pub fn io_error(e: std::io::Error, doing: &str, path: &Path) -> anyhow::Error {
    let reason = match e.raw_os_error() {
        Some(28) => "no space left on device".to_string(),
        _ => e.to_string(),
    };
    anyhow!("{doing} {}: {reason}", path.display())
}

/// The recipe as run, as JSON for the report.
fn config_of(as_run: &str) -> Result<Value> {
    let table: toml::Table = toml::from_str(as_run).context("the recipe as run is not TOML")?;
    Ok(serde_json::to_value(table)?)
}

/// Writes a file atomically through [`ferrovene_models::atomic_file`] (the one atomic write of
/// every crate: a temporary file of its own beside `path`, synced, renamed over it, the folder
/// synced). A kill leaves the old file or the new one, never half of one; an error (a full disk)
/// removes the temporary file and names `path`.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<PathBuf> {
    let _writing = hold_writes();
    ferrovene_models::atomic_file::write(path, contents).map_err(|e| io_error(e, "writing", path))
}

/// Held while [`write_atomic`] writes; an exit on a signal takes it first, so that it never
/// leaves a temporary file behind.
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits for the file being written (if any) and keeps others from starting while held.
pub fn hold_writes() -> std::sync::MutexGuard<'static, ()> {
    WRITING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Syncs a folder's entries to disk (what makes a rename into it durable).
pub use ferrovene_models::atomic_file::sync_folder;

/// The machine a run ran on (OS, architecture, CPUs).
pub fn machine() -> Value {
    json!({"os": std::env::consts::OS, "arch": std::env::consts::ARCH, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)})
}

/// The versions of ferrovene and of the burn that Cargo.lock resolved.
pub fn versions() -> Value {
    json!({"ferrovene": env!("CARGO_PKG_VERSION"), "burn": env!("FERROVENE_BURN_VERSION")})
}

/// FNV-1a of bytes, as hex: data hashes and fingerprints in reports.
pub fn fnv1a(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3));
    format!("{h:016x}")
}

/// `YYYYMMDD-HHMMSS` (UTC) for run folders.
pub fn timestamp() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder path that does not exist yet, inside a temporary folder removed when the first
    /// value is dropped.
    fn fresh(tag: &str) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::Builder::new().prefix("ferrovene-rundir-").tempdir().expect("a temporary folder");
        let dir = tmp.path().join(tag);
        (tmp, dir)
    }

    #[test]
    fn folders_are_created_exclusively_and_one_process_holds_each() {
        let (_tmp, root) = fresh("excl");
        // Eight creations at once in one second: eight folders, each with its own recipe.
        let dirs: Vec<RunDir> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let root = &root;
                    s.spawn(move || RunDir::create(root, "r", &format!("seed = {i}\n")).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut paths: Vec<&Path> = dirs.iter().map(|d| d.path()).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 8);
        for d in &dirs {
            let text = std::fs::read_to_string(d.join("recipe.toml")).unwrap();
            assert!(text.starts_with("# run of recipe: r\n"), "{text}");
            assert_eq!(recipe_name(d.path()).as_deref(), Some("r"));
        }
        // flock is per open file: a second open in this process is refused as another's would be.
        let e = RunDir::reopen(dirs[0].path(), "r", "seed = 0\n").err().unwrap().to_string();
        assert!(e.contains(&format!("in use by process {}", std::process::id())), "{e}");
        let e = RunDir::reopen(dirs[1].path(), "other", "seed = 1\n").err().unwrap().to_string();
        assert!(e.contains("is a run of recipe `r`, not `other`"), "{e}");
        let path = dirs[2].path().to_path_buf();
        drop(dirs);
        assert!(RunDir::reopen(&path, "r", "seed = 2\n").is_ok(), "free once its holder is gone");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_removed_run_folder_is_an_error_not_made_again() {
        let (_tmp, root) = fresh("gone");
        let d = RunDir::create(&root, "r", "seed = 1\n").unwrap();
        std::fs::remove_dir_all(d.path()).unwrap();
        let e = d.write("report.json", "{}").unwrap_err().to_string();
        assert!(e.contains("was removed while the run was going"), "{e}");
        assert!(d.subfolder("tasks/t").is_err());
        assert!(!d.path().exists(), "not made again");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file_and_names_the_file() {
        let (_tmp, root) = fresh("fail");
        // A rename over a folder that is not empty fails after the temporary file is written.
        let target = root.join("busy");
        std::fs::create_dir_all(target.join("inside")).unwrap();
        let e = write_atomic(&target, b"numbers").unwrap_err().to_string();
        assert!(e.contains(&target.display().to_string()), "{e}");
        let left: Vec<String> =
            std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, vec!["busy".to_string()], "temporary files left: {left:?}");
        let full = io_error(std::io::Error::from_raw_os_error(28), "writing", Path::new("runs/x/results.csv"));
        assert_eq!(full.to_string(), "writing runs/x/results.csv: no space left on device");
        let _ = std::fs::remove_dir_all(&root);
    }
}
