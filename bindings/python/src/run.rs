//! `run_recipe` and `train`: a recipe run as `trainer <recipe>` runs it (same loop, same files,
//! same numbers), on a thread of its own while Python's main thread waits with the GIL released
//! and checks for Ctrl-C: a KeyboardInterrupt asks the run to stop after its step, with a
//! checkpoint, and is raised once it has.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use ferrovene_trainer::commands::recipe_run::{INTERRUPT, RecipeRun};
use ferrovene_trainer::device::{Compute, dispatch};
use ferrovene_trainer::experiments::{Recipe, RunEnd};
use ferrovene_trainer::recipe::{self, Override};
use numpy::PyArray1;
use pyo3::exceptions::{PyKeyboardInterrupt, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{failed, invalid};
use crate::intervention::Intervention;
use crate::model::{Model, compute};
use crate::pairs::Pairs;

/// A finished run: its folder, its report and, where it trained one, its intervention.
#[pyclass(module = "ferrovene._ferrovene")]
pub struct Report {
    /// The run folder.
    #[pyo3(get)]
    run_dir: PathBuf,
    /// report.json, as JSON text.
    text: String,
}

#[pymethods]
impl Report {
    /// report.json as a dict.
    #[getter]
    fn report<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?.call_method1("loads", (self.text.as_str(),))
    }

    /// The held-out metrics (report.json's `metrics`), as a dict.
    #[getter]
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let report = self.report(py)?;
        match report.get_item("metrics") {
            Ok(m) => Ok(m),
            Err(_) => Ok(PyDict::new(py).into_any()),
        }
    }

    /// Every optimizer step's training loss (float32), for runs with one training loop.
    #[getter]
    fn losses<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let report: serde_json::Value = serde_json::from_str(&self.text).map_err(|e| failed(e.into()))?;
        let losses = report["training"]["losses"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect())
            .unwrap_or_default();
        Ok(PyArray1::from_vec(py, losses))
    }

    /// The trained intervention (the run's `intervention.safetensors`), or None.
    #[getter]
    fn intervention(&self, py: Python<'_>) -> PyResult<Option<Intervention>> {
        let path = self.run_dir.join("intervention.safetensors");
        if !path.exists() {
            return Ok(None);
        }
        py.detach(|| Intervention::open(&path)).map(Some).map_err(failed)
    }

    fn __repr__(&self) -> String {
        format!("Report({})", self.run_dir.display())
    }
}

/// A Python value as a recipe value (TOML): bool, int, float, str, or a list of them.
fn toml_value(key: &str, v: &Bound<'_, PyAny>) -> PyResult<toml::Value> {
    if let Ok(b) = v.extract::<bool>() {
        return Ok(toml::Value::Boolean(b));
    }
    if let Ok(i) = v.extract::<i64>() {
        return Ok(toml::Value::Integer(i));
    }
    if let Ok(f) = v.extract::<f64>() {
        return Ok(toml::Value::Float(f));
    }
    if let Ok(s) = v.extract::<String>() {
        return Ok(toml::Value::String(s));
    }
    if let Ok(p) = v.extract::<PathBuf>() {
        return Ok(toml::Value::String(p.display().to_string()));
    }
    if let Ok(list) = v.cast::<PyList>() {
        return list.iter().map(|x| toml_value(key, &x)).collect::<PyResult<Vec<_>>>().map(toml::Value::Array);
    }
    Err(PyTypeError::new_err(format!(
        "{key}={}: a recipe value is a bool, int, float, str, path or a list of them",
        v.repr().map_or_else(|_| "?".into(), |r| r.to_string())
    )))
}

