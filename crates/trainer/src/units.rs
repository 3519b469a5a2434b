//! What a sweep has finished, kept as it goes: every finished unit (a site, a task's layer) is
//! added to `units.jsonl` in the run folder, the whole file rewritten atomically, so that an
//! interruption (Ctrl-C, SIGTERM, SIGKILL, a crash) loses at most the unit in progress, and
//! `--resume DIR` goes on from the units there. Units are deterministic given the recipe (each
//! seeds itself), so a resumed sweep ends with the uninterrupted one's numbers.
//!
//! [`on_signal_keep_units`] makes Ctrl-C and SIGTERM say what was kept and how to go on.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::run_dir::RunDir;

/// The log's file name in the run folder.
pub const FILE: &str = "units.jsonl";

/// The finished units of one sweep, in the order they finished.
pub struct UnitLog<T> {
    path: PathBuf,
    done: Vec<T>,
    /// What Ctrl-C prints: the count kept and the command that goes on.
    resume_hint: String,
}

impl<T: Serialize + DeserializeOwned> UnitLog<T> {
    /// The log of run folder `dir`: empty for a new run, the units already there for a resumed
    /// one. `resume_command` is the command that goes on (printed on interruption).
    pub fn open(dir: &RunDir, resume_command: String) -> Result<Self> {
        let path = dir.join(FILE);
        let mut done = Vec::new();
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let unit = serde_json::from_str(line).map_err(|e| {
                    anyhow!(
                        "{}:{}: not a unit of this sweep ({e}); remove the line to run that unit again",
                        path.display(),
                        i + 1
                    )
                })?;
                done.push(unit);
            }
        }
        let log = UnitLog { path, done, resume_hint: resume_command };
        log.announce();
        Ok(log)
    }

    /// The units finished so far.
    pub fn done(&self) -> &[T] {
        &self.done
    }

    /// Adds a finished unit and rewrites the file (atomically: a kill leaves the file with or
    /// without this unit, never half of it).
    pub fn push(&mut self, unit: T) -> Result<()> {
        self.done.push(unit);
        let mut text = String::new();
        for u in &self.done {
            text += &serde_json::to_string(u)?;
            text.push('\n');
        }
        crate::run_dir::write_atomic(&self.path, text.as_bytes())?;
        self.announce();
        Ok(())
    }

    /// Makes the interruption message say what is kept now.
    fn announce(&self) {
        let folder = self.path.parent().map(|p| p.display().to_string()).unwrap_or_default();
        let msg = format!("{} finished unit(s) kept in {folder}; go on with: {}", self.done.len(), self.resume_hint);
        if let Ok(mut kept) = KEPT.lock() {
            *kept = Some(msg);
        }
    }
}

/// What the interruption message says (the latest log's count and command).
static KEPT: Mutex<Option<String>> = Mutex::new(None);

/// On Ctrl-C or SIGTERM: wait for a file being written to be complete, print what was kept and
/// how to go on, and exit (130 for Ctrl-C, 143 for SIGTERM). For sweeps, whose finished units are
/// on disk already; the unit in progress is lost.
pub fn on_signal_keep_units() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let _writing = crate::run_dir::hold_writes();
            let kept = KEPT.lock().ok().and_then(|k| k.clone());
            let what = if signal == SIGINT { "Ctrl-C" } else { "SIGTERM" };
            match kept {
                Some(k) => eprintln!("\n{what}: stopped; the unit in progress is lost, {k}"),
                None => eprintln!("\n{what}: stopped before any unit finished"),
            }
            std::process::exit(if signal == SIGINT { 130 } else { 143 });
        }
    });
    Ok(())
}
