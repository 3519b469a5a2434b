//! What a run shows while it runs: TensorBoard scalars (written with tensorboard-rs into the run
//! folder, so `tensorboard --logdir runs/` plots loss, learning rate, dev IIA, temperature and
//! orthogonality error) and progress bars with an ETA (drawn only on a terminal).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tensorboard_rs::summary_writer::SummaryWriter;

/// Scalar series of a run, in TensorBoard's event-file format. Scalars are held until
/// [`Events::flush`], which the training loop calls when it writes a checkpoint (and at the end):
/// a killed run then leaves no steps past its last checkpoint, and `--resume`, which replays
/// those steps, logs each step once.
pub struct Events {
    writer: SummaryWriter,
    dir: PathBuf,
    pending: Vec<(String, f32, usize)>,
}

impl Events {
    /// Starts an event file in `dir` (created if missing). A resumed run adds a new file beside
    /// the old ones; TensorBoard reads them as one series.
    pub fn create(dir: &Path) -> Result<Self> {
        // tensorboard-rs panics on I/O errors; check what it will need first.
        std::fs::create_dir_all(dir).with_context(|| format!("creating the TensorBoard folder {}", dir.display()))?;
        let probe = dir.join(".writable");
        std::fs::write(&probe, b"").with_context(|| format!("{} is not writable", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        Ok(Self { writer: SummaryWriter::new(dir), dir: dir.to_path_buf(), pending: Vec::new() })
    }

    /// Records `value` of series `tag` at optimizer step `step`.
    pub fn scalar(&mut self, tag: &str, value: f64, step: usize) {
        self.pending.push((tag.to_string(), value as f32, step));
    }

    /// Writes what was recorded to the event file (done at checkpoints and at the end).
    pub fn flush(&mut self) {
        for (tag, value, step) in self.pending.drain(..) {
            self.writer.add_scalar(&tag, value, step);
        }
        self.writer.flush();
    }

    /// The folder the event files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Events {
    /// A run that ends in any way but a kill keeps every scalar it recorded.
    fn drop(&mut self) {
        self.flush();
    }
}

/// A progress bar over `len` units with an ETA; hidden when stderr is not a terminal.
pub fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(mut latest) = LATEST.lock() {
        *latest = Some(bar.downgrade());
    }
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}

/// The bar [`progress`] made last, for a caller that shows progress its own way (the Python
/// package's notebook bars) while the work runs on another thread.
static LATEST: std::sync::Mutex<Option<indicatif::WeakProgressBar>> = std::sync::Mutex::new(None);

/// Where the latest bar stands, while it is alive: its label, position, length and message.
pub fn latest_progress() -> Option<(String, u64, Option<u64>, String)> {
    let bar = LATEST.lock().ok()?.as_ref()?.upgrade()?;
    if bar.is_finished() {
        return None;
    }
    Some((bar.prefix(), bar.position(), bar.length(), bar.message()))
}

/// [`progress`], hidden unless `show` (for `--quiet` and tests).
pub fn progress_if(show: bool, len: usize, what: &str) -> ProgressBar {
    let bar = progress(len, what);
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}