/// Keyword arguments as recipe overrides (`--set key=value`), each named by its key in errors.
fn overrides_of(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<Override>> {
    kwargs
        .into_iter()
        .flat_map(|d| d.iter())
        .map(|(k, v)| {
            let key: String = k.extract()?;
            Ok(Override::new(&key, toml_value(&key, &v)?).typed_as(format!("{key}=…")))
        })
        .collect()
}

/// Runs `job` on a thread of its own; the calling thread waits with the GIL released, shows the
/// run's progress through `on_progress(label, position, total, message)` (and
/// `on_progress(None, 0, None, "")` at the end) and, on Ctrl-C, asks the run to stop after its
/// step (it writes a checkpoint first).
fn run_interruptibly(
    py: Python<'_>,
    job: RecipeRun,
    compute: Compute,
    on_progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<RunEnd> {
    let mut on_progress = on_progress.cloned();
    let mut shown: Option<(String, u64, Option<u64>, String)> = None;
    INTERRUPT.store(false, Ordering::SeqCst);
    let (tx, rx) = mpsc::channel();
    let mut interrupted: Option<PyErr> = None;
    let end = std::thread::scope(|scope| {
        scope.spawn(move || {
            let _ = tx.send(dispatch(compute, job));
        });
        let mut rx = rx;
        loop {
            let (waited, back) = py.detach(move || (rx.recv_timeout(Duration::from_millis(100)), rx));
            rx = back;
            match waited {
                Ok(end) => break end,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(anyhow::anyhow!("the run's thread ended early"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let (Some(cb), Some(now)) = (&on_progress, ferrovene_trainer::events::latest_progress())
                && shown.as_ref() != Some(&now)
            {
                if let Err(e) = cb.call1((now.0.trim(), now.1, now.2, now.3.as_str())) {
                    // A display that fails stops displaying; the run goes on.
                    e.print(py);
                    on_progress = None;
                }
                shown = Some(now);
            }
            if let Err(e) = py.check_signals() {
                // Ask once; the run checkpoints after its step and returns.
                INTERRUPT.store(true, Ordering::SeqCst);
                interrupted.get_or_insert(e);
            }
        }
    });
    if let Some(cb) = &on_progress {
        let _ = cb.call1((py.None(), 0, py.None(), ""));
    }
    let end = end.map_err(failed)?;
    match (end, interrupted) {
        (RunEnd::Interrupted(dir), Some(e)) if e.is_instance_of::<PyKeyboardInterrupt>(py) => {
            Err(PyKeyboardInterrupt::new_err(format!(
                "stopped after a checkpoint in {}; go on with `trainer <recipe> --resume {}`",
                dir.display(),
                dir.display()
            )))
        }
        (_, Some(e)) => Err(e),
        (end, None) => Ok(end),
    }
}

/// Runs `recipe` (a name in recipes/ or a .toml path) with `overrides` as `--set` would.
fn run(
    py: Python<'_>,
    path: &Path,
    name: String,
    mut table: toml::Table,
    overrides: Vec<Override>,
    opts: RunArgs<'_, '_>,
) -> PyResult<Report> {
    let recipe = Recipe::from_table(std::mem::take(&mut table), &overrides)
        .map_err(|e| invalid(e.context(format!("recipe {}", path.display()))))?;
    let job = RecipeRun {
        name,
        recipe,
        out: opts.out,
        resume: None,
        progress: opts.progress,
        cache_budget: ferrovene_trainer::memory::default_cache_budget(),
        nodes: None,
    };
    match run_interruptibly(py, job, opts.compute, opts.on_progress)? {
        RunEnd::Done(run_dir) => {
            let text = std::fs::read_to_string(run_dir.join("report.json"))
                .map_err(|e| failed(anyhow::anyhow!("reading {}: {e}", run_dir.join("report.json").display())))?;
            Ok(Report { run_dir, text })
        }
        other => Err(failed(anyhow::anyhow!("the run did not finish: {other:?}"))),
    }
}

/// Where and how a binding call runs.
struct RunArgs<'a, 'py> {
    out: PathBuf,
    progress: bool,
    compute: Compute,
    on_progress: Option<&'a Bound<'py, PyAny>>,
}

/// Runs a recipe as `trainer <recipe>` does: `name_or_path` is a recipe in recipes/ (or
/// `$FERROVENE_RECIPES`) or a .toml file; keyword arguments override its keys as `--set` does.
#[pyfunction]
#[pyo3(signature = (name_or_path, *, out = PathBuf::from("runs"), device = "cpu", dtype = None, progress = false, on_progress = None, **overrides))]
#[allow(clippy::too_many_arguments)]
pub fn run_recipe(
    py: Python<'_>,
    name_or_path: &str,
    out: PathBuf,
    device: &str,
    dtype: Option<&str>,
    progress: bool,
    on_progress: Option<&Bound<'_, PyAny>>,
    overrides: Option<&Bound<'_, PyDict>>,
) -> PyResult<Report> {
    let compute = compute(device, dtype)?;
    let path = recipe::find(name_or_path).map_err(invalid)?;
    let table = recipe::read_table(&path).map_err(invalid)?;
    let sets = overrides_of(overrides)?;
    run(py, &path, recipe::stem(&path), table, sets, RunArgs { out, progress, compute, on_progress })
}

/// Trains an intervention of `kind` on `pairs` at `site` of `model`: a pair-file recipe built
/// from the arguments (and `**more` recipe keys), run as the command line runs it.
#[pyfunction]
#[pyo3(signature = (model, pairs, *, kind = "das", site = "0.block_output".to_string(), rank = None, lr = 0.01, epochs = 4, batch_size = 8, seed = 0, dev_fraction = Some(0.25), split_by = None, out = PathBuf::from("runs"), name = "python".to_string(), dtype = None, progress = false, on_progress = None, **more))]
#[allow(clippy::too_many_arguments)]
pub fn train(
    py: Python<'_>,
    model: &Model,
    pairs: &Pairs,
    kind: &str,
    site: String,
    rank: Option<i64>,
    lr: f64,
    epochs: i64,
    batch_size: i64,
    seed: i64,
    dev_fraction: Option<f64>,
    split_by: Option<String>,
    out: PathBuf,
    name: String,
    dtype: Option<&str>,
    progress: bool,
    on_progress: Option<&Bound<'_, PyAny>>,
    more: Option<&Bound<'_, PyDict>>,
) -> PyResult<Report> {
    let compute = model.compute_with(dtype)?;
    let file = pairs.file_in(&out.join(".pairs")).map_err(failed)?;
    let mut table = toml::Table::new();
    table.insert("description".into(), format!("{kind} at {site}, trained from Python").into());
    table.insert("kind".into(), kind.into());
    table.insert("model".into(), model.spec_name().into());
    table.insert("pairs".into(), file.display().to_string().into());
    table.insert("site".into(), site.into());
    if let Some(k) = rank {
        table.insert("rank".into(), k.into());
    }
    table.insert("lr".into(), lr.into());
    table.insert("epochs".into(), epochs.into());
    table.insert("batch_size".into(), batch_size.into());
    table.insert("seed".into(), seed.into());
    // Held out: a share of the pairs, unless a file of them is given.
    let held_out_file = more.is_some_and(|d| d.contains("held_out").unwrap_or(false));
    if let (Some(f), false) = (dev_fraction, held_out_file) {
        table.insert("dev_fraction".into(), f.into());
    }
    if let Some(field) = split_by {
        table.insert("split_by".into(), field.into());
    }
    let sets = overrides_of(more)?;
    let path = PathBuf::from(format!("train(kind={kind:?})"));
    run(py, &path, name, table, sets, RunArgs { out, progress, compute, on_progress })
}
