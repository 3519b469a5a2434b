//! `Intervention`: a trained intervention (or set of them) as ferrovene exports it, loaded back,
//! saved, and read as numpy arrays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferrovene_interventions::InterventionSet;
use ferrovene_interventions::export::{ExportConfig, load_set, save_set};
use ferrovene_models::Cpu;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use burn::tensor::backend::Backend;
use ferrovene_trainer::commands::apply::{Apply, Shown};
use ferrovene_trainer::commands::eval::Eval;
use ferrovene_trainer::commands::export::{Export, Flavour};
use ferrovene_trainer::commands::sae::SaeOptions;
use ferrovene_trainer::device::{OnBackend, dispatch};
use ferrovene_trainer::generate::Decoding;

use crate::errors::{failed, invalid};
use crate::model::Model;
use crate::pairs::Pairs;

/// A JSON value as the Python object `json.loads` makes of it.
fn to_python<'py>(py: Python<'py>, value: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (value.to_string(),))
}

/// `Apply::show` on the model's backend.
struct Show(Apply);

impl OnBackend for Show {
    type Output = Shown;

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Shown> {
        self.0.show::<B>(device)
    }
}

/// `Eval::evaluate` on the model's backend.
struct Evaluate(Eval);

impl OnBackend for Evaluate {
    type Output = (serde_json::Value, String);

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        self.0.evaluate::<B>(device)
    }
}

/// An exported intervention (its parameters held on the CPU; applied on the model's device).
#[pyclass(module = "ferrovene._ferrovene")]
pub struct Intervention {
    set: Mutex<InterventionSet<Cpu>>,
    config: ExportConfig,
    /// The file it was loaded from or last saved to.
    #[pyo3(get)]
    path: PathBuf,
}

impl Intervention {
    /// Loads the export at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Intervention> {
        let (set, config) = load_set::<Cpu>(path, &Default::default())?;
        Ok(Intervention { set: Mutex::new(set), config, path: path.to_path_buf() })
    }
}

/// Every tensor of a safetensors file, as f32 values with their shapes, by name.
fn tensors(path: &Path) -> anyhow::Result<BTreeMap<String, (Vec<f32>, Vec<usize>)>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => {
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            other => anyhow::bail!("{}: tensor `{name}` is {other:?}; exports keep f32", path.display()),
        };
        out.insert(name, (values, view.shape().to_vec()));
    }
    Ok(out)
}

impl Intervention {
    /// `trainer export --to <to> dir` of this export.
    fn export(&self, py: Python<'_>, to: Flavour, dir: PathBuf, force: bool) -> PyResult<()> {
        let job = Export { intervention: self.path.clone(), to, dir, force };
        py.detach(|| job.run()).map_err(invalid)
    }

    /// `trainer apply --json` with these arguments, on this export and `model`, on the model's
    /// device and in its precision.
    #[allow(clippy::too_many_arguments)]
    fn shown<'py>(
        &self,
        py: Python<'py>,
        model: &Model,
        prompt: String,
        source: Option<String>,
        positions: Option<Vec<String>>,
        source_positions: Option<Vec<String>>,
        generate: Option<Decoding>,
        every_token: bool,
        chat: bool,
        scale: Option<f64>,
        top: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let compute = model.compute_with(None)?;
        let job = Apply {
            intervention: self.path.clone(),
            prompt,
            source,
            positions,
            chat,
            source_positions,
            model: Some(model.spec_name().to_string()),
            generate,
            every_token,
            top,
            scale,
            json: true,
            sae: SaeOptions::default(),
        };
        let shown = py.detach(|| dispatch(compute, Show(job))).map_err(invalid)?;
        to_python(py, &shown.json)
    }
}

