//! Helpers shared by the trainer's tests that drive the `trainer` binary: the repository root,
//! the command run from it, and a run folder's report.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (recipes, datasets and `runs/` are relative to it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `trainer` binary, run from the repository root.
pub fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.current_dir(root());
    c
}

/// The one run folder under `dir` (`<out>/<recipe>`); panics if there is not exactly one.
pub fn only_run(dir: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    let [run] = runs.as_slice() else { panic!("one run folder: {runs:?}") };
    run.clone()
}

/// A run folder's `report.json`.
pub fn report(run: &Path) -> serde_json::Value {
    let path = run.join("report.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}
