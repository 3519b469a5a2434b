//! The run folder every recipe writes, `runs/<recipe>/<timestamp>/`: made first, with the recipe
//! as run written into it, so even a crashed run says what it was; every later file written
//! atomically (a temporary file renamed into place), so a kill never leaves half a report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// A run's folder, its clock and the recipe it runs.
pub struct RunDir {
    path: PathBuf,
    started: Instant,
    config: Value,
}

impl RunDir {
    /// A fresh folder `root/name/<timestamp>` (suffixed if two runs start in the same second)
    /// with `recipe.toml` (the recipe as run, TOML) written into it.
    pub fn create(root: &Path, name: &str, as_run: &str) -> Result<Self> {
        let started = Instant::now();
        let base = root.join(name).join(timestamp());
        let mut path = base.clone();
        let mut i = 1;
        while path.exists() {
            path = PathBuf::from(format!("{}-{i}", base.display()));
            i += 1;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating run folder {}", path.display()))?;
        let dir = RunDir { path, started, config: config_of(as_run)? };
        dir.write("recipe.toml", as_run)?;
        Ok(dir)
    }

    /// An existing run folder (to resume it); the clock starts now.
    pub fn reopen(path: &Path, as_run: &str) -> Result<Self> {
        Ok(RunDir { path: path.to_path_buf(), started: Instant::now(), config: config_of(as_run)? })
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

    /// Writes `name` atomically: a temporary file beside it, then a rename.
    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        write_atomic(&self.join(name), contents.as_ref())
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

/// The recipe as run, as JSON for the report.
fn config_of(as_run: &str) -> Result<Value> {
    let table: toml::Table = toml::from_str(as_run).context("the recipe as run is not TOML")?;
    Ok(serde_json::to_value(table)?)
}

/// Writes a file atomically: a temporary file beside `path`, synced to disk, then a rename over
/// it; a kill or power loss leaves the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<PathBuf> {
    use std::io::Write as _;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(contents).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(path.to_path_buf())
}

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
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
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