#[pymethods]
impl Intervention {
    /// Loads an export (`intervention.safetensors` of a run, or one `trainer import` made from a
    /// pyvene or pyreft folder).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Intervention> {
        py.detach(|| Intervention::open(&path)).map_err(|e| invalid(e.context(format!("loading {}", path.display()))))
    }

    /// Writes the intervention to `path` (safetensors with its config), and reads from there on.
    fn save(&mut self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let (set, config) = (&self.set, self.config.clone());
        py.detach(|| -> anyhow::Result<PathBuf> {
            let set = set.lock().map_err(|_| anyhow::anyhow!("the intervention's lock is poisoned"))?;
            Ok(save_set(&set, config, &path)?)
        })
        .map_err(|e| failed(e.context(format!("saving to {}", path.display()))))?;
        self.path = path;
        Ok(())
    }

    /// The parameters, as the export names them, each a float32 numpy array.
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let all = py.detach(|| tensors(&self.path)).map_err(failed)?;
        let out = PyDict::new(py);
        for (name, (values, shape)) in all {
            out.set_item(name, PyArray1::from_vec(py, values).reshape(shape)?)?;
        }
        Ok(out)
    }

    /// `trainer apply --json` on `prompt`: the `top` next tokens before and after the
    /// intervention (a probe: its class probabilities), reading `source` for interventions that
    /// read one (DAS) at `positions` (rules as in the pair format: `"last"`, `"f3+l3"`, indices).
    #[pyo3(signature = (model, prompt, *, source = None, positions = None, source_positions = None, top = 5, chat = false, scale = None))]
    #[allow(clippy::too_many_arguments)]
    fn apply<'py>(
        &self,
        py: Python<'py>,
        model: &Model,
        prompt: String,
        source: Option<String>,
        positions: Option<Vec<String>>,
        source_positions: Option<Vec<String>>,
        top: usize,
        chat: bool,
        scale: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.shown(py, model, prompt, source, positions, source_positions, None, false, chat, scale, top)
    }

    /// `trainer apply --generate N --json`: greedy text after `prompt` without and with the
    /// intervention (`every_token`: also at each generated token, for steering and ReFT).
    #[pyo3(signature = (model, prompt, *, max_tokens = 40, source = None, positions = None, source_positions = None, every_token = false, chat = false, scale = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        model: &Model,
        prompt: String,
        max_tokens: usize,
        source: Option<String>,
        positions: Option<Vec<String>>,
        source_positions: Option<Vec<String>>,
        every_token: bool,
        chat: bool,
        scale: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let decoding = Some(Decoding::greedy(max_tokens));
        self.shown(py, model, prompt, source, positions, source_positions, decoding, every_token, chat, scale, 0)
    }

    /// `trainer eval --json`: IIA and p(label) > p(base label) on `pairs` beside no intervention
    /// and a random rotation, overall and, with `by`, per value of that metadata field.
    #[pyo3(signature = (model, pairs, *, by = None, batch_size = 32))]
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        model: &Model,
        pairs: &Bound<'py, PyAny>,
        by: Option<String>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pairs = Pairs::of(pairs)?;
        let dir = std::env::temp_dir().join("ferrovene-python");
        let file = pairs.file_in(&dir).map_err(failed)?;
        let job = Eval {
            intervention: self.path.clone(),
            pairs: file,
            model: Some(model.spec_name().to_string()),
            by,
            batch_size,
            skip_bad: false,
            json: true,
        };
        let compute = model.compute_with(None)?;
        let (report, _) = py.detach(|| dispatch(compute, Evaluate(job))).map_err(invalid)?;
        to_python(py, &report)
    }

    /// Writes the folder pyvene's `IntervenableModel.save` writes (`trainer export --to pyvene`),
    /// for `IntervenableModel.load(dir, model)`; ReFT families go to pyreft's folder instead
    /// (`to_pyreft`). `force` writes into a folder that has files.
    #[pyo3(signature = (dir, *, force = false))]
    fn to_pyvene(&self, py: Python<'_>, dir: PathBuf, force: bool) -> PyResult<()> {
        self.export(py, Flavour::Pyvene, dir, force)
    }

    /// Writes the folder pyreft's `ReftModel.save` writes (`trainer export --to pyreft`), for
    /// the ReFT families.
    #[pyo3(signature = (dir, *, force = false))]
    fn to_pyreft(&self, py: Python<'_>, dir: PathBuf, force: bool) -> PyResult<()> {
        self.export(py, Flavour::Pyreft, dir, force)
    }

    /// What it is: kind, sites and metrics as the export records them (its JSON config).
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.config).map_err(|e| failed(e.into()))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    fn __repr__(&self) -> String {
        let n = self.set.lock().map(|s| s.members.len()).unwrap_or(0);
        format!("Intervention({} member(s) from {})", n, self.path.display())
    }
}
